"""Fixtures for the simulator tests: small plans built from perf estimates."""

from __future__ import annotations

import numpy as np
import pytest
import typer

from tokenfleet.plan.schema import Plan
from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.traffic import RouteKey, Workload


def fixed_workload(plan: Plan, arrival: np.ndarray, inp: int, out: int,
                   tier: str | None = None) -> Workload:
    """Requests of one shape arriving at ``arrival`` (s), all in the plan's first split
    bucket of ``tier`` (default: the first tier)."""
    tier = tier or plan.tiers[0].name
    bucket = next(s.bucket for s in plan.traffic_split if s.tier == tier)
    n = arrival.size
    return Workload(np.asarray(arrival, dtype=float), np.full(n, inp, dtype=np.int64),
                    np.full(n, out, dtype=np.int64), np.zeros(n, dtype=np.int32),
                    [RouteKey(tier, bucket)], "test")


def one_pool_plan(model: str, accel: str, count: int, inp: int, out: int,
                  replicas: int = 1, slo_ttft: float | None = None,
                  slo_tpot: float | None = None, speculative: str | None = None,
                  precision: str = "auto") -> Plan:
    return quick_plan([TierSpec("t", model, slo_ttft, slo_tpot, [(inp, out, 1.0)])],
                      [QuickPool("t", accel, replicas, count=count, precision=precision,
                                 speculative=speculative)])


@pytest.fixture(scope="session")
def two_vendor_plan() -> Plan:
    """llama-3.1-8b on 4 H100 (NVIDIA, runpod) and 4 MI300X (AMD, tensorwave)."""
    return quick_plan(
        [TierSpec("chat", "llama-3.1-8b", 1.0, 0.05, [(1024, 128, 0.6), (300, 400, 0.4)])],
        [QuickPool("chat", "h100-sxm", 4, count=1), QuickPool("chat", "mi300x", 4, count=1)],
        load=0.6)


@pytest.fixture(scope="session")
def two_tier_plan() -> Plan:
    """Two independent tiers (8B on H100 + TPU v6e, 70B on MI300X)."""
    return quick_plan(
        [TierSpec("mini", "llama-3.1-8b", 1.0, 0.05, [(800, 150, 1.0)]),
         TierSpec("big", "llama-3.1-70b", 3.0, 0.1, [(1500, 200, 1.0)])],
        [QuickPool("mini", "h100-sxm", 3, count=1), QuickPool("mini", "tpu-v6e", 3, count=1),
         QuickPool("big", "mi300x", 2, count=2)],
        load=0.7)


@pytest.fixture(scope="session")
def cli_app() -> typer.Typer:
    from tokenfleet.cli import app

    return app
