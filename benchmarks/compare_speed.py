"""How long `compare` takes: every catalog chip, its counts and layouts, one model.

Target (issue 2): under 2 s on this machine. Prints seconds per model, best of 3 runs
in one process (the first call also pays for loading the catalog and the fit, which is
reported separately).

Run:  python benchmarks/compare_speed.py
"""

from __future__ import annotations

import platform
import time

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.calibration import load_fit
from tokenfleet.perf.estimate import Query, compare

TARGET_S = 2.0
CASES = [
    ("llama-3.1-8b", dict(input_len=1024, output_len=256)),
    ("llama-3.1-70b", dict(input_len=2048, output_len=256, slo_tpot=0.05)),
    ("deepseek-r1", dict(input_len=4096, output_len=512, slo_ttft=5.0, slo_tpot=0.1)),
    ("gpt-oss-120b", dict(input_len=1024, output_len=1024, slo_tpot=0.03)),
]


def main() -> None:
    t0 = time.perf_counter()
    cat, cal = load_catalog(), load_fit()
    print(f"machine: {platform.machine()} {platform.processor()}; load catalog + fit: "
          f"{time.perf_counter() - t0:.2f} s")
    print(f"{'model':<16} {'chips':>5} {'fits':>4} {'best of 3, s':>12}  target < {TARGET_S} s")
    for model, kw in CASES:
        q = Query(model=model, accelerator="h100-sxm", **kw)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            rows = compare(q, cat, cal)
            times.append(time.perf_counter() - t)
        ok = sum(r.fits for r in rows)
        best = min(times)
        print(f"{model:<16} {len(rows):>5} {ok:>4} {best:>12.3f}  "
              f"{'ok' if best < TARGET_S else 'SLOW'}")


if __name__ == "__main__":
    main()
