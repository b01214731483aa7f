"""The what-ifs of `tokenfleet plan` (--without, --require, --versus, --budget,
--power-mw): apply them to the scenario, plan the reference side, print both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenfleet.catalog.loader import Catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import load_fit
from tokenfleet.plan.candidates import build_candidates
from tokenfleet.plan.gates import precision_gate
from tokenfleet.plan.planner import Infeasible, plan_scenario
from tokenfleet.plan.scenario import Scenario, load_scenario
from tokenfleet.plan.schema import Plan, load_plan
from tokenfleet.plan.whatif import (
    Comparison,
    ScaleAnswer,
    apply_require,
    apply_without,
    compare,
    max_traffic_scale,
    parse_require,
)


@dataclass
class WhatIf:
    """The scenario as edited by the flags, and what the reference side is."""

    sc: Scenario
    applied: list[str] = field(default_factory=list)
    reference: Scenario | None = None  # plan this too and compare (--without/--require)
    scale: ScaleAnswer | None = None


def apply(sc: Scenario, base: Path, cat: Catalog, without: list[str], require: list[str],
          budget: float | None, power_mw: float | None) -> WhatIf:
    w = WhatIf(sc)
    if without:
        w.sc, said = apply_without(w.sc, cat, without)
        w.applied.append(said)
    if require:
        floors = [parse_require(r, w.sc) for r in require]
        w.sc = apply_require(w.sc, floors)
        w.applied.extend(f"require {m.tier}: {m.vendor} ≥ {m.min_fraction:.0%}" for m in floors)
    if w.applied:
        w.reference = sc
    if budget is not None or power_mw is not None:
        if budget is not None and budget <= 0 or power_mw is not None and power_mw <= 0:
            raise TokenfleetError("--budget and --power-mw must be positive")
        gate = precision_gate(w.sc, base, "scenario")
        cs = build_candidates(w.sc, base, cat, load_fit(), gate)
        ans = max_traffic_scale(w.sc, cs, budget, power_mw)
        w.scale = ans
        tiers = [t.model_copy(update={"traffic": t.traffic.model_copy(
            update={"growth": t.traffic.growth * ans.scale})}) for t in w.sc.tiers]
        w.sc = w.sc.model_copy(update={"tiers": tiers, "max_power_mw": power_mw})
        w.applied.append(f"traffic x{ans.scale:.3g} (the most that fits "
                         + " and ".join(x for x in (
                             f"${budget:,.0f}/month" if budget is not None else "",
                             f"{power_mw:g} MW" if power_mw is not None else "") if x) + ")")
    return w


def _planner(cat: Catalog):  # noqa: ANN202 - a PlanFn
    def plan_fn(s: Scenario, d: Path) -> Plan:
        return plan_scenario(s, d, name=s.name, catalog=cat,
                             precision_gate=precision_gate(s, d, s.name),
                             compare_policies=False)
    return plan_fn


def comparison(plan: Plan, w: WhatIf, base: Path, cat: Catalog, versus: Path | None,
               band: bool) -> Comparison | None:
    """Plan the reference side (the scenario before the what-ifs, or --versus) and
    compare; the band re-solves both sides at the ends of the estimates' bands."""
    plan_fn = _planner(cat)
    other_sc: Scenario | None
    if versus is not None:
        if versus.suffix == ".json":
            other, label = load_plan(versus), versus.name
            other_sc, other_base = _replan_source(other, cat)
            other_base = other_base or base
        else:
            other_sc, other_base = load_scenario(versus)
            other, label = plan_fn(other_sc, other_base), str(versus)
    elif w.reference is not None:
        other_sc, other_base, label = w.reference, base, "as given"
        other = plan_fn(other_sc, other_base)
    else:
        return None
    ends = [(w.sc, base, other_sc, other_base)] if band and other_sc is not None else None
    this_label = "; ".join(w.applied) or "this plan"
    try:
        c = compare(plan, other, this_label, label, ends, plan_fn)
        if not band:
            c.band_note = "no band asked for (--no-band)"
        return c
    except Infeasible as e:
        c = compare(plan, other, this_label, label)
        c.band_note = f"no band: at one end of the estimates' bands {e}".splitlines()[0]
        return c


def source(scenario: Path, overrides: list[str], without: list[str], require: list[str],
           budget: float | None, power_mw: float | None) -> dict[str, Any]:
    return {"scenario": str(scenario.resolve()), "set": overrides, "without": without,
            "require": require, "budget": budget, "power_mw": power_mw}


