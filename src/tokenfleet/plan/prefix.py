"""Prefix caching in the planner: per tier whose trace carries prefix-block hashes, the
hit rate the trace shows at the KV capacity the plan buys, priced into its candidates.

**The cache size the plan buys** is the tier's KV capacity where prompts are looked up:
over its aggregated pools and the prefill halves of its P/D pairs, replicas x engine
lanes (data-parallel ranks) x each lane's KV capacity in tokens (the memory left after
weights and activations, :func:`lane_kv_tokens`, the simulator's figure too), in whole
blocks of the trace's block size (512 tokens for Mooncake). A pair's decode half is left
out: it receives each prompt's KV from its prefill half and looks nothing up (as in
Mooncake's and Dynamo's P/D serving, and ``sim/disagg.py``). The figure in plan.json is
counted at the final plan's units (:func:`at_fleet`), not at an intermediate solve's.

**The hit rate there** is the exact offline LRU count (``workload.prefix``) on the
tier's trace as the simulator replays it (scaled by ``scale * growth``: copies are other
users with their own hashes), with one cache of that size. Why one cache describes a
fleet of per-lane caches: cache-affinity routing keeps a conversation where its prefix is
cached, between the aggregated pools and the pairs (``sim.disagg._follow_caches``) and
between lanes (``sim.prefix_cache.LaneAffinity``), so a turn finds its earlier turns as
in one cache. What the simulator still finds less: a window that starts with empty
caches (the count here runs over the whole trace), affinity declined for load, and the
turn whose lane evicted its prefix (a lane caches in its free KV). On the example
(600 s window) it lands about 3 points below this figure (benchmarks/RESULTS.md).

**Fixed point.** Caching lowers prefill work, so fewer units serve the tier, so less KV
is bought, so the hit rate falls. :func:`with_prefix_caching` solves plain, counts the
hit rate at the KV bought, re-prices the tier's candidates with it
(``Query.prefix_hit_rate``, ``perf/techniques.py``) and solves again, ``ITERATIONS``
times; the hit rate of the last fleet is the one priced in (reported as is, not
averaged). The re-builds share the first build's performance-model answers
(``candidates.EstimateMemo``, keyed on every field of each query): only the tier's
queries at the new hit rate are estimated anew. The saving: the tier's spend in the
plain solve minus in the last one, and the whole bill's (smaller where committed spend is
paid whether used or not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tokenfleet.catalog.loader import Catalog
from tokenfleet.perf.calibration import Calibration
from tokenfleet.perf.unit import UnitModel
from tokenfleet.plan.candidates import Candidate, CandidateSet
from tokenfleet.plan.scenario import Scenario, Tier
from tokenfleet.plan.schema import TierPrefixCache
from tokenfleet.plan.units import unit_model
from tokenfleet.workload.prefix import PrefixReuse, prefix_reuse
from tokenfleet.workload.readers import read_trace

ITERATIONS = 2
MAX_HIT_RATE = 0.95  # the performance model takes rates below 1; no trace comes near
# vLLM's and TensorRT-LLM's default KV-cache page size, tokens per block: a lane's KV
# capacity is whole pages (the simulator's ``sim.fleet.BLOCK_TOKENS``).
KV_PAGE_TOKENS = 16

# One solve: the chosen units and the plan's bill in USD per month (None: infeasible).
Solve = Callable[[CandidateSet], tuple[list[tuple[Candidate, int]], float] | None]
Rebuild = Callable[[Scenario, dict[str, float]], CandidateSet]


def lane_kv_tokens(um: UnitModel) -> int:
    """KV capacity of one engine lane (one data-parallel rank) in tokens, whole pages:
    the memory left for the KV cache over one token's KV (full-attention tokens; a
    speculative drafter's weights are off the budget and its KV per token is added,
    ``TechniqueUnit.memory``). The simulator's lanes hold this much (``sim.fleet``)."""
    mem = um.memory(1, 1)
    per_token = um.kv_seq_bytes_per_chip(1.0) + um.drafter_kv_seq_bytes_per_chip(1.0)
    if not mem.fits or per_token <= 0:
        return 0
    return int(mem.kv_budget_per_chip // per_token) // KV_PAGE_TOKENS * KV_PAGE_TOKENS


def candidate_kv_tokens(c: Candidate, catalog: Catalog, cal: Calibration) -> int:
    """KV tokens one replica of candidate ``c`` holds for prefix lookups (every lane): 0
    for a pair's decode half, which is handed each prompt's KV and looks nothing up."""
    if c.role == "decode":
        return 0
    e = next(iter(c.estimates.values()))
    if e.layout is None:
        return 0
    um, _ = unit_model(e.model, c.accelerator.id, c.precision, e.kv_precision, e.layout,
                       e.engine, catalog, cal)
    return lane_kv_tokens(um) * e.layout.dp


def tier_reuse(t: Tier, base: Path) -> PrefixReuse | None:
    """The exact offline reuse of the tier's trace as simulated, or None (no trace, or
    one without prefix hashes)."""
    tr = t.traffic
    if not tr.trace:
        return None
    p = Path(tr.trace)
    trace = read_trace(p if p.is_absolute() else base / p, format=tr.format)
    if trace.prefix_offsets is None:
        return None
    return prefix_reuse(trace.scale_rate(tr.scale * tr.growth))


def _tier_usd(chosen: list[tuple[Candidate, int]], tier: str, hours: float) -> float:
    return sum(c.usd_per_hour * n for c, n in chosen if c.tier == tier) * hours


def _merge(cs: CandidateSet, part: CandidateSet, tiers: set[str]) -> CandidateSet:
    """``cs`` with the candidates and demand of ``tiers`` taken from ``part``."""
    keep_rej = {k: v for k, v in cs.rejected.items() if k[0] not in tiers}
    notes = {k: v for k, v in cs.precision_notes.items() if k not in tiers}
    old = {c.id for c in cs.candidates if c.tier in tiers}
    pairs = {k: v for k, v in cs.pairs.items() if v[0] not in old} | part.pairs
    return replace(
        cs,
        demands=[d for d in cs.demands if d.tier not in tiers] + part.demands,
        candidates=[c for c in cs.candidates if c.tier not in tiers] + part.candidates,
        rejected={**keep_rej, **part.rejected},
        precision_notes={**notes, **part.precision_notes},
        prefix_cache=dict(cs.prefix_cache), prefix_reuse=dict(cs.prefix_reuse),
        pairs=pairs)


def tier_reuses(sc: Scenario, base: Path) -> dict[str, PrefixReuse]:
    """:func:`tier_reuse` of every tier whose trace carries prefix hashes."""
    return {t.name: r for t in sc.tiers if (r := tier_reuse(t, base)) is not None}


def with_prefix_caching(sc: Scenario, base: Path, cs: CandidateSet, catalog: Catalog,
                        cal: Calibration, rebuild: Rebuild, solve: Solve,
                        reuse: dict[str, PrefixReuse] | None = None) -> CandidateSet:
    """``cs`` with the candidates of every tier whose trace carries prefix hashes priced
    at the hit rate its trace shows at the KV the plan buys (module docstring), and that
    hit rate, its method and saving in ``prefix_cache``. ``cs`` unchanged when no tier
    has hashes or the plain problem has no solution (the caller explains that).
    ``reuse``: :func:`tier_reuses`, when the caller already has it."""
    if reuse is None:
        reuse = tier_reuses(sc, base)
    if not reuse:
        return cs
    first = solve(cs)
    if first is None:
        return cs
    chosen, plain_usd = first
    plain_tier = {n: _tier_usd(chosen, n, sc.hours_per_month) for n in reuse}
    sub = sc.model_copy(update={"tiers": [t for t in sc.tiers if t.name in reuse]})
    kv_per_replica: dict[str, int] = {}
    out, last_usd = cs, plain_usd
    hits: dict[str, float] = {}
    for _ in range(ITERATIONS):
        for c, _n in chosen:
            if c.tier in reuse and c.id not in kv_per_replica:
                kv_per_replica[c.id] = candidate_kv_tokens(c, catalog, cal)
        kv_blocks = {n: sum(kv_per_replica[c.id] * k for c, k in chosen if c.tier == n)
                     // r.block_tokens for n, r in reuse.items()}
        hits = {n: min(r.hit_rate(kv_blocks[n]), MAX_HIT_RATE) for n, r in reuse.items()}
        out = _merge(cs, rebuild(sub, hits), set(reuse))
        nxt = solve(out)
        if nxt is None:
            return cs
        chosen, last_usd = nxt
    for n, r in reuse.items():
        tier_usd = _tier_usd(chosen, n, sc.hours_per_month)
        blocks = sum(kv_per_replica.get(c.id, 0) * k for c, k in chosen
                     if c.tier == n) // r.block_tokens
        if any(c.id not in kv_per_replica for c, _k in chosen if c.tier == n):
            blocks = sum(candidate_kv_tokens(c, catalog, cal) * k for c, k in chosen
                         if c.tier == n) // r.block_tokens
        out.prefix_reuse[n] = (r, cal)
        out.prefix_cache[n] = TierPrefixCache(
            hit_rate=hits[n], cache_tokens=blocks * r.block_tokens,
            hit_rate_at_plan_kv=r.hit_rate(blocks), block_tokens=r.block_tokens,
            unbounded_hit_rate=r.unbounded_hit_rate(), iterations=ITERATIONS,
            method=_method(r),
            plain_usd_per_month=plain_tier[n], usd_per_month=tier_usd,
            saving_usd_per_month=plain_tier[n] - tier_usd,
            bill_saving_usd_per_month=plain_usd - last_usd)
    return out


def _method(r: PrefixReuse) -> str:
    return (f"exact offline LRU count of the tier's trace as simulated (scaled, "
            f"{r.requests:,} requests) with one cache the size of the KV where the plan "
            f"looks prompts up (aggregated pools and prefill halves of P/D pairs, not "
            f"decode halves: replicas x lanes x each lane's KV after weights, in "
            f"{r.block_tokens}-token blocks), counted at the final plan's units; one cache "
            f"because cache-affinity routing keeps a conversation on the path and lane "
            f"holding its prefix (simulate's per-lane caches land a few points below: its "
            f"window starts cold); candidates re-priced at the rate of the previous "
            f"solve's fleet, {ITERATIONS} times")


def at_fleet(cs: CandidateSet, chosen: list[tuple[Candidate, int]], catalog: Catalog
             ) -> dict[str, TierPrefixCache]:
    """``cs.prefix_cache`` with ``cache_tokens`` and ``hit_rate_at_plan_kv`` counted at
    the KV the final fleet ``chosen`` buys: the plan's later solves (verification, N-1
    re-solves) may buy more or other units than the fixed point's last solve, and the
    figure ``simulate`` is held to must describe the plan as written. The priced
    ``hit_rate`` stays the fixed point's (the prices were solved with it)."""
    out = dict(cs.prefix_cache)
    memo: dict[str, int] = {}
    for n, pc in cs.prefix_cache.items():
        got = cs.prefix_reuse.get(n)
        if got is None:
            continue
        r, cal = got
        tokens = 0
        for c, k in chosen:
            if c.tier == n:
                if c.id not in memo:
                    memo[c.id] = candidate_kv_tokens(c, catalog, cal)
                tokens += memo[c.id] * k
        blocks = tokens // r.block_tokens
        out[n] = pc.model_copy(update={"cache_tokens": blocks * r.block_tokens,
                                       "hit_rate_at_plan_kv": r.hit_rate(blocks)})
    return out
