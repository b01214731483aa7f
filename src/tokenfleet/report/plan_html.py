"""The plan report: one self-contained HTML file that explains a plan.json.

Sections: summary (bill, solver, trust), plots (spend, chips, power, $ per token,
vendor share, constraint prices, baselines), tables (tiers, pools, traffic split,
constraints, baselines, limits, solver), the report's own consistency checks, and the
plan's notes. Every number carries its unit; every estimate shows its provenance and
uncertainty band. All text from the plan is HTML-escaped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tokenfleet.fileio import write_text
from tokenfleet.plan.check import Finding, check_plan, pool_load
from tokenfleet.plan.economics import PlanEconomics
from tokenfleet.plan.schema import Plan, PlanUnit
from tokenfleet.report.day_figures import day_figures, day_section
from tokenfleet.report.html_page import esc, figure_html, page, table
from tokenfleet.report.plan_figures import plan_figures

PROVENANCE_CLASSES = {"calibrated", "extrapolated", "spec-sheet"}
PROVENANCE_MEANING = {
    "calibrated": "inside the range of measured benchmarks the model was fitted to",
    "extrapolated": "fitted model used outside its measured range",
    "spec-sheet": "no measurements for this chip: roofline from datasheet figures only",
}


def usd(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"${x:,.{digits}f}"


def num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}%}"


def _badge(provenance: str, uncertainty: float) -> str:
    cls = provenance if provenance in PROVENANCE_CLASSES else "other"
    meaning = PROVENANCE_MEANING.get(provenance, "")
    return (f"<span class=\"badge {cls}\" title=\"{esc(meaning)}\">{esc(provenance)} "
            f"±{uncertainty:.0%}</span>")


def _card(key: str, value: str, sub: str = "") -> str:
    return (f"<div class=\"card\"><div class=\"k\">{esc(key)}</div>"
            f"<div class=\"v\">{esc(value)}</div>"
            + (f"<div class=\"s\">{esc(sub)}</div>" if sub else "") + "</div>")


def _short_status(status: str) -> str:
    """'Optimization terminated successfully. (HiGHS Status 7: Optimal)' -> 'Optimal'."""
    m = re.search(r"Status \d+: ([^)]+)\)", status)
    return m.group(1) if m else (status[:40] or "?")


def _layout_text(u: PlanUnit) -> str:
    return u.layout.short


def _summary(plan: Plan) -> str:
    c = plan.cost
    s = plan.solver
    gap = s.mip_gap
    chips = sum(u.chips for u in plan.units)
    mw = sum(plan.power_mw.values())
    unused = max(c.committed_usd_per_month - c.committed_used_usd_per_month, 0.0)
    cards = [
        _card("monthly bill", usd(c.usd_per_month), "USD / month, committed + on-demand"),
        _card("committed", usd(c.committed_usd_per_month),
              f"USD / month; used {usd(c.committed_used_usd_per_month)}"
              + (f", unused {usd(unused)}" if unused > 0.5 else "")),
        _card("on-demand", usd(c.on_demand_usd_per_month), "USD / month beyond commitments"),
        _card("fleet at list price", usd(c.fleet_usd_per_month), "USD / month of chip-hours"),
        _card("chips", f"{chips:,}", f"in {len(plan.units)} pools"),
        _card("power at TDP", f"{mw:,.3f} MW", f"in {len(plan.power_mw)} regions"),
        _card("solver", _short_status(s.status or "?"),
              f"gap {pct(gap, 2) if gap is not None else '—'} of the bill; "
              f"{num(s.seconds, 2)} s"),
    ]
    shares = ", ".join(f"{v} {sh:.1%}" for v, sh in plan.vendor_share.items())
    lim = plan.limits
    trust = _trust_summary(plan)
    return (
        f"<header><h1>Fleet plan — {esc(plan.scenario)}</h1>"
        f"<p class=\"lede\">Scenario <b>{esc(plan.scenario)}</b>; objective "
        f"<b>{esc(plan.objective)}</b>; created {esc(plan.created)}; plan.json version "
        f"{esc(plan.version)}. Solver: {esc(s.name)} — {esc(s.status or '?')}"
        f"{'' if gap is None else f', relative gap {gap:.3%}'}.</p>"
        f"</header><div class=\"cards\">{''.join(cards)}</div>"
        f"<p>Vendor share of output tokens at peak: {esc(shares or '—')}. "
        f"Capacity planned with {pct(lim.headroom, 0)} headroom over peak demand, "
        + (f"each estimate derated by {esc(lim.derate)}× its uncertainty band.</p>"
           if lim.derate is not None else
           f"each pool counted at the capacity it has with {pct(lim.confidence, 0)} "
           "probability, given the model's held-out error for its chip.</p>")
        + f"{trust}")


def _trust_summary(plan: Plan) -> str:
    """Chips by provenance: how much of the fleet rests on which kind of estimate."""
    by: dict[str, int] = {}
    worst: dict[str, float] = {}
    for u in plan.units:
        by[u.provenance] = by.get(u.provenance, 0) + u.chips
        worst[u.provenance] = max(worst.get(u.provenance, 0.0), u.uncertainty)
    if not by:
        return ""
    total = sum(by.values()) or 1
    items = "".join(
        f"<li>{_badge(p, worst[p])} {by[p]:,} chips ({by[p] / total:.0%}) — "
        f"{esc(PROVENANCE_MEANING.get(p, 'see the performance model'))}; widest band "
        f"±{worst[p]:.0%}</li>" for p in sorted(by, key=lambda p: -by[p]))
    return (f"<h3>How far to trust the capacities</h3><ul>{items}</ul>"
            "<p class=\"muted\">Capacities are the performance model's SLO throughput, "
            "derated by the band shown; the plan holds at the pessimistic end of each band.</p>")


def _tiers_table(plan: Plan) -> str:
    rows = []
    for t in plan.tiers:
        rows.append([
            esc(t.name), esc(t.model), num(t.slo_ttft_s, 3), num(t.slo_tpot_s, 3),
            num(t.peak_requests_per_s, 1), num(t.output_tokens_per_s, 0),
            usd(t.usd_per_million_output_tokens, 3), esc(", ".join(t.precisions) or "—"),
            "<br>".join(esc(n) for n in t.precision_notes
                        + ([f"sized for its bursts: {t.burst_factor:.2f}x its peak-window "
                            "rate (more than the headroom)"]
                           if t.burst_factor > 1 + plan.limits.headroom else [])
                        + ([f"disaggregated prefill/decode: {t.disaggregation}"]
                           if t.disaggregation else [])
                        + ([f"speculative decoding: {t.speculative}"]
                           if t.speculative else [])) or "—"])
    return table([("tier", False), ("model", False), ("SLO TTFT, s", True),
                  ("SLO TPOT, s", True), ("peak demand, req/s", True),
                  ("output at peak, tok/s", True), ("$ / M output tokens", True),
                  ("precisions used", False), ("precision and serving notes", False)], rows)


def _prefix_cache_table(plan: Plan) -> str:
    """Per tier with prefix caching priced in: the hit rate, how it was found, the saving."""
    rows = []
    for t in plan.tiers:
        pc = t.prefix_cache
        if pc is None:
            continue
        rows.append([esc(t.name), pct(pc.hit_rate), num(pc.cache_tokens / 1e6, 1),
                     pct(pc.hit_rate_at_plan_kv), pct(pc.unbounded_hit_rate),
                     usd(pc.plain_usd_per_month),
                     usd(pc.usd_per_month), usd(pc.saving_usd_per_month),
                     usd(pc.bill_saving_usd_per_month), esc(pc.method)])
    if not rows:
        return "<p class=\"muted\">No tier's trace carries prefix hashes: no caching priced.</p>"
    return table([("tier", False), ("hit rate priced in", True),
                  ("lookup KV, M tokens", True), ("hit rate at that KV", True),
                  ("hit rate, no eviction", True), ("tier $/month without", True),
                  ("tier $/month with", True), ("tier saves $/month", True),
                  ("bill saves $/month", True), ("how the hit rate was obtained", False)],
                 rows)


def _pools_table(plan: Plan) -> str:
    hours = plan.limits.hours_per_month
    loads = pool_load(plan)
    roles = _economics(plan).pool_roles
    rows = []
    for u in sorted(plan.units, key=lambda u: (u.tier, -u.usd_per_hour, u.pool)):
        load = loads.get(u.pool)
        rows.append([
            f"<span class=\"mono\">{esc(u.pool)}</span>",
            f"{esc(u.accelerator)} <span class=\"muted\">({esc(u.vendor)})</span>",
            f"{esc(u.cloud)}/{esc(u.region)}",
            f"{esc(u.precision)} <span class=\"muted\">KV {esc(u.kv_precision)}</span>",
            esc(_layout_text(u)), f"{u.replicas:,}", f"{u.chips_per_replica:,}",
            f"{u.chips:,}",
            f"{usd(u.usd_per_chip_hour, 2)} <span class=\"muted\">"
            f"{esc(u.price_kind.replace('_', '-'))}</span>",
            usd(u.usd_per_hour * hours), num(u.watts / 1e3, 1),
            "—" if load is None else (f"<span class=\"warn\">{load:.0%}</span>"
                                      if load > 1.001 else f"{load:.0%}"),
            _badge(u.provenance, u.uncertainty),
            esc(roles.get(u.pool, "—") + ("" if u.role == "both" else f", {u.role} half")
                + (f", speculative {u.speculative}" if u.speculative else ""))])
    return table([("pool: tier / chip / cloud / region / precision / chips", False),
                  ("chip (vendor)", False), ("cloud/region", False), ("precision", False),
                  ("layout", False), ("replicas", True), ("chips / replica", True),
                  ("chips", True), ("$ / chip-hour", True), ("$ / month", True),
                  ("kW at TDP", True), ("load at peak", True), ("trust", False),
                  ("role", False)], rows)


def _capacity_table(plan: Plan) -> str:
    """Per pool and bucket: what one replica sustains at the SLO."""
    rows = []
    for u in sorted(plan.units, key=lambda u: (u.tier, u.pool)):
        for c in u.capacity:
            rows.append([
                f"<span class=\"mono\">{esc(u.pool)}</span>", esc(c.bucket),
                num(c.requests_per_s, 2), num(c.requests_per_s_point, 2),
                num(c.output_tokens_per_s, 0), num(c.concurrency, 0),
                num(c.ttft_s * 1e3, 1), num(c.tpot_s * 1e3, 1),
                _badge(u.provenance, u.uncertainty)])
    return table([("pool", False), ("bucket", False), ("derated, req/s", True),
                  ("point, req/s", True), ("output, tok/s (point)", True),
                  ("in flight, seqs", True), ("TTFT, ms", True), ("TPOT, ms", True),
                  ("trust", False)], rows)


def _split_table(plan: Plan) -> str:
    rows = []
    for s in plan.traffic_split:
        shares = "<br>".join(
            f"<span class=\"mono\">{esc(p)}</span> {sh:.1%}"
            for p, sh in sorted(s.shares.items(), key=lambda kv: -kv[1])) or "—"
        rows.append([esc(s.tier), esc(s.bucket), f"{s.input_len:,}", f"{s.output_len:,}",
                     num(s.peak_requests_per_s, 2), shares])
    return table([("tier", False), ("bucket", False), ("input, tokens", True),
                  ("output, tokens", True), ("peak incl. headroom, req/s", True),
                  ("share of requests per pool", False)], rows)


def _constraints_table(plan: Plan) -> str:
    rows = [[esc(c.name),
             "<span class=\"badge binding\">binding</span>" if c.binding else "",
             usd(c.marginal_usd_per_month) if c.marginal_usd_per_month is not None
             else "not priced", esc(c.detail)]
            for c in plan.constraints]
    return table([("constraint", False), ("binding", False),
                  ("saves if dropped, $ / month", True), ("detail", False)], rows)


def _baselines_table(plan: Plan) -> str:
    me = plan.cost.usd_per_month
    rows = [["this plan", usd(me), "", "yes", ""]]
    for b in plan.baselines:
        rel = (f"{b.usd_per_month / me - 1:+.1%}" if b.usd_per_month is not None and me
               else "—")
        rows.append([esc(b.name), usd(b.usd_per_month), rel, "yes" if b.feasible else "no",
                     esc(b.note)])
    return table([("fleet", False), ("bill, $ / month", True), ("vs this plan", True),
                  ("feasible", False), ("note", False)], rows)


def _value(v: Any) -> str:
    """A limit's value: nested mappings as small key/value tables, lists as lines."""
    if isinstance(v, dict):
        if not v:
            return "—"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_value(x)}</td></tr>" for k, x in v.items())
        return f"<table class=\"kv\">{rows}</table>"
    if isinstance(v, list):
        return "<br>".join(_value(x) for x in v) or "—"
    return esc("—" if v is None else v)


