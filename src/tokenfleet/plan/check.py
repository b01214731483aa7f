"""Verify a Plan, independently of the MILP that produced it: the one ``check_plan``.

Each check recomputes from ``plan.json`` alone: every bucket's demand is routed, shares
sum to one, pools serve only their own tier and buckets they have capacity for, no pool
is loaded past its replicas' derated capacity, power and vendor shares stay under the
caps in ``plan.limits``, the bill adds up and chips = replicas x chips per replica. Given
the scenario too, supply caps (which need the catalog to resolve accelerator names) and
N-1 are checked — the last by solving a separate LP (max servable fraction without each
group), not by reusing the planner's rows. The planner notes the findings in the plan;
the HTML report lists them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_array

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.plan.highs import solve_lp
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan

TOL = 1e-6  # relative tolerance for identities that hold up to floating point
LOAD_TOL = 1e-3  # the solver's feasibility tolerance shows up as loads of 1.000x


@dataclass(frozen=True)
class Finding:
    """One failed check: which identity (``check``) and where (``message``)."""

    check: str
    message: str


def pool_load(plan: Plan) -> dict[str, float | None]:
    """pool -> share of its derated capacity used at peak by its own tier's traffic.

    ``None`` where the split routes a bucket to the pool that it has no capacity for.
    A value above 1 means the plan overloads the pool at the low end of its band.
    """
    units = {u.pool: u for u in plan.units}
    prefill_of = prefill_halves(plan)
    busy: dict[str, float] = defaultdict(float)
    broken: set[str] = set()
    for s in plan.traffic_split:
        for routed, share in s.shares.items():
            # a decode half's requests are prefilled by its pair's prefill half first
            for pool in (routed, *([prefill_of[routed]] if routed in prefill_of else [])):
                u = units.get(pool)
                if u is None or u.tier != s.tier:
                    continue  # reported by the checks, not a load
                cap = u.capacity_for(s.bucket)
                if cap is None or cap.requests_per_s <= 0:
                    broken.add(pool)
                    continue
                busy[pool] += share * s.peak_requests_per_s / cap.requests_per_s
    out: dict[str, float | None] = {}
    for p, u in units.items():
        if p in broken:
            out[p] = None
        else:
            b = busy.get(p, 0.0)
            # (no replicas: only traffic routed to it makes a load, an infinite one)
            out[p] = b / u.replicas if u.replicas else (math.inf if b > 0 else None)
    return out


def prefill_halves(plan: Plan) -> dict[str, str]:
    """Decode pool -> the prefill pool of its disaggregated pair."""
    pre = {u.pair: u.pool for u in plan.units if u.role == "prefill" and u.pair}
    return {u.pool: pre[u.pair] for u in plan.units
            if u.role == "decode" and u.pair in pre}


def power_vs_cap(plan: Plan) -> list[tuple[str, float, float | None]]:
    """(region, MW at TDP used, cap MW or None) for every region used or capped. The MW
    used is the larger of what the plan reports and what its pools' watts add up to."""
    caps = plan.limits.power_mw
    summed: dict[str, float] = defaultdict(float)
    for u in plan.units:
        summed[u.region] += u.watts / 1e6
    regions = sorted(set(plan.power_mw) | set(caps) | set(summed))
    return [(r, max(plan.power_mw.get(r, 0.0), summed.get(r, 0.0)), caps.get(r))
            for r in regions]


def vendor_shares(plan: Plan) -> dict[str, float]:
    """Vendor -> share on the plan's basis: output tokens at peak, or spend."""
    units = {u.pool: u for u in plan.units}
    amount: dict[str, float] = defaultdict(float)
    if plan.limits.vendor_share_basis == "spend":
        for u in plan.units:
            amount[u.vendor] += u.usd_per_hour
    else:
        for s in plan.traffic_split:
            for pool, share in s.shares.items():
                if pool in units:
                    amount[units[pool].vendor] += share * s.peak_requests_per_s * s.output_len
    total = sum(amount.values()) or 1.0
    return {v: a / total for v, a in amount.items()}


def max_served_fraction(plan: Plan, without: set[str]) -> float:
    """Largest f such that every bucket gets f x its peak (without headroom) from the
    pools not in ``without``, re-routing freely within each pool's capacity (an LP)."""
    headroom = plan.limits.headroom
    prefill_of = prefill_halves(plan)
    units = {u.pool: u for u in plan.units}
    # a pair is gone when either half is; prefill halves carry their decode half's
    # requests (rows below), so only routable pools get routing variables
    pools = [u for u in plan.units if u.pool not in without and u.role != "prefill"
             and prefill_of.get(u.pool) not in without]
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
        if u.pool in prefill_of:  # its prefill half: the same requests, its capacity
            pre = units[prefill_of[u.pool]]
            row = np.zeros(nv)
            for k, (ii, j) in enumerate(idx):
                cap = pre.capacity_for(splits[j].bucket)
                if ii == i:
                    row[1 + k] = 1.0 / cap.requests_per_s if cap and cap.requests_per_s > 0 \
                        else 1e9
            a_ub.append(row)
            b_ub.append(float(pre.replicas))
    c = np.zeros(nv)
    c[0] = -1.0
    res = solve_lp(c, csr_array(np.asarray(a_ub)), np.full(len(b_ub), -np.inf),
                   np.asarray(b_ub))
    return float(res.x[0]) if res.x is not None else 0.0


