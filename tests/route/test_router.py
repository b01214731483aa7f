"""Routing decisions without sockets: tiers, buckets, the plan's split, failover,
saturation — all through the shared policies of ``tokenfleet.routing.policies``."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.route.config import BackendsFile
from tokenfleet.route.router import Choice, Router, Verdict
from tokenfleet.routing.buckets import plan_buckets

from .conftest import BUCKET, OTHER_BUCKET, make_plan, unit


def _backends(**pools: list[str] | dict) -> BackendsFile:
    spec = {}
    for name, v in pools.items():
        spec[name.replace("__", "/")] = v if isinstance(v, dict) else {"backends": v}
    return BackendsFile.model_validate({"pools": spec})


def _router(plan, policy: str | None = None, **pools) -> Router:
    return Router(plan, _backends(**pools), policy=policy, seed=1)


def test_bucket_edges_come_from_the_plan(two_pool_plan):
    b = plan_buckets(two_pool_plan).edges
    assert b is not None
    assert b.input_edges == (0, 512, math.inf)
    assert b.output_edges == (0, 128, math.inf)
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    assert r.bucket_label(100, 50) == BUCKET
    assert r.bucket_label(512, 50) == OTHER_BUCKET  # lower edge inclusive
    assert r.bucket_label(100, 128) == "in0-512_out128-inf"


def test_bad_bucket_label_is_a_clear_error(two_pool_plan):
    plan = two_pool_plan.model_copy(deep=True)
    plan.traffic_split[0].bucket = "small"
    with pytest.raises(TokenfleetError, match="bucket 'small' is not one of the plan's"):
        plan_buckets(plan)


def test_model_name_maps_to_tier_by_tier_name_or_unique_model_id(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    assert r.tier_for("chat").name == "chat"
    assert r.tier_for("CHAT").name == "chat"
    assert r.tier_for("llama-3.1-8b").name == "chat"
    assert r.tier_for("gpt-4") is None


def test_plan_policy_follows_the_split(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    tier = r.tier_for("chat")
    picks = Counter()
    for _ in range(4000):
        c = r.choose(tier, BUCKET, now=0.0)
        assert isinstance(c, Choice)
        picks[c.pool.name] += 1
    assert picks["chat/cheap"] / 4000 == pytest.approx(0.7, abs=0.03)
    # The long-prompt bucket is planned entirely on the dear pool.
    assert all(r.choose(tier, OTHER_BUCKET, 0.0).pool.name == "chat/dear" for _ in range(50))


def test_unplanned_bucket_uses_tier_wide_shares(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    tier = r.tier_for("chat")
    # Tier-wide: (0.7 cheap + 0.3 dear) and (1.0 dear), equal peaks -> cheap 0.35.
    assert tier.shares_for("in0-512_out128-inf") == pytest.approx(
        {"chat/cheap": 0.35, "chat/dear": 0.65})


def test_full_pool_spills_to_other_pool_then_saturates(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap={"backends": ["http://a:1"], "max_in_flight": 2},
                chat__dear={"backends": ["http://b:1"], "max_in_flight": 1})
    tier = r.tier_for("chat")
    cheap, dear = (r.pools[p].backends[0] for p in ("chat/cheap", "chat/dear"))
    cheap.in_flight = 2  # cheap pool full: the plan policy spills to the other one
    c = r.choose(tier, BUCKET, 0.0)
    assert c.pool.name == "chat/dear"
    dear.in_flight = 1
    assert r.choose(tier, BUCKET, 0.0) is Verdict.saturated


def test_no_healthy_backend_is_unavailable(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    for b in r.all_backends():
        b.healthy = False
    assert r.choose(r.tier_for("chat"), BUCKET, 0.0) is Verdict.unavailable


def test_retry_prefers_same_pool_then_cheapest_other_pool():
    plan = make_plan([unit("chat/a", usd_per_hour=5.0), unit("chat/b", usd_per_hour=30.0),
                      unit("chat/c", usd_per_hour=10.0)],
                     {("chat", BUCKET): {"chat/a": 1.0}})
    r = _router(plan, chat__a=["http://a:1", "http://a:2"], chat__b=["http://b:1"],
                chat__c=["http://c:1"])
    tier = r.tier_for("chat")
    first = r.choose(tier, BUCKET, 0.0)
    assert first.pool.name == "chat/a"
    tried = {first.backend}
    second = r.choose(tier, BUCKET, 0.0, tried, after_failure_in=first.pool)
    assert second.pool.name == "chat/a" and second.backend is not first.backend
    tried.add(second.backend)
    third = r.choose(tier, BUCKET, 0.0, tried, after_failure_in=second.pool)
    # Pool a exhausted: the next-cheapest pool with headroom is c ($10/h), not b ($30/h).
    assert third.pool.name == "chat/c" and third.failover


def test_open_circuit_takes_backend_out_until_cooldown(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    cheap = r.pools["chat/cheap"].backends[0]
    for _ in range(3):
        cheap.breaker.on_failure(now=100.0)
    tier = r.tier_for("chat")
    assert all(r.choose(tier, BUCKET, 101.0).pool.name == "chat/dear" for _ in range(20))
    # After the cool-down (5 s default) the cheap backend is eligible again.
    assert any(r.choose(tier, BUCKET, 106.0).pool.name == "chat/cheap" for _ in range(50))


@pytest.mark.parametrize("policy", ["round-robin", "jsq", "least-kv", "cost-spill", "plan"])
def test_every_shared_policy_routes(two_pool_plan, policy):
    r = _router(two_pool_plan, policy, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    c = r.choose(r.tier_for("chat"), BUCKET, 0.0)
    assert isinstance(c, Choice)
    if policy == "cost-spill":
        assert c.pool.name == "chat/cheap"


def test_unknown_policy_is_rejected(two_pool_plan):
    with pytest.raises(TokenfleetError, match="unknown routing policy 'fastest'"):
        _router(two_pool_plan, "fastest", chat__cheap=["http://a:1"], chat__dear=["http://b:1"])


def test_least_loaded_backend_within_pool():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})
    r = _router(plan, chat__a=["http://a:1", "http://a:2"])
    b1, b2 = r.pools["chat/a"].backends
    b1.in_flight = 5
    assert r.choose(r.tier_for("chat"), BUCKET, 0.0).backend is b2


def test_bucket_label_matches_size_buckets_assignment(two_pool_plan):
    r = _router(two_pool_plan, chat__cheap=["http://a:1"], chat__dear=["http://b:1"])
    labels = [b.label for b in r.buckets.buckets]
    for inp in (0, 1, 511, 512, 513, 10_000):
        for out in (0, 1, 127, 128, 129, 5000):
            assert r.bucket_label(inp, out) == labels[int(r.buckets.assign_lengths(inp, out))]
