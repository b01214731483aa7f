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
4. a stream whose backend fails after the client got tokens is resumed on another
   backend (same pool first) with the prompt plus the text so far and ``max_tokens``
   less what was delivered, and stitched into one response (``route/resume.py``);
5. every accepted request ends in exactly one of: a full response, an OpenAI error
   response (429 saturated or over a key's / tier's limit, 502 all attempts failed,
   503 no healthy backend or draining, 504 timeout), or — only when every attempt to
   resume failed — an SSE ``error`` event. A client that disconnects cancels the
   upstream request (the connection to the backend is closed).

A tier served by a disaggregated pair (``Router.prefill_for``) takes one hop more, in
the shape of vLLM's disaggregated proxy and SGLang's PD router: when the chosen pool is
a pair's decode half, the prompt first goes, non-streamed with ``max_tokens: 1``, to a
backend of the pair's prefill pool, which computes its KV cache and answers where it
waits (``kv_transfer_params``); then the original request, carrying those
``kv_transfer_params``, goes to the decode backend, whose answer the client gets. A
failed prefill is retried on another prefill backend; when the whole prefill pool fails
the request fails over to another pool of the tier, and when there is none the decode
pool serves it alone (it prefills the prompt itself). Hops are counted in
``tokenfleet_gateway_prefill_hops_total{tier,pool,outcome}``.

