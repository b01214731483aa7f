"""Open-loop load generator: replay a trace against an OpenAI-compatible endpoint and
measure what a client sees.

Open loop means each request is sent at its scheduled time whether or not earlier
ones have finished — a slow server builds a queue instead of slowing the offered
load, as with real users. Arrivals come from the trace's own timestamps (optionally
sped up) or from a Poisson process at a given rate, with lengths from the trace.

Every request ends in exactly one outcome: ``ok`` (stream ended with ``[DONE]`` and
no error event), ``rejected`` (HTTP 429) or ``failed`` (any other status, an error
event, a broken or truncated stream, a timeout), with the reason kept.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.metrics import Latency, attainment, meets_slo, tpot, ttft
from tokenfleet.route.openai_api import load_json, prompt_of_tokens
from tokenfleet.route.summary import LivePoolResult, LiveTierResult, RunSummary, latency
from tokenfleet.workload.generate import EmpiricalLengths, FixedLengths, poisson
from tokenfleet.workload.trace import Trace

Outcome = Literal["ok", "rejected", "failed"]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """One request to send: at ``arrival_s`` (s from the start) to ``tier``."""

    arrival_s: float
    tier: str
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request (times in seconds, ``time.perf_counter``)."""

    tier: str
    outcome: Outcome = "failed"
    status: int = 0
    reason: str | None = None  # short failure kind, e.g. "http_502", "stream_error"
    message: str | None = None
    t_send: float = 0.0
    t_end: float = 0.0
    ttft_s: float | None = None
    tpot_s: float | None = None
    output_tokens: int = 0
    attempts: int = 1  # backends the gateway tried (X-Tokenfleet-Attempts)
    pool: str | None = None


@dataclass(frozen=True)
class TierInfo:
    """What the summary needs to know about a tier: SLOs (s) and its pools' $/h, W."""

    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    usd_per_hour: float = 0.0
    watts: float = 0.0


@dataclass
class LoadResult:
    results: list[RequestResult]
    wall_s: float
    late_s_p99: float = 0.0  # how late the generator sent (99th pct, s): >> 0 = overloaded
    tiers: dict[str, TierInfo] = field(default_factory=dict)
    offered_per_s: float = 0.0  # requests / span of the schedule


# ---- schedules -----------------------------------------------------------------------

def _tiers_for(n: int, mix: dict[str, float], rng: np.random.Generator) -> list[str]:
    names = list(mix)
    if not names:
        raise TokenfleetError("no tier to send to: give --model or --tier-mix")
    w = np.asarray([mix[k] for k in names], dtype=float)
    if np.any(w < 0) or not w.sum() > 0:
        raise TokenfleetError(f"tier mix weights must be >= 0 and not all 0, got {mix}")
    idx = rng.choice(len(names), size=n, p=w / w.sum())
    return [names[i] for i in idx]


def schedule(trace: Trace | None, mix: dict[str, float], *, rate_per_s: float | None = None,
             duration_s: float | None = None, speedup: float = 1.0, limit: int | None = None,
             input_tokens: int | None = None, output_tokens: int | None = None,
             seed: int = 0) -> list[LoadRequest]:
    """Requests to send.

    * ``rate_per_s`` None: the trace's own arrivals, divided by ``speedup``, cut at
      ``duration_s`` (seconds of replay) and ``limit`` requests.
    * ``rate_per_s`` given: Poisson arrivals at that rate for ``duration_s`` (default:
      the trace's span, else 60 s), lengths resampled from the trace or fixed by
      ``input_tokens`` / ``output_tokens``.
    Each request goes to a tier drawn from ``mix`` (tier -> weight).
    """
    rng = np.random.default_rng(seed)
    if speedup <= 0 or not math.isfinite(speedup):
        raise TokenfleetError(f"speedup must be > 0, got {speedup}")
    if duration_s is not None and not duration_s > 0:
        raise TokenfleetError(f"duration must be > 0 s, got {duration_s}")
    if rate_per_s is None:
        if trace is None:
            raise TokenfleetError("give a trace to replay, or a rate for Poisson arrivals")
        arr = trace.arrival_s / speedup
        inp, out = trace.input_tokens, trace.output_tokens
    else:
        if input_tokens is not None or output_tokens is not None or trace is None:
            if input_tokens is None or output_tokens is None:
                raise TokenfleetError("without a trace give both --input-tokens and "
                                      "--output-tokens")
            lengths: FixedLengths | EmpiricalLengths = FixedLengths(input_tokens, output_tokens)
        else:
            lengths = EmpiricalLengths.from_trace(trace)
        dur = duration_s or (trace.duration_s if trace is not None and trace.duration_s > 0
                             else 60.0)
        gen = poisson(rate_per_s, dur, lengths, seed=seed)
        arr, inp, out = gen.arrival_s, gen.input_tokens, gen.output_tokens
    keep = np.ones(arr.size, dtype=bool)
    if duration_s is not None:
        keep &= arr < duration_s
    n = int(keep.sum()) if limit is None else min(int(keep.sum()), limit)
    arr, inp, out = arr[keep][:n], inp[keep][:n], out[keep][:n]
    tiers = _tiers_for(n, mix, rng)
    return [LoadRequest(float(a), t, int(i), max(int(o), 1))
            for a, t, i, o in zip(arr, tiers, inp, out, strict=True)]


