"""The whole stack over loopback: load generator -> gateway -> emulated pools of three
chip kinds (paced by the performance model). One backend is killed mid-run; every
request must be accounted for — completed, retried elsewhere, or failed with a clear
error event — and the gateway's own counters must agree with what clients saw."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tokenfleet.route.emulator import Emulator, PoolSpec, build_engine
from tokenfleet.route.loadgen import LoadGenerator, schedule, summarize

from .conftest import BUCKET, Stack, make_plan, start_gateway, unit
from .test_gateway import _metric

MODEL = "llama-3.1-70b"
POOLS = {  # pool -> (accelerator, $/h, planned share, backends)
    "chat/maia-200": ("maia-200", 8.0, 0.5, 2),
    "chat/mi300x": ("mi300x", 10.0, 0.3, 1),
    "chat/h100-sxm": ("h100-sxm", 16.0, 0.2, 1),
}


def _plan():
    return make_plan(
        [unit(p, accelerator=a, usd_per_hour=usd, model=MODEL)
         for p, (a, usd, _, _) in POOLS.items()],
        {("chat", BUCKET): {p: share for p, (_, _, share, _) in POOLS.items()}},
        slo_ttft_s=1.0, slo_tpot_s=0.1)


async def _run(stream: bool) -> tuple:
    async with Stack() as st:
        emulators: dict[str, list[Emulator]] = {}
        for pool, (accel, _, _, n) in POOLS.items():
            emulators[pool] = []
            for _ in range(n):
                engine, _ = build_engine(PoolSpec(model=MODEL, accelerator=accel))
                emu = Emulator(engine, MODEL)
                st.servers.append(await emu.serve())
                emulators[pool].append(emu)
        gw, srv = await start_gateway(st, _plan(), {
            "gateway": {"health": {"interval_s": 0.25}},
            "pools": {p: {"backends": [e.server.url for e in es]}
                      for p, es in emulators.items()}})
        reqs = schedule(None, {"chat": 1.0}, rate_per_s=30.0, duration_s=3.0,
                        input_tokens=300, output_tokens=12, seed=7)
        gen = LoadGenerator(srv.url, stream=stream, timeout_s=30.0)
        victim = emulators["chat/maia-200"][0]

        async def kill_later() -> None:
            await asyncio.sleep(1.2)
            await victim.die()

        killer = asyncio.create_task(kill_later())
        result = await gen.run(reqs)
        await killer
        async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as r:
            metrics = await r.text()
        served = {p: sum(e.engine.completed for e in es) for p, es in emulators.items()}
        return reqs, result, metrics, served, gw.in_flight


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "buffered"])
def test_kill_a_backend_mid_run_loses_no_request(stream):
    reqs, result, metrics, served, in_flight = asyncio.run(_run(stream))
    s = summarize(result)
    # Every request sent has exactly one outcome.
    assert s.requests == len(reqs) > 60
    assert s.completed + s.rejected + s.failed == s.requests
    assert s.rejected == 0  # moderate load: nobody turned away
    # Failures only as clear error events of streams cut by the crash, nothing else.
    assert set(s.errors) <= {"stream_error"}
    for r in result.results:
        if r.outcome == "failed":
            assert r.message and "failed during the stream" in r.message
    # Nothing is lost: requests that had not streamed yet were retried elsewhere, and
    # streams cut by the crash were resumed on another backend (route/resume.py).
    assert s.failed == 0
    if stream:
        assert _metric(metrics, "tokenfleet_gateway_stream_resumes_total",
                       outcome="resumed") >= 1
        assert all(r.output_tokens == q.output_tokens
                   for r, q in zip(result.results, reqs, strict=True))
    else:
        assert s.retried >= 1
    # The gateway's books match the clients' books.
    assert _metric(metrics, "tokenfleet_gateway_requests_total", outcome="ok") == s.completed
    assert _metric(metrics, "tokenfleet_gateway_requests_total") == s.requests
    assert _metric(metrics, "tokenfleet_gateway_requests_total",
                   outcome="upstream_error") == s.failed
    assert in_flight == 0
    # Every pool of the plan served traffic, the survivors more after the kill.
    assert all(n > 0 for n in served.values())
    # Latency is the emulated chips' (tens of ms per token), measured client-side.
    if stream:
        chat = s.tiers["chat"]
        assert 0.01 < chat.tpot_s.p50 < 0.1
        # SLOs and prices came from the gateway's /v1/models.
        assert chat.slo_attainment is not None and chat.slo_attainment > 0.5
        assert s.cost_usd == pytest.approx(34.0 * s.wall_s / 3600)