LIMIT_UNITS = {"headroom": "fraction over peak", "derate": "× uncertainty band",
               "confidence": "probability per pool",
               "max_vendor_share": "fraction", "power_mw": "MW per region",
               "supply_max_chips": "chips per supply entry",
               "contracts": "USD / month committed"}


def _limits_table(plan: Plan) -> str:
    rows = [[esc(k), esc(LIMIT_UNITS.get(k, "")), _value(v)]
            for k, v in plan.limits.model_dump().items()]
    return table([("limit / policy", False), ("unit", False), ("value", False)], rows)


def _solver_table(plan: Plan) -> str:
    rows = [[esc(k), _value(v)] for k, v in plan.solver.model_dump().items()]
    return table([("solver field", False), ("value", False)], rows)


def _findings(found: list[Finding]) -> str:
    if not found:
        return ("<p class=\"ok\" id=\"tf-checks\" data-findings=\"0\">All consistency checks "
                "passed (shares, tiers, loads, power, vendor share, bill).</p>")
    items = "".join(f"<li><b>{esc(f.check)}</b>: {esc(f.message)}</li>" for f in found[:200])
    more = f"<li>… and {len(found) - 200} more</li>" if len(found) > 200 else ""
    return (f"<div id=\"tf-checks\" data-findings=\"{len(found)}\"><p class=\"warn\">"
            f"{len(found)} consistency check(s) failed — the plan may be wrong here:</p>"
            f"<ul class=\"findings\">{items}{more}</ul></div>")


