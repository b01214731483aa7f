"""Honest money: the simulator bills a window with the plan's formula, and an outage
never lowers the bill (reserved, committed and failed capacity is paid for)."""

from __future__ import annotations

import pytest

from tokenfleet.plan.billing import bill_usd, period_fraction
from tokenfleet.plan.schema import ContractLimit, Plan
from tokenfleet.sim.results import billed_span_s
from tokenfleet.sim.run import simulate
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.traffic import planned_traffic


def _with_commitment(plan: Plan, usd_per_month: float) -> Plan:
    """The plan with a commitment in the AMD pool's cloud and its H100s reserved."""
    p = plan.model_copy(deep=True)
    amd = next(u for u in p.units if u.vendor == "AMD")
    p.limits = p.limits.model_copy(update={
        "hours_per_month": 730.0,
        "contracts": {"amd-commit": ContractLimit(cloud=amd.cloud,
                                                  committed_usd_per_month=usd_per_month)}})
    for u in p.units:
        if u.vendor == "NVIDIA":
            u.price_kind = "reserved"
    return p


@pytest.mark.parametrize("commit", [0.0, 500.0, 50_000.0])  # none, used up, mostly unused
def test_window_bill_is_the_plans_monthly_formula_pro_rata(two_vendor_plan, commit) -> None:
    plan = _with_commitment(two_vendor_plan, commit) if commit else two_vendor_plan
    run = simulate(plan, planned_traffic(plan, 40, seed=3))
    span = billed_span_s(run.record)
    frac = period_fraction(span, 730.0)
    metered: dict[str, float] = {}
    for u in plan.units:  # by hand: every replica, its price, the window
        metered[u.cloud] = metered.get(u.cloud, 0.0) + u.usd_per_hour * 730.0 * frac
    commits = {next(u.cloud for u in plan.units if u.vendor == "AMD"): commit * frac} if (
        commit) else {}
    expected = sum(metered.values()) if not commit else (
        commit * frac + sum(max(v - commits.get(c, 0.0), 0.0) for c, v in metered.items()))
    assert run.summary.cost_usd == pytest.approx(expected, rel=1e-9)
    monthly = bill_usd({c: v / frac for c, v in metered.items()},
                       {c: v / frac for c, v in commits.items()}).usd
    assert run.summary.cost_usd == pytest.approx(monthly * frac, rel=1e-9)


@pytest.mark.parametrize("fail", ["vendor=AMD", "vendor=NVIDIA", "vendor=AMD@t=5..20",
                                  "cloud=runpod@t=10", "vendor=AMD@t=0"])
@pytest.mark.parametrize("commit", [0.0, 50_000.0])
def test_an_outage_never_lowers_the_bill(two_vendor_plan, fail, commit) -> None:
    plan = _with_commitment(two_vendor_plan, commit) if commit else two_vendor_plan
    w = planned_traffic(plan, 30, seed=7)
    up = simulate(plan, w).summary
    down = simulate(plan, w, failures=[parse_failure(fail)]).summary
    assert down.cost_usd >= up.cost_usd * (1 - 1e-12)
    for pid, p in down.pools.items():  # reserved and failed replicas are billed in full
        assert p.cost_usd == pytest.approx(up.pools[pid].cost_usd, rel=1e-12)


def test_window_bill_applies_the_contracts_discount_and_volume_tiers(two_vendor_plan) -> None:
    """A contract with a discount and usage-stepped tiers bills a window as the plan
    bills a month (plan.billing.contract_usage_usd, thresholds pro rata), and chips it
    does not cover stay at list."""
    p = two_vendor_plan.model_copy(deep=True)
    amd = next(u for u in p.units if u.vendor == "AMD")
    month_list = amd.usd_per_hour * 730.0  # the AMD pool all month at list
    tiers = [(0.3 * month_list, 0.2), (0.6 * month_list, 0.5)]
    p.limits = p.limits.model_copy(update={"hours_per_month": 730.0, "contracts": {
        "amd-deal": ContractLimit(cloud=amd.cloud, committed_usd_per_month=0.0,
                                  discount=0.1, volume_tiers=tiers,
                                  accelerators=[amd.accelerator])}})
    run = simulate(p, planned_traffic(p, 40, seed=3))
    frac = period_fraction(billed_span_s(run.record), 730.0)
    used = month_list * frac  # by hand: 30 % at 10 % off, 30 % at 20 % off, 40 % at 50 %
    billed = used * (0.3 * 0.9 + 0.3 * 0.8 + 0.4 * 0.5)
    others = sum(u.usd_per_hour * 730.0 * frac for u in p.units if u.pool != amd.pool)
    assert run.summary.cost_usd == pytest.approx(billed + others, rel=1e-9)
