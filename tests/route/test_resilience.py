"""Chaos suite: emulated pools behind the gateway with scripted faults — a backend
killed mid-stream, hung, 10x slow, answering 50 % errors, restarted; the gateway
draining and reloading; hostile bodies; per-key and per-tier limits. Asserts no
request lost, no stream cut, every error a JSON error body."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tokenfleet.route.config import BackendsFile
from tokenfleet.route.emulator import Emulator
from tokenfleet.route.openai_api import parse_request
from tokenfleet.route.pace import FixedLatencyEngine, FixedPacing
from tokenfleet.route.resume import Delivered, continuation_body, rewrite_usage, split_events

from .conftest import (
    BUCKET,
    Stack,
    make_plan,
    read_sse,
    start_fixed_backend,
    start_gateway,
    unit,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _chat(max_tokens: int, stream: bool = True, **extra) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": max_tokens, "stream": stream,
            "stream_options": {"include_usage": True}, **extra}


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, **kw
                  ) -> tuple[int, list[dict], bool]:
    """Status, parsed events (or the JSON error body), whether [DONE] came."""
    async with session.post(url, json=body, **kw) as r:
        if r.status != 200:
            return r.status, [await r.json()], False  # every error is a JSON body
        events, done = await read_sse(r)
        return r.status, events, done


def _text_tokens(events: list[dict]) -> int:
    return sum(1 for e in events for c in e.get("choices") or ()
               if (c.get("delta") or {}).get("content") or c.get("text"))


def _backend(gw, emu):  # noqa: ANN001, ANN202 - test helper
    """The gateway's record of the backend ``emu``."""
    return next(b for b in gw.router.pools["chat/a"].backends if b.url == emu.server.url)


def _plan():
    return make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})


# ---- resuming streams -------------------------------------------------------------------

def test_stream_survives_its_backend_dying_and_is_stitched_into_one_response():
    async def run() -> None:
        async with Stack() as st:
            doomed = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            spare = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"health": {"path": None}},
                "pools": {"chat/a": {"backends": [doomed.server.url, spare.server.url]}}})
            # All streams start on the doomed backend (the spare is out meanwhile).
            spare_b = _backend(gw, spare)
            spare_b.healthy = False
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.create_task(_stream(s, srv.url + CHAT, _chat(60)))
                         for _ in range(30)]
                tasks += [asyncio.create_task(_stream(
                    s, srv.url + COMPLETIONS, {"model": "chat", "prompt": "hi",
                                               "max_tokens": 60, "stream": True,
                                               "stream_options": {"include_usage": True}}))
                    for _ in range(10)]
                await asyncio.sleep(0.25)
                spare_b.healthy = True
                await doomed.die()
                results = await asyncio.gather(*tasks)
            metrics = gw.metrics.render().decode()
        for status, events, done in results:
            assert status == 200 and done, events[-1:]
            assert not any("error" in e for e in events)
            assert _text_tokens(events) == 60  # exactly max_tokens, no repeat, no gap
            ids = {e["id"] for e in events}
            assert len(ids) == 1  # one response for the client
            usage = [e["usage"] for e in events if e.get("usage")]
            assert usage and usage[-1]["completion_tokens"] == 60
        assert 'tokenfleet_gateway_stream_resumes_total{outcome="resumed"' in metrics

    asyncio.run(run())


def test_resume_can_be_turned_off_per_tier():
    async def run() -> None:
        async with Stack() as st:
            doomed = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            spare = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"health": {"path": None}},
                "tiers": {"chat": {"resume_streams": False}},
                "pools": {"chat/a": {"backends": [doomed.server.url, spare.server.url]}}})
            spare_b = _backend(gw, spare)
            spare_b.healthy = False
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(_stream(s, srv.url + CHAT, _chat(60)))
                await asyncio.sleep(0.2)
                spare_b.healthy = True
                await doomed.die()
                status, events, done = await task
        assert status == 200 and not done
        assert events[-1]["error"]["code"] == "upstream_stream_error"

    asyncio.run(run())


