"""``tokenfleet serve | emulate | loadtest`` — presentation and process wiring only;
the work is in ``gateway``, ``emulator`` and ``loadgen`` next to this module."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_text

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output (JSON)")]
HostOpt = Annotated[str, typer.Option(help="address to listen on (127.0.0.1 = this machine "
                                           "only)")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


async def _serve_until_signal(start: Callable[[], Awaitable[None]],
                              stop: Callable[[], Awaitable[None]],
                              on_hup: Callable[[], None] | None = None) -> None:
    """Run ``start()``, wait for SIGINT/SIGTERM, run ``stop()`` (a second signal
    during ``stop()`` ends at once); SIGHUP calls ``on_hup``."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    if on_hup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await start()
    try:
        await done.wait()
        done.clear()
        stopping = asyncio.ensure_future(stop())
        again = asyncio.ensure_future(done.wait())
        await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
        again.cancel()
        if not stopping.done():
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# ---- serve ---------------------------------------------------------------------------

def serve_cmd(
    plan: Annotated[Path, typer.Option(help="plan.json written by `tokenfleet plan`")],
    backends: Annotated[Path, typer.Option(help="backends.yaml: the servers behind each "
                                                "pool (see examples/backends.yaml)")],
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one")] = 8080,
    policy: Annotated[str | None, typer.Option(
        help="routing policy (overrides backends.yaml): plan, round-robin, jsq, least-kv, "
             "cost-spill")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(
        help="accepted API keys, one per line; also read from $TOKENFLEET_API_KEYS "
             "(comma-separated)")] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="allow running without API keys on a non-loopback address")] = False,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    tokenizer: Annotated[Path | None, typer.Option(
        help="the model's tokenizer.json: count prompt tokens with it (default: an "
             "estimate, characters / 4)")] = None,
) -> None:
    """Run the OpenAI-compatible gateway that routes each request by the plan.

    Clients call /v1/chat/completions or /v1/completions with a tier name as the
    model (GET /v1/models lists them). Health at /health, Prometheus at /metrics.

    Example: tokenfleet serve --plan plan.json --backends examples/backends.yaml
    """
    from tokenfleet.plan.schema import load_plan
    from tokenfleet.route.auth import ApiKeys
    from tokenfleet.route.config import check_against_plan, load_backends
    from tokenfleet.route.gateway import Gateway
    from tokenfleet.route.server import (
        RunningServer,
        freeze_startup_heap,
        install_uvloop,
        raise_fd_limit,
    )

    _logging(log_level)
    the_plan = load_plan(plan)
    spec = load_backends(backends)
    for w in check_against_plan(spec, the_plan, str(backends)):
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    keys = ApiKeys.load(api_keys_file)
    if not keys.enabled and os.environ.get("TOKENFLEET_API_KEY"):
        keys = ApiKeys.load(api_keys_file, env_var="TOKENFLEET_API_KEY")
        typer.secho("note: $TOKENFLEET_API_KEY is deprecated for serve; set "
                    "$TOKENFLEET_API_KEYS (comma-separated)", fg=typer.colors.YELLOW, err=True)
    if not keys.enabled:
        if not _is_loopback(host) and not no_auth:
            raise TokenfleetError(
                f"no API keys and --host {host} is reachable from other machines; give "
                f"--api-keys-file or $TOKENFLEET_API_KEYS, or --no-auth to accept anyone")
        typer.secho("warning: API-key authentication is off", fg=typer.colors.YELLOW, err=True)
    gateway = Gateway(the_plan, spec, keys, policy=policy, tokenizer=tokenizer)

    def reload_files() -> list[str]:
        """Re-read plan and backends (SIGHUP, POST /admin/reload); a bad file raises
        TokenfleetError and the running configuration stays."""
        new_plan = load_plan(plan)
        new_spec = load_backends(backends)
        return gateway.reload(new_plan, new_spec)

    gateway.reloader = reload_files
    install_uvloop()
    raise_fd_limit()
    freeze_startup_heap()
    server = RunningServer(gateway.make_app(), host, port)
    log = logging.getLogger("tokenfleet.serve")

    def on_hup() -> None:
        try:
            for w in reload_files():
                log.warning("reload: %s", w)
        except TokenfleetError as e:
            log.error("reload refused, old configuration kept: %s", e)

    async def start() -> None:
        await server.start()
        n = sum(len(p.backends) for p in gateway.router.pools.values())
        pairs = len(gateway.router.prefill_for)
        typer.echo(f"tokenfleet gateway on {server.url}: {len(gateway.router.tiers)} tier(s), "
                   f"{len(gateway.router.pools)} pool(s)"
                   + (f" ({pairs} prefill/decode pair(s))" if pairs else "")
                   + f", {n} backend(s), policy "
                   f"{gateway.router.policy_name}, auth "
                   f"{'on (' + str(len(keys)) + ' keys)' if keys.enabled else 'off'}",
                   err=True)

    async def stop() -> None:
        await gateway.drain()
        await server.stop()

    asyncio.run(_serve_until_signal(start, stop, on_hup))


