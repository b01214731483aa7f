"""Predicted vs measured for every calibration row, asked through ``estimate`` as a user asks.

For each published measurement (tokenfleet/perf/data/published_measurements*.csv) it
prints the prediction of the fitted model with the layout the source states, the
prediction with the layout the tool picks (the user path), the leave-one-source-out
prediction (every row of the row's source removed from the fit; a group left empty
borrows from its nearest measured peer) and the leave-one-family-out prediction (the
whole chip family removed: peer borrowing, as for a chip nobody measured). Summary:
median and 90th-percentile absolute percentage error of throughput, TTFT, TPOT and
end-to-end latency, per chip family, and for the public end-to-end subset (DeepSeek-R1,
gpt-oss-120b, Llama-3.1-70B/405B-class on H100/H200/B200/MI300X, stated layout).

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
from tokenfleet.perf.calibration import Calibration, ape, predict, run_fit
from tokenfleet.perf.measurements import load_points
from tokenfleet.perf.unit import Efficiency

TARGETS = {"calibrated": 0.15, "unseen family": 0.20, "latency": 0.25, "end-to-end": 0.25}
E2E_MODELS = ("deepseek-r1", "gpt-oss-120b", "llama-3.1-70b", "llama-3.3-70b",
              "llama-3.1-405b", "llama 3.3 70b", "llama 3.1 405b")
E2E_CHIPS = ("h100-sxm", "h200", "b200", "mi300x")


def _stats(errs: list[float]) -> str:
    e = np.asarray(errs)
    if not len(e):
        return "   —       —    (n=0)"
    return f"{np.median(e):6.1%} {np.percentile(e, 90):7.1%}  (n={len(e)})"


def _ratio(r: dict, key: str) -> str:
    v = r[key] / r["measured"]
    return f"{v:6.2f}" if np.isfinite(v) else "   n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="write every row's predictions to this JSON file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cat = load_catalog()
    points, excluded = load_points(catalog=cat)
    cal, ev = run_fit(cat, points, loo=True)
    seconds = time.perf_counter() - t0
    priors = Calibration.of_efficiency(Efficiency())
    prior = {p.key: predict(p, priors, cat, stated_layout=False) for p in points}
    rows = ev.rows
    for r in rows:
        r["prior"] = prior[r["row"]]
    if args.rows:
        with open(args.rows, "w") as fh:
            json.dump(rows, fh, indent=1)

    print(f"# accuracy of the performance model ({len(points)} rows used, "
          f"{len(excluded)} excluded; fit + held-out refits took {seconds:.0f} s on "
          f"{platform.processor() or platform.machine()})\n")
    print("Per row (ratio = predicted / measured; stated = layout the source states, "
          "user = layout the tool picks):")
    print(f"{'row':<38} {'group':<24} {'model':<16} {'chip':<11} {'n':>2} {'prec':<4} "
          f"{'in':>6} {'out':>5} {'metric':<10} {'measured':>10} {'stated':>6} {'user':>6} "
          f"{'LOSO':>6} {'LOFO':>6}")
    for r in rows:
        print(f"{r['row'][-38:]:<38} {r['group'][:24]:<24} {r['model'][:16]:<16} "
              f"{r['accelerator']:<11} {r['n_accel']:>2} {r['precision']:<4} "
              f"{r['input_len']:>6} {r['output_len']:>5} {r['metric']:<10} "
              f"{r['measured']:>10.4g} {_ratio(r, 'fitted')} {_ratio(r, 'user')} "
              f"{_ratio(r, 'loso')} {_ratio(r, 'lofo')}")

    print("\nAbsolute percentage error             median     p90")
    for metric in ("throughput", "ttft", "tpot", "e2e"):
        sel = [r for r in rows if r["metric"] == metric]
        if not sel:
            continue
        print(f"{metric}:")
        for label, key in (("physical priors, no fit (user path)", "prior"),
                           ("fitted, stated layout", "fitted"),
                           ("fitted, user path", "user"),
                           ("leave-one-source-out, user path", "loso"),
                           ("leave-one-family-out, user path", "lofo")):
            print(f"  {label:<36} {_stats([ape(r[key], r['measured']) for r in sel])}")
    print("\nThroughput per chip family (user path: fitted | leave-one-source-out | "
          "leave-one-family-out):")
    fam: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "throughput":
            fam[r["group"].split("/")[0]].append(r)
    for f, sel in sorted(fam.items()):
        print(f"  {f:<18} " + " | ".join(_stats([ape(r[k], r["measured"]) for r in sel])
                                         for k in ("user", "loso", "lofo")))
    e2e = [r for r in rows if r["model"].lower() in E2E_MODELS
           and r["accelerator"] in E2E_CHIPS and r["metric"] in ("throughput", "e2e")]
    if e2e:
        ratios = np.array([r["fitted"] / r["measured"] for r in e2e])
        print(f"\nPublic end-to-end subset (models {', '.join(E2E_MODELS[:5])}; chips "
              f"{', '.join(E2E_CHIPS)}; stated layout, fitted): median error "
              f"{np.median(np.abs(ratios - 1)):.1%}, ratio range "
              f"{np.nanmin(ratios):.2f}-{np.nanmax(ratios):.2f}, "
              f"{np.mean((ratios >= 0.6) & (ratios <= 1.6)):.0%} within 0.6-1.6x (n={len(e2e)})")
    print("\nExcluded rows (1-based data row of published_measurements.csv, then of "
          "published_measurements_extra.csv):")
    for e in excluded:
        print(f"  row {e.row}: {e.reason}")


if __name__ == "__main__":
    main()