def test_continuation_request_and_usage_rewrite():
    p = parse_request(json.dumps(_chat(10)).encode(), "chat")
    d = Delivered()
    events, rest = split_events(b"", b'data: {"id":"x","choices":[{"index":0,"delta":'
                                     b'{"content":" a"}}]}\n\ndata: {"id":"x","choi')
    d.add(events)
    assert rest.startswith(b"data:")  # half an event is held back
    body = json.loads(continuation_body(p, "m", d) or b"")
    assert body["max_tokens"] == 9 and body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": " a"}
    c = parse_request(b'{"model":"m","prompt":"hi","max_tokens":1,"stream":true}',
                      "completion")
    assert continuation_body(c, "m", d) is None  # everything already delivered
    c = parse_request(b'{"model":"m","prompt":"hi","max_tokens":5,"stream":true}',
                      "completion")
    assert json.loads(continuation_body(c, "m", d) or b"")["prompt"] == "hi a"
    out = rewrite_usage(b'data: {"usage":{"prompt_tokens":7,"completion_tokens":9,'
                        b'"total_tokens":16}}\n\n', 1)
    assert json.loads(out.split(b"\n")[0][5:])["usage"] == {
        "prompt_tokens": 6, "completion_tokens": 10, "total_tokens": 16}


# ---- gray failures -----------------------------------------------------------------------

def test_ten_times_slower_backend_is_ejected_and_tpot_stays_healthy():
    async def run() -> None:
        async with Stack() as st:
            fast = await start_fixed_backend(st, ttft_s=0.02, tpot_s=0.01)
            slow = await start_fixed_backend(st, ttft_s=0.02, tpot_s=0.01)
            slow.engine.slowdown = 10.0
            gw, srv = await start_gateway(st, _plan(), {"pools": {"chat/a": {
                "backends": [fast.server.url, slow.server.url]}}})
            async with aiohttp.ClientSession() as s:
                tasks = []
                for _ in range(80):
                    tasks.append(asyncio.create_task(_stream(s, srv.url + CHAT, _chat(10))))
                    await asyncio.sleep(0.02)
                results = await asyncio.gather(*tasks)
            slow_b = _backend(gw, slow)
            assert slow_b.stats.ejections >= 1
        assert all(st_ == 200 and done for st_, _, done in results)  # nothing lost

    asyncio.run(run())


def test_half_errors_lose_nothing():
    async def run() -> None:
        async with Stack() as st:
            good = await start_fixed_backend(st, ttft_s=0.005, tpot_s=0.002)
            flaky = await start_fixed_backend(st, ttft_s=0.005, tpot_s=0.002)
            flaky.faults.error_rate = 0.5
            _, srv = await start_gateway(st, _plan(), {"pools": {"chat/a": {
                "backends": [good.server.url, flaky.server.url]}}})
            async with aiohttp.ClientSession() as s:
                results = await asyncio.gather(*[_stream(s, srv.url + CHAT, _chat(5))
                                                 for _ in range(60)])
        assert all(status == 200 and done for status, _, done in results)

    asyncio.run(run())


def test_backend_restart_loses_nothing_and_it_comes_back():
    async def run() -> None:
        async with Stack() as st:
            a = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            b = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"health": {"interval_s": 0.1, "timeout_s": 0.5},
                            "breaker": {"cooldown_s": 0.2}},
                "pools": {"chat/a": {"backends": [a.server.url, b.server.url]}}})
            port = a.server.port  # type: ignore[union-attr]
            async with aiohttp.ClientSession() as s:
                first = [asyncio.create_task(_stream(s, srv.url + CHAT, _chat(30)))
                         for _ in range(20)]
                await asyncio.sleep(0.15)
                await a.die()  # crashes with streams on it
                await asyncio.sleep(0.3)
                again = Emulator(FixedLatencyEngine(FixedPacing(0.01, 0.01)), "llama-3.1-8b")
                st.servers.append(await again.serve(port=port))  # restarted, same port
                await asyncio.sleep(0.5)  # a health check sees it up
                second = [asyncio.create_task(_stream(s, srv.url + CHAT, _chat(5)))
                          for _ in range(20)]
                results = await asyncio.gather(*first, *second)
            assert _backend(gw, a).healthy
        assert all(status == 200 and done for status, _, done in results)
        assert all(_text_tokens(ev) == 30 for _, ev, _ in results[:20])
        assert again.engine.completed >= 1  # the restarted backend serves again

    asyncio.run(run())


def test_hung_backend_mid_stream_is_resumed_after_the_read_timeout():
    async def run() -> None:
        async with Stack() as st:
            hung = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            spare = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"first_byte_timeout_s": 0.3, "health": {"path": None}},
                "pools": {"chat/a": {"backends": [hung.server.url, spare.server.url]}}})
            spare_b = _backend(gw, spare)
            spare_b.healthy = False
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(_stream(s, srv.url + CHAT, _chat(40)))
                await asyncio.sleep(0.15)
                spare_b.healthy = True
                hung.engine.slowdown = 1000.0  # stalls: no token for minutes
                status, events, done = await task
        assert status == 200 and done and _text_tokens(events) == 40

    asyncio.run(run())