Slow backends are ejected by outlier detection (``route/outlier.py``); SIGTERM drains
(:meth:`Gateway.drain`), SIGHUP and ``POST /admin/reload`` swap in new files
(:meth:`Gateway.reload`).

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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
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
from tokenfleet.route.config import BackendsFile, check_against_plan
from tokenfleet.route.limits import Bucket, admit, release
from tokenfleet.route.metrics import CONTENT_TYPE, NO_POOL, GatewayMetrics
from tokenfleet.route.openai_api import (
    ApiError,
    Kind,
    ParsedRequest,
    check_context,
    dump_json,
    error_body,
    load_json,
    parse_request,
)
from tokenfleet.route.outlier import (
    ejection_s,
    may_eject,
    relative_speed,
    slow_reason,
)
from tokenfleet.route.resume import (
    Delivered,
    can_resume,
    continuation_body,
    first_id,
    rewrite_usage,
    split_events,
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
# Events of a stream after which its backend's TPOT is sampled for outlier detection.
_TPOT_SAMPLE_EVENTS = 6


def safe_url(url: str) -> str:
    """``url`` without user:password, for logs and metric labels."""
    u = URL(url)
    return str(u.with_user(None)) if u.user or u.password else url


@cache
def _catalog_context(model: str) -> int | None:
    """The catalog's context length of ``model`` (None for a model it does not know)."""
    from tokenfleet.catalog.loader import load_catalog

    try:
        return load_catalog().model(model).max_context_tokens
    except (TokenfleetError, KeyError):
        return None


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


class _Resume(Exception):
    """The backend failed after the client got part of the stream: continue it at
    another backend (see ``route/resume.py``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    # Streams only: what the client got so far and the response it gets it on, kept
    # across backends when a stream is resumed elsewhere.
    delivered: Delivered | None = None
    resp: web.StreamResponse | None = None
    resumes: int = 0
    t_first: float | None = None
    events: int = 0
    limits: tuple[Bucket, ...] = ()
    # Disaggregated pairs: decode pools whose prefill pool failed this request, and
    # whether it now goes to a decode pool without the prefill hop (nothing else left).
    prefill_failed: set[str] | None = None
    skip_prefill: bool = False


@dataclass(slots=True)
class _Segment:
    """One backend's part of a stream (lives only as long as that backend serves it):
    the resume bookkeeping and the timing of this segment."""

    delivered: Delivered | None  # the stream's record, when it may be resumed
    resuming: bool  # the client already got an earlier segment
    t_first: float  # monotonic first bytes of this segment, seconds
    t_last: float  # monotonic last bytes of this segment, seconds
    tail: bytes  # the last events sent (they hold the usage, if any)
    prior: int = 0  # tokens the client got from earlier backends
    swap: tuple[bytes, bytes] | None = None  # this backend's id -> the client's id
    pending: bytes = b""  # a partial event, held back until it is whole
    events: int = 0  # SSE events of this segment
    sampled: bool = False  # an early TPOT sample was taken
    ended: bool = False  # the client has the whole stream (through "[DONE]")

    def take(self, chunk: bytes) -> bytes:
        """The events of ``chunk`` to send to the client, recorded for a resume."""
        d = self.delivered
        if d is None:
            return chunk
        # Only whole events go out: a resumed stream must not follow half a one.
        events, self.pending = split_events(self.pending, chunk)
        if events:
            if d.id_bytes is None:
                d.id_bytes = first_id(events)
            elif self.resuming and self.swap is None:
                new = first_id(events)
                self.swap = ((b'"id":"' + new + b'"', b'"id":"' + d.id_bytes + b'"')
                             if new and new != d.id_bytes else (b"", b""))
            if self.swap and self.swap[0]:
                events = events.replace(*self.swap)
            if self.resuming:
                events = rewrite_usage(events, self.prior)
            d.add(events)
        return events


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
        self.prefix_counter = self.tokens or TokenCounter()  # prefix blocks (ids or text)
        self.lengths = OutputLengthPredictor(plan)
        self._scraper: MetricsScraper | None = None
        self.settings = backends.gateway
        self.router = Router(plan, backends, policy=policy, seed=seed)
        self.keys = keys or ApiKeys()
        self.metrics = GatewayMetrics()
        self.in_flight = 0
        self.created = int(time.time())
        self.draining_since: float | None = None  # monotonic s of SIGTERM
        # Called by POST /admin/reload (set by `tokenfleet serve`: it knows the files).
        self.reloader: Callable[[], list[str]] | None = None
        self._policy = policy
        self._seed = seed
        self._upstream: UpstreamClient | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._key_buckets: dict[bytes, Bucket] = {}
        self._install(plan, backends, Router(plan, backends, policy=policy, seed=seed))

    def _install(self, plan: Plan, backends: BackendsFile, router: Router) -> None:
        """Make ``router`` (and the files it came from) the live configuration. All that
        can fail is computed before anything is replaced."""
        # Per request only bytes are joined: each backend's request line and Host
        # header, and each pool's Authorization line, are built once here.
        targets: dict[tuple[Backend, Kind], Target] = {}
        for b in router.all_backends():
            for kind, path in _PATHS.items():
                try:
                    targets[(b, kind)] = make_target(b.url, path)
                except ValueError as e:
                    raise TokenfleetError(f"pool '{b.pool}': {e}") from None
        auth_lines: dict[str, bytes] = {}
        for p in router.pools.values():
            if p.api_key and any(c in p.api_key for c in "\r\n"):
                raise TokenfleetError(f"pool '{p.name}': the backend API key contains a line "
                                      f"break")
            auth_lines[p.name] = (f"Authorization: Bearer {p.api_key}\r\n".encode()
                                  if p.api_key else b"")
        now = time.monotonic()
        tier_buckets: dict[str, Bucket] = {}
        contexts: dict[str, int | None] = {}
        resume: dict[str, bool] = {}
        for name, tier in router.tiers.items():
            ts = backends.tiers.get(name)
            lim = ts.limits if ts is not None else None
            if lim is not None:
                tier_buckets[name] = Bucket(f"tier {name}", lim.requests_per_s,
                                            lim.burst_requests, lim.tokens_per_min,
                                            lim.max_in_flight, now)
            contexts[name] = (ts.max_context_tokens if ts is not None
                              and ts.max_context_tokens else _catalog_context(tier.model))
            resume[name] = (ts.resume_streams if ts is not None
                            and ts.resume_streams is not None
                            else backends.gateway.resume_streams)
        self.plan = plan
        self.backends = backends
        self.settings = backends.gateway
        self.router = router
        self._targets = targets
        self._auth_lines = auth_lines
        self._tier_buckets = tier_buckets
        self._contexts = contexts
        self._resume = resume
        self._key_buckets.clear()
        for b in router.all_backends():
            self._set_up_gauge(b)

    def reload(self, plan: Plan, backends: BackendsFile) -> list[str]:
        """Swap in a new plan and backends file without dropping a connection: requests
        in flight finish on the configuration they started with; backends kept (same
        pool and URL) keep their live state. Raises :class:`TokenfleetError` (and keeps
        the old configuration) when the new one is invalid; returns warnings."""
        warnings = check_against_plan(backends, plan)
        router = Router(plan, backends, policy=self._policy, seed=self._seed)
        old = {(b.pool, b.url): b for b in self.router.all_backends()}
        for p in router.pools.values():
            for i, b in enumerate(p.backends):
                prev = old.get((b.pool, b.url))
                if prev is not None:
                    prev.max_in_flight = b.max_in_flight
                    p.backends[i] = prev
        self._install(plan, backends, router)
        log.warning("configuration reloaded: %d tier(s), %d pool(s), %d backend(s)",
                    len(router.tiers), len(router.pools), sum(1 for _ in router.all_backends()))
        return warnings

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
        app.router.add_post("/admin/reload", self._admin_reload)
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
            if request.path.startswith("/admin/"):
                self._authenticate_admin(request)
            elif self.keys.enabled and request.path.startswith("/v1/"):
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

    def _authenticate_admin(self, request: web.Request) -> None:
        """Admin calls need an API key; with authentication off, only this machine may
        make them."""
        if self.keys.enabled:
            self._authenticate(request)
            return
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            raise ApiError(403, "admin calls without API keys are accepted from this "
                                "machine only", code="forbidden")

    async def _admin_reload(self, request: web.Request) -> web.Response:
        if self.reloader is None:
            raise ApiError(501, "this gateway was not started from files; nothing to reload",
                           "server_error", "not_implemented")
        try:
            warnings = self.reloader()
        except TokenfleetError as e:
            log.error("reload refused, old configuration kept: %s", e)
            raise ApiError(400, f"reload refused, old configuration kept: {e}",
                           code="invalid_configuration") from None
        return _json(200, {"status": "reloaded", "warnings": warnings})

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
                "role": p.unit.role, **self._prefill_info(p),
            } for p in self._tier_pools(tier)]
            data.append({"id": tier.name, "object": "model", "created": self.created,
                         "owned_by": "tokenfleet",
                         "max_context_tokens": self._contexts.get(tier.name),
                         "tokenfleet": {"model": tier.model, "slo_ttft_s": tier.slo_ttft_s,
                                        "slo_tpot_s": tier.slo_tpot_s, "pools": pools}})
        return _json(200, {"object": "list", "data": data})

    def _tier_pools(self, tier: TierRoutes) -> list[Pool]:
        """The pools serving ``tier``: those routed to and their pairs' prefill pools
        (which a client's bill covers too: ``loadtest`` adds up their $/h and W)."""
        pre = [self.router.prefill_for[p.name] for p in tier.pools
               if p.name in self.router.prefill_for]
        return [*tier.pools, *pre]

    def _prefill_info(self, pool: Pool) -> dict[str, str]:
        pre = self.router.prefill_for.get(pool.name)
        return {"prefill_pool": pre.name} if pre is not None else {}

    async def _health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        tiers = {}
        for tier in self.router.tiers.values():
            backends = [b for p in tier.pools for b in p.backends]
            tiers[tier.name] = {"backends": len(backends),
                                "healthy_backends": sum(1 for b in backends if b.available(now))}
        ok = all(t["healthy_backends"] > 0 for t in tiers.values())
        if self.draining_since is not None:
            # A load balancer must stop sending here now.
            return _json(503, {"status": "draining", "in_flight": self.in_flight,
                               "tiers": tiers}, {"Retry-After": str(self.settings.retry_after_s)})
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
        up = (backend.healthy and backend.breaker.state is BreakerState.closed
              and not backend.stats.ejected(time.monotonic()))
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
        if self.draining_since is not None and t0 - self.draining_since > s.drain_accept_s:
            raise ApiError(503, f"gateway is shutting down; retry after {s.retry_after_s} s "
                                f"(at another instance)", "server_error", "shutting_down",
                           headers={"Retry-After": str(s.retry_after_s)})
        raw = await request.read()
        parsed = parse_request(raw, kind)
        tier = self.router.tier_for(parsed.model)
        if tier is None:
            raise ApiError(404, f"the model '{parsed.model[:200]}' does not exist; available: "
                                f"{', '.join(self.router.tiers)}", code="model_not_found",
                           param="model")
        check_context(parsed, self._contexts.get(tier.name))
        # Not a secret (it is echoed to the client): a PRNG draw, no system call.
        request_id = f"{random.getrandbits(64):016x}"
        if self.in_flight >= s.max_in_flight:
            self.metrics.child(self.metrics.requests, tier.name, NO_POOL, "rejected").inc()
            raise ApiError(429, f"gateway at its limit of {s.max_in_flight} requests in "
                                f"flight; retry after {s.retry_after_s} s",
                           "rate_limit_error", "rate_limit_exceeded",
                           headers={"Retry-After": str(s.retry_after_s)})
        ctx = _Ctx(request, parsed, raw, tier, t0, t0 + s.request_timeout_s, request_id)
        ctx.limits = self._buckets(request, tier)
        if ctx.limits:
            refusal = admit(ctx.limits, parsed.prompt_tokens + parsed.output_tokens, t0)
            if refusal is not None:
                m = self.metrics
                m.child(m.requests, tier.name, NO_POOL, "rejected").inc()
                m.child(m.limited, tier.name, refusal.scope.split(" ")[0], refusal.what).inc()
                raise ApiError(429, f"{refusal.scope}: over its {refusal.what} limit; retry "
                                    f"after {refusal.retry_after_s} s", "rate_limit_error",
                               "rate_limit_exceeded",
                               headers={"Retry-After": str(refusal.retry_after_s)})
        self.in_flight += 1
        try:
            return await self._route(ctx)
        finally:
            self.in_flight -= 1
            if ctx.limits:
                release(ctx.limits)

    def _buckets(self, request: web.Request, tier: TierRoutes) -> tuple[Bucket, ...]:
        """The limit buckets a request counts against: its tier's and its key's."""
        out: list[Bucket] = []
        tb = self._tier_buckets.get(tier.name)
        if tb is not None and tb.limited:
            out.append(tb)
        if self.keys.enabled:
            digest = self.keys.identify(request.headers.get("Authorization"),
                                        request.headers.get("api-key"))
            if digest is not None:
                kb = self._key_buckets.get(digest)
                if kb is None:
                    lim = self.settings.per_key
                    # No key may hold more than its share of the gateway's capacity.
                    share = -(-self.settings.max_in_flight // len(self.keys))
                    kb = self._key_buckets[digest] = Bucket(
                        f"key {digest[:4].hex()}", lim.requests_per_s, lim.burst_requests,
                        lim.tokens_per_min, min(lim.max_in_flight or share, share),
                        time.monotonic())
                if kb.limited:
                    out.append(kb)
        return tuple(out)

    async def drain(self) -> bool:
        """Graceful shutdown (SIGTERM): ``/health`` answers 503 ``draining`` at once,
        new requests are accepted for ``drain_accept_s`` (a load balancer notices
        meanwhile) and refused with 503 + Retry-After after; returns once that time has
        passed and nothing is in flight (True), or at ``drain_timeout_s`` (False)."""
        s = self.settings
        start = self.draining_since = time.monotonic()
        log.warning("draining: %d request(s) in flight; accepting new ones for %g s, waiting "
                    "at most %g s", self.in_flight, s.drain_accept_s, s.drain_timeout_s)
        while True:
            now = time.monotonic()
            if now - start >= s.drain_accept_s and self.in_flight == 0:
                return True
            if now - start >= s.drain_timeout_s:
                log.error("drain timeout: %d request(s) still in flight are cut",
                          self.in_flight)
                return False
            await asyncio.sleep(0.05)

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
        blocks = (self.prefix_counter.prefix_blocks(ctx.parsed.kind, ctx.parsed.body)
                  if tier.policy.name == "prefix-affinity" else [])
        tried: set[Backend] = set()
        failed_pool: Pool | None = None
        last: _Retry | None = None
        verdict: Verdict | None = None
        budget = s.max_attempts
        while ctx.attempts < budget:
            # The live tier (a reload may have replaced it since the request came in).
            tier = self.router.tiers.get(tier.name, tier)
            choice = self.router.choose(tier, bucket, time.monotonic(), tried, failed_pool,
                                        blocks)
            if isinstance(choice, Verdict):
                if self._serve_without_prefill(ctx, tried):
                    failed_pool = None
                    budget = max(budget, ctx.attempts + 1)
                    continue
                verdict = choice
                break
            ctx.attempts += 1
            tried.add(choice.backend)
            if choice.failover:
                m.child(m.failovers, tier.name, choice.pool.name).inc()
            try:
                return await self._attempt(ctx, choice)
            except ApiError as e:
                if ctx.resp is None:
                    raise
                last = _Retry("timeout", e.message)  # a resumed stream timed out
                break
            except _Resume as e:
                # Part of the stream reached the client: go on elsewhere (same pool
                # first), with a fresh budget of attempts for the continuation.
                failed_pool = choice.pool
                m.child(m.errors, tier.name, choice.pool.name, "mid_stream").inc()
                log.warning("request %s: backend %s (pool %s) failed mid-stream (%s); "
                            "resuming elsewhere", ctx.request_id, safe_url(choice.backend.url),
                            choice.pool.name, e.message)
                d = ctx.delivered
                assert d is not None and ctx.resp is not None
                if continuation_body(ctx.parsed, "", d) is None or d.finished:
                    # Everything was generated; only the end of the stream was missing.
                    await self._end_stream(ctx, choice.pool)
                    return ctx.resp
                ctx.resumes += 1
                m.child(m.resumes, tier.name, choice.pool.name, "resumed").inc()
                tried = {choice.backend}
                budget = ctx.attempts + s.max_attempts
                last = _Retry("mid_stream", e.message)
            except _Retry as e:
                last = e
                failed_pool = choice.pool
                self._note_failure(ctx, choice, e, tried)
                log.warning("request %s: attempt %d at %s (pool %s) failed: %s", ctx.request_id,
                            ctx.attempts, safe_url(choice.backend.url), choice.pool.name,
                            e.message)
                if ctx.attempts < s.max_attempts:
                    m.child(m.retries, tier.name, choice.pool.name).inc()
        pool_label = failed_pool.name if failed_pool else NO_POOL
        retry_after = {"Retry-After": str(s.retry_after_s)}
        if ctx.resp is not None:
            # The client has part of a stream: end it with an error event.
            why = last.message if last is not None else f"no backend available ({verdict})"
            m.child(m.resumes, tier.name, pool_label, "failed").inc()
            await self._stream_failed(ctx, failed_pool, ctx.resp, why)
            m.child(m.duration, tier.name, pool_label).observe(time.monotonic() - ctx.t0)
            return ctx.resp
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

    def _note_failure(self, ctx: _Ctx, choice: Choice, e: _Retry, tried: set[Backend]
                      ) -> None:
        m = self.metrics
        if e.kind == "prefill":
            # The pair's prefill pool is down: its decode pool is no use for now; fail
            # over to another pool of the tier.
            ctx.prefill_failed = (ctx.prefill_failed or set()) | {choice.pool.name}
            tried.update(choice.pool.backends)
        m.child(m.errors, ctx.tier.name, choice.pool.name, e.kind).inc()

    def _serve_without_prefill(self, ctx: _Ctx, tried: set[Backend]) -> bool:
        """No pool is left and a pair's prefill pool failed this request: let the decode
        pools it excluded take it without the prefill hop (a decode engine that gets no
        KV cache prefills the prompt itself): slower, but answered. False when that was
        done already or no prefill failed."""
        if not ctx.prefill_failed or ctx.skip_prefill:
            return False
        ctx.skip_prefill = True
        for name in ctx.prefill_failed:
            pool = self.router.pools.get(name)
            if pool is not None:
                tried.difference_update(pool.backends)
        log.warning("request %s: no pool left after prefill failures; decode pool(s) %s "
                    "prefill it themselves", ctx.request_id, ", ".join(sorted(ctx.prefill_failed)))
        return True

    def _upstream_body(self, ctx: _Ctx, pool: Pool, kv: dict[str, Any] | None = None
                       ) -> bytes:
        """The body sent to ``pool``; ``kv``: the prefill pool's ``kv_transfer_params``
        (a decode pool's request)."""
        if ctx.delivered is not None and ctx.resp is not None and ctx.resp.prepared:
            body = continuation_body(ctx.parsed, pool.upstream_model, ctx.delivered)
            assert body is not None  # checked before resuming
            if kv is None:
                return body
            obj, strict = load_json(body)
            return dump_json({**obj, "kv_transfer_params": kv}, strict)
        if pool.upstream_model == ctx.parsed.model and kv is None:
            return ctx.raw
        extra: dict[str, Any] = {"model": pool.upstream_model}
        if kv is not None:
            extra["kv_transfer_params"] = kv
        return dump_json({**ctx.parsed.body, **extra}, ctx.parsed.strict_json)

    def _prefill_body(self, ctx: _Ctx, prefill: Pool) -> bytes:
        """The prompt as a prefill request: one token, not streamed, asking the engine
        to keep the KV cache for a remote decode (vLLM's KV-connector fields)."""
        obj, strict = load_json(self._upstream_body(ctx, prefill))
        obj = {k: v for k, v in obj.items() if k != "stream_options"}
        obj.update(stream=False, max_tokens=1,
                   kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})
        if "max_completion_tokens" in obj:
            obj["max_completion_tokens"] = 1
        return dump_json(obj, strict)

    async def _prefill(self, ctx: _Ctx, prefill: Pool) -> dict[str, Any] | None:
        """The prefill hop of a disaggregated pair: the prompt on a backend of
        ``prefill`` (another one after a failure); returns the ``kv_transfer_params``
        its answer carries (None: the decode pool prefills itself). Raises
        :class:`_Retry` (kind ``prefill``) when no prefill backend could do it."""
        m, tier = self.metrics, ctx.tier.name
        body = self._prefill_body(ctx, prefill)
        tried: set[Backend] = set()
        why = "no prefill backend available"
        for _ in range(self.settings.max_attempts):
            backend = prefill.pick_backend(time.monotonic(), tried)
            if backend is None:
                break
            tried.add(backend)
            try:
                kv, outcome = await self._prefill_at(ctx, prefill, backend, body)
            except _Retry as e:
                why = e.message
                m.child(m.prefill_hops, tier, prefill.name, "error").inc()
                m.child(m.errors, tier, prefill.name, e.kind).inc()
                log.warning("request %s: prefill at %s (pool %s) failed: %s", ctx.request_id,
                            safe_url(backend.url), prefill.name, e.message)
                continue
            m.child(m.prefill_hops, tier, prefill.name, outcome).inc()
            return kv
        raise _Retry("prefill", f"prefill pool '{prefill.name}': {why}")

    async def _prefill_at(self, ctx: _Ctx, prefill: Pool, backend: Backend, body: bytes
                          ) -> tuple[dict[str, Any] | None, str]:
        """One prefill request at one backend (see :meth:`_prefill`): its
        ``kv_transfer_params`` and the hop's outcome (``ok``; ``client_error`` when the
        backend refused the request as such)."""
        assert self._upstream is not None
        s, m = self.settings, self.metrics
        now = time.monotonic()
        target, headers = self._request_head(ctx, prefill, backend, now)
        backend.in_flight += 1
        backend.breaker.on_dispatch(now)
        if backend.stats.trial:
            backend.stats.trial_in_flight = True
        gauge = m.child(m.in_flight, ctx.tier.name, prefill.name)
        gauge.inc()
        upstream: UpstreamResponse | None = None
        verdict: bool | None = False
        try:
            try:
                upstream = await self._upstream.post(
                    target, headers, body, connect_timeout=s.connect_timeout_s,
                    read_timeout=s.first_byte_timeout_s, deadline=ctx.deadline)
                answer = await upstream.read()
            except (TimeoutError, UpstreamError) as e:
                raise _Retry("connect", f"prefill request failed: {e or type(e).__name__}"
                             ) from None
            if upstream.status == 429:
                verdict = None  # alive, only busy
            if upstream.status != 200:
                if upstream.status not in _RETRY_STATUSES:
                    # The request's own fault: the decode backend answers it.
                    verdict = True
                    return None, "client_error"
                raise _Retry("status_5xx" if upstream.status != 429 else "status_429",
                             f"HTTP {upstream.status} from prefill backend", upstream.status)
            verdict = True
            # The answer is one token: its time is the backend's TTFT, for outlier
            # detection among the prefill pool's backends.
            took_s = time.monotonic() - now
            m.child(m.prefill_seconds, ctx.tier.name, prefill.name).observe(took_s)
            self._observe(backend, ttft_s=took_s)
            try:
                kv = json.loads(answer).get("kv_transfer_params")
            except (ValueError, AttributeError):
                kv = None
            return (kv if isinstance(kv, dict) else None), "ok"
        finally:
            backend.in_flight -= 1
            gauge.dec()
            if upstream is not None:
                if verdict is True:
                    upstream.release()
                else:
                    upstream.close()
            self._judge(backend, verdict)

    async def _attempt(self, ctx: _Ctx, choice: Choice) -> web.StreamResponse:
        """One try at one backend. Raises :class:`_Retry` when it failed before
        anything reached the client; otherwise returns the client's response."""
        assert self._upstream is not None
        pool, backend = choice.pool, choice.backend
        m, tier = self.metrics, ctx.tier.name
        prefill = None if ctx.skip_prefill else self.router.prefill_for.get(pool.name)
        # The prefill hop first (disaggregated pair); the decode backend's clock, which
        # outlier detection reads, starts when it gets the request.
        kv = await self._prefill(ctx, prefill) if prefill is not None else None
        now = time.monotonic()
        target, headers = self._request_head(ctx, pool, backend, now)
        backend.in_flight += 1
        backend.breaker.on_dispatch(now)
        st = backend.stats
        if st.trial:
            st.trial_in_flight = True
        gauge = m.child(m.in_flight, tier, pool.name)
        gauge.inc()
        upstream: UpstreamResponse | None = None
        verdict: bool | None = None  # True ok, False failure, None no judgement
        try:
            upstream = await self._post(ctx, pool, backend, target, headers, kv)
            resp: web.StreamResponse
            verdict, resp = await self._answer(ctx, pool, backend, upstream, now)
            return resp
        except _Retry as e:
            # A backend answering 429 is alive, only busy: no verdict for its breaker.
            verdict = None if e.kind == "status_429" else False
            raise
        except _Resume:
            verdict = False
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

    def _request_head(self, ctx: _Ctx, pool: Pool, backend: Backend, now: float
                      ) -> tuple[Target, bytes]:
        """The target and extra header lines of an attempt at ``backend``; raises when
        the request is out of time or the backend is gone."""
        if ctx.deadline - now <= 0:
            raise ApiError(504, f"request timed out after {self.settings.request_timeout_s} s",
                           "server_error", "timeout")
        target = self._targets.get((backend, ctx.parsed.kind))
        if target is None:
            raise _Retry("connect", "backend removed by a reload")
        headers = b"Content-Type: application/json\r\nX-Request-Id: %b\r\n%b" % (
            ctx.request_id.encode(), self._auth_lines.get(pool.name, b""))
        return target, headers

    async def _post(self, ctx: _Ctx, pool: Pool, backend: Backend, target: Target,
                    headers: bytes, kv: dict[str, Any] | None = None) -> UpstreamResponse:
        """Send the request and wait for the response headers. A failure raises
        :class:`_Retry` or (timed out) :class:`ApiError`; the caller judges both as the
        backend's failure."""
        assert self._upstream is not None
        s = self.settings
        try:
            return await self._upstream.post(
                target, headers,
                self._upstream_body(ctx, pool, kv), connect_timeout=s.connect_timeout_s,
                read_timeout=s.first_byte_timeout_s, deadline=ctx.deadline)
        except ConnectTimeout:
            raise _Retry("connect", f"connect timeout after {s.connect_timeout_s} s"
                         ) from None
        except TimeoutError:
            raise self._timeout(ctx, pool, "no response headers") from None
        except ConnectError as e:
            if pool.health_path:  # a refused connection: down until a check passes
                backend.healthy = False
            raise _Retry("connect", f"cannot connect: {e}") from None
        except UpstreamError as e:
            raise _Retry("connect", f"connection lost before the response: {e}"
                         ) from None

    async def _answer(self, ctx: _Ctx, pool: Pool, backend: Backend,
                      upstream: UpstreamResponse, t_sent: float
                      ) -> tuple[bool | None, web.StreamResponse]:
        """The client's response from the backend's: (verdict on the backend, response)."""
        if upstream.status != 200:
            return await self._non_200(ctx, pool, upstream)
        if ctx.parsed.stream:
            return await self._stream(ctx, pool, backend, upstream, t_sent)
        return await self._buffered(ctx, pool, upstream)

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
        self._judge_outlier(backend, verdict)

    # ---- gray failures (route/outlier.py) ---------------------------------------------

    def _judge_outlier(self, backend: Backend, verdict: bool | None) -> None:
        cfg = self.settings.outlier
        if not cfg.enabled:
            return
        st = backend.stats
        # Only the trial request (sent after the cool-down) decides; requests sent before
        # the ejection and ending after it say nothing new. Consecutive failures of a
        # backend in rotation are the circuit breaker's (gateway.breaker).
        if not (st.trial and st.trial_in_flight) or st.ejected(time.monotonic()):
            return
        if verdict is False:
            self._eject(backend, "its trial request failed")
        elif verdict is True:
            self._restore(backend)  # a trial with no latency verdict that succeeded
        else:
            st.trial_in_flight = False  # no verdict (client left): another trial

    def _observe(self, backend: Backend, ttft_s: float | None = None,
                 tpot_s: float | None = None) -> None:
        """A latency sample of one request at ``backend``: update its averages and
        eject it, or restore it from trial, against its pool's peers."""
        cfg = self.settings.outlier
        if not cfg.enabled:
            return
        st = backend.stats
        if ttft_s is not None:
            st.add_ttft(ttft_s, cfg.ewma_alpha)
        if tpot_s is not None:
            st.add_tpot(tpot_s, cfg.ewma_alpha)
        pool = self.router.pools.get(backend.pool)
        if pool is None or len(pool.backends) < 2:
            return  # no peers to compare with
        peers = [b.stats for b in pool.backends if b is not backend]
        now = time.monotonic()
        if st.trial and (st.ejected(now) or not st.trial_in_flight):
            return  # samples of requests sent before the ejection decide nothing
        if st.trial:
            if tpot_s is None and ttft_s is not None and st.tpot_n == 0:
                reason = slow_reason(st, peers, cfg, own_samples=1)
                if reason is not None:
                    self._eject(backend, reason)
                return  # TTFT fine: the TPOT sample decides
            reason = slow_reason(st, peers, cfg, own_samples=1)
            if reason is not None:
                self._eject(backend, reason)
            else:
                self._restore(backend)
        elif not st.ejected(now):
            reason = slow_reason(st, peers, cfg)
            if reason is not None and may_eject([b.stats for b in pool.backends], now, cfg):
                self._eject(backend, reason)
        for b in pool.backends:
            b.weight = relative_speed(b.stats, [p.stats for p in pool.backends if p is not b],
                                      cfg)

    def _eject(self, backend: Backend, reason: str) -> None:
        cfg = self.settings.outlier
        st = backend.stats
        cool_s = ejection_s(st, cfg)
        st.ejections += 1
        st.ejected_until = time.monotonic() + cool_s
        st.trial = True  # when the cool-down ends, one request decides
        st.trial_in_flight = False
        st.reset_latency()
        self.metrics.child(self.metrics.ejections, backend.pool, safe_url(backend.url)).inc()
        log.warning("backend %s (pool %s) ejected for %g s: %s", safe_url(backend.url),
                    backend.pool, cool_s, reason)
        self._set_up_gauge(backend)

    def _restore(self, backend: Backend) -> None:
        st = backend.stats
        st.trial = False
        st.trial_in_flight = False
        st.ejected_until = 0.0
        log.warning("backend %s (pool %s) is back in rotation (trial request passed)",
                    safe_url(backend.url), backend.pool)
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
        if ctx.resp is not None:
            # A continuation refused (the client already has a stream): another backend
            # may take it; the client cannot get a JSON answer any more.
            raise _Retry("continuation_refused", f"HTTP {status} from backend: {text}", status)
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

    def _resume_on(self, ctx: _Ctx) -> bool:
        return (self._resume.get(ctx.tier.name, self.settings.resume_streams)
                and self.settings.max_resumes > 0 and can_resume(ctx.parsed))

    async def _stream(self, ctx: _Ctx, pool: Pool, backend: Backend,
                      upstream: UpstreamResponse, t_sent: float
                      ) -> tuple[bool | None, web.StreamResponse]:
        resuming = ctx.resp is not None
        # Built (not sent) while the backend is still working on the first token, so
        # that the first token is not kept waiting for it.
        resp = ctx.resp or _SSEResponse(
            status=200, headers={**_SSE_HEADERS, **self._headers(ctx, pool)})
        first = await self._first_bytes(ctx, pool, upstream, resuming)
        t_first = time.monotonic()
        self._observe(backend, ttft_s=t_first - t_sent)
        if ctx.t_first is None:
            ctx.t_first = t_first
        seg = self._segment(ctx, resuming, first, t_first)
        chunk = first
        while chunk:
            events = seg.take(chunk)
            if events and not await self._forward(ctx, pool, resp, seg, events):
                return None, resp  # the client left
            if not seg.sampled and seg.events >= _TPOT_SAMPLE_EVENTS:
                # An early TPOT sample: a slow backend shows within a few tokens.
                seg.sampled = True
                self._observe(backend, tpot_s=tpot(seg.t_first, time.monotonic(), seg.events))
            try:
                chunk = await upstream.readany()
            except (TimeoutError, UpstreamError) as e:
                if seg.ended:
                    break  # the client has everything; only the backend's end is missing
                await self._read_failed(ctx, pool, resp, seg, e)
                return False, resp
            if chunk:
                seg.t_last = time.monotonic()
        await self._finish_stream(ctx, pool, backend, resp, seg)
        return True, resp

    async def _first_bytes(self, ctx: _Ctx, pool: Pool, upstream: UpstreamResponse,
                           resuming: bool) -> bytes:
        """Wait for the first bytes before answering the client: until then a failure
        can still be retried elsewhere without the client noticing."""
        try:
            first = await upstream.readany()
        except TimeoutError:
            if resuming:
                raise _Retry("timeout", "no first token of the continuation") from None
            raise self._timeout(ctx, pool, "no first token") from None
        except UpstreamError as e:
            raise _Retry("mid_stream", f"before the first token: {e}") from None
        if not first:
            raise _Retry("mid_stream", "backend closed the stream before the first token")
        return first

    def _segment(self, ctx: _Ctx, resuming: bool, first: bytes, t_first: float) -> _Segment:
        """The bookkeeping of the part of ``ctx``'s stream that one backend serves."""
        d = ctx.delivered
        if d is None and self._resume_on(ctx):
            d = ctx.delivered = Delivered()
        seg = _Segment(delivered=d, resuming=resuming, t_first=t_first, t_last=t_first,
                       tail=first)
        if resuming and d is not None:
            d.fold()
            seg.prior = d.tokens
            d.segments += 1
        return seg

    async def _forward(self, ctx: _Ctx, pool: Pool, resp: web.StreamResponse, seg: _Segment,
                       events: bytes) -> bool:
        """Send ``events`` to the client (the headers with the first); False when the
        client has left."""
        n = events.count(b"data:")
        seg.events += n
        ctx.events += n
        seg.tail = events
        # Writes and reads are guarded apart: a reset while writing is the
        # client leaving; a failure while reading is the backend's.
        try:
            if not resp.prepared:
                await resp.prepare(ctx.request)
                ctx.resp = resp
            if seg.ended:
                pass  # nothing may follow "[DONE]"; keep draining the backend
            elif events.endswith(b"[DONE]\n\n"):
                await resp.write_eof(events)  # last chunk and terminator in one send
                seg.ended = True
            else:
                await resp.write(events)
        except ConnectionResetError:
            m = self.metrics
            m.child(m.requests, ctx.tier.name, pool.name, "cancelled").inc()
            return False
        return True

    async def _read_failed(self, ctx: _Ctx, pool: Pool, resp: web.StreamResponse,
                           seg: _Segment, e: TimeoutError | UpstreamError) -> None:
        """The backend failed mid-stream: raise :class:`_Resume` when the stream may go
        on elsewhere, else end it with an error event."""
        d = seg.delivered
        if (d is not None and d.resumable and resp.prepared
                and ctx.resumes < self.settings.max_resumes):
            raise _Resume(f"{type(e).__name__}: {e}") from None
        m = self.metrics
        m.child(m.errors, ctx.tier.name, pool.name,
                "timeout" if isinstance(e, TimeoutError) else "mid_stream").inc()
        await self._stream_failed(ctx, pool, resp, f"{type(e).__name__}: {e}")

    async def _finish_stream(self, ctx: _Ctx, pool: Pool, backend: Backend,
                             resp: web.StreamResponse, seg: _Segment) -> None:
        """The backend ended the stream: end the client's and record the metrics."""
        if seg.pending and not seg.ended:
            with contextlib.suppress(ConnectionError):
                await resp.write(seg.pending)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        if not seg.sampled and seg.events > 2:
            self._observe(backend, tpot_s=tpot(seg.t_first, seg.t_last, seg.events))
        tokens = _usage_tokens(seg.tail)
        if tokens is None:  # one SSE event per token, less the final "[DONE]"
            tokens = ctx.events - 1 if b"[DONE]" in seg.tail else ctx.events
        m, tier = self.metrics, ctx.tier.name
        assert ctx.t_first is not None  # set when this segment's first bytes came
        if seg.resuming:
            m.child(m.resumes, tier, pool.name, "completed").inc()
        m.child(m.requests, tier, pool.name, "ok").inc()
        m.child(m.ttft, tier, pool.name).observe(ctx.t_first - ctx.t0)
        if tokens > 1:  # tokens that arrive in one read count as 0 s apart, not as missing
            m.child(m.tpot, tier, pool.name).observe(tpot(ctx.t_first, seg.t_last, tokens))
        m.child(m.duration, tier, pool.name).observe(seg.t_last - ctx.t0)

    async def _end_stream(self, ctx: _Ctx, pool: Pool) -> None:
        """Everything was generated before the backend failed; only ``[DONE]`` was
        missing: send it."""
        m = self.metrics
        m.child(m.requests, ctx.tier.name, pool.name, "ok").inc()
        assert ctx.resp is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ctx.resp.write_eof(b"data: [DONE]\n\n")

    async def _stream_failed(self, ctx: _Ctx, pool: Pool | None, resp: web.StreamResponse,
                             why: str) -> None:
        """Every attempt failed after the client got the first bytes: end the stream
        with an SSE ``error`` event (OpenAI's format) so the client knows it is
        incomplete."""
        m, tier = self.metrics, ctx.tier.name
        name = pool.name if pool is not None else NO_POOL
        msg = f"backend of pool '{name}' failed during the stream"
        m.child(m.requests, tier, name, "upstream_error").inc()
        log.warning("request %s: %s (%s)", ctx.request_id, msg, why)
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
