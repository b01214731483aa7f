"""The Plan: what the planner decided, in the form the simulator and router read.

``plan.json`` is this model serialised. Units: rates per second, money in USD, power
in watts (per pool) and megawatts (per region).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.estimate import Provenance
from tokenfleet.perf.precision import KV_BYTES, PRECISIONS
from tokenfleet.perf.unit import Layout
from tokenfleet.plan.billing import Terms
from tokenfleet.plan.day_schema import DayPlan
from tokenfleet.plan.economics import PlanEconomics
from tokenfleet.plan.tradeoffs import Tradeoffs
from tokenfleet.workload.buckets import SizeBuckets

PLAN_VERSION = 1
HOURS_PER_MONTH = 730.0  # 8,760 h / 12

PriceKind = Literal["on_demand", "reserved"]
PrecisionName = Literal["bf16", "fp8", "fp4", "int8", "w4a16", "w4a8"]
KvPrecisionName = Literal["bf16", "fp16", "fp8", "int8", "fp4"]
# The Literals spell out perf.precision's registries for the plan.json schema; they move
# together (a new precision there must be named here before a plan can carry it).
assert set(get_args(PrecisionName)) == set(PRECISIONS)
assert set(get_args(KvPrecisionName)) == set(KV_BYTES)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BucketCapacity(_Model):
    """What one replica of a pool sustains for one size bucket at the tier's SLO."""

    bucket: str
    requests_per_s: float = Field(description="derated by the estimate's uncertainty band")
    requests_per_s_point: float = Field(description="point estimate, before derating")
    output_tokens_per_s: float = Field(description="point estimate (not derated)")
    concurrency: float = Field(description="sequences in flight per replica at that rate")
    ttft_s: float
    tpot_s: float


class PlanUnit(_Model):
    """One pool: ``replicas`` identical serving units of one chip kind in one place."""

    pool: str = Field(description="unique id: tier/accelerator/cloud/region/precision")
    tier: str
    model: str
    accelerator: str
    vendor: str
    cloud: str
    region: str
    precision: PrecisionName
    kv_precision: KvPrecisionName
    engine: str | None = None
    layout: Layout
    chips_per_replica: int
    replicas: int
    chips: int
    price_kind: PriceKind
    prepaid: bool = Field(False, description="a prepaid capacity block: paid in full "
                                             "whatever is used (limits.prepaid_usd_per_month)")
    usd_per_chip_hour: float
    usd_per_hour: float = Field(description="whole pool")
    watts: float = Field(description="whole pool, at TDP")
    capacity: list[BucketCapacity]
    provenance: Provenance
    uncertainty: float = Field(description="± held-out error of its estimate (p90), which "
                                           "the scenario's confidence turns into a margin")
    role: Literal["both", "prefill", "decode"] = Field(
        "both", description="both: aggregated serving; prefill/decode: one half of a "
                            "disaggregated pair (the decode half is routed to; its prefill "
                            "half takes the same requests first)")
    pair: str | None = Field(None, description="disaggregated pair id (both halves share it)")
    kv_link: str | None = Field(None, description="prefill half: the link its prompts' KV "
                                                  "caches take to the decode half")
    speculative: str | None = Field(
        None, description="speculative decoding the pool runs (perf/speculative.py syntax, "
                          "e.g. 'mtp:1:0.85' or 'fused:llama-3.2-1b:7:0.8'); None: plain "
                          "decoding. Its capacity and latencies are priced with it")

    def capacity_for(self, bucket: str) -> BucketCapacity | None:
        return next((c for c in self.capacity if c.bucket == bucket), None)


class BucketSplit(_Model):
    """Peak demand of one (tier, size bucket) and how it is split over pools."""

    tier: str
    bucket: str
    input_len: int = Field(description="representative prompt tokens of the bucket")
    output_len: int = Field(description="representative output tokens of the bucket")
    peak_requests_per_s: float = Field(description="demand at peak, headroom included")
    shares: dict[str, float] = Field(description="pool id -> fraction of this bucket's requests")