# ---- hostile input -----------------------------------------------------------------------

def test_hostile_bodies_get_a_4xx_fast():
    async def run() -> None:
        async with Stack() as st:
            b = await start_fixed_backend(st)
            _, srv = await start_gateway(st, _plan(), {"pools": {"chat/a": {
                "backends": [b.server.url]}}})
            deep = b'{"model":"chat","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            bodies = [deep, b'{"model":"chat","messages":[],"max_tokens":NaN}',
                      b'{"model":"chat","messages":[{"role":"user","content":"x"}],'
                      b'"temperature":1e999}',
                      json.dumps(_chat(10**20)).encode(), json.dumps(_chat(10**7)).encode(),
                      json.dumps({**_chat(10), "messages": [
                          {"role": "user", "content": "x" * 600_000}]}).encode()]
            async with aiohttp.ClientSession() as s:
                for body in bodies:
                    t0 = time.monotonic()
                    async with s.post(srv.url + CHAT, data=body,
                                      headers={"Content-Type": "application/json"}) as r:
                        assert 400 <= r.status < 500, (r.status, body[:80])
                        err = await r.json()
                    assert time.monotonic() - t0 < 1.0
                    assert err["error"]["message"]
                async with s.post(srv.url + CHAT, json=_chat(10**7)) as r:
                    assert (await r.json())["error"]["code"] == "context_length_exceeded"

    asyncio.run(run())


# ---- drain, reload, limits ---------------------------------------------------------------

def test_drain_finishes_streams_then_refuses_with_503():
    async def run() -> None:
        async with Stack() as st:
            b = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"drain_accept_s": 0.3, "drain_timeout_s": 10},
                "pools": {"chat/a": {"backends": [b.server.url]}}})
            async with aiohttp.ClientSession() as s:
                streams = [asyncio.create_task(_stream(s, srv.url + CHAT, _chat(50)))
                           for _ in range(10)]
                await asyncio.sleep(0.1)
                drain = asyncio.create_task(gw.drain())
                await asyncio.sleep(0.05)
                async with s.get(srv.url + "/health") as r:
                    assert r.status == 503 and (await r.json())["status"] == "draining"
                ok = await _stream(s, srv.url + CHAT, _chat(2))  # still accepted
                assert ok[0] == 200 and ok[2]
                await asyncio.sleep(0.35)
                async with s.post(srv.url + CHAT, json=_chat(2)) as r:
                    assert r.status == 503 and "Retry-After" in r.headers
                    assert (await r.json())["error"]["code"] == "shutting_down"
                results = await asyncio.gather(*streams)
                assert await drain is True
        assert all(status == 200 and done for status, _, done in results)

    asyncio.run(run())


def test_reload_swaps_backends_without_dropping_a_stream_and_refuses_bad_config():
    async def run() -> None:
        async with Stack() as st:
            old = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            new = await start_fixed_backend(st, ttft_s=0.01, tpot_s=0.01)
            plan = _plan()
            gw, srv = await start_gateway(st, plan, {"pools": {"chat/a": {
                "backends": [old.server.url]}}})
            async with aiohttp.ClientSession() as s:
                running = asyncio.create_task(_stream(s, srv.url + CHAT, _chat(40)))
                await asyncio.sleep(0.1)
                gw.reload(plan, BackendsFile.model_validate({"pools": {"chat/a": {
                    "backends": [new.server.url]}}}))
                assert [b.url for b in gw.router.pools["chat/a"].backends] == [new.server.url]
                try:
                    gw.reload(plan, BackendsFile.model_validate({"pools": {"nope": {
                        "backends": [old.server.url]}}}))
                    raise AssertionError("a bad backends file was accepted")
                except Exception as e:  # noqa: BLE001 - TokenfleetError expected
                    assert "not in the plan" in str(e)
                assert [b.url for b in gw.router.pools["chat/a"].backends] == [new.server.url]
                after = await _stream(s, srv.url + CHAT, _chat(3))
                status, events, done = await running
        assert status == 200 and done and _text_tokens(events) == 40
        assert after[0] == 200 and new.engine.completed >= 1

    asyncio.run(run())


