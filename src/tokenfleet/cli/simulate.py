"""`tokenfleet simulate` and `tokenfleet sweep` — presentation only; the numbers come
from ``tokenfleet.sim.run`` and ``tokenfleet.sim.sweep``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.errors import TokenfleetError
from tokenfleet.routing.policies import POLICIES

# The simulator (numba, polars) is imported inside the commands, so that `--help`
# answers without compiling or loading it.
if TYPE_CHECKING:
    from tokenfleet.plan.schema import Plan, TierSummary
    from tokenfleet.sim.results import SimSummary, TierResult
    from tokenfleet.sim.run import SimResult
    from tokenfleet.sim.traffic import Workload

TRACE_HELP = (
    "Requests to replay: a trace file (CSV/JSONL/Parquet, Azure, BurstGPT, Mooncake; "
    ".gz/.xz fine) or sample:NAME (bundled: azure_conv, azure_code, mooncake_conversation, "
    "...). One trace is spread over the tiers by their planned peak rates (or all to "
    "--tier). TIER=FILE gives a tier its own trace (repeat for each tier).")
FAIL_HELP = (
    "Take capacity out (repeatable): vendor=NAME, cloud=NAME, region=NAME, "
    "accelerator=ID, pool=POOL_ID or replicas=POOL_ID:N, optionally @t=START[..END] "
    "seconds, e.g. --fail vendor=NVIDIA@t=600..1200 (down from 600 s, back at 1200 s). "
    "Requests on failed replicas are re-queued elsewhere.")
SURGE_HELP = "Traffic surge (repeatable): FACTORx[@t=START[..END]], e.g. 2x@t=600..900."
PRICE_HELP = ("Price change (repeatable): ACCELERATOR_OR_POOL=USD_PER_CHIP_HOUR[@t=START], "
              "e.g. maia-200=3.5 or maia-200=3.5@t=1800.")


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:,.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def print_summary(s: SimSummary, console: Console) -> None:
    head = Table(title=f"Simulation of {s.source}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    reasons = ", ".join(f"{k}: {v}" for k, v in s.rejected_by_reason.items()) or "none"
    for k, v in (
        ("requests", f"{s.requests:,}"), ("completed", f"{s.completed:,}"),
        ("retried after failure", f"{s.retried:,}"), ("rejected", f"{s.rejected:,} ({reasons})"),
        ("preemptions", f"{s.preemptions:,}"),
        ("simulated span", f"{s.sim_duration_s:,.1f} s"),
        ("cost", f"${s.cost_usd:,.2f}"
         + (f" (${s.usd_per_million_output_tokens:.2f} per M output tokens)"
            if s.usd_per_million_output_tokens else "")),
        ("energy", f"{s.energy_kwh:,.1f} kWh at TDP ({s.energy_busy_kwh:,.1f} while busy)"),
        ("shocks", ", ".join(s.shocks) or "none"),
        ("speed", f"{s.simulated_requests_per_s:,.0f} requests per wall second "
                  f"({s.wall_s:.1f} s)"),
        ("checks", ("conservation ok" if s.checks.conservation_ok else "CONSERVATION FAILED")
         + f"; Little's law L={s.checks.littles_law.in_system_mean:.2f} vs λW="
           f"{s.checks.littles_law.arrival_rate_per_s * s.checks.littles_law.sojourn_mean_s:.2f}"
           f" ({s.checks.littles_law.relative_error:.1%})"),
    ):
        head.add_row(k, v)
    console.print(head)
    t = Table(title="Per tier (latencies in ms)")
    for c in ("tier", "requests", "done", "rejected", "TTFT p50/p90/p99", "TPOT p50/p90/p99",
              "SLO ttft/tpot", "SLO met", "goodput req/s"):
        t.add_column(c, justify="left" if c == "tier" else "right")
    for name, r in s.tiers.items():
        t.add_row(
            name, f"{r.requests:,}", f"{r.completed:,}", f"{r.rejected:,}",
            "/".join(_ms(x) for x in (r.ttft_s.p50, r.ttft_s.p90, r.ttft_s.p99)),
            "/".join(_ms(x) for x in (r.tpot_s.p50, r.tpot_s.p90, r.tpot_s.p99)),
            f"{_ms(r.slo_ttft_s)}/{_ms(r.slo_tpot_s)}", _pct(r.slo_attainment),
            f"{r.goodput_requests_per_s:,.1f}")
    console.print(t)
    hits = [f"{n} {r.prefix_cache_hit_rate:.1%}" for n, r in s.tiers.items()
            if r.prefix_cache_hit_rate is not None]
    if hits:  # traces with prefix hashes (Mooncake): per-lane LRU caches (sim/prefix_cache.py)
        console.print("prefix-cache hit rate (prompt tokens served from the lanes' caches): "
                      + ", ".join(hits))
    p = Table(title="Per pool")
    for c in ("pool", "replicas", "requests", "moved away", "TTFT p99 ms", "TPOT p99 ms",
              "util", "KV mean/max", "queue max", "preempt", "cost $"):
        p.add_column(c, justify="left" if c == "pool" else "right")
    for name, pr in s.pools.items():
        p.add_row(name, str(pr.replicas), f"{pr.requests:,}", f"{pr.moved_away:,}",
                  _ms(pr.ttft_s.p99), _ms(pr.tpot_s.p99), _pct(pr.utilization),
                  f"{_pct(pr.kv_occupancy_mean)}/{_pct(pr.kv_occupancy_max)}",
                  f"{pr.queue_max:,.0f}", f"{pr.preemptions:,}", f"{pr.cost_usd:,.2f}")
    console.print(p)
    if any(pr.role != "both" for pr in s.pools.values()):
        console.print("prefill/decode pools (disaggregated pairs): each pool's TTFT is its own "
                      "stage's; a tier's TTFT spans the prefill, the KV handover and joining "
                      "the decode batch")


def _run_with_progress(plan: Plan, w: Workload, show: bool, **kw) -> SimResult:
    from tokenfleet.cli.progress import progress
    from tokenfleet.sim.run import simulate

    with progress("simulating", len(w), quiet=not show) as tick:
        opt = kw.pop("options")
        opt.progress = lambda done, total: tick(done, total)
        return simulate(plan, w, options=opt, **kw)


def simulate_cmd(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json",
                                              help="plan written by `tokenfleet plan`")],
    trace: Annotated[list[str] | None, typer.Option("--trace", "-t", help=TRACE_HELP)] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="trace format if not detected "
                                                           "(see `trace stats --help`)")] = None,
    mapping: Annotated[str | None, typer.Option(
        "--map", help="trace column mapping, e.g. arrival=ts,input=p,output=c,unit=ms")] = None,
    scenario: Annotated[Path | None, typer.Option(
        help="take each tier's traffic from this planner scenario (its traces x scale x "
             "growth): replays what the plan was sized for")] = None,
    tier: Annotated[str | None, typer.Option(help="send every request to this tier")] = None,
    rate: Annotated[float | None, typer.Option(
        help="generated traffic: total requests/s (default: the plan's peak), shaped like "
             "the plan's split, Poisson")] = None,
    duration: Annotated[float | None, typer.Option(
        help="seconds of traffic: generated traffic lasts this long; a replayed trace "
             "(--trace, --scenario) is cut to its first DURATION seconds")] = None,
    growth: Annotated[float, typer.Option(help="multiply the request rate, e.g. 1.5")] = 1.0,
    policy: Annotated[str, typer.Option(
        help=f"routing policy: {', '.join(POLICIES)} (plan = follow the plan's split, "
             "spill over when full)")] = "plan",
    fail: Annotated[list[str] | None, typer.Option("--fail", help=FAIL_HELP)] = None,
    fail_each: Annotated[str | None, typer.Option(
        "--fail-each", help="N-1 check: one extra run per value of vendor|cloud|region, "
                            "with all of that capacity down for the whole run")] = None,
    admission: Annotated[str, typer.Option(
        help="admission control: none (queue everything) or ttft (turn a request away "
             "when its predicted queueing delay exceeds the tier's TTFT SLO on every "
             "pool of the tier, like the gateway's 429)")] = "none",
    surge: Annotated[list[str] | None, typer.Option("--surge", help=SURGE_HELP)] = None,
    price: Annotated[list[str] | None, typer.Option("--price", help=PRICE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    out: Annotated[Path | None, typer.Option(
        help="write summary.json, timeseries.parquet and report.html here")] = None,
    seed: Annotated[int, typer.Option(help="random seed (tier assignment, routing, "
                                           "generated traffic)")] = 0,
    workers: Annotated[int, typer.Option(
        help="split independent tiers over this many Ray workers (1 = this process)")] = 1,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (host:port or auto) instead of a local one; a cluster "
             "with token authentication needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN")] = None,
    sync_s: Annotated[float | None, typer.Option(
        help="routing window, s: the router sees pool states this fresh (default: the "
             "simulator's, sim.engine.DEFAULT_SYNC_S)")] = None,
    sample_s: Annotated[float | None, typer.Option(
        help="time-series interval, s (default ~1/500 of the traffic span)")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(
        help="engine: max running sequences per replica (default 1024)")] = None,
    max_batched_tokens: Annotated[int | None, typer.Option(
        help="engine: token budget per iteration (default 8192)")] = None,
) -> None:
    """Replay traffic through a plan's fleet, with failures, surges and price changes.

    Every replica runs continuous batching (token budget per iteration, chunked
    prefill, KV-cache blocks, preemption with recompute) with step times from the
    performance model; requests are routed by the same policies as `tokenfleet serve`.

    Examples:

      tokenfleet simulate plan.json --scenario examples/frontier-lab.yaml --out sim/

      tokenfleet simulate plan.json --trace sample:azure_conv --growth 20 --policy jsq

      tokenfleet simulate plan.json --duration 900 --fail vendor=NVIDIA@t=300..600 --json

      tokenfleet simulate plan.json --scenario examples/frontier-lab.yaml --fail-each vendor
    """
    from tokenfleet.plan.schema import load_plan
    from tokenfleet.sim.engine import ADMISSION_MODES, DEFAULT_SYNC_S, SimOptions
    from tokenfleet.sim.fleet import EngineConfig
    from tokenfleet.sim.run import prepare_workload
    from tokenfleet.sim.shocks import parse_failure, parse_price, parse_surge
    from tokenfleet.sim.sources import build_traffic

    sync_s = DEFAULT_SYNC_S if sync_s is None else sync_s
    plan = load_plan(plan_file)
    failures = [parse_failure(f) for f in fail or []]
    surges = [parse_surge(s) for s in surge or []]
    prices = [parse_price(p) for p in price or []]
    if policy not in POLICIES:
        raise TokenfleetError(f"--policy '{policy}': allowed: {', '.join(POLICIES)}")
    if admission not in ADMISSION_MODES:
        raise TokenfleetError(f"--admission '{admission}': allowed: "
                              f"{', '.join(ADMISSION_MODES)}")
    if workers < 1:
        raise TokenfleetError(f"--workers must be >= 1, got {workers}")
    w = build_traffic(plan, trace or [], fmt, mapping, scenario, tier, rate, duration, seed)
    w = prepare_workload(plan, w, growth=growth, surges=surges, seed=seed)
    engine = EngineConfig(max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens)
    show = True  # on stderr: a bar on a terminal, periodic lines elsewhere

    def one(extra: list) -> SimResult:
        opt = SimOptions(policy=policy, seed=seed, sync_s=sync_s, sample_s=sample_s,
                         admission=admission)
        return _run_with_progress(plan, w, show, failures=failures + extra, prices=prices,
                                  options=opt, engine=engine, workers=workers,
                                  address=address)

    result = one([])
    console = Console(width=None if Console().is_terminal else 160)
    if fail_each:
        if fail_each not in ("vendor", "cloud", "region"):
            raise TokenfleetError(f"--fail-each {fail_each}: allowed: vendor, cloud, region")
        values = sorted({str(getattr(u, fail_each)) for u in plan.units if u.replicas})
        runs = {v: one([parse_failure(f"{fail_each}={v}")]) for v in values}
        if as_json:
            import json

            typer.echo(json.dumps({"baseline": result.summary.model_dump(), "without": {
                v: r.summary.model_dump() for v, r in runs.items()}}, indent=2))
        else:
            _print_n_minus_1(plan, fail_each, result, runs, console)
    elif as_json:
        typer.echo(result.summary.model_dump_json(indent=2))
    else:
        print_summary(result.summary, console)
    if out is not None:
        from tokenfleet.report.sim_html import write_simulation

        paths = write_simulation(result, out)
        Console(stderr=True).print("wrote " + ", ".join(str(p) for p in paths.values()))


def _print_n_minus_1(plan: Plan, by: str, base: SimResult, runs: dict[str, SimResult],
                     console: Console) -> None:
    mode = base.summary.admission
    t = Table(title=f"N-1 by {by}: goodput fraction (offered requests done within SLO), "
                    f"shed and p99 TTFT per tier with each {by} down (admission: {mode})")
    t.add_column(f"{by} down")
    tiers = [x.name for x in plan.tiers]
    for name in tiers:
        t.add_column(f"{name} goodput", justify="right")
        t.add_column(f"{name} shed", justify="right")
        t.add_column(f"{name} p99 TTFT s", justify="right")
    t.add_column("rejected", justify="right")
    for label, r in [("(none)", base), *runs.items()]:
        row = [label]
        for name in tiers:
            tr = r.summary.tiers[name]
            row += [_pct(tr.goodput_fraction),
                    _pct(tr.shed / tr.requests) if tr.requests else "—",
                    "—" if tr.ttft_s.p99 is None else f"{tr.ttft_s.p99:.2f}"]
        row.append(f"{r.summary.rejected:,}")
        t.add_row(*row)
    console.print(t)
    lim = plan.limits.n_minus_1
    if lim:
        console.print(f"plan promise: {lim.model_dump()}")
        floor = lim.min_fraction
        if floor is not None:
            short = [f"{v}: {name} {r.summary.tiers[name].goodput_fraction:.1%}"
                     for v, r in runs.items() for name in tiers
                     if (r.summary.tiers[name].goodput_fraction or 0.0) < floor]
            console.print(f"the plan's N-1 promise, >= {floor:.0%} of arrived requests within "
                          f"both SLOs (rejected and shed count as misses) in every tier with "
                          f"any one {by} down: " + ("yes" if not short else
                                                    "NO (" + "; ".join(short) + ")"))
            misses = [f"{v}: {name} {why}" for v, r in runs.items() for t in plan.tiers
                      for name in [t.name]
                      if (why := _planned_slo_miss(r.summary.tiers[name],
                                                   _percentiles(t), floor))]
            console.print(
                f"the tiers' SLO percentiles with one {by} down (information; the promise "
                "with a group down is the share above): " + (
                    "all within" if not misses else "; ".join(misses)))


def _percentiles(t: TierSummary) -> tuple[float, float]:
    """The tier's (TTFT, TPOT) SLO percentiles (older plans: one for both)."""
    if t.slo_percentile is not None:
        return t.slo_percentile, t.slo_percentile
    return t.slo_ttft_percentile, t.slo_tpot_percentile


