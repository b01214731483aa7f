"""`tokenfleet estimate | compare | breakeven | calibrate` — presentation only; the
numbers come from ``tokenfleet.perf.estimate`` and ``tokenfleet.perf.calibration``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.cli.terminal import console
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.measurements import ENGINES

# The performance model (numpy, the calibration) and pydantic are imported inside the
# commands, so that `--help` answers without loading them.
if TYPE_CHECKING:
    from tokenfleet.perf.estimate import Estimate, Query

Model = Annotated[str, typer.Option("--model", "-m",
                                    help="catalog id/alias, or a Hugging Face config.json path")]
Accel = Annotated[str, typer.Option("--accelerator", "-a", help="catalog id or alias")]
Precision = Annotated[str, typer.Option(
    help="bf16 | fp8 | fp4 | int8 (W8A16) | w4a16 (MXFP4/INT4 weights, BF16 math) | "
         "w4a8 | auto")]
Engine = Annotated[str | None, typer.Option(help=f"calibration to use: {', '.join(ENGINES)}")]
InLen = Annotated[int, typer.Option("--input-len", help="prompt tokens")]
OutLen = Annotated[int, typer.Option("--output-len", help="generated tokens")]
SloTtft = Annotated[float | None, typer.Option("--slo-ttft", help="mean TTFT bound, seconds")]
SloTpot = Annotated[float | None, typer.Option("--slo-tpot",
                                                help="mean time per output token bound, s")]
CatalogOpt = Annotated[list[str] | None, typer.Option(
    "--catalog", help="extra catalog YAML to merge (repeatable): add chips, prices, models")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
# Serving techniques (perf/techniques.py)
PrefixHit = Annotated[float, typer.Option(
    "--prefix-hit-rate", help="fraction of prompt tokens a prefix (KV) cache serves, 0..<1: "
                              "their prefill is skipped, their KV still held")]
Speculative = Annotated[str | None, typer.Option(
    "--speculative", help="speculative decoding: draft:MODEL[:k[:a]] (a smaller catalog "
                          "model drafts k tokens accepted at rate a), fused:MODEL[:k[:a]] "
                          "(draft compiled into the target's step, AWS Neuron) or "
                          "mtp[:k[:a]] (the model's MTP head); e.g. mtp:1:0.85, "
                          "fused:llama-3.2-1b:7:0.8")]
RoleOpt = Annotated[str, typer.Option(
    "--role", help="both (aggregated) | prefill | decode: one pool of disaggregated "
                   "serving (prefill: prompt tokens/s and TTFT with the KV handover; "
                   "decode: TPOT and throughput, prompts arriving as KV)")]
KvLink = Annotated[float | None, typer.Option(
    "--kv-link-gbps", help="prefill role: GB/s per chip (one direction) to the decode pool; "
                           "default the chip's scale-out network")]
def _query(**kw) -> Query:
    from pydantic import ValidationError

    from tokenfleet.perf.estimate import Query
    from tokenfleet.yamlio import format_validation_error

    try:
        return Query(**{k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        raise TokenfleetError(format_validation_error(e, "query")) from None


def _band(low: float, high: float | None) -> str:
    return f"±{low:.0%}" if high is None else f"-{low:.0%}/+{high:.0%}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x * 1e3:.1f}"


def _num(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def _print_estimate(e: Estimate, console: Console) -> None:
    t = Table(title=f"{e.model} on {e.count}× {e.accelerator} ({e.precision}, KV {e.kv_precision})",
              show_header=False)
    t.add_column(style="bold")
    t.add_column()
    if not e.fits:
        t.add_row("fits", "[red]no[/red]")
        t.add_row("reason", e.reason or "")
    else:
        lo = e.layout.model_dump() if e.layout else {}
        t.add_row("layout", " ".join(f"{k}={v}" for k, v in lo.items())
                  + (f"  ({e.layout_why})" if e.layout_why else ""))
        t.add_row("operating point", f"{e.mode}, {e.batching} batching, concurrency "
                                      f"{e.concurrency:,.0f}")
        t.add_row("TTFT / TPOT", f"{_ms(e.ttft_s)} ms / {_ms(e.tpot_s)} ms")
        u = e.uncertainty
        band = (f"  ({_band(u.relative, u.upside)}: {u.low_output_tokens_per_s:,.0f}–"
                f"{u.high_output_tokens_per_s:,.0f})") if u else ""
        t.add_row("output tokens/s", f"{_num(e.output_tokens_per_s)}{band}")
        t.add_row("requests/s", _num(e.requests_per_s, ",.2f"))
        if e.role != "both" or e.prefix_hit_rate or e.speculative:
            bits = [f"role {e.role}"]
            if e.prefix_hit_rate:
                bits.append(f"prefix hit rate {e.prefix_hit_rate:.0%}")
            if e.speculative:
                bits.append(f"speculative {e.speculative} ({e.tokens_per_step:.2f} tokens/step)")
            if e.prompt_tokens_per_s is not None:
                bits.append(f"{e.prompt_tokens_per_s:,.0f} prompt tokens/s computed")
            if e.kv_transfer_s is not None:
                bits.append(f"KV handover {e.kv_transfer_s * 1e3:.1f} ms")
            t.add_row("techniques", "; ".join(bits))
        price = "" if not e.price_is_assumption else "  [yellow](price is an assumption)[/yellow]"
        t.add_row("$/hour (unit)", _num(e.usd_per_hour, ",.2f") + price)
        t.add_row("$/M output tokens", _num(e.usd_per_million_output_tokens, ",.3f"))
        t.add_row("watts / J per token",
                  f"{e.watts:,.0f} / {_num(e.joules_per_output_token, '.3f')}")
    if e.memory:
        m = e.memory
        t.add_row("memory / chip", f"weights {m.weights_gb:.1f} GB, KV budget "
                                    f"{m.kv_gb_available:.1f} GB of {m.hbm_gb:g} GB; "
                                    f"KV {m.kv_gb_per_token * 1e6:.1f} kB/token")
    t.add_row("provenance", f"{e.provenance} ({e.calibration_group or 'physical priors'})")
    if e.basis:
        t.add_row("rests on", e.basis)
    if e.uncertainty:
        basis = e.uncertainty.basis
        if e.basis and basis.startswith(e.basis):  # the "rests on" row already says it
            basis = basis[len(e.basis):].lstrip("; ")
        t.add_row("band basis", basis)
    for n in e.notes:
        t.add_row("note", n)
    console.print(t)


def estimate_cmd(
    model: Model = "llama-3.1-70b",
    accelerator: Accel = "h100-sxm",
    count: Annotated[int, typer.Option(help="chips in the unit")] = 1,
    precision: Precision = "auto",
    kv_precision: Annotated[str | None, typer.Option(help="KV cache: bf16 | fp8 | int8")] = None,
    engine: Engine = None,
    input_len: InLen = 1024,
    output_len: OutLen = 256,
    concurrency: Annotated[int | None, typer.Option(
        help="sequences in flight in the whole unit (layouts with more replicas than "
             "sequences are skipped); omit for max throughput (offline) or SLO mode")] = None,
    tp: Annotated[int | None, typer.Option(help="tensor-parallel size (the rest chosen)")
                  ] = None,
    pp: Annotated[int | None, typer.Option(help="pipeline stages (the rest chosen)")] = None,
    dp: Annotated[int | None, typer.Option(
        help="data-parallel ranks (attention-DP with --ep)")] = None,
    ep: Annotated[int | None, typer.Option(help="expert-parallel size (MoE)")] = None,
    batching: Annotated[str | None, typer.Option(
        help="static | continuous (default from the engine: neuron static, others "
             "continuous)")] = None,
    slo_ttft: SloTtft = None,
    slo_tpot: SloTpot = None,
    cloud: Annotated[str | None, typer.Option(help="take the price from this cloud")] = None,
    price: Annotated[float | None, typer.Option("--price",
                                                help="override $/chip-hour")] = None,
    batch: Annotated[Path | None, typer.Option(
        "--batch", help="JSONL file of queries (one object per line, keys as the flags); "
                        "prints one JSON result per line, in order")] = None,
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
    prefix_hit_rate: PrefixHit = 0.0,
    speculative: Speculative = None,
    role: RoleOpt = "both",
    kv_link_gbps: KvLink = None,
) -> None:
    """What one serving unit does: throughput, latency, memory, $ and watts.

    Without --concurrency or SLOs: the highest throughput that fits in
    memory (offline). With --concurrency C (sequences in the whole unit): that
    operating point. With --slo-ttft/--slo-tpot: the highest throughput that
    still meets them. The layout of the COUNT chips is chosen as engines run
    them (TP inside the scale-up domain, PP only across domains, EP with
    attention-DP for MoE where the engine has it); fix any of it with --tp
    --pp --dp --ep. --batch JSONL keys are the flag names (tp, pp, dp, ep,
    batching, concurrency, ...).

    Example: tokenfleet estimate -m llama-3.1-70b -a maia-200 --count 4
    --precision fp8 --input-len 2048 --output-len 256 --slo-ttft 1.0
    --slo-tpot 0.05

    Example (stated layout, static batches): tokenfleet estimate -m
    llama-3.1-70b -a h200 --count 8 --precision fp8 --tp 8 --concurrency 64
    --batching static

    Serving techniques: --prefix-hit-rate (prefix caching), --speculative
    (speculative decoding / MTP), --role prefill|decode (one pool of
    disaggregated serving).
    """
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.perf.estimate import estimate

    cat = load_catalog(catalog or [])
    if batch is not None:
        _run_batch(batch, cat)
        return
    q = _query(model=model, accelerator=accelerator, count=count, precision=precision,
               kv_precision=kv_precision, engine=engine, input_len=input_len,
               output_len=output_len, concurrency=concurrency, slo_ttft=slo_ttft,
               slo_tpot=slo_tpot, cloud=cloud, usd_per_hour=price, tp=tp, pp=pp, dp=dp, ep=ep,
               batching=batching, prefix_hit_rate=prefix_hit_rate or None,
               speculative=speculative, role=role, kv_link_gbps=kv_link_gbps)
    e = estimate(q, cat)
    if json_out:
        print(e.model_dump_json(indent=2))
    else:
        _print_estimate(e, console())
    if not e.fits:
        raise typer.Exit(1)


def _run_batch(path: Path, cat) -> None:
    from pydantic import ValidationError

    from tokenfleet.fileio import read_text
    from tokenfleet.perf.estimate import Query, estimate
    from tokenfleet.yamlio import format_validation_error

    lines = read_text(path, "batch file").splitlines()
    out = sys.stdout
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise TokenfleetError("each line must be a JSON object")
            try:
                q = Query(**raw)
            except ValidationError as e:
                raise TokenfleetError(format_validation_error(e, f"{path}:{i}")) from None
            res = estimate(q, cat).model_dump(mode="json")
        except json.JSONDecodeError as e:
            res = {"line": i, "error": f"{path}:{i}: invalid JSON ({e.msg})"}
        except TokenfleetError as e:
            res = {"line": i, "error": str(e)}
        out.write(json.dumps(res) + "\n")


def _rests(e: Estimate) -> str:
    """Short form of what a chip's numbers rest on: its group, or 'peer X (group)'."""
    if e.peer:
        return f"peer {e.peer} ({e.calibration_group})"
    return e.calibration_group or "physical priors"


