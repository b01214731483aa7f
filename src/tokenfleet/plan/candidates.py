"""Demand per (tier, size bucket) and candidate pools with their SLO capacity.

A candidate is one way to build a pool: tier x supply entry (chip, cloud, region) x
precision x chips per unit. Its capacity per bucket comes from the performance model
in SLO mode (the highest throughput that meets the tier's SLO), derated by the
estimate's uncertainty band so the plan holds at the pessimistic end of the band.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from tokenfleet.catalog.loader import Catalog
from tokenfleet.catalog.schema import Accelerator
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration
from tokenfleet.perf.estimate import Estimate, Query, estimate, layout_screen
from tokenfleet.perf.operating import OperatingPoint, UnitCache
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.perf.techniques import check_speculation
from tokenfleet.perf.unit import Layout, layouts_for
from tokenfleet.plan.disagg import (
    Half,
    demand_by_bucket,
    half_capacity,
    pair_link_gbps,
    rank_halves,
)
from tokenfleet.plan.risk import confidence_factor
from tokenfleet.plan.scenario import Scenario, Supply, Tier
from tokenfleet.plan.schema import BucketCapacity, PlanUnit, TierPrefixCache
from tokenfleet.plan.tail import QUEUE_SHARE, binding_percentile, burst_factor, tail_rate_factor
from tokenfleet.workload import SizeBuckets, read_trace
from tokenfleet.workload.buckets import busiest_window
from tokenfleet.workload.prefix import PrefixReuse
from tokenfleet.workload.trace import Trace

MAX_COUNT = 64


@dataclass(frozen=True)
class Demand:
    """Peak demand of one size bucket of one tier (before headroom)."""

    tier: str
    bucket: str
    input_len: int
    output_len: int
    rate_per_s: float
    # prompt tokens at the tier's TTFT percentile within the bucket: the long prompts
    # a unit must still prefill within the TTFT SLO (0: the bucket has no spread known)
    input_len_tail: int = 0
    # capacity the tier's bursts need, as a multiple of its peak-window rate
    # (plan.tail.burst_factor; 1 for a rate and mix): the plan buys the larger of this
    # and 1 + headroom
    burst: float = 1.0

    def need_per_s(self, headroom: float) -> float:
        """Requests/s the plan provisions for this bucket: its peak with headroom, or
        what the tier's bursts need at its TTFT percentile, whichever is more."""
        return self.rate_per_s * max(1.0 + headroom, self.burst)

    def traffic_per_need(self, headroom: float) -> float:
        """Peak traffic (headroom included) per request/s provisioned: 1 unless bursts
        set the need. What turns the MILP's served rates back into traffic, for shares
        of traffic (a burst margin is capacity, not tokens anyone asked for)."""
        return (1.0 + headroom) / max(1.0 + headroom, self.burst)


@dataclass
class Candidate:
    """One pool option. Capacities are per replica, requests/s, per bucket label."""

    id: str
    tier: str
    supply_index: int
    accelerator: Accelerator
    cloud: str
    region: str
    precision: str
    count: int
    usd_per_chip_hour: float
    price_kind: str
    capacity: dict[str, float]  # derated
    estimates: dict[str, Estimate]
    uncertainty: float
    # disaggregated serving (plan/disagg.py): "prefill" or "decode" half of pair ``pair``
    role: str = "both"
    pair: str | None = None
    link_basis: str = ""  # prefill half: the KV link it is priced on
    speculative: str | None = None  # speculative decoding it runs (Tier.speculative)

    @property
    def vendor(self) -> str:
        return self.accelerator.vendor

    @property
    def usd_per_hour(self) -> float:
        return self.usd_per_chip_hour * self.count

    @property
    def watts(self) -> float:
        return self.accelerator.tdp_w * self.count

    def plan_unit(self, replicas: int, prepaid: bool, pool: str | None = None,
                  price_kind: str | None = None, usd_per_chip_hour: float | None = None
                  ) -> PlanUnit:
        """This option as a plan pool of ``replicas`` (the peak plan's; the day plan
        overrides the id, price kind and price of its reserved and spot layers)."""
        e0 = next(iter(self.estimates.values()))  # one layout per pool: all share it
        price = self.usd_per_chip_hour if usd_per_chip_hour is None else usd_per_chip_hour
        return PlanUnit(
            pool=pool or self.id, tier=self.tier, model=e0.model,
            accelerator=self.accelerator.id, vendor=self.vendor, cloud=self.cloud,
            region=self.region, precision=self.precision, kv_precision=e0.kv_precision,
            engine=e0.engine, layout=e0.layout or Layout(), chips_per_replica=self.count,
            replicas=replicas, chips=replicas * self.count,
            price_kind=price_kind or self.price_kind, usd_per_chip_hour=price,
            usd_per_hour=price * self.count * replicas, watts=self.watts * replicas,
            capacity=[BucketCapacity(bucket=b, requests_per_s=cap,
                                     requests_per_s_point=e.requests_per_s or 0.0,
                                     output_tokens_per_s=e.output_tokens_per_s or 0.0,
                                     concurrency=e.concurrency or 0.0,
                                     ttft_s=e.ttft_s or 0.0, tpot_s=e.tpot_s or 0.0)
                      for b, cap in self.capacity.items() for e in [self.estimates[b]]],
            provenance=e0.provenance, uncertainty=self.uncertainty, prepaid=prepaid,
            role=self.role, pair=self.pair, kv_link=self.link_basis or None,
            speculative=self.speculative)


