"""Correctness evidence: the simulator against the analytic model and queueing theory.

* one replica under steady load agrees with ``UnitModel.continuous`` (what
  ``tokenfleet estimate`` reports) on throughput and TPOT within 5 %;
* a batch-size-1 replica with a fixed service time is an M/D/1 queue:
  mean wait = rho / (2 mu (1 - rho));
* Little's law L = lambda W holds in every run (the summary checks it).
"""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.fleet import EngineConfig, build_fleet
from tokenfleet.sim.run import simulate
from tokenfleet.sim.stepcost import FleetStepCost, prefill_attention_per_token

from .conftest import fixed_workload, one_pool_plan

STEADY = [
    # model, chip, chips, input, output, concurrency per replica
    ("llama-3.1-70b", "h100-sxm", 4, 1024, 256, 64),
    ("llama-3.1-8b", "mi300x", 1, 128, 1024, 256),
    ("qwen3-30b-a3b", "tpu-v6e", 4, 2048, 128, 48),
]


@pytest.mark.parametrize(("model", "accel", "count", "inp", "out", "conc"), STEADY)
def test_single_replica_matches_continuous(model: str, accel: str, count: int, inp: int,
                                           out: int, conc: int) -> None:
    """Like with like: the model's steady state keeps ``conc`` sequences running and
    carries ``conc * I / O`` prompt tokens in every iteration. The simulated engine gets
    a backlog, ``max_num_seqs = conc`` and that token budget; throughput is measured in
    the middle half of the run, away from the ramp-up and the drain."""
    plan = one_pool_plan(model, accel, count, inp, out)
    unit = build_fleet(plan).pools[0].model
    dp = unit.layout.dp
    ref = unit.continuous(np.array([conc * dp]), inp, out)
    n = 24 * conc
    w = fixed_workload(plan, np.zeros(n), inp, out)
    engine = EngineConfig(max_num_seqs=conc, max_batched_tokens=round(conc * (1 + inp / out)))
    res = simulate(plan, w, engine=engine, options=SimOptions(sample_s=1.0))
    rec, s = res.record, res.summary
    assert s.completed == n and s.preemptions == 0
    dep = rec.departures_fine
    lo, hi = dep.size // 4, 3 * dep.size // 4
    # output tokens/s of the replica: departures count every dp lane of it
    tput = dep[lo:hi].sum() * out / ((hi - lo) * rec.fine_s)
    want_tput = float(ref["output_tokens_per_s"][0])
    assert tput == pytest.approx(want_tput, rel=0.05)
    assert s.tiers["t"].tpot_s.mean == pytest.approx(float(ref["tpot_s"][0]), rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.75])
def test_md1_mean_wait(rho: float) -> None:
    """max_num_seqs = 1 and one output token: every request is one prefill iteration of
    the same length S, so the replica is M/D/1 and Wq = rho S / (2 (1 - rho))."""
    inp = 512
    plan = one_pool_plan("llama-3.1-8b", "h100-sxm", 1, inp, 1)
    pool = build_fleet(plan).pools[0]
    cost = FleetStepCost([pool.coeffs], np.zeros(1, dtype=np.int64))
    service = float(cost.iteration_s(
        np.array([0]), np.array([0.0]), np.array([0.0]), np.array([float(inp)]),
        np.array([inp * prefill_attention_per_token(pool.model, inp)]))[0])
    n = 16_000
    rng = np.random.default_rng(11)
    arrival = np.cumsum(rng.exponential(service / rho, n))
    res = simulate(plan, fixed_workload(plan, arrival, inp, 1),
                   engine=EngineConfig(max_num_seqs=1))
    s = res.summary
    theory = rho * service / (2 * (1 - rho))
    assert s.tiers["t"].queue_s.mean == pytest.approx(theory, rel=0.07)
    # Every request's service is exactly S, so TTFT = wait + S.
    assert s.tiers["t"].ttft_s.mean == pytest.approx(theory + service, rel=0.07)
    assert s.checks.littles_law.ok


def test_littles_law_in_a_loaded_fleet(two_vendor_plan) -> None:
    from tokenfleet.sim.traffic import planned_traffic

    w = planned_traffic(two_vendor_plan, 90, seed=3)
    s = simulate(two_vendor_plan, w, options=SimOptions(sample_s=0.2)).summary
    lit = s.checks.littles_law
    assert lit.in_system_mean > 5  # a busy system, not a trivial one
    assert lit.in_system_mean == pytest.approx(lit.arrival_rate_per_s * lit.sojourn_mean_s,
                                               rel=0.03)
    assert s.checks.conservation_ok and s.completed == s.requests
