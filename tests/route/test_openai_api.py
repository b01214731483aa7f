from __future__ import annotations

import json
import math

import pytest

from tokenfleet.route.openai_api import (
    DEFAULT_MAX_TOKENS,
    ApiError,
    approx_tokens,
    dump_json,
    load_json,
    parse_request,
    prompt_of_tokens,
)


def _raw(**body) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize("n", [0, 1, 3, 16, 1000, 4097])
def test_prompt_of_tokens_round_trips(n):
    assert approx_tokens(prompt_of_tokens(n)) == n


def test_chat_request_parsed():
    p = parse_request(_raw(model="chat", messages=[
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 8},
                                     {"type": "image_url", "image_url": {"url": "u"}}]}],
        max_tokens=50, stream=True, stream_options={"include_usage": True}), "chat")
    assert (p.model, p.stream, p.max_tokens, p.include_usage) == ("chat", True, 50, True)
    assert p.prompt_tokens == 10 + 2
    assert p.output_tokens == 50


def test_completion_prompt_forms():
    assert parse_request(_raw(model="m", prompt="abcdefgh"), "completion").prompt_tokens == 2
    assert parse_request(_raw(model="m", prompt=["abcd", "ef"]), "completion").prompt_tokens == 2
    assert parse_request(_raw(model="m", prompt=[1, 2, 3]), "completion").prompt_tokens == 3
    p = parse_request(_raw(model="m", prompt="a"), "completion")
    assert p.max_tokens is None and p.output_tokens == DEFAULT_MAX_TOKENS


def test_max_completion_tokens_wins():
    p = parse_request(_raw(model="m", prompt="a", max_tokens=5, max_completion_tokens=9),
                      "completion")
    assert p.max_tokens == 9


@pytest.mark.parametrize("raw, kind, match", [
    (b"{not json", "chat", "not valid JSON"),
    (b"\xff\xfe", "chat", "not valid JSON"),
    (b"[1, 2]", "chat", "must be a JSON object"),
    (_raw(messages=[{"role": "user", "content": "hi"}]), "chat", "'model' is required"),
    (_raw(model="", messages=[]), "chat", "'model' is required"),
    (_raw(model="m", messages=[]), "chat", "non-empty list"),
    (_raw(model="m", messages=["hi"]), "chat", r"messages\[0\] must be an object"),
    (_raw(model="m", messages=[{"content": "hi"}]), "chat", "role must be a string"),
    (_raw(model="m", messages=[{"role": "user", "content": 5}]), "chat", "content must be"),
    (_raw(model="m", prompt="x", max_tokens=0), "completion", "max_tokens"),
    (_raw(model="m", prompt="x", max_tokens="9"), "completion", "max_tokens"),
    (_raw(model="m", prompt="x", max_tokens=True), "completion", "max_tokens"),
    (_raw(model="m", prompt="x", stream="yes"), "completion", "'stream'"),
    (_raw(model="m", prompt="x", stream_options=[1]), "completion", "stream_options"),
    (_raw(model="m"), "completion", "'prompt' is required"),
    (_raw(model="m", prompt=[1, "a"]), "completion", "'prompt' is required"),
])
def test_bad_requests_are_400_with_a_message(raw, kind, match):
    with pytest.raises(ApiError, match=match) as e:
        parse_request(raw, kind)
    assert e.value.status == 400
    body = e.value.body()["error"]
    assert body["type"] == "invalid_request_error" and body["message"]


def test_json_is_read_and_rewritten_exactly():
    # orjson where it reads exactly what json reads; json for the rest.
    assert load_json(b'{"a": [1, 2.5, "x"]}') == ({"a": [1, 2.5, "x"]}, True)
    big = 123456789012345678901234567890  # beyond 64 bits: orjson would make it a float
    assert load_json(b'{"seed": %d}' % big) == ({"seed": big}, False)
    # Non-finite numbers are not JSON (RFC 8259): refused, not forwarded.
    for bad in (b'{"t": NaN}', b'{"t": Infinity}', b'{"t": -Infinity}', b'{"t": 1e999}',
                b'{"t": 1e999, "seed": %d}' % big):
        with pytest.raises(ValueError):
            load_json(bad)
    assert dump_json({"t": math.nan}, False) == b'{"t":NaN}'  # not null, as orjson would write
    assert dump_json({"seed": big}, False) == b'{"seed":%d}' % big
    assert dump_json({"m": "é"}) == '{"m":"é"}'.encode()
    with pytest.raises(ValueError):
        load_json(b"{nope")
    p = parse_request(_raw(model="m", prompt="a", seed=big), "completion")
    assert p.body["seed"] == big and not p.strict_json
