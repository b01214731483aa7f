"""Speculative decoding in the planner: priced as an option beside plain decoding per
pool, chosen where the TPOT SLO holds the batch back (and said why), left out where
it is loose, and bad settings refused naming the tier's field."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.check import check_plan
from tokenfleet.plan.planner import plan_scenario
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan

H200 = {"accelerator": "h200", "cloud": "aws", "region": "us-east", "max_chips": 512}


def _scenario(model: str, tpot_s: float, speculative: list[str]) -> Scenario:
    return Scenario.model_validate({
        "name": "spec", "headroom": 0.0, "mip_gap": 1e-4, "disaggregation": "off",
        "tiers": [{"name": "t", "model": model, "precisions": ["fp8"],
                   "speculative": speculative,
                   "traffic": {"rate_per_s": 20,
                               "mix": [{"input_len": 2000, "output_len": 500, "share": 1}]},
                   "slo": {"ttft_s": 5.0, "tpot_s": tpot_s, "ttft_percentile": 99,
                           "tpot_percentile": 90}}],
        "supply": [H200]})


@cache
def _plan(model: str, tpot_s: float, spec: tuple[str, ...]) -> Plan:
    return plan_scenario(_scenario(model, tpot_s, list(spec)), Path("."),
                         compare_policies=False)


def test_tight_tpot_chooses_mtp_and_says_what_it_saves() -> None:
    p = _plan("deepseek-r1", 0.03, ("mtp",))
    assert {u.speculative for u in p.units} == {"mtp"}
    plain = _plan("deepseek-r1", 0.03, ())
    assert all(u.speculative is None for u in plain.units)
    assert p.cost.usd_per_month < plain.cost.usd_per_month
    why = p.tiers[0].speculative
    assert why is not None and "mtp" in why and "saves" in why
    base = next(b for b in p.baselines if b.name == "plain decoding only")
    assert base.feasible and base.drops == []
    assert base.usd_per_month == pytest.approx(plain.cost.usd_per_month, rel=1e-6)
    assert not check_plan(p, _scenario("deepseek-r1", 0.03, ["mtp"]))
    # the unit's capacity was priced with it: fewer chips than plain for the same traffic
    assert sum(u.chips for u in p.units) < sum(u.chips for u in plain.units)


def test_a_draft_model_is_chosen_for_a_tight_llama_tpot() -> None:
    p = _plan("llama-3.3-70b", 0.015, ("draft:llama-3.2-1b",))
    spec = [u for u in p.units if u.speculative == "draft:llama-3.2-1b"]
    assert all(u.pool.endswith("/draft-llama-3.2-1b") for u in spec)
    # most of the tier's chips speculate (a plain pool may round the fleet off)
    assert sum(u.chips for u in spec) > 0.5 * sum(u.chips for u in p.units)
    assert p.tiers[0].speculative is not None


def test_loose_tpot_keeps_plain_decoding() -> None:
    p = _plan("deepseek-r1", 0.1, ("mtp",))
    assert all(u.speculative is None for u in p.units)
    assert p.tiers[0].speculative is None
    assert not any(b.name == "plain decoding only" for b in p.baselines)


def test_bad_speculative_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"speculative\[0\]"):
        _scenario("deepseek-r1", 0.03, ["medusa:3"])
    with pytest.raises(TokenfleetError, match=r"tier 't': speculative\[0\].*no-such-model"):
        plan_scenario(_scenario("llama-3.3-70b", 0.03, ["draft:no-such-model"]), Path("."),
                      compare_policies=False)
    with pytest.raises(TokenfleetError, match=r"speculative\[0\] = 'mtp'.*multi-token"):
        plan_scenario(_scenario("llama-3.3-70b", 0.03, ["mtp"]), Path("."),
                      compare_policies=False)
    with pytest.raises(TokenfleetError, match="vocabulary"):
        plan_scenario(_scenario("deepseek-r1", 0.03, ["draft:llama-3.2-1b"]), Path("."),
                      compare_policies=False)


def _r1_long(tpot_s: float, speculative: list[str]) -> Scenario:
    """DeepSeek-R1 agent traffic (12k-token prompts): served by prefill/decode pairs."""
    return Scenario.model_validate({
        "name": "pd-spec", "headroom": 0.0, "mip_gap": 1e-4,
        "tiers": [{"name": "t", "model": "deepseek-r1", "precisions": ["fp8"],
                   "speculative": speculative,
                   "traffic": {"rate_per_s": 30,
                               "mix": [{"input_len": 12000, "output_len": 400, "share": 1}]},
                   "slo": {"ttft_s": 20.0, "tpot_s": tpot_s, "ttft_percentile": 99,
                           "tpot_percentile": 90}}],
        "supply": [H200]})


def test_a_decode_half_may_speculate_and_its_saving_is_the_plain_plans_difference() -> None:
    sc = _r1_long(0.05, ["mtp"])
    p = plan_scenario(sc, Path("."), compare_policies=False)
    plain = plan_scenario(_r1_long(0.05, []), Path("."), compare_policies=False)
    decode = [u for u in p.units if u.role == "decode"]
    assert decode and all(u.speculative == "mtp" for u in decode)
    assert all(u.speculative is None for u in p.units if u.role == "prefill")
    assert not check_plan(p, sc)
    base = next(b for b in p.baselines if b.name == "plain decoding only")
    assert base.usd_per_month == pytest.approx(plain.cost.usd_per_month, rel=1e-6)
    saving = plain.cost.usd_per_month - p.cost.usd_per_month
    assert saving > 0 and f"saves {saving:,.0f} USD/month" in (p.tiers[0].speculative or "")


def test_a_tie_goes_to_plain_decoding() -> None:
    # at a loose TPOT bound the speculative pair costs what the plain one does
    p = plan_scenario(_r1_long(0.1, ["mtp"]), Path("."), compare_policies=False)
    plain = plan_scenario(_r1_long(0.1, []), Path("."), compare_policies=False)
    assert p.cost.usd_per_month == pytest.approx(plain.cost.usd_per_month, rel=1e-9)
    assert all(u.speculative is None for u in p.units)
