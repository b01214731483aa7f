"""Backends' own load, read from their Prometheus ``/metrics``: the share of KV-cache
blocks in use and the requests running and waiting. The ``least-kv`` policy routes on
it; without it the gateway only knows its own in-flight counts.

Metric names (gauges): vLLM ``vllm:kv_cache_usage_perc`` (``vllm:gpu_cache_usage_perc``
before it was renamed), ``vllm:num_requests_running``, ``vllm:num_requests_waiting``;
SGLang ``sglang:token_usage``, ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``.
``tokenfleet emulate`` exports the vLLM names. A server with several engines (data
parallel ranks) reports one sample per engine: KV use is their mean, counts their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tokenfleet.route.metrics_scrape")

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")


@dataclass(frozen=True)
class BackendLoad:
    kv_used: float | None  # 0..1
    running: float | None
    waiting: float | None
    at_s: float  # monotonic time of the scrape


def _samples(text: str) -> dict[str, list[float]]:
    """Metric name -> sample values, from Prometheus' text exposition format."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end <= 0:
            continue
        name = line[:name_end]
        rest = line[line.index("}") + 1:] if line[name_end] == "{" and "}" in line else \
            line[name_end:]
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isfinite(value):
            out.setdefault(name, []).append(value)
    return out


def _first(samples: dict[str, list[float]], names: Iterable[str]) -> list[float] | None:
    return next((samples[n] for n in names if n in samples), None)


def parse_load(text: str, at_s: float = 0.0) -> BackendLoad:
    s = _samples(text)
    kv = _first(s, KV_USAGE)
    run = _first(s, RUNNING)
    wait = _first(s, WAITING)
    return BackendLoad(kv_used=(sum(kv) / len(kv)) if kv else None,
                       running=sum(run) if run is not None else None,
                       waiting=sum(wait) if wait is not None else None, at_s=at_s)


class MetricsScraper:
    """Polls ``<url>/metrics`` of every backend every ``interval_s``; ``load(url)`` is the
    latest reading, or None when it is older than ``stale_after_s`` or never came."""

    def __init__(self, urls: Iterable[str], interval_s: float = 1.0, timeout_s: float = 1.0,
                 stale_after_s: float = 5.0, path: str = "/metrics") -> None:
        self.urls = list(dict.fromkeys(urls))
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.stale_after_s, self.path = stale_after_s, path
        self._loads: dict[str, BackendLoad] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None

    def load(self, url: str, now: float | None = None) -> BackendLoad | None:
        got = self._loads.get(url)
        now = time.monotonic() if now is None else now
        return got if got is not None and now - got.at_s <= self.stale_after_s else None

    async def scrape_once(self) -> None:
        import aiohttp

        assert self._session is not None

        async def one(url: str) -> None:
            try:
                async with self._session.get(
                        url + self.path,
                        timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                    if r.status == 200:
                        self._loads[url] = parse_load(await r.text(), time.monotonic())
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                log.debug("scrape %s%s failed: %r", url, self.path, e)

        await asyncio.gather(*(one(u) for u in self.urls))

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()

        async def loop() -> None:
            while True:
                await self.scrape_once()
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()


def prometheus_text(running: int, waiting: int, kv_used: float, model: str) -> str:
    """The gauges above in vLLM's names, as ``tokenfleet emulate`` serves them."""
    lab = '{model_name="' + model.replace('"', "") + '"}'
    return (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{lab} {running}\n"
            f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{lab} {waiting}\n"
            f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{lab} "
            f"{kv_used:.6f}\n")
