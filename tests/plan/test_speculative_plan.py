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
    assert {u.speculative for u in p.units} == {"draft:llama-3.2-1b"}
    assert all(u.pool.endswith("/draft-llama-3.2-1b") for u in p.units)
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