class TierPrefixCache(_Model):
    """Prefix (KV) caching of a tier whose trace carries prefix-block hashes
    (``plan/prefix.py``): the hit rate priced into its units and what it saves."""

    hit_rate: float = Field(description="fraction of prompt tokens served from the cache, "
                                        "priced into the tier's candidates")
    hit_rate_at_plan_kv: float = Field(
        description="the exact offline count at this plan's KV (cache_tokens): what "
                    "`simulate` should report for the tier, with cache-affinity routing")
    unbounded_hit_rate: float = Field(description="with a cache that never evicts")
    cache_tokens: int = Field(description="KV tokens the plan buys for the tier where "
                                          "prompts are looked up (aggregated pools and "
                                          "prefill halves, not decode halves: replicas x "
                                          "lanes x KV per lane), at the plan's final units")
    block_tokens: int = Field(description="tokens per prefix block of the trace")
    iterations: int = Field(description="fixed-point solves (price at the hit rate of the "
                                        "previous solve's KV)")
    method: str = Field(description="how the hit rate was obtained")
    plain_usd_per_month: float = Field(description="the tier's spend in the plan solved "
                                                   "without caching")
    usd_per_month: float = Field(description="the tier's spend with caching")
    saving_usd_per_month: float = Field(description="the tier's spend without caching minus "
                                                    "with it (list value of its chip-hours)")
    bill_saving_usd_per_month: float = Field(
        description="the whole plan's bill without caching minus with it (less than the "
                    "tier's saving when committed spend is paid anyway)")


class TierSummary(_Model):
    name: str
    model: str
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    slo_ttft_percentile: float = Field(
        50.0, description="percentile of arrived requests the TTFT bound holds for")
    slo_tpot_percentile: float = Field(
        50.0, description="percentile of arrived requests the TPOT bound holds for")
    slo_percentile: float | None = Field(
        None, description="older plans: one percentile for both bounds (read, not written)")
    peak_requests_per_s: float
    burst_factor: float = Field(
        1.0, description="capacity the tier's bursts need at its TTFT percentile, as a "
                         "multiple of its peak-window rate (a fluid queue fed by its trace, "
                         "plan.tail.burst_factor); the plan buys max(1 + headroom, this)")
    output_tokens_per_s: float = Field(description="at peak")
    usd_per_million_output_tokens: float
    precisions: list[str]
    precision_notes: list[str] = []
    prefix_cache: TierPrefixCache | None = Field(
        None, description="prefix caching priced in (tiers whose trace has prefix hashes)")
    disaggregation: str | None = Field(
        None, description="why the tier is served by prefill/decode pairs (its saving vs "
                          "the best aggregated-only plan), or None: aggregated")
    speculative: str | None = Field(
        None, description="the speculative decoding the tier's pools run and what it saves "
                          "vs the best plan with plain decoding, or None: plain decoding")


class Cost(_Model):
    usd_per_month: float = Field(description="what the plan adds to the bill: on-demand "
                                             "spend plus committed spend left unused")
    fleet_usd_per_month: float = Field(description="list value of every chip-hour used")
    committed_usd_per_month: float = Field(description="commitments, paid whether used or not")
    committed_used_usd_per_month: float
    on_demand_usd_per_month: float


class Baseline(_Model):
    name: str
    usd_per_month: float | None
    feasible: bool
    note: str = ""
    drops: list[str] = Field(
        default_factory=list,
        description="constraints this baseline was solved without (empty: the same "
                    "constraints as the plan, so the plan is never dearer)")


class TierCheck(_Model):
    """One tier in one simulated replay: attainment of each SLO at its percentile."""

    tier: str
    requests: int
    ttft_s: float | None = Field(description="simulated TTFT at the SLO's percentile")
    tpot_s: float | None = Field(description="simulated TPOT at the SLO's percentile")
    ttft_attainment: float | None = Field(
        description="arrived requests with TTFT within the SLO (rejected count as misses)")
    tpot_attainment: float | None
    attainment: float | None = Field(description="arrived requests within both SLOs")
    target: float = Field(description="what the plan promises: the SLO percentile with "
                                      "every group up, min_fraction with one down")
    met: bool


class Outage(_Model):
    """A simulated replay with one failure group (vendor, region or cloud) down."""

    down: str = Field(description="e.g. vendor=AMD")
    tiers: list[TierCheck]
    usd: float = Field(description="simulated bill of the window")


class PoolRisk(_Model):
    pool: str
    band: float = Field(description="± held-out throughput error of its estimate (p90)")
    shortfall_probability: float = Field(
        description="chance its true capacity is below its planned load at peak")


