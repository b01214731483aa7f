"""The plan report's Plotly figures.

Every text that comes from the plan (names of tiers, pools, vendors ...) is
HTML-escaped before it reaches Plotly, because Plotly renders a subset of HTML in
labels, legends and hover text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from tokenfleet.plan.check import power_vs_cap
from tokenfleet.plan.milp import POLICY_FAMILIES
from tokenfleet.plan.schema import Plan
from tokenfleet.report.html_page import Figure
from tokenfleet.report.plan_metrics import (
    chips_by_region,
    monthly_by,
    spend_by_cloud,
    usd_per_million_tokens,
)

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000", "#999999")
PLAN_COLOUR = "#2f5d8a"
MUTED = "#9aa5b1"


def _t(value: object) -> str:
    """Plan text as a Plotly label."""
    return html.escape(str(value), quote=False)


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


# Plotly's default-looking white style, spelled out: naming "plotly_white" makes Plotly
# validate and deep-copy the whole template into every figure (~0.1 s each, most of
# the report's time), while these few keys are all this report relies on.
TEMPLATE = {"layout": {
    "paper_bgcolor": "white", "plot_bgcolor": "white", "font": {"color": "#2a3f5f"},
    "xaxis": {"gridcolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "automargin": True},
    "yaxis": {"gridcolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "automargin": True},
    "hovermode": "closest"}}


def _layout(fig: go.Figure, title: str, y_title: str, *, height: int = 380,
            barmode: str | None = "stack") -> go.Figure:
    fig.update_layout(
        template=TEMPLATE, height=height, barmode=barmode,
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        margin={"l": 70, "r": 20, "t": 70, "b": 60},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0.0},
        yaxis={"title": {"text": y_title}}, font={"size": 12},
        hoverlabel={"namelength": -1})
    return fig


def cost_by_vendor(plan: Plan, tiers: Sequence[str]) -> Figure:
    data = monthly_by(plan, "vendor")
    vendors = list(data)
    colours = _colours(tiers)
    fig = go.Figure()
    for tier in tiers:
        fig.add_bar(name=_t(tier), x=[_t(v) for v in vendors],
                    y=[data[v].get(tier, 0.0) for v in vendors], marker_color=colours[tier],
                    hovertemplate="%{x}, tier %{fullData.name}: $%{y:,.0f}/month<extra></extra>")
    _layout(fig, "List value by vendor and tier", "USD / month")
    fig.update_yaxes(tickprefix="$", tickformat="~s")
    return Figure("fig-cost-vendor", "Chip-hours at list price per vendor, stacked by tier, "
                  "USD per month (before commitments are netted off).", fig)


def cost_by_cloud(plan: Plan) -> Figure:
    rows = spend_by_cloud(plan)
    x = [_t(r.cloud) for r in rows]
    fig = go.Figure()
    for name, values, colour in (
            ("committed, used", [r.committed_used_usd_per_month for r in rows], "#2f5d8a"),
            ("on-demand", [r.on_demand_usd_per_month for r in rows], "#E69F00"),
            ("committed, unused (paid anyway)", [r.committed_unused_usd_per_month for r in rows],
             "#D55E00")):
        fig.add_bar(name=name, x=x, y=values, marker_color=colour,
                    hovertemplate="%{x}, %{fullData.name}: $%{y:,.0f}/month<extra></extra>")
    _layout(fig, "Bill by cloud: committed vs on-demand", "USD / month")
    fig.update_yaxes(tickprefix="$", tickformat="~s")
    return Figure("fig-cost-cloud", "What each cloud adds to the monthly bill, USD per month: "
                  "usage covered by a commitment, usage beyond it, and commitment left unused.",
                  fig)


def chips_by_region_fig(plan: Plan) -> Figure:
    data = chips_by_region(plan)
    regions = list(data)
    accels = sorted({a for v in data.values() for a in v})
    colours = _colours(accels)
    fig = go.Figure()
    for a in accels:
        fig.add_bar(name=_t(a), x=[_t(r) for r in regions],
                    y=[data[r].get(a, 0) for r in regions], marker_color=colours[a],
                    hovertemplate="%{x}: %{y:,} %{fullData.name} chips<extra></extra>")
    _layout(fig, "Chips by region and chip type", "chips")
    return Figure("fig-chips", "Accelerator chips in the plan per region, stacked by chip "
                  "type (count of chips, not servers).", fig)


def power_fig(plan: Plan) -> Figure:
    rows = power_vs_cap(plan)
    x = [_t(r) for r, _, _ in rows]
    used = [u for _, u, _ in rows]
    caps = [c for _, _, c in rows]
    fig = go.Figure()
    fig.add_bar(name="used (MW at TDP)", x=x, y=used, marker_color=PLAN_COLOUR,
                text=[f"{u:.3g} MW" for u in used], textposition="outside",
                hovertemplate="%{x}: %{y:.3f} MW at TDP<extra></extra>")
    fig.add_bar(name="cap (MW)", x=x, y=[c if c is not None else 0.0 for c in caps],
                marker_color=MUTED,
                text=[f"cap {c:g} MW" if c is not None else "no cap" for c in caps],
                textposition="outside", hovertemplate="%{x}: cap %{y:.3f} MW<extra></extra>")
    _layout(fig, "Power per region vs its cap", "MW", barmode="group")
    top = max([*used, *[c for c in caps if c is not None], 1e-3])
    fig.update_yaxes(range=[0, top * 1.18])  # room for the labels above the bars
    return Figure("fig-power", "Power of the planned chips at TDP per region against the "
                  "scenario's cap, megawatts (chips only: no cooling or host overhead).", fig)


def token_cost_fig(plan: Plan, tiers: Sequence[str]) -> Figure:
    rows = usd_per_million_tokens(plan)
    colours = _colours(tiers)
    fig = go.Figure()
    for tier in tiers:
        mine = [r for r in rows if r.tier == tier]
        if not mine:
            continue
        fig.add_bar(
            name=_t(tier), x=[_t(r.accelerator) for r in mine],
            y=[r.usd_per_m_tokens for r in mine], marker_color=colours[tier],
            error_y={"type": "data", "symmetric": False, "array": [0.0] * len(mine),
                     "arrayminus": [max(r.usd_per_m_tokens - r.usd_per_m_tokens_point, 0.0)
                                    for r in mine]},
            customdata=[[r.usd_per_m_tokens_point, r.coverage * 100,
                         _t(", ".join(r.pools))] for r in mine],
            hovertemplate=("tier %{fullData.name} on %{x}: $%{y:.3f} per M output tokens "
                           "(derated), $%{customdata[0]:.3f} at the point estimate; "
                           "%{customdata[1]:.0f}% of the mix servable<br>%{customdata[2]}"
                           "<extra></extra>"))
    _layout(fig, "$ per million output tokens, by chip and tier", "USD / M output tokens",
            barmode="group")
    values = [r.usd_per_m_tokens for r in rows if r.usd_per_m_tokens > 0]
    if values and max(values) / min(values) > 30:
        # tiers differ by orders of magnitude; label decades only
        fig.update_yaxes(type="log", dtick=1, tickprefix="$")
    return Figure("fig-token-cost", "Pool price per hour over the output tokens per second the "
                  "pools sustain at the SLO on their tier's request mix, USD per million output "
                  "tokens. Bars: derated capacity (what the plan counts on); whiskers down to the "
                  "point estimate.", fig)


def constraints_fig(plan: Plan) -> Figure:
    priced = [c for c in plan.constraints if c.marginal_usd_per_month is not None]
    # Caps that bind nothing and cost nothing would crowd out the ones that matter;
    # the policy families always show, so "$0" for a policy is visible too.
    shown = [c for c in priced if c.binding or (c.marginal_usd_per_month or 0.0) > 0.5
             or c.name in POLICY_FAMILIES]
    if not shown:
        shown = priced
    shown.sort(key=lambda c: (c.marginal_usd_per_month or 0.0, c.name))
    fig = go.Figure()
    fig.add_bar(orientation="h", y=[_t(c.name) for c in shown],
                x=[c.marginal_usd_per_month for c in shown],
                marker_color=["#D55E00" if c.binding else MUTED for c in shown],
                customdata=["binding" if c.binding else "not binding" for c in shown],
                text=[f"${c.marginal_usd_per_month:,.0f}" for c in shown],
                textposition="auto",
                hovertemplate="%{y} (%{customdata}): saves $%{x:,.0f}/month if dropped"
                              "<extra></extra>")
    height = max(300, 110 + 26 * len(shown))
    _layout(fig, "What each constraint costs", "", height=height, barmode=None)
    fig.update_xaxes(title={"text": "USD / month saved if dropped"}, tickprefix="$",
                     tickformat="~s", rangemode="tozero")
    fig.update_layout(margin={"l": 230}, showlegend=False)
    hidden = len(priced) - len(shown)
    unpriced = len(plan.constraints) - len(priced)
    return Figure("fig-constraints", "Monthly saving if the constraint were removed and the plan "
                  "re-solved, USD per month; orange = binding. Savings within the solver's "
                  "optimality gap are reported as $0."
                  + (f" {hidden} non-binding cap(s) that save $0 are left out." if hidden else "")
                  + (f" {unpriced} constraint(s) not priced." if unpriced else "")
                  + " All are in the constraints table.", fig)


def baselines_fig(plan: Plan) -> Figure:
    names = ["this plan"] + [_t(b.name) for b in plan.baselines]
    values = [plan.cost.usd_per_month] + [b.usd_per_month or 0.0 for b in plan.baselines]
    feasible = [True] + [b.feasible and b.usd_per_month is not None for b in plan.baselines]
    me = plan.cost.usd_per_month
    labels = [f"${v:,.0f}" + ("" if i == 0 or not me else f" ({v / me - 1:+.1%})")
              if ok else "infeasible" for i, (v, ok) in enumerate(zip(values, feasible,
                                                                       strict=True))]
    fig = go.Figure()
    # reversed so that "this plan" is the top bar
    fig.add_bar(orientation="h", y=names[::-1], x=values[::-1],
                marker_color=([PLAN_COLOUR] + [MUTED] * len(plan.baselines))[::-1],
                text=labels[::-1], textposition="auto",
                hovertemplate="%{y}: $%{x:,.0f}/month<extra></extra>")
    _layout(fig, "This plan vs reference fleets", "", barmode=None,
            height=max(300, 130 + 40 * len(names)))
    fig.update_xaxes(title={"text": "USD / month"}, tickprefix="$", tickformat="~s",
                     rangemode="tozero")
    fig.update_layout(showlegend=False, margin={"l": 230})
    return Figure("fig-baselines", "Monthly bill of this plan and of reference fleets solved "
                  "without the policy constraints (vendor-share cap, N-1), USD per month; in "
                  "brackets the difference to this plan.", fig)


def vendor_share_fig(plan: Plan) -> Figure:
    """Each vendor's share as the policy counts it (against the cap), and by spend, by
    chips and by tokens: a vendor can hold a small share of traffic and a large one of
    the bill (standby pools for N-1, dear chips)."""
    from tokenfleet.plan.economics import plan_economics

    econ = plan.economics or plan_economics(plan)
    vendors = sorted(set(plan.vendor_share) | set(econ.vendor_share))
    basis = plan.limits.vendor_share_basis
    series = [(f"as the cap counts it ({basis})", [plan.vendor_share.get(v) for v in vendors],
               PLAN_COLOUR)]
    for key, label, colour in (("spend", "of spend", "#E69F00"), ("chips", "of chips", "#009E73"),
                               ("tokens", "of tokens at peak", "#56B4E9")):
        series.append((label, [getattr(econ.vendor_share[v], key)
                               if v in econ.vendor_share else None for v in vendors], colour))
    fig = go.Figure()
    for label, vals, colour in series:
        fig.add_bar(x=[_t(v) for v in vendors], y=[None if x is None else x * 100 for x in vals],
                    name=_t(label), marker_color=colour,
                    hovertemplate="%{x}: %{y:.1f}% " + _t(label) + "<extra></extra>")
    _layout(fig, "Vendor share", "% of the fleet", barmode="group")
    cap = plan.limits.max_vendor_share
    if cap is not None:
        fig.add_hline(y=float(cap) * 100, line_dash="dash", line_color="#D55E00",
                      annotation_text=f"cap {float(cap):.0%}", annotation_position="top left")
    fig.update_yaxes(range=[0, 105], ticksuffix="%")
    return Figure("fig-vendor-share", "Share per chip vendor, percent: as the scenario's "
                  "vendor-share cap counts it (dashed line: the cap), and of the fleet's spend "
                  "(list prices), chips and input + output tokens at peak.", fig)


def tokens_per_usd_fig(plan: Plan) -> Figure:
    """Input + output tokens per dollar per chip type, at peak (a standby pool's chips
    are paid for and serve nothing, so they lower their chip's figure)."""
    from tokenfleet.plan.economics import pool_tokens_per_s

    tok = pool_tokens_per_s(plan)
    per_chip: dict[str, list[float]] = {}
    for u in plan.units:
        acc = per_chip.setdefault(u.accelerator, [0.0, 0.0])
        acc[0] += tok.get(u.pool, 0.0) * 3600.0
        acc[1] += u.usd_per_hour
    chips = sorted(per_chip, key=lambda c: -(per_chip[c][0] / per_chip[c][1]
                                             if per_chip[c][1] else 0.0))
    vals = [per_chip[c][0] / per_chip[c][1] / 1e6 if per_chip[c][1] else None for c in chips]
    fig = go.Figure()
    fig.add_bar(x=[_t(c) for c in chips], y=vals, marker_color=PLAN_COLOUR,
                text=[f"{v:,.2f}" if v is not None else "" for v in vals],
                textposition="outside",
                hovertemplate="%{x}: %{y:.2f} M tokens per $<extra></extra>")
    _layout(fig, "Tokens per dollar by chip", "M tokens per $ (log)", barmode=None)
    fig.update_yaxes(type="log")
    fig.update_layout(showlegend=False)
    return Figure("fig-tokens-per-usd", "Input + output tokens served at peak per dollar of "
                  "the chip's pools (list prices), millions, all tiers together: the chips the "
                  "plan leans on for cheap work stand out.", fig)


def plan_figures(plan: Plan) -> list[Figure]:
    """Every figure of the report, in page order."""
    tiers = [t.name for t in plan.tiers]
    # tiers that only appear on units (a hand-made plan) still get a colour
    tiers += sorted({u.tier for u in plan.units} - set(tiers))
    figs = [cost_by_vendor(plan, tiers), cost_by_cloud(plan), chips_by_region_fig(plan),
            power_fig(plan), token_cost_fig(plan, tiers), vendor_share_fig(plan),
            tokens_per_usd_fig(plan), constraints_fig(plan)]
    figs.append(baselines_fig(plan))
    from tokenfleet.report.plan_charts import tradeoff_figures  # it imports this module

    figs += tradeoff_figures(plan)
    return figs
