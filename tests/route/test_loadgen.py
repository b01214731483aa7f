"""Schedules (trace replay, Poisson) and the summary's accounting and percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.route.loadgen import (
    LoadResult,
    RequestResult,
    TierInfo,
    schedule,
    summarize,
)
from tokenfleet.workload.trace import Trace


def _trace() -> Trace:
    return Trace(arrival_s=np.array([0.0, 1.0, 2.0, 3.0, 10.0]),
                 input_tokens=np.array([10, 20, 30, 40, 50]),
                 output_tokens=np.array([1, 2, 0, 4, 5]))


def test_replay_keeps_trace_times_and_lengths():
    reqs = schedule(_trace(), {"chat": 1.0}, speedup=2.0, duration_s=2.0)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5, 1.0, 1.5]
    assert [r.input_tokens for r in reqs] == [10, 20, 30, 40]
    assert [r.output_tokens for r in reqs] == [1, 2, 1, 4]  # 0 -> at least one token
    assert {r.tier for r in reqs} == {"chat"}
    assert len(schedule(_trace(), {"chat": 1.0}, limit=2)) == 2


def test_poisson_rate_and_tier_mix():
    reqs = schedule(None, {"chat": 3.0, "code": 1.0}, rate_per_s=200.0, duration_s=10.0,
                    input_tokens=100, output_tokens=10, seed=3)
    assert len(reqs) == pytest.approx(2000, rel=0.1)
    assert all(0 <= r.arrival_s < 10 for r in reqs)
    share = sum(r.tier == "chat" for r in reqs) / len(reqs)
    assert share == pytest.approx(0.75, abs=0.04)
    # Lengths resampled from a trace keep its (input, output) pairs.
    reqs = schedule(_trace(), {"chat": 1.0}, rate_per_s=50.0, duration_s=2.0)
    assert {(r.input_tokens, r.output_tokens) for r in reqs} <= {
        (10, 1), (20, 2), (30, 1), (40, 4), (50, 5)}


@pytest.mark.parametrize("kw, match", [
    ({"rate_per_s": None}, "give a trace"),
    ({"rate_per_s": 5.0, "input_tokens": 5}, "both --input-tokens"),
    ({"rate_per_s": 5.0, "duration_s": -1.0, "input_tokens": 1, "output_tokens": 1},
     "duration must be > 0"),
    ({"rate_per_s": 0.0, "input_tokens": 1, "output_tokens": 1}, "rate must be > 0"),
])
def test_bad_schedules_are_clear_errors(kw, match):
    with pytest.raises(TokenfleetError, match=match):
        schedule(None, {"chat": 1.0}, **kw)


def test_bad_tier_mix():
    with pytest.raises(TokenfleetError, match="weights must be >= 0"):
        schedule(_trace(), {"chat": 0.0})


def test_summary_accounts_for_every_request():
    ok = [RequestResult("chat", "ok", 200, ttft_s=t, tpot_s=0.01 * (i + 1), t_end=10.0)
          for i, t in enumerate(np.linspace(0.1, 1.0, 10))]
    ok[0].attempts = 2
    res = [*ok, RequestResult("chat", "rejected", 429, reason="http_429", t_end=5.0),
           RequestResult("chat", "failed", 200, reason="stream_error", t_end=5.0),
           RequestResult("code", "ok", 200, ttft_s=0.2, tpot_s=0.5, t_end=3.0)]
    s = summarize(LoadResult(res, wall_s=3600.0), tiers={
        "chat": TierInfo(slo_ttft_s=0.55, slo_tpot_s=0.05, usd_per_hour=10.0, watts=1000.0),
        "code": TierInfo(usd_per_hour=2.0, watts=500.0)})
    assert (s.requests, s.completed, s.rejected, s.failed, s.retried) == (13, 11, 1, 1, 1)
    assert (s.tiers["chat"].rejected, s.tiers["chat"].failed) == (1, 1)
    assert s.completed + s.rejected + s.failed == s.requests
    assert s.errors == {"http_429": 1, "stream_error": 1}
    chat = s.tiers["chat"]
    assert (chat.requests, chat.completed) == (12, 10)
    assert chat.ttft_s.p50 == pytest.approx(0.55)
    assert chat.tpot_s.p99 == pytest.approx(np.percentile(np.arange(1, 11) * 0.01, 99))
    assert chat.tpot_s.mean == pytest.approx(0.055) and chat.tpot_s.count == 10
    assert chat.mean_ttft_within_slo is True and chat.mean_tpot_within_slo is False
    assert chat.goodput_requests_per_s == pytest.approx(5 / 3600)
    # TTFT <= 0.55 s: 5 of 10; of those, TPOT <= 0.05 s: all 5. Over 12 requests.
    assert chat.slo_attainment == pytest.approx(5 / 12)
    assert s.tiers["code"].slo_attainment is None
    assert s.cost_usd == pytest.approx(12.0)
    assert s.energy_kwh == pytest.approx(1.5)
    # Field names, nesting and latency shape are the simulator's (`simulate --json`).
    from tokenfleet.sim.results import SimSummary, TierResult

    d = s.model_dump()
    shared = {"requests", "completed", "retried", "rejected", "tiers", "pools", "cost_usd",
              "energy_kwh", "wall_s", "source", "notes"}
    assert shared <= set(d) and shared <= set(SimSummary.model_fields)
    tier_fields = set(d["tiers"]["chat"]) - {"failed"}
    assert tier_fields <= set(TierResult.model_fields)
    assert set(d["tiers"]["chat"]["ttft_s"]) == {"p50", "p90", "p99", "mean", "count"}
