"""Resuming a stream whose backend failed after the client got its first tokens.

The gateway keeps the complete SSE events it forwarded (:class:`Delivered`). When the
backend dies mid-stream, the generation goes on at another backend with the prompt
plus the text produced so far — ``/v1/completions``: prompt + partial text; chat: a
trailing assistant message with ``continue_final_message`` (and
``add_generation_prompt: false``), the form vLLM and SGLang accept — and ``max_tokens``
less what was delivered. The new backend's events are rewritten to carry the first
backend's completion id and its ``usage`` summed with what was delivered before, so
the client sees one response.

Pure functions over bytes and dicts: no I/O, tested without sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenfleet.route.openai_api import ParsedRequest, dump_json, load_json

# Raw events kept per stream before they are folded into text (bytes): a long stream
# is held as its text (~1/30 of the events' size), not as its events; 10,000 streams
# hold at most ~160 MiB of events.
_FOLD_BYTES = 16 * 1024


@dataclass(slots=True)
class Delivered:
    """What the client has received of one stream so far."""

    raw: list[bytes] = field(default_factory=list)  # complete events not yet folded
    raw_bytes: int = 0
    text: list[str] = field(default_factory=list)  # folded content pieces
    tokens: int = 0  # content events folded (one token each for vLLM, SGLang, emulator)
    completion_id: str | None = None  # the id the client saw first
    id_bytes: bytes | None = None  # the same, as it appears in the events
    finished: bool = False  # a finish_reason arrived: everything was generated
    resumable: bool = True  # False once a tool call, several choices or logprobs appear
    done: bool = False  # "[DONE]" reached the client
    segments: int = 1  # backends that served this stream

    def add(self, events: bytes) -> None:
        """Record complete events (whole ``data: ...\\n\\n`` blocks) sent to the client."""
        self.raw.append(events)
        self.raw_bytes += len(events)
        if self.raw_bytes > _FOLD_BYTES:
            self.fold()

    def fold(self) -> None:
        """Parse the kept events into text and a token count."""
        if not self.raw:
            return
        data = b"".join(self.raw)
        self.raw.clear()
        self.raw_bytes = 0
        for line in data.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                obj = load_json(payload)[0]
            except ValueError:
                self.resumable = False
                continue
            if not isinstance(obj, dict):
                continue
            self._event(obj)

    def _event(self, obj: dict[str, Any]) -> None:
        if self.completion_id is None and isinstance(obj.get("id"), str):
            self.completion_id = obj["id"]
        choices = obj.get("choices") or []
        if not isinstance(choices, list):
            return
        for c in choices:
            if not isinstance(c, dict):
                continue
            if c.get("index", 0) != 0:
                self.resumable = False
            delta = c.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else c.get("text")
            if isinstance(delta, dict) and (delta.get("tool_calls") or delta.get("function_call")):
                self.resumable = False
            if isinstance(text, str) and text:
                self.text.append(text)
                self.tokens += 1
            if c.get("finish_reason"):
                self.finished = True

    @property
    def partial_text(self) -> str:
        return "".join(self.text)


def can_resume(parsed: ParsedRequest) -> bool:
    """Whether a request's stream can be continued elsewhere as text: one choice, a
    text prompt, no echo."""
    b = parsed.body
    if not parsed.stream or b.get("n", 1) not in (1, None) or b.get("echo"):
        return False
    if parsed.kind == "chat":
        return isinstance(b.get("messages"), list)
    p = b.get("prompt")
    return isinstance(p, str) or (isinstance(p, list) and len(p) == 1
                                  and isinstance(p[0], str))


def continuation_body(parsed: ParsedRequest, model: str, d: Delivered) -> bytes | None:
    """The request that continues the stream at another backend, or None when nothing
    is left to generate (``max_tokens`` already delivered)."""
    body = dict(parsed.body)
    body["model"] = model
    d.fold()
    delivered = d.tokens
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int):
            left = body[key] - delivered
            if left < 1:
                return None
            body[key] = left
    text = d.partial_text
    if parsed.kind == "chat":
        messages = list(body["messages"])
        last = messages[-1] if messages else None
        if (body.get("continue_final_message") and isinstance(last, dict)
                and last.get("role") == "assistant" and isinstance(last.get("content"), str)):
            # The client itself asked to continue its assistant message: extend it.
            messages[-1] = {**last, "content": last["content"] + text}
        else:
            messages.append({"role": "assistant", "content": text})
        body["messages"] = messages
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        p = body["prompt"]
        body["prompt"] = p + text if isinstance(p, str) else [p[0] + text]
    return dump_json(body, parsed.strict_json)


def split_events(pending: bytes, chunk: bytes) -> tuple[bytes, bytes]:
    """``(complete events, rest)`` of ``pending + chunk``: only whole SSE events go to
    the client, so a backend dying mid-event never leaves half an event there."""
    data = pending + chunk if pending else chunk
    cut = data.rfind(b"\n\n")
    if cut < 0:
        return b"", data
    return data[:cut + 2], data[cut + 2:]


def first_id(events: bytes) -> bytes | None:
    """The ``"id":"..."`` of the first event in ``events`` (bytes between the quotes)."""
    at = events.find(b'"id":"')
    if at < 0:
        at = events.find(b'"id": "')
        if at < 0:
            return None
        at += 7
    else:
        at += 6
    end = events.find(b'"', at)
    return events[at:end] if end > at else None


def rewrite_usage(events: bytes, prior_tokens: int) -> bytes:
    """Add ``prior_tokens`` (delivered by earlier backends) to the completion tokens of
    any ``usage`` in ``events``, and take them off its prompt tokens (the continuation's
    prompt held them)."""
    if b'"usage"' not in events:
        return events
    out = []
    for line in events.split(b"\n"):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                obj = load_json(line[5:].strip())[0]
                u = obj.get("usage") if isinstance(obj, dict) else None
                if isinstance(u, dict) and isinstance(u.get("completion_tokens"), int):
                    c = u["completion_tokens"] + prior_tokens
                    p = u.get("prompt_tokens")
                    if isinstance(p, int):
                        u["prompt_tokens"] = max(p - prior_tokens, 0)
                    u["completion_tokens"] = c
                    u["total_tokens"] = (u.get("prompt_tokens") or 0) + c
                    line = b"data: " + dump_json(obj)
            except (ValueError, TypeError):
                pass
        out.append(line)
    return b"\n".join(out)