def test_per_key_and_per_tier_limits_answer_429_with_retry_after():
    async def run() -> None:
        async with Stack() as st:
            b = await start_fixed_backend(st)
            gw, srv = await start_gateway(st, _plan(), {
                "gateway": {"per_key": {"requests_per_s": 2, "burst_requests": 2}},
                "tiers": {"chat": {"limits": {"max_in_flight": 50}}},
                "pools": {"chat/a": {"backends": [b.server.url]}}},
                keys=["key-aaaaaaaa", "key-bbbbbbbb"])
            async with aiohttp.ClientSession() as s:
                codes = []
                for _ in range(4):
                    async with s.post(srv.url + CHAT, json=_chat(2, stream=False),
                                      headers={"Authorization": "Bearer key-aaaaaaaa"}) as r:
                        codes.append(r.status)
                        if r.status == 429:
                            assert int(r.headers["Retry-After"]) >= 1
                            assert (await r.json())["error"]["code"] == "rate_limit_exceeded"
                # The other key is not affected by the first one's limit.
                async with s.post(srv.url + CHAT, json=_chat(2, stream=False),
                                  headers={"Authorization": "Bearer key-bbbbbbbb"}) as r:
                    other = r.status
            metrics = gw.metrics.render().decode()
        assert codes[:2] == [200, 200] and 429 in codes[2:] and other == 200
        assert "tokenfleet_gateway_limited_total" in metrics

    asyncio.run(run())


def test_emulator_continues_an_assistant_message_and_checks_context():
    async def run() -> None:
        async with Stack() as st:
            emu = Emulator(FixedLatencyEngine(FixedPacing(0.001, 0.001)), "m",
                           max_context_tokens=100)
            st.servers.append(await emu.serve())
            url = emu.server.url + CHAT  # type: ignore[union-attr]
            msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a b"}]
            async with aiohttp.ClientSession() as s:
                async with s.post(url, json={"model": "m", "messages": msgs, "max_tokens": 3,
                                             "continue_final_message": True,
                                             "add_generation_prompt": False}) as r:
                    assert r.status == 200
                    assert (await r.json())["usage"]["completion_tokens"] == 3
                async with s.post(url, json={"model": "m", "messages": msgs[:1],
                                             "continue_final_message": True,
                                             "add_generation_prompt": False}) as r:
                    assert r.status == 400
                async with s.post(url, json={"model": "m", "messages": msgs,
                                             "max_tokens": 200}) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["code"] == "context_length_exceeded"

    asyncio.run(run())


def test_serve_process_reloads_on_sighup_and_drains_on_sigterm(tmp_path):
    import signal

    from tokenfleet.route.child import TOKENFLEET, ChildProcess

    emu = ChildProcess([*TOKENFLEET, "emulate", "--model", "llama-3.1-8b", "--port", "0",
                        "--json", "--fixed-ttft", "0.01", "--fixed-tpot", "0.02"])
    gw = None
    try:
        url = json.loads(emu.wait_for(r"^\{.*\"url\".*\}$").group(0))["url"]
        (tmp_path / "plan.json").write_text(_plan().model_dump_json())
        good = (f"gateway: {{drain_accept_s: 0.5}}\npools:\n  chat/a: {{model: llama-3.1-8b, "
                f"backends: [{url}]}}\n")
        backends = tmp_path / "backends.yaml"
        backends.write_text(good)
        gw = ChildProcess([*TOKENFLEET, "serve", "--plan", str(tmp_path / "plan.json"),
                           "--backends", str(backends), "--port", "0"])
        base = gw.wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)

        async def run() -> list[tuple[int, list[dict], bool]]:
            async with aiohttp.ClientSession() as s:
                streams = [asyncio.create_task(_stream(s, base + CHAT, _chat(50)))
                           for _ in range(10)]
                await asyncio.sleep(0.3)
                backends.write_text("pools: [not, a, mapping")  # a broken file
                gw.p.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.3)
                async with s.get(base + "/health") as r:
                    assert r.status == 200  # still serving on the old configuration
                backends.write_text(good)
                gw.p.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                async with s.get(base + "/health") as r:
                    assert r.status == 503 and (await r.json())["status"] == "draining"
                return await asyncio.gather(*streams)

        results = asyncio.run(run())
        assert gw.p.wait(15) == 0
        assert all(st_ == 200 and done and _text_tokens(ev) == 50 for st_, ev, done in results)
        assert any("reload refused" in line for line in gw.lines)
    finally:
        if gw is not None:
            gw.stop()
        emu.stop()
