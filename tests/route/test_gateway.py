"""The gateway over loopback against real emulated backends: forwarding (streaming
and not), routing by the plan, retries, circuit breaking, failover, backpressure,
timeouts, disconnects, health and metrics."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import aiohttp
import pytest

from tokenfleet.route.emulator import Emulator, PoolSpec, build_engine

from .conftest import (
    BUCKET,
    OTHER_BUCKET,
    Stack,
    make_plan,
    read_sse,
    start_fixed_backend,
    start_gateway,
    unit,
    wait_for,
)

CHAT = "/v1/chat/completions"


def _chat(max_tokens: int = 4, stream: bool = True, prompt: str = "hello", **extra) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": stream, **extra}


def _free_port() -> int:
    """A loopback port with nothing listening (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _stream(session: aiohttp.ClientSession, url: str, body: dict
                  ) -> tuple[int, dict, list[dict], bool]:
    """POST a streaming request; return status, headers, parsed events, saw [DONE]."""
    async with session.post(url, json=body) as r:
        if r.status != 200:
            return r.status, dict(r.headers), [await r.json()], False
        events, done = await read_sse(r)
        return r.status, dict(r.headers), events, done


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_streaming_and_buffered_requests_are_forwarded(two_pool_plan):
    async def run() -> None:
        async with Stack() as st:
            b1 = await start_fixed_backend(st)
            b2 = await start_fixed_backend(st)
            gw, srv = await start_gateway(st, two_pool_plan, {"pools": {
                "chat/cheap": {"backends": [b1.server.url]},
                "chat/dear": {"backends": [b2.server.url]}}})
            async with aiohttp.ClientSession() as s:
                status, headers, events, done = await _stream(
                    s, srv.url + CHAT, _chat(5, stream_options={"include_usage": True}))
                assert status == 200 and done
                assert headers["Content-Type"].startswith("text/event-stream")
                assert headers["X-Tokenfleet-Pool"] in ("chat/cheap", "chat/dear")
                assert headers["X-Tokenfleet-Attempts"] == "1"
                text = "".join(c["delta"].get("content", "") for e in events
                               for c in e["choices"])
                assert len(text.split()) == 5
                assert events[-1]["usage"]["completion_tokens"] == 5
                # The request named the tier; the backend was asked for its own model.
                assert events[0]["model"] == "llama-3.1-8b"

                async with s.post(srv.url + "/v1/completions", json={
                        "model": "chat", "prompt": "abc", "max_tokens": 3}) as r:
                    assert r.status == 200
                    obj = await r.json()
                    assert obj["object"] == "text_completion"
                    assert obj["usage"]["completion_tokens"] == 3

                async with s.get(srv.url + "/metrics") as r:
                    text = await r.text()
                assert _metric(text, "tokenfleet_gateway_requests_total", outcome="ok") == 2
                assert _metric(text, "tokenfleet_gateway_ttft_seconds_count") == 1
                assert _metric(text, "tokenfleet_gateway_tpot_seconds_count") == 1
                assert _metric(text, "tokenfleet_gateway_in_flight") == 0
            assert gw.in_flight == 0

    asyncio.run(run())


def test_routing_follows_the_plan_split_per_bucket(two_pool_plan):
    async def run() -> None:
        async with Stack() as st:
            b1 = await start_fixed_backend(st, ttft_s=0.0, tpot_s=0.0)
            b2 = await start_fixed_backend(st, ttft_s=0.0, tpot_s=0.0)
            _, srv = await start_gateway(st, two_pool_plan, {"pools": {
                "chat/cheap": {"backends": [b1.server.url]},
                "chat/dear": {"backends": [b2.server.url]}}})
            pools: Counter[str] = Counter()
            async with aiohttp.ClientSession() as s:
                for _ in range(300):
                    async with s.post(srv.url + CHAT, json=_chat(1, stream=False)) as r:
                        assert r.status == 200
                        pools[r.headers["X-Tokenfleet-Pool"]] += 1
                # A 600-token prompt is in the other bucket: planned 100 % on 'dear'.
                long = _chat(1, stream=False, prompt="x" * 2400)
                for _ in range(20):
                    async with s.post(srv.url + CHAT, json=long) as r:
                        assert r.headers["X-Tokenfleet-Pool"] == "chat/dear"
            # 70 / 30 split; 300 draws: 3-sigma band is about +-0.08.
            assert pools["chat/cheap"] / 300 == pytest.approx(0.7, abs=0.08)
            assert OTHER_BUCKET  # (the bucket the long prompt falls in)

    asyncio.run(run())


def test_dead_backend_is_retried_elsewhere_and_its_circuit_opens():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            good = await start_fixed_backend(st)
            dead = f"http://127.0.0.1:{_free_port()}"
            gw, srv = await start_gateway(st, plan, {
                "gateway": {"health": {"path": None}, "breaker": {"failures": 2}},
                "pools": {"chat/a": {"backends": [dead, good.server.url]}}})
            attempts = Counter()
            async with aiohttp.ClientSession() as s:
                for _ in range(20):
                    status, headers, _, done = await _stream(s, srv.url + CHAT, _chat(2))
                    assert status == 200 and done
                    attempts[headers["X-Tokenfleet-Attempts"]] += 1
                async with s.get(srv.url + "/metrics") as r:
                    text = await r.text()
            # The dead backend was tried until its circuit opened (2 failures), then
            # skipped: exactly two requests needed a second attempt.
            assert attempts == {"1": 18, "2": 2}
            assert _metric(text, "tokenfleet_gateway_retries_total") == 2
            assert _metric(text, "tokenfleet_gateway_errors_total", kind="connect") == 2
            assert _metric(text, "tokenfleet_gateway_circuit_opened_total") == 1
            assert _metric(text, "tokenfleet_gateway_backend_up", backend=dead) == 0

    asyncio.run(run())


def test_failover_to_next_cheapest_pool_when_planned_pool_is_down():
    plan = make_plan([unit("chat/planned", usd_per_hour=5.0),
                      unit("chat/pricey", usd_per_hour=50.0),
                      unit("chat/spare", usd_per_hour=8.0)],
                     {("chat", BUCKET): {"chat/planned": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            spare = await start_fixed_backend(st)
            pricey = await start_fixed_backend(st)
            dead = f"http://127.0.0.1:{_free_port()}"
            _, srv = await start_gateway(st, plan, {
                "gateway": {"health": {"interval_s": 0.05}},
                "pools": {"chat/planned": {"backends": [dead]},
                          "chat/pricey": {"backends": [pricey.server.url]},
                          "chat/spare": {"backends": [spare.server.url]}}})
            async with aiohttp.ClientSession() as s:
                for _ in range(10):
                    status, headers, _, done = await _stream(s, srv.url + CHAT, _chat(2))
                    assert status == 200 and done
                    assert headers["X-Tokenfleet-Pool"] == "chat/spare"
                async with s.get(srv.url + "/health") as r:
                    health = await r.json()
                assert r.status == 200 and health["tiers"]["chat"]["healthy_backends"] == 2

    asyncio.run(run())


def test_backpressure_429_with_retry_after_when_all_pools_are_full():
    plan = make_plan([unit("chat/a"), unit("chat/b")],
                     {("chat", BUCKET): {"chat/a": 0.5, "chat/b": 0.5}})

    async def run() -> None:
        async with Stack() as st:
            a = await start_fixed_backend(st, ttft_s=0.3, tpot_s=0.01)
            b = await start_fixed_backend(st, ttft_s=0.3, tpot_s=0.01)
            _, srv = await start_gateway(st, plan, {"pools": {
                "chat/a": {"backends": [a.server.url], "max_in_flight": 2},
                "chat/b": {"backends": [b.server.url], "max_in_flight": 3}}})
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(*(_stream(s, srv.url + CHAT, _chat(2))
                                                 for _ in range(9)))
            statuses = Counter(r[0] for r in results)
            assert statuses == {200: 5, 429: 4}
            for status, headers, events, _ in results:
                if status == 429:
                    assert headers["Retry-After"] == "1"
                    assert events[0]["error"]["code"] == "rate_limit_exceeded"

    asyncio.run(run())


def test_503_when_no_backend_is_healthy():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            dead = f"http://127.0.0.1:{_free_port()}"
            gw, srv = await start_gateway(st, plan, {
                "gateway": {"health": {"interval_s": 0.05}},
                "pools": {"chat/a": {"backends": [dead]}}})
            await wait_for(lambda: not gw.router.pools["chat/a"].backends[0].healthy)
            async with aiohttp.ClientSession() as s:
                async with s.post(srv.url + CHAT, json=_chat()) as r:
                    assert r.status == 503
                    assert r.headers["Retry-After"] == "1"
                    assert (await r.json())["error"]["code"] == "no_backend_available"
                async with s.get(srv.url + "/health") as r:
                    assert r.status == 503 and (await r.json())["status"] == "degraded"

    asyncio.run(run())


def test_5xx_from_backend_is_retried_and_4xx_passed_through():
    plan = make_plan([unit("chat/a"), unit("chat/b", model="other-model")],
                     {("chat", BUCKET): {"chat/a": 1.0}}, tiers={"chat": "llama-3.1-8b"})

    async def run() -> None:
        async with Stack() as st:
            broken = await start_fixed_backend(st)
            broken.faults.update({"error_rate": 1.0})
            fine = await start_fixed_backend(st)
            _, srv = await start_gateway(st, plan, {"pools": {
                "chat/a": {"backends": [broken.server.url, fine.server.url]}}})
            async with aiohttp.ClientSession() as s:
                for _ in range(5):
                    status, _, _, done = await _stream(s, srv.url + CHAT, _chat(2))
                    assert status == 200 and done
                assert broken.errors_injected >= 1
            # A backend that rejects the request itself (wrong model name) is not
            # retried: its 404 reaches the client in OpenAI's format.
            _, srv2 = await start_gateway(st, plan, {"pools": {
                "chat/a": {"model": "not-served", "backends": [fine.server.url]}}})
            async with aiohttp.ClientSession() as s, s.post(
                    srv2.url + CHAT, json=_chat(stream=False)) as r:
                assert r.status == 404
                assert r.headers["X-Tokenfleet-Attempts"] == "1"
                assert (await r.json())["error"]["code"] == "model_not_found"

    asyncio.run(run())


def test_slow_backend_times_out_with_504():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            slow = await start_fixed_backend(st, ttft_s=2.0, tpot_s=0.01)
            _, srv = await start_gateway(st, plan, {
                "gateway": {"first_byte_timeout_s": 0.2},
                "pools": {"chat/a": {"backends": [slow.server.url]}}})
            async with aiohttp.ClientSession() as s:
                for stream in (True, False):
                    async with s.post(srv.url + CHAT, json=_chat(stream=stream)) as r:
                        assert r.status == 504
                        assert (await r.json())["error"]["code"] == "timeout"

    asyncio.run(run())


def test_client_disconnect_cancels_the_upstream_request():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def streaming(s: aiohttp.ClientSession, url: str) -> None:
        async with s.post(url, json=_chat(200)) as r:
            await r.content.readany()  # the stream has started
            await asyncio.sleep(10)  # cancelled long before

    async def buffered(s: aiohttp.ClientSession, url: str) -> None:
        async with s.post(url, json=_chat(200, stream=False)) as r:
            await r.read()

    async def run() -> None:
        async with Stack() as st:
            backend = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.05)
            gw, srv = await start_gateway(st, plan, {"pools": {
                "chat/a": {"backends": [backend.server.url]}}})
            for client in (streaming, buffered):
                async with aiohttp.ClientSession() as s:
                    task = asyncio.create_task(client(s, srv.url + CHAT))
                    await wait_for(lambda: backend.engine.running == 1)
                    await asyncio.sleep(0.1)
                    task.cancel()  # the client gives up: its connection is closed
                    with pytest.raises(asyncio.CancelledError):
                        await task
                await wait_for(lambda: backend.engine.running == 0, 3.0)
                await wait_for(lambda: gw.in_flight == 0, 3.0)
            # Both upstream requests were cancelled long before their 200 tokens.
            assert backend.engine.cancelled == 2
            assert backend.engine.completed == 0

    asyncio.run(run())


def test_backend_dying_mid_stream_ends_with_an_error_event():
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            backend = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.02)
            _, srv = await start_gateway(st, plan, {"pools": {
                "chat/a": {"backends": [backend.server.url]}}})
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(_stream(s, srv.url + CHAT, _chat(100)))
                await asyncio.sleep(0.2)
                await backend.die()
                status, _, events, done = await task
            assert status == 200 and not done
            assert events[-1]["error"]["code"] == "upstream_stream_error"
            assert any(c["delta"].get("content") for e in events[:-1] for c in e["choices"])

    asyncio.run(run())


def test_model_paced_backend_through_gateway():
    """A batching emulator of a real chip behind the gateway: TTFT and TPOT seen by
    the client are the performance model's, plus little."""
    plan = make_plan([unit("chat/maia", model="llama-3.1-70b")],
                     {("chat", BUCKET): {"chat/maia": 1.0}})

    async def run() -> None:
        engine, _ = build_engine(PoolSpec(model="llama-3.1-70b", accelerator="maia-200"))
        emu = Emulator(engine, "llama-3.1-70b")
        async with Stack() as st:
            st.servers.append(await emu.serve())
            _, srv = await start_gateway(st, plan, {"pools": {
                "chat/maia": {"backends": [emu.server.url]}}})
            loop = asyncio.get_running_loop()
            async with aiohttp.ClientSession() as s:
                # Warm up: open the keep-alive connections the measured request reuses.
                async with s.post(srv.url + CHAT, json=_chat(1, stream=False)) as r:
                    assert r.status == 200
                t0 = loop.time()
                async with s.post(srv.url + CHAT, json=_chat(10, prompt="x" * 1024)) as r:
                    times = []
                    async for line in r.content:
                        if line.startswith(b"data:") and b'"content"' in line:
                            times.append(loop.time())
            pace = engine.pacing
            ttft = times[0] - t0
            tpot = (times[-1] - times[0]) / 9
            # Tolerances allow for a busy 2-core machine; a pacing bug is off by far more.
            assert ttft == pytest.approx(pace.iteration_s(0, 0, 256, 256), rel=0.3, abs=0.02)
            assert tpot == pytest.approx(pace.iteration_s(1, 256 + 5, 0, 1), rel=0.25)

    asyncio.run(run())