# ---- the client ----------------------------------------------------------------------

class LoadGenerator:
    """Sends a schedule to ``target`` (base URL) and records each outcome."""

    def __init__(self, target: str, api_key: str | None = None, kind: str = "chat",
                 stream: bool = True, timeout_s: float = 600.0) -> None:
        if kind not in ("chat", "completion"):
            raise TokenfleetError(f"kind must be chat or completion, got '{kind}'")
        self.target = target.rstrip("/")
        self.api_key = api_key
        self.kind = kind
        self.stream = stream
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10.0)
        self._path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def _body(self, r: LoadRequest) -> bytes:
        prompt = prompt_of_tokens(r.input_tokens)
        body: dict[str, Any] = {"model": r.tier, "max_tokens": r.output_tokens,
                                "stream": self.stream}
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body).encode()

    async def tiers(self, session: aiohttp.ClientSession) -> dict[str, TierInfo]:
        """Tier metadata from the gateway's ``/v1/models`` (empty for a plain backend)."""
        try:
            async with session.get(self.target + "/v1/models", headers=self._headers()) as r:
                if r.status != 200:
                    return {}
                data = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return {}
        out = {}
        for m in data.get("data", []) if isinstance(data, dict) else []:
            meta = m.get("tokenfleet") or {}
            if "pools" not in meta:  # a plain backend, not a tokenfleet gateway
                continue
            pools = meta["pools"] or []
            out[m.get("id")] = TierInfo(
                slo_ttft_s=meta.get("slo_ttft_s"), slo_tpot_s=meta.get("slo_tpot_s"),
                usd_per_hour=sum(p.get("usd_per_hour", 0.0) for p in pools),
                watts=sum(p.get("watts", 0.0) for p in pools))
        return out

    async def run(self, requests: list[LoadRequest],
                  on_done: Callable[[int, int], None] | None = None) -> LoadResult:
        """Send every request at its time; wait for all; return what happened."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30.0)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                         cookie_jar=aiohttp.DummyCookieJar(),
                                         skip_auto_headers=("User-Agent",)) as session:
            tiers = await self.tiers(session)
            results = [RequestResult(tier=r.tier) for r in requests]
            bodies = [self._body(r) for r in requests]  # built before the clock starts
            done = 0
            late: list[float] = []

            def finished(_: asyncio.Task[None]) -> None:
                nonlocal done
                done += 1
                if on_done is not None:
                    on_done(done, len(requests))

            tasks: set[asyncio.Task[None]] = set()
            # perf_counter, not loop.time(): uvloop's clock has 1 ms resolution, too
            # coarse for the sub-millisecond differences the gateway benchmark measures.
            start = time.perf_counter()
            for i, r in enumerate(requests):
                due = start + r.arrival_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                late.append(max(time.perf_counter() - due, 0.0))
                t = asyncio.create_task(self._one(session, bodies[i], results[i]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                t.add_done_callback(finished)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            wall = max((r.t_end for r in results), default=start) - start
            span = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
            return LoadResult(results, max(wall, 0.0),
                              float(np.percentile(late, 99)) if late else 0.0, tiers,
                              len(requests) / span if span > 0 else 0.0)

    async def _one(self, session: aiohttp.ClientSession, body: bytes, res: RequestResult
                   ) -> None:
        res.t_send = time.perf_counter()
        try:
            async with session.post(self.target + self._path, data=body,
                                    headers=self._headers()) as resp:
                res.status = resp.status
                res.attempts = int(resp.headers.get("X-Tokenfleet-Attempts", "1") or 1)
                res.pool = resp.headers.get("X-Tokenfleet-Pool")
                if resp.status != 200:
                    res.outcome = "rejected" if resp.status == 429 else "failed"
                    res.reason = f"http_{resp.status}"
                    res.message = _error_message(await resp.read())
                elif self.stream:
                    await self._read_stream(resp, res)
                else:
                    obj = await resp.json()
                    res.ttft_s = None
                    res.output_tokens = int((obj.get("usage") or {}).get("completion_tokens")
                                            or 0)
                    res.outcome = "ok"
        except TimeoutError:
            res.outcome, res.reason, res.message = "failed", "timeout", "client timeout"
        except (aiohttp.ClientError, OSError) as e:
            res.outcome, res.reason = "failed", "connection"
            res.message = f"{type(e).__name__}: {e}"[:300]
        except ValueError as e:  # a body that is not the JSON / SSE it should be
            res.outcome, res.reason = "failed", "bad_response"
            res.message = f"{type(e).__name__}: {e}"[:300]
        finally:
            res.t_end = time.perf_counter()

    async def _read_stream(self, resp: aiohttp.ClientResponse, res: RequestResult) -> None:
        t_first = t_last = None
        chunks = 0
        usage_tokens = None
        done = False
        async for line in _sse_lines(resp.content):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            now = time.perf_counter()
            obj = load_json(payload)[0]  # orjson: the generator must not be the bottleneck
            if "error" in obj:
                res.outcome, res.reason = "failed", "stream_error"
                res.message = _error_message(payload)
                return
            for c in obj.get("choices") or ():
                text = (c.get("delta") or {}).get("content") or c.get("text")
                if text:
                    chunks += 1
                    if t_first is None:
                        t_first = now
                    t_last = now
            usage = obj.get("usage")
            if usage and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = usage["completion_tokens"]
        if not done:
            res.outcome, res.reason = "failed", "truncated"
            res.message = "stream ended without [DONE]"
            return
        res.outcome = "ok"
        n = usage_tokens if usage_tokens is not None else chunks
        res.output_tokens = n
        if t_first is not None:
            res.ttft_s = ttft(res.t_send, t_first)
            if n > 1 and t_last is not None:
                res.tpot_s = tpot(t_first, t_last, n)


async def _sse_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Lines of an SSE body (``text/event-stream`` is line-framed), read in whole chunks
    as they arrive: one await per chunk rather than one per line."""
    rest = b""
    async for chunk in content.iter_any():
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            line = line.strip()
            if line:
                yield line
    if rest.strip():
        yield rest.strip()


