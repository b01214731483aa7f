"""The sweep's files: the Parquet table of every grid point and a summary page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_parquet, write_text
from tokenfleet.report.html_page import Figure, esc, figure_html, page
from tokenfleet.sim.sweep import GridSpec, results_frame


def write_sweep(rows: list[dict[str, Any]], spec: GridSpec, out: Path) -> list[Path]:
    """The Parquet table and a summary plot (``.html``) next to it."""
    df = results_frame(rows)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(out, df)
    except OSError as e:
        raise TokenfleetError(f"--out {out}: cannot write ({e.strerror})") from None
    html = out.with_suffix(".html")
    write_text(html, _plot(df, spec))
    return [out, html]


def _plot(df: pl.DataFrame, spec: GridSpec) -> str:
    from plotly.subplots import make_subplots

    ok = df.filter(pl.col("status") == "ok") if "status" in df.columns else df
    axes = list(spec.grid)
    labels = [", ".join(f"{a}={r[a]}" for a in axes) or "base" for r in ok.iter_rows(named=True)]
    tiers = sorted({c.split(".")[0] for c in ok.columns if c.endswith(".slo_attainment")})
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("SLO attainment per tier",
                                        "the point's plan, USD / month"))
    for t in tiers:
        fig.add_bar(x=labels, y=ok[f"{t}.slo_attainment"].to_list(), name=esc(t), row=1, col=1)
    # The plan's monthly bill, not the simulated window's cost: a window of minutes
    # costs dollars, which says nothing next to a plan priced per month.
    if "plan_usd_per_month" in ok.columns:
        fig.add_bar(x=labels, y=ok["plan_usd_per_month"].to_list(), name="plan $/month",
                    row=2, col=1, marker_color="#7f7f7f")
    fig.update_layout(template="plotly_white", height=640, barmode="group",
                      title={"text": "What-if sweep", "x": 0.01},
                      margin={"l": 70, "r": 20, "t": 70, "b": 160})
    f = Figure("sweep", "Each bar group is one grid point.", fig)
    failed = df.filter(pl.col("status") != "ok") if "status" in df.columns else df.head(0)
    body = (f"<h1>Sweep: {len(df)} points, {failed.height} failed</h1>"
            + figure_html(f)
            + "".join(f"<p class=\"muted\">point {r['point']}: {esc(r['error'])}</p>"
                      for r in failed.iter_rows(named=True)))
    return page("tokenfleet sweep", body, [f])
