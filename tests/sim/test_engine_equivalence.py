"""The vectorised engine gives the answer of the per-request one it replaced.

``reference_engine.py`` is the previous engine (one request at a time: ``Req`` objects,
per-lane queues and heaps, a Python scheduler per lane). Both implement the same
semantics — iteration-level batching, chunked prefill, KV blocks with a watermark,
recompute preemption, routing windows, failures — so every count, histogram, sum and
time-series sample must agree (floating-point sums to 1e-9) in runs that exercise each
of them: light and overloaded traffic under every policy, preemption under KV
pressure, small token budgets (long prompts cut in chunks), outages and recoveries,
completions beyond the completion ring's horizon, a stop at ``max_time_s``, and
speculative pools (a draft model, a fused draft, an MTP head) beside plain ones.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tokenfleet.sim import dispatch as dispatch_mod
from tokenfleet.sim import engine as engine_mod
from tokenfleet.sim.engine import SimOptions, Simulator, auto_sample_s
from tokenfleet.sim.fleet import EngineConfig, build_fleet
from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.results import summarize
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.traffic import planned_traffic, scale_traffic

from .conftest import fixed_workload, one_pool_plan
from .reference_engine import Simulator as ReferenceSimulator
from .test_split import _assert_same, _comparable


def _both(plan, w, engine=None, failures=(), opt=None):
    opt = opt or SimOptions()
    opt = replace(opt, sample_s=opt.sample_s or auto_sample_s(w.duration_s, opt.sync_s))
    runs = []
    for cls in (Simulator, ReferenceSimulator):
        fleet = build_fleet(plan, engine)
        runs.append(cls(fleet, w, opt, list(failures), []).run())
    return runs


def _assert_equal_runs(new, old) -> None:
    _assert_same(_comparable(summarize(new)), _comparable(summarize(old)))
    assert new.series.keys() == old.series.keys()
    for pid, cols in new.series.items():
        for c, v in cols.items():
            np.testing.assert_allclose(v, old.series[pid][c], rtol=1e-9, atol=1e-9,
                                       err_msg=f"{pid}.{c}")
    np.testing.assert_array_equal(new.departures_fine, old.departures_fine)


@pytest.mark.parametrize("policy", ["plan", "jsq", "least-kv", "cost-spill", "round-robin"])
@pytest.mark.parametrize("growth", [1.0, 3.0])
def test_policies_light_and_overloaded(two_vendor_plan, policy: str, growth: float) -> None:
    w = scale_traffic(planned_traffic(two_vendor_plan, 40, seed=4), growth, seed=4)
    new, old = _both(two_vendor_plan, w, opt=SimOptions(policy=policy, seed=2))
    assert new.completed == len(w)
    _assert_equal_runs(new, old)


def test_two_tiers_with_outage_and_recovery(two_tier_plan) -> None:
    w = scale_traffic(planned_traffic(two_tier_plan, 60, seed=6), 1.5, seed=6)
    fails = [parse_failure("vendor=NVIDIA@t=20..35"), parse_failure("vendor=AMD@t=30..31")]
    new, old = _both(two_tier_plan, w, failures=fails)
    assert new.retried > 0
    _assert_equal_runs(new, old)


def test_preemption_and_small_token_budget() -> None:
    """KV pressure preempts (recompute) and prompts longer than the budget go in chunks."""
    plan = one_pool_plan("llama-3.1-8b", "h100-sxm", 1, 6000, 900)
    w = fixed_workload(plan, np.linspace(0.0, 2.0, 200), 6000, 900)
    for engine in (EngineConfig(max_num_seqs=256), EngineConfig(max_batched_tokens=1000)):
        new, old = _both(plan, w, engine=engine)
        _assert_equal_runs(new, old)


def test_kv_pressure_preempts_identically() -> None:
    plan = one_pool_plan("llama-3.1-70b", "h100-sxm", 2, 3000, 1500)
    w = fixed_workload(plan, np.linspace(0.0, 5.0, 400), 3000, 1500)
    new, old = _both(plan, w, engine=EngineConfig(max_num_seqs=512))
    assert sum(new.preemptions.values()) > 0
    _assert_equal_runs(new, old)


def test_completions_beyond_the_ring(two_vendor_plan, monkeypatch) -> None:
    """A ring of 64 steps: most answers finish further ahead and wait in the far list."""
    monkeypatch.setattr(engine_mod, "_RING_BYTES", 1)
    w = planned_traffic(two_vendor_plan, 30, seed=9)
    new, old = _both(two_vendor_plan, w, failures=[parse_failure("vendor=AMD@t=10..20")])
    _assert_equal_runs(new, old)


def test_stop_at_max_time(two_vendor_plan) -> None:
    w = scale_traffic(planned_traffic(two_vendor_plan, 30, seed=1), 4.0, seed=1)
    new, old = _both(two_vendor_plan, w, opt=SimOptions(max_time_s=20.0))
    assert new.reject_reasons.get(engine_mod.UNFINISHED, 0) > 0
    _assert_equal_runs(new, old)


@pytest.mark.parametrize("policy", ["plan", "jsq"])
def test_window_grouping_by_lists_or_arrays_agree(two_vendor_plan, monkeypatch,
                                                  policy: str) -> None:
    """Small windows are grouped by key with lists, large ones with arrays: forcing
    either everywhere gives the same run."""
    w = scale_traffic(planned_traffic(two_vendor_plan, 30, seed=5), 3.0, seed=5)
    runs = []
    for small in (0, 10**9):
        monkeypatch.setattr(dispatch_mod, "_SMALL_WINDOW", small)
        fleet = build_fleet(two_vendor_plan, None)
        opt = SimOptions(policy=policy, seed=3, sample_s=auto_sample_s(w.duration_s, 0.02))
        runs.append(Simulator(fleet, w, opt, [], []).run())
    _assert_equal_runs(*runs)


def _speculative_plan():
    """llama-3.1-8b on H100 with a Llama-3.2-1B draft, the same fused (k = 7) on MI300X,
    and a plain H100 pool, in one tier."""
    return quick_plan(
        [TierSpec("chat", "llama-3.1-8b", 1.0, 0.05, [(1024, 128, 0.6), (300, 400, 0.4)])],
        [QuickPool("chat", "h100-sxm", 3, count=1, speculative="draft:llama-3.2-1b"),
         QuickPool("chat", "mi300x", 2, count=1, speculative="fused:llama-3.2-1b:7:0.7"),
         QuickPool("chat", "h100-sxm", 2, count=1, region="region-2")],
        load=0.6)


@pytest.mark.parametrize("growth", [1.0, 3.0])
def test_speculative_pools_beside_plain_ones(growth: float) -> None:
    plan = _speculative_plan()
    w = scale_traffic(planned_traffic(plan, 30, seed=8), growth, seed=8)
    fails = [parse_failure("vendor=AMD@t=12..18")]
    new, old = _both(plan, w, failures=fails, opt=SimOptions(policy="jsq", seed=1))
    assert new.completed == len(w) and new.retried > 0
    _assert_equal_runs(new, old)


def test_speculative_preemption_and_small_budget(monkeypatch) -> None:
    """KV pressure on an MTP pool (DeepSeek-R1), prompts in chunks beside the verify
    positions, and answers beyond a 64-step ring."""
    monkeypatch.setattr(engine_mod, "_RING_BYTES", 1)
    plan = one_pool_plan("deepseek-r1", "h200", 8, 6000, 3000, speculative="mtp:2:0.8",
                         precision="fp8")
    w = fixed_workload(plan, np.linspace(0.0, 2.0, 400), 6000, 3000)
    preempted = 0
    for engine in (EngineConfig(max_num_seqs=1024), EngineConfig(max_batched_tokens=900)):
        new, old = _both(plan, w, engine=engine)
        assert new.completed == len(w)
        preempted += sum(new.preemptions.values())
        _assert_equal_runs(new, old)
    assert preempted > 0
