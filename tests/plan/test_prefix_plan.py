"""The planner prices prefix caching at the hit rate the trace shows at the KV it buys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.plan.planner import plan_scenario
from tokenfleet.plan.scenario import Scenario
from tokenfleet.workload.prefix import prefix_reuse
from tokenfleet.workload.readers import read_trace
from tokenfleet.workload.samples import sample_path


def _scenario(scale: float) -> Scenario:
    return Scenario.model_validate({
        "name": "prefix",
        "headroom": 0.0,
        "tiers": [
            {"name": "chat", "model": "llama-3.1-8b",
             "traffic": {"trace": str(sample_path("mooncake_conversation")), "scale": scale},
             "slo": {"ttft_s": 20.0, "tpot_s": 0.1}},
            {"name": "plain", "model": "llama-3.1-8b",
             "traffic": {"rate_per_s": 2, "mix": [{"input_len": 500, "output_len": 100,
                                                   "share": 1}]},
             "slo": {"tpot_s": 0.1}}],
        "supply": [{"accelerator": "h100-sxm", "cloud": "runpod", "region": "r",
                    "max_chips": 512, "counts": [1]}],
    })


@pytest.fixture(scope="module")
def plan():
    return plan_scenario(_scenario(20.0), Path("."), compare_policies=False)


def test_hit_rate_is_the_exact_count_at_the_kv_the_plan_buys(plan) -> None:
    from tokenfleet.sim.fleet import build_fleet

    chat = next(t for t in plan.tiers if t.name == "chat")
    pc = chat.prefix_cache
    assert pc is not None
    assert next(t for t in plan.tiers if t.name == "plain").prefix_cache is None  # no hashes
    # the KV the plan buys is what the simulator's lanes hold, in whole 512-token blocks
    lanes_kv = sum(p.kv_tokens * p.lanes for p in build_fleet(plan).pools
                   if p.unit.tier == "chat")
    assert pc.cache_tokens == lanes_kv // 512 * 512
    reuse = prefix_reuse(read_trace(sample_path("mooncake_conversation")).scale_rate(20.0))
    assert pc.hit_rate_at_plan_kv == pytest.approx(reuse.hit_rate(pc.cache_tokens // 512))
    assert pc.unbounded_hit_rate == pytest.approx(reuse.unbounded_hit_rate())
    assert 0.05 < pc.hit_rate <= pc.unbounded_hit_rate
    # one fixed-point step apart: the rate priced in is that of a similar fleet
    assert pc.hit_rate == pytest.approx(pc.hit_rate_at_plan_kv, abs=0.05)


def test_caching_makes_the_tier_cheaper_and_says_by_how_much(plan) -> None:
    pc = next(t for t in plan.tiers if t.name == "chat").prefix_cache
    assert pc is not None
    spend = sum(u.usd_per_hour for u in plan.units if u.tier == "chat") * 730
    assert pc.usd_per_month == pytest.approx(spend)
    assert pc.usd_per_month < pc.plain_usd_per_month
    assert pc.saving_usd_per_month == pytest.approx(pc.plain_usd_per_month - pc.usd_per_month)
    assert pc.bill_saving_usd_per_month == pytest.approx(pc.saving_usd_per_month, rel=1e-6)


def test_the_cache_is_the_lookup_kv_of_the_fleet_as_written() -> None:
    """plan.json's cache is the KV where prompts are looked up, counted at the units the
    plan ends with: a pair's decode half (handed each prompt's KV) adds none, and more
    replicas of a looking-up pool add theirs (plan/prefix.py, at_fleet)."""
    import dataclasses

    from tokenfleet.catalog import load_catalog
    from tokenfleet.plan.planner import prepare
    from tokenfleet.plan.prefix import at_fleet, candidate_kv_tokens

    catalog = load_catalog()
    cs = prepare(_scenario(20.0), Path("."), catalog)
    pc = cs.prefix_cache["chat"]
    reuse, cal = cs.prefix_reuse["chat"]
    c = next(c for c in cs.candidates if c.tier == "chat")
    kv = candidate_kv_tokens(c, catalog, cal)
    assert kv > 0
    dec = dataclasses.replace(c, id=c.id + "/decode", role="decode", pair="chat/pd")
    assert candidate_kv_tokens(dec, catalog, cal) == 0
    got = at_fleet(cs, [(c, 3), (dec, 5)], catalog)["chat"]
    assert got.cache_tokens == 3 * kv // 512 * 512
    assert got.hit_rate_at_plan_kv == pytest.approx(reuse.hit_rate(3 * kv // 512))
    assert got.hit_rate == pc.hit_rate  # the rate priced in stays the fixed point's
    more = at_fleet(cs, [(c, 30), (dec, 5)], catalog)["chat"]
    assert more.cache_tokens == 30 * kv // 512 * 512
    assert more.hit_rate_at_plan_kv >= got.hit_rate_at_plan_kv
    assert at_fleet(cs, [(c, 3)], catalog)["chat"] == got
