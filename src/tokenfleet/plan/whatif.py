"""What-ifs in one command: a scenario without a chip, vendor or cloud; a floor on a
vendor's share of a tier; two plans side by side with a band on the saving; and the
inverse question, the largest traffic a budget or a power envelope serves.

Library code: typed inputs and outputs, no printing (``tokenfleet.cli.plan`` prints).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from tokenfleet.catalog.loader import Catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.candidates import CandidateSet
from tokenfleet.plan.economics import vendor_shares
from tokenfleet.plan.milp import fixed_monthly_cost, solve_fleet
from tokenfleet.plan.planner import bill, chosen_units
from tokenfleet.plan.scenario import MinShare, Scenario
from tokenfleet.plan.schema import Plan

# ---------------------------------------------------------------- --without, --require


def apply_without(sc: Scenario, catalog: Catalog, names: list[str]) -> tuple[Scenario, str]:
    """The scenario with no chips from each named accelerator, vendor or cloud (their
    supply entries set to 0 chips) and a one-line description of what was removed."""
    out = sc.model_copy(deep=True)
    said = []
    for name in names:
        key = name.strip().lower()
        hit = []
        for s in out.supply:
            accel = catalog.accelerator(s.accelerator)
            if key in (s.accelerator.lower(), accel.vendor.lower(), s.cloud.lower()):
                hit.append(s)
        if not hit:
            allowed = sorted({s.accelerator for s in sc.supply} | {s.cloud for s in sc.supply}
                             | {catalog.accelerator(s.accelerator).vendor for s in sc.supply})
            raise TokenfleetError(f"--without {name}: no supply entry has that accelerator, "
                                  f"vendor or cloud (allowed: {', '.join(allowed)})")
        for s in hit:
            s.max_chips = 0
        said.append(name)
        out.description += (f" [without {name}: "
                            f"{', '.join(f'{s.accelerator}@{s.cloud}/{s.region}' for s in hit)}]")
    return out, "without " + ", ".join(said)


_REQUIRE = re.compile(r"^\s*([^:]+?)\s*:\s*(.+?)\s*>=\s*([0-9.]+)\s*(%?)\s*$")


def parse_require(text: str, sc: Scenario) -> MinShare:
    """``"large: Microsoft >= 0.3"`` (or ``30%``) -> a floor on the vendor's share of
    the tier's output tokens at peak."""
    m = _REQUIRE.match(text)
    if not m:
        raise TokenfleetError(f"--require '{text}': expected 'TIER: VENDOR >= FRACTION', "
                              "e.g. 'large: Microsoft >= 0.3'")
    tier, vendor, value, pct = m.groups()
    frac = float(value) / (100.0 if pct else 1.0)
    tiers = [t.name for t in sc.tiers]
    if tier not in tiers:
        raise TokenfleetError(f"--require '{text}': no tier '{tier}' (tiers: "
                              f"{', '.join(tiers)})")
    if not 0 < frac <= 1:
        raise TokenfleetError(f"--require '{text}': the share must be in (0, 1]")
    return MinShare(tier=tier, vendor=vendor, min_fraction=frac)


def apply_require(sc: Scenario, floors: list[MinShare]) -> Scenario:
    out = sc.model_copy(deep=True)
    out.policy.min_share = [*out.policy.min_share, *floors]
    return out


# ---------------------------------------------------------------- side by side


class PlanSide(BaseModel):
    label: str
    usd_per_month: float
    chips: dict[str, int] = Field(description="accelerator -> chips")
    vendor_share_traffic: dict[str, float]
    vendor_share_spend: dict[str, float]
    power_mw: float
    tier_vendor_share: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="tier -> vendor -> share of its output tokens")
    slo_margin: dict[str, float] = Field(
        description="tier -> spare capacity at its SLO of its busiest pool at peak "
                    "(1 - load / point capacity; see slo_margins)")


class Comparison(BaseModel):
    this: PlanSide
    other: PlanSide
    saving_usd_per_month: float = Field(description="other's bill minus this plan's")
    band_usd_per_month: tuple[float, float] | None = Field(
        None, description="the saving re-solved with every estimate at the low and at the "
                          "high end of its uncertainty band (min, max)")
    band_note: str = ""


