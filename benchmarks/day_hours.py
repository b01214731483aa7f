"""Replay every hour of a day plan (not only the four representative ones), with the
pools of each tier that misses its SLO percentiles.

    python benchmarks/day_hours.py SCENARIO PLAN_JSON [--window 300] [--time-limit 20]
                                   [--rounds 1] [--seed 0]

PLAN_JSON is a plan written by `tokenfleet plan SCENARIO` (verified: its re-sizing
carries over to the day, as `plan --over-day` does). The day is planned over the same
candidates (`tokenfleet.plan.day.plan_day`), every period replayed for ``--window``
seconds with expected spot reclaims (`tokenfleet.sim.day.simulate_day`); for each tier
that misses in a period, each of its pools: replicas, the load the day program routes
to it over its capacity at the SLO percentile (`plan.check.pool_load`, prefill halves
loaded by their decode halves' requests), and what the simulator measured (requests,
busy share, queue, TTFT p99 and TPOT p90). With ``--rounds`` > 1, the pools that missed
are re-sized as `plan --over-day` does and the day re-planned.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenfleet.catalog import load_catalog  # noqa: E402
from tokenfleet.plan.check import pool_load  # noqa: E402
from tokenfleet.plan.day import DaySolution, plan_day  # noqa: E402
from tokenfleet.plan.gates import precision_gate  # noqa: E402
from tokenfleet.plan.planner import prepare, scaled  # noqa: E402
from tokenfleet.plan.scenario import load_scenario  # noqa: E402
from tokenfleet.plan.schema import Plan  # noqa: E402
from tokenfleet.sim.day import simulate_day, spot_failures, thin  # noqa: E402
from tokenfleet.sim.disagg import run_plan  # noqa: E402
from tokenfleet.sim.engine import SimOptions, auto_sample_s  # noqa: E402
from tokenfleet.sim.results import summarize  # noqa: E402
from tokenfleet.sim.traffic import scenario_traffic  # noqa: E402


def pools_of_missing(ds: DaySolution, h: int, tier: str, scenario: str, window_s: float,
                     seed: int) -> None:
    """Replay period ``h`` again as simulate_day does and print the tier's pools."""
    plan = ds.period_plan(h)
    w = scenario_traffic(plan, scenario, window_s, seed)
    w = thin(w.subset(w.arrival_s < window_s, w.source), ds.plan.periods[h].multiplier,
             seed + h)
    opt = SimOptions(seed=seed, sample_s=auto_sample_s(w.duration_s, SimOptions().sync_s),
                     max_time_s=w.duration_s + 7 * 86400.0)
    s = summarize(run_plan(plan, w, opt, spot_failures(ds.plan, h, window_s, seed), []))
    load = pool_load(plan)
    for u in plan.units:
        if u.tier != tier:
            continue
        p = s.pools.get(u.pool)
        busy = load.get(u.pool)
        got = ("not replayed" if p is None else
               f"requests {p.requests:6d} busy {p.utilization or 0:4.2f} "
               f"queue max {p.queue_max:4.0f} TTFT p99 {p.ttft_s.p99 or 0:7.2f} s "
               f"TPOT p90 {1e3 * (p.tpot_s.p90 or 0):6.1f} ms")
        print(f"      {u.pool:70s} {u.role:7s} x{u.replicas:<3d} planned load "
              f"{'-' if busy is None else f'{busy:4.2f}'}  {got}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("plan_json")
    ap.add_argument("--window", type=float, default=300.0)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cat = load_catalog()
    sc, base = load_scenario(Path(a.scenario))
    cs = prepare(sc, base, cat, None, precision_gate(sc, base, a.scenario))
    peak = Plan.model_validate_json(Path(a.plan_json).read_text())
    scale = dict(peak.verification.resized) if peak.verification else {}
    for r in range(1, a.rounds + 1):
        t0 = time.perf_counter()
        ds = plan_day(sc, scaled(cs, scale), peak, base, cat, a.time_limit)
        print(f"day plan {r}: ${ds.plan.usd_per_month:,.0f}/month vs the peak plan held all "
              f"day ${peak.cost.usd_per_month:,.0f} ({ds.plan.solver_status}, "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)
        shrink: dict[str, float] = {}
        t0 = time.perf_counter()
        sim = simulate_day(ds.plan, ds.period_plan, a.scenario, a.window, a.seed,
                           only=list(range(ds.plan.periods_per_day)), shrink=shrink)
        print(f"  every hour replayed ({a.window:g} s each, {time.perf_counter() - t0:.0f} s):"
              f" {'every tier met' if sim.met else 'MISSED'}")
        for p in sim.periods:
            for c in p.tiers:
                if c.met:
                    continue
                print(f"  {p.start} {c.tier}: TTFT {c.ttft_attainment:.1%} (>= "
                      f"{c.target_ttft:.0%}), TPOT {c.tpot_attainment:.1%} (>= "
                      f"{c.target_tpot:.0%}); spot replicas {p.spot_replicas}, reclaimed "
                      f"{p.spot_lost}")
                pools_of_missing(ds, p.period, c.tier, a.scenario, a.window, a.seed)
        low = {t: (min(c.ttft_attainment or 0 for c in mine),
                   min(c.tpot_attainment or 0 for c in mine))
               for t in sim.tiers for mine in [[c for p in sim.periods for c in p.tiers
                                                if c.tier == t]]}
        print("  lowest attainment over the hours, TTFT / TPOT: "
              + ", ".join(f"{t} {a:.1%} / {b:.1%}" for t, (a, b) in low.items()), flush=True)
        if sim.met:
            break
        for k, f in shrink.items():
            scale[k] = scale.get(k, 1.0) * f


if __name__ == "__main__":
    main()
