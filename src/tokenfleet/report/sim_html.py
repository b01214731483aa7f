"""The simulation's HTML report: latency CDFs, load over time, and an outage timeline.

A self-contained page (plotly.js inlined by ``tokenfleet.report.html_page``), so it
opens without network access.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_parquet, write_text
from tokenfleet.report.html_page import Figure, esc, figure_html, page, table
from tokenfleet.sim.metrics import cdf_points

if TYPE_CHECKING:
    from tokenfleet.sim.run import SimResult

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _style(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height,
                      title={"text": esc(title), "x": 0.01, "font": {"size": 15}},
                      margin={"l": 70, "r": 20, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, hoverlabel={"namelength": -1})
    return fig


def _outage_shapes(fig: go.Figure, result: SimResult, end: float, rows: int = 1) -> None:
    for i, f in enumerate(result.record.failures):
        x1 = f.end if f.end is not None else end
        for r in range(1, rows + 1):
            fig.add_vrect(x0=f.start, x1=x1, fillcolor="#d62728", opacity=0.08,
                          line_width=0, row=r if rows > 1 else None, col=1 if rows > 1 else None,
                          annotation_text=esc(f.text) if r == 1 else None,
                          annotation_position="top left" if i % 2 == 0 else "bottom left")


def latency_cdfs(result: SimResult) -> Figure:
    rec = result.record
    fig = make_subplots(rows=1, cols=3, subplot_titles=("TTFT", "TPOT", "end-to-end"))
    for j, name in enumerate(rec.tier_names):
        row = rec.tiers.row(name)
        colour = PALETTE[j % len(PALETTE)]
        for col, metric in enumerate(("ttft", "tpot", "e2e"), start=1):
            x, y = cdf_points(rec.tiers.hist[metric][row])
            if x.size == 0:
                continue
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=esc(name),
                                     legendgroup=name, showlegend=col == 1,
                                     line={"color": colour}), row=1, col=col)
            slo = rec.tier_slo[name][0 if metric == "ttft" else 1] if metric != "e2e" else None
            if slo:
                fig.add_vline(x=slo, line_dash="dot", line_color=colour, row=1, col=col)
    fig.update_xaxes(type="log", title_text="seconds")
    fig.update_yaxes(title_text="fraction of requests", row=1, col=1, range=[0, 1.01])
    return Figure("latency-cdf", "Latency CDFs per tier (dotted: the tier's SLO).",
                  _style(fig, "Latency distributions", 420))


def load_over_time(result: SimResult, ts: pl.DataFrame) -> Figure:
    pools = ts.filter(pl.col("pool") != "fleet")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("engine utilization", "KV-cache occupancy",
                                        "waiting requests"))
    names = pools["pool"].unique(maintain_order=True).to_list()
    for j, pid in enumerate(names):
        d = pools.filter(pl.col("pool") == pid)
        colour = PALETTE[j % len(PALETTE)]
        for r, col in enumerate(("utilization", "kv_occupancy", "waiting"), start=1):
            fig.add_trace(go.Scatter(x=d["t_s"].to_numpy(), y=d[col].to_numpy(), mode="lines",
                                     name=esc(pid), legendgroup=pid, showlegend=r == 1,
                                     line={"color": colour, "width": 1.2}), row=r, col=1)
    end = float(ts["t_s"].to_numpy().max()) if ts.height else 0.0
    _outage_shapes(fig, result, end, rows=3)
    fig.update_xaxes(title_text="simulated time, s", row=3, col=1)
    return Figure("load", "Per pool, per sample interval: engine utilization (time the "
                          "engines spent running steps / time they were up; a step is "
                          "counted in the interval where it ends, so a step longer than the "
                          "interval lifts that one point above 1), KV blocks in use, and "
                          "the waiting queue. Shaded: failures.",
                  _style(fig, "Load over time", 760))


def outage_timeline(result: SimResult, ts: pl.DataFrame) -> Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("replicas up", "requests in the system"))
    pools = ts.filter(pl.col("pool") != "fleet")
    for j, pid in enumerate(pools["pool"].unique(maintain_order=True).to_list()):
        d = pools.filter(pl.col("pool") == pid)
        fig.add_trace(go.Scatter(x=d["t_s"].to_numpy(), y=d["up_replicas"].to_numpy(),
                                 mode="lines", line_shape="hv", name=esc(pid),
                                 line={"color": PALETTE[j % len(PALETTE)]}), row=1, col=1)
    fleet = ts.filter(pl.col("pool") == "fleet")
    if fleet.height:
        fig.add_trace(go.Scatter(x=fleet["t_s"].to_numpy(), y=fleet["in_system"].to_numpy(),
                                 mode="lines", name="in system", line={"color": "#333"}),
                      row=2, col=1)
    end = float(ts["t_s"].to_numpy().max()) if ts.height else 0.0
    _outage_shapes(fig, result, end, rows=2)
    fig.update_xaxes(title_text="simulated time, s", row=2, col=1)
    return Figure("outages", "Capacity and load through the shocks (shaded windows).",
                  _style(fig, "Outage timeline", 560))


def _fmt(x: float | None, scale: float = 1e3, digits: int = 0) -> str:
    return "—" if x is None else f"{x * scale:,.{digits}f}"


def _prefix_line(s) -> str:
    """Prefix-cache hit rates per tier and pool, when the traffic carried prefix hashes."""
    tiers = [f"{esc(n)} {r.prefix_cache_hit_rate:.1%}" for n, r in s.tiers.items()
             if r.prefix_cache_hit_rate is not None]
    if not tiers:
        return ""
    pools = [f"{esc(n)} {r.prefix_cache_hit_rate:.1%}" for n, r in s.pools.items()
             if r.prefix_cache_hit_rate is not None]
    return (f"<p>Prefix-cache hit rate (prompt tokens served from the lanes' LRU caches): "
            f"{', '.join(tiers)}; by pool: {', '.join(pools)}.</p>")


def render(result: SimResult, ts: pl.DataFrame) -> str:
    s = result.summary
    tiers = table(
        [("tier", False), ("requests", True), ("completed", True), ("rejected", True),
         ("retried", True), ("TTFT p50 / p90 / p99, ms", True),
         ("TPOT p50 / p90 / p99, ms", True), ("SLO TTFT / TPOT, ms", True),
         ("SLO met", True)],
        [[esc(n), f"{r.requests:,}", f"{r.completed:,}", f"{r.rejected:,}",
          f"{r.retried:,}",
          " / ".join(_fmt(x) for x in (r.ttft_s.p50, r.ttft_s.p90, r.ttft_s.p99)),
          " / ".join(_fmt(x, digits=1) for x in (r.tpot_s.p50, r.tpot_s.p90, r.tpot_s.p99)),
          f"{_fmt(r.slo_ttft_s)} / {_fmt(r.slo_tpot_s)}",
          "—" if r.slo_attainment is None else f"{r.slo_attainment:.1%}"]
         for n, r in s.tiers.items()])
    pools = table(
        [("pool", False), ("replicas", True), ("requests", True), ("moved away", True),
         ("utilization", True), ("KV mean / max", True), ("preemptions", True),
         ("cost, $", True), ("energy, kWh", True)],
        [[esc(n), str(r.replicas), f"{r.requests:,}", f"{r.moved_away:,}",
          "—" if r.utilization is None else f"{r.utilization:.0%}",
          f"{_fmt(r.kv_occupancy_mean, 100)}% / {_fmt(r.kv_occupancy_max, 100)}%",
          f"{r.preemptions:,}", f"{r.cost_usd:,.2f}", f"{r.energy_kwh:,.1f}"]
         for n, r in s.pools.items()])
    reasons = ", ".join(f"{esc(k)}: {v:,}" for k, v in s.rejected_by_reason.items()) or "none"
    lit = s.checks.littles_law
    body = (
        f"<h1>Simulation: {esc(s.source)}</h1>"
        f"<p>{s.requests:,} requests, {s.completed:,} completed, {s.retried:,} retried after "
        f"a failure, {s.rejected:,} rejected ({reasons}). Policy {esc(s.policy)}, seed "
        f"{s.seed}. Shocks: {esc(', '.join(s.shocks) or 'none')}. Cost ${s.cost_usd:,.2f}, "
        f"{s.energy_kwh:,.1f} kWh at TDP over {s.sim_duration_s:,.0f} simulated seconds.</p>"
        f"<p>Checks: conservation {'holds' if s.checks.conservation_ok else 'FAILED'}; "
        f"Little's law L = {lit.in_system_mean:.2f} vs λW = "
        f"{lit.arrival_rate_per_s * lit.sojourn_mean_s:.2f} ({lit.relative_error:.1%}).</p>"
        f"<h2>Tiers</h2>{tiers}{_prefix_line(s)}<h2>Pools</h2>{pools}"
        "<p class=\"muted\">Utilization: the share of the run the pool's engines spent "
        "running batches (busy time / up time, over the whole run; 100 % = never idle). "
        "It measures how often an engine works, not how full its batches are: KV mean / "
        "max shows that.</p>"
    )
    figs = [latency_cdfs(result), load_over_time(result, ts), outage_timeline(result, ts)]
    body += "".join(figure_html(f) for f in figs)
    return page(f"tokenfleet simulation — {s.source}", body, figs)


def write_report(result: SimResult, path: Path, ts: pl.DataFrame | None = None) -> Path:
    ts = ts if ts is not None else result.timeseries()
    write_text(path, render(result, ts))
    return path


def write_simulation(result: SimResult, out_dir: str | Path, html: bool = True
                     ) -> dict[str, Path]:
    """``summary.json``, ``timeseries.parquet`` and ``report.html`` in ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TokenfleetError(f"--out {out}: cannot create directory ({e.strerror})"
                              ) from None
    paths = {"summary": out / "summary.json", "timeseries": out / "timeseries.parquet"}
    write_text(paths["summary"], result.summary.model_dump_json(indent=2))
    ts = result.timeseries()
    write_parquet(paths["timeseries"], ts)
    if html:
        paths["report"] = write_report(result, out / "report.html", ts)
    return paths
