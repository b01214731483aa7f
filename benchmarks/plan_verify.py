"""Plan the bundled example with simulation in the loop, and time each part.

    python benchmarks/plan_verify.py [--no-verify] [--full-hour]

Prints wall and CPU seconds for: candidates, the first solve, verification (its rounds
and replays), the baselines and constraint prices; the simulated attainment per tier;
with --full-hour, the simulator's speed replaying the example's whole traces through the
verified plan on one core (requests per wall second).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenfleet.catalog import load_catalog  # noqa: E402
from tokenfleet.plan.gates import precision_gate  # noqa: E402
from tokenfleet.plan.planner import prepare, solve_plan  # noqa: E402
from tokenfleet.plan.scenario import load_scenario  # noqa: E402
from tokenfleet.sim.verify import VerifyOptions, verify  # noqa: E402


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the replay workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def step(label: str, t0: float, c0: float) -> tuple[float, float]:
    t, c = time.perf_counter(), cpu_s()
    print(f"{label:<34} wall {t - t0:7.2f} s   cpu {c - c0:7.2f} s", flush=True)
    return t, c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--full-hour", action="store_true")
    args = ap.parse_args()
    path = ROOT / "examples" / "frontier-lab.yaml"
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    t_start, c_start = time.perf_counter(), cpu_s()
    sc, base = load_scenario(path)
    cat = load_catalog()
    # as `tokenfleet plan` runs it: precisions gated by their sourced quality figures
    cs = prepare(sc, base, cat, None, precision_gate(sc, base, str(path)))
    t, c = step("candidates", t_start, c_start)

    def solve(scale: dict[str, float]):
        return solve_plan(sc, cs, sc.name, cat, scale=scale, compare_policies=False)

    plan = solve({})
    t, c = step("first solve (no baselines)", t, c)
    if not args.no_verify:
        plan = verify(plan, solve, str(path), VerifyOptions(window_s=900, outage_window_s=120))
        t, c = step("verification by simulation", t, c)
    final = solve_plan(sc, cs, sc.name, cat, scale=plan.verification.resized
                       if plan.verification else {})
    t, c = step("final solve + baselines + prices", t, c)
    step("total", t_start, c_start)
    print(f"plan ${final.cost.usd_per_month:,.0f}/month, {len(final.units)} pools")
    v = plan.verification
    if v is not None:
        print(f"verified: {v.met} after {v.rounds} rounds; resized {v.resized}")
        for chk in v.tiers:
            print(f"  {chk.tier:<7} TTFT {chk.ttft_s:.3g} s ({chk.ttft_attainment:.1%} within)"
                  f"  TPOT {chk.tpot_s:.3g} s ({chk.tpot_attainment:.1%} within)")
        for o in v.outages:
            print(f"  {o.down:<17} " + "  ".join(f"{x.tier} {x.attainment:.1%}"
                                                 for x in o.tiers) + f"  ${o.usd:,.2f}")
    if args.full_hour:
        from tokenfleet.sim.run import simulate
        from tokenfleet.sim.traffic import scenario_traffic

        w = scenario_traffic(plan, str(path), None, 0)
        r = simulate(plan, w)
        s = r.summary
        print(f"full traces: {s.requests:,} requests over {s.sim_duration_s:,.0f} s simulated "
              f"in {s.wall_s:.1f} s: {s.simulated_requests_per_s:,.0f} requests per second")


if __name__ == "__main__":
    main()