def _planned_slo_miss(tr: TierResult, percentile: float | tuple[float, float],
                      floor: float) -> str:
    """Why a tier breaks the planner's N-1 promise in a run ('' when it keeps it): the
    planner's SLOs bound a percentile of TTFT and of TPOT (the summary has p50, p90 and
    p99; the nearest at or above the SLO's percentile is used)."""
    served = tr.completed / tr.requests if tr.requests else 1.0
    pcts = percentile if isinstance(percentile, tuple) else (percentile, percentile)
    bits = [] if served >= floor else [f"served {served:.1%}"]
    for what, lat, bound, pct in (("TTFT", tr.ttft_s, tr.slo_ttft_s, pcts[0]),
                                  ("TPOT", tr.tpot_s, tr.slo_tpot_s, pcts[1])):
        key = "p50" if pct <= 50 else "p90" if pct <= 90 else "p99"
        value = getattr(lat, key)
        if bound is not None and value is not None and value > bound:
            bits.append(f"{key} {what} {value:.3g} s > {bound:g} s")
    return ", ".join(bits)


def sweep_cmd(
    grid: Annotated[Path, typer.Argument(metavar="GRID.yaml",
                                         help="what-if grid (see below)")],
    out: Annotated[Path, typer.Option(help="results table")] = Path("sweep.parquet"),
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (host:port or auto); default: a local Ray. A cluster "
             "with token authentication needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN "
             "(see README, 'Sweeps on a Ray cluster')")] = None,
    workers: Annotated[int | None, typer.Option(
        help="local Ray CPUs (default: all cores)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="skip the points a crashed or stopped run already finished (kept "
                         "in OUT.points.jsonl as each completes)")] = False,
) -> None:
    """Run a grid of what-ifs (plan + simulate per point) in parallel on Ray.

    GRID.yaml names a plan (or a scenario to re-plan per point), the traffic, and
    axes whose every combination is one point:

    \b
      scenario: ../examples/frontier-lab.yaml   # or  plan: plan.json
      traffic: {scenario: true}                 # or  {trace: FILE} / {duration: 600}
      grid:
        set:supply.maia-200.price: [3.0, 4.0, 5.0]   # scenario overrides (re-plan)
        growth: [1.0, 1.5]                           # traffic growth
        fail: [none, vendor=NVIDIA, vendor=AMD]      # as simulate --fail
        policy: [plan, jsq]

    Writes one row per point (failed points too, with the error) to --out, a summary
    plot next to it (.html), and prints a table.
    """
    from tokenfleet.cli.progress import progress
    from tokenfleet.report.sweep_html import write_sweep
    from tokenfleet.sim.sweep import (
        append_journal,
        journal_path,
        load_grid,
        read_journal,
        run_sweep,
    )

    spec = load_grid(grid)
    points = spec.points()
    journal = journal_path(out)
    done_rows = read_journal(journal, spec) if resume else {}
    if not resume:
        journal.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    err = Console(stderr=True)
    with progress("sweep points", len(points)) as tick:
        done = [len(done_rows)]
        tick(done[0])

        def finished(i: int, row: dict[str, Any]) -> None:
            append_journal(journal, spec, i, row)  # each point on disk as it completes
            done[0] += 1
            tick(done[0])

        rows = run_sweep(spec, workers=workers, address=address, on_point=finished,
                         done_rows=done_rows)
    if done_rows:
        err.print(f"resumed: {len(done_rows)} of {len(points)} point(s) were already done")
    paths = write_sweep(rows, spec, out)

    print_sweep(rows, Console(width=None if Console().is_terminal else 160))
    err.print("wrote " + ", ".join(str(p) for p in paths))


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
    app.command("sweep")(sweep_cmd)