class Risk(_Model):
    """How sure the plan is, given the model's uncertainty per chip."""

    confidence: float | None = Field(description="each pool has at least the capacity "
                                                 "the plan counts on with this probability")
    tiers: dict[str, float] = Field(description="tier -> probability every pool of it "
                                                "covers its planned load at peak")
    pools: list[PoolRisk] = Field(description="the pools that carry the risk, riskiest "
                                              "first")


class Verification(_Model):
    """How the plan was checked by replaying its traffic through the simulator."""

    window_s: float = Field(description="first seconds of each tier's traffic replayed")
    outage_window_s: float | None = None
    seed: int = 0
    admission: str = "none"
    outage_admission: str = "ttft"
    rounds: int = Field(description="simulate -> re-size -> re-solve rounds")
    seconds: float
    resized: dict[str, float] = Field(
        default_factory=dict,
        description="candidate pool id, or tier:NAME for every candidate of a tier -> "
                    "factor its modelled capacity was scaled by after the simulator found "
                    "it missing an SLO (the factors multiply)")
    tiers: list[TierCheck]
    outages: list[Outage] = []
    usd: float = Field(description="simulated bill of the window, every group up")
    met: bool
    reproduce: list[str] = Field(default_factory=list,
                                 description="commands that replay the same figures")
    notes: list[str] = []


class ConstraintReport(_Model):
    name: str
    binding: bool
    marginal_usd_per_month: float | None = Field(
        description="how much the plan would save per month without this constraint: "
                    "the plan re-solved without it (tokenfleet.plan.prices)")
    detail: str = ""
    price_low_usd_per_month: float | None = Field(
        None, description="the saving is proved at least this (solver bounds)")
    price_high_usd_per_month: float | None = Field(
        None, description="the saving is proved at most this (solver bounds)")
    price_proved: bool = Field(
        True, description="false when a re-solve ran out of time: the price is then "
                          "'at least price_low_usd_per_month'")
    per_unit_usd_per_month: float | None = Field(
        None, description="saving per month of one more unit of the cap (see unit)")
    unit: str | None = Field(None, description="unit of the cap: MW, chip, point of share")
    per_unit_step: float | None = Field(
        None, description="the cap was raised by this many units for per_unit_usd_per_month "
                          "(10 % of it, at least one more replica)")
    limit: float | None = Field(None, description="the cap, in unit")
    used: float | None = Field(None, description="what the plan uses of it, in unit")


class NMinusOneLimit(_Model):
    by: Literal["vendor", "region", "cloud"] = "vendor"
    min_fraction: float
    method: Literal["auto", "cuts", "exact"] = "auto"


class ContractLimit(_Model):
    """A contract as the bill needs it (the simulator bills a window with it)."""

    cloud: str
    committed_usd_per_month: float = Field(description="take-or-pay minimum (0: none)")
    discount: float = Field(0.0, description="fraction off list on eligible usage")
    volume_tiers: list[tuple[float, float]] = Field(
        [], description="(above USD/month at list, discount): usage-stepped rates")
    accelerators: list[str] | None = Field(None, description="eligible chips (None: all)")
    regions: list[str] | None = Field(None, description="eligible regions (None: all)")

    @classmethod
    def of(cls, t: Terms) -> ContractLimit:
        return cls(cloud=t.cloud, committed_usd_per_month=t.fixed_usd_per_month,
                   discount=t.discount, volume_tiers=[tuple(x) for x in t.volume_tiers],
                   accelerators=list(t.accelerators) if t.accelerators else None,
                   regions=list(t.regions) if t.regions else None)

    def terms(self, name: str) -> Terms:
        return Terms(name=name, cloud=self.cloud,
                     fixed_usd_per_month=self.committed_usd_per_month,
                     discount=self.discount, volume_tiers=tuple(self.volume_tiers),
                     accelerators=tuple(self.accelerators) if self.accelerators else None,
                     regions=tuple(self.regions) if self.regions else None)


