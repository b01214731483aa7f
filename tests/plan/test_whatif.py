"""What-ifs (tokenfleet.plan.whatif): --without, --require, the inverse question."""

from __future__ import annotations

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.planner import bill, chosen_units
from tokenfleet.plan.scenario import apply_overrides
from tokenfleet.plan.whatif import (
    apply_require,
    apply_without,
    max_traffic_scale,
    parse_require,
    scaled,
)

from .test_planner import CAPS, PRICES, _cands, _scenario

CAT = load_catalog()


def test_parse_require_reads_fractions_and_percentages():
    sc = _scenario()
    m = parse_require("t: Microsoft >= 0.3", sc)
    assert (m.tier, m.vendor, m.min_fraction) == ("t", "Microsoft", 0.3)
    assert parse_require(" t :AMD>=25% ", sc).min_fraction == pytest.approx(0.25)
    for bad in ("t Microsoft 0.3", "nope: AMD >= 0.3", "t: AMD >= 1.5"):
        with pytest.raises(TokenfleetError):
            parse_require(bad, sc)


def test_without_matches_accelerator_vendor_or_cloud():
    sc = _scenario()
    for name, gone in (("maia-200", {"maia-200"}), ("AMD", {"mi300x"}), ("azure", {"maia-200"}),
                       ("NVIDIA", {"h100-sxm"})):
        out, said = apply_without(sc, CAT, [name])
        assert {s.accelerator for s in out.supply if s.max_chips == 0} == gone, name
        assert name in said
    assert all(s.max_chips > 0 for s in sc.supply)  # the input is not edited
    with pytest.raises(TokenfleetError, match="allowed: .*maia-200"):
        apply_without(sc, CAT, ["tpu-v9"])


def test_set_max_chips_zero_is_accepted():
    data = _scenario().model_dump()
    out = apply_overrides(data, ["supply.maia-200.max_chips=0"])
    assert out["supply"][1]["max_chips"] == 0
    type(_scenario()).model_validate(out)  # validates


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_required_share_holds_and_costs_at_least_as_much(fraction):
    sc = _scenario().model_copy(update={"mip_gap": 1e-9})
    cs = _cands(CAPS, PRICES)
    f0, s0 = solve_fleet(sc, cs)
    floor = parse_require(f"t: Microsoft >= {fraction}", sc)
    sc2 = apply_require(sc, [floor])
    f, sol = solve_fleet(sc2, cs)
    assert sol.ok and sol.x is not None
    out_len = {d.bucket: d.output_len for d in cs.demands}
    tokens = {c.id: sum(sol.x[f.x[(c.id, b)]] * out_len[b] for b in c.capacity)
              for c in cs.candidates}
    share = sum(v for cid, v in tokens.items() if cid == "p1") / sum(tokens.values())
    assert share >= fraction - 1e-6
    assert bill(sc2, f, sol) >= bill(sc, f0, s0) - 1e-6
    assert any(r.family == "min-share" for r in f.program.rows)


def test_unknown_vendor_in_a_floor_is_a_clear_error():
    sc = apply_require(_scenario(), [parse_require("t: Cerebras >= 0.1", _scenario())])
    with pytest.raises(TokenfleetError, match="no candidate pool on vendor 'Cerebras'"):
        solve_fleet(sc, _cands(CAPS, PRICES))


def test_budget_answer_is_the_largest_scale_within_it():
    sc = _scenario().model_copy(update={"mip_gap": 1e-9})
    cs = _cands(CAPS, PRICES)
    f, s = solve_fleet(sc, cs)
    budget = bill(sc, f, s) * 1.3
    ans = max_traffic_scale(sc, cs, budget, None, rel_tol=0.01)
    assert ans.scale > 1.0 and ans.usd_per_month is not None
    assert ans.usd_per_month <= budget
    lo, hi = ans.bracket
    assert hi / lo <= 1.0101
    f2, s2 = solve_fleet(sc, scaled(cs, hi))
    assert not s2.ok or bill(sc, f2, s2) > budget  # one step more does not fit


