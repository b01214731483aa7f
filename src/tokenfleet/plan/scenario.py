"""The scenario file: tiers and their traffic, supply, regions, contracts and policy.

One YAML file, validated here; errors name the file, line and field. Every field is
documented by its description (``tokenfleet plan --explain-schema`` prints them).
Units: rates in requests/s, times in seconds, money in USD, power in MW.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.plan.billing import Terms
from tokenfleet.yamlio import read_yaml, validate


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LengthMix(_M):
    """One kind of request in a synthetic traffic mix."""

    input_len: int = Field(gt=0, description="prompt tokens")
    output_len: int = Field(gt=0, description="generated tokens")
    share: float = Field(gt=0, description="fraction of the tier's requests (normalised)")


class Traffic(_M):
    """Either a real trace (scaled) or a peak rate with a length mix."""

    trace: str | None = Field(None, description="trace file (relative to the scenario file)")
    format: str | None = Field(None, description="trace format if not auto-detected")
    scale: float = Field(1.0, gt=0, description="multiply the trace's request rate by this")
    peak_window_s: float = Field(60.0, gt=0, description="window that defines the peak rate")
    rate_per_s: float | None = Field(None, gt=0, description="peak request rate (no trace)")
    mix: list[LengthMix] | None = Field(None, description="length mix (no trace)")
    growth: float = Field(1.0, gt=0, description="traffic growth factor applied on top")
    day_profile: str | list[float] | dict[str, Any] | None = Field(
        None, description="rate over the day for `plan --over-day`: a bundled profile name "
                          "(weekday, flat; workload/data/day_profiles.yaml), 24/48/72/96 "
                          "multipliers (hourly or finer, normalised to the busiest), or "
                          "{trace: FILE} (arrivals per hour of a day-long trace); the peak "
                          "period is the rate planned above")

    @model_validator(mode="after")
    def _day_profile(self) -> Traffic:
        from tokenfleet.workload.day import bundled_profiles, profile_from_values

        p = self.day_profile
        try:
            if isinstance(p, str) and p not in bundled_profiles():
                raise ValueError(f"day_profile: unknown profile '{p}'; bundled: "
                                 f"{', '.join(sorted(bundled_profiles()))}, or give 24 "
                                 "numbers or {trace: FILE}")
            if isinstance(p, list):
                profile_from_values(p, "scenario", "day_profile")
            if isinstance(p, dict) and set(p) - {"trace", "format", "periods"}:
                raise ValueError(f"day_profile: keys "
                                 f"{sorted(set(p) - {'trace', 'format', 'periods'})} "
                                 "not allowed; give {trace: FILE, format: ..., periods: 24}")
        except TokenfleetError as e:
            raise ValueError(str(e)) from None
        return self

    @model_validator(mode="after")
    def _one_source(self) -> Traffic:
        if self.trace is None and (self.rate_per_s is None or not self.mix):
            raise ValueError("give either 'trace' or both 'rate_per_s' and 'mix'")
        if self.trace is not None and (self.rate_per_s is not None or self.mix):
            raise ValueError("give 'trace' or 'rate_per_s'+'mix', not both")
        return self


SLO_PERCENTILES = (50.0, 90.0, 99.0)  # what plans, simulations and live summaries report


class Slo(_M):
    """Latency bounds on a percentile of the tier's requests: ``ttft_percentile: 99``
    means 99 % of arrived requests get their first token within ``ttft_s`` (rejected
    and failed requests count as misses; tokenfleet.perf.metrics)."""

    ttft_s: float | None = Field(None, gt=0, description="time to first token bound, seconds")
    tpot_s: float | None = Field(None, gt=0, description="time per output token bound, seconds")
    ttft_percentile: float | None = Field(
        None, description="percentile of requests the TTFT bound holds for: 50, 90 or 99 "
                          "(default: percentile, else 99)")
    tpot_percentile: float | None = Field(
        None, description="percentile of requests the TPOT bound holds for: 50, 90 or 99 "
                          "(default: percentile, else 90)")
    percentile: float | None = Field(
        None, description="shorthand: one percentile for both bounds (50, 90 or 99)")

    @model_validator(mode="after")
    def _percentiles(self) -> Slo:
        for name in ("ttft_percentile", "tpot_percentile", "percentile"):
            v = getattr(self, name)
            if v is not None and float(v) not in SLO_PERCENTILES:
                raise ValueError(f"{name} must be one of 50, 90, 99 (got {v:g})")
        if self.ttft_percentile is None:
            self.ttft_percentile = self.percentile if self.percentile is not None else 99.0
        if self.tpot_percentile is None:
            self.tpot_percentile = self.percentile if self.percentile is not None else 90.0
        return self


PrecisionName = Literal["bf16", "fp8", "fp4", "int8"]


def _default_precisions() -> list[PrecisionName]:
    return ["bf16", "fp8"]


class Quality(_M):
    max_loss: float = Field(
        0.02, ge=0, le=1, description="largest relative drop in any published benchmark "
                                      "score (1 - quantized / reference) this tier accepts; "
                                      "default 2 %, an assumption")


class Tier(_M):
    name: str
    model: str = Field(description="catalog model id, or a Hugging Face config.json path")
    traffic: Traffic
    slo: Slo
    precisions: list[PrecisionName] = Field(
        default_factory=_default_precisions, description="precisions this tier may run")
    precision_rules: dict[PrecisionName, dict[str, Any]] = Field(
        default_factory=dict,
        description="precision -> quality gate: {report: quality.json, max_kl: 0.05, "
                    "min_cosine: 0.99, format: nvfp4, ...} (see validate-precision)")
    regions: list[str] | None = Field(None, description="residency: allowed regions only")
    engine: str | None = Field(None, description="calibration engine (trtllm, vllm, ...)")
    quality: Quality = Field(
        default_factory=lambda: Quality(),
        description="quality tolerance: a precision below bf16 runs only where a published "
                    "figure (catalog quality_deltas.yaml) or a precision_rules report shows "
                    "it within max_loss")
    speculative: list[str] = Field(
        default_factory=list,
        description="speculative decoding settings the planner may choose for this tier's "
                    "pools, each priced as its own option beside plain decoding (it wins "
                    "where the TPOT SLO holds the batch back): 'mtp[:k[:a]]' (the model's "
                    "multi-token-prediction head, DeepSeek-V3/R1), 'draft:MODEL[:k[:a]]' or "
                    "'fused:MODEL[:k[:a]]' (a smaller catalog model of the same vocabulary); "
                    "k proposed tokens accepted at rate a (defaults: perf/speculative.py). "
                    "Empty: plain decoding only")

    @model_validator(mode="after")
    def _check_speculative(self) -> Tier:
        for i, text in enumerate(self.speculative):
            try:
                parse_speculation(text)
            except TokenfleetError as e:
                raise ValueError(f"speculative[{i}]: {e}") from None
        return self


class Supply(_M):
    """Chips available in one cloud and region."""

    accelerator: str
    cloud: str
    region: str
    max_chips: int = Field(ge=0, description="chips available (0: none, for what-ifs)")
    usd_per_chip_hour: float | None = Field(
        None, gt=0, description="price; default: the catalog's price for this cloud")
    price_kind: Literal["on_demand", "reserved"] = "on_demand"
    prepaid: bool = Field(
        False, description="reserved capacity block: all max_chips are paid for, used or "
                           "not (a fixed cost; using them adds nothing)")
    counts: list[int] | None = Field(
        None, description="chips per serving unit to consider (default: 1,2,4,8 and the "
                          "scale-up domain, up to 64)")


class Region(_M):
    name: str
    power_mw: float | None = Field(None, gt=0, description="power cap for this fleet, MW "
                                   "(facility power: chips at TDP times pue)")
    pue: float = Field(1.0, ge=1.0, description="power usage effectiveness: facility watts "
                       "per chip watt (1.0 counts the chips' TDP only)")
    usd_per_mwh: float | None = Field(
        None, gt=0, description="energy price, for the energy cost in plan.json (cloud "
                                "chip-hour prices already include power: informational)")


class VolumeTier(_M):
    """A usage-stepped rate: the part of a month's eligible usage (at list price) above
    ``above_usd_per_month`` is billed ``discount`` off list, up to the next tier's
    threshold (as cloud price lists step a rate by monthly volume, each rate on the
    volume within its step; the thresholds and rates of a negotiated deal are the
    scenario's, an assumption unless the contract is at hand)."""

    above_usd_per_month: float = Field(gt=0, description="threshold: eligible usage this "
                                                         "month at list price, USD")
    discount: float = Field(ge=0, lt=1, description="fraction off list on usage above it")


class DiscountTier(_M):
    """Commit at least this much over the term, get this much off list."""

    min_total_usd: float = Field(ge=0, description="total commitment over the term, USD")
    discount: float = Field(ge=0, lt=1, description="fraction off list price")


class Contract(_M):
    """Committed spend: paid whether used or not (take-or-pay); usage in that cloud draws
    it down. Give the monthly amount, or the deal as signed: a total over the term, or
    a ramp of yearly minimums; the plan is for one month of contract year ``year``."""

    name: str
    cloud: str
    committed_usd_per_month: float = Field(
        0.0, ge=0, description="take-or-pay minimum for the planned month (derived from "
                               "total_usd or yearly_minimum_usd when those are given)")
    term_months: int = Field(12, gt=0, description="length of the commitment")
    total_usd: float | None = Field(
        None, gt=0, description="total commitment over the term (spread evenly over its "
                                "months unless yearly_minimum_usd gives a ramp)")
    yearly_minimum_usd: list[float] | None = Field(
        None, description="ramp: minimum spend in each contract year, USD (one entry per "
                          "year of the term)")
    year: int = Field(1, gt=0, description="contract year the plan is for (picks the ramp "
                                           "step)")
    power_mw: float | None = Field(
        None, gt=0, description="power cap over this contract's pools (its cloud), MW, "
                                "facility power")
    accelerators: list[str] | None = Field(
        None, description="chips whose usage burns the commitment (default: all in its "
                          "cloud); other chips in the cloud are billed at list, on-demand")
    regions: list[str] | None = Field(
        None, description="regions whose usage burns the commitment (default: all)")
    discount: float = Field(
        0.0, ge=0, lt=1, description="fraction off list price on eligible usage, within "
                                     "and beyond the commitment")
    discount_tiers: list[DiscountTier] | None = Field(
        None, description="volume discount: the tier the total commitment reaches sets "
                          "`discount` (e.g. [{min_total_usd: 0, discount: 0.1}, "
                          "{min_total_usd: 5.0e7, discount: 0.2}])")
    take_or_pay: bool = Field(
        True, description="the monthly minimum is paid whether used or not; false: only "
                          "usage is paid (a discount agreement without a minimum)")
    volume_tiers: list[VolumeTier] | None = Field(
        None, description="usage-stepped discounts: eligible usage above each threshold "
                          "(USD/month at list) gets that tier's discount instead of "
                          "`discount`, e.g. [{above_usd_per_month: 2.0e6, discount: 0.05}, "
                          "{above_usd_per_month: 4.0e6, discount: 0.1}]; thresholds rise, "
                          "discounts never fall")

    def eligible(self, accelerator: str, cloud: str, region: str) -> bool:
        return (cloud == self.cloud
                and (self.accelerators is None or accelerator in self.accelerators)
                and (self.regions is None or region in self.regions))

    @property
    def fixed_usd_per_month(self) -> float:
        """What the plan pays whatever it uses."""
        return self.committed_usd_per_month if self.take_or_pay else 0.0

    @property
    def terms(self) -> Terms:
        """What billing needs (:mod:`tokenfleet.plan.billing`)."""
        return Terms(name=self.name, cloud=self.cloud,
                     fixed_usd_per_month=self.fixed_usd_per_month, discount=self.discount,
                     volume_tiers=tuple((t.above_usd_per_month, t.discount)
                                        for t in self.volume_tiers or []),
                     accelerators=tuple(self.accelerators) if self.accelerators else None,
                     regions=tuple(self.regions) if self.regions else None)

    @model_validator(mode="after")
    def _monthly(self) -> Contract:
        derived = None
        if self.yearly_minimum_usd:
            years = -(-self.term_months // 12)
            if len(self.yearly_minimum_usd) != years:
                raise ValueError(f"yearly_minimum_usd has {len(self.yearly_minimum_usd)} "
                                 f"entries; the {self.term_months}-month term has {years} "
                                 "years")
            if self.year > years:
                raise ValueError(f"year {self.year} is past the {years}-year term")
            if self.total_usd is not None and sum(self.yearly_minimum_usd) > self.total_usd:
                raise ValueError("the yearly minimums add up to more than total_usd")
            derived = self.yearly_minimum_usd[self.year - 1] / 12
        elif self.total_usd:
            derived = self.total_usd / self.term_months
        if derived is not None:
            if self.committed_usd_per_month and not math.isclose(
                    self.committed_usd_per_month, derived, rel_tol=1e-9):
                raise ValueError("give committed_usd_per_month or the deal as signed "
                                 "(total_usd / yearly_minimum_usd), not both")
            self.committed_usd_per_month = derived
        if self.committed_usd_per_month <= 0:
            raise ValueError("give committed_usd_per_month, total_usd or yearly_minimum_usd")
        if self.discount_tiers:
            total = self.total_usd or (sum(self.yearly_minimum_usd) if self.yearly_minimum_usd
                                       else self.committed_usd_per_month * self.term_months)
            reached = [t.discount for t in self.discount_tiers if t.min_total_usd <= total]
            tier = max(reached, default=0.0)
            if self.discount and not math.isclose(self.discount, tier, rel_tol=1e-9):
                raise ValueError(f"discount {self.discount} disagrees with discount_tiers, "
                                 f"which give {tier} for a {total:,.0f} USD commitment")
            self.discount = tier
        self._check_volume_tiers()
        return self

    def _check_volume_tiers(self) -> None:
        tiers = self.volume_tiers or []
        for i, (a, b) in enumerate(zip(tiers, tiers[1:], strict=False)):
            if b.above_usd_per_month <= a.above_usd_per_month:
                raise ValueError(f"volume_tiers[{i + 1}].above_usd_per_month "
                                 f"{b.above_usd_per_month:,.0f} must be above the tier "
                                 f"before it ({a.above_usd_per_month:,.0f})")
        prev = self.discount
        for i, t in enumerate(tiers):
            if t.discount < prev:
                raise ValueError(f"volume_tiers[{i}].discount {t.discount:g} is below the "
                                 f"discount before it ({prev:g}): a volume discount never "
                                 "falls as usage grows")
            prev = t.discount


class NMinusOne(_M):
    by: Literal["vendor", "region", "cloud"] = "vendor"
    min_fraction: float = Field(gt=0, le=1, description="share of peak still served at SLO")
    method: Literal["auto", "cuts", "exact"] = Field(
        "auto", description="how the MILP models it: 'exact' copies the routing variables "
        "once per failure group (one solve; the program grows with the number of groups); "
        "'cuts' adds one row per group and tier and re-solves until an exact check of "
        "every group passes (scales to large fleets); 'auto' picks exact while the copies "
        "stay small")


class MinShare(_M):
    """A floor on one vendor's share of one tier's traffic (a negotiated migration)."""

    tier: str
    vendor: str = Field(description="vendor name as in the catalog, e.g. Microsoft, AMD")
    min_fraction: float = Field(gt=0, le=1, description="share of the tier's output "
                                "tokens at peak served on this vendor's chips")


class Policy(_M):
    max_vendor_share: float | None = Field(None, gt=0, le=1)
    min_share: list[MinShare] = Field(
        default_factory=list, description="floors on a vendor's share of a tier "
        "(`plan --require 'large: Microsoft >= 0.3'`)")
    vendor_share_basis: Literal["traffic", "spend"] = Field(
        "traffic", description="traffic = share of output tokens served at peak")
    n_minus_1: NMinusOne | None = None


class SpotMarket(_M):
    """Spot capacity in one cloud, for `plan --over-day` (overrides plan/data/spot.yaml)."""

    interruption_per_hour: float | None = Field(
        None, ge=0, lt=1, description="probability a spot replica is reclaimed within an "
                                      "hour; the day plan counts spot capacity at (1 - this)")
    price_fraction: float | None = Field(
        None, gt=0, le=1, description="spot price as a fraction of the supply's on-demand "
                                      "price (used where the catalog has no spot price)")
    accelerators: list[str] | None = Field(
        None, description="chips sold as spot in this cloud (default: every chip; [] none)")


class DayPlanning(_M):
    """`plan --over-day`: which layers may serve the hours above the base."""

    on_demand: bool = Field(True, description="rent on-demand capacity by the hour")
    spot: bool = Field(True, description="rent spot capacity by the hour (interruptions "
                                         "counted and simulated)")
    spot_markets: dict[str, SpotMarket] = Field(
        default_factory=dict, description="cloud -> spot rate and price overrides")


class Buckets(_M):
    input_edges: list[float] = Field(default_factory=lambda: [0, 512, 2048, 8192, math.inf])
    output_edges: list[float] = Field(default_factory=lambda: [0, 128, 512, math.inf])


class Scenario(_M):
    name: str
    description: str = ""
    objective: Literal["cost", "energy"] = "cost"
    hours_per_month: float = 730.0
    headroom: float = Field(0.2, ge=0, description="capacity over peak demand, fraction")
    derate: float | None = Field(
        None, ge=0, le=3,
        description="older scenarios: multiple of each estimate's uncertainty band taken "
                    "off its capacity (use confidence)")
    confidence: float | None = Field(
        None, ge=0.5, lt=1,
        description="probability each pool has at least the capacity the plan counts on, "
                    "given the model's held-out error for its chip (default 0.9)")
    disaggregation: Literal["auto", "off"] = Field(
        "auto", description="auto: the planner may serve a tier by a prefill pool plus a "
                            "decode pool (plan/disagg.py) where cheaper; off: aggregated only")
    buckets: Buckets = Field(default_factory=Buckets)
    tiers: list[Tier] = Field(min_length=1)
    supply: list[Supply] = Field(min_length=1)
    regions: list[Region] = []
    contracts: list[Contract] = []
    policy: Policy = Field(default_factory=Policy)
    day: DayPlanning = Field(default_factory=DayPlanning,
                             description="layers for `plan --over-day`")
    mip_gap: float = Field(
        0.01, gt=0, description="relative optimality gap (of the monthly bill) to stop at")
    time_limit_s: float = Field(30.0, gt=0, description="solver time limit per solve, s")
    max_power_mw: float | None = Field(
        None, gt=0, description="fleet-wide power cap over every region, MW (facility "
                                "power; `plan --power-mw`)")

    def contract_for(self, accelerator: str, cloud: str, region: str) -> Contract | None:
        """The contract whose commitment a pool's usage burns: the first listed that it
        is eligible for (a pool draws on one contract only)."""
        return next((k for k in self.contracts if k.eligible(accelerator, cloud, region)),
                    None)

    @model_validator(mode="after")
    def _risk(self) -> Scenario:
        if self.derate is not None and self.confidence is not None:
            raise ValueError("give confidence (a probability) or derate (older), not both")
        return self

    @model_validator(mode="after")
    def _names(self) -> Scenario:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique: {names}")
        known = {r.name for r in self.regions}
        for i, s in enumerate(self.supply):
            if s.prepaid and s.usd_per_chip_hour is None:
                raise ValueError(f"supply[{i}] is prepaid: give its usd_per_chip_hour")
            if known and s.region not in known:
                raise ValueError(f"supply[{i}].region '{s.region}' is not in regions: "
                                 f"{sorted(known)}")
        for t in self.tiers:
            for r in t.regions or []:
                if known and r not in known:
                    raise ValueError(f"tier '{t.name}' residency region '{r}' is not in "
                                     f"regions: {sorted(known)}")
        return self


def _set_path(data: Any, path: list[str], value: Any, full: str) -> None:
    """Assign ``value`` at a dotted path. A list segment matches an item by index,
    ``name``, ``accelerator`` (all matching items) or ``accelerator@region``."""
    if not path:
        raise TokenfleetError(f"--set {full}: empty path")
    key, rest = path[0], path[1:]
    if isinstance(data, list):
        if key.isdigit():
            targets = [data[int(key)]] if int(key) < len(data) else []
        else:
            acc, _, region = key.partition("@")
            targets = [d for d in data if isinstance(d, dict) and (
                d.get("name") == key
                or (d.get("accelerator") == acc and (not region or d.get("region") == region)))]
        if not targets:
            raise TokenfleetError(f"--set {full}: no list item matches '{key}'")
        if not rest:
            raise TokenfleetError(f"--set {full}: cannot replace a whole list item")
        for t in targets:
            _set_path(t, rest, value, full)
        return
    if not isinstance(data, dict):
        raise TokenfleetError(f"--set {full}: '{key}' is not inside a mapping")
    aliases = {"price": "usd_per_chip_hour"}
    key = aliases.get(key, key) if "accelerator" in data else key
    if rest:
        if key not in data:
            raise TokenfleetError(f"--set {full}: no field '{key}'")
        _set_path(data[key], rest, value, full)
    else:
        data[key] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``--set a.b.c=value`` edits (value parsed as YAML), applied to a copy."""
    out = copy.deepcopy(data)
    for o in overrides:
        path, sep, raw = o.partition("=")
        if not sep:
            raise TokenfleetError(f"--set {o}: expected PATH=VALUE, e.g. "
                                  "supply.maia-200.price=4.5")
        _set_path(out, path.strip().split("."), yaml.safe_load(raw), o)
    return out


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> tuple[Scenario, Path]:
    """Read and validate a scenario; returns it and its directory (for relative paths)."""
    p = Path(path)
    data, node = read_yaml(p)
    if not isinstance(data, dict):
        raise TokenfleetError(f"{p}: a scenario is a mapping (name, tiers, supply, ...)")
    if overrides:
        data = apply_overrides(data, overrides)
        node = None  # line numbers no longer match after edits
    return validate(Scenario, data, str(p), node), p.parent


def explain_schema() -> str:
    """Every scenario field with its type and description, for --explain-schema."""
    lines: list[str] = []

    def walk(model: type[BaseModel], indent: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            desc = f.description or ""
            default = ("" if f.is_required() else
                       f" (default {f.get_default(call_default_factory=True)!r})")
            typ = getattr(ann, "__name__", str(ann)).replace("typing.", "")
            lines.append(f"{indent}{name}: {typ}{default}  {desc}".rstrip())
            for sub in _submodels(ann):
                walk(sub, indent + "  ")

    walk(Scenario, "")
    return "\n".join(lines)


def _submodels(ann: Any) -> list[type[BaseModel]]:
    out = []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    for a in getattr(ann, "__args__", ()) or ():
        out.extend(_submodels(a))
    return out
