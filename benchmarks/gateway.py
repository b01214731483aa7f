"""Gateway overhead benchmark (issue 5): what the gateway adds to a client's TTFT.

Runs, all on this machine over loopback:

* one emulated backend with a fixed tiny latency (``tokenfleet emulate --fixed-ttft
  --fixed-tpot``), in its own process;
* the gateway (``tokenfleet serve``) in front of it, in its own process;
* the open-loop load generator (``tokenfleet.route.loadgen``) in this process.

For each rate (Poisson arrivals, streaming chat requests) it measures client-side TTFT
through the gateway and, simultaneously, of a direct probe stream to the backend;
*added latency* is the difference of the two distributions' p50 and p99. The highest
error-free rate is the last one at
which every request completed and the generator kept its schedule. The machine may be
shared: each rate waits for other processes and other VMs (steal time) to leave it
alone, and is measured again when they did not (``--quiet-*``, ``--retries``).

Then the concurrency check: ``--concurrency`` streaming requests open at once through
the gateway (held open by a slow backend), repeated ``--rounds`` times, recording
errors, the peak in flight the gateway reported and its resident memory after each
round (it must not grow from round to round).

Usage::

    .venv/bin/python benchmarks/gateway.py                      # full run, prints tables
    .venv/bin/python benchmarks/gateway.py --rates 100,500 --duration 5 --concurrency 0
    .venv/bin/python benchmarks/gateway.py --write-results      # also update RESULTS.md
    .venv/bin/python benchmarks/gateway.py --render out.json --write-results  # re-render

Everything stops by itself: each rate runs ``--duration`` seconds, the servers are
terminated at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from tokenfleet.plan.schema import (
    BucketCapacity,
    BucketSplit,
    Cost,
    Plan,
    PlanUnit,
    TierSummary,
)
from tokenfleet.route.child import TOKENFLEET, ChildProcess, simulate_and_loadtest
from tokenfleet.route.loadgen import LoadGenerator, LoadRequest, schedule
from tokenfleet.route.server import freeze_startup_heap, install_uvloop, raise_fd_limit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Gateway overhead (issue 5)"
# Hand-written context for the generated section (what changed, and measurements made
# outside this script); edit it when the gateway changes again.
NOTES = [
    "### What changed (2026-11-23)",
    "",
    "Before: 2026-11-22, this machine, same command: added p50 1.55 ms, p99 6.16 ms at "
    "500 req/s; gateway CPU 0.98 ms/req.",
    "",
    "1. Upstream requests go through `tokenfleet.route.upstream` (pooled keep-alive "
    "HTTP/1.1 connections, responses parsed by httptools, i.e. llhttp) instead of "
    "`aiohttp.ClientSession`. A request is one socket write made by the handler itself "
    "(on Python 3.11 aiohttp writes the body from a new task, one event-loop iteration "
    "later, behind everything else that is ready), and response chunks reach the "
    "handler without aiohttp's per-request objects, header multidicts and per-chunk "
    "timer re-arming. Most of the gain is here: the gateway's CPU per request fell by "
    "about a third.",
    "2. JSON through orjson (request parsing, re-encoding a body with the pool's model "
    "name, the final usage event), with `json` kept for what orjson would read "
    "differently (NaN, integers beyond 64 bits, non-UTF-8).",
    "3. One middleware instead of two; request ids drawn without a system call; the SSE "
    "response object built while the backend works on the first token.",
    "4. `gc.freeze()` once start-up is done, in `serve`, `emulate`, `loadtest`, the bare "
    "proxy and this benchmark's process: a full collection over the ~100k start-up "
    "objects took ~60 ms, a stall every request in flight would see.",
    "5. This benchmark records, for each rate, the CPU other processes used and the steal "
    "time (the host running other VMs), and measures a rate again when either was "
    "high: this machine is shared, and both come and go.",
    "",
    "How much the result depends on the host leaving this VM alone: in the run above, "
    "tries disturbed by steal (0.15–0.83 cores in some second) gave added p99s of "
    "0.7–17 ms at 100–250 req/s, 2.1–7.8 ms at 750 req/s and 6–54 ms at 1000 req/s (kept "
    "in the `--json` output; the 100, 750 and 1000 rows above are such tries, the "
    "retries having run out); in a separate "
    "run at 500 req/s (5 s per try), three disturbed tries (steal 0.36–0.60 cores) gave "
    "added p50 0.96–1.24 ms and p99 6.7–23.6 ms, and the undisturbed fourth 0.87 / "
    "2.57 ms. So the target is met at 500 req/s while the host leaves this VM alone, and "
    "not while other VMs take its CPU away.",
    "",
    "Above 1000 req/s (`--rates 1250,1500,2000 --no-floor --stop-on-failure`, steal "
    "peaks 0.13–0.36 cores): 1250 and 1500 req/s complete without errors (1254 and "
    "1470 req/s achieved) but the 2 cores are saturated by generator, backend and "
    "gateway together (added p50 15.5 and 14.2 ms); at 2000 req/s the generator falls "
    "behind (887 req/s achieved). Highest error-free rate tried: 1500 req/s.",
    "",
]
MODEL = "llama-3.1-8b"
BUCKET = "in0-512_out0-128"


# ---- processes -----------------------------------------------------------------------

def _plan() -> Plan:
    unit = PlanUnit(
        pool="chat/bench", tier="chat", model=MODEL, accelerator="h100-sxm", vendor="nvidia",
        cloud="local", region="loopback", precision="fp8", kv_precision="fp8",
        layout={"tp": 1, "pp": 1, "ep": 1, "dp": 1}, chips_per_replica=1, replicas=1,
        chips=1, price_kind="on_demand", usd_per_chip_hour=1.0, usd_per_hour=1.0,
        watts=700.0, capacity=[BucketCapacity(
            bucket=BUCKET, requests_per_s=1e4, requests_per_s_point=1e4,
            output_tokens_per_s=1e5, concurrency=1e4, ttft_s=0.01, tpot_s=0.01)],
        provenance="benchmark", uncertainty=0.0)
    return Plan(
        scenario="gateway-benchmark", created=dt.datetime.now(dt.UTC).isoformat(),
        objective="cost",
        tiers=[TierSummary(name="chat", model=MODEL, slo_ttft_s=None, slo_tpot_s=None,
                           peak_requests_per_s=1e4, output_tokens_per_s=1e5,
                           usd_per_million_output_tokens=0.0, precisions=["fp8"])],
        units=[unit],
        traffic_split=[BucketSplit(tier="chat", bucket=BUCKET, input_len=64, output_len=4,
                                   peak_requests_per_s=1e4, shares={"chat/bench": 1.0})],
        cost=Cost(usd_per_month=0, fleet_usd_per_month=0, committed_usd_per_month=0,
                  committed_used_usd_per_month=0, on_demand_usd_per_month=0),
        vendor_share={}, power_mw={}, limits={}, baselines=[], constraints=[], solver={})


def start_stack(workdir: Path, ttft_s: float, tpot_s: float
                ) -> tuple[ChildProcess, ChildProcess, str, str]:
    backend = ChildProcess([*TOKENFLEET, "emulate", "--model", MODEL, "--port", "0", "--json",
                    "--fixed-ttft", str(ttft_s), "--fixed-tpot", str(tpot_s)])
    info = json.loads(backend.wait_for(r"^\{.*\"url\".*\}$").group(0))
    (workdir / "plan.json").write_text(_plan().model_dump_json())
    # Per-backend limit above the concurrency check; health checks on, as in production.
    (workdir / "backends.yaml").write_text(
        f"gateway:\n  default_max_in_flight: 10000\npools:\n"
        f"  chat/bench: {{model: {MODEL}, backends: [{info['url']}]}}\n")
    gateway = ChildProcess([*TOKENFLEET, "serve", "--plan", str(workdir / "plan.json"),
                            "--backends", str(workdir / "backends.yaml"), "--port", "0",
                            "--log-level", "warning"])
    url = gateway.wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)
    return backend, gateway, info["url"], url


# ---- the gateway in isolation (issue 18) ----------------------------------------------

ISOLATED_SECTION = "## Gateway in isolation (issue 18)"


def _start_isolated(workdir: Path, ttft_s: float, tpot_s: float, limit: int,
                    health: bool = True) -> tuple[ChildProcess, ChildProcess, str, str]:
    """Backend (emulator) and gateway, each its own process; room for ``limit``
    concurrent streams everywhere. ``health=False``: no active health checks (a backend
    swamped by the test's own load is not taken for dead)."""
    backend = ChildProcess([*TOKENFLEET, "emulate", "--model", MODEL, "--port", "0", "--json",
                            "--fixed-ttft", str(ttft_s), "--fixed-tpot", str(tpot_s),
                            "--max-queue", str(limit)])
    info = json.loads(backend.wait_for(r"^\{.*\"url\".*\}$").group(0))
    (workdir / "plan.json").write_text(_plan().model_dump_json())
    (workdir / "backends.yaml").write_text(
        f"gateway:\n  max_in_flight: {limit}\n  default_max_in_flight: {limit}\n"
        f"  health: {{path: {'/health' if health else 'null'}}}\n"
        f"  connect_timeout_s: 10.0\npools:\n"
        f"  chat/bench: {{model: {MODEL}, backends: [{info['url']}]}}\n")
    gateway = ChildProcess([*TOKENFLEET, "serve", "--plan", str(workdir / "plan.json"),
                            "--backends", str(workdir / "backends.yaml"), "--port", "0",
                            "--log-level", "warning"])
    url = gateway.wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)
    return backend, gateway, info["url"], url


