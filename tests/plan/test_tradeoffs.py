"""Trade-offs (tokenfleet.plan.tradeoffs): the frontier and the sensitivities re-solve
the same program, so their answers obey what the program's structure guarantees."""

from __future__ import annotations

import dataclasses

import pytest

from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.planner import chosen_units, cost_breakdown
from tokenfleet.plan.tradeoffs import FrontierPoint, mark_efficient, plan_tradeoffs

from .test_planner import CAPS, PRICES, _cands, _scenario


def _setup(band: float, contracts: bool = False):
    sc = _scenario()
    if not contracts:
        sc = sc.model_copy(update={"contracts": []})
    cs = _cands(CAPS, PRICES)
    cs = dataclasses.replace(cs, candidates=[dataclasses.replace(c, uncertainty=band)
                                             for c in cs.candidates])
    f, sol = solve_fleet(sc, cs)
    assert sol.ok
    return sc, cs, cost_breakdown(sc, chosen_units(f, sol))


def _sens(t, name: str) -> dict[float, float | None]:
    return {p.factor: p.usd_per_month for p in t.sensitivity if p.input == name}


def test_prices_scale_a_bill_without_commitments_exactly() -> None:
    sc, cs, base = _setup(band=0.0)
    t = plan_tradeoffs(sc, cs, base)
    # every candidate's price times k scales the objective by k: same fleet, k x the bill
    for k, usd in _sens(t, "price").items():
        assert usd == pytest.approx(k * base.usd_per_month, rel=1e-9)
    # with no band, the band's width changes nothing
    assert all(v == pytest.approx(base.usd_per_month) for v in _sens(t, "uncertainty").values())
    assert t.solves == 7 + 6


def test_more_traffic_wider_bands_and_more_confidence_never_cost_less() -> None:
    sc, cs, base = _setup(band=0.2)
    t = plan_tradeoffs(sc, cs, base)
    g = _sens(t, "growth")
    assert g[0.8] is not None and g[1.25] is not None
    assert g[0.8] <= base.usd_per_month + 1e-6 <= g[1.25] + 2e-6
    u = _sens(t, "uncertainty")
    assert u[0.5] is not None and u[0.5] <= base.usd_per_month + 1e-6
    assert u[1.5] is None or u[1.5] >= base.usd_per_month - 1e-6
    # a higher confidence counts on less of each pool: the feasible set only shrinks
    bills = [p.usd_per_month for p in t.frontier]
    feasible = [b for b in bills if b is not None]
    assert feasible == sorted(feasible) and bills[0] is not None
    assert all(b is not None for b in bills[: len(feasible)])  # infeasible only at the top
    # the plan's own confidence is on the frontier and re-solves to its bill
    own = next(p for p in t.frontier if p.confidence == t.confidence)
    assert own.usd_per_month == pytest.approx(base.usd_per_month)
    assert all(0.0 <= (p.worst_tier_holds or 0.0) <= 1.0 for p in t.frontier)


def test_a_bill_at_a_commitment_stays_while_the_chips_move() -> None:
    sc, cs, base = _setup(band=0.0, contracts=True)
    t = plan_tradeoffs(sc, cs, base)
    # commitments are not repriced: for any fleet, max(C, kM) + kO lies between
    # k x (max(C, M) + O) and the unscaled bill, so the re-solved bills do too
    b = base.usd_per_month
    price = {p.factor: p for p in t.sensitivity if p.input == "price"}
    lo, hi = price[0.8].usd_per_month, price[1.2].usd_per_month
    assert lo is not None and hi is not None
    assert 0.8 * b - 1e-6 <= lo <= b + 1e-6
    assert b - 1e-6 <= hi <= 1.2 * b + 1e-6
    assert price[1.2].fleet_usd_per_month is not None


def test_efficient_points_by_hand() -> None:
    def pt(q: float, usd: float | None, holds: float | None) -> FrontierPoint:
        return FrontierPoint(confidence=q, usd_per_month=usd, fleet_usd_per_month=usd,
                             worst_tier_holds=holds, worst_tier="t", efficient=False)

    out = mark_efficient([pt(0.5, 100, 0.4), pt(0.7, 100, 0.6), pt(0.9, 120, 0.55),
                          pt(0.95, 150, 0.9), pt(0.99, None, None)])
    # 0.5 is beaten by 0.7 (same cost, surer); 0.9 by 0.7 (cheaper and surer)
    assert [p.efficient for p in out] == [False, True, False, True, False]
