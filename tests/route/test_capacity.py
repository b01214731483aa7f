"""Many concurrent streams through the gateway, and no per-request state left behind
once they end. The 2,000-stream check is ``slow`` (run with ``-m slow``); a smaller
one runs by default."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import pytest
from aiohttp import web

from tokenfleet.route.gateway import Gateway
from tokenfleet.route.server import raise_fd_limit

from .conftest import BUCKET, Stack, make_plan, start_fixed_backend, start_gateway, unit


def _live_requests(app: web.Application) -> int:
    """aiohttp Request objects of ``app`` still alive."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, web.Request) and o.app is app)


async def _streams(n: int, rounds: int) -> tuple[list[int], Gateway, list[int]]:
    plan = make_plan([unit("chat/a"), unit("chat/b")],
                     {("chat", BUCKET): {"chat/a": 0.5, "chat/b": 0.5}})
    peaks, leftovers = [], []
    async with Stack() as st:
        # Each stream is held ~1.2 s by the backend, so all n overlap.
        a = await start_fixed_backend(st, ttft_s=1.0, tpot_s=0.1)
        b = await start_fixed_backend(st, ttft_s=1.0, tpot_s=0.1)
        gw, srv = await start_gateway(st, plan, {
            # Backends share this process's event loop here, so a health check can wait
            # behind thousands of streams: give it time (separate processes do not).
            "gateway": {"default_max_in_flight": n, "health": {"timeout_s": 30.0}},
            "pools": {"chat/a": {"backends": [a.server.url]},
                      "chat/b": {"backends": [b.server.url]}}})
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3, "stream": True}

        async def one(s: aiohttp.ClientSession) -> bool:
            async with s.post(srv.url + "/v1/chat/completions", json=body) as r:
                data = await r.read()
                return r.status == 200 and data.endswith(b"data: [DONE]\n\n")

        for _ in range(rounds):
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, gw.in_flight)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as s:
                ok = await asyncio.gather(*(one(s) for _ in range(n)))
            watcher.cancel()
            assert all(ok), f"{ok.count(False)} of {n} streams failed"
            peaks.append(peak)
            await asyncio.sleep(0.5)  # let the server see the clients' connections close
            leftovers.append(_live_requests(srv.app))
    return peaks, gw, leftovers


def _check(n: int, rounds: int) -> None:
    peaks, gw, leftovers = asyncio.run(_streams(n, rounds))
    assert min(peaks) == n  # every stream was open at the same time
    # Nothing of any request outlives it: counters back to zero, no Request objects,
    # and metric label sets bounded by tiers x pools (not by requests).
    assert gw.in_flight == 0
    assert all(b.in_flight == 0 for b in gw.router.all_backends())
    assert leftovers == [0] * rounds
    assert len(gw.metrics._children) < 30


def test_hundreds_of_concurrent_streams_leave_nothing_behind():
    raise_fd_limit()
    _check(300, rounds=2)


@pytest.mark.slow
def test_two_thousand_concurrent_streams(tmp_path):
    """2,000 streams at once through `tokenfleet serve` to `tokenfleet emulate` (separate
    processes, as deployed): all complete, all were in flight together, and the
    gateway's memory does not grow from one round to the next."""
    import json
    import time
    from pathlib import Path

    from tokenfleet.route.child import TOKENFLEET, ChildProcess

    raise_fd_limit()
    n = 2000
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    procs: list[ChildProcess] = []
    try:
        procs.append(ChildProcess([*TOKENFLEET, "emulate", "--model", "llama-3.1-8b", "--port", "0",
                            "--json", "--fixed-ttft", "2.0", "--fixed-tpot", "0.5"]))
        url = json.loads(procs[0].wait_for(r"^\{.*\"url\".*\}$").group(0))["url"]
        (tmp_path / "backends.yaml").write_text(
            f"gateway: {{default_max_in_flight: {n}}}\npools:\n  chat/a: {{backends: [{url}]}}\n")
        procs.append(ChildProcess([*TOKENFLEET, "serve", "--plan", str(tmp_path / "plan.json"),
                            "--backends", str(tmp_path / "backends.yaml"), "--port", "0"]))
        gw = procs[1]
        target = gw.wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)

        def rss_mib() -> float:
            status = Path(f"/proc/{gw.p.pid}/status").read_text()
            return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]
                       ) / 1024

        async def round_() -> tuple[int, int]:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4, "stream": True}
            peak = 0

            async def one(s: aiohttp.ClientSession) -> bool:
                async with s.post(target + "/v1/chat/completions", json=body) as r:
                    data = await r.read()
                    return r.status == 200 and data.endswith(b"data: [DONE]\n\n")

            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=120)) as s:
                tasks = [asyncio.create_task(one(s)) for _ in range(n)]
                while not all(t.done() for t in tasks):
                    await asyncio.sleep(0.2)
                    async with s.get(target + "/health") as r:
                        peak = max(peak, (await r.json())["in_flight"])
                ok = [t.result() for t in tasks]
            return ok.count(True), peak

        rss = []
        for _ in range(3):
            ok, peak = asyncio.run(round_())
            assert ok == n and peak == n
            time.sleep(1.0)
            rss.append(rss_mib())
    finally:
        for p in procs:
            p.stop()
    # Memory after rounds 2 and 3 stays within a few MiB of round 1: nothing per request.
    assert max(rss) - rss[0] < 8, rss
