"""Contracts as signed, contract power caps, and plan.json's money and power fields."""

from __future__ import annotations

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.contracts import enrich
from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.planner import _assemble, chosen_units
from tokenfleet.plan.scenario import Contract, Scenario
from tokenfleet.yamlio import validate

from .test_planner import CAPS, CAT, PRICES, _cands, _scenario, _with_estimates


def test_ramp_and_total_give_the_months_minimum():
    k = Contract(name="k", cloud="azure", term_months=36, total_usd=54e6,
                 yearly_minimum_usd=[12e6, 18e6, 24e6], year=3)
    assert k.committed_usd_per_month == pytest.approx(2e6)
    assert Contract(name="k", cloud="azure", term_months=24,
                    total_usd=48e6).committed_usd_per_month == pytest.approx(2e6)
    # a model_dump round trip keeps it valid (derived and given agree)
    assert Contract.model_validate(k.model_dump()).committed_usd_per_month == 2e6


@pytest.mark.parametrize(("fields", "msg"), [
    ({"term_months": 36, "yearly_minimum_usd": [1e6, 2e6]}, "3 years"),
    ({"term_months": 12, "yearly_minimum_usd": [1e6], "year": 2}, "past the 1-year term"),
    ({"term_months": 24, "total_usd": 1e6, "yearly_minimum_usd": [1e6, 1e6]}, "more than"),
    ({"committed_usd_per_month": 5.0, "total_usd": 1e6}, "not both"),
    ({}, "give committed_usd_per_month"),
])
def test_bad_contract_terms_are_one_line_errors(fields, msg):
    with pytest.raises(TokenfleetError, match=msg):
        validate(Contract, {"name": "k", "cloud": "azure", **fields}, "s.yaml", None)


def _plan(sc: Scenario):
    cs = _cands(CAPS, PRICES)
    _with_estimates(cs)
    f, sol = solve_fleet(sc, cs)
    assert sol.ok
    plan = _assemble(sc, cs, f, sol, "tiny", [], [], CAT)
    enrich(plan, sc)
    return plan, f, sol


def test_contract_power_cap_holds_and_energy_counts_pue():
    d = _scenario().model_dump()
    d["regions"][1]["pue"] = 1.25
    d["regions"][1]["usd_per_mwh"] = 80.0
    d["contracts"][0]["power_mw"] = 0.0016  # azure pools: at most 1.6 kW with PUE
    d["mip_gap"] = 1e-9
    sc = Scenario.model_validate(d)
    plan, f, sol = _plan(sc)
    azure_w = sum(c.watts * 1.25 * k for c, k in chosen_units(f, sol) if c.cloud == "azure")
    assert azure_w <= 1600 + 1e-6
    assert any(r.name == "power contract c" for r in f.program.rows)
    r2 = plan.energy["regions"]["r2"]
    assert r2["facility_mw"] == pytest.approx(plan.power_mw["r2"] * 1.25)
    assert r2["mwh_per_month"] == pytest.approx(plan.power_mw["r2"] * 1.25 * 730)
    assert r2["usd_per_month"] == pytest.approx(r2["mwh_per_month"] * 80.0)
    k = plan.contracts[0]
    assert k["minimum_usd_per_month"] == 2000 and 0 <= k["used_fraction"] <= 1
    assert k["power_mw"] == pytest.approx(azure_w / 1e6)
    assert plan.economics is not None  # vendor shares by spend, chips, tokens: one table
    for basis in ("tokens", "spend", "chips"):
        assert sum(getattr(s, basis) for s in plan.economics.vendor_share.values()
                   ) == pytest.approx(1.0)
    # a plan.json written with the old copy (`vendor_shares`) still reads
    from tokenfleet.plan.schema import Plan

    old = {**plan.model_dump(mode="json"), "vendor_shares": {"spend": {"x": 1.0}}}
    assert "vendor_shares" not in Plan.model_validate(old).model_dump()


