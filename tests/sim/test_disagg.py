"""Disaggregated prefill/decode pairs in the simulator (sim/disagg.py): every request
and token counted once, TTFT carries the prefill run and the KV handover, decode pools
do no prompt compute, failures re-route around a dead pair, and replays repeat."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfleet.catalog import load_catalog
from tokenfleet.plan.schema import Plan
from tokenfleet.sim.disagg import AGGREGATED, assign_paths, handover_s, pairs_of, run_plan
from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.fleet import build_fleet
from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.results import summarize
from tokenfleet.sim.run import simulate
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.traffic import planned_traffic

from .conftest import fixed_workload

CAT = load_catalog()


def _pair_plan(agg_share: float = 0.5) -> Plan:
    """llama-3.1-8b: two aggregated H100 replicas, and a pair (prefill on one MI300X,
    AMD; decode on one H100, NVIDIA) taking ``1 - agg_share`` of the traffic."""
    p = quick_plan([TierSpec("t", "llama-3.1-8b", 2.0, 0.05, [(2000, 200, 1.0)])],
                   [QuickPool("t", "h100-sxm", 2, count=1),
                    QuickPool("t", "mi300x", 1, count=1, cloud="tensorwave"),
                    QuickPool("t", "h100-sxm", 1, count=1, region="region-2")],
                   load=0.5)
    agg, pre, dec = p.units
    pre = pre.model_copy(update={"role": "prefill", "pair": "t/pd", "pool": "t/pd/prefill"})
    dec = dec.model_copy(update={"role": "decode", "pair": "t/pd", "pool": "t/pd/decode"})
    splits = [s.model_copy(update={"shares": {agg.pool: agg_share, dec.pool: 1 - agg_share}})
              for s in p.traffic_split]
    return p.model_copy(update={"units": [agg, pre, dec], "traffic_split": splits})


def _conserved(s, n: int, out_tokens: int, in_tokens: int) -> None:
    assert s.requests == n
    assert s.completed + s.rejected == s.requests
    assert sum(t.requests for t in s.tiers.values()) == n
    assert sum(t.completed + t.rejected for t in s.tiers.values()) == n
    if s.rejected == 0:
        t = s.tiers["t"]
        assert t.output_tokens_per_s * s.sim_duration_s == pytest.approx(out_tokens, rel=1e-6)
    del in_tokens
    assert s.checks.conservation_ok


def test_requests_and_tokens_are_conserved_with_a_pair() -> None:
    plan = _pair_plan()
    w = planned_traffic(plan, 60, seed=3)
    res = simulate(plan, w)
    s = res.summary
    _conserved(s, len(w), int(w.output_tokens.sum()), int(w.input_tokens.sum()))
    pools = s.pools
    pre, dec = pools["t/pd/prefill"], pools["t/pd/decode"]
    # every request the pair took was prefilled once and decoded once
    assert pre.completed == dec.completed > 0
    assert pre.completed + pools[plan.units[0].pool].completed == s.completed
    # the record's own token counts: the decode pool made every pair request's tokens
    r = res.record
    i = r.tiers.row("t")
    assert int(r.tiers.output_tokens[i]) == int(w.output_tokens.sum())
    assert int(r.tiers.input_tokens[i]) == int(w.input_tokens.sum())
    assert int(r.tiers.arrived[i]) == len(w)


def test_ttft_includes_prefill_and_handover_and_decode_does_no_prompt_work() -> None:
    plan = _pair_plan(agg_share=0.0)
    arrivals = np.arange(40) * 0.5  # light load: no queueing anywhere
    w = fixed_workload(plan, arrivals, 2000, 100)
    rec = run_plan(plan, w, SimOptions())
    s = summarize(rec)
    pre, dec = pairs_of(plan)["t/pd"]
    move = float(handover_s(pre, dec, np.array([2000]), CAT)[0])
    assert move > 0
    # end to end TTFT >= the prefill run's TTFT plus the handover
    assert s.tiers["t"].ttft_s.p50 >= s.pools[pre.pool].ttft_s.p50 + move - 1e-9
    # the decode pool joins a request within one decode step: no 2000-token prefill
    assert s.pools[dec.pool].ttft_s.p99 < 0.5 * s.pools[pre.pool].ttft_s.p50
    # its busy time is decode steps only: less than the same replica serving the same
    # requests aggregated (prefilling them too)
    alone = plan.model_copy(update={
        "units": [dec.model_copy(update={"role": "both", "pair": None})],
        "traffic_split": [x.model_copy(update={"shares": {dec.pool: 1.0}})
                          for x in plan.traffic_split]})
    both = run_plan(alone, w, SimOptions())
    assert rec.busy_s[dec.pool] < 0.95 * both.busy_s[dec.pool]


def test_the_decode_pool_holds_each_prompts_kv() -> None:
    """Admission to a decode half takes the prompt's whole KV (it arrives computed):
    occupancy is what its sequences hold, never negative, never above the capacity,
    and it holds whole prompts."""
    plan = _pair_plan(agg_share=0.0)
    arrivals = np.arange(200) * 0.05  # 200 prompts of 6,000 tokens in 10 s
    w = fixed_workload(plan, arrivals, 6000, 400)
    rec = run_plan(plan, w, SimOptions())
    s = summarize(rec)
    _, dec = pairs_of(plan)["t/pd"]
    d = s.pools[dec.pool]
    assert d.completed == len(w)
    assert d.kv_occupancy_mean is not None and d.kv_occupancy_max is not None
    assert 0.0 < d.kv_occupancy_mean <= d.kv_occupancy_max <= 1.0 + 1e-9
    # at its fullest it holds whole prompts: more than its decodes' growth alone could
    assert d.kv_occupancy_max * dec_kv_tokens(plan, dec.pool) > 6000


def dec_kv_tokens(plan: Plan, pool: str) -> float:
    """KV tokens the pool holds at most (all its lanes)."""
    p = build_fleet(plan).pool(pool)
    return float(p.kv_tokens * p.lanes)


def test_same_replay_twice_gives_the_same_answer() -> None:
    plan = _pair_plan()
    w = planned_traffic(plan, 30, seed=5)
    a = summarize(run_plan(plan, w, SimOptions(seed=2)))
    b = summarize(run_plan(plan, w, SimOptions(seed=2)))
    assert a.model_dump(exclude={"wall_s", "simulated_requests_per_s"}) == \
        b.model_dump(exclude={"wall_s", "simulated_requests_per_s"})


def _same(a: object, b: object) -> None:
    """Equal, floats to rounding (a merge adds the parts' sums in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15, nan_ok=True)
    else:
        assert a == b


@pytest.mark.parametrize("pairs", [True, False])
def test_parts_in_worker_processes_give_the_one_process_answer(pairs: bool) -> None:
    two = quick_plan([TierSpec("a", "llama-3.1-8b", 2.0, 0.05, [(2000, 200, 1.0)]),
                      TierSpec("b", "llama-3.1-8b", 1.0, 0.05, [(500, 100, 1.0)])],
                     [QuickPool("a", "h100-sxm", 2, count=1),
                      QuickPool("b", "mi300x", 1, count=1, cloud="tensorwave")], load=0.6)
    plan = _pair_plan() if pairs else two
    w = planned_traffic(plan, 40, seed=7)
    opt = SimOptions(seed=1)
    fail = [parse_failure("vendor=AMD@t=10..20")]
    skip = {"wall_s", "simulated_requests_per_s"}
    one = summarize(run_plan(plan, w, opt, fail)).model_dump(mode="json", exclude=skip)
    many = summarize(run_plan(plan, w, opt, fail, workers=2)).model_dump(mode="json",
                                                                      exclude=skip)
    _same(one, many)


def test_a_dead_pair_sends_its_requests_to_the_aggregated_pools() -> None:
    plan = _pair_plan()
    w = planned_traffic(plan, 60, seed=4)
    amd_down = parse_failure("vendor=AMD@t=10..40")  # the prefill half
    paths = assign_paths(plan, w, 0, [amd_down])
    during = (w.arrival_s >= 10) & (w.arrival_s < 40)
    assert (paths[during] == "aggregated").all()
    assert (paths[~during] == "t/pd").any()
    s = simulate(plan, w, failures=[amd_down]).summary
    _conserved(s, len(w), int(w.output_tokens.sum()), int(w.input_tokens.sum()))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(share=st.floats(0.0, 1.0), load=st.floats(0.2, 3.0), seed=st.integers(0, 50),
       down=st.sampled_from(["", "vendor=AMD@t=5..20", "vendor=NVIDIA@t=10..25"]))
def test_conservation_holds_for_any_split_load_and_outage(share: float, load: float,
                                                          seed: int, down: str) -> None:
    """Any share of the tier on the pair, any load (overload included), any outage of
    either half's vendor: each request ends once, completed or rejected."""
    plan = _pair_plan(agg_share=share)
    peak = sum(x.peak_requests_per_s for x in plan.traffic_split)
    w = planned_traffic(plan, 30, rate_per_s=load * peak, seed=seed)
    res = simulate(plan, w, failures=[parse_failure(down)] if down else None,
                   options=SimOptions(seed=seed, max_time_s=600.0))
    s = res.summary
    assert s.requests == len(w)
    assert s.completed + s.rejected == s.requests
    assert sum(t.completed + t.rejected for t in s.tiers.values()) == len(w)
    assert s.checks.conservation_ok


@pytest.fixture(scope="module")
def mooncake_pair():
    from tokenfleet.sim.traffic import label_trace
    from tokenfleet.workload.readers import read_trace
    from tokenfleet.workload.samples import sample_path

    trace = read_trace(sample_path("mooncake_conversation"))
    plan = _pair_plan()
    return trace, plan, label_trace(plan, trace, tier="t")


def test_paths_follow_the_cache_not_the_shared_first_block(mooncake_pair) -> None:
    """Every Mooncake prompt opens with the same block (a system prompt): the split
    between aggregated pools and pairs must not key on it (that sent the whole trace
    down one path), while a conversation's turns (they share block 1 onwards) stay on
    the path that holds their prefix (sim/disagg.py, _follow_caches)."""
    trace, plan, w = mooncake_pair
    assert np.unique(trace.prefix_hashes[trace.prefix_offsets[:-1]]).size == 1
    paths = assign_paths(plan, w, 0).astype(str)
    assert np.array_equal(paths, assign_paths(plan, w, 0).astype(str))  # deterministic
    share = float(np.mean(paths == AGGREGATED))
    assert 0.25 < share < 0.75, share  # the plan's 50/50, not one path
    off = trace.prefix_offsets
    conv = np.where(np.diff(off) > 1, trace.prefix_hashes[np.minimum(off[:-1] + 1,
                                                                      off[-1] - 1)], -1)
    first: dict[int, str] = {}
    same = later = 0
    for i in np.argsort(w.arrival_s, kind="stable"):
        c = int(conv[w.prefix_row[i]])
        if c < 0:
            continue
        if c in first:
            later += 1
            same += first[c] == paths[i]
        else:
            first[c] = paths[i]
    assert later > 50 and same / later > 0.95, (same, later)


def test_following_caches_between_paths_reaches_the_offline_count(mooncake_pair,
                                                                  monkeypatch) -> None:
    """With a pair and aggregated pools, the simulated hit rate comes within 5 points of
    the exact offline count with one cache of the KV where prompts are looked up (the
    aggregated lanes and the prefill half's: the planner's figure, plan/prefix.py), and
    above what drawing each request's path by its bucket alone gives."""
    import tokenfleet.sim.disagg as disagg
    from tokenfleet.workload.prefix import prefix_reuse

    trace, plan, w = mooncake_pair
    on = simulate(plan, w)
    s = on.summary
    assert s.checks.conservation_ok and s.completed + s.rejected == s.requests == len(trace)
    hit = s.tiers["t"].prefix_cache_hit_rate
    kv = sum(p.unit.replicas * p.lanes_per_replica * p.kv_tokens_per_lane
             for p in on.record.pool_info.values() if p.unit.role != "decode")
    offline = prefix_reuse(trace).hit_rate(kv // 512)
    assert hit <= offline + 1e-9
    assert hit == pytest.approx(offline, abs=0.05), (hit, offline)
    monkeypatch.setattr(disagg, "_follow_caches", lambda w, out, tier_paths: out)
    drawn = simulate(plan, w).summary.tiers["t"].prefix_cache_hit_rate
    assert hit > drawn + 0.02, (hit, drawn)