def spend_shares(plan: Plan) -> dict[str, float]:
    """Vendor -> share of the fleet's list value (plan.economics' computation)."""
    return {v: s.spend for v, s in vendor_shares(plan).items()}


def slo_margins(plan: Plan) -> dict[str, float]:
    """Tier -> spare capacity at its SLO: 1 - the busiest pool's load at peak (headroom
    excluded) over what its replicas serve at the SLO on the point estimate. Pools run
    at their SLO operating point, so this is how much more traffic the tier takes before
    its tightest pool breaks its SLO (the planned headroom and derating included)."""
    headroom = plan.limits.headroom
    load: dict[str, float] = defaultdict(float)  # pool -> replica-seconds per second
    for sp in plan.traffic_split:
        peak = sp.peak_requests_per_s / (1 + headroom)
        for pool, share in sp.shares.items():
            u = next((x for x in plan.units if x.pool == pool), None)
            cap = u.capacity_for(sp.bucket) if u else None
            if cap and cap.requests_per_s_point > 0:
                load[pool] += share * peak / cap.requests_per_s_point
    out = {}
    for t in plan.tiers:
        utils = [load[u.pool] / u.replicas for u in plan.pools_for(t.name) if u.replicas]
        if utils:
            out[t.name] = 1.0 - max(utils)
    return out


def tier_vendor_shares(plan: Plan) -> dict[str, dict[str, float]]:
    vendor = {u.pool: u.vendor for u in plan.units}
    by: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for sp in plan.traffic_split:
        for pool, share in sp.shares.items():
            by[sp.tier][vendor[pool]] += share * sp.peak_requests_per_s * sp.output_len
    out = {}
    for tier, d in by.items():
        tot = sum(d.values()) or 1.0
        out[tier] = {v: x / tot for v, x in sorted(d.items()) if x > 0}
    return out


def side(plan: Plan, label: str) -> PlanSide:
    chips: dict[str, int] = defaultdict(int)
    for u in plan.units:
        chips[u.accelerator] += u.chips
    return PlanSide(label=label, usd_per_month=plan.cost.usd_per_month,
                    chips=dict(sorted(chips.items())),
                    vendor_share_traffic=dict(plan.vendor_share),
                    vendor_share_spend=spend_shares(plan),
                    power_mw=sum(plan.power_mw.values()),
                    tier_vendor_share=tier_vendor_shares(plan), slo_margin=slo_margins(plan))


PlanFn = Callable[[Scenario, Path], Plan]  # plans a scenario without pricing


def compare(this: Plan, other: Plan, this_label: str, other_label: str,
            ends: list[tuple[Scenario, Path, Scenario, Path]] | None = None,
            plan_fn: PlanFn | None = None) -> Comparison:
    """Both plans side by side. ``ends``: (this, its dir, other, its dir) scenarios to
    re-solve at both ends of the estimates' bands for the band on the saving."""
    a, b = side(this, this_label), side(other, other_label)
    saving = b.usd_per_month - a.usd_per_month
    band, note = None, ("the other side is a plan.json whose scenario is not at hand (or "
                        "was scaled by --budget/--power-mw): no band")
    if ends and plan_fn is not None:
        savings = [saving]
        for sa, da, sb, db in ends:
            for derate in (1.0, -1.0):
                pa = plan_fn(sa.model_copy(update={"derate": derate}), da)
                pb = plan_fn(sb.model_copy(update={"derate": derate}), db)
                savings.append(pb.cost.usd_per_month - pa.cost.usd_per_month)
        band = (min(savings), max(savings))
        note = ("every estimate at the low end (capacity x (1 - band)) and at the high end "
                "(x (1 + band)) of its uncertainty band, both plans re-solved")
    return Comparison(this=a, other=b, saving_usd_per_month=saving, band_usd_per_month=band,
                      band_note=note)


# ---------------------------------------------------------------- --budget, --power-mw


