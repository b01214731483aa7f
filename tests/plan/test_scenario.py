"""Scenario validation, --set overrides, infeasibility explanations, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tokenfleet.cli import app
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.planner import Infeasible, plan_scenario
from tokenfleet.plan.scenario import apply_overrides, explain_schema, load_scenario

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "name": "small",
    "tiers": [{"name": "chat", "model": "llama-3.1-8b",
               "traffic": {"rate_per_s": 20, "mix": [
                   {"input_len": 500, "output_len": 200, "share": 3},
                   {"input_len": 3000, "output_len": 300, "share": 1}]},
               "slo": {"ttft_s": 2.0, "tpot_s": 0.05}, "precisions": ["fp8", "bf16"]}],
    "supply": [{"accelerator": "h100-sxm", "cloud": "runpod", "region": "east",
                "max_chips": 64},
               {"accelerator": "mi300x", "cloud": "tensorwave", "region": "west",
                "max_chips": 64}],
    "regions": [{"name": "east", "power_mw": 1.0}, {"name": "west", "power_mw": 1.0}],
    "policy": {"max_vendor_share": 0.6},
}


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_small_scenario_plans_and_respects_vendor_cap(tmp_path):
    sc, base = load_scenario(_write(tmp_path, SMALL))
    plan = plan_scenario(sc, base, name=sc.name)
    assert plan.units
    assert max(plan.vendor_share.values()) <= 0.6 + 1e-6
    names = {c.name for c in plan.constraints}
    assert "vendor-share" in names and "power east" in names
    assert {b.name.split(" (")[0] for b in plan.baselines} >= {
        "cheapest mix, no policy constraints", "NVIDIA only", "best single chip type"}


def test_power_cap_infeasibility_names_the_cap_and_the_need(tmp_path):
    data = json.loads(json.dumps(SMALL))
    # 500 W per region: not even one 700 W H100 or 750 W MI300X fits
    data["regions"] = [{"name": "east", "power_mw": 0.0005}, {"name": "west",
                                                               "power_mw": 0.0005}]
    sc, base = load_scenario(_write(tmp_path, data))
    with pytest.raises(Infeasible) as e:
        plan_scenario(sc, base, compare_policies=False)
    msg = str(e.value)
    assert "power" in msg and "MW" in msg and "needs at least" in msg


def test_unreachable_slo_is_explained_per_chip(tmp_path):
    data = json.loads(json.dumps(SMALL))
    data["tiers"][0]["slo"] = {"tpot_s": 0.0001}
    sc, base = load_scenario(_write(tmp_path, data))
    with pytest.raises(Infeasible) as e:
        plan_scenario(sc, base, compare_policies=False)
    assert "no supplied chip meets the SLO" in str(e.value)
    assert "h100-sxm" in str(e.value) and "TPOT" in str(e.value)


def test_bad_fields_name_file_line_and_field(tmp_path):
    data = json.loads(json.dumps(SMALL))
    data["tiers"][0]["precisions"] = ["fp8", "fp3"]
    p = _write(tmp_path, data)
    with pytest.raises(TokenfleetError) as e:
        load_scenario(p)
    assert str(p) in str(e.value) and "tiers.0.precisions.1" in str(e.value)
    data = json.loads(json.dumps(SMALL))
    data["supply"][0]["region"] = "mars"
    with pytest.raises(TokenfleetError, match="mars"):
        load_scenario(_write(tmp_path, data))
    (tmp_path / "broken.yaml").write_text("name: x\ntiers: [\n")
    with pytest.raises(TokenfleetError, match=r"broken.yaml:\d+:\d+: malformed YAML"):
        load_scenario(tmp_path / "broken.yaml")


def test_set_overrides():
    out = apply_overrides(SMALL, ["supply.mi300x.price=9.5", "policy.max_vendor_share=0.4",
                                  "tiers.chat.slo.tpot_s=0.1"])
    assert out["supply"][1]["usd_per_chip_hour"] == 9.5
    assert out["policy"]["max_vendor_share"] == 0.4
    assert out["tiers"][0]["slo"]["tpot_s"] == 0.1
    assert SMALL["policy"]["max_vendor_share"] == 0.6  # the input is not modified
    with pytest.raises(TokenfleetError, match="no list item matches 'tpu'"):
        apply_overrides(SMALL, ["supply.tpu.price=1"])
    with pytest.raises(TokenfleetError, match="PATH=VALUE"):
        apply_overrides(SMALL, ["policy.max_vendor_share"])


def test_explain_schema_lists_nested_fields():
    text = explain_schema()
    for field in ("tiers", "traffic", "rate_per_s", "supply", "max_chips", "power_mw",
                  "committed_usd_per_month", "n_minus_1", "min_fraction"):
        assert field in text


def test_cli_plan_writes_plan_json(tmp_path):
    p = _write(tmp_path, SMALL)
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", str(p), "--out", str(out), "--report", "-",
                                 "--no-baselines", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    for key in ("units", "traffic_split", "cost", "vendor_share", "power_mw", "limits",
                "baselines", "constraints"):
        assert key in plan
    u = plan["units"][0]
    for key in ("tier", "accelerator", "vendor", "cloud", "region", "precision", "layout",
                "replicas", "chips", "capacity", "usd_per_hour", "watts"):
        assert key in u


def test_energy_objective_uses_no_more_power_than_cost_objective(tmp_path):
    cost_sc, base = load_scenario(_write(tmp_path, SMALL))
    energy = json.loads(json.dumps(SMALL))
    energy["objective"] = "energy"
    energy_sc, _ = load_scenario(_write(tmp_path, energy, "e.yaml"))
    by_cost = plan_scenario(cost_sc, base, compare_policies=False)
    by_energy = plan_scenario(energy_sc, base, compare_policies=False)
    watts = lambda p: sum(u.watts for u in p.units)  # noqa: E731
    assert watts(by_energy) <= watts(by_cost) * (1 + 1e-6)
    assert by_energy.cost.usd_per_month >= by_cost.cost.usd_per_month * (1 - 0.02)


def test_quality_gate_forbids_a_precision_and_says_why(tmp_path):
    from tokenfleet.quality.assessment import DataInfo, FormatResult, QualityReport

    report = QualityReport(
        model="llama-3.1-8b", kind="causal-lm", data=DataInfo(path="x.txt", texts=10, tokens=900),
        results=[FormatResult(format="fp8-e4m3", activations=True, kl_mean=0.004,
                              ppl_ref=10.0, ppl=10.05, ppl_delta_pct=0.5, top1_agreement=0.97),
                 FormatResult(format="nvfp4", activations=True, kl_mean=0.09,
                              ppl_ref=10.0, ppl=11.2, ppl_delta_pct=12.0, top1_agreement=0.85)])
    (tmp_path / "q.json").write_text(report.to_json())
    data = json.loads(json.dumps(SMALL))
    data["supply"].append({"accelerator": "b200", "cloud": "x", "region": "east",
                           "max_chips": 16, "usd_per_chip_hour": 1.0})
    data["tiers"][0]["precisions"] = ["fp8", "fp4"]
    data["tiers"][0]["precision_rules"] = {
        "fp4": {"report": "q.json", "max_kl": 0.05},
        "fp8": {"report": "q.json", "max_kl": 0.05}}
    path = _write(tmp_path, data)
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(app, ["plan", str(path), "--out", str(out), "--report", "-",
                                 "--no-baselines"])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    assert {u["precision"] for u in plan["units"]} == {"fp8"}
    notes = " ".join(plan["tiers"][0]["precision_notes"])
    assert "fp4: forbidden" in notes and "0.09" in notes and "fp8: allowed" in notes