@dataclass
class CandidateSet:
    demands: list[Demand]
    candidates: list[Candidate]
    # why options were left out: (tier, bucket or '*', accelerator, precision) -> reason
    # (for a bucket: the reason at the largest unit size tried)
    rejected: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    precision_notes: dict[str, list[str]] = field(default_factory=dict)
    # tier -> prefix caching priced into its candidates (plan/prefix.py)
    prefix_cache: dict[str, TierPrefixCache] = field(default_factory=dict)
    # tier -> the exact offline count of its trace and the calibration its lanes' KV was
    # sized with, so the final plan's figure is counted at the KV it buys (plan/prefix.py)
    prefix_reuse: dict[str, tuple[PrefixReuse, Calibration]] = field(default_factory=dict)
    # disaggregated pairs: pair id -> (prefill candidate id, decode candidate id)
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)


def tier_demand(tier: Tier, buckets: SizeBuckets, base: Path) -> list[Demand]:
    t = tier.traffic
    out: list[Demand] = []
    if t.trace:
        path = Path(t.trace)
        if not path.is_absolute():
            path = base / path
        trace = read_trace(path, format=t.format)
        tails = _tail_inputs(trace, buckets, float(tier.slo.ttft_percentile or 99))
        burst = _trace_burst(tier, trace)
        for d in buckets.demand(trace, peak_window_s=t.peak_window_s):
            if d.count == 0 or d.rate_at_peak_per_s <= 0:
                continue
            out.append(Demand(tier.name, d.bucket.label,
                              max(int(round(d.mean_input_tokens or 0)), 1),
                              max(int(round(d.mean_output_tokens or 0)), 1),
                              d.rate_at_peak_per_s * t.scale * t.growth,
                              tails.get(d.bucket.label, 0), burst))
        return out
    assert t.rate_per_s is not None and t.mix
    total = sum(m.share for m in t.mix)
    merged: dict[str, list[float]] = {}
    for m in t.mix:
        which = buckets.assign_lengths(np.asarray([m.input_len]), np.asarray([m.output_len]))
        label = buckets.buckets[int(which[0])].label
        acc = merged.setdefault(label, [0.0, 0.0, 0.0])
        w = m.share / total
        acc[0] += w
        acc[1] += w * m.input_len
        acc[2] += w * m.output_len
    for label, (w, i_sum, o_sum) in merged.items():
        out.append(Demand(tier.name, label, int(round(i_sum / w)), int(round(o_sum / w)),
                          t.rate_per_s * w * t.growth))
    return out


