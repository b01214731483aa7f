"""Every request is accounted for: finished, retried, or rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.sim.dispatch import NO_HEALTHY, TOO_LONG
from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.results import billed_span_s
from tokenfleet.sim.run import simulate
from tokenfleet.sim.shocks import parse_failure, parse_price, parse_surge
from tokenfleet.sim.traffic import apply_surges, planned_traffic

from .conftest import fixed_workload


def _conserved(s) -> None:
    assert s.checks.conservation_ok
    assert s.completed + s.rejected == s.requests
    assert sum(s.rejected_by_reason.values()) == s.rejected
    assert sum(t.requests for t in s.tiers.values()) == s.requests
    assert sum(t.completed + t.rejected for t in s.tiers.values()) == s.requests
    # Pools: every routing decision ends in a completion or a move after a failure.
    for p in s.pools.values():
        assert p.requests == p.completed + p.moved_away


def test_vendor_outage_requeues_and_recovers(two_vendor_plan) -> None:
    w = planned_traffic(two_vendor_plan, 50, seed=1)
    base = simulate(two_vendor_plan, w).summary
    out = simulate(two_vendor_plan, w, failures=[parse_failure("vendor=AMD@t=15..30")])
    s = out.summary
    _conserved(s)
    assert s.rejected == 0 and s.retried > 0
    amd = next(p for p in s.pools.values() if p.vendor == "AMD")
    nv = next(p for p in s.pools.values() if p.vendor == "NVIDIA")
    assert amd.moved_away == s.retried  # one failure: each moved request moved once
    base_nv = next(p for p in base.pools.values() if p.vendor == "NVIDIA")
    assert nv.requests > base_nv.requests  # NVIDIA absorbed the AMD share meanwhile
    # AMD's replicas are paid for while down too: the outage does not lower the bill.
    base_amd = next(p for p in base.pools.values() if p.vendor == "AMD")
    assert amd.cost_usd == pytest.approx(base_amd.cost_usd, rel=1e-12)
    assert s.cost_usd >= base.cost_usd
    ts = out.timeseries()
    amd_up = ts.filter(ts["vendor"] == "AMD")
    mid = amd_up.filter((amd_up["t_s"] > 17) & (amd_up["t_s"] <= 30))
    assert mid["up_replicas"].max() == 0 and mid["running"].max() == 0
    late = amd_up.filter((amd_up["t_s"] > 32) & (amd_up["t_s"] < 50))
    assert late["up_replicas"].min() == 4 and late["routed"].sum() > 0


def test_everything_down_rejects_with_reason(two_vendor_plan) -> None:
    w = planned_traffic(two_vendor_plan, 30, seed=2)
    s = simulate(two_vendor_plan, w, failures=[parse_failure("cloud=runpod@t=10"),
                                               parse_failure("vendor=AMD@t=10")]).summary
    _conserved(s)
    assert s.rejected_by_reason.get(NO_HEALTHY, 0) > 0
    assert s.retried > 0
    # Requests in flight at t=10 were re-queued, found no pool and were rejected.
    arrived_after = int((w.arrival_s >= 10).sum())
    assert s.rejected >= arrived_after


def test_partial_replica_failure(two_vendor_plan) -> None:
    pool = next(u.pool for u in two_vendor_plan.units if u.vendor == "NVIDIA")
    w = planned_traffic(two_vendor_plan, 40, seed=4)
    s = simulate(two_vendor_plan, w, failures=[parse_failure(f"replicas={pool}:3@t=20..40")])
    _conserved(s.summary)
    assert s.summary.rejected == 0
    ts = s.timeseries()
    up = ts.filter((ts["pool"] == pool) & (ts["t_s"] > 25) & (ts["t_s"] <= 40))
    assert set(up["up_replicas"].to_list()) == {1}


def test_too_long_for_every_pool_is_rejected(two_vendor_plan) -> None:
    w = fixed_workload(two_vendor_plan, np.array([0.0, 0.5]), 10_000_000, 10)
    s = simulate(two_vendor_plan, w).summary
    assert s.rejected_by_reason == {TOO_LONG: 2}
    _conserved(s)


def test_kv_pressure_preempts_and_still_finishes() -> None:
    """A small KV cache (long sequences, many at once) forces recompute preemptions;
    every request still finishes, exactly once."""
    from .conftest import one_pool_plan

    plan = one_pool_plan("llama-3.1-70b", "mi300x", 2, 8000, 2000)
    w = fixed_workload(plan, np.zeros(400), 8000, 2000)
    s = simulate(plan, w, options=SimOptions(sample_s=1.0)).summary
    assert s.preemptions > 0
    assert s.completed == 400 and s.rejected == 0
    assert s.pools[next(iter(s.pools))].kv_occupancy_max > 0.9


def test_price_change_and_surge(two_vendor_plan) -> None:
    w = planned_traffic(two_vendor_plan, 30, seed=5)
    base = simulate(two_vendor_plan, w).summary
    run = simulate(two_vendor_plan, w, prices=[parse_price("mi300x=0.5@t=15")])
    cheap = run.summary
    amd_base = next(p for p in base.pools.values() if p.vendor == "AMD")
    amd_cheap = next(p for p in cheap.pools.values() if p.vendor == "AMD")
    span = billed_span_s(run.record)  # the traffic's window (last arrival's bin)
    assert w.arrival_s.max() <= span <= w.arrival_s.max() + run.record.fine_s
    price = next(u.usd_per_chip_hour for u in two_vendor_plan.units if u.vendor == "AMD")
    assert amd_cheap.cost_usd == pytest.approx(
        4 * (15 * price + (span - 15) * 0.5) / 3600, rel=1e-9)
    assert amd_cheap.cost_usd < amd_base.cost_usd
    surged = apply_surges(w, [parse_surge("3x@t=10..20")])
    n_in = int(((w.arrival_s >= 10) & (w.arrival_s < 20)).sum())
    assert len(surged) - len(w) == pytest.approx(2 * n_in, rel=0.01)
    s = simulate(two_vendor_plan, surged).summary
    _conserved(s)
    assert s.tiers["chat"].ttft_s.p99 > base.tiers["chat"].ttft_s.p99


@pytest.mark.parametrize("spec", ["vendor", "vendor=", "planet=mars", "vendor=AMD@t=9..3",
                                  "replicas=pool:x", "vendor=AMD@soon"])
def test_bad_failure_specs(spec: str) -> None:
    with pytest.raises(TokenfleetError, match=r"--fail"):
        parse_failure(spec)


def test_failure_matching_nothing_names_known_values(two_vendor_plan) -> None:
    w = planned_traffic(two_vendor_plan, 5)
    with pytest.raises(TokenfleetError, match=r"matches no pool.*AMD, NVIDIA"):
        simulate(two_vendor_plan, w, failures=[parse_failure("vendor=Intel")])
    with pytest.raises(TokenfleetError, match=r"--price"):
        simulate(two_vendor_plan, w, prices=[parse_price("tpu-v9=1")])
    with pytest.raises(TokenfleetError, match=r"--surge"):
        parse_surge("double@t=3")
