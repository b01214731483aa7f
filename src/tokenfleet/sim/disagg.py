"""Disaggregated prefill/decode pairs in the simulator: two engine runs composed.

A plan unit with ``role`` prefill or decode is one half of a pair (``PlanUnit.pair``).
The traffic a plan routes to a pair's decode pool is first prefilled by its prefill
pool, then its KV cache crosses the link between them, then it decodes:

1. requests are split between the aggregated pools and the pairs by the plan's shares
   (per tier and size bucket; seeded, so a replay is reproducible), then a request
   whose prefix one path holds follows it (cache affinity between paths);
2. aggregated pools: one ordinary run;
3. each pair's prefill pool runs its requests as prompt + 1 token (the engine's own
   continuous batching with chunked prefill, KV limits and failures); the time its
   first token is out, plus the KV handover on the pair's link
   (:func:`tokenfleet.perf.disagg.pair_link`: bytes / bandwidth + latency), is the
   request's arrival at the decode pool;
4. the decode pool runs them with their KV present: admission takes the prompt's KV
   blocks (so memory and preemption are real) but the prompt costs no compute and no
   token budget (:class:`DecodeSimulator`); the decode pool then makes the other
   output tokens;
5. the records merge: per request TTFT = decode-pool first token - arrival (prefill
   queue and compute, handover, joining the decode batch), TPOT from the decode run;
   every request is counted once as arrived (prefill run) and once as completed or
   rejected (where it ended); each pool keeps its own load, busy time and series.

A decode half with ``speculative`` set speculates in its run like an aggregated pool
(its drafter has no prompt to prefill: the prompt's KV arrives with the request). A
prefill half's ``speculative`` is not simulated: it does not decode, and the
performance model prices a prefill role without the drafter too.
"""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial

import numpy as np

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.perf import metrics as perf_metrics
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.disagg import pair_link, prompt_kv_bytes, transfer_s
from tokenfleet.plan.schema import BucketSplit, Plan, PlanUnit
from tokenfleet.routing.affinity import MIN_MATCH
from tokenfleet.sim.engine import RunRecord, SimOptions, Simulator
from tokenfleet.sim.fleet import EngineConfig, Fleet, build_fleet
from tokenfleet.sim.metrics import GroupStats
from tokenfleet.sim.prefix_kernels import follow_paths
from tokenfleet.sim.results import merge_records
from tokenfleet.sim.shocks import Failure, PriceChange
from tokenfleet.sim.traffic import Workload

AGGREGATED = "aggregated"
# A decode pool's token budget: prompts arrive as KV, so the budget (which bounds the
# prompt chunk one iteration computes) must not hold their admission back.
NO_BUDGET = 1 << 40


def pairs_of(plan: Plan) -> dict[str, tuple[PlanUnit, PlanUnit]]:
    """pair id -> (prefill unit, decode unit), for every whole pair of the plan."""
    halves: dict[str, dict[str, PlanUnit]] = defaultdict(dict)
    for u in plan.units:
        if u.pair is not None and u.role in ("prefill", "decode"):
            halves[u.pair][u.role] = u
    return {k: (h["prefill"], h["decode"]) for k, h in halves.items() if len(h) == 2}


def has_pairs(plan: Plan) -> bool:
    return any(u.role != "both" for u in plan.units)


class DecodeSimulator(Simulator):
    """The engine on decode pools: an admitted prompt takes its KV blocks in full (it
    must fit, or the lane waits for a departure) but no compute or token budget (its
    KV cache came from the prefill pool with the first token)."""

    def __init__(self, fleet: Fleet, workload: Workload, options: SimOptions | None = None,
                 failures: list[Failure] | None = None,
                 prices: list[PriceChange] | None = None) -> None:
        super().__init__(fleet, workload, options, failures, prices)
        self.ln.kv_arrives[:] = True


def _sub_plan(plan: Plan, units: list[PlanUnit], shares: dict[str, dict[str, float]]
              ) -> Plan:
    """``plan`` with only ``units`` and, per ``tier/bucket``, the given shares."""
    splits = [BucketSplit(tier=s.tier, bucket=s.bucket, input_len=s.input_len,
                          output_len=s.output_len, peak_requests_per_s=s.peak_requests_per_s,
                          shares=shares.get(f"{s.tier}/{s.bucket}", {}))
              for s in plan.traffic_split]
    return plan.model_copy(update={"units": units, "traffic_split": splits})


