"""From what a run measured to what a user reads: the ``--json`` summary, the Parquet
time series, the capacity timeline (failures, prices) and exact merging of runs of
independent parts of a fleet.

Power is integrated over the simulated span ``[0, end]`` from the capacity timeline,
which depends only on the plan and the shocks; money over the traffic's window
(:func:`billed_span_s`). Every planned replica is billed at its current $/chip-hour,
failed or not, and the fleet's bill is the plan's
formula (:func:`tokenfleet.plan.billing.bill_usd`: commitments and prepaid blocks in
full, pro rata to the span, plus metered usage beyond them), so an outage never lowers
the bill. Replicas that are up draw their TDP (``energy_kwh``, the same at-TDP
accounting as the plan's watts); ``energy_busy_kwh`` counts TDP only while a replica
computes (a lower bound).

Units: seconds, USD, kWh, tokens.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from tokenfleet.perf.metrics import Latency, attainment
from tokenfleet.plan.billing import bill_usd, metered_by_contract, period_fraction
from tokenfleet.plan.schema import PlanLimits
from tokenfleet.sim.engine import SERIES_LEVELS, SERIES_TOTALS, RunRecord
from tokenfleet.sim.fleet import PoolInfo
from tokenfleet.sim.metrics import GroupStats, percentile
from tokenfleet.sim.shocks import Failure, PriceChange

LITTLE_TOLERANCE = 0.05  # relative; sampled N(t) against lambda * W


class TierResult(BaseModel):
    requests: int = Field(description="arrived for this tier")
    completed: int
    rejected: int
    shed: int = Field(0, description="of the rejected: turned away by admission control")
    retried: int = Field(description="requests re-queued after a failure (each once)")
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    ttft_s: Latency
    tpot_s: Latency
    e2e_s: Latency
    queue_s: Latency
    slo_attainment: float | None = Field(
        description="fraction of arrived requests finished within both SLOs")
    goodput_fraction: float | None = Field(
        None, description="fraction of the offered (arrived) requests completed within both "
                          "SLOs, shed and rejected ones counting as misses (the same number "
                          "as slo_attainment): what an N-1 promise (serve >= min_fraction "
                          "of peak at SLO) is checked on")
    mean_ttft_within_slo: bool | None = Field(description="mean TTFT <= SLO (the plan's "
                                                          "promise is on its percentiles)")
    mean_tpot_within_slo: bool | None
    output_tokens_per_s: float
    goodput_requests_per_s: float
    goodput_output_tokens_per_s: float
    prefix_cache_hit_rate: float | None = Field(
        None, description="prompt tokens served from the replicas' prefix caches / prompt "
                          "tokens routed (None: the traffic carries no prefix hashes)")


class PoolResult(BaseModel):
    tier: str
    accelerator: str
    vendor: str
    cloud: str
    region: str
    replicas: int
    requests: int = Field(description="routing decisions to this pool, retries included")
    completed: int
    moved_away: int = Field(description="requests re-queued elsewhere when replicas failed")
    ttft_s: Latency
    tpot_s: Latency
    e2e_s: Latency
    slo_attainment: float | None = Field(
        description="of the requests routed to it; failed, shed or moved away count as misses "
                    "(tokenfleet.perf.metrics)")
    utilization: float | None = Field(description="busy time / up time of its engines")
    kv_occupancy_mean: float | None
    kv_occupancy_max: float | None
    queue_max: float
    preemptions: int
    output_tokens_per_s: float
    cost_usd: float
    energy_kwh: float
    prefix_cache_hit_rate: float | None = Field(
        None, description="prompt tokens this pool served from its prefix caches / looked up")
    role: str = Field("both", description="both, or the prefill / decode half of a "
                                          "disaggregated pair (sim/disagg.py): its latencies "
                                          "are its own stage's, its tokens its own run's")


class LittleCheck(BaseModel):
    in_system_mean: float = Field(description="L: time-average of sampled requests in system")
    arrival_rate_per_s: float = Field(description="lambda over the simulated span")
    sojourn_mean_s: float = Field(description="W: mean time in system (rejections count 0)")
    relative_error: float
    ok: bool


class Checks(BaseModel):
    conservation_ok: bool = Field(description="requests == completed + rejected")
    in_flight_at_end: int
    littles_law: LittleCheck


class SimSummary(BaseModel):
    """The ``--json`` output of ``tokenfleet simulate``."""

    source: str
    policy: str
    seed: int
    admission: str = Field("none", description="admission control: none | ttft")
    requests: int
    completed: int
    retried: int
    rejected: int
    rejected_by_reason: dict[str, int]
    retry_attempts: int
    preemptions: int
    sim_duration_s: float
    wall_s: float
    simulated_requests_per_s: float = Field(description="requests / wall second")
    cost_usd: float
    energy_kwh: float
    energy_busy_kwh: float
    usd_per_million_output_tokens: float | None
    tiers: dict[str, TierResult]
    pools: dict[str, PoolResult]
    shocks: list[str]
    checks: Checks
    notes: list[str] = []


# ---- capacity timeline ------------------------------------------------------------------


def capacity_segments(info: PoolInfo, pool: str, failures: list[Failure],
                      prices: list[PriceChange], end_s: float
                      ) -> list[tuple[float, float, int, float]]:
    """``(t0, t1, up replicas, $/chip-hour)`` pieces covering ``[0, end_s]`` for a pool.

    Failures take out a prefix of the replicas (all of them for vendor/cloud/region
    selectors), so overlapping failures leave ``replicas - max(down)`` up.
    """
    unit = info.unit
    cuts = {0.0, end_s}
    for f in failures:
        if f.replicas_of(unit):
            cuts.update(t for t in (f.start, f.end) if t is not None and t < end_s)
    hits = [p for p in prices if p.matches(unit)]
    cuts.update(p.start for p in hits if p.start < end_s)
    times = sorted(cuts)
    out = []
    for t0, t1 in zip(times, times[1:], strict=False):
        mid = (t0 + t1) / 2
        down = max((f.replicas_of(unit) for f in failures
                    if f.start <= mid and (f.end is None or mid < f.end)), default=0)
        usd = info.unit.usd_per_chip_hour
        for p in sorted(hits, key=lambda p: p.start):
            if p.start <= mid:
                usd = p.usd_per_chip_hour
        out.append((t0, t1, info.unit.replicas - down, usd))
    return out


def up_replicas_at(info: PoolInfo, pool: str, failures: list[Failure], t: float) -> int:
    unit = info.unit
    down = max((f.replicas_of(unit) for f in failures
                if f.start <= t and (f.end is None or t < f.end)), default=0)
    return info.unit.replicas - down


# ---- summary -----------------------------------------------------------------------------


def _latency(g: GroupStats, row: int, metric: str) -> Latency:
    h = g.hist[metric][row]
    c = int(g.counts[metric][row])
    return Latency(p50=percentile(h, 50), p90=percentile(h, 90), p99=percentile(h, 99),
                   mean=float(g.sums[metric][row] / c) if c else None, count=c)


def _in_system_fine(rec: RunRecord) -> np.ndarray:
    """Requests in the system at the end of every fine bin, up to the end of the run."""
    n = max(int(math.ceil(rec.end_s / rec.fine_s)), 1)
    arr = np.zeros(n, np.int64)
    dep = np.zeros(n, np.int64)
    a, d = rec.arrivals_fine[:n], rec.departures_fine[:n]
    arr[:a.size] = a
    dep[:d.size] = d
    return np.cumsum(arr) - np.cumsum(dep)


def in_system_series(rec: RunRecord) -> np.ndarray:
    """Requests in the system at each sample time ``(j + 1) * sample_s``."""
    n = len(next(iter(rec.series.values()))["running"]) if rec.series else int(
        math.ceil(rec.end_s / rec.sample_s))
    fine = np.cumsum(np.pad(rec.arrivals_fine, (0, max(0, rec.departures_fine.size
                                                       - rec.arrivals_fine.size)))
                     - np.pad(rec.departures_fine, (0, max(0, rec.arrivals_fine.size
                                                           - rec.departures_fine.size))))
    per = max(int(round(rec.sample_s / rec.fine_s)), 1)
    idx = np.minimum((np.arange(n) + 1) * per - 1, fine.size - 1)
    return fine[idx] if fine.size else np.zeros(n, np.int64)


def _per_sample(rec: RunRecord, counts: np.ndarray, n: int) -> np.ndarray:
    """Fine-bin counts summed per sample interval."""
    per = max(int(round(rec.sample_s / rec.fine_s)), 1)
    c = np.zeros(n * per, np.int64)
    m = min(counts.size, c.size)
    c[:m] = counts[:m]
    return c.reshape(n, per).sum(axis=1)


def _hit_rate(rec: RunRecord, tier: str | None = None, pool: str | None = None
              ) -> float | None:
    """Prefix-cache hit rate of a tier's (or one pool's) lookups; None without caching."""
    got = [v for pid, v in rec.prefix_tokens.items()
           if (pool is None or pid == pool)
           and (tier is None or (pid in rec.pool_info and rec.pool_info[pid].unit.tier == tier))]
    looked = sum(v[1] for v in got)
    return sum(v[0] for v in got) / looked if looked else None


def billed_span_s(rec: RunRecord) -> float:
    """The window a run bills: from 0 to the end of the last arrival's fine bin. The
    fleet is rented continuously, so a window costs its length at the fleet's rate;
    the same traffic gives the same window whatever failed or how long queues took to
    drain, so an outage never shortens (lowers) the bill."""
    nz = np.flatnonzero(rec.arrivals_fine)
    return float(nz[-1] + 1) * rec.fine_s if nz.size else rec.end_s


def window_bill_usd(rec: RunRecord, pool_usd: dict[str, float],
                    limits: PlanLimits | None, prepaid: set[str]) -> float:
    """The fleet's bill over the simulated span: the plan's formula with commitments
    and prepaid blocks pro rata to the span (without the plan's limits: the sum of the
    pools' list value)."""
    if not limits:
        return sum(pool_usd.values())
    frac = period_fraction(billed_span_s(rec), limits.hours_per_month)
    terms = [k.terms(name) for name, k in limits.contracts.items()]
    units = {pid: rec.pool_info[pid].unit for pid in pool_usd if pid not in prepaid}
    metered = metered_by_contract(((u.accelerator, u.cloud, u.region, pool_usd[pid])
                                   for pid, u in units.items()), terms, frac)
    commit = {t.name: t.fixed_usd_per_month * frac for t in terms}
    fixed_prepaid = limits.prepaid_usd_per_month * frac
    used_prepaid = sum(usd for pid, usd in pool_usd.items() if pid in prepaid)
    return bill_usd(metered, commit, max(fixed_prepaid, used_prepaid), used_prepaid).usd


def summarize(rec: RunRecord, limits: PlanLimits | None = None,
              prepaid: set[str] | None = None) -> SimSummary:
    """The summary of a run; ``limits`` (a plan's) bills its commitments and prepaid
    blocks (``prepaid``: pool ids) with the plan's formula."""
    span = max(rec.end_s, 1e-9)
    tiers: dict[str, TierResult] = {}
    for name in rec.tier_names:
        g = rec.tiers
        i = g.row(name)
        slo_ttft, slo_tpot = rec.tier_slo[name]
        ttft, tpot = _latency(g, i, "ttft"), _latency(g, i, "tpot")
        arrived = int(g.arrived[i])
        tiers[name] = TierResult(
            requests=arrived, completed=int(g.completed[i]), rejected=int(g.rejected[i]),
            shed=int(g.shed[i]) if g.shed.size else 0,
            retried=int(g.retried[i]), slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot,
            ttft_s=ttft, tpot_s=tpot, e2e_s=_latency(g, i, "e2e"),
            queue_s=_latency(g, i, "queue"),
            slo_attainment=attainment(int(g.slo_met[i]), arrived),
            goodput_fraction=attainment(int(g.slo_met[i]), arrived),
            mean_ttft_within_slo=(None if slo_ttft is None or ttft.mean is None
                                  else ttft.mean <= slo_ttft),
            mean_tpot_within_slo=(None if slo_tpot is None or tpot.mean is None
                                  else tpot.mean <= slo_tpot),
            output_tokens_per_s=float(g.output_tokens[i]) / span,
            goodput_requests_per_s=float(g.slo_met[i]) / span,
            goodput_output_tokens_per_s=float(g.good_output_tokens[i]) / span,
            prefix_cache_hit_rate=_hit_rate(rec, name),
        )
    pools: dict[str, PoolResult] = {}
    total_energy = busy_energy = 0.0
    pool_usd: dict[str, float] = {}
    bill_s = billed_span_s(rec)
    for pid, info in rec.pool_info.items():
        g = rec.pools
        i = g.row(pid)
        segs = capacity_segments(info, pid, rec.failures, rec.prices, rec.end_s)
        # every planned replica is paid for, failed or not, over the traffic's window
        cost = sum((t1 - t0) * info.unit.replicas * usd * info.unit.chips_per_replica
                   for t0, t1, _, usd in capacity_segments(info, pid, [], rec.prices,
                                                            bill_s)) / 3600.0
        pool_usd[pid] = cost
        up_s = sum((t1 - t0) * up for t0, t1, up, _ in segs)
        energy = up_s * info.watts_per_replica / 3.6e6
        lanes = info.lanes_per_replica
        busy = rec.busy_s[pid]
        busy_energy += busy * info.watts_per_replica / lanes / 3.6e6
        total_energy += energy
        ser = rec.series[pid]
        occ = _occupancy(rec, pid, info)
        done = int(g.completed[i])
        pools[pid] = PoolResult(
            tier=info.unit.tier, accelerator=info.unit.accelerator, vendor=info.unit.vendor,
            cloud=info.unit.cloud, region=info.unit.region, replicas=info.unit.replicas,
            requests=int(g.arrived[i]), completed=done, moved_away=int(g.retried[i]),
            ttft_s=_latency(g, i, "ttft"), tpot_s=_latency(g, i, "tpot"),
            e2e_s=_latency(g, i, "e2e"),
            slo_attainment=attainment(int(g.slo_met[i]), int(g.arrived[i])),
            utilization=(busy / (up_s * lanes)) if up_s > 0 else None,
            kv_occupancy_mean=float(np.mean(occ)) if occ.size else None,
            kv_occupancy_max=float(np.max(occ)) if occ.size else None,
            queue_max=float(max(ser["waiting"], default=0.0)),
            preemptions=rec.preemptions[pid],
            output_tokens_per_s=float(g.output_tokens[i]) / span,
            cost_usd=cost, energy_kwh=energy, prefix_cache_hit_rate=_hit_rate(rec, pool=pid),
            role=info.unit.role)
    # Little's law, measured independently of the sojourn bookkeeping: the number in
    # the system sampled at every fine-bin boundary (from arrival and departure times).
    n_in = _in_system_fine(rec)
    lam = rec.requests / (n_in.size * rec.fine_s) if n_in.size else 0.0
    w_mean = rec.sojourn_s / rec.requests if rec.requests else 0.0
    l_mean = float(n_in.mean()) if n_in.size else 0.0
    rel = abs(l_mean - lam * w_mean) / max(lam * w_mean, 1e-12) if rec.requests else 0.0
    in_flight = rec.requests - rec.completed - rec.rejected
    total_cost = window_bill_usd(rec, pool_usd, limits, prepaid or set())
    out_tokens = int(rec.tiers.output_tokens.sum())
    shocks = [f.text for f in rec.failures] + [p.text for p in rec.prices]
    return SimSummary(
        source=rec.source, policy=rec.policy, seed=rec.seed, admission=rec.admission,
        requests=rec.requests,
        completed=rec.completed, retried=rec.retried, rejected=rec.rejected,
        rejected_by_reason=dict(sorted(rec.reject_reasons.items())),
        retry_attempts=rec.retries, preemptions=sum(rec.preemptions.values()),
        sim_duration_s=rec.end_s, wall_s=rec.wall_s,
        simulated_requests_per_s=rec.requests / rec.wall_s if rec.wall_s > 0 else 0.0,
        cost_usd=total_cost, energy_kwh=total_energy, energy_busy_kwh=busy_energy,
        usd_per_million_output_tokens=(total_cost / out_tokens * 1e6) if out_tokens else None,
        tiers=tiers, pools=pools, shocks=shocks,
        checks=Checks(
            conservation_ok=in_flight == 0 and rec.completed + rec.rejected == rec.requests,
            in_flight_at_end=in_flight,
            littles_law=LittleCheck(in_system_mean=l_mean, arrival_rate_per_s=lam,
                                    sojourn_mean_s=w_mean, relative_error=rel,
                                    ok=rel <= LITTLE_TOLERANCE),
        ),
        notes=rec.notes,
    )


def _occupancy(rec: RunRecord, pid: str, info: PoolInfo) -> np.ndarray:
    """KV occupancy (used / capacity of up replicas) at each sample with capacity up."""
    used = np.asarray(rec.series[pid]["kv_used_tokens"])
    cap = _kv_capacity(rec, pid, info, used.size)
    ok = cap > 0
    return used[ok] / cap[ok]


def _kv_capacity(rec: RunRecord, pid: str, info: PoolInfo, n: int) -> np.ndarray:
    t = (np.arange(n) + 1) * rec.sample_s
    up = np.array([up_replicas_at(info, pid, rec.failures, x) for x in t]) if n else \
        np.zeros(0)
    return up * info.lanes_per_replica * info.kv_tokens_per_lane


# ---- time series ---------------------------------------------------------------------------


def timeseries(rec: RunRecord) -> pl.DataFrame:
    """One row per (sample, pool) plus one ``pool == "fleet"`` row per sample.

    Columns: ``t_s`` (end of the interval), ``pool``, ``tier``, ``vendor``,
    ``accelerator``, ``up_replicas``, ``running``, ``waiting`` (requests),
    ``kv_occupancy`` (0..1), ``utilization`` (busy share of up engine time in the
    interval), ``routed`` and ``preemptions`` (in the interval), ``usd`` (cost of the
    interval); fleet rows: ``in_system``, ``arrivals``, ``departures``.
    """
    ss = rec.sample_s
    frames = []
    for pid, info in rec.pool_info.items():
        ser = rec.series[pid]
        n = len(ser["running"])
        if n == 0:
            continue
        t = (np.arange(n) + 1) * ss
        up = np.array([up_replicas_at(info, pid, rec.failures, x - ss / 2) for x in t])
        cap = _kv_capacity(rec, pid, info, n)
        used = np.asarray(ser["kv_used_tokens"])
        busy = np.diff(np.asarray(ser["busy_s"]), prepend=0.0)
        lanes_up = up * info.lanes_per_replica
        segs = capacity_segments(info, pid, rec.failures, rec.prices, n * ss)
        usd = np.zeros(n)
        for t0, t1, u, price in segs:
            # Spread each piece's cost over the intervals it covers.
            j0, j1 = int(t0 // ss), min(int(math.ceil(t1 / ss)), n)
            for j in range(j0, j1):
                lo, hi = max(t0, j * ss), min(t1, (j + 1) * ss)
                if hi > lo:
                    usd[j] += (hi - lo) * u * price * info.unit.chips_per_replica / 3600.0
        frames.append(pl.DataFrame({
            "t_s": t, "pool": [pid] * n, "tier": [info.unit.tier] * n,
            "vendor": [info.unit.vendor] * n, "accelerator": [info.unit.accelerator] * n,
            "up_replicas": up.astype(np.int64),
            "running": np.asarray(ser["running"]), "waiting": np.asarray(ser["waiting"]),
            "kv_occupancy": np.divide(used, cap, out=np.zeros(n), where=cap > 0),
            "utilization": np.divide(busy, lanes_up * ss, out=np.zeros(n),
                                     where=lanes_up > 0),
            "routed": np.diff(np.asarray(ser["routed"]), prepend=0.0),
            "preemptions": np.diff(np.asarray(ser["preemptions"]), prepend=0.0),
            "usd": usd,
        }))
    n_in = in_system_series(rec)
    n = n_in.size
    if n:
        a = _per_sample(rec, rec.arrivals_fine, n)
        d = _per_sample(rec, rec.departures_fine, n)
        frames.append(pl.DataFrame({
            "t_s": (np.arange(n) + 1) * ss, "pool": ["fleet"] * n,
            "in_system": n_in.astype(np.int64), "arrivals": a, "departures": d,
        }))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed").sort(["t_s", "pool"])


# ---- merging runs of independent parts ----------------------------------------------------


def _pad(v: list[float], n: int, level: bool) -> list[float]:
    if len(v) >= n:
        return v
    fill = 0.0 if level else (v[-1] if v else 0.0)
    return v + [fill] * (n - len(v))


def merge_records(recs: list[RunRecord], wall_s: float | None = None) -> RunRecord:
    """One record from runs of disjoint pools (and disjoint requests) of one plan.

    Exact: histograms and counts add; a part that finished early is extended with idle
    samples up to the common end (its queues are empty then, and capacity and cost
    come from the shared timeline)."""
    if not recs:
        raise ValueError("nothing to merge")
    if len(recs) == 1:
        return recs[0]
    first = recs[0]
    n = max(max((len(s["running"]) for s in r.series.values()), default=0) for r in recs)
    series: dict[str, dict[str, list[float]]] = {}
    info: dict[str, PoolInfo] = {}
    tiers = GroupStats.empty(first.tier_names)
    pools = GroupStats.empty([])
    reasons: dict[str, int] = {}
    length = max(max(r.arrivals_fine.size, r.departures_fine.size) for r in recs)
    arr = np.zeros(length, np.int64)
    dep = np.zeros(length, np.int64)
    for r in recs:
        tiers = tiers.merge(r.tiers)
        pools = pools.merge(r.pools)
        for k, v in r.reject_reasons.items():
            reasons[k] = reasons.get(k, 0) + v
        arr[:r.arrivals_fine.size] += r.arrivals_fine
        dep[:r.departures_fine.size] += r.departures_fine
        info.update(r.pool_info)
        for pid, ser in r.series.items():
            series[pid] = {c: _pad(ser[c], n, c in SERIES_LEVELS) for c in
                           SERIES_LEVELS + SERIES_TOTALS}
    return replace(
        first, tiers=tiers, pools=pools, pool_info=info, reject_reasons=reasons,
        requests=sum(r.requests for r in recs), completed=sum(r.completed for r in recs),
        rejected=sum(r.rejected for r in recs), retried=sum(r.retried for r in recs),
        retries=sum(r.retries for r in recs),
        preemptions={k: v for r in recs for k, v in r.preemptions.items()},
        busy_s={k: v for r in recs for k, v in r.busy_s.items()},
        sojourn_s=sum(r.sojourn_s for r in recs), series=series,
        prefix_tokens={k: v for r in recs for k, v in r.prefix_tokens.items()},
        arrivals_fine=arr, departures_fine=dep,
        end_s=max(r.end_s for r in recs),
        wall_s=wall_s if wall_s is not None else max(r.wall_s for r in recs),
        source=first.source, notes=[x for r in recs for x in r.notes],
    )
