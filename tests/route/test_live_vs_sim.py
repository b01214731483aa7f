"""A plan's live behaviour matches its simulation: the same trace through `tokenfleet
simulate` and through `tokenfleet serve` + `tokenfleet emulate` (one emulator per pool
of the plan, paced by the same performance model) + `tokenfleet loadtest` gives the
same latencies within 10 % at moderate load. Slow: one minute of real time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tokenfleet.route.child import simulate_and_loadtest
from tokenfleet.workload import SizeBuckets
from tokenfleet.workload.readers import write_trace
from tokenfleet.workload.trace import Trace

from .conftest import make_plan, unit

MODEL = "llama-3.1-70b"
SPLIT = {"chat/maia-200": 0.6, "chat/mi300x": 0.4}


def _inputs(tmp: Path, rate_per_s: float, duration_s: float) -> None:
    units = [unit("chat/maia-200", accelerator="maia-200", usd_per_hour=10.0, replicas=2,
                  model=MODEL),
             unit("chat/mi300x", accelerator="mi300x", usd_per_hour=6.0, model=MODEL)]
    plan = make_plan(units, {("chat", b): SPLIT for b in ("in0-512_out0-128",
                                                          "in512-2048_out0-128")},
                     slo_ttft_s=0.5, slo_tpot_s=0.05,
                     buckets=SizeBuckets(input_edges=(0, 512, 2048, math.inf),
                                         output_edges=(0, 128, math.inf)))
    (tmp / "plan.json").write_text(plan.model_dump_json())
    rng = np.random.default_rng(0)
    n = int(rng.poisson(rate_per_s * duration_s))
    write_trace(Trace(np.sort(rng.uniform(0, duration_s, n)), rng.integers(200, 1200, n),
                      rng.integers(20, 100, n)), tmp / "trace.csv")


@pytest.mark.slow
def test_loadtest_agrees_with_simulate_within_ten_percent(tmp_path):
    _inputs(tmp_path, rate_per_s=6.0, duration_s=60.0)
    sim, live = simulate_and_loadtest(tmp_path / "plan.json", list(SPLIT),
                                      tmp_path / "trace.csv", tmp_path, timeout_s=300)
    assert live["requests"] == sim["requests"] == live["completed"]
    s, v = sim["tiers"]["chat"], live["tiers"]["chat"]
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert v[metric]["mean"] == pytest.approx(s[metric]["mean"], rel=0.10), metric
    for metric in ("tpot_s", "e2e_s"):
        assert v[metric]["p50"] == pytest.approx(s[metric]["p50"], rel=0.10), metric
    # Median TTFT is ~0.1 s: a few ms of HTTP hops and which requests drew the slower
    # pool (routing is random by the plan's shares) move it more than the means.
    assert v["ttft_s"]["p50"] == pytest.approx(s["ttft_s"]["p50"], rel=0.2)
