"""The plan report's trade-off charts: the cost–assurance frontier and the sensitivity of
the bill to prices, traffic growth and the estimates' uncertainty. Both draw
``plan.tradeoffs`` (tokenfleet.plan.tradeoffs, solved with the plan); a plan without it
(an older plan.json, or one planned with --no-baselines) gets neither chart."""

from __future__ import annotations

import plotly.graph_objects as go

from tokenfleet.plan.schema import Plan
from tokenfleet.plan.tradeoffs import Tradeoffs
from tokenfleet.report.html_page import Figure
from tokenfleet.report.plan_figures import PLAN_COLOUR, _layout, _t

LIST_COLOUR = "#E69F00"
STAR_COLOUR = "#D55E00"
INPUT_NAMES = {"price": "chip prices", "growth": "traffic", "uncertainty": "uncertainty bands"}


def frontier_fig(t: Tradeoffs) -> Figure:
    pts = [p for p in t.frontier if p.usd_per_month is not None]
    fig = go.Figure()
    y = [p.worst_tier_holds for p in pts]
    labels = [f"q={p.confidence:g}" for p in pts]
    fig.add_scatter(x=[p.fleet_usd_per_month for p in pts], y=y, mode="lines+markers+text",
                    name="chips at list price", text=labels, textposition="middle right",
                    marker={"color": LIST_COLOUR, "size": 8}, line={"color": LIST_COLOUR},
                    customdata=[_t(p.worst_tier or "") for p in pts],
                    hovertemplate="%{text}: $%{x:,.0f}/month at list; worst tier "
                                  "%{customdata} holds with %{y:.1%}<extra></extra>")
    fig.add_scatter(x=[p.usd_per_month for p in pts], y=y, mode="markers",
                    name="bill (efficient: filled)",
                    marker={"color": [PLAN_COLOUR if p.efficient else "white" for p in pts],
                            "line": {"color": PLAN_COLOUR, "width": 2}, "size": 10},
                    text=labels, hovertemplate="%{text}: bill $%{x:,.0f}/month, %{y:.1%}"
                                               "<extra></extra>")
    own = [p for p in pts if t.confidence is not None and abs(p.confidence - t.confidence)
           < 1e-9]
    if own:
        fig.add_scatter(x=[own[0].usd_per_month], y=[own[0].worst_tier_holds], mode="markers",
                        name="this plan", marker={"symbol": "star", "size": 16,
                                                  "color": STAR_COLOUR},
                        hovertemplate="this plan: $%{x:,.0f}/month<extra></extra>")
    _layout(fig, "Cost vs assurance (re-solved per confidence)", "worst tier holds at peak",
            barmode=None, height=420)
    fig.update_xaxes(title_text="USD / month", tickprefix="$", tickformat="~s")
    fig.update_yaxes(tickformat=".0%")
    infeasible = [f"{p.confidence:g}" for p in t.frontier if p.usd_per_month is None]
    return Figure("fig-frontier", "The plan re-solved with each pool counted at the q lower "
                  "quantile of its capacity estimate: the bill (blue; filled where no other q "
                  "is cheaper and at least as sure), the chips at list price (orange), and the "
                  "chance the worst tier's pools all cover its planned peak (one model error "
                  "per chip family)." + (f" Infeasible at q = {', '.join(infeasible)}."
                                         if infeasible else ""), fig)


def sensitivity_fig(t: Tradeoffs) -> Figure:
    rows = list(reversed(t.sensitivity))  # Plotly draws the first category at the bottom
    names = [f"{INPUT_NAMES.get(p.input, _t(p.input))} ×{p.factor:g}" for p in rows]
    fig = go.Figure()
    fig.add_bar(y=names, x=[p.usd_per_month for p in rows], orientation="h", name="bill",
                marker_color=PLAN_COLOUR,
                customdata=[("" if p.change is None else f"{p.change:+.1%}") for p in rows],
                hovertemplate="%{y}: bill $%{x:,.0f}/month (%{customdata})<extra></extra>")
    fig.add_bar(y=names, x=[p.fleet_usd_per_month for p in rows], orientation="h",
                name="chips at list price", marker_color=LIST_COLOUR,
                hovertemplate="%{y}: $%{x:,.0f}/month at list<extra></extra>")
    for x, colour, what in ((t.base_usd_per_month, PLAN_COLOUR, "plan's bill"),
                            (t.base_fleet_usd_per_month, LIST_COLOUR, "plan at list")):
        fig.add_scatter(x=[x, x], y=[names[0], names[-1]], mode="lines", name=what,
                        line={"color": colour, "dash": "dash", "width": 1}, hoverinfo="skip")
    _layout(fig, "Sensitivity of the monthly bill", "", barmode="group", height=440)
    # four legend entries wrap to two lines: below the plot, clear of the title
    fig.update_layout(legend={"y": -0.18, "yanchor": "top"},
                      margin={"l": 70, "r": 20, "t": 50, "b": 100})
    fig.update_xaxes(title_text="USD / month", tickprefix="$", tickformat="~s")
    missing = [n for n, p in zip(names, rows, strict=True) if p.usd_per_month is None]
    return Figure("fig-sensitivity", "The plan re-solved with one input moved: every chip's "
                  "list price, every tier's traffic, or every estimate's uncertainty band "
                  "(wider bands count on less capacity), times the factor shown. Dashed: the "
                  "plan as solved. Commitments and prepaid blocks stay as signed, so a bill at "
                  "a contract's minimum does not move while the chips it pays for do."
                  + (f" No feasible plan: {', '.join(missing)}." if missing else ""), fig)


def tradeoff_figures(plan: Plan) -> list[Figure]:
    t = plan.tradeoffs
    if t is None:
        return []
    figs = [sensitivity_fig(t)]
    if any(p.usd_per_month is not None for p in t.frontier):
        figs.insert(0, frontier_fig(t))
    return figs