def _replan_source(plan: Plan, cat: Catalog) -> tuple[Scenario | None, Path | None]:
    """The scenario a plan.json came from, with its overrides and what-ifs, when it says
    so and the file is still there (traffic scaled by --budget/--power-mw is not
    replayed: no band then)."""
    src = plan.source or {}
    path = Path(str(src.get("scenario", "")))
    if not src or not path.is_file() or src.get("budget") or src.get("power_mw"):
        return None, None
    sc, base = load_scenario(path, list(src.get("set") or []))
    w = apply(sc, base, cat, list(src.get("without") or []), list(src.get("require") or []),
              None, None)
    return w.sc, base


def record(plan: Plan, w: WhatIf, cmp: Comparison | None) -> None:
    info: dict[str, Any] = {"applied": w.applied}
    if w.scale is not None:
        info["max_scale"] = w.scale.model_dump()
    if cmp is not None:
        info["comparison"] = cmp.model_dump()
    if w.applied or cmp is not None:
        plan.whatif = info


def _money(x: float | None) -> str:
    return "—" if x is None else f"${x + 0.0 if abs(x) >= 0.5 else 0.0:,.0f}"


def _shares(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in d.items() if v >= 0.005) or "—"


def print_scale(ans: ScaleAnswer, out: Console) -> None:
    within = " and ".join(x for x in (
        f"{_money(ans.budget_usd_per_month)}/month" if ans.budget_usd_per_month else "",
        f"{ans.power_cap_mw:g} MW" if ans.power_cap_mw else "") if x)
    out.print(f"[bold]Largest traffic within {within}:[/bold] {ans.scale:.3g}x the "
              f"scenario's traffic at every SLO and policy (served at {ans.bracket[0]:.3g}x, "
              f"not at {ans.bracket[1]:.3g}x: {ans.limited_by}; {ans.solves} solves); "
              f"that plan costs {_money(ans.usd_per_month)}/month and draws "
              f"{ans.power_mw or 0:.3g} MW")


def print_comparison(c: Comparison, out: Console) -> None:
    t = Table(title="What-if, side by side")
    for col in ("", c.this.label, c.other.label, "difference"):
        t.add_column(col, overflow="fold")
    a, b = c.this, c.other
    t.add_row("$/month", _money(a.usd_per_month), _money(b.usd_per_month),
              f"{a.usd_per_month - b.usd_per_month:+,.0f}")
    for acc in sorted(set(a.chips) | set(b.chips)):
        x, y = a.chips.get(acc, 0), b.chips.get(acc, 0)
        t.add_row(f"chips {acc}", str(x), str(y), f"{x - y:+d}")
    t.add_row("MW at TDP", f"{a.power_mw:.3g}", f"{b.power_mw:.3g}",
              f"{a.power_mw - b.power_mw:+.3g}")
    t.add_row("vendor share, tokens", _shares(a.vendor_share_traffic),
              _shares(b.vendor_share_traffic), "")
    t.add_row("vendor share, spend", _shares(a.vendor_share_spend),
              _shares(b.vendor_share_spend), "")
    for tier in sorted(set(a.tier_vendor_share) | set(b.tier_vendor_share)):
        t.add_row(f"vendor share, {tier}", _shares(a.tier_vendor_share.get(tier, {})),
                  _shares(b.tier_vendor_share.get(tier, {})), "")
    for tier in sorted(set(a.slo_margin) | set(b.slo_margin)):
        ma, mb = a.slo_margin.get(tier), b.slo_margin.get(tier)
        t.add_row(f"SLO margin {tier}", "—" if ma is None else f"{ma:.0%}",
                  "—" if mb is None else f"{mb:.0%}", "")
    out.print(t)
    s = c.saving_usd_per_month
    sign = 1.0 if s >= 0 else -1.0  # report the band in the headline's direction
    lo_hi = (sorted((sign * c.band_usd_per_month[0], sign * c.band_usd_per_month[1]))
             if c.band_usd_per_month else None)
    band = (f" (band {_money(lo_hi[0])} to {_money(lo_hi[1])}: {c.band_note})" if lo_hi
            else f" ({c.band_note})")
    base = b.usd_per_month or 1.0
    what = "saves" if s >= 0 else "costs"
    tail = "against" if s >= 0 else "more than"
    out.print(f"  '{a.label}' {what} {_money(abs(s))}/month ({abs(s) / base:.1%}) {tail} "
              f"'{b.label}'{band}")
