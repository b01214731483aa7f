"""The sweep's files: the Parquet table of every grid point and a summary page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_parquet, write_text
from tokenfleet.report.html_page import Figure, esc, figure_html, page
from tokenfleet.sim.sweep import GridSpec, results_frame
from tokenfleet.sim.sweep_facets import SweepFacets, sweep_facets

PANEL_HEIGHT_PX = 230
MAX_FACET_COLS = 4
COST_COLOUR = "#7f7f7f"
LIST_COLOUR = "#E69F00"
OK_COLOUR = "#009E73"
MISS_COLOUR = "#D55E00"


def write_sweep(rows: list[dict[str, Any]], spec: GridSpec, out: Path) -> list[Path]:
    """The Parquet table and a summary plot (``.html``) next to it."""
    df = results_frame(rows)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(out, df)
    except OSError as e:
        raise TokenfleetError(f"--out {out}: cannot write ({e.strerror})") from None
    html = out.with_suffix(".html")
    write_text(html, _plot(df, spec, sweep_facets(rows, list(spec.grid))))
    return [out, html]


def _short(axis: str | None) -> str:
    return "" if axis is None else axis.removeprefix("set:")


def facet_figure(fx: SweepFacets) -> Figure:
    """Plan $/month (bars, left axis) and the worst tier's SLO attainment (dots, right
    axis; green at or above the target, orange below) per x value, one panel per
    (row, column) value pair, with the SLO target as a dashed line on every panel."""
    from plotly.subplots import make_subplots

    n_rows, n_cols = len(fx.rows), min(len(fx.cols), MAX_FACET_COLS)
    cols = fx.cols[:n_cols]
    titles = [", ".join(p for p in (f"{_short(fx.row_axis)}={r}" if fx.row_axis else "",
                                    f"{_short(fx.col_axis)}={c}" if fx.col_axis else "")
                        if p) or "all points" for r in fx.rows for c in cols]
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[esc(s) for s in titles],
                        specs=[[{"secondary_y": True}] * n_cols] * n_rows,
                        # ~70 px between panel rows for their titles and x labels
                        horizontal_spacing=0.09, vertical_spacing=0.3 / max(n_rows, 1))
    for i, r in enumerate(fx.rows, start=1):
        for j, c in enumerate(cols, start=1):
            cells = fx.cell(r, c)
            x = [esc(k.x) for k in cells]
            first = i == 1 and j == 1
            fig.add_bar(x=x, y=[k.plan_usd_per_month for k in cells], name="plan $/month",
                        marker_color=COST_COLOUR, showlegend=first, legendgroup="cost",
                        hovertemplate="%{x}: $%{y:,.0f}/month<extra></extra>",
                        row=i, col=j, secondary_y=False)
            if any(k.fleet_usd_per_month is not None for k in cells):
                fig.add_bar(x=x, y=[k.fleet_usd_per_month for k in cells],
                            name="its chips at list price", marker_color=LIST_COLOUR,
                            showlegend=first, legendgroup="fleet",
                            hovertemplate="%{x}: $%{y:,.0f}/month at list<extra></extra>",
                            row=i, col=j, secondary_y=False)
            colours = [MISS_COLOUR if k.meets_slo is False else OK_COLOUR for k in cells]
            fig.add_scatter(x=x, y=[k.worst_attainment for k in cells], mode="markers+lines",
                            name="worst tier's SLO attainment", showlegend=first,
                            legendgroup="att", marker={"color": colours, "size": 9},
                            line={"color": "#56B4E9", "width": 1},
                            customdata=[esc(k.worst_tier or "") for k in cells],
                            hovertemplate="%{x}: %{y:.2%} (tier %{customdata})<extra></extra>",
                            row=i, col=j, secondary_y=True)
            if fx.slo_target is not None:
                fig.add_scatter(x=x, y=[fx.slo_target] * len(x), mode="lines",
                                name=f"SLO target {fx.slo_target:.0%}", showlegend=first,
                                legendgroup="slo", line={"color": MISS_COLOUR, "dash": "dash"},
                                hoverinfo="skip", row=i, col=j, secondary_y=True)
            fig.update_yaxes(tickprefix="$", tickformat="~s", row=i, col=j,
                             secondary_y=False, title_text="plan $/mo" if j == 1 else None)
            fig.update_yaxes(tickformat=".0%", row=i, col=j, secondary_y=True,
                             range=[max(0.0, min([*(k.worst_attainment or 1.0 for k in cells),
                                                  fx.slo_target or 1.0]) - 0.02), 1.004],
                             title_text="attainment" if j == n_cols else None)
    fig.update_xaxes(title_text=esc(_short(fx.x_axis)), row=n_rows)
    fig.update_layout(template="plotly_white", height=PANEL_HEIGHT_PX * n_rows + 150,
                      barmode="group",
                      title={"text": "Plan $/month and SLO attainment, faceted", "x": 0.01},
                      legend={"orientation": "h", "y": 1.06, "yanchor": "bottom", "x": 0.0},
                      margin={"l": 80, "r": 80, "t": 110, "b": 60})
    fig.update_annotations(font_size=12)
    dropped = fx.cols[n_cols:]
    caption = (f"Rows: {_short(fx.row_axis) or '-'}; columns: {_short(fx.col_axis) or '-'}; "
               f"x: {_short(fx.x_axis) or '-'}. Bars: the point's plan, USD per month (grey: the "
               "bill; orange: its chips at list price, which move while a bill sits at a "
               "commitment's minimum); dots: the lowest SLO attainment of any tier, orange "
               "where that tier misses its own target (its SLO percentile); dashed: the "
               "strictest tier's target.")
    if fx.folded_axes:
        caption += (f" Each panel keeps the worst over {', '.join(fx.folded_axes)} (highest "
                    "cost, lowest attainment).")
    if dropped:
        caption += f" Columns not drawn: {', '.join(dropped)}."
    return Figure("sweep-facets", caption, fig)


def _plot(df: pl.DataFrame, spec: GridSpec, facets: SweepFacets) -> str:
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
    figs = [f]
    if facets.cells and "plan_usd_per_month" in ok.columns:
        figs.insert(0, facet_figure(facets))
    failed = df.filter(pl.col("status") != "ok") if "status" in df.columns else df.head(0)
    body = (f"<h1>Sweep: {len(df)} points, {failed.height} failed</h1>"
            + "".join(figure_html(g) for g in figs)
            + "".join(f"<p class=\"muted\">point {r['point']}: {esc(r['error'])}</p>"
                      for r in failed.iter_rows(named=True)))
    return page("tokenfleet sweep", body, figs)
