"""The OpenAI-compatible gateway: routes each request to a pool by the plan and
forwards it to a backend of that pool (vLLM, SGLang, TensorRT-LLM, a cloud endpoint,
or ``tokenfleet emulate``).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming SSE
and not), ``GET /v1/models`` (the plan's tiers), ``GET /health``, ``GET /metrics``.

What happens to one request (see ``Gateway._proxy``):

1. authenticated (API key), size-limited, parsed and validated — bad input gets an
   OpenAI-format JSON error, never a crash;
2. its ``model`` names a tier; its prompt length (≈ chars / 4) and ``max_tokens``
   name a size bucket; the router picks a pool by the plan's split and policy;
3. it is forwarded over a pooled keep-alive connection. A failure *before anything
   was sent to the client* (connection refused or reset, HTTP 5xx/429 from the
   backend) is retried on another backend of the pool, then on the next-cheapest
   pool with headroom, up to ``max_attempts``;
4. every accepted request ends in exactly one of: a full response, an OpenAI error
   response (429 saturated, 502 all attempts failed, 503 no healthy backend, 504
   timeout), or — once streaming has started — an SSE ``error`` event. A client that
   disconnects cancels the upstream request (the connection to the backend is closed).

The gateway keeps no per-request state after a request ends: counters, breakers and
histograms are per backend / tier / pool only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.metrics import tpot
from tokenfleet.plan.schema import Plan
from tokenfleet.route.auth import ApiKeys
from tokenfleet.route.backend_metrics import MetricsScraper
from tokenfleet.route.breaker import BreakerState
from tokenfleet.route.config import BackendsFile
from tokenfleet.route.metrics import CONTENT_TYPE, NO_POOL, GatewayMetrics
from tokenfleet.route.openai_api import (
    ApiError,
    Kind,
    ParsedRequest,
    dump_json,
    error_body,
    load_json,
    parse_request,
)
from tokenfleet.route.router import Backend, Choice, Pool, Router, TierRoutes, Verdict
from tokenfleet.route.upstream import (
    ConnectError,
    ConnectTimeout,
    Target,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    make_target,
)

log = logging.getLogger("tokenfleet.route.gateway")

_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}
# Upstream statuses worth another backend: overloaded (429) or broken (5xx).
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 4096  # bytes of an upstream error body quoted back to the client


def safe_url(url: str) -> str:
    """``url`` without user:password, for logs and metric labels."""
    u = URL(url)
    return str(u.with_user(None)) if u.user or u.password else url


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj).encode(),
                        content_type="application/json", headers=headers)


def _error_response(e: ApiError, request_id: str | None = None) -> web.Response:
    headers = dict(e.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return _json(e.status, e.body(), headers)


class _SSEResponse(web.StreamResponse):
    """A streaming response whose headers leave together with the first chunk (one
    send() instead of two; on loopback each send costs more than the rest of a
    request's Python work). Safe here because nothing is prepared before the first
    upstream chunk is in hand. Uses aiohttp's ``_send_headers_immediately`` switch,
    which ``web.Response`` sets the same way; without it headers simply go first."""

    _send_headers_immediately = False


class _Retry(Exception):
    """An attempt failed before anything reached the client: try elsewhere."""

    def __init__(self, kind: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(slots=True)
class _Ctx:
    """One request in flight (lives only as long as its handler)."""

    request: web.Request
    parsed: ParsedRequest
    raw: bytes
    tier: TierRoutes
    t0: float  # monotonic arrival, seconds
    deadline: float  # monotonic, seconds
    request_id: str
    attempts: int = 0


class Gateway:
    """Holds the router, the pooled HTTP client, health checks and metrics.

    Use :meth:`make_app` to get the aiohttp application; the client session and the
    health-check task live from the app's start-up to its clean-up.
    """

    def __init__(self, plan: Plan, backends: BackendsFile, keys: ApiKeys | None = None,
                 policy: str | None = None, seed: int = 0,
                 tokenizer: str | Path | None = None) -> None:
        from tokenfleet.route.tokens import OutputLengthPredictor, TokenCounter

        self.plan = plan
        # Request size for bucketing: real prompt tokens with a tokenizer.json (else the
        # chars/4 estimate), output length predicted from the tier's traffic.
        self.tokens: TokenCounter | None = TokenCounter(tokenizer) if tokenizer else None
        self.lengths = OutputLengthPredictor(plan)
        self._scraper: MetricsScraper | None = None
        self.settings = backends.gateway
        self.router = Router(plan, backends, policy=policy, seed=seed)
        self.keys = keys or ApiKeys()
        self.metrics = GatewayMetrics()
        self.in_flight = 0
        self.created = int(time.time())
        self._upstream: UpstreamClient | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        for b in self.router.all_backends():
            self.metrics.child(self.metrics.backend_up, b.pool, safe_url(b.url)).set(1)
        # Per request only bytes are joined: each backend's request line and Host
        # header, and each pool's Authorization line, are built once here.
        self._targets: dict[tuple[Backend, Kind], Target] = {}
        for b in self.router.all_backends():
            for kind, path in _PATHS.items():
                try:
                    self._targets[(b, kind)] = make_target(b.url, path)
                except ValueError as e:
                    raise TokenfleetError(f"pool '{b.pool}': {e}") from None
        self._auth_lines: dict[str, bytes] = {}
        for p in self.router.pools.values():
            if p.api_key and any(c in p.api_key for c in "\r\n"):
                raise TokenfleetError(f"pool '{p.name}': the backend API key contains a line "
                                      f"break")
            self._auth_lines[p.name] = (f"Authorization: Bearer {p.api_key}\r\n".encode()
                                        if p.api_key else b"")

    # ---- application ----------------------------------------------------------------

    def make_app(self) -> web.Application:
        # aiohttp enforces the body limit while reading (chunked bodies included);
        # the middleware turns its 413 into an OpenAI error.
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[self._middleware])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        # No connection limit: the router enforces per-backend limits, and a client
        # limit would queue requests invisibly. No cookies are kept, so backends'
        # cookies cannot leak between clients.
        self._upstream = UpstreamClient(keepalive_s=30.0)
        if self.settings.health.path is not None or any(
                p.health_path for p in self.router.pools.values()):
            self._health_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True))
            self._health_task = asyncio.create_task(self._health_loop())
        if self.router.policy_name == "least-kv":
            # least-kv routes on the backends' own KV use: read it from their /metrics.
            self._scraper = MetricsScraper(b.url for b in self.router.all_backends())
            await self._scraper.start()
            self.router.backend_load = self._scraper.load

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._scraper is not None:
            await self._scraper.stop()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._upstream is not None:
            await self._upstream.close()
        if self._health_session is not None:
            await self._health_session.close()

    # ---- middlewares ----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """API keys first; then every error leaves as OpenAI-format JSON, nothing
        escapes as a crash. (One middleware, not two: each is a coroutine layer on
        every request.)"""
        try:
            if self.keys.enabled and request.path.startswith("/v1/"):
                self._authenticate(request)
            return await handler(request)
        except ApiError as e:
            return _error_response(e)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed",
                    413: "request_too_large"}.get(e.status)
            msg = {404: f"no route {request.method} {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: f"request body larger than {self.settings.max_body_bytes} bytes"
                   }.get(e.status, e.reason)
            return _json(e.status, error_body(msg, "invalid_request_error", code))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return _json(500, error_body("internal gateway error", "server_error",
                                         "internal_error"))

    def _authenticate(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization")
        if not self.keys.check(auth, request.headers.get("api-key")):
            msg = ("missing API key: send 'Authorization: Bearer <key>'" if not auth
                   and "api-key" not in request.headers else "invalid API key")
            raise ApiError(401, msg, code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    # ---- small endpoints -------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        data = []
        for tier in self.router.tiers.values():
            pools = [{
                "pool": p.name, "accelerator": p.unit.accelerator, "cloud": p.unit.cloud,
                "region": p.unit.region, "usd_per_hour": p.unit.usd_per_hour,
                "watts": p.unit.watts, "backends": len(p.backends),
                "healthy_backends": sum(1 for b in p.backends if b.available(now)),
            } for p in tier.pools]
            data.append({"id": tier.name, "object": "model", "created": self.created,
                         "owned_by": "tokenfleet",
                         "tokenfleet": {"model": tier.model, "slo_ttft_s": tier.slo_ttft_s,
                                        "slo_tpot_s": tier.slo_tpot_s, "pools": pools}})
        return _json(200, {"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        tiers = {}
        for tier in self.router.tiers.values():
            backends = [b for p in tier.pools for b in p.backends]
            tiers[tier.name] = {"backends": len(backends),
                                "healthy_backends": sum(1 for b in backends if b.available(now))}
        ok = all(t["healthy_backends"] > 0 for t in tiers.values())
        return _json(200 if ok else 503, {"status": "ok" if ok else "degraded",
                                          "in_flight": self.in_flight, "tiers": tiers})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat")

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completion")

    # ---- health checks ---------------------------------------------------------------

    async def _health_loop(self) -> None:
        h = self.settings.health
        while True:
            checks = [self._check(p, b) for p in self.router.pools.values() if p.health_path
                      for b in p.backends]
            # One broken check must not end the loop (and with it all health checking).
            for r in await asyncio.gather(*checks, return_exceptions=True):
                if isinstance(r, Exception):
                    log.error("health check failed unexpectedly: %r", r)
            await asyncio.sleep(h.interval_s)

    async def _check(self, pool: Pool, backend: Backend) -> None:
        h = self.settings.health
        assert self._health_session is not None and pool.health_path is not None
        ok = False
        try:
            async with self._health_session.get(
                    backend.url + pool.health_path,
                    timeout=aiohttp.ClientTimeout(total=h.timeout_s)) as r:
                ok = r.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        if backend.record_check(ok, h.unhealthy_after, h.healthy_after):
            log.warning("backend %s of pool %s is %s", safe_url(backend.url), pool.name,
                        "up" if backend.healthy else "down (health check failed)")
        self._set_up_gauge(backend)

    def _set_up_gauge(self, backend: Backend) -> None:
        up = backend.healthy and backend.breaker.state is BreakerState.closed
        self.metrics.child(self.metrics.backend_up, backend.pool, safe_url(backend.url)).set(
            1 if up else 0)

    # ---- proxying -------------------------------------------------------------------

    async def _proxy(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        t0 = time.monotonic()
        s = self.settings
        if request.content_length is not None and request.content_length > s.max_body_bytes:
            raise ApiError(413, f"request body of {request.content_length} bytes is larger "
                                f"than the limit of {s.max_body_bytes} bytes",
                           code="request_too_large")
        raw = await request.read()
        parsed = parse_request(raw, kind)
        tier = self.router.tier_for(parsed.model)
        if tier is None:
            raise ApiError(404, f"the model '{parsed.model[:200]}' does not exist; available: "
                                f"{', '.join(self.router.tiers)}", code="model_not_found",
                           param="model")
        # Not a secret (it is echoed to the client): a PRNG draw, no system call.
        request_id = f"{random.getrandbits(64):016x}"
        if self.in_flight >= s.max_in_flight:
            self.metrics.child(self.metrics.requests, tier.name, NO_POOL, "rejected").inc()
            raise ApiError(429, f"gateway at its limit of {s.max_in_flight} requests in "
                                f"flight; retry after {s.retry_after_s} s",
                           "rate_limit_error", "rate_limit_exceeded",
                           headers={"Retry-After": str(s.retry_after_s)})
        ctx = _Ctx(request, parsed, raw, tier, t0, t0 + s.request_timeout_s, request_id)
        self.in_flight += 1
        try:
            return await self._route(ctx)
        finally:
            self.in_flight -= 1

    def request_size(self, tier: str, parsed: ParsedRequest) -> tuple[int, int]:
        """(prompt tokens, expected output tokens) of a request, for its size bucket."""
        prompt = (self.tokens.count(parsed.kind, parsed.body) if self.tokens is not None
                  else parsed.prompt_tokens)
        return prompt, self.lengths.predict(tier, prompt, parsed.max_tokens)

    async def _route(self, ctx: _Ctx) -> web.StreamResponse:
        s = self.settings
        m = self.metrics
        tier = ctx.tier
        bucket = self.router.bucket_label(*self.request_size(tier.name, ctx.parsed))
        tried: set[Backend] = set()
        failed_pool: Pool | None = None
        last: _Retry | None = None
        verdict: Verdict | None = None
        while ctx.attempts < s.max_attempts:
            choice = self.router.choose(tier, bucket, time.monotonic(), tried, failed_pool)
            if isinstance(choice, Verdict):
                verdict = choice
                break
            ctx.attempts += 1
            tried.add(choice.backend)
            if choice.failover:
                m.child(m.failovers, tier.name, choice.pool.name).inc()
            try:
                return await self._attempt(ctx, choice)
            except _Retry as e:
                last = e
                failed_pool = choice.pool
                m.child(m.errors, tier.name, choice.pool.name, e.kind).inc()
                log.warning("request %s: attempt %d at %s (pool %s) failed: %s", ctx.request_id,
                            ctx.attempts, safe_url(choice.backend.url), choice.pool.name,
                            e.message)
                if ctx.attempts < s.max_attempts:
                    m.child(m.retries, tier.name, choice.pool.name).inc()
        pool_label = failed_pool.name if failed_pool else NO_POOL
        retry_after = {"Retry-After": str(s.retry_after_s)}
        if last is None:
            saturated = verdict is Verdict.saturated
            m.child(m.requests, tier.name, NO_POOL,
                    "rejected" if saturated else "unavailable").inc()
            if saturated:
                err = ApiError(429, f"all pools of tier '{tier.name}' are at their concurrency "
                                    f"limit; retry after {s.retry_after_s} s",
                               "rate_limit_error", "rate_limit_exceeded", headers=retry_after)
            else:
                err = ApiError(503, f"no healthy backend for tier '{tier.name}'; retry after "
                                    f"{s.retry_after_s} s", "server_error",
                               "no_backend_available", headers=retry_after)
        elif last.kind == "status_429" and last.status == 429:
            m.child(m.requests, tier.name, pool_label, "rejected").inc()
            err = ApiError(429, f"backends of tier '{tier.name}' are overloaded: {last.message}",
                           "rate_limit_error", "rate_limit_exceeded", headers=retry_after)
        else:
            m.child(m.requests, tier.name, pool_label, "upstream_error").inc()
            err = ApiError(502, f"{ctx.attempts} attempt(s) failed for tier '{tier.name}'; "
                                f"last: {last.message}", "server_error", "upstream_error",
                           headers=retry_after)
        m.child(m.duration, tier.name, pool_label).observe(time.monotonic() - ctx.t0)
        return _error_response(err, ctx.request_id)

    def _upstream_body(self, ctx: _Ctx, pool: Pool) -> bytes:
        if pool.upstream_model == ctx.parsed.model:
            return ctx.raw
        return dump_json({**ctx.parsed.body, "model": pool.upstream_model},
                         ctx.parsed.strict_json)

    async def _attempt(self, ctx: _Ctx, choice: Choice) -> web.StreamResponse:
        """One try at one backend. Raises :class:`_Retry` when it failed before
        anything reached the client; otherwise returns the client's response."""
        assert self._upstream is not None
        pool, backend = choice.pool, choice.backend
        m, s, tier = self.metrics, self.settings, ctx.tier.name
        now = time.monotonic()
        if ctx.deadline - now <= 0:
            raise ApiError(504, f"request timed out after {s.request_timeout_s} s",
                           "server_error", "timeout")
        headers = b"Content-Type: application/json\r\nX-Request-Id: %b\r\n%b" % (
            ctx.request_id.encode(), self._auth_lines[pool.name])
        backend.in_flight += 1
        backend.breaker.on_dispatch(now)
        gauge = m.child(m.in_flight, tier, pool.name)
        gauge.inc()
        upstream: UpstreamResponse | None = None
        verdict: bool | None = None  # True ok, False failure, None no judgement
        try:
            try:
                upstream = await self._upstream.post(
                    self._targets[(backend, ctx.parsed.kind)], headers,
                    self._upstream_body(ctx, pool), connect_timeout=s.connect_timeout_s,
                    read_timeout=s.first_byte_timeout_s, deadline=ctx.deadline)
            except ConnectTimeout:
                verdict = False
                raise _Retry("connect", f"connect timeout after {s.connect_timeout_s} s"
                             ) from None
            except TimeoutError:
                verdict = False
                raise self._timeout(ctx, pool, "no response headers") from None
            except ConnectError as e:
                verdict = False
                if pool.health_path:  # a refused connection: down until a check passes
                    backend.healthy = False
                raise _Retry("connect", f"cannot connect: {e}") from None
            except UpstreamError as e:
                verdict = False
                raise _Retry("connect", f"connection lost before the response: {e}"
                             ) from None
            resp: web.StreamResponse
            if upstream.status != 200:
                verdict, resp = await self._non_200(ctx, pool, upstream)
                return resp
            if ctx.parsed.stream:
                verdict, resp = await self._stream(ctx, pool, upstream)
            else:
                verdict, resp = await self._buffered(ctx, pool, upstream)
            return resp
        except _Retry as e:
            # A backend answering 429 is alive, only busy: no verdict for its breaker.
            verdict = None if e.kind == "status_429" else False
            raise
        except ApiError:  # timed out
            verdict = False
            raise
        except asyncio.CancelledError:
            # The client went away: closing `upstream` below aborts the backend request.
            m.child(m.requests, tier, pool.name, "cancelled").inc()
            verdict = None
            raise
        finally:
            backend.in_flight -= 1
            gauge.dec()
            if upstream is not None:
                if verdict is True:
                    upstream.release()  # back to the pool if the body was read to its end
                else:
                    upstream.close()
            self._judge(backend, verdict)

    def _judge(self, backend: Backend, verdict: bool | None) -> None:
        b = backend.breaker
        before = b.state
        if verdict is True:
            b.on_success()
        elif verdict is False:
            b.on_failure(time.monotonic())
        else:
            b.on_release()
        if b.state is not before:
            if b.state is BreakerState.open:
                self.metrics.child(self.metrics.circuit_opened, backend.pool,
                                   safe_url(backend.url)).inc()
                log.warning("circuit of backend %s (pool %s) opened after %d failures",
                            safe_url(backend.url), backend.pool, b.consecutive_failures)
            self._set_up_gauge(backend)

    def _timeout(self, ctx: _Ctx, pool: Pool, what: str) -> ApiError:
        m = self.metrics
        m.child(m.errors, ctx.tier.name, pool.name, "timeout").inc()
        m.child(m.requests, ctx.tier.name, pool.name, "timeout").inc()
        return ApiError(504, f"backend of pool '{pool.name}' timed out ({what})",
                        "server_error", "timeout", headers={"X-Request-Id": ctx.request_id})

    def _headers(self, ctx: _Ctx, pool: Pool) -> dict[str, str]:
        return {"X-Request-Id": ctx.request_id, "X-Tokenfleet-Pool": pool.name,
                "X-Tokenfleet-Attempts": str(ctx.attempts)}

    async def _non_200(self, ctx: _Ctx, pool: Pool, upstream: UpstreamResponse
                       ) -> tuple[bool | None, web.Response]:
        status = upstream.status
        try:
            # What has arrived (an error body comes with its headers); not the whole
            # body: a backend that sends an error status and then stalls must not hold
            # up the retry.
            body = (await upstream.readany())[:_MAX_ERROR_BODY]
        except (UpstreamError, TimeoutError):
            body = b""
        text = body.decode("utf-8", "replace").strip()[:500]
        if status in _RETRY_STATUSES:
            kind = "status_429" if status == 429 else "status_5xx"
            raise _Retry(kind, f"HTTP {status} from backend: {text}", status)
        # The request's own fault (400, 404 model, 422 ...): pass the answer through.
        m = self.metrics
        m.child(m.requests, ctx.tier.name, pool.name, "client_error").inc()
        m.child(m.duration, ctx.tier.name, pool.name).observe(time.monotonic() - ctx.t0)
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict) or "error" not in obj:
                raise ValueError
        except ValueError:
            obj = error_body(text or f"HTTP {status} from backend", "invalid_request_error",
                             "upstream_rejected")
        return True, _json(status, obj, self._headers(ctx, pool))

    async def _buffered(self, ctx: _Ctx, pool: Pool, upstream: UpstreamResponse
                        ) -> tuple[bool, web.Response]:
        try:
            body = await upstream.read()
        except TimeoutError:
            raise self._timeout(ctx, pool, "response body") from None
        except UpstreamError as e:
            # Nothing has reached the client yet, so another backend may still serve it.
            raise _Retry("mid_stream", f"while reading the response: {e}") from None
        m, tier = self.metrics, ctx.tier.name
        m.child(m.requests, tier, pool.name, "ok").inc()
        m.child(m.duration, tier, pool.name).observe(time.monotonic() - ctx.t0)
        return True, web.Response(status=200, body=body, content_type="application/json",
                                  headers=self._headers(ctx, pool))

    async def _stream(self, ctx: _Ctx, pool: Pool, upstream: UpstreamResponse
                      ) -> tuple[bool | None, web.StreamResponse]:
        m, tier = self.metrics, ctx.tier.name
        # Built (not sent) while the backend is still working on the first token, so
        # that the first token is not kept waiting for it.
        resp = _SSEResponse(status=200, headers={**_SSE_HEADERS, **self._headers(ctx, pool)})
        # Wait for the first bytes before answering the client: until then a failure
        # can still be retried elsewhere without the client noticing.
        try:
            first = await upstream.readany()
        except TimeoutError:
            raise self._timeout(ctx, pool, "no first token") from None
        except UpstreamError as e:
            raise _Retry("mid_stream", f"before the first token: {e}") from None
        if not first:
            raise _Retry("mid_stream", "backend closed the stream before the first token")
        t_first = time.monotonic()
        events = first.count(b"data:")
        t_last = t_first
        tail = first
        chunk = first
        ended = False  # the client has the whole stream (through "[DONE]")
        while chunk:
            # Writes and reads are guarded apart: a reset while writing is the client
            # leaving; a failure while reading is the backend's.
            try:
                if not resp.prepared:
                    await resp.prepare(ctx.request)
                if ended:
                    pass  # nothing may follow "[DONE]"; keep draining the backend
                elif chunk.endswith(b"[DONE]\n\n"):
                    await resp.write_eof(chunk)  # last chunk and terminator in one send
                    ended = True
                else:
                    await resp.write(chunk)
            except ConnectionResetError:
                m.child(m.requests, tier, pool.name, "cancelled").inc()
                return None, resp
            try:
                chunk = await upstream.readany()
            except (TimeoutError, UpstreamError) as e:
                await self._stream_failed(ctx, pool, resp, e)
                return False, resp
            if chunk:
                events += chunk.count(b"data:")
                t_last = time.monotonic()
                tail = chunk
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        tokens = _usage_tokens(tail)
        if tokens is None:  # one SSE event per token, less the final "[DONE]"
            tokens = events - 1 if b"[DONE]" in tail else events
        m.child(m.requests, tier, pool.name, "ok").inc()
        m.child(m.ttft, tier, pool.name).observe(t_first - ctx.t0)
        if tokens > 1:  # tokens that arrive in one read count as 0 s apart, not as missing
            m.child(m.tpot, tier, pool.name).observe(tpot(t_first, t_last, tokens))
        m.child(m.duration, tier, pool.name).observe(t_last - ctx.t0)
        return True, resp

    async def _stream_failed(self, ctx: _Ctx, pool: Pool, resp: web.StreamResponse,
                             e: BaseException) -> None:
        """The backend failed after the client got the first bytes: end the stream with
        an SSE ``error`` event (OpenAI's format) so the client knows it is incomplete."""
        m, tier = self.metrics, ctx.tier.name
        timed_out = isinstance(e, TimeoutError)
        msg = (f"backend of pool '{pool.name}' "
               + ("stalled" if timed_out else "failed") + " during the stream")
        m.child(m.errors, tier, pool.name, "timeout" if timed_out else "mid_stream").inc()
        m.child(m.requests, tier, pool.name, "upstream_error").inc()
        log.warning("request %s: %s (%s)", ctx.request_id, msg, type(e).__name__)
        with contextlib.suppress(ConnectionError, RuntimeError):
            event = error_body(msg, "server_error", "upstream_stream_error")
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await resp.write_eof()


def _usage_tokens(tail: bytes) -> int | None:
    """``usage.completion_tokens`` from the final SSE events, when the backend sent it."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    # Only the line (SSE event) holding the last "usage" is parsed.
    start = tail.rfind(b"\n", 0, at) + 1
    end = tail.find(b"\n", at)
    line = tail[start:end if end >= 0 else len(tail)].strip()
    if not line.startswith(b"data:"):
        return None
    try:
        usage = load_json(line[5:])[0].get("usage") or {}
        n = usage.get("completion_tokens")
        return int(n) if isinstance(n, int) else None
    except (ValueError, AttributeError):
        return None
