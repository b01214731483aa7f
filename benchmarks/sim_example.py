"""Simulator speed on the bundled example's traffic (issue 14 point 7): requests per wall
second replaying ``examples/frontier-lab.yaml``'s real traces through its plan on one
core — ``tokenfleet simulate plan.json --scenario examples/frontier-lab.yaml`` without
the CLI around it.

    python benchmarks/sim_example.py --plan plan.json            # full hour, one run
    python benchmarks/sim_example.py --plan plan.json --repeat 3 # three runs: each, median
    python benchmarks/sim_example.py --plan plan.json --duration 900 --profile
    python benchmarks/sim_example.py                             # plans the example first
    python benchmarks/sim_example.py --plan plan3x.json --set tiers.small.traffic.growth=3

``--plan`` takes a plan of the example (``tokenfleet plan examples/frontier-lab.yaml``
writes one); without it the example is planned here (verification included, ~1 min).
Prints, per run, wall and CPU seconds, requests per wall and per CPU second, the
number of routing windows, and each tier's SLO attainment (so a change of speed can
be checked not to move the answer). ``--profile`` runs one replay under cProfile and
prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenfleet.plan.schema import Plan  # noqa: E402
from tokenfleet.sim.engine import SimOptions  # noqa: E402
from tokenfleet.sim.run import simulate  # noqa: E402
from tokenfleet.sim.traffic import scenario_traffic  # noqa: E402

SCENARIO = ROOT / "examples" / "frontier-lab.yaml"


def example_plan() -> Plan:
    """The example planned as ``tokenfleet plan`` does (verification included)."""
    from tokenfleet.catalog import load_catalog
    from tokenfleet.plan.planner import prepare, solve_plan
    from tokenfleet.plan.scenario import load_scenario
    from tokenfleet.sim.verify import VerifyOptions, verify

    sc, base = load_scenario(SCENARIO)
    cat = load_catalog()
    cs = prepare(sc, base, cat)

    def solve(scale: dict[str, float]) -> Plan:
        return solve_plan(sc, cs, sc.name, cat, scale=scale, compare_policies=False)

    return verify(solve({}), solve, str(SCENARIO), VerifyOptions(window_s=900,
                                                                 outage_window_s=120))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path, help="plan.json of the example (default: plan it)")
    ap.add_argument("--duration", type=float, default=None,
                    help="replay only the first this many seconds (default: the full hour)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="one run under cProfile")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="scenario override, as `tokenfleet plan --set` (e.g. "
                         "tiers.small.traffic.growth=3: plan with the same overrides)")
    args = ap.parse_args()
    if args.set and not args.plan:
        ap.error("--set needs --plan (a plan made with the same --set)")
    plan = (Plan.model_validate(json.loads(args.plan.read_text())) if args.plan
            else example_plan())
    w = scenario_traffic(plan, str(SCENARIO), None, 0, args.set)
    if args.duration is not None:
        w = w.subset(w.arrival_s < args.duration, f"{w.source} [0, {args.duration:g} s)")
    replicas = sum(u.replicas for u in plan.units)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"{len(w):,} requests over {w.duration_s:,.0f} s through {replicas} replicas "
          f"({len(plan.units)} pools)")
    # Load (or compile) the kernels outside the timed runs: a run's cost, not the
    # cache's, is measured (sim_speed.py counts the load in its first run instead).
    simulate(plan, w.subset(w.arrival_s < 5.0))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        simulate(plan, w)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    walls = []
    for k in range(max(args.repeat, 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = simulate(plan, w, options=SimOptions())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        walls.append(wall)
        print(f"run {k + 1}: {wall:.2f} s wall, {len(w) / wall:,.0f} requests/s "
              f"(CPU {cpu:.2f} s: {len(w) / cpu:,.0f} per CPU second)", flush=True)
    s = res.summary
    print(f"median {statistics.median(walls):.2f} s: "
          f"{len(w) / statistics.median(walls):,.0f} simulated requests per wall second; "
          f"{s.completed:,} completed, {s.rejected:,} rejected, "
          f"{s.sim_duration_s:,.0f} s simulated")
    for name, t in s.tiers.items():
        print(f"  {name:<7} p99 TTFT {t.ttft_s.p99:.4g} s, p90 TPOT {t.tpot_s.p90:.4g} s, "
              f"within both SLOs {t.slo_attainment:.4%}")
    # Everything the run measured but its wall time: equal digests, equal answers.
    answer = s.model_dump(exclude={"wall_s", "simulated_requests_per_s"})
    digest = hashlib.sha256(json.dumps(answer, sort_keys=True).encode()).hexdigest()[:16]
    print(f"answer digest (summary less wall time): {digest}")


if __name__ == "__main__":
    main()
