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
which every request completed and the generator kept its schedule.

Then the concurrency check: ``--concurrency`` streaming requests open at once through
the gateway (held open by a slow backend), repeated ``--rounds`` times, recording
errors, the peak in flight the gateway reported and its resident memory after each
round (it must not grow from round to round).

Usage::

    .venv/bin/python benchmarks/gateway.py                      # full run, prints tables
    .venv/bin/python benchmarks/gateway.py --rates 100,500 --duration 5 --concurrency 0
    .venv/bin/python benchmarks/gateway.py --write-results      # also update RESULTS.md

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
import subprocess
import sys
import tempfile
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
from tokenfleet.route.server import install_uvloop, raise_fd_limit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Gateway overhead (issue 5)"
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
                       null_url: str | None = None) -> dict:
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
    via, direct = await asyncio.gather(_run(gateway_url, "chat", via_reqs),
                                       _run(backend, MODEL, probe_reqs))
    cpu = gateway.cpu_s() - cpu0

    def diff(a: dict, b: dict, key: str) -> float | None:
        return None if a[key] is None or b[key] is None else a[key] - b[key]

    out = {"rate_per_s": rate, "probe_rate_per_s": probe_rate, "direct": direct,
           "gateway": via, "added_p50_ms": diff(via, direct, "ttft_p50_ms"),
           "added_p99_ms": diff(via, direct, "ttft_p99_ms"),
           "gateway_cpu_ms_per_request": cpu / max(via["sent"], 1) * 1e3}
    if null_url is not None:  # the same measurement through the bare aiohttp proxy
        await asyncio.gather(_run(backend, MODEL, warm), _run(null_url, MODEL, warm))
        floor, direct2 = await asyncio.gather(_run(null_url, MODEL, via_reqs),
                                              _run(backend, MODEL, probe_reqs))
        out.update(null_proxy=floor, null_added_p50_ms=diff(floor, direct2, "ttft_p50_ms"),
                   null_added_p99_ms=diff(floor, direct2, "ttft_p99_ms"))
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
             vs: dict | None = None) -> str:
    lines = [
        SECTION, "",
        f"Command: `.venv/bin/python benchmarks/gateway.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Date: {dt.date.today().isoformat()}; machine: {machine}, {os.cpu_count()} cores "
        f"(backend, gateway and load generator share them).", "",
        f"Backend: `tokenfleet emulate --fixed-ttft {args.ttft} --fixed-tpot {args.tpot}`; "
        f"requests: streaming chat, 64-token prompt, {args.tokens} output tokens, Poisson "
        f"arrivals, {args.duration:g} s per rate (after a 1 s warm-up). At the same time a "
        f"probe stream ({args.probe_share:.0%} of the rate, at least 20/s) goes straight "
        f"to the backend. Added latency = client TTFT through the gateway minus client "
        f"TTFT of the direct probe over the same seconds (difference of the p50s and of "
        f"the p99s). CPU = gateway process CPU time per request.", "",
        "*Bare proxy* is the same measurement through a minimal aiohttp pass-through proxy "
        "(same server and pooled client, no parsing, routing, auth, retries or metrics): "
        "the floor of the stack on this machine, so *gateway − bare* is what tokenfleet's "
        "own logic costs.", "",
        "| rate req/s | achieved req/s | errors | direct TTFT p50 / p99 ms | gateway TTFT "
        "p50 / p99 ms | **added p50 ms** | **added p99 ms** | bare proxy added p50 / p99 ms "
        "| gateway CPU ms/req | generator late p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            f"| {_f(max(d['late_p99_ms'], g['late_p99_ms']), '.1f')} |")
    lines += ["", f"Highest rate without errors, of the rates tried (generator on schedule, "
                  f"achieved ≥ 95 % of offered): **{_f(best, 'g')} req/s**.", ""]
    at500 = next((r for r in rates if r["rate_per_s"] == 500), None)
    if at500 is not None and at500["added_p50_ms"] is not None:
        met = at500["added_p50_ms"] < 1.0 and (at500["added_p99_ms"] or 1e9) < 5.0
        floor = (f" A bare aiohttp pass-through proxy adds "
                 f"{_f(at500.get('null_added_p50_ms'))} / {_f(at500.get('null_added_p99_ms'))} "
                 f"ms at the same rate: that is the floor of a Python proxy hop on this "
                 f"machine, and the gateway's own work (parsing, routing, auth, metrics) is "
                 f"the difference." if "null_proxy" in at500 else "")
        verdict = "met" if met else "not met"
        lines += [f"Target at 500 req/s (added p50 < 1 ms, p99 < 5 ms): **{verdict}** — "
                  f"added p50 {_f(at500['added_p50_ms'])} ms, p99 "
                  f"{_f(at500['added_p99_ms'])} ms.{floor}", ""]
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
    rates = [float(x) for x in args.rates.split(",")]
    out: dict = {"rates": [], "concurrency": []}
    with tempfile.TemporaryDirectory() as tmp:
        backend, gateway, backend_url, gateway_url = start_stack(Path(tmp), args.ttft, args.tpot)
        null_proc, null_url = start_null_proxy(backend_url) if args.floor else (None, None)
        try:
            best = None
            for rate in rates:
                r = await measure_rate(rate, args.duration, args.tokens, backend_url,
                                       gateway_url, gateway, args.probe_share, null_url)
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
    out["markdown"] = markdown(out["rates"], out["concurrency"], args, _machine(),
                               out.get("best_rate_per_s"), rss0, out.get("soak"),
                               out.get("vs_sim"))
    return out


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
    ap.add_argument("--stop-on-failure", action="store_true",
                    help="stop at the first rate that is not sustained")
    ap.add_argument("--json", type=Path, help="write raw results here")
    ap.add_argument("--write-results", action="store_true",
                    help=f"replace the '{SECTION}' section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    install_uvloop()
    raise_fd_limit()
    if args.null_proxy:
        null_proxy_main(args.null_proxy, 0)
        return
    out = asyncio.run(amain(args))
    print()
    print(out["markdown"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.write_results:
        write_results(out["markdown"])
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
