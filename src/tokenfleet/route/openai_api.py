"""The slice of the OpenAI HTTP API that tokenfleet speaks: request parsing and
validation, prompt-length estimation, and the error format.

Shared by the gateway (which must size and route a request before forwarding it)
and the emulator (which must know how long a prompt is to pace its prefill).

Token counting is approximate on purpose: the gateway cannot know each backend's
tokenizer. We use **ceil(characters / 4)** — OpenAI's rule of thumb for English
text with BPE tokenizers — over all text of the prompt. The load generator builds
prompts of exactly ``4 * n`` characters, so a trace's ``input_tokens`` round-trips.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

CHARS_PER_TOKEN = 4
# Output length assumed for bucketing when a request gives no max_tokens (tokens);
# also what the emulator generates then.
DEFAULT_MAX_TOKENS = 256

Kind = Literal["chat", "completion"]


class ApiError(Exception):
    """An error answered to the client in OpenAI's format:
    ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """The JSON object OpenAI returns for errors (also used as an SSE error event)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def approx_tokens(text: str) -> int:
    """Approximate token count of ``text``: ceil(chars / 4) (see module docstring)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_of_tokens(n: int) -> str:
    """A prompt that :func:`approx_tokens` counts as exactly ``n`` tokens."""
    # Repeat a 16-character phrase and cut it to exactly 4n characters.
    chars = n * CHARS_PER_TOKEN
    return ("tokenfleet load " * (chars // 16 + 1))[:chars]


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What routing and pacing need from a request body; ``body`` is the parsed JSON."""

    kind: Kind
    model: str
    stream: bool
    max_tokens: int | None  # as the client gave it (None: not given)
    prompt_tokens: int  # approximate, see module docstring
    include_usage: bool  # stream_options.include_usage
    body: dict[str, Any]
    # The body is strict JSON (no NaN / Infinity, integers within 64 bits), so
    # :func:`dump_json` may re-encode it with orjson without changing any value.
    strict_json: bool = True

    @property
    def output_tokens(self) -> int:
        """Output length used for bucketing and pacing: ``max_tokens`` or the default."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS


def _text_of_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: count the text parts
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise ApiError(400, f"{where}[{i}] must be an object", param=where)
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string, a list of parts or null", param=where)


def _prompt_tokens(kind: Kind, body: dict[str, Any]) -> int:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' is required and must be a non-empty list",
                           param="messages")
        total = 0
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(400, f"messages[{i}] must be an object", param="messages")
            if not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}].role must be a string", param="messages")
            total += approx_tokens(_text_of_content(m.get("content"), f"messages[{i}].content"))
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return approx_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(approx_tokens(p) for p in prompt)
        if all(isinstance(p, int) for p in prompt):  # already token ids
            return len(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return sum(len(p) for p in prompt)
    raise ApiError(400, "'prompt' is required: a string, a list of strings or token ids",
                   param="prompt")


# Deepest nesting of arrays/objects accepted in a request body. OpenAI's bodies need a
# handful of levels; a deep body could only be an attack on the parser's recursion.
MAX_JSON_DEPTH = 64
_BRACKET_OR_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of the JSON text ``raw`` (brackets inside strings do not count),
    scanning no further than the first point it exceeds ``limit``."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return 0  # cannot be deeper than the limit: skip the scan (the common case)
    depth = deepest = 0
    for m in _BRACKET_OR_STRING.finditer(raw):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is out of range")
    return v


# 19+ digits in a row may be an integer beyond 64 bits, which orjson would read as a
# float (json reads it exactly). Found by mapping every digit to "0" and searching for
# a run of zeros: several times faster than a regular expression.
_DIGITS_TO_0 = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def load_json(raw: bytes) -> tuple[Any, bool]:
    """``(value, strict)``: orjson first (several times faster than ``json`` on
    request bodies, which the gateway parses on every request); what orjson refuses or
    would read differently (NaN, Infinity, integers beyond 64 bits, lone surrogates,
    non-UTF-8 encodings) goes to ``json``, with ``strict=False``. Raises ``ValueError``
    (``json``'s error) for invalid JSON, nesting deeper than :data:`MAX_JSON_DEPTH`,
    and non-finite numbers (``NaN``, ``Infinity``, ``1e999``)."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_JSON_DEPTH} levels")
    if raw.translate(_DIGITS_TO_0).find(_LONG_RUN) < 0:
        try:  # orjson refuses NaN, Infinity and 1e999 itself
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float), False


def dump_json(obj: Any, strict: bool = True) -> bytes:
    """``obj`` as compact UTF-8 JSON: orjson for values :func:`load_json` parsed
    strictly, ``json`` otherwise (orjson would turn NaN into null)."""
    if strict:
        try:
            return orjson.dumps(obj)
        except (orjson.JSONEncodeError, TypeError):  # e.g. nesting deeper than orjson's
            pass
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_request(raw: bytes, kind: Kind) -> ParsedRequest:
    """Parse and validate a completions (``kind='completion'``) or chat-completions
    body. Raises :class:`ApiError` (HTTP 400) with a message naming the field."""
    try:
        body, strict = load_json(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a non-empty string",
                       param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ApiError(400, "'max_tokens' must be an integer >= 1", param="max_tokens")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool(opts.get("include_usage")) if opts else False
    return ParsedRequest(kind=kind, model=model, stream=stream, max_tokens=max_tokens,
                         prompt_tokens=_prompt_tokens(kind, body), include_usage=include_usage,
                         body=body, strict_json=strict)


def check_context(parsed: ParsedRequest, max_context_tokens: int | None) -> None:
    """Refuse (HTTP 400 ``context_length_exceeded``, as vLLM and OpenAI answer) a
    request whose prompt plus ``max_tokens`` cannot fit the model's context. The prompt
    length is the estimate of :func:`approx_tokens`; the backend checks exactly."""
    if max_context_tokens is None:
        return
    want = parsed.prompt_tokens + (parsed.max_tokens or 0)
    if parsed.prompt_tokens >= max_context_tokens or want > max_context_tokens:
        raise ApiError(400, f"This model's maximum context length is {max_context_tokens} "
                            f"tokens. However, you requested about {want} tokens "
                            f"({parsed.prompt_tokens} in the prompt, {parsed.max_tokens or 0} "
                            f"in the completion). Please reduce the length of the prompt or "
                            f"max_tokens.", code="context_length_exceeded",
                       param="max_tokens" if parsed.prompt_tokens < max_context_tokens
                       else "messages")