class ScaleAnswer(BaseModel):
    scale: float = Field(description="largest multiple of the scenario's traffic served")
    usd_per_month: float | None = Field(description="bill of the plan at that scale")
    power_mw: float | None = Field(description="facility MW of the plan at that scale")
    budget_usd_per_month: float | None
    power_cap_mw: float | None
    solves: int
    bracket: tuple[float, float] = Field(description="served at the first, not at the second")
    limited_by: str = Field(description="what stops more traffic at the next step")


def scaled(cs: CandidateSet, factor: float) -> CandidateSet:
    """The candidate set with every tier's demand times ``factor``. Exact: a replica's
    capacity at its SLO does not depend on the demand, and neither does which layout
    or pool option the candidate builder keeps (it ranks them by relative cost)."""
    return dataclasses.replace(cs, demands=[dataclasses.replace(d, rate_per_s=d.rate_per_s
                                                                * factor)
                                            for d in cs.demands])


def max_traffic_scale(sc: Scenario, cs: CandidateSet, budget_usd_per_month: float | None,
                      power_mw: float | None, rel_tol: float = 0.01,
                      max_solves: int = 30) -> ScaleAnswer:
    """Bisection over a factor on every tier's traffic: the largest the fleet serves at
    every SLO and policy within the budget (bill ≤ budget) and the fleet-wide power cap.
    Feasibility and the cheapest bill only grow with traffic, so bisection is exact up
    to ``rel_tol`` (and the solver's gap on the bill)."""
    if budget_usd_per_month is None and power_mw is None:
        raise TokenfleetError("give --budget USD_PER_MONTH or --power-mw MW")
    fixed = fixed_monthly_cost(sc)
    if budget_usd_per_month is not None and budget_usd_per_month < fixed:
        raise TokenfleetError(f"--budget {budget_usd_per_month:,.0f} USD/month is below what "
                              f"the scenario pays whatever it serves ({fixed:,.0f}: "
                              "commitments and prepaid blocks)")
    sc2 = sc.model_copy(update={"max_power_mw": power_mw}) if power_mw else sc
    pue = {r.name: r.pue for r in sc.regions}
    solves = 0

    def fits(s: float) -> tuple[bool, float | None, float | None, str]:
        nonlocal solves
        solves += 1
        f, sol = solve_fleet(sc2, scaled(cs, s))
        if not sol.ok:
            why = "power" if power_mw else "supply or policy"
            return False, None, None, why + " (no plan at every SLO)"
        cost = bill(sc2, f, sol)
        mw = sum(c.watts * pue.get(c.region, 1.0) * k for c, k in chosen_units(f, sol)) / 1e6
        if budget_usd_per_month is not None and cost > budget_usd_per_month:
            return False, cost, mw, "budget"
        return True, cost, mw, ""

    lo, hi = 0.0, 1.0
    best: tuple[float | None, float | None] = (None, None)
    why = ""
    ok, cost, mw, why_hi = fits(hi)
    while ok and solves < max_solves:
        lo, best = hi, (cost, mw)
        hi *= 2
        ok, cost, mw, why_hi = fits(hi)
    why = why_hi
    if lo == 0.0:  # not even today's traffic: shrink until something fits
        hi_ok = 1.0
        while solves < min(max_solves, 12):  # down to 1/2048 of today's traffic
            hi_ok /= 2
            ok, cost, mw, w = fits(hi_ok)
            if ok:
                lo, best = hi_ok, (cost, mw)
                break
            hi, why = hi_ok, w
    if lo == 0.0:
        raise TokenfleetError(f"no traffic fits within the budget and power given "
                              f"(tried down to {hi:.2g}x the scenario's; {why})")
    while hi / lo > 1 + rel_tol and solves < max_solves:
        mid = math.sqrt(lo * hi)
        ok, cost, mw, w = fits(mid)
        if ok:
            lo, best = mid, (cost, mw)
        else:
            hi, why = mid, w
    return ScaleAnswer(scale=lo, usd_per_month=best[0], power_mw=best[1],
                       budget_usd_per_month=budget_usd_per_month, power_cap_mw=power_mw,
                       solves=solves, bracket=(lo, hi), limited_by=why)
