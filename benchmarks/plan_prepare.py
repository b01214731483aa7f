"""The planner's candidate preparation on the bundled example (issue 14, point 2):
``plan.planner.prepare`` timed cold (first call in a fresh process) and warm (second
call), and a digest of its CandidateSet, so a faster prepare can be checked to give
the same candidates (ids, capacities, prices, estimates, pairs, rejections, prefix
cache figures) as before.

    .venv/bin/python benchmarks/plan_prepare.py [SCENARIO] [--set K=V ...] [--dump FILE]
        [--profile N] [--phases]

``--phases``: also each phase alone (the first build, the traces' prefix counts: thread
CPU) and a timeline of one more prepare (when each build, count and solve ran).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import json
import pstats
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.perf.calibration import load_fit
from tokenfleet.plan import planner
from tokenfleet.plan.candidates import CandidateSet, build_candidates
from tokenfleet.plan.gates import precision_gate
from tokenfleet.plan.planner import prepare
from tokenfleet.plan.prefix import tier_reuses
from tokenfleet.plan.scenario import Scenario, load_scenario


def digest(cs: CandidateSet) -> dict:
    """Everything in ``cs`` the plan reads, as JSON-able text (floats by repr: exact)."""
    cands = [{
        "id": c.id, "tier": c.tier, "supply": c.supply_index, "accel": c.accelerator.id,
        "cloud": c.cloud, "region": c.region, "precision": c.precision, "count": c.count,
        "usd": repr(c.usd_per_chip_hour), "kind": c.price_kind,
        "capacity": {b: repr(v) for b, v in c.capacity.items()},
        "estimates": {b: e.model_dump_json() for b, e in c.estimates.items()},
        "uncertainty": repr(c.uncertainty), "role": c.role, "pair": c.pair,
        "link": c.link_basis, "spec": c.speculative} for c in cs.candidates]
    return {
        "demands": [repr(d) for d in cs.demands],
        "candidates": cands,
        "rejected": sorted(f"{k}: {v}" for k, v in cs.rejected.items()),
        "precision_notes": {k: list(v) for k, v in cs.precision_notes.items()},
        "prefix_cache": {k: v.model_dump_json() for k, v in cs.prefix_cache.items()},
        "prefix_reuse": sorted(cs.prefix_reuse),
        "pairs": {k: list(v) for k, v in cs.pairs.items()},
    }


def phases(sc: Scenario, base: Path, cat, gate) -> None:  # noqa: ANN001
    """Each phase alone (thread CPU), then the timeline of one prepare."""
    cal = load_fit()
    for name, run in (("first build", lambda: build_candidates(sc, base, cat, cal, gate)),
                      ("prefix counts", lambda: tier_reuses(sc, base))):
        t, c = time.perf_counter(), time.thread_time()
        run()
        print(f"{name} alone: wall {time.perf_counter() - t:.2f} s, "
              f"CPU {time.thread_time() - c:.2f} s")
    t0 = time.perf_counter()
    log: list[str] = []

    def timed(f: Callable) -> Callable:
        @functools.wraps(f)
        def g(*a, **k):  # noqa: ANN002, ANN003, ANN202
            s = time.perf_counter()
            out = f(*a, **k)
            log.append(f"  {f.__name__:18s} {threading.current_thread().name[:10]:10s} "
                       f"{s - t0:6.2f} -> {time.perf_counter() - t0:6.2f} s")
            return out
        return g

    for name in ("build_candidates", "tier_reuses", "solve_fleet"):
        setattr(planner, name, timed(getattr(planner, name)))
    prepare(sc, base, cat, None, gate)
    print(f"timeline of one more prepare ({time.perf_counter() - t0:.2f} s):")
    print("\n".join(sorted(log, key=lambda x: float(x.split()[2]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="examples/frontier-lab.yaml")
    parser.add_argument("--set", action="append", default=[], dest="set_")
    parser.add_argument("--dump", type=Path, help="write the CandidateSet digest here")
    parser.add_argument("--profile", type=int, default=0,
                        help="profile the warm call, print the top N functions")
    parser.add_argument("--phases", action="store_true",
                        help="each phase alone, and the timeline of one more prepare")
    args = parser.parse_args()
    sc, base = load_scenario(args.scenario, args.set_)
    cat = load_catalog()
    gate = precision_gate(sc, base, args.scenario)
    t0, c0 = time.perf_counter(), time.process_time()
    cold = prepare(sc, base, cat, None, gate)
    t1, c1 = time.perf_counter(), time.process_time()
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    warm = prepare(sc, base, cat, None, gate)
    t2, c2 = time.perf_counter(), time.process_time()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)
    d_cold, d_warm = digest(cold), digest(warm)
    text = json.dumps(d_warm, sort_keys=True)
    sha = hashlib.sha256(text.encode()).hexdigest()[:16]
    print(f"prepare cold {t1 - t0:.2f} s (CPU {c1 - c0:.2f} s), warm {t2 - t1:.2f} s "
          f"(CPU {c2 - c1:.2f} s); "
          f"{len(warm.candidates)} candidates, {len(warm.pairs)} pairs; "
          f"cold == warm: {d_cold == d_warm}; digest {sha}")
    if args.dump:
        args.dump.write_text(text)
    if args.phases:
        phases(sc, base, cat, gate)


if __name__ == "__main__":
    main()