def _economics(plan: Plan) -> PlanEconomics:
    from tokenfleet.plan.economics import plan_economics

    return plan.economics or plan_economics(plan)


def _unit_costs_table(plan: Plan) -> str:
    rows = [[esc(t.tier), usd(t.usd_per_million_input_tokens, 3),
             usd(t.usd_per_million_output_tokens, 3), usd(t.usd_per_million_tokens, 3),
             usd(t.usd_per_request * 1e3 if t.usd_per_request is not None else None, 3),
             num(t.tokens_per_usd / 1e6 if t.tokens_per_usd else None, 2),
             num(t.tokens_per_s_per_mw / 1e6 if t.tokens_per_s_per_mw else None, 2)]
            for t in _economics(plan).tiers]
    return table([("tier", False), ("$ / M input tokens", True), ("$ / M output tokens", True),
                  ("$ / M tokens, blended", True), ("$ / 1k requests", True),
                  ("M tokens per $", True), ("M tokens/s per MW", True)], rows)


def _vendor_share_table(plan: Plan) -> str:
    policy = plan.vendor_share
    rows = [[esc(v), pct(s.spend), pct(s.chips), pct(s.tokens), pct(policy.get(v))]
            for v, s in _economics(plan).vendor_share.items()]
    basis = esc(plan.limits.vendor_share_basis)
    return table([("vendor", False), ("of spend", True), ("of chips", True),
                  ("of tokens at peak", True), (f"as the cap counts it ({basis})", True)],
                 rows)