def _trace_burst(tier: Tier, trace: Trace) -> float:
    """The tier's burst factor (:func:`~tokenfleet.plan.tail.burst_factor`): the rate
    that queues at most ``QUEUE_SHARE`` of the TTFT SLO at its percentile through the
    trace's own arrivals, over the busiest window's rate (both at the tier's scale)."""
    t = tier.traffic
    if tier.slo.ttft_s is None or trace.is_empty:
        return 1.0
    scale = t.scale * t.growth
    peak = busiest_window(trace.arrival_s, t.peak_window_s)[1] / t.peak_window_s * scale
    return burst_factor(trace.arrival_s, peak, QUEUE_SHARE * tier.slo.ttft_s,
                        float(tier.slo.ttft_percentile or 99), scale)


def _tail_inputs(trace: Trace, buckets: SizeBuckets, percentile: float) -> dict[str, int]:
    """Bucket label -> prompt tokens at ``percentile`` of the bucket's requests."""
    which = buckets.assign(trace)
    out = {}
    for i, b in enumerate(buckets.buckets):
        mine = trace.input_tokens[which == i]
        if mine.size:
            out[b.label] = int(np.percentile(mine, percentile))
    return out


def _price(s: Supply, accel: Accelerator) -> tuple[float, str]:
    if s.usd_per_chip_hour:
        return s.usd_per_chip_hour, s.price_kind
    p = accel.price(s.cloud, s.price_kind) or accel.price(None, s.price_kind) or accel.price()
    if p is None:
        raise TokenfleetError(f"supply {accel.id} in {s.cloud}: no price in the catalog; "
                              "give usd_per_chip_hour")
    return p.usd_per_hour, s.price_kind


def default_counts(accel: Accelerator) -> list[int]:
    counts = {1, 2, 4, 8, 16, 32}
    if accel.scaleup_domain <= MAX_COUNT:
        counts.add(accel.scaleup_domain)
    return sorted(counts)


QueryKey = tuple


_QUERY_FIELDS = tuple(Query.model_fields)


def query_key(q: Query) -> QueryKey:
    """Every field of ``q`` (in the model's order), hashable: what a memo of
    ``estimate(q)`` is keyed on."""
    return tuple(map(q.__dict__.__getitem__, _QUERY_FIELDS))


@dataclass
class EstimateMemo:
    """The performance model's answers for one catalog and calibration, kept across the
    builds of one :func:`~tokenfleet.plan.planner.prepare` (the prefix-caching fixed
    point re-builds candidates at new hit rates: most queries repeat exactly). Keyed on
    every field of the query; the catalog and calibration are the memo's own (a build
    with others gets a fresh memo)."""

    catalog: Catalog
    cal: Calibration
    estimates: dict[QueryKey, Estimate] = field(default_factory=dict)
    screens: dict[tuple[QueryKey, int, int], OperatingPoint | None] = field(
        default_factory=dict)
    screeners: dict[QueryKey, Callable[[int, int], OperatingPoint] | None] = field(
        default_factory=dict)
    units: UnitCache = field(default_factory=UnitCache)  # one unit, every bucket's shape
    demands: dict[tuple[int, tuple, tuple, str], tuple[Tier, list[Demand]]] = field(
        default_factory=dict)

    def demand(self, t: Tier, buckets: SizeBuckets, base: Path) -> list[Demand]:
        """:func:`tier_demand`, once per tier, buckets and base (the re-builds' scenario
        holds the same tier objects; the tier is kept, so its id stays its own, and an
        equal one is asked for besides)."""
        k = (id(t), buckets.input_edges, buckets.output_edges, str(base))
        got = self.demands.get(k)
        if got is None or got[0] != t:
            got = self.demands[k] = (t, tier_demand(t, buckets, base))
        return list(got[1])

    def estimate(self, q: Query) -> Estimate:
        k = query_key(q)
        e = self.estimates.get(k)
        if e is None:
            e = self.estimates[k] = estimate(q, self.catalog, self.cal, units=self.units)
        return e

    def screen(self, plain: Query, key: QueryKey, input_len: int, output_len: int
               ) -> OperatingPoint | None:
        """:func:`~tokenfleet.perf.estimate.layout_screen` of ``plain`` (a
        :func:`screen_query`, ``key`` its :func:`query_key`) at one shape."""
        sk = (key, input_len, output_len)
        if sk not in self.screens:
            if key not in self.screeners:
                self.screeners[key] = layout_screen(plain, self.catalog, self.cal)
            at = self.screeners[key]
            self.screens[sk] = at(input_len, output_len) if at else None
        return self.screens[sk]


