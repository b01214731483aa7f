"""Consistency checks a reader of plan.json would otherwise do by hand.

The report re-derives a few identities from the plan (shares sum to one, each pool
serves only its own tier, loads and power within caps, the bill adds up) and lists
every one that fails, so a planner bug shows up in the report instead of in
production.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfleet.plan.schema import Plan
from tokenfleet.report.plan_metrics import pool_load, power_vs_cap

TOL = 1e-6  # relative tolerance for identities that hold up to floating point
LOAD_TOL = 1e-3  # the solver's feasibility tolerance shows up as loads of 1.000x


@dataclass(frozen=True)
class Finding:
    check: str
    message: str


def check_plan(plan: Plan) -> list[Finding]:
    """Every failed check, in a stable order (empty when the plan is consistent)."""
    out: list[Finding] = []
    units = {u.pool: u for u in plan.units}

    for s in plan.traffic_split:
        where = f"{s.tier}/{s.bucket}"
        total = sum(s.shares.values())
        if s.peak_requests_per_s > 0 and not s.shares:
            out.append(Finding("traffic served", f"{where}: {s.peak_requests_per_s:.3g} req/s "
                                                 "at peak are routed to no pool"))
        elif s.shares and abs(total - 1.0) > 1e-6:
            out.append(Finding("shares sum to 1", f"{where}: shares sum to {total:.6f}"))
        for pool in s.shares:
            u = units.get(pool)
            if u is None:
                out.append(Finding("known pools", f"{where}: routes to '{pool}', which is "
                                                  "not a pool of this plan"))
            elif u.tier != s.tier:
                out.append(Finding(
                    "pools serve their own tier",
                    f"{where}: {s.shares[pool]:.1%} routed to '{pool}', a pool of tier "
                    f"'{u.tier}' ({u.model}, not this tier's model)"))
            elif u.capacity_for(s.bucket) is None:
                out.append(Finding("pool can serve bucket", f"{where}: routed to '{pool}', "
                                                            "which has no capacity for it"))

    for pool, load in pool_load(plan).items():
        if load is not None and load > 1 + LOAD_TOL:
            out.append(Finding("load within capacity",
                               f"{pool}: {load:.1%} of its derated capacity at peak"))

    for region, used, cap in power_vs_cap(plan):
        if cap is not None and used > cap * (1 + TOL):
            out.append(Finding("power within cap",
                               f"{region}: {used:.3f} MW at TDP, cap {cap:g} MW"))

    cap_share = plan.limits.get("max_vendor_share")
    if cap_share is not None:
        for vendor, share in plan.vendor_share.items():
            if share > float(cap_share) + TOL:
                out.append(Finding("vendor share within cap",
                                   f"{vendor}: {share:.1%} of output tokens, cap "
                                   f"{float(cap_share):.0%}"))

    c = plan.cost
    if abs(c.committed_usd_per_month + c.on_demand_usd_per_month - c.usd_per_month) > (
            TOL * max(c.usd_per_month, 1.0)):
        out.append(Finding("bill adds up",
                           f"committed {c.committed_usd_per_month:,.2f} + on-demand "
                           f"{c.on_demand_usd_per_month:,.2f} ≠ bill {c.usd_per_month:,.2f} "
                           "USD/month"))
    for u in plan.units:
        if u.chips != u.replicas * u.chips_per_replica:
            out.append(Finding("chips = replicas × chips per replica",
                               f"{u.pool}: {u.chips} ≠ {u.replicas} × {u.chips_per_replica}"))
    return out
