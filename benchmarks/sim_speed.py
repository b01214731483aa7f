"""Simulator speed: simulated requests per wall second on one core.

1M requests of the real Azure LLM 2023 conversation trace (all 19,366 requests, each
resampled ~52x, then time-compressed to 90 % of the fleet's planned peak so the whole
hour's rate shape is kept) through a 1,000-replica, three-tier, five-vendor plan built
from performance-model estimates (``tokenfleet.sim.quickplan``).

    python benchmarks/sim_speed.py                     # 1M requests, one process
    python benchmarks/sim_speed.py --requests 200000   # quicker
    python benchmarks/sim_speed.py --repeat 5          # five runs: each, and the median
    python benchmarks/sim_speed.py --workers 2         # also: split by tier on Ray
    python benchmarks/sim_speed.py --write             # update benchmarks/RESULTS.md

Memory: resident set size is sampled as requests finish; it must stay flat (the
latency histograms and counters are fixed-size; only in-flight requests are held).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import numba
import numpy as np

from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.run import prepare_workload, simulate
from tokenfleet.workload import SizeBuckets, read_trace

TRACE = Path(__file__).resolve().parents[2] / "shared/data/traces/azure_llm_2023_conv.csv.gz"
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Simulator speed (issue 4)"


def fleet_plan(trace):
    """Three tiers on 1,000 replicas (1,450 engine lanes) of seven pools."""
    mix = [(int(round(s.mean_input_tokens)), max(int(round(s.mean_output_tokens)), 1), s.share)
           for s in SizeBuckets().summary(trace) if s.share > 0.01]
    total = sum(m[2] for m in mix)
    mix = [(i, o, s / total) for i, o, s in mix]
    tiers = [TierSpec("frontier", "llama-3.1-405b", 3.0, 0.1, mix),
             TierSpec("chat", "llama-3.1-70b", 2.0, 0.05, mix),
             TierSpec("mini", "llama-3.1-8b", 1.0, 0.03, mix)]
    pools = [QuickPool("frontier", "h200", 150, count=8),
             QuickPool("frontier", "mi325x", 100, count=8),
             QuickPool("chat", "h100-sxm", 200, count=4),
             QuickPool("chat", "mi300x", 150, count=2),
             QuickPool("chat", "maia-200", 150, count=1),
             QuickPool("mini", "h100-sxm", 100, count=1),
             QuickPool("mini", "tpu-v6e", 150, count=1)]
    return quick_plan(tiers, pools, load=0.75, name="sim-speed-1000")


def rss_mb() -> float:
    """Current resident set size, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        return m.group(1).strip() if m else platform.processor()
    except OSError:
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the one-process simulation this many times (noisy machines)")
    ap.add_argument("--workers", type=int, default=0, help="also run split on Ray")
    ap.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()

    trace = read_trace(TRACE)
    plan = fleet_plan(trace)
    replicas = sum(u.replicas for u in plan.units)
    peak = sum(t.peak_requests_per_s for t in plan.tiers)
    grown = trace.scale_rate(args.requests / len(trace), seed=0)
    grown = grown.scale_rate(0.9 * peak / (len(grown) / grown.duration_s), mode="compress")
    w = prepare_workload(plan, grown, seed=0)
    print(f"{len(w):,} requests over {w.duration_s:.0f} s through {replicas:,} replicas "
          f"({len(plan.units)} pools)")

    rss: list[tuple[int, float]] = []

    def progress(done: int, total: int) -> None:
        if not rss or done - rss[-1][0] >= total // 10:
            rss.append((done, rss_mb()))

    from tokenfleet.sim.engine import SimOptions

    # The first run includes loading the compiled kernels (numba's cache; compiling them
    # when the cache is cold): it is part of the cost of a run.
    load0 = os.getloadavg()[0]
    walls = []
    for k in range(max(args.repeat, 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        # Memory is sampled in the first run (later runs start at its peak).
        res = simulate(plan, w, options=SimOptions(progress=progress if k == 0 else None))
        walls.append(time.perf_counter() - t0)
        # CPU seconds too: on a shared machine they vary far less than wall time.
        cpu = time.process_time() - c0
        print(f"run {k + 1}: {walls[-1]:.2f} s, {len(w) / walls[-1]:,.0f} simulated requests/s"
              f" (CPU {cpu:.2f} s: {len(w) / cpu:,.0f} per CPU second)")
    wall = statistics.median(walls)
    s = res.summary
    lanes = sum(p.unit.replicas * p.lanes_per_replica for p in res.record.pool_info.values())
    print(f"one process: {wall:.1f} s wall, {len(w) / wall:,.0f} simulated requests/s; "
          f"{s.completed:,} completed, {s.rejected:,} rejected, "
          f"{s.sim_duration_s:.0f} s simulated")
    print("RSS MB as requests finish:", ", ".join(f"{d:,}: {m:.0f}" for d, m in rss))
    lines = [
        SECTION, "",
        f"Command: `python benchmarks/sim_speed.py --requests {args.requests}"
        f"{' --repeat ' + str(args.repeat) if args.repeat > 1 else ''}"
        f"{' --workers ' + str(args.workers) if args.workers else ''}`  ",
        f"Date: {date.today().isoformat()}. Machine: {cpu_model()}, "
        f"{platform.python_implementation()} {platform.python_version()}, NumPy "
        f"{np.__version__}, Numba {numba.__version__}; load average before the runs "
        f"{load0:.2f} (2 cores, shared with other work: timings are noisy).", "",
        f"* Workload: {len(w):,} requests of the Azure LLM 2023 conversation trace "
        f"(resampled x{args.requests / len(trace):.0f}, compressed to "
        f"{len(w) / w.duration_s:,.0f} req/s = 90 % of the planned peak).",
        f"* Fleet: {replicas:,} replicas ({lanes:,} engine lanes), {len(plan.units)} pools, "
        "3 tiers (Llama-3.1 405B / 70B / 8B), NVIDIA, AMD, Microsoft, Google.",
        f"* One process, one core: **{len(w) / wall:,.0f} simulated requests per wall "
        f"second** ({wall:.1f} s for {s.sim_duration_s:,.0f} s of simulated time"
        + (f"; median of {len(walls)} runs: "
           + ", ".join(f"{len(w) / x:,.0f}" for x in walls) if len(walls) > 1 else "")
        + ").",
        f"* Peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB; "
        "RSS as requests finished (requests: MB): "
        + ", ".join(f"{d:,}: {m:.0f}" for d, m in rss) + ".",
        f"* Outcome: {s.completed:,} completed, {s.rejected:,} rejected; SLO met "
        + ", ".join(f"{k} {v.slo_attainment:.1%}" for k, v in s.tiers.items()
                    if v.slo_attainment is not None) + ".",
    ]
    if args.workers:
        t0 = time.perf_counter()
        split = simulate(plan, w, workers=args.workers)
        wall2 = time.perf_counter() - t0
        same = (split.summary.completed == s.completed
                and all(abs((split.summary.tiers[k].ttft_s.p99 or 0) - (v.ttft_s.p99 or 0))
                        <= 1e-9 * max(v.ttft_s.p99 or 1, 1) for k, v in s.tiers.items()))
        print(f"Ray, {args.workers} workers (split by tier): {wall2:.1f} s; same answer: {same}")
        lines.append(f"* Split by tier on Ray ({args.workers} local workers, Ray start-up "
                     f"included): {wall2:.1f} s; same completions and p99 TTFT per tier as "
                     f"one process: {same}.")
    lines.append(f"* Target was 100,000 requests/s on one core: "
                 f"{'met' if len(w) / wall >= 100_000 else 'NOT met'}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(text)


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section of the shared RESULTS.md."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip() + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if nxt < 0 else "\n" + old[nxt + 1:])
    RESULTS.write_text(new)


if __name__ == "__main__":
    main()