def screen_query(q: Query) -> Query:
    """``q`` as :func:`~tokenfleet.perf.estimate.layout_screen` reads it: that screen
    builds a plain unit, so prefix hit rate and speculation do not change its answer
    (the speculative setting is still checked by the estimate that follows)."""
    if q.prefix_hit_rate == 0.0 and q.speculative is None:
        return q
    return q.model_copy(update={"prefix_hit_rate": 0.0, "speculative": None})


# Whether prepare's builds share one EstimateMemo (False: each build its own, as a
# check that sharing changes nothing: tests/plan/test_prepare_memo.py).
SHARED_MEMO = True


@dataclass
class _Models:
    """The performance model as the candidate builder asks it (cached: the same chip in
    several clouds or regions performs the same)."""

    sc: Scenario
    catalog: Catalog
    cal: Calibration
    demands: list[Demand]
    memo: EstimateMemo
    tiers: dict[str, Tier] = field(default_factory=dict)
    prefix_hit_rates: Mapping[str, float] = field(default_factory=dict)  # plan/prefix.py

    def __post_init__(self) -> None:
        self.tiers = {t.name: t for t in self.sc.tiers}
        self.screener = cache(self._screener)
        self.screen = cache(self._screen)
        self.est = cache(self._est)
        self.role_est = self.memo.estimate

    def query(self, accel: str, layout: Layout, precision: str, d: Demand,
              ttft_only: bool = False, speculative: str | None = None) -> Query:
        t = self.tiers[d.tier]
        # Fields were validated with the scenario; skip re-validating thousands of
        # queries (model_construct still fills the defaults).
        return Query.model_construct(
            model=t.model, accelerator=accel, count=layout.chips, precision=precision,
            engine=t.engine, input_len=d.input_len, output_len=d.output_len,
            slo_ttft=t.slo.ttft_s, slo_tpot=None if ttft_only else t.slo.tpot_s,
            usd_per_hour=1.0, layout=layout, speculative=speculative,
            prefix_hit_rate=self.prefix_hit_rates.get(d.tier, 0.0))

    def _screener(self, accel: str, layout: Layout, precision: str, tier: str,
                  ttft_only: bool = False) -> tuple[Query, QueryKey]:
        """The query a layout's screen is built from (the tier's first demand: the shape
        is given per bucket) as the screen reads it, and its key."""
        first = next(d for d in self.demands if d.tier == tier)
        plain = screen_query(self.query(accel, layout, precision, first, ttft_only))
        return plain, query_key(plain)

    def _screen(self, accel: str, layout: Layout, precision: str, d: Demand
                ) -> OperatingPoint | None:
        op = self.memo.screen(*self.screener(accel, layout, precision, d.tier),
                              d.input_len, d.output_len)
        if op is None or not op.fits or d.input_len_tail <= d.input_len:
            return op
        # prompt-length spread: the bucket's long prompts must prefill within the TTFT
        # SLO too (their TPOT is the mean's business: a percentile SLO allows some)
        op_tail = self.memo.screen(*self.screener(accel, layout, precision, d.tier, True),
                                   d.input_len_tail, d.output_len)
        if op_tail is not None and not op_tail.fits:
            return op_tail
        return op

    def _est(self, accel: str, layout: Layout, precision: str, d: Demand,
             speculative: str | None = None) -> Estimate:
        return self.memo.estimate(
            self.query(accel, layout, precision, d, speculative=speculative))


def tier_buckets(sc: Scenario) -> SizeBuckets:
    return SizeBuckets(input_edges=tuple(sc.buckets.input_edges),
                       output_edges=tuple(sc.buckets.output_edges))


