"""Verify a Plan against its Scenario, independently of the MILP that produced it.

Each check recomputes from ``plan.json`` alone (plus the scenario's limits): demand is
split completely, no pool is loaded past its replicas' capacity, supply and power caps
hold, vendor shares stay under the cap, and N-1 holds — the last by solving a separate
LP (max servable fraction without each group), not by reusing the planner's rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_array

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.plan.highs import solve_lp
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan

TOL = 1e-6


@dataclass
class Violation:
    check: str
    detail: str


def _load(plan: Plan) -> dict[str, float]:
    """Replica-time each pool needs at peak: sum over buckets of rate / capacity."""
    need: dict[str, float] = defaultdict(float)
    units = {u.pool: u for u in plan.units}
    for s in plan.traffic_split:
        for pool, share in s.shares.items():
            cap = units[pool].capacity_for(s.bucket)
            if cap is None or cap.requests_per_s <= 0:
                need[pool] = float("inf")
            else:
                need[pool] += share * s.peak_requests_per_s / cap.requests_per_s
    return need


def max_served_fraction(plan: Plan, without: set[str]) -> float:
    """Largest f such that every bucket gets f x its peak (without headroom) from the
    pools not in ``without``, re-routing freely within each pool's capacity (an LP)."""
    headroom = float(plan.limits.get("headroom") or 0.0)
    pools = [u for u in plan.units if u.pool not in without]
    splits = plan.traffic_split
    # variables: f, then z[pool, split] for each pool able to serve the split's bucket
    idx: list[tuple[int, int]] = []
    for i, u in enumerate(pools):
        for j, s in enumerate(splits):
            bc = u.capacity_for(s.bucket)
            if u.tier == s.tier and bc is not None and bc.requests_per_s > 0:
                idx.append((i, j))
    nv = 1 + len(idx)
    a_ub, b_ub = [], []
    for j, s in enumerate(splits):  # f * peak - sum z <= 0
        row = np.zeros(nv)
        row[0] = s.peak_requests_per_s / (1 + headroom)
        for k, (_i, jj) in enumerate(idx):
            if jj == j:
                row[1 + k] = -1.0
        a_ub.append(row)
        b_ub.append(0.0)
    for i, u in enumerate(pools):  # sum z / cap <= replicas
        row = np.zeros(nv)
        for k, (ii, j) in enumerate(idx):
            cap = u.capacity_for(splits[j].bucket)
            if ii == i and cap is not None:
                row[1 + k] = 1.0 / cap.requests_per_s
        a_ub.append(row)
        b_ub.append(float(u.replicas))
    c = np.zeros(nv)
    c[0] = -1.0
    res = solve_lp(c, csr_array(np.asarray(a_ub)), np.full(len(b_ub), -np.inf),
                   np.asarray(b_ub))
    return float(res.x[0]) if res.x is not None else 0.0


def check_plan(plan: Plan, sc: Scenario, catalog: Catalog | None = None) -> list[Violation]:
    """Every violated constraint (empty list: the plan honours the scenario)."""
    catalog = catalog or load_catalog()
    out: list[Violation] = []
    units = {u.pool: u for u in plan.units}
    for s in plan.traffic_split:
        total = sum(s.shares.values())
        if abs(total - 1.0) > 1e-6:
            out.append(Violation("demand", f"{s.tier}/{s.bucket}: shares sum to {total:.6f}"))
        for pool in s.shares:
            if pool not in units:
                out.append(Violation("demand", f"{s.tier}/{s.bucket}: unknown pool {pool}"))
            elif units[pool].tier != s.tier:
                out.append(Violation("demand", f"{pool} serves tier {s.tier}"))
    for pool, need in _load(plan).items():
        if need > units[pool].replicas * (1 + TOL) + TOL:
            out.append(Violation("capacity", f"{pool}: needs {need:.3f} replicas at peak, "
                                             f"has {units[pool].replicas}"))
    chips: dict[tuple[str, str, str], int] = defaultdict(int)
    for u in plan.units:
        chips[(u.accelerator, u.cloud, u.region)] += u.chips
    for entry in sc.supply:
        key = (catalog.accelerator(entry.accelerator).id, entry.cloud, entry.region)
        if chips.get(key, 0) > entry.max_chips:
            out.append(Violation("supply", f"{entry.accelerator}@{entry.cloud}/{entry.region}: "
                                           f"{chips[key]} chips > {entry.max_chips}"))
    for r in sc.regions:
        mw = sum(u.watts for u in plan.units if u.region == r.name) / 1e6
        if r.power_mw is not None and mw > r.power_mw * (1 + TOL):
            out.append(Violation("power", f"{r.name}: {mw:.3f} MW > cap {r.power_mw} MW"))
    pol = sc.policy
    if pol.max_vendor_share is not None:
        if pol.vendor_share_basis == "spend":
            spend: dict[str, float] = defaultdict(float)
            for u in plan.units:
                spend[u.vendor] += u.usd_per_hour
            total = sum(spend.values()) or 1.0
            shares = {v: s / total for v, s in spend.items()}
        else:
            tok: dict[str, float] = defaultdict(float)
            for s in plan.traffic_split:
                for pool, share in s.shares.items():
                    tok[units[pool].vendor] += share * s.peak_requests_per_s * s.output_len
            total = sum(tok.values()) or 1.0
            shares = {v: t / total for v, t in tok.items()}
        for v, share in shares.items():
            if share > pol.max_vendor_share + 1e-6:
                out.append(Violation("vendor-share", f"{v}: {share:.1%} > "
                                                     f"{pol.max_vendor_share:.0%}"))
    if pol.n_minus_1 is not None:
        by = pol.n_minus_1.by
        groups: dict[str, set[str]] = defaultdict(set)
        for u in plan.units:
            groups[getattr(u, by)].add(u.pool)
        for g, members in groups.items():
            f = max_served_fraction(plan, members)
            if f < pol.n_minus_1.min_fraction - 1e-6:
                out.append(Violation("n-1", f"without {by} {g}: serves {f:.1%} of peak < "
                                            f"{pol.n_minus_1.min_fraction:.0%}"))
    return out
