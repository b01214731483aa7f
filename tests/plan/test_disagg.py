"""Disaggregated prefill/decode pairs in the planner: chosen where they are cheaper (long
DeepSeek-R1 prompts), not where prefill is light, mixed-vendor pairs costed on the
scale-out link, and the plan's checks (load, N-1) aware of pairs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.disagg import link_between, prompt_kv_bytes, transfer_s
from tokenfleet.perf.precision import get_precision
from tokenfleet.plan import candidates
from tokenfleet.plan.candidates import CandidateSet
from tokenfleet.plan.check import check_plan, max_served_fraction, pool_load
from tokenfleet.plan.milp import complete_pairs, solve_fleet
from tokenfleet.plan.planner import chosen_units, plan_scenario, prepare
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan

CAT = load_catalog()
H200 = {"accelerator": "h200", "cloud": "aws", "region": "us-east", "max_chips": 512}
MI355X = {"accelerator": "mi355x", "cloud": "tensorwave", "region": "us-east", "max_chips": 512}


def _scenario(model: str, rate: float, inp: int, out: int, ttft: float, tpot: float,
              supply: list[dict], **kw) -> Scenario:
    return Scenario.model_validate({
        "name": "pd", "headroom": 0.0, "mip_gap": 1e-4, **kw,
        "tiers": [{"name": "t", "model": model, "precisions": ["fp8"],
                   "traffic": {"rate_per_s": rate,
                               "mix": [{"input_len": inp, "output_len": out, "share": 1}]},
                   "slo": {"ttft_s": ttft, "tpot_s": tpot, "ttft_percentile": 99,
                           "tpot_percentile": 90}}],
        "supply": supply})


def r1_long(**kw) -> Scenario:
    """DeepSeek-R1 agent traffic: 12k-token prompts, 400 out, on H200."""
    return _scenario("deepseek-r1", 30, 12000, 400, 20.0, 0.1, [H200], **kw)


@cache
def _plan(which: str) -> Plan:
    sc = {"r1": r1_long(), "r1-off": r1_long(disaggregation="off"),
          "short": _scenario("llama-3.1-8b", 50, 100, 1000, 1.0, 0.03, [H200, MI355X])}[which]
    return plan_scenario(sc, Path("."), compare_policies=False)


def test_long_r1_prompts_go_disaggregated_and_say_why() -> None:
    p = _plan("r1")
    roles = {u.role for u in p.units}
    assert {"prefill", "decode"} <= roles
    pre = [u for u in p.units if u.role == "prefill"]
    dec = [u for u in p.units if u.role == "decode"]
    assert {u.pair for u in pre} == {u.pair for u in dec}
    # decode halves are routed to; prefill halves carry the same requests
    routed = {pool for s in p.traffic_split for pool in s.shares}
    assert routed.isdisjoint({u.pool for u in pre})
    assert all(u.kv_link and "scale-out" in u.kv_link for u in pre)
    # cheaper than the same scenario without pairs, and the tier says by how much
    off = _plan("r1-off")
    assert all(u.role == "both" for u in off.units)
    assert p.cost.usd_per_month < off.cost.usd_per_month
    why = p.tiers[0].disaggregation
    assert why is not None and "saves" in why and "prompt chunks" in why
    agg = next(b for b in p.baselines if b.name == "aggregated serving only")
    assert agg.usd_per_month == pytest.approx(off.cost.usd_per_month, rel=1e-6)
    assert not check_plan(p, r1_long())


def test_prefill_halves_are_loaded_by_their_decode_halves_traffic() -> None:
    p = _plan("r1")
    loads = pool_load(p)
    for u in p.units:
        if u.role == "prefill":
            assert loads[u.pool] is not None and 0.5 < loads[u.pool] <= 1.0 + 1e-3
    # losing a prefill half loses its pair: what is left is what losing both halves
    # leaves (the tier's aggregated units, if the plan bought any)
    pre = next(u for u in p.units if u.role == "prefill")
    dec = next(u for u in p.units if u.role == "decode" and u.pair == pre.pair)
    without_pair = max_served_fraction(p, {pre.pool, dec.pool})
    assert max_served_fraction(p, {pre.pool}) == pytest.approx(without_pair, abs=1e-9)
    assert without_pair < 0.5
    assert max_served_fraction(p, set()) >= 1.0 - 1e-6


def test_short_prompts_stay_aggregated() -> None:
    """Prefill is light (100 in / 1000 out): an aggregated unit's TPOT hardly carries
    prompt chunks, so a separate prefill pool is pure cost."""
    p = _plan("short")
    assert all(u.role == "both" for u in p.units)
    assert p.tiers[0].disaggregation is None


@cache
def _mixed_candidates() -> tuple[Scenario, CandidateSet]:
    """Every pair of the cheapest halves, unscreened: here no mixed pair is cheaper than
    the best same-vendor option, so the screen would leave none (that is its job)."""
    sc = _scenario("deepseek-r1", 30, 12000, 400, 20.0, 0.1, [H200, MI355X])
    candidates.PAIR_SCREEN = False
    try:
        return sc, prepare(sc, Path("."), CAT)
    finally:
        candidates.PAIR_SCREEN = True


def test_the_screen_keeps_pairs_that_can_pay_only() -> None:
    sc = _scenario("deepseek-r1", 30, 12000, 400, 20.0, 0.1, [H200, MI355X])
    screened = prepare(sc, Path("."), CAT)
    _, every = _mixed_candidates()
    assert set(screened.pairs) < set(every.pairs)
    by_id = {c.id: c for c in screened.candidates}
    agg = [c for c in screened.candidates if c.pair is None]
    for p_id, d_id in screened.pairs.values():
        p, d = by_id[p_id], by_id[d_id]
        assert any(p.usd_per_hour / p.capacity[b] + d.usd_per_hour / d.capacity[b]
                   < min(c.usd_per_hour / c.capacity[b] for c in agg if b in c.capacity)
                   for b in p.capacity)


def test_mixed_vendor_pair_is_a_candidate_costed_on_the_scale_out_link() -> None:
    _, cs = _mixed_candidates()
    by_id = {c.id: c for c in cs.candidates}
    mixed = [(by_id[p], by_id[d]) for p, d in cs.pairs.values()
             if by_id[p].vendor != by_id[d].vendor]
    assert mixed, "no mixed-vendor pair among the candidates"
    pre, dec = mixed[0]
    assert pre.role == "prefill" and dec.role == "decode" and pre.pair == dec.pair
    assert "scale-out" in pre.link_basis
    link = link_between(pre.accelerator, dec.accelerator)
    assert link.gb_per_s_per_chip == min(pre.accelerator.scaleout_gbps,
                                         dec.accelerator.scaleout_gbps) / 2
    e = next(iter(pre.estimates.values()))
    assert e.layout is not None
    kv = prompt_kv_bytes(CAT.model("deepseek-r1"), 12000,
                         e.kv_precision or get_precision("fp8").default_kv)
    assert e.kv_transfer_s == pytest.approx(
        transfer_s(kv, link, e.layout.tp * e.layout.pp), rel=1e-6)
    assert e.ttft_s is not None and e.ttft_s > e.kv_transfer_s


def test_mixed_vendor_pair_alone_makes_a_valid_plan() -> None:
    """Only a mixed pair offered: the MILP sizes both halves, each on its own vendor's
    supply."""
    sc, cs = _mixed_candidates()
    by_id = {c.id: c for c in cs.candidates}
    p_id, d_id = next((p, d) for p, d in cs.pairs.values()
                      if by_id[p].vendor != by_id[d].vendor)
    f, sol = solve_fleet(sc, cs, candidates=[by_id[p_id], by_id[d_id]])
    assert sol.ok
    reps = dict((c.id, n) for c, n in chosen_units(f, sol))
    assert reps[p_id] >= 1 and reps[d_id] >= 1
    assert complete_pairs([by_id[p_id]]) == []  # half a pair is no option
