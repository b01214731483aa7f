"""``tokenfleet trace ...``: summarise a request trace, or generate a synthetic one.

Presentation only: reading, statistics and generation live in the library
modules next to this one.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.cli.app import FastHelpGroup
from tokenfleet.errors import TokenfleetError

# The trace readers and statistics (numpy, polars) are imported inside the commands, so
# that `--help` answers without loading them.
if TYPE_CHECKING:
    from tokenfleet.workload.buckets import SizeBuckets
    from tokenfleet.workload.stats import HistogramBin, TraceStats
    from tokenfleet.workload.trace import Trace

# The formats workload.readers registers, named here so that --help need not import the
# readers; tests/test_cli_help.py checks the two lists agree.
TRACE_FORMATS = ("azure", "burstgpt", "mooncake", "csv", "jsonl", "parquet")

_FORMAT_HELP = (
    "Trace format; detected from the extension and header when omitted. One of: "
    + ", ".join(TRACE_FORMATS)
    + "."
)
_MAP_HELP = (
    "Column mapping for generic csv/jsonl/parquet files: "
    "arrival=COL,input=COL,output=COL,unit=s|ms|us|ns|datetime. "
    "Default: arrival_s,input_tokens,output_tokens in seconds."
)
_BAR = 40  # characters for the longest bar of a text histogram


class ArrivalKind(str, Enum):
    """Arrival processes ``trace generate`` can draw."""

    poisson = "poisson"
    gamma = "gamma"


class LengthFit(str, Enum):
    """How ``trace generate`` draws lengths from the --like trace."""

    empirical = "empirical"
    lognormal = "lognormal"


def _edges(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise TokenfleetError(
            f"bucket edges '{text}': expected comma-separated numbers such as 0,512,2048,inf"
        ) from None


def _buckets(input_edges: str | None, output_edges: str | None) -> SizeBuckets:
    from pydantic import ValidationError

    from tokenfleet.workload.buckets import SizeBuckets

    base = SizeBuckets()
    try:
        return SizeBuckets(
            input_edges=_edges(input_edges, base.input_edges),
            output_edges=_edges(output_edges, base.output_edges),
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise TokenfleetError(f"bucket edges, field '{err['loc'][0]}': {err['msg']}") from None


def _rate(x: float | None, unit: str = "req/s") -> str:
    return "n/a (trace shorter than window)" if x is None else f"{x:,.3f} {unit}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds:,.0f} s ({seconds / 60:,.1f} min)"
    return f"{seconds:,.0f} s ({seconds / 3600:,.2f} h)"


def _bars(labels: list[str], counts: list[int]) -> list[str]:
    top = max(counts) if counts else 0
    width = max((len(x) for x in labels), default=0)
    lines = []
    for label, c in zip(labels, counts, strict=True):
        n = 0 if top == 0 else math.ceil(_BAR * c / top) if c else 0
        lines.append(f"  {label:>{width}} | {'#' * n} {c:,}")
    return lines


def _hist_label(b: HistogramBin) -> str:
    return f"[{b.lo:,}, {'inf' if b.hi is None else f'{b.hi:,}'})"


def _print_stats(s: TraceStats, console: Console) -> None:
    summary = Table(title=f"Trace {s.source}", show_header=False, title_justify="left")
    summary.add_column("", style="bold")
    summary.add_column("")
    summary.add_row("requests", f"{s.count:,}")
    if s.start:
        summary.add_row("first request", s.start)
    summary.add_row("span", _span(s.span_s))
    summary.add_row("mean rate", _rate(s.mean_rate_per_s))
    summary.add_row("peak rate, 1-min window", _rate(s.peak_rate_1min_per_s))
    summary.add_row("peak rate, 10-min window", _rate(s.peak_rate_10min_per_s))
    cv = "n/a" if s.interarrival_cv is None else f"{s.interarrival_cv:.2f} (1 = Poisson)"
    summary.add_row("inter-arrival CV", cv)
    summary.add_row("input tokens/s (mean)", _rate(s.input_tokens_per_s, "tok/s"))
    summary.add_row("output tokens/s (mean)", _rate(s.output_tokens_per_s, "tok/s"))
    summary.add_row("rows out of order (sorted)", f"{s.out_of_order:,}")
    if s.dropped:
        summary.add_row("rows dropped by filters", f"{s.dropped:,}")
    console.print(summary)

    lengths = Table(title="Lengths (tokens)", title_justify="left")
    for col in ("", "mean", "p50", "p90", "p99", "min", "max"):
        lengths.add_column(col, justify="right")
    for name, ls in (("input", s.input_tokens), ("output", s.output_tokens)):
        lengths.add_row(
            name,
            f"{ls.mean:,.0f}",
            f"{ls.p50:,.0f}",
            f"{ls.p90:,.0f}",
            f"{ls.p99:,.0f}",
            f"{ls.min:,}",
            f"{ls.max:,}",
        )
    console.print(lengths)

    g = s.buckets
    grid = Table(
        title="Size buckets: requests (share) by input x output length, [lo, hi) tokens",
        title_justify="left",
    )

    def rng(edges: list[int | None], i: int) -> str:
        hi = edges[i + 1]
        return f"{edges[i]:,}-{'inf' if hi is None else f'{hi:,}'}"

    grid.add_column("input \\ output", justify="right")
    for j in range(len(g.output_edges) - 1):
        grid.add_column(rng(g.output_edges, j), justify="right")
    for i, row in enumerate(g.counts):
        grid.add_row(rng(g.input_edges, i), *(f"{c:,} ({c / s.count:.1%})" for c in row))
    console.print(grid)

    for name, hist in (("Input", s.input_histogram), ("Output", s.output_histogram)):
        console.print(f"{name} length histogram (tokens, power-of-two bins):", markup=False)
        for line in _bars([_hist_label(b) for b in hist], [b.count for b in hist]):
            console.print(line, markup=False, highlight=False)
    counts = s.diurnal.counts
    if s.diurnal.kind == "hour_of_day":
        labels = [f"{h:02d}h" for h in range(24)]
        title = "Requests by hour of day (clock as in the file)"
        if s.span_s < 86400:
            # A trace shorter than a day leaves most hours empty: show only those with data.
            keep = [h for h in range(24) if counts[h]]
            labels, counts = [labels[h] for h in keep], [counts[h] for h in keep]
            title += "; hours without requests omitted"
    else:
        labels = [f"{10 * k}-{10 * (k + 1)}%" for k in range(10)]
        title = "Requests by tenth of the span (no wall-clock times in the file)"
    console.print(title + ":", markup=False)
    for line in _bars(labels, counts):
        console.print(line, markup=False, highlight=False)


def _load(
    path: Path, fmt: str | None, mapping: str | None, model: str | None, keep_failed: bool
) -> Trace:
    from tokenfleet.workload.readers import read_trace

    return read_trace(path, format=fmt, mapping=mapping, model=model, drop_failed=not keep_failed)


def _print_prefix(file: Path, fmt: str | None, cache_tokens: str, as_json: bool) -> None:
    import json

    from tokenfleet.workload.prefix import capacity_blocks, prefix_reuse

    trace = _load(file, fmt, None, None, False)
    try:
        sizes = [int(float(x)) for x in cache_tokens.split(",") if x.strip()]
    except ValueError:
        raise TokenfleetError(f"--cache-tokens '{cache_tokens}': expected numbers of "
                              "tokens, e.g. 1000000,10000000") from None
    r = prefix_reuse(trace)
    rates = r.curve([capacity_blocks(t, r.block_tokens) for t in sizes]).tolist()
    out = {"requests": r.requests, "prompt_blocks": int(r.offsets[-1]),
           "distinct_blocks": r.distinct_blocks, "block_tokens": r.block_tokens,
           "repeated_block_fraction": r.repeated_block_fraction(),
           "unbounded_hit_rate": r.unbounded_hit_rate(),
           "hit_rate_by_cache_tokens": dict(zip(map(str, sizes), rates, strict=True))}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{trace.source}: {r.requests:,} requests, {out['prompt_blocks']:,} prompt "
               f"blocks of {r.block_tokens} tokens ({r.distinct_blocks:,} distinct)")
    typer.echo(f"repeated blocks {out['repeated_block_fraction']:.1%}; hit rate with no "
               f"eviction {out['unbounded_hit_rate']:.1%} of prompt tokens")
    for t, h in zip(sizes, rates, strict=True):
        typer.echo(f"  LRU cache of {t:>14,} tokens: {h:.1%}")


def register(app: typer.Typer) -> None:
    """Add the ``trace`` command group (``stats``, ``generate``) to ``app``."""
    trace_app = typer.Typer(no_args_is_help=True, cls=FastHelpGroup)
    app.add_typer(
        trace_app,
        name="trace",
        help=(
            "Request traces: summarise a real one (`trace stats FILE`) or generate "
            "synthetic what-if traffic (`trace generate`). Reads the Azure LLM, BurstGPT "
            "and Mooncake traces as published, and any CSV/JSONL/Parquet with --map."
        ),
    )

    @trace_app.command("stats")
    def stats_cmd(
        file: Path = typer.Argument(
            ..., help="Trace file (.csv, .jsonl, .parquet; .gz/.xz are decompressed)."
        ),
        fmt: str | None = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        mapping: str | None = typer.Option(None, "--map", help=_MAP_HELP),
        model: str | None = typer.Option(
            None, "--model", help="BurstGPT only: keep rows of this model (e.g. ChatGPT)."
        ),
        keep_failed: bool = typer.Option(
            False, "--keep-failed", help="BurstGPT only: keep failed rows (0 response tokens)."
        ),
        input_edges: str | None = typer.Option(
            None,
            "--input-edges",
            help="Input-length bucket edges in tokens, e.g. 0,512,2048,8192,inf "
            "(a request with x tokens is in [lo, hi)).",
        ),
        output_edges: str | None = typer.Option(
            None, "--output-edges", help="Output-length bucket edges, e.g. 0,128,512,inf."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    ) -> None:
        """Summarise a trace: request count, time span, mean and peak rates (busiest
        1-min and 10-min sliding windows), input/output length percentiles, size-bucket
        mix, length histograms and the daily shape.

        Example:

            tokenfleet trace stats ../shared/data/traces/azure_llm_2023_conv.csv.gz

        A CSV with other column names: --map arrival=ts,input=prompt,output=completion,unit=ms
        """
        from tokenfleet.workload.stats import trace_stats

        trace = _load(file, fmt, mapping, model, keep_failed)
        stats = trace_stats(trace, _buckets(input_edges, output_edges))
        if as_json:
            typer.echo(stats.model_dump_json(indent=2))
        else:
            _print_stats(stats, Console())

    @trace_app.command("prefix")
    def prefix_cmd(
        file: Path = typer.Argument(..., help="Trace with prefix-block hashes (Mooncake)."),
        fmt: str | None = typer.Option(None, "--format", "-f", help=_FORMAT_HELP),
        cache_tokens: str = typer.Option(
            "500000,5000000,10000000,25000000,50000000", "--cache-tokens",
            help="Cache sizes to report, in tokens of KV, comma-separated."),
        as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    ) -> None:
        """Prefix-cache reuse of a trace: the fraction of prompt tokens an LRU block cache
        of each size serves (exact, one pass over the trace), and with no eviction.

        Example:

            tokenfleet trace prefix ../shared/data/traces/mooncake_fast25_synthetic_trace.jsonl.xz
        """
        _print_prefix(file, fmt, cache_tokens, as_json)

    @trace_app.command("generate")
    def generate_cmd(
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help="Output file: .jsonl, .csv or .parquet (.csv.gz/.jsonl.gz too), with columns "
            "arrival_s, input_tokens, output_tokens: readable by `trace stats` as is.",
        ),
        kind: ArrivalKind = typer.Option(
            ArrivalKind.poisson,
            "--kind",
            help="Arrival process: poisson (memoryless, inter-arrival CV 1) or gamma "
            "(bursty: gamma gaps with CV --cv).",
        ),
        rate: float | None = typer.Option(
            None,
            "--rate",
            help="Mean requests/s before growth. Default: the --like trace's mean rate.",
        ),
        duration: float | None = typer.Option(
            None,
            "--duration",
            help="Seconds of traffic. Default: the --like trace's span.",
        ),
        cv: float | None = typer.Option(
            None,
            "--cv",
            help="gamma only: inter-arrival coefficient of variation (>1 is "
            "burstier than Poisson). Default: measured on the --like trace.",
        ),
        like: Path | None = typer.Option(
            None,
            "--like",
            help="Trace to imitate: lengths are fitted to it, and rate, "
            "duration and cv default to its values. Default lengths: the bundled 500-request "
            "Azure 2023 conversation sample.",
        ),
        like_format: str | None = typer.Option(
            None, "--like-format", help="Format of the --like file (see `trace stats --help`)."
        ),
        like_map: str | None = typer.Option(
            None, "--like-map", help="Column mapping of the --like file (as --map of stats)."
        ),
        lengths: LengthFit = typer.Option(
            LengthFit.empirical,
            "--lengths",
            help="empirical: resample real (input, output) pairs; lognormal: fit a smooth "
            "bivariate lognormal.",
        ),
        growth: float = typer.Option(
            1.0, "--growth", help="Multiply the rate, e.g. 1.5 for 50 % more traffic."
        ),
        seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same trace."),
    ) -> None:
        """Generate a synthetic trace for what-if planning.

        Poisson traffic at 20 req/s for an hour, lengths like the bundled Azure sample:

            tokenfleet trace generate --rate 20 --duration 3600 -o poisson.jsonl

        Twice today's traffic, as bursty as today's, with today's lengths:

            tokenfleet trace generate --like conv.csv.gz --kind gamma --growth 2 -o x2.parquet
        """
        from tokenfleet.workload.generate import fit_lengths, gamma_bursty, poisson
        from tokenfleet.workload.readers import read_trace, write_trace
        from tokenfleet.workload.samples import sample_path
        from tokenfleet.workload.stats import trace_stats

        ref = (
            read_trace(like, format=like_format, mapping=like_map)
            if like
            else read_trace(sample_path("azure_conv"))
        )
        dist = fit_lengths(ref, lengths.value)
        ref_stats = trace_stats(ref) if like else None
        if rate is None:
            if ref_stats is None or ref_stats.mean_rate_per_s is None:
                raise TokenfleetError("--rate is required (requests/s) unless --like is given")
            rate = ref_stats.mean_rate_per_s
        if duration is None:
            if ref_stats is None or ref_stats.span_s <= 0:
                raise TokenfleetError("--duration is required (seconds) unless --like is given")
            duration = ref_stats.span_s
        if not (math.isfinite(growth) and growth > 0):
            raise TokenfleetError(f"--growth must be > 0, got {growth}")
        if kind is ArrivalKind.poisson:
            if cv is not None:
                raise TokenfleetError("--cv applies to --kind gamma only")
            trace = poisson(rate * growth, duration, dist, seed)
        else:
            if cv is None:
                if ref_stats is None or ref_stats.interarrival_cv is None:
                    raise TokenfleetError("--kind gamma needs --cv (or --like to measure it)")
                cv = ref_stats.interarrival_cv
            trace = gamma_bursty(rate * growth, cv, duration, dist, seed)
        if trace.is_empty:
            raise TokenfleetError(
                f"no requests generated at {rate * growth:g} req/s over {duration:g} s; "
                f"raise --rate or --duration"
            )
        write_trace(trace, out)
        typer.echo(
            f"wrote {len(trace):,} requests over {trace.duration_s:,.1f} s "
            f"({len(trace) / duration:,.3f} req/s, {trace.source}) to {out}"
        )
