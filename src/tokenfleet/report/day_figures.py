"""The plan report's day section (`plan --over-day`): capacity against demand over the
day per tier, the cost of each layer per hour, and what the simulated day measured."""

from __future__ import annotations

import plotly.graph_objects as go

from tokenfleet.plan.day_schema import LAYERS, DayPlan
from tokenfleet.plan.schema import Plan
from tokenfleet.report.html_page import Figure, esc, table
from tokenfleet.report.plan_figures import PALETTE, _layout, _t

LAYER_COLOURS = {"reserved": "#0072B2", "committed": "#56B4E9", "on_demand": "#E69F00",
                 "spot": "#009E73"}


def capacity_fig(day: DayPlan) -> Figure:
    x = [p.start for p in day.periods]
    fig = go.Figure()
    tiers = list(day.periods[0].demand_requests_per_s) if day.periods else []
    for i, t in enumerate(tiers):
        c = PALETTE[i % len(PALETTE)]
        fig.add_scatter(x=x, y=[p.demand_requests_per_s.get(t, 0.0) for p in day.periods],
                        name=_t(f"{t} demand"), line={"color": c, "dash": "dot"},
                        line_shape="hv",
                        hovertemplate="%{x}: %{y:,.1f} req/s<extra>%{fullData.name}</extra>")
        fig.add_scatter(x=x, y=[p.capacity_requests_per_s.get(t, 0.0) for p in day.periods],
                        name=_t(f"{t} capacity"), line={"color": c}, line_shape="hv",
                        hovertemplate="%{x}: %{y:,.1f} req/s<extra>%{fullData.name}</extra>")
    _layout(fig, "Capacity against demand over the day", "requests / s", barmode=None)
    fig.update_yaxes(type="log")
    return Figure("fig-day-capacity", "Per tier: demand in each period (peak-hour demand "
                  "with headroom times the day profile, dotted) and the capacity its pools "
                  "hold at the tier's size mix (solid; spot counted at 1 − its interruption "
                  "rate). Log scale: tiers differ by orders of magnitude.", fig)


def layer_cost_fig(day: DayPlan) -> Figure:
    x = [p.start for p in day.periods]
    fig = go.Figure()
    for k in LAYERS:
        y = [p.usd_per_hour.get(k, 0.0) for p in day.periods]
        if any(y):
            fig.add_bar(name=k.replace("_", "-"), x=x, y=y, marker_color=LAYER_COLOURS[k],
                        hovertemplate="%{x}: $%{y:,.0f}/h<extra>%{fullData.name}</extra>")
    # the month is usd_per_month / usd_per_day days of 24 h
    peak_h = (day.peak_plan_usd_per_month * day.usd_per_day / (24.0 * day.usd_per_month)
              if day.usd_per_month else 0.0)
    fig.add_scatter(x=x, y=[peak_h] * len(x), name="peak-hour plan, held all day",
                    mode="lines", line={"color": "#000000", "dash": "dash"},
                    hovertemplate="$%{y:,.0f}/h<extra>peak-hour plan</extra>")
    _layout(fig, "Cost of each layer over the day", "USD / hour")
    fig.update_yaxes(tickprefix="$", tickformat="~s")
    return Figure("fig-day-layers", "Spend per hour of each layer at list price (committed: "
                  "drawn from the commitment), stacked, against the peak-hour plan's bill "
                  "per hour (dashed).", fig)


def day_figures(plan: Plan) -> list[Figure]:
    return [] if plan.day is None else [capacity_fig(plan.day), layer_cost_fig(plan.day)]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def day_section(plan: Plan) -> str:
    """The day plan's summary and its simulated day, as HTML (empty without one)."""
    d = plan.day
    if d is None:
        return ""
    rows = [[esc(k.replace("_", "-")), f"${v:,.0f}"] for k, v in d.layer_usd_per_day.items()
            if v]
    head = (f"<p>Day plan <b>${d.usd_per_month:,.0f}/month</b> (${d.usd_per_day:,.0f}/day) "
            f"against the peak-hour plan held all day, ${d.peak_plan_usd_per_month:,.0f}/"
            f"month: saves ${d.saving_usd_per_month:,.0f}/month. Solver: "
            f"{esc(d.solver_status)} in {d.seconds:.1f} s.</p>"
            f"<p class=\"muted\">Spot rule: {esc(d.spot_rule)}. "
            + " ".join(f"Assumption: {esc(a)}." for a in d.assumptions)
            + (f" Solved without: {esc(', '.join(d.drops))}." if d.drops else "") + "</p>")
    out = head + table([("layer", False), ("list spend per day", True)], rows)
    s = d.simulation
    if s is not None:
        sim_rows = [[esc(p.start), esc(p.why), str(p.spot_replicas), str(p.spot_lost),
                     esc(c.tier), f"{c.requests:,}",
                     f"{_pct(c.ttft_attainment)} (≥ {c.target_ttft:.0%})",
                     f"{_pct(c.tpot_attainment)} (≥ {c.target_tpot:.0%})",
                     "yes" if c.met else "NO"]
                    for p in s.periods for c in p.tiers]
        out += (f"<h3>Simulated day: {'every SLO met' if s.met else 'SLO missed'}</h3>"
                + table([("from", False), ("why", False), ("spot replicas", True),
                         ("reclaimed", True), ("tier", False), ("requests", True),
                         ("within TTFT", True), ("within TPOT", True), ("met", False)],
                        sim_rows)
                + f"<p class=\"muted\">{esc(s.method)}. Reproduce: "
                  f"<code>{esc(s.reproduce)}</code></p>")
    return f"<section id=\"day\"><h2>Over the day</h2>{out}</section>"
