"""Simulated prefix-cache hit rates of a plan against the exact offline count.

    tokenfleet plan examples/frontier-lab.yaml --out plan.json
    PYTHONPATH=src python benchmarks/prefix_sim.py plan.json examples/frontier-lab.yaml \
        [600] [--no-affinity]

Simulates the scenario's traffic (first DURATION seconds) through the plan and prints,
per tier whose trace carries prefix hashes and per pool: the simulated hit rate (per-lane
LRU caches in the lanes' free KV; cache-affinity routing, or the plan's split alone with
``--no-affinity``), and the exact offline LRU count on the same requests with one cache
the size of one lane's KV and with one cache the size of the tier's lookup KV (the cache
size the plan buys: replicas x lanes x KV tokens per lane of its aggregated pools and
prefill halves), plus what the plan priced in.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tokenfleet.plan.schema import Plan
from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.fleet import build_fleet
from tokenfleet.sim.prefix_cache import offline_reuse
from tokenfleet.sim.run import prepare_workload, simulate
from tokenfleet.sim.traffic import scenario_traffic


def main(plan_path: str, scenario: str, duration_s: float, affinity: bool) -> None:
    plan = Plan.model_validate(json.loads(Path(plan_path).read_text()))
    w = prepare_workload(plan, scenario_traffic(plan, scenario, duration_s))
    w = w.subset(w.arrival_s < duration_s)
    t0 = time.perf_counter()
    res = simulate(plan, w, options=SimOptions(cache_affinity=affinity))
    print(f"simulated {len(w):,} requests in {time.perf_counter() - t0:.1f} s "
          f"({'cache-affinity routing' if affinity else 'plan split only'})")
    fleet = build_fleet(plan)
    priced = {t.name: t.prefix_cache for t in plan.tiers}
    for tier, tr in res.summary.tiers.items():
        reuse = offline_reuse(w, tier)
        if reuse is None:
            continue
        pools = [p for p in fleet.pools if p.unit.tier == tier]
        # the KV where prompts are looked up (a pair's decode half is handed the KV):
        # the cache size the planner counts at (plan/prefix.py)
        total_kv = sum(p.kv_tokens * p.lanes for p in pools if p.unit.role != "decode")
        pc = priced.get(tier)
        print(f"tier {tier}: {reuse.requests:,} requests; simulated hit rate "
              f"{tr.prefix_cache_hit_rate:.1%}; offline: unbounded "
              f"{reuse.unbounded_hit_rate():.1%}, one cache of the tier's whole KV "
              f"({total_kv / 1e6:.1f}M tokens) {reuse.hit_rate(total_kv // 512):.1%}"
              + (f"; plan priced {pc.hit_rate:.1%} (whole trace at "
                 f"{pc.cache_tokens / 1e6:.1f}M tokens: {pc.hit_rate_at_plan_kv:.1%})"
                 if pc else ""))
        for p in pools:
            sim = res.summary.pools[p.id].prefix_cache_hit_rate
            if sim is None or p.kv_tokens is None:  # a decode half: its KV is handed over
                print(f"  {p.id}: no cache lookups (decode half of a pair)")
                continue
            print(f"  {p.id}: {p.lanes} lanes of {p.kv_tokens / 1e6:.1f}M KV tokens; "
                  f"simulated {sim:.1%}; offline, one lane-sized cache "
                  f"{reuse.hit_rate(p.kv_tokens // 512):.1%}")
        print(f"  TTFT p99 {tr.ttft_s.p99:.2f} s, TPOT p90 {tr.tpot_s.p90 * 1e3:.0f} ms")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0], args[1], float(args[2]) if len(args) > 2 else 600.0,
         "--no-affinity" not in sys.argv)
