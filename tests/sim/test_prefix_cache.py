"""Prefix caching in the simulator: per-lane LRU block caches on the Mooncake sample."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.run import simulate
from tokenfleet.sim.traffic import label_trace, merge_workloads, planned_traffic
from tokenfleet.workload.prefix import prefix_reuse
from tokenfleet.workload.readers import read_trace
from tokenfleet.workload.samples import sample_path


@pytest.fixture(scope="module")
def setup():
    trace = read_trace(sample_path("mooncake_conversation"))
    plan = quick_plan([TierSpec("t", "llama-3.1-8b", None, None, [(12000, 350, 1.0)])],
                      [QuickPool("t", "h100-sxm", 4, count=1)], load=0.5)
    w = label_trace(plan, trace, tier="t")
    plain = dataclasses.replace(w, prefix_row=None, prefix_offsets=None, prefix_hashes=None)
    return trace, plan, w, plain


def _tokens_out(res) -> int:
    return int(res.record.tiers.output_tokens.sum())


def test_caching_conserves_requests_and_tokens_and_cuts_ttft(setup) -> None:
    trace, plan, w, plain = setup
    on, off = simulate(plan, w), simulate(plan, plain)
    for r in (on, off):
        s = r.summary
        assert s.checks.conservation_ok and s.completed == s.requests == len(trace)
        assert _tokens_out(r) == int(w.output_tokens.sum())
        for p in s.pools.values():
            assert p.requests == p.completed + p.moved_away
    hit = on.summary.tiers["t"].prefix_cache_hit_rate
    assert off.summary.tiers["t"].prefix_cache_hit_rate is None
    # no cache can reuse more than a cache that never evicts and sees every request
    assert 0.0 < hit <= prefix_reuse(trace).unbounded_hit_rate()
    assert on.summary.tiers["t"].ttft_s.mean < off.summary.tiers["t"].ttft_s.mean
    looked = sum(v[1] for v in on.record.prefix_tokens.values())
    served = sum(v[0] for v in on.record.prefix_tokens.values())
    assert looked == int(trace.input_tokens.sum())  # every prompt looked up once
    # prompt tokens: computed + served from cache = offered
    assert int(on.record.tiers.input_tokens.sum()) + served == int(trace.input_tokens.sum())
    assert int(off.record.tiers.input_tokens.sum()) == int(trace.input_tokens.sum())


def test_same_run_twice_gives_the_same_answer(setup) -> None:
    _, plan, w, _ = setup
    a, b = simulate(plan, w).summary, simulate(plan, w).summary
    assert a.tiers["t"].prefix_cache_hit_rate == b.tiers["t"].prefix_cache_hit_rate
    assert a.tiers["t"].ttft_s == b.tiers["t"].ttft_s


def test_one_lane_agrees_with_the_offline_count_at_its_kv_size(setup) -> None:
    """One lane, lightly loaded (the sample's arrivals spread 10x): its cache is about
    the lane's whole KV capacity, so the simulated hit rate is the exact offline LRU
    count at that size. Loaded as recorded, running sequences take most of the KV and
    the cache (the free part) reuses less."""
    trace, _, _, _ = setup
    plan = quick_plan([TierSpec("t", "llama-3.1-8b", None, None, [(12000, 350, 1.0)])],
                      [QuickPool("t", "h200", 1, count=1)], load=0.5)
    light = trace.scale_rate(0.1, mode="compress")
    res = simulate(plan, label_trace(plan, light, tier="t"))
    kv_tokens = next(iter(res.record.pool_info.values())).kv_tokens_per_lane
    offline = prefix_reuse(light).hit_rate(kv_tokens // 512)
    assert res.summary.tiers["t"].prefix_cache_hit_rate == pytest.approx(offline, abs=0.01)
    busy = simulate(plan, label_trace(plan, trace, tier="t")).summary
    assert busy.tiers["t"].prefix_cache_hit_rate < offline


def test_tiers_without_hashes_report_none(setup) -> None:
    trace, _, _, _ = setup
    plan = quick_plan([TierSpec("a", "llama-3.1-8b", None, None, [(12000, 350, 1.0)]),
                       TierSpec("b", "llama-3.1-8b", None, None, [(500, 100, 1.0)])],
                      [QuickPool("a", "h100-sxm", 2, count=1), QuickPool("b", "h100-sxm", 1)],
                      load=0.5)
    wa = label_trace(plan, trace, tier="a")
    gen = planned_traffic(plan, 60, seed=2)
    wb = gen.subset(np.asarray([k.tier == "b" for k in gen.keys])[gen.key])
    w = merge_workloads([wa, wb], "mixed")
    s = simulate(plan, w).summary
    assert s.checks.conservation_ok
    assert s.tiers["a"].prefix_cache_hit_rate > 0 and s.tiers["b"].prefix_cache_hit_rate is None


def test_failures_and_split_with_caching(setup) -> None:
    """A vendor outage moves cached requests (their whole prompt comes back, looked up
    again where they land); parts simulated apart merge to the one-process answer."""
    from dataclasses import replace

    from tokenfleet.sim.engine import SimOptions
    from tokenfleet.sim.results import merge_records, summarize
    from tokenfleet.sim.run import independent_parts, run_part
    from tokenfleet.sim.shocks import parse_failure

    trace, _, _, _ = setup
    plan = quick_plan([TierSpec("a", "llama-3.1-8b", None, None, [(12000, 350, 1.0)]),
                       TierSpec("b", "llama-3.1-8b", None, None, [(500, 100, 1.0)])],
                      [QuickPool("a", "h100-sxm", 2, count=1), QuickPool("a", "mi300x", 2),
                       QuickPool("b", "h100-sxm", 1)], load=0.5)
    gen = planned_traffic(plan, 60, seed=2)
    w = merge_workloads([label_trace(plan, trace, tier="a"),
                         gen.subset(np.asarray([k.tier == "b" for k in gen.keys])[gen.key])],
                        "mixed")
    fails = [parse_failure("vendor=AMD@t=40..90")]
    one = simulate(plan, w, failures=fails)
    s = one.summary
    assert s.checks.conservation_ok and s.retried > 0 and s.completed + s.rejected == s.requests
    served = sum(v[0] for v in one.record.prefix_tokens.values())
    done_a = s.tiers["a"].completed == s.tiers["a"].requests
    if done_a:  # computed + cached = offered, also across moves
        row = one.record.tiers.row("a")
        assert int(one.record.tiers.input_tokens[row]) + served >= int(trace.input_tokens.sum())
    opt = replace(SimOptions(), sample_s=one.record.sample_s, max_time_s=w.duration_s + 7 * 86400)
    recs = [run_part(plan.model_dump_json(), ids, w.subset(mask), opt, fails, [], None)
            for ids, mask in independent_parts(plan, w)]
    merged = summarize(merge_records(recs))
    assert merged.tiers["a"].prefix_cache_hit_rate == s.tiers["a"].prefix_cache_hit_rate
    assert {k: p.prefix_cache_hit_rate for k, p in merged.pools.items()} == {
        k: p.prefix_cache_hit_rate for k, p in s.pools.items()}


def test_growth_adds_users_not_repeats(setup) -> None:
    from tokenfleet.sim.prefix_cache import offline_reuse
    from tokenfleet.sim.traffic import scale_traffic

    trace, _, w, plain = setup
    base = offline_reuse(w)
    grown = offline_reuse(scale_traffic(w, 3.0, seed=1))
    assert base is not None and grown is not None and offline_reuse(plain) is None
    assert base.unbounded_hit_rate() == pytest.approx(prefix_reuse(trace).unbounded_hit_rate())
    assert grown.requests == 3 * len(trace)
    assert grown.unbounded_hit_rate() == pytest.approx(base.unbounded_hit_rate(), abs=1e-12)


@pytest.fixture(scope="module")
def lanes8():
    """Eight lanes in two pools of different chips, the sample's arrivals spread 5x (so
    running sequences leave most of each lane's KV to the cache)."""
    trace = read_trace(sample_path("mooncake_conversation")).scale_rate(0.2, mode="compress")
    plan = quick_plan([TierSpec("t", "llama-3.1-8b", None, None, [(12000, 350, 1.0)])],
                      [QuickPool("t", "h100-sxm", 4, count=1),
                       QuickPool("t", "mi300x", 4, count=1)], load=0.5)
    return trace, plan, label_trace(plan, trace, tier="t")


def test_cache_affinity_beats_round_robin_and_reaches_the_offline_count(lanes8) -> None:
    """Round-robin scatters a conversation's turns over the lanes; cache affinity sends
    them to the lane that holds their prefix, so the lanes' caches together reuse about
    what one cache of all their KV would (the exact offline count at that size)."""
    from tokenfleet.sim.engine import SimOptions

    trace, plan, w = lanes8
    rr = simulate(plan, w, options=SimOptions(policy="round-robin", cache_affinity=False))
    plain = simulate(plan, w, options=SimOptions(cache_affinity=False))
    aff = simulate(plan, w)
    for r in (rr, plain, aff):
        s = r.summary
        assert s.checks.conservation_ok and s.completed == s.requests == len(trace)
        assert _tokens_out(r) == int(w.output_tokens.sum())
    hit = {k: r.summary.tiers["t"].prefix_cache_hit_rate for k, r in
           (("rr", rr), ("plain", plain), ("aff", aff))}
    assert hit["aff"] > 1.5 * hit["rr"] and hit["aff"] > 1.5 * hit["plain"], hit
    total_kv = sum(p.unit.replicas * p.lanes_per_replica * p.kv_tokens_per_lane
                   for p in aff.record.pool_info.values())
    offline = prefix_reuse(trace).hit_rate(total_kv // 512)
    assert hit["aff"] <= offline + 1e-9
    assert hit["aff"] == pytest.approx(offline, abs=0.05), (hit, offline)
    # both pools took a share: affinity does not pile everything onto one
    assert all(p.completed > 0.2 * len(trace) for p in aff.summary.pools.values())


def test_affinity_routing_is_deterministic(lanes8) -> None:
    _, plan, w = lanes8
    a, b = simulate(plan, w), simulate(plan, w)
    assert a.record.prefix_tokens == b.record.prefix_tokens
    assert {k: p.completed for k, p in a.summary.pools.items()} == {
        k: p.completed for k, p in b.summary.pools.items()}
    assert a.summary.tiers["t"].ttft_s == b.summary.tiers["t"].ttft_s


def test_place_takes_preferred_lanes_and_keeps_least_loaded_order() -> None:
    """``kernels.place`` with a preferred lane queues there; the other requests still
    go to their pool's least loaded lane, counting the preferred ones."""
    from tokenfleet.sim import kernels

    first, lanes = np.array([0, 3]), np.array([3, 2])
    o = np.array([0.0, 1.0, 2.0, 0.0, 0.0])
    picks = np.array([0, 0, 0, 0, 1])
    prefer = np.array([0, 0, -1, -1, 4])
    m = picks.size
    cols = {f: np.zeros(m, kernels.SLOT_DTYPES[f]) for f in kernels.Slots._fields}
    cols["need"] = np.full(m, 100)
    sl = kernels.Slots(**cols)
    q_head, q_tail = np.full(5, -1), np.full(5, -1)
    n_wait, wait_head, routed = np.zeros(5, np.int64), np.full(5, np.inf), np.zeros(2, np.int64)
    coef = np.ones(2)
    got = kernels.place(np.arange(m), picks, prefer, o, first, lanes, routed, sl, q_head,
                        q_tail, n_wait, wait_head, coef, coef, np.zeros(2),
                        np.zeros(2, np.int64))
    # lane 0 (outstanding 0) preferred twice -> 2; the plain picks: lane 1 (1), then the
    # three tie at 2 and the lowest index wins (the heap was restored under lane 0)
    assert got.tolist() == [0, 0, 1, 0, 4]
    assert o.tolist() == [3.0, 2.0, 2.0, 0.0, 1.0]
    assert routed.tolist() == [4, 1]
