"""Property-based fuzzing (Hypothesis) of the OpenAI endpoints and of every file reader:
whatever comes in, the answer is a 4xx/2xx with a JSON body (never a 500, never a
traceback), and a file reader either reads the file or raises one TokenfleetError.

Each test runs ``TOKENFLEET_FUZZ_EXAMPLES`` cases (default 150, a few seconds in all);
CI sets it to 2500, which makes > 10,000 cases over the five tests.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import load_plan
from tokenfleet.route.auth import ApiKeys
from tokenfleet.route.config import load_backends
from tokenfleet.route.openai_api import ApiError, parse_request
from tokenfleet.workload.readers import read_trace
from tokenfleet.yamlio import read_yaml

from .conftest import BUCKET, Stack, make_plan, start_fixed_backend, start_gateway, unit

N = int(os.environ.get("TOKENFLEET_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=20))
_json = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=20)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]),
                                  "content": st.one_of(st.text(max_size=40), _json)})
_bodies = st.one_of(
    st.fixed_dictionaries({"model": st.sampled_from(["chat", "nope", "", 5]),
                           "messages": st.one_of(st.lists(_message, max_size=3), _json)},
                          optional={"max_tokens": st.one_of(st.integers(), _json),
                                    "stream": st.one_of(st.booleans(), _json),
                                    "stream_options": _json, "n": _json,
                                    "continue_final_message": _json}),
    st.dictionaries(st.sampled_from(["model", "prompt", "messages", "max_tokens", "stream"]),
                    _json, max_size=5))


def _raw(draw_body: object) -> bytes:
    return json.dumps(draw_body).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=300), _bodies.map(_raw)),
       st.sampled_from(["chat", "completion"]))
def test_parse_request_raises_only_api_errors(raw, kind):
    try:
        parse_request(raw, kind)
    except ApiError as e:
        assert 400 <= e.status < 500 and e.message


@pytest.fixture(scope="module")
def gateway_url():
    """One emulated backend behind one gateway, on a loop of their own thread."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        async with Stack() as stack:
            b = await start_fixed_backend(stack, ttft_s=0.0, tpot_s=0.0)
            plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0}})
            _, srv = await start_gateway(stack, plan, {"pools": {"chat/a": {
                "backends": [b.server.url]}}})
            box["url"] = srv.url
            box["stop"] = stop = asyncio.Event()
            ready.set()
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(20)
    yield box["url"]
    loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
    t.join(10)


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), _bodies.map(_raw)),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_endpoints_never_answer_500(gateway_url, body, path):
    async def post() -> tuple[int, bytes, str]:
        async with aiohttp.ClientSession() as s, s.post(
                gateway_url + path, data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.read(), r.headers.get("Content-Type", "")

    status, data, ctype = asyncio.run(post())
    assert status < 500, data[:300]
    if status >= 400:
        assert json.loads(data)["error"]["message"]
    elif "event-stream" in ctype:
        assert data.endswith(b"data: [DONE]\n\n")


_files = st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode),
                   _json.map(lambda v: json.dumps(v).encode()))


@FUZZ
@given(data=_files)
def test_yaml_and_backends_readers_raise_one_clear_error(tmp_path_factory, data):
    p: Path = tmp_path_factory.mktemp("f") / "backends.yaml"
    p.write_bytes(data)
    for read in (read_yaml, load_backends):
        try:
            read(p)
        except TokenfleetError as e:
            # One line per problem, each naming the file (never a traceback).
            assert all(line.startswith(str(p)) for line in str(e).strip().splitlines())


@FUZZ
@given(data=_files)
def test_plan_and_keys_readers_raise_one_clear_error(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("f")
    plan, keys = d / "plan.json", d / "keys.txt"
    plan.write_bytes(data)
    keys.write_bytes(data)
    for read in (load_plan, lambda p: ApiKeys.load(p, env_var=None)):
        for p in (plan, keys):
            try:
                read(p)
            except TokenfleetError as e:
                assert str(e).strip()


@FUZZ
@given(data=_files, suffix=st.sampled_from([".csv", ".jsonl"]))
def test_trace_reader_raises_one_clear_error(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("f") / f"trace{suffix}"
    p.write_bytes(data)
    try:
        read_trace(p)
    except TokenfleetError as e:
        assert str(e).strip()