def print_sweep(rows: list[dict[str, Any]], console: Console) -> None:
    from tokenfleet.sim.sweep import AXES

    if not rows:
        return
    axes = [k for k in rows[0] if k not in ("point", "status", "error")
            and k in {a for r in rows for a in r} and not k[0].isdigit()]
    axes = [a for a in axes if a in AXES or ":" in a]
    tiers = sorted({k.split(".")[0] for r in rows for k in r if k.endswith(".slo_attainment")})
    t = Table(title=f"Sweep: {len(rows)} points")
    for c in ["#", *axes, "status", *[f"{x} SLO met" for x in tiers], "cost $", "rejected"]:
        t.add_column(c)
    for r in rows:
        vals = [str(r["point"]), *[str(r.get(a, "")) for a in axes], r["status"]]
        for x in tiers:
            v = r.get(f"{x}.slo_attainment")
            vals.append("—" if v is None or (isinstance(v, float) and math.isnan(v))
                        else f"{v:.1%}")
        vals.append(f"{r['cost_usd']:,.2f}" if r.get("cost_usd") is not None else "—")
        vals.append(str(r.get("rejected", "—")))
        if r["status"] != "ok":
            vals[len(axes) + 1] = f"[red]error[/red]: {str(r['error']).splitlines()[0][:80]}"
        t.add_row(*vals)
    console.print(t)
