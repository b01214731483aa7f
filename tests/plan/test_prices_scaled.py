"""Constraint prices where they bind, on the example at a traffic scale where they do.

On the example as shipped the fleet sits inside the Azure commitment's $1.5M minimum and
us-central draws ~0.14 MW, so a 0.3 MW cap binds nothing and every price is $0. With
every tier's traffic times SCALE the fleet costs ~$3.1M a month (past the minimum: the
bill moves with the fleet) and us-central draws ~0.5 MW uncapped, so a 0.3 MW cap binds;
each reported price is checked against the scenario edited and planned again from
scratch (no ``drop``, no warm start), the independent way of asking the question.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.plan.gates import precision_gate
from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.planner import bill, prepare
from tokenfleet.plan.prices import price_constraints
from tokenfleet.plan.scenario import Scenario, load_scenario

from .test_prices import _without

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "frontier-lab.yaml"
SCALE = 6  # the least round multiple with the cap worth several % of the bill
CAP_MW = 0.3
GAP = 1e-3  # both solves of a price stop within 0.1 % of the bill: ~$3k, well under 10 %


def scaled_overrides(scale: float) -> list[str]:
    """``--set`` edits multiplying every tier's traffic of the example by ``scale``."""
    sc, _ = load_scenario(EXAMPLE)
    return [f"tiers.{t.name}.traffic.scale={t.traffic.scale * scale:g}" for t in sc.tiers]


@pytest.fixture(scope="module")
def scaled_cands():
    sc, base = load_scenario(EXAMPLE, [*scaled_overrides(SCALE),
                                       f"regions.us-central.power_mw={CAP_MW}",
                                       f"mip_gap={GAP}"])
    cat = load_catalog()
    cs = prepare(sc, base, cat, None, precision_gate(sc, base, str(EXAMPLE)))
    return sc, cs


def _priced(sc: Scenario, cs):
    f, sol = solve_fleet(sc, cs)
    assert sol.ok
    total = bill(sc, f, sol)
    return total, sol.gap * total, {r.name: r for r in price_constraints(sc, cs, f, sol,
                                                                         total, bill)}


def _explicit(sc: Scenario, cs, total: float, name: str) -> tuple[float, float]:
    sc2 = _without(sc, name)
    f2, s2 = solve_fleet(sc2, cs)
    assert s2.ok
    b2 = bill(sc2, f2, s2)
    return total - b2, s2.gap * b2


def _agrees(price: float | None, diff: float, gaps_usd: float) -> bool:
    assert price is not None
    return abs(price - diff) <= max(0.1 * abs(diff), gaps_usd)


@pytest.mark.slow
def test_binding_power_cap_n1_and_commitment_priced_as_re_solves(scaled_cands):
    sc, cs = scaled_cands
    total, gap_usd, reports = _priced(sc, cs)
    assert total > 2 * sc.contracts[0].committed_usd_per_month  # the bill moves with it
    for name in ("power us-central", "n-1", "contract azure-commit"):
        r = reports[name]
        diff, gap2_usd = _explicit(sc, cs, total, name)
        assert _agrees(r.marginal_usd_per_month, diff, gap_usd + gap2_usd), (
            f"{name}: priced {r.marginal_usd_per_month:,.0f}, re-solve {diff:,.0f}")
        if name != "contract azure-commit":  # used in full: dropping it saves nothing
            assert diff > 0.03 * total and r.binding, (name, diff, total)
    # one more unit of the cap: the per-MW price is the re-solve with the cap raised by
    # its step, per MW of that step
    r = reports["power us-central"]
    assert r.unit == "MW" and r.per_unit_step and r.per_unit_usd_per_month
    d = sc.model_dump()
    next(x for x in d["regions"] if x["name"] == "us-central")["power_mw"] += r.per_unit_step
    sc2 = Scenario.model_validate(d)
    f2, s2 = solve_fleet(sc2, cs)
    step_saving = total - bill(sc2, f2, s2)
    assert step_saving > 0
    assert _agrees(r.per_unit_usd_per_month * r.per_unit_step, step_saving,
                   gap_usd + s2.gap * total)


@pytest.mark.slow
def test_binding_vendor_cap_and_an_unused_commitment_priced_as_re_solves(scaled_cands):
    """The example's 50 % vendor cap costs < 0.1 % at this scale, with N-1 or without
    (MI355X and Maia 200 share the cheap work about evenly), so the cap here is 25 %,
    with N-1 off: that fleet uses only part of the Azure minimum, so the commitment has
    a price too."""
    sc, cs = scaled_cands
    d = _without(sc, "n-1").model_dump()
    d["policy"]["max_vendor_share"] = 0.25
    sc = Scenario.model_validate(d)
    total, gap_usd, reports = _priced(sc, cs)
    for name in ("vendor-share", "contract azure-commit"):
        r = reports[name]
        diff, gap2_usd = _explicit(sc, cs, total, name)
        assert diff > 0.01 * total and r.binding, (name, diff, total)
        assert _agrees(r.marginal_usd_per_month, diff, gap_usd + gap2_usd), (
            f"{name}: priced {r.marginal_usd_per_month:,.0f}, re-solve {diff:,.0f}")
    r = reports["vendor-share"]
    assert r.unit == "point of share" and r.per_unit_usd_per_month is not None