# ---- emulate -------------------------------------------------------------------------

def _context_of(model: str) -> int | None:
    from tokenfleet.catalog.loader import load_catalog

    try:
        return load_catalog().model(model).max_context_tokens
    except (TokenfleetError, KeyError):
        return None


def emulate_cmd(
    accelerator: Annotated[str | None, typer.Option("--accelerator", "-a",
                                                    help="chip to emulate (catalog id)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="catalog model id")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="serving units in the pool (with "
                                                      "--plan: the pool's)")] = 1,
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one")] = 0,
    host: HostOpt = "127.0.0.1",
    count: Annotated[int | None, typer.Option(min=1, help="chips per replica (default: the "
                                                          "cheapest count that fits)")] = None,
    precision: Annotated[str, typer.Option(help="bf16 | fp8 | fp4 | int8 | auto")] = "auto",
    engine: Annotated[str | None, typer.Option(help="calibration: vllm, sglang, trtllm, "
                                                    "...")] = None,
    plan: Annotated[Path | None, typer.Option(help="emulate this plan.json: every pool "
                                                   "(one port each), or --pool")] = None,
    pool: Annotated[str | None, typer.Option(help="pool id in --plan")] = None,
    backends_out: Annotated[Path, typer.Option(
        help="with --plan and no --pool: where to write the gateway's backends.yaml"
    )] = Path("backends.yaml"),
    served_model: Annotated[str | None, typer.Option(
        help="model name clients must send (default: the catalog model id)")] = None,
    max_batch: Annotated[int | None, typer.Option(
        min=1, help="sequences per replica at once (default: what KV memory holds)")] = None,
    max_queue: Annotated[int, typer.Option(min=0, help="waiting requests before HTTP 429"
                                           )] = 4096,
    fixed_ttft: Annotated[float | None, typer.Option(
        help="instead of the model: fixed TTFT, seconds (with --fixed-tpot)")] = None,
    fixed_tpot: Annotated[float | None, typer.Option(help="fixed time per output token, s")
                          ] = None,
    slowdown: Annotated[float, typer.Option(help="fault: stretch every step by this factor"
                                            )] = 1.0,
    error_rate: Annotated[float, typer.Option(help="fault: fraction of requests answered "
                                                   "with HTTP 500")] = 0.0,
    die_after: Annotated[float | None, typer.Option(
        help="fault: crash (drop all connections, exit) after this many seconds")] = None,
    seed: Annotated[int, typer.Option(help="seed of the error-rate draws")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Run OpenAI-compatible servers that behave like pools of a chip kind.

    With --plan and no --pool: every pool of the plan in this process, on ports
    --port, --port+1, ... (0: free ports), and a backends.yaml for `tokenfleet serve`.
    Tokens are paced by the performance model with continuous batching; faults can be
    injected with the flags or at run time: POST /admin/faults {"slowdown": 3},
    {"error_rate": 0.2} or {"die": true}.

    Example: tokenfleet emulate --accelerator maia-200 --model llama-3.1-70b --replicas 2
    --port 9001

    Example: tokenfleet emulate --plan plan.json --port 9100 --backends-out backends.yaml
    """
    from tokenfleet.plan.schema import load_plan
    from tokenfleet.route.emulator import Emulator, Faults, PoolSpec, Role, build_engine
    from tokenfleet.route.pace import Engine, FixedLatencyEngine, FixedPacing
    from tokenfleet.route.plan_emulator import handover_fn, prefill_halves
    from tokenfleet.route.server import freeze_startup_heap, install_uvloop, raise_fd_limit

    if not _is_loopback(host):
        typer.secho("warning: the emulator's /admin/faults has no authentication; bind it to "
                    "127.0.0.1 unless this network is yours", fg=typer.colors.YELLOW, err=True)
    faults = Faults()
    faults.update({"slowdown": slowdown, "error_rate": error_rate})
    if (fixed_ttft is None) != (fixed_tpot is None):
        raise TokenfleetError("give both --fixed-ttft and --fixed-tpot, or neither")
    info: dict[str, object]
    role: Role = "both"
    handover: Callable[[int], float] | None = None  # decode half: KV handover seconds
    if plan is not None and pool is None:
        from tokenfleet.cli.emulate_plan import emulate_plan

        install_uvloop()
        raise_fd_limit()
        emulate_plan(plan, host, port, backends_out, max_queue, seed, json_out,
                     _serve_until_signal)
        return
    if plan is not None or pool is not None:
        if plan is None or pool is None:
            raise TokenfleetError("--plan and --pool go together")
        p = load_plan(plan)
        unit = next((u for u in p.units if u.pool == pool), None)
        if unit is None:
            raise TokenfleetError(f"pool '{pool}' is not in {plan}; pools: "
                                  f"{', '.join(u.pool for u in p.units)}")
        spec = dataclasses.replace(PoolSpec.from_plan_unit(unit), max_batch=max_batch)
        role = unit.role
        pre = prefill_halves(p).get(unit.pool)
        handover = handover_fn(pre, unit) if pre is not None else None
    else:
        if model is None or (accelerator is None and fixed_ttft is None):
            raise TokenfleetError("give --model and --accelerator (or --plan with --pool)")
        spec = PoolSpec(model=model, accelerator=accelerator or "-", replicas=replicas,
                        count=count, precision=precision, engine=engine, max_batch=max_batch)
    if fixed_ttft is not None and fixed_tpot is not None:
        eng: Engine | FixedLatencyEngine = FixedLatencyEngine(FixedPacing(fixed_ttft, fixed_tpot),
                                         max_in_flight=(max_batch or 100_000) + max_queue)
        info = {"model": spec.model, "accelerator": spec.accelerator, "pacing": "fixed",
                "ttft_s": fixed_ttft, "tpot_s": fixed_tpot}
    else:
        eng, unit_model = build_engine(spec, max_queue=max_queue)
        info = {"model": spec.model, "accelerator": unit_model.accel.id,
                "replicas": spec.replicas, "chips_per_replica": unit_model.layout.chips,
                "precision": unit_model.precision.name, "layout": unit_model.layout.model_dump(),
                "max_batch_per_replica": eng.max_batch, "pacing": "model"}
    emulator = Emulator(eng, served_model or spec.model, faults, seed=seed,
                        exit_on_die=True, info={**info, "role": role},
                        max_context_tokens=_context_of(spec.model), role=role,
                        handover_s=handover)
    install_uvloop()
    raise_fd_limit()
    freeze_startup_heap()

    async def start() -> None:
        server = await emulator.serve(host, port)
        if json_out:
            print(json.dumps({"url": server.url, "port": server.port,
                              "served_model": emulator.served_model, **info}), flush=True)
        else:
            typer.echo(f"emulating {info} as '{emulator.served_model}' on {server.url}",
                       err=True)
        if die_after is not None:
            asyncio.get_running_loop().call_later(
                die_after, lambda: asyncio.ensure_future(emulator.die()))

    async def stop() -> None:
        if emulator.server is not None:
            await emulator.server.stop()

    asyncio.run(_serve_until_signal(start, stop))


# ---- loadtest ------------------------------------------------------------------------

def _mix(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if sep else 1.0
        except ValueError:
            raise TokenfleetError(f"--tier-mix '{text}': expected tier=weight,... such as "
                                  f"chat=0.8,code=0.2") from None
    return out


def _tiers_at(target: str, api_key: str | None) -> list[str]:
    import aiohttp

    from tokenfleet.route.loadgen import LoadGenerator

    async def fetch() -> list[str]:
        async with aiohttp.ClientSession() as s:
            gen = LoadGenerator(target, api_key)
            try:
                async with s.get(gen.target + "/v1/models", headers=gen._headers(),
                                 timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status != 200:
                        raise TokenfleetError(f"{target}/v1/models answered HTTP {r.status}; "
                                              f"give --model")
                    data = await r.json()
            except (aiohttp.ClientError, TimeoutError) as e:
                raise TokenfleetError(f"cannot reach {target}: {e}") from None
        return [m["id"] for m in data.get("data", [])]

    return asyncio.run(fetch())


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:,.1f}"


def loadtest_cmd(
    target: Annotated[str, typer.Option(help="base URL of the gateway (or of one backend)")],
    trace: Annotated[Path | None, typer.Option(help="trace file to replay (any format "
                                                    "`tokenfleet trace` reads)")] = None,
    format: Annotated[str | None, typer.Option(help="trace format; detected when omitted"
                                               )] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="tier to send to (default: the only one at the target)")] = None,
    tier_mix: Annotated[str | None, typer.Option(
        help="several tiers: chat=0.8,code=0.2 (weights)")] = None,
    rate: Annotated[float | None, typer.Option(
        help="Poisson arrivals at this many requests/s instead of the trace's timestamps")
                    ] = None,
    duration: Annotated[float | None, typer.Option(help="seconds of load to send")] = None,
    speedup: Annotated[float, typer.Option(help="replay the trace this many times faster"
                                           )] = 1.0,
    limit: Annotated[int | None, typer.Option(min=1, help="send at most this many requests"
                                              )] = None,
    input_tokens: Annotated[int | None, typer.Option(help="fixed prompt tokens (with --rate)"
                                                     )] = None,
    output_tokens: Annotated[int | None, typer.Option(help="fixed output tokens (with "
                                                           "--rate)")] = None,
    api_key_env: Annotated[str, typer.Option(
        help="environment variable with the API key (the first, if it lists several: the "
             "variable `serve` reads)")] = "TOKENFLEET_API_KEYS",
    completions: Annotated[bool, typer.Option(help="use /v1/completions instead of chat"
                                              )] = False,
    stream: Annotated[bool, typer.Option(help="streaming requests (needed for TTFT/TPOT)"
                                         )] = True,
    timeout: Annotated[float, typer.Option(help="per-request timeout, seconds")] = 600.0,
    seed: Annotated[int, typer.Option(help="seed for Poisson arrivals and tier draws")] = 0,
    out: Annotated[Path | None, typer.Option(help="also write the JSON summary here")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay a trace against a gateway and measure client-side TTFT, TPOT and errors.

    Open loop: each request leaves at its time (trace timestamps, or Poisson at --rate)
    however slow the server is. --json prints the summary format of `tokenfleet
    simulate --json`, to compare a plan's live and simulated behaviour.

    Examples: tokenfleet loadtest --trace t.csv --target http://127.0.0.1:8080 --speedup 10;
    tokenfleet loadtest --target http://127.0.0.1:8080 --rate 20 --duration 60
    --input-tokens 512 --output-tokens 128
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from tokenfleet.route.loadgen import LoadGenerator, run_blocking, schedule, summarize
    from tokenfleet.route.server import freeze_startup_heap, install_uvloop, raise_fd_limit
    from tokenfleet.workload.readers import read_trace

    api_key = (os.environ.get(api_key_env) or "").split(",")[0].strip() or None
    if api_key is None and api_key_env == "TOKENFLEET_API_KEYS" \
            and os.environ.get("TOKENFLEET_API_KEY"):
        # The name loadtest used before serve and loadtest shared one.
        api_key = os.environ["TOKENFLEET_API_KEY"].strip()
        typer.secho("note: $TOKENFLEET_API_KEY is deprecated; set $TOKENFLEET_API_KEYS (the "
                    "variable serve reads)", fg=typer.colors.YELLOW, err=True)
    tr = read_trace(trace, format=format) if trace is not None else None
    if tier_mix:
        mix = _mix(tier_mix)
    elif model:
        mix = {model: 1.0}
    else:
        tiers = _tiers_at(target, api_key)
        if len(tiers) != 1:
            raise TokenfleetError(f"{target} serves {len(tiers)} models "
                                  f"({', '.join(tiers) or 'none'}): pick with --model or "
                                  f"--tier-mix")
        mix = {tiers[0]: 1.0}
    reqs = schedule(tr, mix, rate_per_s=rate, duration_s=duration, speedup=speedup,
                    limit=limit, input_tokens=input_tokens, output_tokens=output_tokens,
                    seed=seed)
    if not reqs:
        raise TokenfleetError("nothing to send: the schedule is empty (check --duration, "
                              "--limit and the trace)")
    gen = LoadGenerator(target, api_key, "completion" if completions else "chat", stream,
                        timeout)
    install_uvloop()
    raise_fd_limit()
    freeze_startup_heap()  # no collector pauses in the measured latencies
    err = Console(stderr=True)
    show = err.is_terminal and not json_out
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  disable=not show) as progress:
        task = progress.add_task(f"{len(reqs)} requests → {target}", total=len(reqs))
        result = run_blocking(gen, reqs, lambda done, _n: progress.update(task, completed=done))
    summary = summarize(result, target=target)
    text = summary.model_dump_json(indent=2)
    if out is not None:
        write_text(out, text + "\n")
    if json_out:
        typer.echo(text)
        return
    con = Console()
    con.print(f"[bold]{summary.requests}[/bold] requests in {summary.wall_s:.1f} s: "
              f"{summary.completed} completed, {summary.retried} retried, "
              f"{summary.rejected} rejected (429), {summary.failed} failed")
    if summary.errors:
        con.print("errors: " + ", ".join(f"{k} × {v}" for k, v in summary.errors.items()))
    for note in summary.notes:
        con.print(f"[yellow]{note}[/yellow]")
    t = Table(title="client-side latency, ms (p50 / p90 / p99)")
    for c in ("tier", "requests", "completed", "TTFT", "TPOT", "SLO attainment"):
        t.add_column(c)
    for name, tr_ in summary.tiers.items():
        t.add_row(name, str(tr_.requests), str(tr_.completed),
                  " / ".join(_ms(x) for x in (tr_.ttft_s.p50, tr_.ttft_s.p90, tr_.ttft_s.p99)),
                  " / ".join(_ms(x) for x in (tr_.tpot_s.p50, tr_.tpot_s.p90, tr_.tpot_s.p99)),
                  "—" if tr_.slo_attainment is None else f"{tr_.slo_attainment:.1%}")
    con.print(t)
    if summary.cost_usd is not None:
        con.print(f"pool cost for the run: ${summary.cost_usd:,.4f}, energy "
                  f"{summary.energy_kwh or 0:,.4f} kWh (at TDP)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("emulate")(emulate_cmd)
    app.command("loadtest")(loadtest_cmd)
