"""Fixtures for the routing tests: small Plans built with the plan schema, and
in-process servers (emulated pools, gateway) on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

import aiohttp
import pytest

from tokenfleet.plan.schema import (
    BucketCapacity,
    BucketSplit,
    Cost,
    Plan,
    PlanUnit,
    TierSummary,
)
from tokenfleet.route.auth import ApiKeys
from tokenfleet.route.config import BackendsFile
from tokenfleet.route.emulator import Emulator
from tokenfleet.route.gateway import Gateway
from tokenfleet.route.pace import FixedLatencyEngine, FixedPacing
from tokenfleet.route.server import RunningServer
from tokenfleet.workload import SizeBuckets

BUCKET = "in0-512_out0-128"
OTHER_BUCKET = "in512-inf_out0-128"
EDGES = SizeBuckets(input_edges=(0, 512, math.inf), output_edges=(0, 128, math.inf))


def unit(pool: str, tier: str = "chat", accelerator: str = "maia-200",
         usd_per_hour: float = 10.0, replicas: int = 1, model: str = "llama-3.1-8b") -> PlanUnit:
    """A plan unit with plausible numbers (what the tests rely on: pool, tier, price)."""
    return PlanUnit(
        pool=pool, tier=tier, model=model, accelerator=accelerator, vendor="v", cloud="c",
        region="r", precision="fp8", kv_precision="fp8", engine=None,
        layout={"tp": 1, "pp": 1, "ep": 1, "dp": 1}, chips_per_replica=1, replicas=replicas,
        chips=replicas, price_kind="on_demand", usd_per_chip_hour=usd_per_hour / replicas,
        usd_per_hour=usd_per_hour, watts=750.0 * replicas,
        capacity=[BucketCapacity(bucket=BUCKET, requests_per_s=10, requests_per_s_point=12,
                                 output_tokens_per_s=1000, concurrency=16, ttft_s=0.05,
                                 tpot_s=0.01)],
        provenance="spec-sheet", uncertainty=0.1)


def make_plan(units: list[PlanUnit], splits: dict[tuple[str, str], dict[str, float]],
              tiers: dict[str, str] | None = None, slo_ttft_s: float | None = 1.0,
              slo_tpot_s: float | None = 0.1, buckets: SizeBuckets = EDGES) -> Plan:
    """A Plan with the given units and (tier, bucket) -> {pool: share} splits; the
    buckets' edges are ``buckets``."""
    tiers = tiers or {u.tier: u.model for u in units}
    return Plan(
        scenario="test", created="2026-01-01T00:00:00Z", objective="cost",
        tiers=[TierSummary(name=t, model=m, slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s,
                           peak_requests_per_s=10, output_tokens_per_s=1000,
                           usd_per_million_output_tokens=1.0, precisions=["fp8"])
               for t, m in tiers.items()],
        units=units,
        traffic_split=[BucketSplit(tier=t, bucket=b, input_len=256, output_len=64,
                                   peak_requests_per_s=10, shares=sh)
                       for (t, b), sh in splits.items()],
        buckets=buckets,
        cost=Cost(usd_per_month=1, fleet_usd_per_month=1, committed_usd_per_month=0,
                  committed_used_usd_per_month=0, on_demand_usd_per_month=1),
        vendor_share={}, power_mw={}, limits={}, baselines=[], constraints=[], solver={})


@pytest.fixture
def two_pool_plan() -> Plan:
    """One tier 'chat' with a cheap pool (70 % planned) and a dear one (30 %)."""
    return make_plan(
        [unit("chat/cheap", usd_per_hour=5.0), unit("chat/dear", accelerator="h100-sxm",
                                                     usd_per_hour=20.0)],
        {("chat", BUCKET): {"chat/cheap": 0.7, "chat/dear": 0.3},
         ("chat", OTHER_BUCKET): {"chat/dear": 1.0}})


class Stack:
    """Servers of one test, all stopped when the ``async with`` block ends (also on
    failure), so no test leaves a socket open."""

    def __init__(self) -> None:
        self.servers: list[RunningServer] = []

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in reversed(self.servers):
            await s.stop()


async def start_fixed_backend(stack: Stack, served_model: str = "llama-3.1-8b",
                              ttft_s: float = 0.005, tpot_s: float = 0.002,
                              max_in_flight: int = 100_000) -> Emulator:
    emu = Emulator(FixedLatencyEngine(FixedPacing(ttft_s, tpot_s), max_in_flight), served_model)
    stack.servers.append(await emu.serve())
    return emu


async def start_gateway(stack: Stack, plan: Plan, backends: dict, keys: list[str] | None = None
                        ) -> tuple[Gateway, RunningServer]:
    gw = Gateway(plan, BackendsFile.model_validate(backends), ApiKeys(keys or []))
    server = await RunningServer(gw.make_app()).start()
    stack.servers.append(server)
    return gw, server


async def wait_for(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``pred`` every 10 ms until true; fail the test after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def read_sse(r: aiohttp.ClientResponse) -> tuple[list[dict], bool]:
    """The parsed ``data:`` events of a streamed answer, and whether ``[DONE]`` came."""
    events, done = [], False
    async for line in r.content:
        line = line.strip()
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
    return events, done