def _loadtest_args(target: str, model: str, rate: float, duration_s: float, tokens: int
                   ) -> list[str]:
    """`tokenfleet loadtest` as a process of its own: the generator does not share the
    gateway's (or this script's) event loop."""
    return [*TOKENFLEET, "loadtest", "--target", target, "--model", model, "--rate",
            str(rate), "--duration", str(duration_s), "--input-tokens", "64",
            "--output-tokens", str(tokens), "--timeout", "300", "--json"]


def _loadtest_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFLEET_API_KEY")}
    return {**env, "PYTHONUNBUFFERED": "1"}


async def isolated_rate(workdir: Path, rate: float, duration_s: float, tokens: int,
                        slices: int = 3) -> dict:
    """Added TTFT (gateway path minus direct) and gateway CPU per 1,000 streamed events at
    ``rate``. Direct and gateway runs alternate in ``slices`` pairs of
    ``duration_s / slices`` each, each from its own generator process, and the medians
    over the pairs are reported: on a shared machine, other work comes and goes between
    two runs, and alternating spreads it over both sides."""
    backend, gateway, burl, gurl = _start_isolated(workdir, 0.002, 0.001, 20000)
    part_s = duration_s / slices
    try:
        await asyncio.sleep(1.0)
        load = os.getloadavg()[0]  # how busy the (shared) machine was
        pairs = []
        for _ in range(slices):
            pair = []
            for target, model in ((burl, MODEL), (gurl, "chat")):
                cpu0 = gateway.cpu_s()
                r = subprocess.run(_loadtest_args(target, model, rate, part_s, tokens),
                                   capture_output=True, text=True, env=_loadtest_env(),
                                   timeout=part_s + 300)
                cpu = gateway.cpu_s() - cpu0
                if r.returncode != 0:
                    raise RuntimeError(f"loadtest failed: {r.stderr[-500:]}")
                res = json.loads(r.stdout)
                pair.append((res, res["tiers"][model]["ttft_s"], cpu))
            pairs.append(pair)

        def med(xs: list[float]) -> float:
            return float(np.median(xs))

        d50 = [p[0][1]["p50"] * 1e3 for p in pairs]
        d99 = [p[0][1]["p99"] * 1e3 for p in pairs]
        g50 = [p[1][1]["p50"] * 1e3 for p in pairs]
        g99 = [p[1][1]["p99"] * 1e3 for p in pairs]
        completed = sum(p[1][0]["completed"] for p in pairs)
        cpu = sum(p[1][2] for p in pairs)
        # Events per stream: one per token, the final (finish_reason) one, the usage one
        # and [DONE].
        events = completed * (tokens + 3)
        return {"rate": rate, "duration_s": duration_s, "slices": slices, "tokens": tokens,
                "requests": sum(p[1][0]["requests"] for p in pairs), "completed": completed,
                "failed": sum(p[1][0]["failed"] for p in pairs),
                "direct_ttft_ms": [med(d50), med(d99)],
                "gateway_ttft_ms": [med(g50), med(g99)],
                "added_ms": [med([g - d for g, d in zip(g50, d50, strict=True)]),
                             med([g - d for g, d in zip(g99, d99, strict=True)])],
                "per_slice_added_ms": [[g - d for g, d in zip(g50, d50, strict=True)],
                                       [g - d for g, d in zip(g99, d99, strict=True)]],
                "gateway_cpu_s": cpu, "events": events,
                "cpu_ms_per_1000_events": cpu / max(events, 1) * 1e6,
                "cpu_ms_per_request": cpu / max(completed, 1) * 1e3,
                "load_avg_1min": [load, os.getloadavg()[0]]}
    finally:
        gateway.stop()
        backend.stop()


