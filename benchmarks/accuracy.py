"""Predicted vs measured for every calibration row, with leave-one-out error.

For each published measurement (tokenfleet/perf/data/published_measurements.csv) it
prints the in-sample prediction, the leave-one-out prediction (the row's group refitted
without it) and the leave-one-family-out prediction (the global fit without the whole
chip family). Summary: median and 90th-percentile absolute percentage error of
throughput, overall and per chip family, against the uncalibrated prior (fixed
efficiencies, what a plain roofline with guessed factors would give) and the target
(median LOO throughput error <= 15%).

Run:  python benchmarks/accuracy.py [--rows rows.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict

import numpy as np

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.calibration import PRIOR, ape, predict, run_fit
from tokenfleet.perf.measurements import load_points

TARGET = 0.15


def _stats(errs: list[float]) -> str:
    e = np.asarray(errs)
    return f"{np.median(e):6.1%} {np.percentile(e, 90):7.1%}  (n={len(e)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="write every row's predictions to this JSON file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cat = load_catalog()
    points, excluded = load_points()
    cal, ev = run_fit(cat, points, loo=True)
    seconds = time.perf_counter() - t0
    prior = {p.row: predict(p, PRIOR, cat) for p in points}
    rows = ev.rows
    for r in rows:
        r["prior"] = prior[r["row"]]
    if args.rows:
        with open(args.rows, "w") as fh:
            json.dump(rows, fh, indent=1)

    print(f"# accuracy of the performance model ({len(points)} rows used, "
          f"{len(excluded)} excluded; fit + LOO took {seconds:.0f} s on "
          f"{platform.processor() or platform.machine()})\n")
    print("Per row (throughput rows; ratio = predicted / measured):")
    print(f"{'row':>4} {'group':<26} {'model':<18} {'chip':<11} {'n':>2} {'prec':<4} "
          f"{'in':>6} {'out':>5} {'measured':>10} {'fit':>6} {'LOO':>6} {'LOFO':>6}")
    for r in rows:
        if r["metric"] != "throughput":
            continue
        print(f"{r['row']:>4} {r['group']:<26} {r['model'][:18]:<18} {r['accelerator']:<11} "
              f"{r['n_accel']:>2} {r['precision']:<4} {r['input_len']:>6} {r['output_len']:>5} "
              f"{r['measured']:>10.1f} {r['fitted'] / r['measured']:>6.2f} "
              f"{r['loo'] / r['measured']:>6.2f} {r['cross_family'] / r['measured']:>6.2f}")

    print("\nAbsolute percentage error        median     p90")
    for metric in ("throughput", "ttft", "tpot"):
        sel = [r for r in rows if r["metric"] == metric]
        if not sel:
            continue
        print(f"{metric}:")
        for label, key in (("uncalibrated prior", "prior"), ("calibrated, in-sample", "fitted"),
                           ("leave-one-out", "loo"), ("leave-one-family-out", "cross_family")):
            errs = [ape(r[key], r["measured"]) for r in sel]
            print(f"  {label:<30} {_stats(errs)}")
    print("\nThroughput, leave-one-out, per chip family:")
    fam: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "throughput":
            fam[r["group"].split("/")[0]].append(ape(r["loo"], r["measured"]))
    for f, errs in sorted(fam.items()):
        print(f"  {f:<22} {_stats(errs)}")
    loo = [ape(r["loo"], r["measured"]) for r in rows if r["metric"] == "throughput"]
    med = float(np.median(loo))
    verdict = "meets" if med <= TARGET else "MISSES"
    print(f"\nmedian leave-one-out throughput error {med:.1%} {verdict} the target "
          f"{TARGET:.0%}")
    print("\nExcluded rows:")
    for e in excluded:
        print(f"  row {e.row}: {e.reason}")


if __name__ == "__main__":
    main()
