"""Routing through the shared policies (the same objects the gateway uses)."""

from __future__ import annotations

import pytest

from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.run import simulate
from tokenfleet.sim.traffic import planned_traffic


def _routed(plan, policy: str, duration: float = 40, rate: float | None = None):
    w = planned_traffic(plan, duration, rate, seed=9)
    s = simulate(plan, w, options=SimOptions(policy=policy, seed=1)).summary
    assert s.checks.conservation_ok
    return {p.vendor: p.requests for p in s.pools.values()}, s


def test_plan_policy_follows_shares(two_vendor_plan) -> None:
    routed, s = _routed(two_vendor_plan, "plan")
    total = sum(routed.values())
    # Expected share per vendor: the split's shares weighted by bucket peak rates.
    want = {}
    peak = sum(x.peak_requests_per_s for x in two_vendor_plan.traffic_split)
    for sp in two_vendor_plan.traffic_split:
        for pid, share in sp.shares.items():
            v = next(u.vendor for u in two_vendor_plan.units if u.pool == pid)
            want[v] = want.get(v, 0.0) + share * sp.peak_requests_per_s / peak
    for v, frac in want.items():
        assert routed[v] / total == pytest.approx(frac, abs=0.03)


def test_round_robin_alternates(two_vendor_plan) -> None:
    routed, _ = _routed(two_vendor_plan, "round-robin")
    assert abs(routed["NVIDIA"] - routed["AMD"]) <= len(two_vendor_plan.traffic_split)


def test_cost_spill_prefers_the_cheaper_pool(two_vendor_plan) -> None:
    price = {u.vendor: u.usd_per_chip_hour for u in two_vendor_plan.units}
    cheap = min(price, key=price.get)
    dear = max(price, key=price.get)
    routed, _ = _routed(two_vendor_plan, "cost-spill", rate=5.0)
    assert routed[dear] == 0 and routed[cheap] > 0  # light load fits the cheap pool
    routed, _ = _routed(two_vendor_plan, "cost-spill", duration=20, rate=2000.0)
    assert routed[dear] > 0 and routed[cheap] > routed[dear] / 10  # overload spills


@pytest.mark.parametrize("policy", ["jsq", "least-kv"])
def test_load_aware_policies_balance(two_vendor_plan, policy: str) -> None:
    routed, s = _routed(two_vendor_plan, policy)
    assert min(routed.values()) > 0.2 * sum(routed.values())
    assert s.completed == s.requests


def test_unknown_policy(two_vendor_plan) -> None:
    from tokenfleet.errors import TokenfleetError

    with pytest.raises(TokenfleetError, match="unknown routing policy"):
        _routed(two_vendor_plan, "random-walk")