def build_candidates(
    sc: Scenario,
    base: Path,
    catalog: Catalog,
    cal: Calibration,
    precision_gate: Callable[[Tier, str], tuple[bool, str]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    prefix_hit_rates: Mapping[str, float] | None = None,
    memo: EstimateMemo | None = None,
) -> CandidateSet:
    """Demand and every feasible candidate pool of the scenario (``prefix_hit_rates``:
    tier -> prefix-cache hit rate priced in, ``plan/prefix.py``; ``memo``: the
    performance model's answers of earlier builds, of the same catalog and calibration,
    filled in here too)."""
    buckets = tier_buckets(sc)
    memo = memo if memo is not None and memo.catalog is catalog and memo.cal is cal else (
        EstimateMemo(catalog, cal))
    demands: list[Demand] = []
    for t in sc.tiers:
        tier_d = memo.demand(t, buckets, base)
        if not tier_d:
            raise TokenfleetError(f"tier '{t.name}': traffic has no requests")
        demands.extend(tier_d)
    for t in sc.tiers:
        _check_speculation(t, catalog)
    models = _Models(sc, catalog, cal, demands, prefix_hit_rates=prefix_hit_rates or {},
                     memo=memo)
    cs = CandidateSet(demands, [])
    jobs = [(t, i, s) for t in sc.tiers for i, s in enumerate(sc.supply)]
    for j, (t, i, s) in enumerate(jobs):
        if progress:
            progress(j, len(jobs))
        if t.regions is not None and s.region not in t.regions:
            continue
        accel = catalog.accelerator(s.accelerator)
        for prec in t.precisions:
            if _precision_allowed(cs, t, accel, prec, precision_gate):
                _add_sizes(cs, models, t, i, s, accel, prec)
    if progress:
        progress(len(jobs), len(jobs))
    _prune_dominated(cs)
    if sc.disaggregation != "off":
        for t in sc.tiers:
            add_pairs(cs, models, t, precision_gate)
    return cs


def _check_speculation(t: Tier, catalog: Catalog) -> None:
    """The tier's model can run each speculative setting it lists (an MTP head; a draft
    model in the catalog, of its vocabulary)."""
    for i, text in enumerate(t.speculative):
        spec = parse_speculation(text)
        try:
            draft = catalog.model(spec.draft_model) if spec.draft_model else None
            check_speculation(catalog.model(t.model), spec, draft)
        except TokenfleetError as e:
            raise TokenfleetError(f"tier '{t.name}': speculative[{i}] = '{text}': {e}") from None


def _precision_allowed(cs: CandidateSet, t: Tier, accel: Accelerator, prec: str,
                       gate: Callable[[Tier, str], tuple[bool, str]] | None) -> bool:
    """Whether the chip runs ``prec`` and the tier's quality gate allows it (the reason
    is recorded when not)."""
    if not accel.peak_tflops(get_precision(prec).compute):
        cs.rejected[(t.name, "*", accel.id, prec)] = f"{accel.id} cannot run {prec}"
        return False
    if gate is None:
        return True
    ok, why = gate(t, prec)
    notes = cs.precision_notes.setdefault(t.name, [])
    if why and why not in notes:
        notes.append(why)
    if not ok:
        cs.rejected[(t.name, "*", accel.id, prec)] = why
    return ok


def _add_sizes(cs: CandidateSet, models: _Models, t: Tier, supply_index: int, s: Supply,
               accel: Accelerator, prec: str) -> None:
    """Candidates of one (tier, supply entry, precision), one per unit size tried."""
    model = models.catalog.model(t.model)
    price, kind = _price(s, accel)
    mine = [d for d in cs.demands if d.tier == t.name]
    smallest_fit: int | None = None
    all_served = False
    for n in s.counts or default_counts(accel):
        if n > s.max_chips:
            continue
        # Units far larger than the smallest that holds the model only add replicas'
        # worth of capacity, which the MILP gets from replica counts; keep growing only
        # while some bucket still misses its SLO (latency can need more chips per replica).
        if (s.counts is None and smallest_fit is not None
                and (n > 4 * smallest_fit or (n > 2 * smallest_fit and all_served))):
            break
        layout = _best_layout(cs, models, t, accel, prec, n,
                              layouts_for(model, n, accel, t.engine), mine)
        if layout is None:
            continue
        smallest_fit = smallest_fit or n
        all_served = True
        for spec in (None, *t.speculative):
            caps, ests = _capacities(models, t, accel, prec, layout, mine, spec)
            if spec is None:
                all_served = len(caps) == len(mine)
            if not ests:
                continue
            band = max((e.uncertainty.relative if e.uncertainty else 0.0)
                       for e in ests.values())
            cs.candidates.append(Candidate(
                id=f"{t.name}/{accel.id}/{s.cloud}/{s.region}/{prec}/x{n}{_spec_tag(spec)}",
                tier=t.name, supply_index=supply_index, accelerator=accel, cloud=s.cloud,
                region=s.region, precision=prec, count=n, usd_per_chip_hour=price,
                price_kind=kind, capacity=caps, estimates=ests, uncertainty=band,
                speculative=spec))


def _spec_tag(spec: str | None) -> str:
    """Pool-id suffix of a speculative option: '/mtp', '/fused-llama-3.2-1b'."""
    if spec is None:
        return ""
    parts = spec.split(":")
    return "/" + "-".join(parts[:2] if parts[0] != "mtp" else parts[:1])


def _best_layout(cs: CandidateSet, models: _Models, t: Tier, accel: Accelerator, prec: str,
                 n: int, layouts: list[Layout], mine: list[Demand]) -> Layout | None:
    """A pool runs one layout for all its traffic: the one that serves the tier's mix
    best (most buckets, then least replica-time)."""
    best: tuple[tuple[int, float], Layout] | None = None
    for lo in layouts:
        if lo.dp > 1 and lo.ep == 1:  # plain replicas: the MILP's job
            continue
        served, replica_time = 0, 0.0
        for d in mine:
            op = models.screen(accel.id, lo, prec, d)
            if op is None or not op.fits or op.output_tokens_per_s <= 0:
                cs.rejected[(t.name, d.bucket, accel.id, prec)] = (
                    f"x{n}: {op.reason if op else 'unsupported'}")
                continue
            served += 1
            replica_time += d.rate_per_s * d.output_len / op.output_tokens_per_s
        if served and (best is None or (-served, replica_time) < best[0]):
            best = ((-served, replica_time), lo)
    return None if best is None else best[1]


def _capacities(models: _Models, t: Tier, accel: Accelerator, prec: str, layout: Layout,
                mine: list[Demand], speculative: str | None = None
                ) -> tuple[dict[str, float], dict[str, Estimate]]:
    """Requests/s per replica and bucket the plan counts on: the model's SLO-mode rate
    (decoding with ``speculative`` when given), at the tier's SLO percentile
    (:mod:`tokenfleet.plan.tail`), derated by the estimate's uncertainty band."""
    caps: dict[str, float] = {}
    ests: dict[str, Estimate] = {}
    for d in mine:
        e = models.est(accel.id, layout, prec, d, speculative)
        if e.fits and e.requests_per_s:
            u = e.uncertainty.relative if e.uncertainty else 0.0
            caps[d.bucket] = e.requests_per_s * tail_factor(t, e) * risk_factor(models.sc, u)
            ests[d.bucket] = e
    return caps, ests


def risk_factor(sc: Scenario, band: float) -> float:
    """What the plan counts on of a point estimate with a ± ``band``: its lower quantile
    at the scenario's confidence (:mod:`tokenfleet.plan.risk`), or the older ``derate``
    multiple of the band."""
    if sc.derate is not None:
        return max(1.0 - sc.derate * band, 0.05)
    return confidence_factor(band, sc.confidence if sc.confidence is not None
                             else DEFAULT_CONFIDENCE)


DEFAULT_CONFIDENCE = 0.9


def tail_factor(t: Tier, e: Estimate) -> float:
    """Share of the steady SLO rate that keeps the tier's SLO percentile (Poisson
    arrivals; the trace's own bursts are in the demand, :attr:`Demand.burst`)."""
    pct = binding_percentile(e.ttft_s, e.tpot_s, t.slo.ttft_s, t.slo.tpot_s,
                             float(t.slo.ttft_percentile or 99),
                             float(t.slo.tpot_percentile or 90))
    return tail_rate_factor(float(e.concurrency or 1.0), pct)


def _prune_dominated(cs: CandidateSet, keep_per_group: int = 1) -> None:
    """Keep the MILP small: per (tier, supply entry, speculative setting), keep the unit
    options (precision x size) that are cheapest for the tier's demand mix, plus the
    smallest one that serves every bucket it can (fine-grained sizing matters for small
    demand)."""
    demand: dict[tuple[str, str], float] = defaultdict(float)
    for d in cs.demands:
        demand[(d.tier, d.bucket)] += d.rate_per_s
    # Speculative options form their own groups, so plain decoding always keeps its
    # best options too (the MILP chooses; plan/spec_why.py re-solves without them).
    groups: dict[tuple[str, int, str | None], list[Candidate]] = defaultdict(list)
    for c in cs.candidates:
        groups[(c.tier, c.supply_index, c.speculative)].append(c)
    keep: list[Candidate] = []
    for (tier, _, _), group in groups.items():
        buckets = {b for c in group for b in c.capacity}

        def score(c: Candidate, tier: str = tier, buckets: set[str] = buckets
                  ) -> tuple[int, float]:
            # $ per hour to serve this group's share of each bucket alone; buckets the
            # option cannot serve count against it first
            missing = sum(1 for b in buckets if b not in c.capacity)
            cost = sum(demand[(tier, b)] / cap for b, cap in c.capacity.items())
            return missing, cost * c.usd_per_hour

        ranked = sorted(group, key=score)
        chosen = ranked[:keep_per_group]
        smallest = min(ranked, key=lambda c: (score(c)[0], c.count, score(c)[1]))
        if smallest not in chosen:
            chosen.append(smallest)
        keep.extend(chosen)
    cs.candidates = keep


def _halves(cs: CandidateSet, models: _Models, t: Tier, role: str,
            gate: Callable[[Tier, str], tuple[bool, str]] | None) -> list[Half]:
    """Every (supply entry, precision, size) option of one role for tier ``t``, priced
    on the chip's own scale-out link (ranking only; pairs re-price prefill on theirs)."""
    model = models.catalog.model(t.model)
    mine = [d for d in cs.demands if d.tier == t.name]
    est = models.role_est
    out: list[Half] = []
    for i, s in enumerate(models.sc.supply):
        if t.regions is not None and s.region not in t.regions:
            continue
        accel = models.catalog.accelerator(s.accelerator)
        price, kind = _price(s, accel)
        for prec in t.precisions:
            if not _precision_allowed(cs, t, accel, prec, gate):
                continue
            smallest: int | None = None
            for n in s.counts or default_counts(accel):
                if n > s.max_chips or (smallest is not None and n > 2 * smallest):
                    continue
                if not layouts_for(model, n, accel, t.engine):
                    continue
                # a decode half may speculate (a prefill half makes one token a prompt)
                for spec in (None, *(t.speculative if role == "decode" else ())):
                    h = Half(t.name, role, i, s, accel, prec, n, price, kind, 0.0,
                             speculative=spec)
                    gbps = accel.scaleout_gbps / 2 if role == "prefill" else None
                    h.capacity, h.estimates, h.uncertainty = half_capacity(
                        est, t, h, mine, gbps, lambda e: _derated(models, t, e))
                    if h.capacity:
                        smallest = smallest or n
                        out.append(h)
    return out


def _derated(models: _Models, t: Tier, e: Estimate) -> float:
    u = e.uncertainty.relative if e.uncertainty else 0.0
    assert e.requests_per_s is not None
    return e.requests_per_s * tail_factor(t, e) * risk_factor(models.sc, u)


def add_pairs(cs: CandidateSet, models: _Models, t: Tier,
              gate: Callable[[Tier, str], tuple[bool, str]] | None = None) -> None:
    """Disaggregated candidates of tier ``t`` (:mod:`tokenfleet.plan.disagg`): the
    cheapest prefill and decode options crossed, each pair's prefill half priced on the
    link to its decode half; both halves of a pair are candidates of their own. With
    ``PAIR_SCREEN``, only pairs that can pay are kept (:func:`_screen_pairs`)."""
    demand = demand_by_bucket(cs.demands, t.name)
    mine = [d for d in cs.demands if d.tier == t.name]
    pre = rank_halves(_halves(cs, models, t, "prefill", gate), demand)
    decs = _halves(cs, models, t, "decode", gate)
    # the best decode halves of each speculative setting (plain decoding's too)
    dec = [h for spec in (None, *t.speculative)
           for h in rank_halves([x for x in decs if x.speculative == spec], demand)]
    made: list[tuple[str, Candidate, Candidate]] = []
    for p in pre:
        for d in dec:
            gbps, basis = pair_link_gbps(p.accelerator, p.supply, p.count, d.accelerator,
                                         d.supply, d.count)
            caps, ests, band = half_capacity(models.role_est, t, p, mine, gbps,
                                             lambda e: _derated(models, t, e))
            both = sorted(set(caps) & set(d.capacity))
            if not both:
                continue
            pair = (f"{t.name}/pd/{p.accelerator.id}@{p.supply.cloud}/{p.supply.region}/"
                    f"{p.precision}/x{p.count}+{d.accelerator.id}@{d.supply.cloud}/"
                    f"{d.supply.region}/{d.precision}/x{d.count}{_spec_tag(d.speculative)}")
            halves = [Candidate(
                id=f"{pair}/{h.role}", tier=t.name, supply_index=h.supply_index,
                accelerator=h.accelerator, cloud=h.supply.cloud, region=h.supply.region,
                precision=h.precision, count=h.count, usd_per_chip_hour=h.usd_per_chip_hour,
                price_kind=h.price_kind, capacity={b: hc[b] for b in both},
                estimates={b: he[b] for b in both}, uncertainty=hb, role=h.role,
                pair=pair, link_basis=basis if h.role == "prefill" else "",
                speculative=h.speculative)
                for h, hc, he, hb in ((p, caps, ests, band),
                                      (d, d.capacity, d.estimates, d.uncertainty))]
            made.append((pair, halves[0], halves[1]))
    if PAIR_SCREEN:
        # per speculative setting of the decode half, as _prune_dominated groups them
        agg = [c for c in cs.candidates if c.tier == t.name]
        made = [m for spec in (None, *t.speculative) for m in _screen_pairs(
            [m for m in made if m[2].speculative == spec],
            [c for c in agg if c.speculative == spec], demand)]
    for pair, hp, hd in made:
        cs.candidates.extend([hp, hd])
        cs.pairs[pair] = (hp.id, hd.id)


PAIR_SCREEN = True


def _pair_usd_per_req(hp: Candidate, hd: Candidate, b: str) -> float:
    return (hp.usd_per_hour / hp.capacity[b] + hd.usd_per_hour / hd.capacity[b]) / 3600


def _screen_pairs(made: list[tuple[str, Candidate, Candidate]], agg: list[Candidate],
                  demand: dict[str, float]) -> list[tuple[str, Candidate, Candidate]]:
    """Pairs worth the MILP's time (each adds two pools and their N-1 routing copies):
    the cheapest pair for the tier's mix, and for each bucket the cheapest pair there,
    each only where it costs less per request than the tier's cheapest aggregated
    option for that bucket (or the tier has none). A heuristic screen, like
    ``_prune_dominated``: supply, power and policies could still favour a pair left out."""
    best_agg: dict[str, float] = {}
    for c in agg:
        for b, cap in c.capacity.items():
            best_agg[b] = min(best_agg.get(b, float("inf")), c.usd_per_hour / cap / 3600)

    def beats(m: tuple[str, Candidate, Candidate], b: str) -> bool:
        return _pair_usd_per_req(m[1], m[2], b) < best_agg.get(b, float("inf"))

    def mix(m: tuple[str, Candidate, Candidate]) -> tuple[int, float]:
        served = [b for b in demand if b in m[1].capacity]
        return (len(demand) - len(served),
                sum(demand[b] * _pair_usd_per_req(m[1], m[2], b) for b in served))

    keep: dict[str, tuple[str, Candidate, Candidate]] = {}
    if made:
        m = min(made, key=mix)
        if any(beats(m, b) for b in m[1].capacity):
            keep[m[0]] = m
    for b in demand:
        on_b = [m for m in made if b in m[1].capacity]
        if on_b:
            m = min(on_b, key=lambda m: _pair_usd_per_req(m[1], m[2], b))
            if beats(m, b):
                keep[m[0]] = m
    return list(keep.values())