def test_power_answer_respects_the_fleet_cap():
    sc = _scenario().model_copy(update={"mip_gap": 1e-9})
    cs = _cands(CAPS, PRICES)
    ans = max_traffic_scale(sc, cs, None, 0.004, rel_tol=0.01)
    assert ans.power_mw is not None and ans.power_mw <= 0.004 + 1e-12
    sc2 = sc.model_copy(update={"max_power_mw": 0.004})
    f, s = solve_fleet(sc2, scaled(cs, ans.scale))
    assert s.ok
    watts = sum(c.watts * k for c, k in chosen_units(f, s))
    assert watts <= 4000 + 1e-6
    f, s = solve_fleet(sc2, scaled(cs, ans.bracket[1]))
    assert not s.ok


def test_budget_below_the_commitment_or_too_small_is_a_clear_error():
    sc = _scenario().model_copy(update={"mip_gap": 1e-9})
    cs = _cands(CAPS, PRICES)
    with pytest.raises(TokenfleetError, match="below what the scenario pays"):
        max_traffic_scale(sc, cs, 100.0, None)
    with pytest.raises(TokenfleetError, match="no traffic fits"):
        max_traffic_scale(sc, cs, None, 1e-9)


def _plan_json(result_output: str) -> dict:
    import json

    return json.loads(result_output[result_output.index("{"):])


def test_cli_what_ifs_answer_in_one_command(tmp_path):
    """--without, --require and --versus (scenario and plan.json) on a small scenario:
    both sides, the saving, and a band from both ends of the estimates' bands."""
    from typer.testing import CliRunner

    from tokenfleet.cli import app

    from .test_scenario import SMALL, _write

    p = _write(tmp_path, {**SMALL, "policy": {}})
    run = CliRunner().invoke
    base = tmp_path / "base.json"
    r = run(app, ["plan", str(p), "--out", str(base), "--report", "-", "--no-baselines"])
    assert r.exit_code == 0, r.output
    r = run(app, ["plan", str(p), "--without", "AMD", "--out", str(tmp_path / "w.json"),
                  "--report", "-", "--no-baselines", "--json"])
    assert r.exit_code == 0, r.output
    w = _plan_json(r.output)
    assert {u["vendor"] for u in w["units"]} == {"NVIDIA"}
    c = w["whatif"]["comparison"]
    assert c["other"]["label"] == "as given" and c["this"]["label"] == "without AMD"
    assert c["saving_usd_per_month"] == pytest.approx(
        c["other"]["usd_per_month"] - c["this"]["usd_per_month"])
    lo, hi = c["band_usd_per_month"]
    assert lo <= c["saving_usd_per_month"] <= hi
    r = run(app, ["plan", str(p), "--require", "chat: AMD >= 0.9", "--versus", str(base),
                  "--out", str(tmp_path / "r.json"), "--report", "-", "--json"])
    assert r.exit_code == 0, r.output
    rq = _plan_json(r.output)
    assert rq["whatif"]["comparison"]["this"]["tier_vendor_share"]["chat"]["AMD"] >= 0.9 - 1e-6
    assert rq["whatif"]["comparison"]["band_usd_per_month"] is not None  # base.json re-solved
    floor = next(k for k in rq["constraints"] if k["name"].startswith("min-share chat"))
    assert floor["marginal_usd_per_month"] is not None  # priced like every constraint


def test_conflicting_floors_are_named_when_infeasible():
    from tokenfleet.plan.planner import explain_infeasible

    sc = _scenario()
    sc = apply_require(sc, [parse_require("t: Microsoft >= 0.8", sc),
                            parse_require("t: AMD >= 0.5", sc)])
    cs = _cands(CAPS, PRICES)
    assert not solve_fleet(sc, cs)[1].ok
    assert "min-share t:" in explain_infeasible(sc, cs)