def compare_cmd(
    model: Model = "llama-3.1-70b",
    precision: Precision = "auto",
    engine: Engine = None,
    input_len: InLen = 1024,
    output_len: OutLen = 256,
    slo_ttft: SloTtft = None,
    slo_tpot: SloTpot = None,
    accelerators: Annotated[str | None, typer.Option(
        help="comma list of chips (default: the whole catalog)")] = None,
    cloud: Annotated[str | None, typer.Option(
        help="price every chip in this cloud (chips it does not list are left out); "
             "default: each chip's median price across the clouds that list one")] = None,
    price_kind: Annotated[str, typer.Option(
        help="on-demand | reserved | spot")] = "on-demand",
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
    prefix_hit_rate: PrefixHit = 0.0,
) -> None:
    """Rank every chip by $ per million output tokens for one model and traffic
    shape.

    Each chip gets its cheapest count (1–64 chips, plus its scale-up domain)
    and layout that meets the SLOs. Chips that cannot serve it are listed
    last with the reason. Equal-cost comparison: every row is the same work
    (one output token), priced like for like: every chip in --cloud at
    --price-kind, or (default) each chip's median --price-kind price across the
    clouds that list one (* = assumed price).
    """
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.catalog.pricing import parse_price_kind, priced_catalog
    from tokenfleet.perf.estimate import compare

    kind = parse_price_kind(price_kind)
    cat, choices = priced_catalog(load_catalog(catalog or []), cloud, kind)
    if cloud is not None and not accelerators:
        listed = [a for a, ch in choices.items() if ch.price is not None]
        if not listed:
            raise TokenfleetError(f"--cloud {cloud}: no chip lists a {kind} price there")
        accelerators = ",".join(listed)
    basis = (f"{cloud} {kind.replace('_', '-')} prices" if cloud else
             f"each chip's median {kind.replace('_', '-')} price across clouds")
    q = _query(model=model, accelerator="h100-sxm", precision=precision, engine=engine,
               input_len=input_len, output_len=output_len, slo_ttft=slo_ttft,
               slo_tpot=slo_tpot, prefix_hit_rate=prefix_hit_rate or None)
    ids = [a.strip() for a in accelerators.split(",")] if accelerators else None
    if ids:
        ids = [cat.accelerator(a).id for a in ids]
    rows = compare(q, cat, accelerators=ids)
    if json_out:
        print(json.dumps([e.model_dump(mode="json") for e in rows], indent=1))
        return
    slo = []
    if slo_ttft:
        slo.append(f"TTFT ≤ {slo_ttft:g}s")
    if slo_tpot:
        slo.append(f"TPOT ≤ {slo_tpot * 1e3:g}ms")
    t = Table(title=f"{rows[0].model}: {input_len} in / {output_len} out"
                    + (f", {', '.join(slo)}" if slo else ", offline max throughput"),
              caption=f"priced at {basis}")
    for col in ("#", "chip", "prec", "chips", "layout", "$/M out tok", "tok/s", "tok/J",
                "TTFT ms", "TPOT ms", "trust", "rests on", "why not"):
        t.add_column(col, justify="left" if col in ("chip", "layout", "trust", "why not",
                                                     "prec", "rests on") else "right",
                     overflow="fold")
    for i, e in enumerate(rows, start=1):
        lay = e.layout.short if e.layout else "tp1"
        if e.fits:
            usd = _num(e.usd_per_million_output_tokens, ",.3f")
            if e.price_is_assumption:
                usd += "*"
            u = e.uncertainty
            band = _band(u.relative, u.upside) if u else ""
            t.add_row(str(i), e.accelerator, e.precision, str(e.count), lay, usd,
                      _num(e.output_tokens_per_s), _num(1 / e.joules_per_output_token
                                                       if e.joules_per_output_token else None,
                                                       ".2f"),
                      _ms(e.ttft_s), _ms(e.tpot_s), f"{e.provenance} {band}", _rests(e), "")
        else:
            t.add_row(str(i), e.accelerator, e.precision, "—", "—", "—", "—", "—", "—", "—",
                      e.provenance, _rests(e), e.reason or "")
    console().print(t)
    console().print("* price is an assumption (no public price); override with --catalog")