def _down_paths(plan: Plan, f: Failure) -> set[tuple[str, str]]:
    """(tier, path) that failure ``f`` takes down whole: a pair when either half loses
    every replica; a tier's aggregated path when all its aggregated pools do."""
    def gone(u: PlanUnit) -> bool:
        return f.replicas_of(u) >= u.replicas

    out = {(pre.tier, k) for k, (pre, dec) in pairs_of(plan).items() if gone(pre) or gone(dec)}
    for t in plan.tiers:
        agg = [u for u in plan.units if u.tier == t.name and u.role == "both"]
        if agg and all(gone(u) for u in agg):
            out.add((t.name, AGGREGATED))
    return out


def _draw(mix: dict[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` paths drawn by ``mix``."""
    names = sorted(k for k, v in mix.items() if v > 0)
    if not names:
        return np.full(n, AGGREGATED, dtype=object)
    p = np.array([mix[k] for k in names])
    return np.asarray(names, dtype=object)[rng.choice(len(names), n, p=p / p.sum())]


def _follow_caches(w: Workload, out: np.ndarray, tier_paths: dict[str, list[str]]
                   ) -> np.ndarray:
    """``out`` (each request's drawn path) with every request whose prompt's leading
    blocks some path holds longer than the tier's other paths moved to that path: the
    rule of cache-affinity routing (``routing.affinity``: the longest cached leading
    run, at least ``MIN_MATCH`` of the request's blocks) applied between the aggregated
    pools and the pairs, as a prefix-aware router in front of P/D pools (llm-d's) does.

    Why: the plan splits each size bucket over paths, and a conversation's turns grow
    through the buckets; drawn per bucket, its long late turns (the ones with most to
    reuse) went to a pair whose prefill caches never saw its early turns. Keying one
    draw per conversation on the prompt's first block does not help on Mooncake: every
    request there opens with the same block (a shared system prompt), so one draw per
    hash namespace sent a whole bucket down one path. A block every path holds (that
    system prompt) is no reason to move: only a run some path holds and another does
    not is. A request may so follow its conversation to a path the plan gives none of
    its size bucket: every path of a tier serves every size (the path's router spreads
    it over its pools by load). The record of what a path holds never evicts (the paths'
    KV together is far larger than one lane's; the lanes' own caches do evict).
    Deterministic: arrival order, ties to the drawn path, then the first path by name."""
    if w.prefix_row is None or w.prefix_offsets is None or w.prefix_hashes is None:
        return out
    out = out.copy()
    # Compiled (sim/prefix_kernels.follow_paths): only requests with hashes, of a tier
    # with paths to choose between, drawn to one of them, can move; as path indices.
    tiers = sorted(t for t, ps in tier_paths.items() if len(ps) > 1)
    # each path one bit of an int64 (a tier has its aggregated pools and a few pairs)
    assert all(len(tier_paths[t]) < 63 for t in tiers), "over 62 paths in one tier"
    pos = [{p: j for j, p in enumerate(tier_paths[t])} for t in tiers]
    key_tier = np.array([tiers.index(k.tier) if k.tier in tiers else -1 for k in w.keys],
                        dtype=np.int64)
    req_tier = key_tier[w.key] if len(w) else np.zeros(0, np.int64)
    idx = np.flatnonzero((w.prefix_row >= 0) & (req_tier >= 0))
    path = np.array([pos[t].get(p, -1) for t, p in zip(req_tier[idx].tolist(),
                                                        out[idx].tolist(), strict=True)],
                    dtype=np.int64)
    idx, path = idx[path >= 0], path[path >= 0]
    if not idx.size:
        return out
    new = follow_paths(np.argsort(w.arrival_s[idx], kind="stable").astype(np.int64),
                       np.ascontiguousarray(w.prefix_row[idx], dtype=np.int64),
                       np.ascontiguousarray(req_tier[idx]), path,
                       np.array([len(tier_paths[t]) for t in tiers], dtype=np.int64),
                       np.ascontiguousarray(w.prefix_offsets, dtype=np.int64),
                       np.ascontiguousarray(w.prefix_hashes).view(np.int64), float(MIN_MATCH))
    for q in np.flatnonzero(new != path).tolist():
        out[idx[q]] = tier_paths[tiers[int(req_tier[idx[q]])]][int(new[q])]
    return out


def assign_paths(plan: Plan, w: Workload, seed: int, failures: list[Failure] | None = None
                 ) -> np.ndarray:
    """Per request: the pair id it is served by, or ``AGGREGATED`` — drawn by the plan's
    shares of its (tier, bucket), then, where the trace carries prefix hashes, moved to
    the path that holds its prefix (:func:`_follow_caches`); a bucket the plan does not
    split takes its tier's mix.
    A request arriving while its path is down (``failures``) is drawn again among its
    tier's paths that are up, as the gateway re-routes around a dead pool."""
    decode_pair = {d.pool: k for k, (_, d) in pairs_of(plan).items()}
    by_key: dict[tuple[str, str], dict[str, float]] = {}
    by_tier: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in plan.traffic_split:
        mix: dict[str, float] = defaultdict(float)
        for pool, share in s.shares.items():
            path = decode_pair.get(pool, AGGREGATED)
            mix[path] += share
            by_tier[s.tier][path] += share * s.peak_requests_per_s
        by_key[(s.tier, s.bucket)] = mix
    rng = np.random.default_rng(seed)
    out = np.full(len(w), AGGREGATED, dtype=object)
    tier_of = np.array([k.tier for k in w.keys], dtype=object)[w.key] if len(w) else \
        np.zeros(0, dtype=object)
    for k, key in enumerate(w.keys):
        idx = np.flatnonzero(w.key == k)
        if idx.size:
            out[idx] = _draw(by_key.get((key.tier, key.bucket)) or by_tier.get(key.tier) or {},
                             idx.size, rng)
    out = _follow_caches(w, out, {t: sorted(p for p, v in m.items() if v > 0)
                                  for t, m in by_tier.items()})
    for f in failures or []:
        down = _down_paths(plan, f)
        end = np.inf if f.end is None else f.end
        during = (w.arrival_s >= f.start) & (w.arrival_s < end)
        for tier, path in down:
            hit = np.flatnonzero(during & (tier_of == tier) & (out == path))
            alive = {p: v for p, v in by_tier.get(tier, {}).items() if (tier, p) not in down}
            if hit.size and alive:
                out[hit] = _draw(alive, hit.size, rng)
    return out


def _workload(w: Workload, idx: np.ndarray, arrival: np.ndarray | None = None,
              out: np.ndarray | None = None, source: str = "") -> tuple[Workload, np.ndarray]:
    """Requests ``idx`` of ``w`` (new arrival times / outputs where given), by arrival,
    and the order that sorted them."""
    arr = w.arrival_s[idx] if arrival is None else arrival
    order = np.argsort(arr, kind="stable")
    sel = idx[order]
    prefix = w.prefix_of(sel) if arrival is None else {}  # KV handed over: no cache lookups
    return Workload(arr[order], w.input_tokens[sel],
                    (w.output_tokens[sel] if out is None else out[order]), w.key[sel], w.keys,
                    source or w.source, **prefix), order


def _run(sim: Simulator, fine_s: float, log: bool) -> tuple[RunRecord, np.ndarray | None]:
    # one departure-bin width for every part, so their counts add up when merged
    sim.fine_s, sim.inv_fine = fine_s, 1.0 / fine_s
    if log:
        sim.request_log = np.full((len(sim.w), 2), np.nan)
    rec = sim.run()
    return rec, sim.request_log


def handover_s(pre: PlanUnit, dec: PlanUnit, prompt_tokens: np.ndarray, catalog: Catalog
               ) -> np.ndarray:
    """Seconds each prompt's KV takes from ``pre`` to ``dec`` (the planner's link)."""
    link = pair_link(catalog.accelerator(pre.accelerator), (pre.cloud, pre.region),
                     pre.chips_per_replica, catalog.accelerator(dec.accelerator),
                     (dec.cloud, dec.region), dec.chips_per_replica)
    model = catalog.model(pre.model)
    chips = pre.layout.tp * pre.layout.pp
    lengths, inv = np.unique(prompt_tokens, return_inverse=True)
    per = np.array([transfer_s(prompt_kv_bytes(model, int(n), pre.kv_precision), link, chips)
                    for n in lengths])
    return per[inv] if per.size else np.zeros(0)


def _run_pair(plan: Plan, pid: str, pre: PlanUnit, dec: PlanUnit, w: Workload,
              idx: np.ndarray, opt: SimOptions, failures: list[Failure],
              prices: list[PriceChange], engine: EngineConfig | None, catalog: Catalog,
              cal: Calibration, fine_s: float) -> list[RunRecord]:
    """The prefill run, then the decode run, of the requests ``idx`` of pair ``pid``."""
    tier = pre.tier
    share = {f"{s.tier}/{s.bucket}": {pre.pool: 1.0} for s in plan.traffic_split
             if s.tier == tier}
    sel = idx[np.argsort(w.arrival_s[idx], kind="stable")]
    w_pre, _ = _workload(w, sel, out=np.ones(sel.size, np.int64),
                         source=f"{w.source} [prefill {pid}]")
    fleet = build_fleet(_sub_plan(plan, [pre], share), engine, catalog=catalog, cal=cal)
    rec_pre, log_pre = _run(Simulator(fleet, w_pre, opt, failures, prices), fine_s, True)
    assert log_pre is not None
    ok = ~np.isnan(log_pre[:, 0])
    move = handover_s(pre, dec, w.input_tokens[sel[ok]], catalog)
    at_decode = log_pre[ok, 0] + move
    share_d = {k: {dec.pool: 1.0} for k in share}
    fleet_d = build_fleet(_sub_plan(plan, [dec], share_d), engine, catalog=catalog, cal=cal)
    for p in fleet_d.pools:
        p.max_batched_tokens = NO_BUDGET
    w_dec, order = _workload(w, sel[ok], arrival=at_decode, source=f"{w.source} [decode {pid}]")
    rec_dec, log_dec = _run(DecodeSimulator(fleet_d, w_dec, opt, failures, prices), fine_s,
                            True)
    assert log_dec is not None
    orig = sel[ok][order]  # workload rows of the decode run's requests
    return _compose(plan, w, rec_pre, log_pre, rec_dec, log_dec, orig, float(move.sum()))


def _compose(plan: Plan, w: Workload, rec_pre: RunRecord, log_pre: np.ndarray,
             rec_dec: RunRecord, log_dec: np.ndarray, orig: np.ndarray, move_s: float
             ) -> list[RunRecord]:
    """The two runs of a pair as records that merge into one count per request."""
    names = rec_pre.tier_names
    done = ~np.isnan(log_dec[:, 1])
    rows = orig[done]
    first, last = log_dec[done, 0], log_dec[done, 1]
    arrival = w.arrival_s[rows]
    out = w.output_tokens[rows]
    tier_i = {n: i for i, n in enumerate(names)}
    group = np.array([tier_i[w.keys[k].tier] for k in w.key[rows]], dtype=np.int64)
    slo_ttft = np.array([t.slo_ttft_s if t.slo_ttft_s is not None else np.inf
                         for t in plan.tiers])
    slo_tpot = np.array([t.slo_tpot_s if t.slo_tpot_s is not None else np.inf
                         for t in plan.tiers])
    ttft = perf_metrics.ttft(arrival, first)
    tpot = perf_metrics.tpot(first, last, out)
    values = {"ttft": ttft, "tpot": tpot, "e2e": perf_metrics.e2e(arrival, last),
              "queue": np.full(rows.size, np.nan)}
    met = perf_metrics.meets_slo(ttft, tpot, slo_ttft[group], slo_tpot[group]).astype(np.int64)
    tiers = GroupStats.empty(names)
    tiers.add(group, values, met, out, w.input_tokens[rows])
    for a in ("arrived", "rejected", "retried", "shed"):
        getattr(tiers, a)[:] = getattr(rec_pre.tiers, a) + (
            getattr(rec_dec.tiers, a) if a != "arrived" else 0)
    # a prefilled request leaves the prefill run to go on; only its rejections depart
    ends = log_pre[~np.isnan(log_pre[:, 1]), 1]
    dep = rec_pre.departures_fine.copy()
    gone = np.bincount((ends / rec_pre.fine_s).astype(np.int64), minlength=dep.size)
    dep[:gone.size] -= gone[:dep.size]
    pre = replace(rec_pre, tiers=GroupStats.empty(names), completed=0, departures_fine=dep,
                  sojourn_s=rec_pre.sojourn_s + move_s)
    dec = replace(rec_dec, tiers=tiers, requests=0,
                  arrivals_fine=np.zeros_like(rec_dec.arrivals_fine))
    return [pre, dec]


def run_plan(plan: Plan, w: Workload, opt: SimOptions, failures: list[Failure] | None = None,
             prices: list[PriceChange] | None = None, engine: EngineConfig | None = None,
             catalog: Catalog | None = None, cal: Calibration | None = None,
             fleet: Fleet | None = None, workers: int = 1) -> RunRecord:
    """One replay of ``plan``: the engine alone when every pool is aggregated, else the
    composed runs of the module docstring (merged into one record).

    ``workers`` > 1: the independent parts (each tier's aggregated pools, each pair) run
    in that many forked processes; they share no pool and no request, so the merged
    record is the one a single process gives (tests/sim/test_disagg.py checks it)."""
    failures, prices = list(failures or []), list(prices or [])
    if not has_pairs(plan) and workers <= 1:
        fleet = fleet or build_fleet(plan, engine, catalog=catalog, cal=cal)
        return Simulator(fleet, w, opt, failures, prices).run()
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    if workers > 1:
        opt = replace(opt, progress=None)  # parts finish out of order
    path = assign_paths(plan, w, opt.seed, failures)
    # the departure-bin width the engine picks for the whole replay (Simulator.__init__)
    span = max(w.duration_s, opt.sync_s)
    fine_s = opt.sync_s * max(1, int(np.ceil(span / (opt.sync_s * 100_000))))
    parts: list[tuple[int, Callable[[], list[RunRecord]]]] = []  # (work, run)
    agg = [u for u in plan.units if u.role == "both"]
    agg_idx = np.flatnonzero(path == AGGREGATED)
    groups = [(agg, agg_idx)] if agg else []
    if workers > 1:  # one part per tier's aggregated pools: tiers share no pool
        tier_of = np.array([k.tier for k in w.keys] or [""], dtype=object)[w.key[agg_idx]]
        groups = [(units, agg_idx[tier_of == t.name]) for t in plan.tiers
                  if (units := [u for u in agg if u.tier == t.name])]
    for units, idx in groups:
        pools = {u.pool for u in units}
        shares = {f"{s.tier}/{s.bucket}": {p: v for p, v in s.shares.items() if p in pools}
                  for s in plan.traffic_split}
        sub, _ = _workload(w, idx, source=w.source)
        fl = build_fleet(_sub_plan(plan, units, shares), engine, catalog=catalog, cal=cal)
        sim = Simulator(fl, sub, opt, failures, prices)
        parts.append((_work(w, idx), partial(_run_agg, sim, fine_s)))
    for pid, (pre, dec) in sorted(pairs_of(plan).items()):
        idx = np.flatnonzero(path == pid)
        # two engine runs (prefill, then decode) per request
        parts.append((2 * _work(w, idx), partial(
            _run_pair, plan, pid, pre, dec, w, idx, opt, failures, prices, engine, catalog,
            cal, fine_s)))
    rec = merge_records(run_parts_forked(parts, workers))
    rec.source = w.source
    return rec


def _work(w: Workload, idx: np.ndarray) -> int:
    """A part's expected cost, to start the dearest first: its requests, those with
    prefix hashes counted PREFIX_WORK times (the cache and affinity bookkeeping, compiled
    since sim/prefix_kernels.py, still costs about twice the rest of a request: on the
    example's first 900 s under cProfile ~37 us a hashed request against ~21 us)."""
    hashed = int((w.prefix_row[idx] >= 0).sum()) if w.prefix_row is not None else 0
    return int(idx.size) + (PREFIX_WORK - 1) * hashed


PREFIX_WORK = 3


def _run_agg(sim: Simulator, fine_s: float) -> list[RunRecord]:
    return [_run(sim, fine_s, False)[0]]


_PARTS: list[tuple[int, Callable[[], list[RunRecord]]]] = []


def _call_part(i: int) -> list[RunRecord]:
    return _PARTS[i][1]()


def run_parts_forked(parts: list[tuple[int, Callable[[], list[RunRecord]]]], workers: int
                     ) -> list[RunRecord]:
    """Every part's records in the parts' order; with ``workers`` > 1, in forked
    processes (they inherit the parts, so only the records travel), the dearest parts
    first."""
    if workers <= 1 or len(parts) <= 1:
        return [r for _, run in parts for r in run()]
    global _PARTS
    _PARTS = parts
    try:
        order = sorted(range(len(parts)), key=lambda i: -parts[i][0])
        with ProcessPoolExecutor(min(workers, len(parts)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {i: pool.submit(_call_part, i) for i in order}
            out = [futures[i].result() for i in range(len(parts))]
    finally:
        _PARTS = []
    return [r for rs in out for r in rs]
