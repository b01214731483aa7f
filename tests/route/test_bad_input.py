"""Bad input never crashes the gateway: each case gets the right HTTP status and an
OpenAI-format JSON error, and the server keeps serving afterwards. API keys never
appear in logs or responses."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from .conftest import BUCKET, Stack, make_plan, start_fixed_backend, start_gateway, unit

KEY = "sk-test-key-0123456789"
WRONG = "sk-wrong-key-9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# (method, path, headers, body bytes or None, expected status, expected error code)
CASES = [
    ("POST", "/v1/chat/completions", AUTH, b"{not json", 400, None),
    ("POST", "/v1/chat/completions", AUTH, b"", 400, None),
    ("POST", "/v1/chat/completions", AUTH, b'"just a string"', 400, None),
    ("POST", "/v1/chat/completions", AUTH, b'{"messages": []}', 400, None),
    ("POST", "/v1/chat/completions", AUTH, b'{"model": "chat"}', 400, None),
    ("POST", "/v1/chat/completions", AUTH,
     b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
     400, None),
    ("POST", "/v1/completions", AUTH, b'{"model": "chat", "prompt": {"a": 1}}', 400, None),
    ("POST", "/v1/chat/completions", AUTH,
     b'{"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions", {}, None, 401, "invalid_api_key"),
    ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {WRONG}"}, None, 401,
     "invalid_api_key"),
    ("POST", "/v1/chat/completions", {"Authorization": KEY}, None, 401, "invalid_api_key"),
    ("GET", "/v1/models", {}, None, 401, "invalid_api_key"),
    ("GET", "/v1/chat/completions", AUTH, None, 405, "method_not_allowed"),
    ("POST", "/v2/anything", AUTH, b"{}", 404, "not_found"),
]


def test_bad_requests_get_proper_errors_and_never_crash(caplog):
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        async with Stack() as st:
            backend = await start_fixed_backend(st)
            _, srv = await start_gateway(st, plan, {
                "gateway": {"max_body_bytes": 2048},
                "pools": {"chat/a": {"backends": [backend.server.url]}}}, keys=[KEY])
            async with aiohttp.ClientSession() as s:
                for method, path, headers, body, status, code in CASES:
                    data = body if body is not None else aiohttp.payload.BytesPayload(
                        b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}')
                    async with s.request(method, srv.url + path, data=data,
                                         headers=headers) as r:
                        assert r.status == status, (method, path, body)
                        assert r.content_type == "application/json"
                        err = (await r.json())["error"]
                        assert err["message"] and err["type"], (path, body)
                        if code:
                            assert err["code"] == code
                        if status == 401:
                            assert r.headers["WWW-Authenticate"] == "Bearer"
                            assert WRONG not in err["message"] and KEY not in err["message"]

                # Oversized bodies: declared by Content-Length, or streamed (chunked).
                big = {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}
                async with s.post(srv.url + "/v1/chat/completions", json=big,
                                  headers=AUTH) as r:
                    assert r.status == 413
                    assert (await r.json())["error"]["code"] == "request_too_large"

                async def chunks():  # no Content-Length: the limit applies while reading
                    for _ in range(10):
                        yield b"x" * 1000

                async with s.post(srv.url + "/v1/chat/completions", data=chunks(),
                                  headers=AUTH) as r:
                    assert r.status == 413
                    assert (await r.json())["error"]["code"] == "request_too_large"

                # Health and metrics are open; the server still serves real requests.
                async with s.get(srv.url + "/health") as r:
                    assert r.status == 200
                async with s.get(srv.url + "/metrics") as r:
                    assert r.status == 200
                for headers in (AUTH, {"api-key": KEY}):
                    async with s.post(srv.url + "/v1/chat/completions", json=GOOD,
                                      headers=headers) as r:
                        assert r.status == 200, await r.text()
                async with s.get(srv.url + "/v1/models", headers=AUTH) as r:
                    models = await r.json()
                    assert [m["id"] for m in models["data"]] == ["chat"]
                    assert models["data"][0]["tokenfleet"]["slo_ttft_s"] == 1.0

    asyncio.run(run())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged and WRONG not in logged


def test_upstream_key_is_sent_but_client_key_is_not(monkeypatch):
    """The client's key authenticates at the gateway only; backends get their own."""
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})
    monkeypatch.setenv("UPSTREAM_KEY_FOR_TEST", "sk-upstream-abcdef")
    seen: list[str | None] = []

    async def run() -> None:
        from aiohttp import web

        from tokenfleet.route.server import RunningServer

        async def chat(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        async with Stack() as st:
            upstream = await RunningServer(app).start()
            st.servers.append(upstream)
            _, srv = await start_gateway(st, plan, {
                "gateway": {"health": {"path": None}},
                "pools": {"chat/a": {"backends": [upstream.url],
                                     "api_key_env": "UPSTREAM_KEY_FOR_TEST"}}}, keys=[KEY])
            async with aiohttp.ClientSession() as s, s.post(
                    srv.url + "/v1/chat/completions", json=GOOD, headers=AUTH) as r:
                assert r.status == 200

    asyncio.run(run())
    assert seen == ["Bearer sk-upstream-abcdef"]


@pytest.mark.parametrize("n", [50])
def test_many_malformed_requests_in_parallel(n):
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})

    async def run() -> None:
        async with Stack() as st:
            backend = await start_fixed_backend(st)
            gw, srv = await start_gateway(st, plan, {
                "pools": {"chat/a": {"backends": [backend.server.url]}}})
            bodies = [b"{", b"[]", b"null", b'{"model": 5}', b"\x00\x01\x02"] * (n // 5)

            async def one(s: aiohttp.ClientSession, b: bytes) -> int:
                async with s.post(srv.url + "/v1/chat/completions", data=b) as r:
                    await r.read()
                    return r.status

            async with aiohttp.ClientSession() as s:
                statuses = await asyncio.gather(*(one(s, b) for b in bodies))
                assert set(statuses) == {400}
                async with s.post(srv.url + "/v1/chat/completions", json=GOOD) as r:
                    assert r.status == 200
            assert gw.in_flight == 0

    asyncio.run(run())
