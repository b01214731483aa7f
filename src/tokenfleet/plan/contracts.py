"""What plan.json says about money and power beyond the bill: each commitment as
signed and how much of it this plan uses, the unit costs and vendor shares by spend,
chips and tokens (``plan.economics``: one table), and energy (facility MW with each
region's PUE, MWh per month, its cost)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tokenfleet.plan.billing import contract_usage_usd
from tokenfleet.plan.economics import plan_economics
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan


def energy(plan: Plan, sc: Scenario) -> dict[str, Any]:
    """Chips at TDP all month: an upper bound on the energy drawn (serving at the
    planned peak all month; the simulator measures the real load)."""
    hours = sc.hours_per_month
    regions = {r.name: r for r in sc.regions}
    out: dict[str, Any] = {"basis": "chips at TDP for every hour of the month (an upper "
                                    "bound), times each region's PUE"}
    per: dict[str, dict[str, float | None]] = {}
    for region, it_mw in sorted(plan.power_mw.items()):
        r = regions.get(region)
        pue = r.pue if r else 1.0
        mwh = it_mw * pue * hours
        price = r.usd_per_mwh if r else None
        per[region] = {"it_mw": it_mw, "pue": pue, "facility_mw": it_mw * pue,
                       "mwh_per_month": mwh, "usd_per_mwh": price,
                       "usd_per_month": mwh * price if price is not None else None}
    out["regions"] = per
    out["facility_mw"] = sum(float(v["facility_mw"] or 0.0) for v in per.values())
    out["mwh_per_month"] = sum(float(v["mwh_per_month"] or 0.0) for v in per.values())
    priced = [v["usd_per_month"] for v in per.values() if v["usd_per_month"] is not None]
    out["usd_per_month"] = sum(float(x) for x in priced if x is not None) if priced else None
    return out


def contract_use(plan: Plan, sc: Scenario) -> list[dict[str, Any]]:
    """Each contract's terms and this plan's use of its month's minimum: the usage of
    the pools it covers (``Scenario.contract_for``), billed at its discount or volume
    tiers (:func:`tokenfleet.plan.billing.contract_usage_usd`, the bill's formula)."""
    hours = sc.hours_per_month
    prepaid = {(s.accelerator, s.cloud, s.region) for s in sc.supply if s.prepaid}
    at_list: dict[str, float] = defaultdict(float)  # eligible usage at list price
    usage: dict[str, float] = defaultdict(float)  # what it is billed (discount, tiers)
    mw: dict[str, float] = defaultdict(float)
    pue = {r.name: r.pue for r in sc.regions}
    for u in plan.units:
        k = sc.contract_for(u.accelerator, u.cloud, u.region)
        if k is None:
            continue
        if (u.accelerator, u.cloud, u.region) not in prepaid:
            at_list[k.name] += u.usd_per_hour * hours
        mw[k.name] += u.watts * pue.get(u.region, 1.0) / 1e6
    out = []
    for k in sc.contracts:
        t = k.terms
        usage[k.name] = contract_usage_usd(at_list[k.name], t.discount, t.volume_tiers)
        minimum = k.committed_usd_per_month
        used = min(usage[k.name], minimum)
        total = k.total_usd or (sum(k.yearly_minimum_usd) if k.yearly_minimum_usd else
                                minimum * k.term_months)
        out.append({
            "name": k.name, "cloud": k.cloud, "term_months": k.term_months,
            "total_usd": total, "yearly_minimum_usd": k.yearly_minimum_usd, "year": k.year,
            "take_or_pay": k.take_or_pay, "discount": k.discount,
            "discount_tiers": [t.model_dump() for t in k.discount_tiers or []],
            "volume_tiers": [t.model_dump() for t in k.volume_tiers or []],
            "usage_at_list_usd_per_month": at_list[k.name],
            "accelerators": k.accelerators, "regions": k.regions,
            "minimum_usd_per_month": minimum,
            "usage_usd_per_month": usage[k.name],
            "used_usd_per_month": used,
            "used_fraction": used / minimum,
            "unused_usd_per_month": minimum - used if k.take_or_pay else 0.0,
            "power_cap_mw": k.power_mw, "power_mw": mw[k.name]})
    return out


def enrich(plan: Plan, sc: Scenario) -> None:
    plan.economics = plan_economics(plan)
    plan.energy = energy(plan, sc)
    plan.contracts = contract_use(plan, sc)