def _error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
        return str(obj["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body[:300].decode("utf-8", "replace")


# ---- the summary ---------------------------------------------------------------------

def summarize(result: LoadResult, tiers: dict[str, TierInfo] | None = None,
              target: str = "") -> RunSummary:
    """Fold results into the summary (see ``route.summary``)."""
    info = {**result.tiers, **(tiers or {})}
    res = result.results
    wall = result.wall_s
    by_tier: dict[str, list[RequestResult]] = {}
    by_pool: dict[str, list[RequestResult]] = {}
    for r in res:
        by_tier.setdefault(r.tier, []).append(r)
        if r.pool:
            by_pool.setdefault(r.pool, []).append(r)
    out: dict[str, LiveTierResult] = {}
    for name, rs in sorted(by_tier.items()):
        ok = [r for r in rs if r.outcome == "ok"]
        ti = info.get(name, TierInfo())
        has_slo = ti.slo_ttft_s is not None or ti.slo_tpot_s is not None
        met = _met(ok, ti) if has_slo else 0
        ttft, tpot, e2e = _latencies(ok)
        out[name] = LiveTierResult(
            requests=len(rs), completed=len(ok),
            rejected=sum(1 for r in rs if r.outcome == "rejected"),
            failed=sum(1 for r in rs if r.outcome == "failed"),
            retried=sum(1 for r in rs if r.attempts > 1),
            slo_ttft_s=ti.slo_ttft_s, slo_tpot_s=ti.slo_tpot_s,
            ttft_s=ttft, tpot_s=tpot, e2e_s=e2e,
            slo_attainment=attainment(met, len(rs)) if has_slo else None,
            mean_ttft_within_slo=(None if ti.slo_ttft_s is None or ttft.mean is None
                                  else ttft.mean <= ti.slo_ttft_s),
            mean_tpot_within_slo=(None if ti.slo_tpot_s is None or tpot.mean is None
                                  else tpot.mean <= ti.slo_tpot_s),
            output_tokens_per_s=sum(r.output_tokens for r in ok) / wall if wall else 0.0,
            goodput_requests_per_s=met / wall if wall and has_slo else 0.0)
    pools = {}
    for name, rs in sorted(by_pool.items()):
        ok = [r for r in rs if r.outcome == "ok"]
        ttft, tpot, e2e = _latencies(ok)
        pools[name] = LivePoolResult(requests=len(rs), completed=len(ok), ttft_s=ttft,
                                     tpot_s=tpot, e2e_s=e2e)
    used = [info[t] for t in by_tier if t in info]
    cost = sum(t.usd_per_hour for t in used) * wall / 3600 if used else None
    energy = sum(t.watts for t in used) * wall / 3.6e6 if used else None
    reasons = Counter(r.reason or "unknown" for r in res if r.outcome != "ok")
    notes = []
    hint = _failure_hint(res, target)
    if hint:
        notes.append(hint)
    if result.late_s_p99 > 0.05:
        notes.append(f"the load generator fell behind its schedule (p99 "
                     f"{result.late_s_p99 * 1e3:.0f} ms late): the offered load was lower "
                     f"than asked")
    return RunSummary(
        source="loadtest", target=target, requests=len(res),
        completed=sum(1 for r in res if r.outcome == "ok"),
        retried=sum(1 for r in res if r.attempts > 1),
        rejected=sum(1 for r in res if r.outcome == "rejected"),
        failed=sum(1 for r in res if r.outcome == "failed"),
        errors=dict(sorted(reasons.items())), cost_usd=cost, energy_kwh=energy, wall_s=wall,
        offered_requests_per_s=result.offered_per_s, tiers=out, pools=pools, notes=notes)


_HINTS = {
    "http_401": "the target wants an API key: set $TOKENFLEET_API_KEYS (the variable `serve` "
                "reads; the first key is used) or name yours with --api-key-env",
    "http_403": "the key was refused for this call: check the key and its permissions",
    "http_404": "the model (tier) is unknown at the target: list them with GET /v1/models "
                "and pass one with --model",
    "http_400": "the target refused the requests as invalid (see the message): check "
                "--input-tokens/--output-tokens against the model's context",
    "http_429": "every request was rate-limited: lower --rate, or raise the limits in "
                "backends.yaml (tiers: / gateway.per_key)",
    "http_503": "the target has no healthy backend (or is shutting down): check its /health "
                "and backends.yaml",
    "http_502": "every backend failed: check the backends' own logs and /health",
    "connection": "cannot connect to the target: is the gateway running and is --target "
                  "its URL?",
    "timeout": "every request timed out: the target is overloaded or stalled; lower --rate "
               "or raise --timeout",
}


def _failure_hint(res: list[RequestResult], target: str) -> str | None:
    """When every request failed the same way, what to fix."""
    if not res or any(r.outcome == "ok" for r in res):
        return None
    reasons = Counter(r.reason for r in res)
    if len(reasons) != 1:
        return None
    reason = next(iter(reasons))
    if reason is None:
        return None
    msg = next((r.message for r in res if r.message), None)
    what = _HINTS.get(reason, "see the error message")
    return (f"all {len(res)} requests failed with {reason}"
            + (f" ({msg[:160]})" if msg else "") + f": {what}")


def _latencies(ok: list[RequestResult]) -> tuple[Latency, Latency, Latency]:
    return (latency([r.ttft_s for r in ok if r.ttft_s is not None]),
            latency([r.tpot_s for r in ok if r.tpot_s is not None]),
            latency([r.t_end - r.t_send for r in ok]))


def _met(ok: list[RequestResult], ti: TierInfo) -> int:
    """Completed requests within the tier's SLOs (no TTFT recorded: a miss)."""
    nan = math.nan
    ttft_s = np.array([nan if r.ttft_s is None else r.ttft_s for r in ok], dtype=float)
    tpot_s = np.array([nan if r.tpot_s is None else r.tpot_s for r in ok], dtype=float)
    return int(meets_slo(ttft_s, tpot_s, ti.slo_ttft_s, ti.slo_tpot_s).sum())


def run_blocking(gen: LoadGenerator, requests: list[LoadRequest],
                 on_done: Callable[[int, int], None] | None = None) -> LoadResult:
    """:meth:`LoadGenerator.run` from synchronous code (the CLI)."""
    t0 = time.monotonic()
    result = asyncio.run(gen.run(requests, on_done))
    if not result.results:
        result.wall_s = time.monotonic() - t0
    return result
