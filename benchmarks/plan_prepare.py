"""The planner's candidate preparation on the bundled example (issue 14, point 2):
``plan.planner.prepare`` timed cold (first call in a fresh process) and warm (second
call), and a digest of its CandidateSet, so a faster prepare can be checked to give
the same candidates (ids, capacities, prices, estimates, pairs, rejections, prefix
cache figures) as before.

    .venv/bin/python benchmarks/plan_prepare.py [SCENARIO] [--set K=V ...] [--dump FILE]
        [--profile N]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import time
from pathlib import Path

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.plan.candidates import CandidateSet
from tokenfleet.plan.gates import precision_gate
from tokenfleet.plan.planner import prepare
from tokenfleet.plan.scenario import load_scenario


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="examples/frontier-lab.yaml")
    parser.add_argument("--set", action="append", default=[], dest="set_")
    parser.add_argument("--dump", type=Path, help="write the CandidateSet digest here")
    parser.add_argument("--profile", type=int, default=0,
                        help="profile the warm call, print the top N functions")
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


if __name__ == "__main__":
    main()
