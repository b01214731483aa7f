"""An OpenAI-compatible server that behaves like a pool of one chip kind.

``tokenfleet emulate --accelerator maia-200 --model llama-3.1-70b --replicas 2`` serves
``/v1/chat/completions`` and ``/v1/completions`` (streaming and not), ``/v1/models``
and ``/health``, with tokens paced by :mod:`tokenfleet.route.pace` (continuous
batching on the performance model). It lets the whole stack — gateway, pools, load
generator — run on one machine, in tests and in demos.

Faults can be injected at start-up or at run time through ``POST /admin/faults``
(``{"slowdown": 3.0, "error_rate": 0.2, "die": true}``): *slowdown* stretches every
engine step, *error_rate* answers that fraction of requests with HTTP 500 before any
token, *die* drops every connection at once and stops listening, like a process
that crashed. Bind it to loopback: the admin endpoint has no authentication.

Disaggregated serving (``role``), in the shape of vLLM's KV-connector requests:

* a *prefill* emulator runs the prompt and answers one token, whatever ``max_tokens``
  asks (a prefill engine hands the rest to a decode engine); a non-streamed answer
  carries ``kv_transfer_params`` saying where the KV cache waits
  (``do_remote_prefill: true``, the engine id, the request id, the prompt tokens);
* a *decode* emulator given those ``kv_transfer_params`` waits the KV handover time of
  its pair's link (``handover_s``, from :mod:`tokenfleet.perf.disagg`) and then joins
  the running batch with no prompt to compute. Without them it prefills the prompt
  itself, as a decode engine that got no KV cache does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.unit import Layout, UnitModel
from tokenfleet.plan.schema import PlanUnit
from tokenfleet.plan.units import unit_model
from tokenfleet.route.openai_api import (
    ApiError,
    Kind,
    ParsedRequest,
    check_context,
    error_body,
    parse_request,
)
from tokenfleet.route.pace import (
    Engine,
    FixedLatencyEngine,
    ModelPacing,
    Overloaded,
    Sequence,
    default_max_batch,
)
from tokenfleet.route.server import RunningServer

Role = Literal["both", "prefill", "decode"]

# Text of generated tokens: plain ASCII words, so they go into JSON without escaping.
_WORDS = (" the", " fleet", " routes", " tokens", " to", " the", " cheapest", " pool")


@dataclass
class Faults:
    """Injected faults; see the module docstring."""

    slowdown: float = 1.0  # multiplies every step time; 1 = normal
    error_rate: float = 0.0  # fraction of requests answered with HTTP 500
    dead: bool = False

    def update(self, d: dict[str, Any]) -> None:
        unknown = set(d) - {"slowdown", "error_rate", "die"}
        if unknown:
            raise ApiError(400, f"unknown fault(s) {sorted(unknown)}; allowed: slowdown, "
                                f"error_rate, die")
        if "slowdown" in d:
            v = d["slowdown"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ApiError(400, "'slowdown' must be a number > 0 (1 = normal speed)",
                               param="slowdown")
            self.slowdown = float(v)
        if "error_rate" in d:
            v = d["error_rate"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ApiError(400, "'error_rate' must be a number in [0, 1]",
                               param="error_rate")
            self.error_rate = float(v)


def _check_continuation(parsed: ParsedRequest) -> None:
    """``continue_final_message`` as vLLM takes it: the last message is the assistant's
    and is continued (so no generation prompt is added); the prompt counted includes it,
    and only ``max_tokens`` more are generated — how the gateway resumes a stream."""
    b = parsed.body
    if not b.get("continue_final_message"):
        return
    msgs = b.get("messages")
    if parsed.kind != "chat" or not isinstance(msgs, list) or not msgs \
            or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
        raise ApiError(400, "continue_final_message needs a final message with role "
                            "'assistant'", param="continue_final_message")
    if b.get("add_generation_prompt", True) is not False:
        raise ApiError(400, "continue_final_message and add_generation_prompt cannot both "
                            "be true", param="add_generation_prompt")


@dataclass(frozen=True)
class PoolSpec:
    """What the emulator imitates: a model on ``replicas`` units of one chip kind."""

    model: str
    accelerator: str
    replicas: int = 1
    count: int | None = None  # chips per replica; None = cheapest count that fits
    precision: str = "auto"
    kv_precision: str | None = None
    layout: Layout | None = None
    engine: str | None = None
    max_batch: int | None = None  # per replica; None = what KV memory holds
    speculative: str | None = None  # perf/speculative.py syntax (a plan unit's setting)

    @classmethod
    def from_plan_unit(cls, unit: PlanUnit) -> PoolSpec:
        return cls(model=unit.model, accelerator=unit.accelerator, replicas=unit.replicas,
                   count=unit.chips_per_replica, precision=unit.precision,
                   kv_precision=unit.kv_precision, layout=unit.layout, engine=unit.engine,
                   # a prefill half does not decode (as the simulator runs it)
                   speculative=unit.speculative if unit.role != "prefill" else None)


def build_unit(spec: PoolSpec) -> UnitModel:
    """The performance model of one replica of ``spec`` (same inputs as the planner)."""
    from tokenfleet.perf.estimate import Query, best_count, estimate

    if spec.layout is not None and spec.precision != "auto":
        precision, layout = spec.precision, spec.layout
    else:
        q = Query(model=spec.model, accelerator=spec.accelerator, count=spec.count or 1,
                  precision=spec.precision, kv_precision=spec.kv_precision, engine=spec.engine)
        e = estimate(q) if spec.count else best_count(q)
        if not e.fits or e.layout is None:
            raise TokenfleetError(f"{spec.model} on {spec.count or 'any count of'} "
                                  f"{spec.accelerator}: {e.reason or 'does not fit'}")
        precision, layout = e.precision, spec.layout or e.layout
    unit, _group = unit_model(spec.model, spec.accelerator, precision, spec.kv_precision,
                              layout, spec.engine, speculative=spec.speculative)
    return unit


def build_engine(spec: PoolSpec, max_queue: int = 4096) -> tuple[Engine, UnitModel]:
    """A batching engine for ``spec``: one loop per data-parallel replica."""
    unit = build_unit(spec)
    max_batch = spec.max_batch or default_max_batch(unit)
    loops = spec.replicas * unit.layout.dp
    return Engine(ModelPacing(unit), replicas=loops, max_batch=max_batch,
                  max_queue=max_queue), unit


class Emulator:
    """The HTTP front of an engine. ``served_model`` is the name clients must use."""

    def __init__(self, engine: Engine | FixedLatencyEngine, served_model: str,
                 faults: Faults | None = None, seed: int = 0, exit_on_die: bool = False,
                 info: dict[str, Any] | None = None,
                 max_context_tokens: int | None = None, role: Role = "both",
                 handover_s: Callable[[int], float] | None = None) -> None:
        self.engine = engine
        self.role: Role = role
        # decode role: seconds the KV cache of a prompt of n tokens takes to arrive
        self.handover_s = handover_s
        self.engine_id = os.urandom(6).hex()
        self.served_model = served_model
        self.faults = faults or Faults()
        self.engine.slowdown = self.faults.slowdown
        self.rng = random.Random(seed)
        self.exit_on_die = exit_on_die
        self.info = info or {}
        self.max_context_tokens = max_context_tokens  # prompt + max_tokens; None: no limit
        self.server: RunningServer | None = None
        self.errors_injected = 0
        self.rejected = 0
        self.kv_sent = 0  # prefill role: answers that handed a KV cache on
        self.kv_received = 0  # decode role: requests that arrived with their KV cache
        # Time to first token inside this server (handover wait included), summed over
        # requests: the part of TTFT a pool adds.
        self.ttft_sum_s = 0.0
        self.ttft_n = 0
        self._created = int(time.time())

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024,
                              middlewares=[self._errors_middleware])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/stats", self._stats)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/faults", self._get_faults)
        app.router.add_post("/admin/faults", self._set_faults)

        async def on_startup(_: web.Application) -> None:
            self.engine.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.engine.stop()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        """Start listening; returns the running server (``.url``, ``.port``)."""
        self.server = await RunningServer(self.make_app(), host, port).start()
        return self.server

    async def die(self) -> None:
        """Crash now: stop listening, reset every open connection, drop all work."""
        self.faults.dead = True
        if self.server is not None:
            self.server.stop_listening()
            self.server.abort_connections()
        await self.engine.stop()
        if self.exit_on_die:
            os._exit(3)

    # ---- handlers -------------------------------------------------------------------

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return web.json_response(e.body(), status=e.status, headers=e.headers)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return web.json_response(error_body(e.reason, "invalid_request_error"),
                                     status=e.status)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.served_model, "object": "model", "created": self._created,
             "owned_by": "tokenfleet-emulator", "tokenfleet": self.info}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "running": self.engine.running,
                                  "waiting": self.engine.waiting})

    async def _stats(self, request: web.Request) -> web.Response:
        e = self.engine
        return web.json_response({"running": e.running, "waiting": e.waiting,
                                  "completed": e.completed, "cancelled": e.cancelled,
                                  "errors_injected": self.errors_injected,
                                  "rejected": self.rejected, "role": self.role,
                                  "kv_sent": self.kv_sent, "kv_received": self.kv_received,
                                  "mean_ttft_s": self.ttft_sum_s / max(self.ttft_n, 1),
                                  **self.info})

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM's load gauges (see route.backend_metrics). KV use is approximated by
        running sequences over the batch slots, which the emulator sizes from KV
        memory at typical lengths."""
        from tokenfleet.route.backend_metrics import prometheus_text

        e = self.engine
        slots = getattr(e, "max_batch", 0) * max(len(getattr(e, "_replicas", [])), 1)
        kv = min(1.0, e.running / slots) if slots else 0.0
        return web.Response(text=prometheus_text(e.running, e.waiting, kv, self.served_model),
                            content_type="text/plain")

    async def _get_faults(self, request: web.Request) -> web.Response:
        f = self.faults
        return web.json_response({"slowdown": f.slowdown, "error_rate": f.error_rate,
                                  "dead": f.dead})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "body must be JSON such as {\"slowdown\": 2.0}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        die = body.get("die", False)
        if not isinstance(die, bool):
            raise ApiError(400, "'die' must be true or false", param="die")
        self.faults.update(body)
        self.engine.slowdown = self.faults.slowdown
        if die:
            # Answer first, then crash: the caller learns the fault was applied.
            asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(
                self.die()))
        return await self._get_faults(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        parsed = parse_request(await request.read(), kind)
        if parsed.model != self.served_model:
            raise ApiError(404, f"The model `{parsed.model[:200]}` does not exist; this "
                                f"server serves `{self.served_model}`",
                           code="model_not_found", param="model")
        check_context(parsed, self.max_context_tokens)
        _check_continuation(parsed)
        if self.faults.error_rate and self.rng.random() < self.faults.error_rate:
            self.errors_injected += 1
            raise ApiError(500, "injected fault: internal server error", "server_error",
                           "injected_fault")
        remote_kv = self._remote_kv(parsed)
        wait_s = 0.0
        if remote_kv:
            self.kv_received += 1
            if self.handover_s is not None:
                # The KV cache crosses the pair's link before the sequence can join.
                wait_s = self.handover_s(parsed.prompt_tokens)
                await asyncio.sleep(wait_s)
        # A prefill engine stops after the first token: the decode pool makes the rest.
        max_tokens = 1 if self.role == "prefill" else parsed.output_tokens
        try:
            seq = self.engine.submit(parsed.prompt_tokens, max_tokens, remote_kv=remote_kv)
        except Overloaded as e:
            self.rejected += 1
            raise ApiError(429, f"server overloaded: {e}", "rate_limit_error",
                           "overloaded", headers={"Retry-After": "1"}) from None
        try:
            if parsed.stream:
                return await self._stream(request, parsed, seq)
            return await self._complete(parsed, seq)
        finally:
            if not seq.finished:
                self.engine.cancel(seq)
            if seq.t_first is not None:
                self.ttft_sum_s += wait_s + seq.t_first - seq.t_submit
                self.ttft_n += 1

    def _remote_kv(self, parsed: ParsedRequest) -> bool:
        """A decode emulator's request whose prompt KV a prefill pool computed."""
        params = parsed.body.get("kv_transfer_params")
        if params is None:
            return False
        if not isinstance(params, dict):
            raise ApiError(400, "'kv_transfer_params' must be an object",
                           param="kv_transfer_params")
        return self.role == "decode" and params.get("do_remote_prefill") is True

    async def _complete(self, parsed: ParsedRequest, seq: Sequence) -> web.Response:
        seen = 0
        while not seq.finished:
            seen = await self.engine.progress(seq, seen)
            if seq.cancelled:
                raise ApiError(503, "server shutting down", "server_error")
        text = "".join(_WORDS[i % len(_WORDS)] for i in range(seq.generated))
        rid = os.urandom(8).hex()
        usage = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.generated,
                 "total_tokens": seq.prompt_tokens + seq.generated}
        if parsed.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": text}}
            obj: dict[str, Any] = {"id": f"chatcmpl-{rid}", "object": "chat.completion"}
        else:
            choice = {"index": 0, "finish_reason": "length", "text": text}
            obj = {"id": f"cmpl-{rid}", "object": "text_completion"}
        obj.update(created=int(time.time()), model=self.served_model, choices=[choice],
                   usage=usage)
        if self.role == "prefill":
            # Where the decode engine finds the KV cache (vLLM's NIXL connector answers
            # with the same kind of record).
            self.kv_sent += 1
            obj["kv_transfer_params"] = {
                "do_remote_prefill": True, "do_remote_decode": False,
                "remote_engine_id": self.engine_id, "remote_request_id": rid,
                "prompt_tokens": seq.prompt_tokens}
        return web.json_response(obj)

    async def _stream(self, request: web.Request, parsed: ParsedRequest, seq: Sequence
                      ) -> web.StreamResponse:
        rid = os.urandom(8).hex()
        created = int(time.time())
        model = json.dumps(self.served_model)
        if parsed.kind == "chat":
            head = (f'data: {{"id":"chatcmpl-{rid}","object":"chat.completion.chunk",'
                    f'"created":{created},"model":{model},"choices":[{{"index":0,')
            first = '"delta":{"role":"assistant","content":"'
            token = '"delta":{"content":"'
            tail = '"},"finish_reason":null}]}\n\n'
            final = head + '"delta":{},"finish_reason":"length"}]}\n\n'
        else:
            head = (f'data: {{"id":"cmpl-{rid}","object":"text_completion",'
                    f'"created":{created},"model":{model},"choices":[{{"index":0,')
            first = token = '"text":"'
            tail = '","finish_reason":null}]}\n\n'
            final = head + '"text":"","finish_reason":"length"}]}\n\n'
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = 0
        last = False
        while sent < seq.max_tokens:
            n = await self.engine.progress(seq, sent)
            if seq.cancelled:  # the engine was stopped under us: end the stream
                event = error_body("server shutting down", "server_error")
                with contextlib.suppress(ConnectionError):
                    await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                return resp
            # One SSE event per token, written together when several are due.
            parts = [head + (first if i == 0 else token) + _WORDS[i % len(_WORDS)] + tail
                     for i in range(sent, n)]
            sent = n
            if sent >= seq.max_tokens:
                parts.append(final)
                if parsed.include_usage:
                    usage = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": sent,
                             "total_tokens": seq.prompt_tokens + sent}
                    parts.append(head.split('"choices"')[0] + '"choices":[],"usage":'
                                 + json.dumps(usage) + "}\n\n")
                parts.append("data: [DONE]\n\n")
                last = True
            try:
                data = "".join(parts).encode()
                # The last events and the end of the body leave in one send.
                await (resp.write_eof(data) if last else resp.write(data))
            except ConnectionResetError:  # client left; `_generate` frees the sequence
                return resp
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