def _brute(sc: Scenario, cs) -> float:
    """Cheapest bill by enumeration, with the contract's eligibility and discount."""
    import itertools

    from .test_planner import _routable

    hours = sc.hours_per_month
    k = sc.contracts[0]
    best = float("inf")
    bounds = [sc.supply[c.supply_index].max_chips // c.count for c in cs.candidates]
    for n in itertools.product(*[range(b + 1) for b in bounds]):
        watts = {r.name: 0.0 for r in sc.regions}
        for c, m in zip(cs.candidates, n, strict=True):
            watts[c.region] += m * c.watts
        if any(r.power_mw is not None and watts[r.name] > r.power_mw * 1e6 for r in sc.regions):
            continue
        if not _routable(sc, cs, n):
            continue
        at_list = listed = 0.0
        for c, m in zip(cs.candidates, n, strict=True):
            spend = m * c.usd_per_hour * hours
            if k.eligible(c.accelerator.id, c.cloud, c.region):
                at_list += spend
            else:
                listed += spend
        covered = _stepped_by_hand(at_list, k)
        minimum = k.committed_usd_per_month if k.take_or_pay else 0.0
        best = min(best, minimum + max(covered - minimum, 0.0) + listed)
    return best


def _stepped_by_hand(at_list: float, k: Contract) -> float:
    """Billed usage: each step's rate on the part of the usage inside the step."""
    steps = [(0.0, k.discount)] + [(t.above_usd_per_month, t.discount)
                                   for t in k.volume_tiers or []]
    out = 0.0
    for i, (start, rate) in enumerate(steps):
        end = steps[i + 1][0] if i + 1 < len(steps) else float("inf")
        if at_list > start:
            out += (min(at_list, end) - start) * (1 - rate)
    return out


TIERS = [{"above_usd_per_month": 3000, "discount": 0.3},
         {"above_usd_per_month": 6000, "discount": 0.6}]


@pytest.mark.parametrize("terms", [
    {"volume_tiers": TIERS},
    {"volume_tiers": TIERS, "discount": 0.1, "take_or_pay": False},
    {"volume_tiers": TIERS[1:], "committed_usd_per_month": 8000},
    {"volume_tiers": [{"above_usd_per_month": 2500, "discount": 0.8}]},
    {"discount": 0.3},
    {"discount": 0.3, "take_or_pay": False},
    {"regions": ["r1"]},  # azure's pool is in r2: the commitment covers nothing
    {"accelerators": ["maia-200"], "discount": 0.5, "committed_usd_per_month": 500},
])
def test_contract_terms_match_enumeration(terms):
    from tokenfleet.plan.planner import bill

    d = _scenario().model_dump()
    d["contracts"][0].update(terms)
    d["mip_gap"] = 1e-9
    sc = Scenario.model_validate(d)
    cs = _cands(CAPS, PRICES)
    f, sol = solve_fleet(sc, cs)
    assert sol.ok
    assert bill(sc, f, sol) == pytest.approx(_brute(sc, cs), rel=1e-6)
    # and the program prices its plan as billed (a model of rising discounts without
    # its binaries would fill the cheapest step first and under-price it)
    assert sol.objective == pytest.approx(bill(sc, f, sol), rel=1e-4)


def test_volume_discount_tier_follows_the_total_commitment():
    tiers = [{"min_total_usd": 0, "discount": 0.05}, {"min_total_usd": 5e7, "discount": 0.2}]
    small = Contract(name="k", cloud="azure", term_months=36, total_usd=3e7,
                     discount_tiers=tiers)
    big = Contract(name="k", cloud="azure", term_months=36, total_usd=5.4e7,
                   discount_tiers=tiers)
    assert (small.discount, big.discount) == (0.05, 0.2)
    assert Contract.model_validate(big.model_dump()).discount == 0.2  # round trip
    with pytest.raises(TokenfleetError, match="disagrees"):
        validate(Contract, {"name": "k", "cloud": "azure", "total_usd": 3e7,
                            "discount": 0.3, "discount_tiers": tiers}, "s.yaml", None)


def test_volume_tiers_bill_each_step_at_its_rate():
    from tokenfleet.plan.billing import contract_usage_usd

    tiers = [(4.0, 0.2), (8.0, 0.5)]
    assert contract_usage_usd(10.0, 0.1, tiers) == pytest.approx(4 * .9 + 4 * .8 + 2 * .5)
    assert contract_usage_usd(3.0, 0.1, tiers) == pytest.approx(3 * .9)
    # half a month: the thresholds halve too
    assert contract_usage_usd(10.0, 0.1, tiers, 0.5) == pytest.approx(2 * .9 + 2 * .8
                                                                       + 6 * .5)


@pytest.mark.parametrize(("tiers", "discount", "msg"), [
    ([{"above_usd_per_month": 5e6, "discount": 0.1},
      {"above_usd_per_month": 2e6, "discount": 0.2}], 0.0, r"volume_tiers\[1\].*must be above"),
    ([{"above_usd_per_month": 2e6, "discount": 0.1},
      {"above_usd_per_month": 5e6, "discount": 0.05}], 0.0, r"volume_tiers\[1\].*never falls"),
    ([{"above_usd_per_month": 2e6, "discount": 0.05}], 0.1, r"volume_tiers\[0\].*below"),
    ([{"above_usd_per_month": 0, "discount": 0.05}], 0.0, "above_usd_per_month"),
    ([{"above_usd_per_month": 1e6, "discount": 1.0}], 0.0, "discount"),
])
def test_bad_volume_tiers_are_one_line_errors(tiers, discount, msg):
    with pytest.raises(TokenfleetError, match=msg) as e:
        validate(Contract, {"name": "k", "cloud": "azure", "committed_usd_per_month": 1e6,
                            "discount": discount, "volume_tiers": tiers}, "s.yaml", None)
    assert "\n" not in str(e.value).strip() or "s.yaml" in str(e.value)


def test_plan_json_carries_volume_tiers_and_bills_by_them():
    d = _scenario().model_dump()
    d["contracts"][0].update({"volume_tiers": TIERS, "take_or_pay": False})
    d["mip_gap"] = 1e-9
    sc = Scenario.model_validate(d)
    plan, f, sol = _plan(sc)
    k = plan.contracts[0]
    assert [t["above_usd_per_month"] for t in k["volume_tiers"]] == [3000, 6000]
    assert k["usage_usd_per_month"] == pytest.approx(
        _stepped_by_hand(k["usage_at_list_usd_per_month"], sc.contracts[0]))
    listed = sum(u.usd_per_hour * 730 for u in plan.units if u.cloud != "azure")
    assert plan.cost.usd_per_month == pytest.approx(k["usage_usd_per_month"] + listed)
    assert plan.limits.contracts["c"].volume_tiers == [(3000, 0.3), (6000, 0.6)]