def _split_findings(plan: Plan) -> Iterator[Finding]:
    units = {u.pool: u for u in plan.units}
    for s in plan.traffic_split:
        where = f"{s.tier}/{s.bucket}"
        total = sum(s.shares.values())
        if s.peak_requests_per_s > 0 and not s.shares:
            yield Finding("traffic served", f"{where}: {s.peak_requests_per_s:.3g} req/s "
                                            "at peak are routed to no pool")
        elif s.shares and abs(total - 1.0) > TOL:
            yield Finding("shares sum to 1", f"{where}: shares sum to {total:.6f}")
        for pool in s.shares:
            u = units.get(pool)
            if u is None:
                yield Finding("known pools", f"{where}: routes to '{pool}', which is "
                                             "not a pool of this plan")
            elif u.tier != s.tier:
                yield Finding(
                    "pools serve their own tier",
                    f"{where}: {s.shares[pool]:.1%} routed to '{pool}', a pool of tier "
                    f"'{u.tier}' ({u.model}, not this tier's model)")
            elif u.capacity_for(s.bucket) is None:
                yield Finding("pool can serve bucket", f"{where}: routed to '{pool}', "
                                                       "which has no capacity for it")


def _cap_findings(plan: Plan) -> Iterator[Finding]:
    for pool, load in pool_load(plan).items():
        if load is not None and load > 1 + LOAD_TOL:
            yield Finding("load within capacity",
                          f"{pool}: {load:.1%} of its derated capacity at peak")
    for region, used, cap in power_vs_cap(plan):
        if cap is not None and used > cap * (1 + TOL):
            yield Finding("power within cap", f"{region}: {used:.3f} MW at TDP, cap {cap:g} MW")
    cap_share = plan.limits.max_vendor_share
    if cap_share is not None:
        for vendor, share in vendor_shares(plan).items():
            if share > cap_share + TOL:
                yield Finding("vendor share within cap",
                              f"{vendor}: {share:.1%} of "
                              f"{plan.limits.vendor_share_basis}, cap {cap_share:.0%}")


def _bill_findings(plan: Plan) -> Iterator[Finding]:
    c = plan.cost
    if abs(c.committed_usd_per_month + c.on_demand_usd_per_month - c.usd_per_month) > (
            TOL * max(c.usd_per_month, 1.0)):
        yield Finding("bill adds up",
                      f"committed {c.committed_usd_per_month:,.2f} + on-demand "
                      f"{c.on_demand_usd_per_month:,.2f} ≠ bill {c.usd_per_month:,.2f} "
                      "USD/month")
    for u in plan.units:
        if u.chips != u.replicas * u.chips_per_replica:
            yield Finding("chips = replicas × chips per replica",
                          f"{u.pool}: {u.chips} ≠ {u.replicas} × {u.chips_per_replica}")


def _supply_findings(plan: Plan, sc: Scenario, catalog: Catalog) -> Iterator[Finding]:
    chips: dict[tuple[str, str, str], int] = defaultdict(int)
    for u in plan.units:
        chips[(u.accelerator, u.cloud, u.region)] += u.chips
    for entry in sc.supply:
        key = (catalog.accelerator(entry.accelerator).id, entry.cloud, entry.region)
        if chips.get(key, 0) > entry.max_chips:
            yield Finding("supply within cap",
                          f"{entry.accelerator}@{entry.cloud}/{entry.region}: "
                          f"{chips[key]} chips > {entry.max_chips}")


def _n1_findings(plan: Plan, sc: Scenario) -> Iterator[Finding]:
    n1 = sc.policy.n_minus_1
    if n1 is None:
        return
    groups: dict[str, set[str]] = defaultdict(set)
    for u in plan.units:
        groups[getattr(u, n1.by)].add(u.pool)
    for g, members in groups.items():
        f = max_served_fraction(plan, members)
        if f < n1.min_fraction - TOL:
            yield Finding("N-1 holds", f"without {n1.by} {g}: serves {f:.1%} of peak < "
                                       f"{n1.min_fraction:.0%}")


def check_plan(plan: Plan, sc: Scenario | None = None, catalog: Catalog | None = None
               ) -> list[Finding]:
    """Every failed check, in a stable order (empty: the plan is consistent and, given
    ``sc``, honours the scenario's supply and N-1 too)."""
    out = [*_split_findings(plan), *_cap_findings(plan), *_bill_findings(plan)]
    if sc is not None:
        out += _supply_findings(plan, sc, catalog or load_catalog())
        out += _n1_findings(plan, sc)
    return out
