"""Planner scale (issue 3): MILP solve time and optimality gap as the problem grows.

Solves the planner's own MILP (``tokenfleet.plan.milp.solve_fleet``) from a synthetic,
seeded scenario of T tiers x C chip types x R regions x B size buckets, bypassing the
performance model (which would dominate at this scale): capacities, prices and watts
are drawn at random, with the structure real ones have (faster chips cost more, bigger
tiers and longer buckets are slower, some chips cannot serve some buckets). Policy as
in the example scenario: supply caps, a power cap per region, vendor share <= 0.5 of
output tokens, and N-1 by vendor (70 % of peak without any one vendor).

Each supply entry (chip x region, every chip in every region) gives each tier two unit
sizes (1 and 8 chips), as the candidate pruning keeps two or three per entry.

    .venv/bin/python benchmarks/plan_scale.py [--time-limit 60] [--gap 0.01]

Prints a Markdown table: size, candidates, variables (integer), rows, build and solve
seconds, HiGHS status, and the relative gap reached (of the monthly bill).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from tokenfleet.catalog.schema import Accelerator, Source
from tokenfleet.plan.candidates import Candidate, CandidateSet, Demand
from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.scenario import Scenario

VENDORS = ("NVIDIA", "AMD", "Google", "AWS", "Microsoft")
COUNTS = (1, 8)
HEADROOM = 0.2
N1_FRACTION = 0.7


@dataclass(frozen=True)
class Size:
    tiers: int
    chips: int
    regions: int
    buckets: int
    n_minus_1: str | None = "cuts"  # N-1 method ("cuts" or "exact"), None = no N-1

    @property
    def label(self) -> str:
        return (f"{self.tiers}×{self.chips}×{self.regions}×{self.buckets}"
                + (f" (N-1 {self.n_minus_1})" if self.n_minus_1 else " (no N-1)"))


DEFAULT_SIZES = tuple(
    Size(*dims, n_minus_1=m)
    for dims in ((1, 3, 1, 4), (3, 6, 3, 8), (5, 10, 5, 12), (10, 15, 10, 20))
    for m in ("exact", "cuts")) + (Size(10, 15, 10, 20, n_minus_1=None),)


def synthetic(size: Size, seed: int) -> tuple[Scenario, CandidateSet]:
    """A seeded scenario and candidate set of the given size (feasible by construction:
    supply is about 4x, and power about 2x, what a cheapest fleet needs)."""
    rng = np.random.default_rng([seed, size.tiers, size.chips, size.regions, size.buckets])
    regions = [f"r{i}" for i in range(size.regions)]
    n_vendors = min(len(VENDORS), size.chips)

    # chips: speed (relative throughput per chip), price ~ speed^0.8, TDP ~ speed^0.5
    speed = rng.lognormal(0.0, 0.45, size.chips)
    accels = []
    for i in range(size.chips):
        accels.append(Accelerator(
            id=f"chip-{i}", vendor=VENDORS[i % n_vendors], family=f"fam-{i}", name=f"Chip {i}",
            hbm_gb=96 + 32 * (i % 6), hbm_tbps=2.0 + speed[i], scaleup_gbps=900,
            scaleup_domain=8, scaleout_gbps=400, tdp_w=float(round(500 * speed[i] ** 0.5, -1)),
            sources=[Source(url="synthetic://plan_scale")]))
    base_price = 3.0 * speed ** 0.8 * rng.uniform(0.8, 1.25, size.chips)
    region_price = rng.uniform(0.9, 1.1, size.regions)

    # buckets: longer ones are slower and produce more tokens per request
    work = np.geomspace(1.0, 40.0, size.buckets)
    out_len = np.round(np.geomspace(40, 1200, size.buckets)).astype(int)
    in_len = np.round(np.geomspace(300, 30_000, size.buckets)).astype(int)
    labels = [f"b{j:02d}" for j in range(size.buckets)]

    tier_cost = rng.uniform(0.5, 8.0, size.tiers)  # bigger model -> fewer req/s per chip
    demands: list[Demand] = []
    tiers_yaml = []
    for t in range(size.tiers):
        rate = float(rng.uniform(20, 400))
        mix = rng.dirichlet(np.full(size.buckets, 0.8))
        for j in range(size.buckets):
            if mix[j] * rate < 1e-3:
                continue
            demands.append(Demand(f"t{t}", labels[j], int(in_len[j]), int(out_len[j]),
                                  float(mix[j] * rate)))
        tiers_yaml.append({
            "name": f"t{t}", "model": "synthetic",
            "traffic": {"rate_per_s": rate,
                        "mix": [{"input_len": int(in_len[j]), "output_len": int(out_len[j]),
                                 "share": float(max(mix[j], 1e-9))}
                                for j in range(size.buckets)]},
            "slo": {"ttft_s": 2.0, "tpot_s": 0.05}})

    # per-chip capacity of (tier, chip, bucket) in req/s; x8 units scale at 0.9 efficiency
    per_chip = (40.0 * speed[None, :, None] / tier_cost[:, None, None] / work[None, None, :]
                * rng.uniform(0.8, 1.2, (size.tiers, size.chips, size.buckets)))
    # about 10 % of (tier, chip, bucket) cannot meet the SLO; big tiers never fit on 1 chip
    cannot = rng.random(per_chip.shape) < 0.10

    # as in the planner, a candidate has capacity only for buckets its tier has traffic in
    demanded = {(d.tier, d.bucket) for d in demands}
    supply = []
    cands: list[Candidate] = []
    for i, a in enumerate(accels):
        for r, region in enumerate(regions):
            s_idx = len(supply)
            price = float(round(base_price[i] * region_price[r], 2))
            supply.append({"accelerator": a.id, "cloud": f"cloud-{r % 3}", "region": region,
                           "max_chips": 1, "usd_per_chip_hour": price})
            for t in range(size.tiers):
                for n in COUNTS:
                    if n == 1 and tier_cost[t] > 4.0:
                        continue  # does not fit in one chip's memory
                    caps = {labels[j]: float(per_chip[t, i, j] * n * (1.0 if n == 1 else 0.9))
                            for j in range(size.buckets)
                            if not cannot[t, i, j] and (f"t{t}", labels[j]) in demanded}
                    if not caps:
                        continue
                    cands.append(Candidate(
                        id=f"t{t}/{a.id}/{region}/x{n}", tier=f"t{t}", supply_index=s_idx,
                        accelerator=a, cloud=supply[s_idx]["cloud"], region=region,
                        precision="fp8", count=n, usd_per_chip_hour=price,
                        price_kind="on_demand", capacity=caps, estimates={}, uncertainty=0.2))

    # every demand must have at least one candidate
    served = {(c.tier, b) for c in cands for b in c.capacity}
    demands = [d for d in demands if (d.tier, d.bucket) in served]

    # size supply and power from a lower bound of the need: each demand on its best chip
    need_chips = 0.0
    need_watts = 0.0
    for d in demands:
        best = max((c for c in cands if c.tier == d.tier and d.bucket in c.capacity),
                   key=lambda c: c.capacity[d.bucket] / c.count)
        chips = d.rate_per_s * (1 + HEADROOM) / (best.capacity[d.bucket] / best.count)
        need_chips += chips
        need_watts += chips * best.accelerator.tdp_w
    per_entry = 4.0 * need_chips / len(supply)
    for s in supply:
        s["max_chips"] = int(max(16, math.ceil(per_entry * rng.uniform(0.5, 1.5))))
    power = [{"name": r, "power_mw": round(max(2.0 * need_watts / size.regions / 1e6
                                                * float(rng.uniform(0.8, 1.2)), 0.01), 3)}
             for r in regions]
    policy: dict = {"max_vendor_share": 0.5, "vendor_share_basis": "traffic"}
    if size.n_minus_1:
        policy["n_minus_1"] = {"by": "vendor", "min_fraction": N1_FRACTION,
                               "method": size.n_minus_1}
    sc = Scenario.model_validate({
        "name": f"scale-{size.label}", "headroom": HEADROOM, "tiers": tiers_yaml,
        "supply": supply, "regions": power, "policy": policy})
    return sc, CandidateSet(demands, cands)


def status_text(status: int, message: str, has_x: bool) -> str:
    if status == 0:
        return "optimal"
    if status == 1:
        return "time limit, " + ("has plan" if has_x else "no plan")
    if status == 2:
        return "infeasible"
    return message[:40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0, help="per solve, seconds")
    parser.add_argument("--gap", type=float, default=0.01, help="relative MIP gap to stop at")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--only", default="", help="run only sizes whose label contains "
                        "this text, e.g. '10×15' or 'cuts'")
    args = parser.parse_args()

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    print(f"machine: {model}, {os.cpu_count()} cores; highspy {version('highspy')}; "
          f"gap {args.gap:g}, time limit {args.time_limit:g} s per plan, seed {args.seed}\n")
    print("| size T×C×R×B (N-1 method) | demands | candidates | variables (integer) | rows "
          "| rounds | build, s | solve, s | status | gap | bill, $/month |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|")
    total = time.perf_counter()
    for size in DEFAULT_SIZES:
        if args.only not in size.label:
            continue
        t0 = time.perf_counter()
        sc, cs = synthetic(size, args.seed)
        sc = sc.model_copy(update={"mip_gap": args.gap, "time_limit_s": args.time_limit})
        f, sol = solve_fleet(sc, cs)
        build = time.perf_counter() - t0 - sol.seconds  # formulating (every round) + checks
        p = f.program
        hit = " ⏱" if sol.status == 1 else ""
        bill = f"{sol.objective:,.0f}" if sol.objective is not None else "—"
        gap = f"{sol.gap:.2%}" if sol.x is not None else "—"
        print(f"| {size.label} | {len(cs.demands)} | {len(cs.candidates)} | {len(p.cost):,} "
              f"({sum(p.integer):,}) | {len(p.rows):,} | {sol.rounds} | {build:.1f} "
              f"| {sol.seconds:.1f}{hit} "
              f"| {status_text(sol.status, sol.message, sol.x is not None)} | {gap} | {bill} |",
              flush=True)
    print(f"\ntotal {time.perf_counter() - total:.0f} s; ⏱ = stopped at the time limit "
          "(gap is what HiGHS proved by then)")


if __name__ == "__main__":
    main()