class PlanLimits(_Model):
    """The scenario's caps and policies the plan honours (a plan written by hand, with no
    scenario, has the defaults: no caps)."""

    hours_per_month: float = Field(HOURS_PER_MONTH, description="hours billed per month")
    headroom: float = Field(0.0, description="capacity over peak demand, fraction")
    derate: float | None = Field(None, description="multiple of the uncertainty band taken off "
                                               "(older scenarios; else confidence)")
    confidence: float | None = Field(None, description="probability the plan meets its SLOs "
                                                      "given the estimates' uncertainty")
    prepaid_usd_per_month: float = Field(0.0, description="prepaid capacity blocks, $/month")
    max_vendor_share: float | None = None
    vendor_share_basis: Literal["traffic", "spend"] = "traffic"
    n_minus_1: NMinusOneLimit | None = None
    power_mw: dict[str, float] = Field({}, description="region -> cap, MW")
    supply_max_chips: dict[str, int] = Field(
        {}, description="'accelerator@cloud/region' (as the scenario names it) -> chips")
    contracts: dict[str, ContractLimit] = {}
    residency: dict[str, list[str]] = Field({}, description="tier -> regions allowed")


class SolverInfo(_Model):
    """How the plan was solved (empty for a plan given by hand)."""

    name: str = "none"
    status: str | None = None
    mip_gap: float | None = Field(None, description="relative gap of the bill at the end")
    seconds: float | None = None
    rounds: int | None = Field(None, description="solves (N-1 cuts add rounds)")
    candidates: int | None = None
    variables: int | None = None
    rows: int | None = None


class Plan(_Model):
    version: int = PLAN_VERSION
    scenario: str
    created: str
    objective: str
    tiers: list[TierSummary]
    units: list[PlanUnit]
    traffic_split: list[BucketSplit]
    buckets: SizeBuckets | None = Field(
        None, description="the size-bucket edges (tokens) the split's labels name; None "
        "for a plan given by hand without them (requests then go to the split bucket with "
        "the nearest representative lengths)")
    cost: Cost
    vendor_share: dict[str, float] = Field(description="vendor -> share of peak capacity used")
    power_mw: dict[str, float] = Field(description="region -> MW at TDP")
    limits: PlanLimits = Field(default_factory=PlanLimits)
    baselines: list[Baseline]
    constraints: list[ConstraintReport]
    solver: SolverInfo = Field(default_factory=SolverInfo)
    verification: Verification | None = None
    risk: Risk | None = None
    notes: list[str] = []
    energy: dict[str, Any] = Field(
        default_factory=dict, description="per region and in total: IT and facility MW "
                                          "(PUE), MWh per month, and its cost where priced")
    contracts: list[dict[str, Any]] = Field(
        default_factory=list, description="each commitment as signed (term, total, ramp, "
                                          "the month's minimum) and what this plan uses")
    source: dict[str, Any] | None = Field(
        None, description="how to plan it again: scenario path, --set overrides and "
                          "what-ifs (`plan --versus` re-solves it for a band)")
    whatif: dict[str, Any] | None = Field(
        None, description="what-ifs applied (--without, --require, --budget, --power-mw) and "
                          "the side-by-side comparison (--versus), see tokenfleet.plan.whatif")
    economics: PlanEconomics | None = Field(
        None, description="unit costs, vendor shares by spend/chips/tokens, pool roles "
                          "(tokenfleet.plan.economics.plan_economics)")
    tradeoffs: Tradeoffs | None = Field(
        None, description="the bill re-solved at other confidence levels (cost-assurance "
                          "frontier) and with prices, traffic or uncertainty moved "
                          "(tokenfleet.plan.tradeoffs); solved with the baselines")
    day: DayPlan | None = Field(
        None, description="`plan --over-day`: reserved/committed base plus on-demand and "
                          "spot layers per period of the day (tokenfleet.plan.day)")

    def pools_for(self, tier: str) -> list[PlanUnit]:
        return [u for u in self.units if u.tier == tier]

    @model_validator(mode="before")
    @classmethod
    def _one_vendor_share_table(cls, data: Any) -> Any:
        # plans written before economics.vendor_share became the one table by spend,
        # chips and tokens carried a copy as `vendor_shares`: read them, drop the copy
        if isinstance(data, dict) and "vendor_shares" in data:
            data = {k: v for k, v in data.items() if k != "vendor_shares"}
        return data


def load_plan(path: str | Path) -> Plan:
    """Read a ``plan.json``; errors name the file and field."""
    from pydantic import ValidationError

    from tokenfleet.fileio import read_text
    from tokenfleet.yamlio import format_validation_error

    p = Path(path)
    text = read_text(p, "plan")
    try:
        return Plan.model_validate_json(text)
    except ValidationError as e:
        raise TokenfleetError(format_validation_error(e, str(p))) from None