def breakeven_cmd(
    model: Model = "llama-3.1-70b",
    accelerator: Accel = "maia-200",
    versus: Annotated[str, typer.Option(help="the incumbent chip to beat")] = "gb200",
    advantage: Annotated[float, typer.Option(
        help="tokens-per-dollar edge to reach, e.g. 0.30 for +30%")] = 0.0,
    precision: Precision = "auto",
    engine: Engine = None,
    input_len: InLen = 1024,
    output_len: OutLen = 256,
    slo_ttft: SloTtft = None,
    slo_tpot: SloTpot = None,
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The $/chip-hour at which one chip matches another in $ per token.

    Also the price at which ACCELERATOR beats VERSUS by --advantage (is "+30%
    tokens per dollar" true, and at what price?). Both chips use their
    cheapest count and layout for this model and traffic.
    """
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.perf.estimate import breakeven

    cat = load_catalog(catalog or [])
    q = _query(model=model, accelerator=accelerator, precision=precision, engine=engine,
               input_len=input_len, output_len=output_len, slo_ttft=slo_ttft,
               slo_tpot=slo_tpot)
    b = breakeven(q, versus, advantage, cat)
    if json_out:
        print(b.model_dump_json(indent=2))
        return
    a, v = b.accelerator_estimate, b.versus_estimate
    c = console()
    c.print(f"[bold]{b.model}[/bold], {input_len} in / {output_len} out")
    for e in (a, v):
        c.print(f"  {e.accelerator:>10}: {e.count}× {e.precision}, "
                f"{_num(e.output_tokens_per_s)} tok/s per unit, "
                f"${_num(e.usd_per_million_output_tokens, ',.3f')}/M tok at "
                f"${_num((e.usd_per_hour or 0) / e.count, ',.2f')}/chip-h"
                + (" (assumed price)" if e.price_is_assumption else "")
                + f"  \\[{e.provenance}, rests on {_rests(e)}]")
    c.print(f"  {a.accelerator} matches {v.accelerator} at "
            f"[bold]${b.breakeven_usd_per_chip_hour:,.2f}[/bold]/chip-hour "
            f"(band ${b.band_usd_per_chip_hour[0]:,.2f}–${b.band_usd_per_chip_hour[1]:,.2f})")
    if advantage:
        c.print(f"  {a.accelerator} gives +{advantage:.0%} tokens per dollar at or below "
                f"[bold]${b.advantage_usd_per_chip_hour:,.2f}[/bold]/chip-hour")
    if b.current_advantage is not None:
        c.print(f"  at its catalog price ${b.current_usd_per_chip_hour:,.2f}: "
                f"{b.current_advantage:+.0%} tokens per dollar vs {v.accelerator}")


def calibrate_cmd(
    write: Annotated[bool, typer.Option(
        "--write", help="save the fit as package data (perf/data/efficiency.json)")] = False,
    loo: Annotated[bool, typer.Option(help="also compute held-out errors (slower)")] = True,
    out: Annotated[Path | None, typer.Option(help="write per-row predictions (JSON)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Refit the model's efficiency factors to the shipped measurements.

    Fits residual factors on the physical priors per chip family and engine to
    perf/data/published_measurements*.csv, every row asked through the same
    estimate a user calls (with the layout the source states); reports
    leave-one-source-out and leave-one-family-out errors (layout picked by the
    tool), and with --write saves the fit (perf/data/efficiency.json).
    """
    from rich.progress import Progress

    from tokenfleet.perf.calibration import run_fit, write_fit

    with Progress(transient=True) as prog:
        task = prog.add_task("fitting", total=None)

        def step(label: str, i: int, n: int) -> None:
            prog.update(task, description=label, completed=i, total=n)

        cal, ev = run_fit(loo=loo, progress=step)
    if write:
        path = write_fit(cal)
        console(stderr=True).print(f"wrote {path}")
    if out:
        from tokenfleet.fileio import write_text

        write_text(out, json.dumps(ev.rows, indent=1))
    if json_out:
        print(json.dumps(cal.to_json(), indent=2))
        return
    t = Table(title="Calibration: fitted efficiencies (residuals on physical priors) and "
                    "leave-one-source-out throughput error (user path)")
    for col in ("group", "points", "gemm", "attention", "bandwidth", "kv bw", "host ms",
                "p90 as asked", "held-out median", "held-out p90"):
        t.add_column(col, justify="left" if col == "group" else "right")

    def pct(d: dict[str, float], k: str) -> str:
        return f"{d[k]:.1%}" if k in d else "—"

    for k, g in cal.groups.items():
        e = g.efficiency
        t.add_row(k, str(g.n_points), f"{e.gemm:.2f}", f"{e.attention:.2f}",
                  f"{e.bandwidth:.2f}", f"{e.kv_bandwidth:.2f}", f"{e.host_overhead_s * 1e3:.2f}",
                  pct(g.in_sample, "p90"), pct(g.held_out, "median"), pct(g.held_out, "p90"))
    console().print(t)
    if cal.cross_family:
        console().print(f"leave-one-family-out throughput error (peer borrowing): median "
                        f"{cal.cross_family['median']:.1%}, p90 {cal.cross_family['p90']:.1%}")


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate_cmd)
    app.command("compare")(compare_cmd)
    app.command("breakeven")(breakeven_cmd)
    app.command("calibrate")(calibrate_cmd)