async def isolated_concurrency(workdir: Path, n: int, hold_ttft_s: float, hold_tpot_s: float,
                               tokens: int, ramp_s: float = 5.0) -> dict:
    """About ``n`` streams opened within ``ramp_s`` by a generator process, each held
    ~``hold_ttft_s + tokens * hold_tpot_s`` by the backend: peak in flight, losses and
    the gateway's peak resident memory."""
    backend, gateway, _burl, gurl = _start_isolated(workdir, hold_ttft_s, hold_tpot_s,
                                                    2 * n + 1000, health=False)
    try:
        await asyncio.sleep(1.0)
        rss0 = gateway.rss_mib()
        load = os.getloadavg()[0]
        proc = await asyncio.create_subprocess_exec(
            *_loadtest_args(gurl, "chat", n / ramp_s, ramp_s, tokens), env=_loadtest_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        peak, rss_peak, health_max_s = 0, rss0, 0.0
        comm = asyncio.create_task(proc.communicate())
        while not comm.done():
            await asyncio.sleep(0.25)
            rss_peak = max(rss_peak, gateway.rss_mib())
            t0 = time.perf_counter()
            with contextlib.suppress(aiohttp.ClientError, KeyError, ValueError, TimeoutError):
                peak = max(peak, await _in_flight(gurl))
                health_max_s = max(health_max_s, time.perf_counter() - t0)
        out, err = comm.result()
        if proc.returncode != 0:
            raise RuntimeError(f"loadtest failed: {err.decode()[-500:]}")
        res = json.loads(out)
        return {"target": n, "requests": res["requests"], "completed": res["completed"],
                "failed": res["failed"], "rejected": res["rejected"], "errors": res["errors"],
                "peak_in_flight": peak, "rss_start_mib": rss0, "rss_peak_mib": rss_peak,
                "health_max_s": health_max_s, "ttft_ms": [
                    res["tiers"]["chat"]["ttft_s"]["p50"] * 1e3,
                    res["tiers"]["chat"]["ttft_s"]["p99"] * 1e3]
                if res["completed"] else None,
                "hold": [hold_ttft_s, hold_tpot_s, tokens], "ramp_s": ramp_s,
                "load_avg_1min": [load, os.getloadavg()[0]]}
    finally:
        gateway.stop()
        backend.stop()


async def isolated_main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rates = [await isolated_rate(workdir, r, args.duration, args.tokens, args.slices)
                 for r in (float(x) for x in args.rates.split(",") if x)]
        conc = [await isolated_concurrency(workdir, n, args.hold_ttft, args.hold_tpot,
                                           args.hold_tokens, args.ramp)
                for n in (int(x) for x in args.isolated_concurrency.split(",") if x)]
    return {"isolated": True, "machine": _machine(), "cores": os.cpu_count(),
            "date": dt.date.today().isoformat(), "rates": rates, "concurrency": conc,
            "command": " ".join(sys.argv)}


def render_isolated(out: dict) -> str:
    lines = [
        ISOLATED_SECTION, "",
        f"Command: `.venv/bin/python benchmarks/gateway.py --isolated` (this run: "
        f"`{out['command'].replace(str(Path.cwd()) + '/', '')}`)",
        f"Date: {out['date']}; machine: {out['machine']}, {out['cores']} cores, **shared** "
        f"with other users' work during the run (no CPU pinning, no quiet-wait in this "
        f"mode): the figures include that contention; its 1-minute load average is in "
        f"the tables.", "",
        "Each component is its own process: the backend (`tokenfleet emulate --fixed-ttft "
        "0.002 --fixed-tpot 0.001`, near-free: pre-built events), the gateway (`tokenfleet "
        "serve`), and the load generator (`tokenfleet loadtest --rate R --json`, a separate "
        "process for each run). Added TTFT = p50/p99 of client TTFT through the gateway "
        "minus the same of a run straight at the backend right before it (same rate and "
        "length), median over alternating pairs (`--slices`). CPU = the gateway process's "
        "CPU time over its run, per 1,000 SSE events "
        "forwarded (each stream: one event per token, the finish event, the usage event, "
        "[DONE]).", "",
        "| rate req/s | tokens/stream | completed / sent | direct TTFT p50 / p99 ms | "
        "gateway TTFT p50 / p99 ms | **added p50 / p99 ms** | gateway CPU ms per 1,000 "
        "events (per request) | machine load avg before → after |",
        "|---|---|---|---|---|---|---|---|"]
    for r in out["rates"]:
        lines.append(
            f"| {r['rate']:.0f} | {r['tokens']} | {r['completed']} / {r['requests']} | "
            f"{r['direct_ttft_ms'][0]:.2f} / {r['direct_ttft_ms'][1]:.2f} | "
            f"{r['gateway_ttft_ms'][0]:.2f} / {r['gateway_ttft_ms'][1]:.2f} | "
            f"**{r['added_ms'][0]:.2f} / {r['added_ms'][1]:.2f}** | "
            f"{r['cpu_ms_per_1000_events']:.1f} ({r.get('cpu_ms_per_request', 0):.2f}) | "
            f"{r['load_avg_1min'][0]:.1f} → {r['load_avg_1min'][1]:.1f} |")
    if out["concurrency"]:
        h = out["concurrency"][0]["hold"]
        ramp = out["concurrency"][0].get("ramp_s", 1.0)
        lines += ["", f"Concurrent streams: a generator process opens about N streams "
                      f"within {ramp:g} s (Poisson); the backend holds each "
                      f"~{h[0] + h[1] * h[2]:g} s (TTFT {h[0]:g} s, {h[2]} tokens {h[1]:g} s "
                      f"apart). Active health checks off (the backend is known alive; on a "
                      f"starved machine its /health can be slower than the check's timeout). "
                      f"Peak in flight as the gateway's /health reported it (sampled every "
                      f"0.25 s); RSS of the gateway process.", "",
                  "| N | completed / sent | failed | peak in flight | gateway RSS start → "
                  "peak MiB | slowest /health s | load avg before → after |",
                  "|---|---|---|---|---|---|---|"]
        for c in out["concurrency"]:
            lines.append(f"| {c['target']} | {c['completed']} / {c['requests']} | "
                         f"{c['failed']} {c['errors'] or ''} | {c['peak_in_flight']} | "
                         f"{c['rss_start_mib']:.0f} → {c['rss_peak_mib']:.0f} | "
                         f"{c['health_max_s']:.2f} | {c['load_avg_1min'][0]:.1f} → "
                         f"{c['load_avg_1min'][1]:.1f} |")
    for note in out.get("notes", []):  # observations recorded with the run's JSON
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_section(name: str, section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(name)
    if start >= 0:
        nxt = text.find("\n## ", start + len(name))
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    RESULTS.write_text(text)


def null_proxy_main(backend: str, port: int) -> None:
    """The floor of the stack: the same aiohttp server and pooled client, passing bytes
    through with no parsing, routing, auth, retries or metrics. Run as a subprocess."""
    from aiohttp import web

    from tokenfleet.route.server import RunningServer

    async def run() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        cookie_jar=aiohttp.DummyCookieJar())

        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session.post(backend + request.path, data=body,
                                    headers={"Content-Type": "application/json"}) as up:
                resp = web.StreamResponse(status=up.status, headers={
                    "Content-Type": up.headers.get("Content-Type", "")})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        server = await RunningServer(app, port=port).start()
        print(f"null proxy on {server.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def start_null_proxy(backend: str) -> tuple[ChildProcess, str]:
    p = ChildProcess([sys.executable, __file__, "--null-proxy", backend])
    return p, p.wait_for(r"null proxy on (http://127\.0\.0\.1:\d+)").group(1)


# ---- other load on the machine -------------------------------------------------------

class OtherLoad:
    """CPU used by processes that are not this benchmark's (other jobs on a shared
    machine), in cores, between :meth:`start` and :meth:`cores`: the user + system time
    of every process in /proc/<pid>/stat that is neither this process, one of its
    descendants, nor a kernel thread (those include the softirq work of our own
    loopback traffic). A process that starts and ends between the two samples is
    missed. On a 2-core machine a job using one core is enough to double the gateway's
    p99, so the benchmark waits for a quiet machine, records the other load of every
    measurement, and repeats a measurement that other jobs disturbed."""

    def __init__(self) -> None:
        self._t0: tuple[dict[int, int], int, float] = ({}, 0, 0.0)
        self._sampler: asyncio.Task[None] | None = None
        self.steal_peak = 0.0  # the highest steal of any 1 s since start(), cores

    @staticmethod
    def _steal_ticks() -> int:
        """CPU time the hypervisor gave to other virtual machines (this one is a VM)."""
        with open("/proc/stat") as f:
            return int(f.readline().split()[8])

    @staticmethod
    def _others() -> dict[int, int]:
        """pid -> CPU ticks of the processes that count as other load."""
        ticks: dict[int, int] = {}
        parent: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            pid = int(name)
            parent[pid] = int(fields[1])
            ticks[pid] = int(fields[11]) + int(fields[12])
        me = os.getpid()

        def excluded(pid: int) -> bool:
            seen = 0
            while pid > 2 and seen < 64:  # pid 2 (kthreadd) is every kernel thread's parent
                if pid == me:
                    return True
                pid, seen = parent.get(pid, 0), seen + 1
            return pid == 2

        return {pid: t for pid, t in ticks.items() if pid != 2 and not excluded(pid)}

    def start(self) -> None:
        self._t0 = (self._others(), self._steal_ticks(), time.monotonic())
        # Steal comes in bursts: a 10 s average of 0.1 cores can be one second of
        # 0.8, enough to wreck a p99. So it is also sampled every second.
        self.stop()
        self.steal_peak = 0.0
        self._sampler = asyncio.get_running_loop().create_task(self._sample_steal())

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None

    async def _sample_steal(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        ticks, t = self._steal_ticks(), time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            ticks2, t2 = self._steal_ticks(), time.monotonic()
            self.steal_peak = max(self.steal_peak, (ticks2 - ticks) / hz / (t2 - t))
            ticks, t = ticks2, t2

    def cores(self) -> float:
        before, _, t0 = self._t0
        used = sum(t - before.get(pid, 0) for pid, t in self._others().items())
        return max(used, 0) / os.sysconf("SC_CLK_TCK") / max(time.monotonic() - t0, 1e-9)

    def steal_cores(self) -> float:
        """Steal time since :meth:`start`, in cores: the host was busy elsewhere."""
        _, s0, t0 = self._t0
        return ((self._steal_ticks() - s0) / os.sysconf("SC_CLK_TCK")
                / max(time.monotonic() - t0, 1e-9))


async def wait_for_quiet(meter: OtherLoad, limit: float, steal_limit: float,
                         max_wait_s: float) -> tuple[float, float]:
    """Sample the other load and the steal time over 2 s windows until both are below
    their limits (cores) or ``max_wait_s`` passed; returns the last sample."""
    end = time.monotonic() + max_wait_s
    while True:
        meter.start()
        await asyncio.sleep(2.0)
        load, steal = meter.cores(), meter.steal_cores()
        if (load < limit and steal < steal_limit) or time.monotonic() > end:
            return load, steal


# ---- measurements --------------------------------------------------------------------

async def _run(target: str, model: str, reqs: list[LoadRequest]) -> dict:
    gen = LoadGenerator(target, timeout_s=60.0)
    reqs = [LoadRequest(r.arrival_s, model, r.input_tokens, r.output_tokens) for r in reqs]
    res = await gen.run(reqs)
    ok = [r for r in res.results if r.outcome == "ok"]
    ttft = np.asarray([r.ttft_s for r in ok if r.ttft_s is not None])
    reasons: dict[str, int] = {}
    for r in res.results:
        if r.outcome != "ok":
            reasons[r.reason or "?"] = reasons.get(r.reason or "?", 0) + 1
    return {
        "sent": len(res.results), "ok": len(ok), "errors": len(res.results) - len(ok),
        "reasons": reasons,
        "achieved_per_s": len(ok) / res.wall_s if res.wall_s else 0.0,
        "ttft_p50_ms": float(np.percentile(ttft, 50) * 1e3) if ttft.size else None,
        "ttft_p99_ms": float(np.percentile(ttft, 99) * 1e3) if ttft.size else None,
        "late_p99_ms": res.late_s_p99 * 1e3,
    }


async def measure_rate(rate: float, duration_s: float, tokens: int, backend: str,
                       gateway_url: str, gateway: ChildProcess, probe_share: float,
                       null_url: str | None = None, meter: OtherLoad | None = None) -> dict:
    """Gateway traffic at ``rate`` and, at the same time, a direct probe stream to the
    backend at ``probe_share * rate`` (at least 20/s): both see the same machine load,
    so the difference of their TTFTs is what the gateway adds, not the noise of other
    work on a shared 2-core machine between two separate runs."""
    probe_rate = max(rate * probe_share, 20.0)
    via_reqs = schedule(None, {"x": 1.0}, rate_per_s=rate, duration_s=duration_s,
                        input_tokens=64, output_tokens=tokens, seed=int(rate))
    probe_reqs = schedule(None, {"x": 1.0}, rate_per_s=probe_rate, duration_s=duration_s,
                          input_tokens=64, output_tokens=tokens, seed=int(rate) + 1)
    warm = schedule(None, {"x": 1.0}, rate_per_s=rate, duration_s=1.0, input_tokens=64,
                    output_tokens=tokens, seed=1)
    # Warm-up: open keep-alive connections on both paths first.
    await asyncio.gather(_run(backend, MODEL, warm), _run(gateway_url, "chat", warm))
    cpu0 = gateway.cpu_s()
    if meter is not None:
        meter.start()
    via, direct = await asyncio.gather(_run(gateway_url, "chat", via_reqs),
                                       _run(backend, MODEL, probe_reqs))
    cpu = gateway.cpu_s() - cpu0
    other = [meter.cores()] if meter is not None else []
    steal = [meter.steal_cores()] if meter is not None else []
    peak = [meter.steal_peak] if meter is not None else []

    def diff(a: dict, b: dict, key: str) -> float | None:
        return None if a[key] is None or b[key] is None else a[key] - b[key]

    out = {"rate_per_s": rate, "probe_rate_per_s": probe_rate, "direct": direct,
           "gateway": via, "added_p50_ms": diff(via, direct, "ttft_p50_ms"),
           "added_p99_ms": diff(via, direct, "ttft_p99_ms"),
           "gateway_cpu_ms_per_request": cpu / max(via["sent"], 1) * 1e3}
    if null_url is not None:  # the same measurement through the bare aiohttp proxy
        await asyncio.gather(_run(backend, MODEL, warm), _run(null_url, MODEL, warm))
        if meter is not None:
            meter.start()
        floor, direct2 = await asyncio.gather(_run(null_url, MODEL, via_reqs),
                                              _run(backend, MODEL, probe_reqs))
        if meter is not None:
            other.append(meter.cores())
            steal.append(meter.steal_cores())
            peak.append(meter.steal_peak)
        out.update(null_proxy=floor, null_added_p50_ms=diff(floor, direct2, "ttft_p50_ms"),
                   null_added_p99_ms=diff(floor, direct2, "ttft_p99_ms"))
    if other:
        out["other_load_cores"] = max(other)
        out["steal_cores"] = max(steal)
        out["steal_peak_cores"] = max(peak)
        meter.stop()
    return out


async def _in_flight(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        return int((await r.json())["in_flight"])


async def concurrency_round(n: int, gateway_url: str, tokens: int) -> dict:
    """``n`` streaming requests sent within ~1 s; each is held open for several seconds
    by the backend, so all ``n`` are in flight at once."""
    reqs = [LoadRequest(i * 1.0 / n, "chat", 64, tokens) for i in range(n)]
    gen = LoadGenerator(gateway_url, timeout_s=120.0)
    peak = 0
    task = asyncio.create_task(gen.run(reqs))
    while not task.done():
        await asyncio.sleep(0.1)
        with contextlib.suppress(aiohttp.ClientError, KeyError, ValueError):
            peak = max(peak, await _in_flight(gateway_url))
    res = task.result()
    errors: dict[str, int] = {}
    for r in res.results:
        if r.outcome != "ok":
            errors[r.reason or "?"] = errors.get(r.reason or "?", 0) + 1
    return {"requests": n, "ok": sum(r.outcome == "ok" for r in res.results),
            "errors": errors, "peak_in_flight": peak, "wall_s": res.wall_s}


async def soak(gateway_url: str, gateway: ChildProcess, rate: float, duration_s: float,
               tokens: int) -> dict:
    """Steady load for ``duration_s``; the gateway's RSS sampled every 5 s."""
    reqs = schedule(None, {"chat": 1.0}, rate_per_s=rate, duration_s=duration_s,
                    input_tokens=64, output_tokens=tokens, seed=11)
    gen = LoadGenerator(gateway_url, timeout_s=60.0)
    task = asyncio.create_task(gen.run(reqs))
    samples = [gateway.rss_mib()]
    while not task.done():
        await asyncio.sleep(5.0)
        samples.append(gateway.rss_mib())
    res = task.result()
    return {"rate_per_s": rate, "duration_s": duration_s, "requests": len(reqs),
            "ok": sum(r.outcome == "ok" for r in res.results), "rss_mib": samples}


def _vs_sim_plan() -> Plan:
    """One tier on two emulated chips: 2 Maia 200 replicas (60 %) and 1 MI300X (40 %)."""
    base = _plan()
    tier = base.tiers[0].model_copy(update={"model": "llama-3.1-70b", "slo_ttft_s": 0.5,
                                            "slo_tpot_s": 0.05})
    units = [base.units[0].model_copy(update={
        "pool": pool, "model": "llama-3.1-70b", "accelerator": accel, "replicas": n,
        "chips": n, "usd_per_hour": usd, "watts": 750.0 * n})
        for pool, accel, n, usd in (("chat/maia-200", "maia-200", 2, 10.0),
                                    ("chat/mi300x", "mi300x", 1, 6.0))]
    shares = {"chat/maia-200": 0.6, "chat/mi300x": 0.4}
    splits = [base.traffic_split[0].model_copy(update={"bucket": b, "shares": shares})
              for b in ("in0-512_out0-128", "in512-2048_out0-128")]
    return base.model_copy(update={"tiers": [tier], "units": units, "traffic_split": splits})


def vs_sim(workdir: Path, rate: float, duration_s: float) -> dict:
    """The same plan and trace through `tokenfleet simulate` and through emulated pools
    + gateway + `tokenfleet loadtest`; returns both tier summaries."""
    from tokenfleet.workload.readers import write_trace
    from tokenfleet.workload.trace import Trace

    plan = _vs_sim_plan()
    (workdir / "vs_plan.json").write_text(plan.model_dump_json())
    rng = np.random.default_rng(0)
    n = int(rng.poisson(rate * duration_s))
    write_trace(Trace(np.sort(rng.uniform(0, duration_s, n)), rng.integers(200, 1200, n),
                      rng.integers(20, 100, n)), workdir / "vs_trace.csv")
    sim, live = simulate_and_loadtest(workdir / "vs_plan.json", [u.pool for u in plan.units],
                                      workdir / "vs_trace.csv", workdir)
    return {"rate_per_s": rate, "duration_s": duration_s, "requests": n,
            "sim": {k: sim[k] for k in ("requests", "completed", "rejected", "tiers")},
            "live": {k: live[k] for k in ("requests", "completed", "rejected", "failed",
                                          "tiers")}}


# ---- report --------------------------------------------------------------------------

def _f(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def markdown(rates: list[dict], conc: list[dict], args: argparse.Namespace, machine: str,
             best: float | None, rss0: float, soaked: dict | None = None,
             vs: dict | None = None, command: str = "", date: str = "") -> str:
    lines = [
        SECTION, "",
        f"Command: `{' '.join(['.venv/bin/python benchmarks/gateway.py', command]).strip()}`",
        f"Date: {date}; machine: {machine}, {os.cpu_count()} cores "
        f"(backend, gateway and load generator share them; no CPU pinning).", "",
        f"Backend: `tokenfleet emulate --fixed-ttft {args.ttft} --fixed-tpot {args.tpot}`; "
        f"requests: streaming chat, 64-token prompt, {args.tokens} output tokens, Poisson "
        f"arrivals, {args.duration:g} s per rate (after a 1 s warm-up). At the same time a "
        f"probe stream ({args.probe_share:.0%} of the rate, at least 20/s) goes straight "
        f"to the backend. Added latency = client TTFT through the gateway minus client "
        f"TTFT of the direct probe over the same seconds (difference of the p50s and of "
        f"the p99s). CPU = gateway process CPU time per request.", "",
        "*Bare proxy* is the same measurement through a minimal pass-through proxy made of "
        "aiohttp alone (aiohttp server and `aiohttp.ClientSession`, no parsing, routing, "
        "auth, retries or metrics): what a plain aiohttp proxy hop costs on this machine. "
        "The gateway has the same aiohttp server but its own upstream client "
        "(`tokenfleet.route.upstream`), which is why it can add less than the bare proxy.",
        "",
        f"*Other load* is the CPU that processes outside the benchmark used during the "
        f"measurement (average), *steal* the CPU time the hypervisor gave to other virtual "
        f"machines instead of this one (this VM shares its host; highest 1 s value). Each "
        f"rate starts once other load < {args.quiet_cores:g} cores and steal < "
        f"{args.quiet_steal:g} cores (waiting up to {args.quiet_wait:g} s), and is measured "
        f"again, up to {args.retries} times, when either was higher during the "
        f"measurement; the table shows the last try, the `--json` output also the "
        f"disturbed ones.", "",
        "| rate req/s | achieved req/s | errors | direct TTFT p50 / p99 ms | gateway TTFT "
        "p50 / p99 ms | **added p50 ms** | **added p99 ms** | bare proxy added p50 / p99 ms "
        "| gateway CPU ms/req | generator late p99 ms | other load / steal, cores (tries) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        d, g = r["direct"], r["gateway"]
        errors = g["errors"] + d["errors"]
        reasons = {**d.get("reasons", {}), **g.get("reasons", {})}
        err = f"{errors} ({', '.join(f'{k} {v}' for k, v in reasons.items())})" if errors \
            else "0"
        lines.append(
            f"| {r['rate_per_s']:g} | {g['achieved_per_s']:.0f} | {err} "
            f"| {_f(d['ttft_p50_ms'])} / {_f(d['ttft_p99_ms'])} "
            f"| {_f(g['ttft_p50_ms'])} / {_f(g['ttft_p99_ms'])} | {_f(r['added_p50_ms'])} "
            f"| {_f(r['added_p99_ms'])} "
            f"| {_f(r.get('null_added_p50_ms'))} / {_f(r.get('null_added_p99_ms'))} "
            f"| {_f(r['gateway_cpu_ms_per_request'])} "
            f"| {_f(max(d['late_p99_ms'], g['late_p99_ms']), '.1f')} "
            f"| {_f(r.get('other_load_cores'))} / {_f(r.get('steal_peak_cores'))} "
            f"({r.get('attempts', 1)}) |")
    lines += ["", f"Highest rate without errors, of the rates tried (generator on schedule, "
                  f"achieved ≥ 95 % of offered): **{_f(best, 'g')} req/s**.", ""]
    at500 = next((r for r in rates if r["rate_per_s"] == 500), None)
    if at500 is not None and at500["added_p50_ms"] is not None:
        met = at500["added_p50_ms"] < 1.0 and (at500["added_p99_ms"] or 1e9) < 5.0
        floor = (f" The bare aiohttp proxy adds "
                 f"{_f(at500.get('null_added_p50_ms'))} / {_f(at500.get('null_added_p99_ms'))} "
                 f"ms at the same rate." if "null_proxy" in at500 else "")
        verdict = "met" if met else "not met"
        lines += [f"Target at 500 req/s (added p50 < 1 ms, p99 < 5 ms): **{verdict}** — "
                  f"added p50 {_f(at500['added_p50_ms'])} ms, p99 "
                  f"{_f(at500['added_p99_ms'])} ms (other load "
                  f"{_f(at500.get('other_load_cores'))} cores, steal up to "
                  f"{_f(at500.get('steal_peak_cores'))} cores).{floor}", ""]
    lines += NOTES
    if conc:
        hold = args.hold_ttft + (args.hold_tokens - 1) * args.hold_tpot
        lines += [f"Concurrency: {conc[0]['requests']} streaming requests sent within 1 s, "
                  f"each held ~{hold:.1f} s by the backend ({args.hold_tokens} tokens), "
                  f"{len(conc)} rounds. Gateway RSS before the first round: {rss0:.0f} MiB.",
                  "", "| round | completed | errors | peak in flight (gateway) | gateway RSS "
                  "after, MiB |", "|---|---|---|---|---|"]
        for i, c in enumerate(conc, 1):
            lines.append(f"| {i} | {c['ok']}/{c['requests']} | {c['errors'] or 0} | "
                         f"{c['peak_in_flight']} | {c['rss_mib']:.0f} |")
        lines.append("")
    if soaked:
        rss = soaked["rss_mib"]
        lines += [f"Soak: {soaked['rate_per_s']:g} req/s for {soaked['duration_s']:g} s "
                  f"({soaked['ok']}/{soaked['requests']} completed); gateway RSS every 5 s, "
                  f"MiB: {', '.join(f'{x:.0f}' for x in rss)} (first {rss[0]:.0f}, last "
                  f"{rss[-1]:.0f}, max {max(rss):.0f}).", ""]
    if vs is not None:
        st, lt = vs["sim"]["tiers"]["chat"], vs["live"]["tiers"]["chat"]
        lines += ["### Live vs simulated (same plan, same trace)", "",
                  f"Plan: one tier of llama-3.1-70b on 2 Maia 200 replicas (60 % of traffic) "
                  f"and 1 MI300X (40 %); trace: {vs['requests']} requests, Poisson "
                  f"{vs['rate_per_s']:g}/s for {vs['duration_s']:g} s, prompts 200-1200 "
                  f"tokens, outputs 20-100. `tokenfleet simulate --json` against "
                  f"`tokenfleet emulate --plan --pool` per pool + `tokenfleet serve` + "
                  f"`tokenfleet loadtest --json` (completed: sim {vs['sim']['completed']}, "
                  f"live {vs['live']['completed']} of {vs['live']['requests']}).", "",
                  "| metric | simulated | live | live / simulated |", "|---|---|---|---|"]
        for metric in ("ttft_s", "tpot_s", "e2e_s"):
            for q in ("p50", "p90", "p99", "mean"):
                a, b = st[metric][q], lt[metric][q]
                ratio = f"{b / a:.2f}" if a and b else "—"
                lines.append(f"| {metric[:-2].upper()} {q} | {_f(a * 1e3 if a else None)} ms "
                             f"| {_f(b * 1e3 if b else None)} ms | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    RESULTS.write_text(text)


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown CPU"


async def amain(args: argparse.Namespace) -> dict:
    # SIGTERM cancels the run, so that the `finally` blocks stop the child processes.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    rates = [float(x) for x in args.rates.split(",")]
    out: dict = {"rates": [], "concurrency": []}
    with tempfile.TemporaryDirectory() as tmp:
        backend, gateway, backend_url, gateway_url = start_stack(Path(tmp), args.ttft, args.tpot)
        null_proc, null_url = start_null_proxy(backend_url) if args.floor else (None, None)
        meter = OtherLoad()
        try:
            best = None
            for rate in rates:
                disturbed: list[dict] = []
                for attempt in range(1, args.retries + 2):
                    before = await wait_for_quiet(meter, args.quiet_cores, args.quiet_steal,
                                                  args.quiet_wait)
                    r = await measure_rate(rate, args.duration, args.tokens, backend_url,
                                           gateway_url, gateway, args.probe_share, null_url,
                                           meter)
                    r.update(attempts=attempt, other_load_before_cores=before[0],
                             steal_before_cores=before[1])
                    if (r["other_load_cores"] < args.quiet_cores
                            and r["steal_peak_cores"] < args.quiet_steal):
                        break
                    print(f"rate {rate:>6g}/s: other processes used "
                          f"{r['other_load_cores']:.2f} cores and steal peaked at "
                          f"{r['steal_peak_cores']:.2f} cores meanwhile (added p50 "
                          f"{_f(r['added_p50_ms'])} ms, p99 {_f(r['added_p99_ms'])} ms)"
                          + (", measuring again" if attempt <= args.retries else ""),
                          flush=True)
                    disturbed.append({k: v for k, v in r.items() if not isinstance(v, dict)})
                r["disturbed_tries"] = disturbed  # kept in the --json output
                out["rates"].append(r)
                g, d = r["gateway"], r["direct"]
                ok = (g["errors"] == 0 and d["errors"] == 0
                      and g["achieved_per_s"] >= 0.95 * rate
                      and max(g["late_p99_ms"], d["late_p99_ms"]) < 50)
                floor = (f" (bare aiohttp proxy: {_f(r['null_added_p50_ms'])} / "
                         f"{_f(r['null_added_p99_ms'])} ms)" if "null_proxy" in r else "")
                print(f"rate {rate:>6g}/s: added p50 {_f(r['added_p50_ms'])} ms, p99 "
                      f"{_f(r['added_p99_ms'])} ms{floor}, errors {g['errors']}, achieved "
                      f"{g['achieved_per_s']:.0f}/s, gateway CPU "
                      f"{r['gateway_cpu_ms_per_request']:.2f} ms/req"
                      + ("" if ok else "  <- not sustained"), flush=True)
                if ok:
                    best = rate
                elif args.stop_on_failure:
                    break
            out["best_rate_per_s"] = best
        finally:
            if null_proc is not None:
                null_proc.stop()
            gateway.stop()
            backend.stop()
        rss0 = float("nan")
        if args.concurrency:
            backend, gateway, backend_url, gateway_url = start_stack(
                Path(tmp), args.hold_ttft, args.hold_tpot)
            try:
                rss0 = gateway.rss_mib()
                for i in range(args.rounds):
                    c = await concurrency_round(args.concurrency, gateway_url,
                                                args.hold_tokens)
                    await asyncio.sleep(1.0)
                    c["rss_mib"] = gateway.rss_mib()
                    out["concurrency"].append(c)
                    print(f"concurrency round {i + 1}: {c['ok']}/{c['requests']} ok, errors "
                          f"{c['errors']}, peak in flight {c['peak_in_flight']}, gateway RSS "
                          f"{c['rss_mib']:.0f} MiB", flush=True)
            finally:
                gateway.stop()
                backend.stop()
        out["rss_before_mib"] = rss0
        if args.soak_s > 0:
            backend, gateway, backend_url, gateway_url = start_stack(Path(tmp), args.ttft,
                                                                     args.tpot)
            try:
                out["soak"] = await soak(gateway_url, gateway, args.soak_rate, args.soak_s,
                                         args.tokens)
                print(f"soak: RSS {out['soak']['rss_mib']}", flush=True)
            finally:
                gateway.stop()
                backend.stop()
        if args.vs_sim:
            out["vs_sim"] = vs_sim(Path(tmp), args.vs_sim_rate, args.vs_sim_s)
            print("live vs simulated done", flush=True)
    out.update(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               command=" ".join(sys.argv[1:]), date=dt.date.today().isoformat(),
               machine=_machine())
    return out


def render(out: dict) -> str:
    """The RESULTS.md section for the raw results ``out`` (of this run or a --json)."""
    return markdown(out["rates"], out["concurrency"], argparse.Namespace(**out["args"]),
                    out["machine"], out.get("best_rate_per_s"), out["rss_before_mib"],
                    out.get("soak"), out.get("vs_sim"), out["command"], out["date"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,250,500,750,1000",
                    help="comma-separated request rates, req/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--tokens", type=int, default=4, help="output tokens per request")
    ap.add_argument("--ttft", type=float, default=0.002, help="backend TTFT, s")
    ap.add_argument("--tpot", type=float, default=0.001, help="backend time per token, s")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the bare-aiohttp-proxy reference measurement")
    ap.add_argument("--null-proxy", help=argparse.SUPPRESS)  # internal: run the bare proxy
    ap.add_argument("--probe-share", type=float, default=0.25,
                    help="rate of the simultaneous direct probe, as a share of the rate")
    ap.add_argument("--concurrency", type=int, default=2000,
                    help="streams held open at once in the concurrency check (0: skip)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the concurrency check")
    ap.add_argument("--hold-ttft", type=float, default=2.0,
                    help="backend TTFT in the concurrency check, s")
    ap.add_argument("--hold-tpot", type=float, default=0.5,
                    help="backend time per token in the concurrency check, s")
    ap.add_argument("--hold-tokens", type=int, default=8,
                    help="output tokens per request in the concurrency check")
    ap.add_argument("--soak-s", type=float, default=120.0,
                    help="seconds of steady load to watch the gateway's memory (0: skip)")
    ap.add_argument("--soak-rate", type=float, default=200.0, help="soak load, req/s")
    ap.add_argument("--no-vs-sim", dest="vs_sim", action="store_false",
                    help="skip the live-vs-simulated comparison")
    ap.add_argument("--vs-sim-rate", type=float, default=6.0, help="its load, req/s")
    ap.add_argument("--vs-sim-s", type=float, default=60.0, help="its trace length, s")
    ap.add_argument("--quiet-cores", type=float, default=0.25,
                    help="a rate is measured when other processes use less than this many "
                         "cores, and measured again when they used more meanwhile")
    ap.add_argument("--quiet-steal", type=float, default=0.1,
                    help="the same for steal time (the hypervisor running other virtual "
                         "machines instead of this one) in any one second, in cores")
    ap.add_argument("--quiet-wait", type=float, default=300.0,
                    help="seconds to wait for a quiet machine before each rate")
    ap.add_argument("--retries", type=int, default=3,
                    help="re-measurements of a rate disturbed by other processes")
    ap.add_argument("--stop-on-failure", action="store_true",
                    help="stop at the first rate that is not sustained")
    ap.add_argument("--json", type=Path, help="write raw results here")
    ap.add_argument("--render", type=Path,
                    help="measure nothing: print (and with --write-results, write) the "
                         "section for the raw results of an earlier --json")
    ap.add_argument("--isolated", action="store_true",
                    help="issue 18: generator in its own process; added TTFT, CPU per 1,000 "
                         "events, and --isolated-concurrency streams")
    ap.add_argument("--isolated-concurrency", default="2000,10000",
                    help="concurrent streams to hold (with --isolated)")
    ap.add_argument("--slices", type=int, default=3,
                    help="alternating direct/gateway pairs per rate (with --isolated)")
    ap.add_argument("--ramp", type=float, default=5.0,
                    help="seconds over which --isolated-concurrency streams are opened")
    ap.add_argument("--write-results", action="store_true",
                    help=f"replace the '{SECTION}' section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    install_uvloop()
    raise_fd_limit()
    # As `tokenfleet serve` and `emulate` do: no collector pauses over the start-up heap
    # in the bare proxy or in the load generator's measurements.
    freeze_startup_heap()
    if args.null_proxy:
        null_proxy_main(args.null_proxy, 0)
        return
    if args.isolated:
        out = (json.loads(args.render.read_text()) if args.render
               else asyncio.run(isolated_main(args)))
        if args.json and not args.render:
            args.json.write_text(json.dumps(out, indent=2))
        section = render_isolated(out)
        print(section)
        if args.write_results:
            write_section(ISOLATED_SECTION, section)
            print(f"updated {RESULTS}")
        return
    if args.render:
        out = json.loads(args.render.read_text())
    else:
        out = asyncio.run(amain(args))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    section = render(out)
    print()
    print(section)
    if args.write_results:
        write_results(section)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