def render_plan_report(plan: Plan) -> str:
    """The report as one HTML document (plotly.js inlined; no network at view time)."""
    figs = plan_figures(plan)
    day_figs = day_figures(plan)
    notes = "".join(f"<li>{esc(n)}</li>" for n in plan.notes) or "<li class=\"muted\">none</li>"
    body = (
        f"{_summary(plan)}"
        "<section id=\"checks\"><h2>Consistency checks</h2>"
        f"{_findings(check_plan(plan))}</section>"
        "<section id=\"plots\"><h2>Plots</h2><div class=\"plots\">"
        f"{''.join(figure_html(f) for f in figs)}</div></section>"
        + (f"{day_section(plan)}<div class=\"plots\">"
           f"{''.join(figure_html(f) for f in day_figs)}</div>" if day_figs else "")
        + f"<section id=\"tiers\"><h2>Tiers</h2>{_tiers_table(plan)}</section>"
        "<section id=\"prefix-cache\"><h2>Prefix caching</h2>"
        f"{_prefix_cache_table(plan)}</section>"
        "<section id=\"unit-costs\"><h2>Unit costs per tier</h2>"
        f"{_unit_costs_table(plan)}<p class=\"muted\">{esc(_economics(plan).basis)}. "
        "Each column spreads the tier's whole cost over one kind of work, so $ / M input "
        "and $ / M output are not additive.</p></section>"
        "<section id=\"vendor-share\"><h2>Vendor share</h2>"
        f"{_vendor_share_table(plan)}</section>"
        f"<section id=\"pools\"><h2>Pools</h2>{_pools_table(plan)}"
        "<p class=\"muted\">Load at peak: the pool's share of its tier's traffic at peak "
        "(headroom included) over its derated capacity; 100 % means no slack at the "
        "pessimistic end of the band. Role: active pools take traffic at peak; standby "
        "pools take none and are held so the tier survives losing a vendor (N-1).</p>"
        "</section>"
        f"<section id=\"traffic\"><h2>Traffic split per tier and size bucket</h2>"
        f"{_split_table(plan)}</section>"
        "<section id=\"capacity\"><h2>Capacity per replica at the SLO</h2>"
        f"<details><summary>{sum(len(u.capacity) for u in plan.units)} rows: per pool and "
        "size bucket, what one replica sustains at its tier's SLO</summary>"
        f"{_capacity_table(plan)}</details>"
        "<p class=\"muted\">Derated = point estimate × (1 − derate × band); the plan "
        "counts on the derated rate. Output tokens/s are at the point estimate.</p>"
        "</section>"
        f"<section id=\"constraints\"><h2>Constraints</h2>{_constraints_table(plan)}</section>"
        f"<section id=\"baselines\"><h2>Baselines</h2>{_baselines_table(plan)}</section>"
        f"<section id=\"limits\"><h2>Limits and policies honoured</h2>{_limits_table(plan)}"
        f"</section><section id=\"solver\"><h2>Solver</h2>{_solver_table(plan)}</section>"
        f"<section id=\"notes\"><h2>Notes</h2><ul>{notes}</ul></section>"
        "<footer>Generated by tokenfleet from plan.json. Money in USD, rates per second, "
        "power at chip TDP. Self-contained: no network access needed to view.</footer>")
    return page(f"Fleet plan — {plan.scenario}", body, figs + day_figs)


def write_plan_report(plan: Plan, path: Path) -> None:
    """Write the report to ``path`` (UTF-8), creating its directory if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, render_plan_report(plan))
