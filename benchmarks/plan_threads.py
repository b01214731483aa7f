"""Planner re-solves on threads (issue 3): the planner runs its independent re-solves
(constraint pricing, baselines) on a thread pool, relying on HiGHS releasing the GIL
and on separate ``Highs`` instances being safe to run concurrently. This stress run
solves seeded synthetic fleets (N-1 by cuts: LPs, dives and MILPs) serially, then many
times on threads, and checks every threaded answer against the serial one.

    .venv/bin/python benchmarks/plan_threads.py [--solves 120] [--threads 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import Size, synthetic  # noqa: E402

from tokenfleet.plan.milp import solve_fleet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solves", type=int, default=120)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--problems", type=int, default=6)
    args = parser.parse_args()
    problems = []
    for seed in range(args.problems):
        sc, cs = synthetic(Size(3, 6, 3, 8, n_minus_1="cuts"), seed)
        problems.append((sc.model_copy(update={"time_limit_s": 20}), cs))

    def solve(i: int) -> float:
        sc, cs = problems[i % len(problems)]
        _, sol = solve_fleet(sc, cs)
        assert sol.objective is not None
        return sol.objective

    t0 = time.perf_counter()
    serial = [solve(i) for i in range(len(problems))]
    t1 = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        threaded = list(pool.map(solve, range(args.solves)))
    t2 = time.perf_counter()
    # Answers may differ within the MIP gap (1 %) when HiGHS stops at different nodes.
    worst = max(abs(v - serial[i % len(serial)]) / serial[i % len(serial)]
                for i, v in enumerate(threaded))
    print(f"{len(problems)} serial solves {t1 - t0:.1f} s; {args.solves} solves on "
          f"{args.threads} threads {t2 - t1:.1f} s; largest relative difference to the "
          f"serial answer {worst:.3%} ({'OK' if worst <= 0.02 else 'MISMATCH'})")


if __name__ == "__main__":
    main()
