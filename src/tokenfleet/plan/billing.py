"""The bill of a fleet over a period: one formula for the plan's $/month and the
simulator's cost of a replayed window.

What is paid: every committed dollar and every prepaid capacity block, whatever is used
(a lab pays for reserved chips and commitments during an outage too), plus metered
usage beyond the commitment of its cloud. Metered usage counts every planned replica
for the whole period, failed or not: capacity a plan rents does not leave the bill when
a vendor has an outage. Units: USD over one period (a month for the plan, the replayed
window for a simulation).

Usage a contract covers is billed at its discount, or by its volume tiers, each tier's
rate on the part of the month's usage within it (:func:`contract_usage_usd`); that net
amount draws down the contract's minimum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Bill:
    """What one period costs, USD."""

    usd: float  # the bill: fixed (commitments + prepaid) + on-demand beyond commitments
    fixed_usd: float  # commitments and prepaid blocks, paid whatever is used
    committed_used_usd: float  # the part of the fixed spend that usage drew down
    on_demand_usd: float  # metered usage beyond the commitments
    fleet_usd: float  # list value of every chip-hour of the fleet


def bill_usd(metered_usd_by_cloud: Mapping[str, float],
             committed_usd_by_cloud: Mapping[str, float],
             prepaid_fixed_usd: float = 0.0, prepaid_used_usd: float = 0.0) -> Bill:
    """The bill of a period from metered usage per account (on-demand and reserved
    chip-hours at their price: per cloud, or per contract where contracts name what they
    cover), commitments per account and prepaid capacity blocks (``prepaid_fixed_usd``
    paid in full; ``prepaid_used_usd`` of it used)."""
    committed = sum(committed_usd_by_cloud.values())
    on_demand = sum(max(u - committed_usd_by_cloud.get(cl, 0.0), 0.0)
                    for cl, u in metered_usd_by_cloud.items())
    used = sum(min(metered_usd_by_cloud.get(cl, 0.0), v)
               for cl, v in committed_usd_by_cloud.items()) + prepaid_used_usd
    fixed = committed + prepaid_fixed_usd
    return Bill(usd=fixed + on_demand, fixed_usd=fixed, committed_used_usd=used,
                on_demand_usd=on_demand,
                fleet_usd=sum(metered_usd_by_cloud.values()) + prepaid_used_usd)


def period_fraction(seconds: float, hours_per_month: float) -> float:
    """A window as a fraction of the month commitments are quoted in."""
    return seconds / (hours_per_month * SECONDS_PER_HOUR)


@dataclass(frozen=True)
class Terms:
    """What billing needs of a contract (a scenario's ``Contract``, or a plan's
    ``ContractLimit``): what usage it covers and at what rates."""

    name: str
    cloud: str
    fixed_usd_per_month: float  # take-or-pay minimum (0 without one)
    discount: float = 0.0
    volume_tiers: tuple[tuple[float, float], ...] = ()  # (above USD/month at list, discount)
    accelerators: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None

    def eligible(self, accelerator: str, cloud: str, region: str) -> bool:
        return (cloud == self.cloud
                and (self.accelerators is None or accelerator in self.accelerators)
                and (self.regions is None or region in self.regions))


def contract_usage_usd(list_usd: float, discount: float,
                       volume_tiers: Sequence[tuple[float, float]] = (),
                       period_fraction: float = 1.0) -> float:
    """What a contract's eligible usage worth ``list_usd`` at list price is billed:
    ``discount`` off list up to the first tier's threshold, then each tier's discount on
    the part between its threshold and the next. Thresholds are per month, pro rata for
    a shorter period (a replayed window)."""
    edges = [0.0, *(a * period_fraction for a, _ in volume_tiers), math.inf]
    rates = [discount, *(d for _, d in volume_tiers)]
    return sum(max(min(list_usd, hi) - lo, 0.0) * (1.0 - r)
               for lo, hi, r in zip(edges, edges[1:], rates, strict=False))


def metered_by_contract(usage: Iterable[tuple[str, str, str, float]], terms: Sequence[Terms],
                        period_fraction: float = 1.0) -> dict[str, float]:
    """Metered usage per account, for :func:`bill_usd`: (accelerator, cloud, region, USD at
    list) each drawn on the first contract it is eligible for, billed by
    :func:`contract_usage_usd`; usage no contract covers at list under ``""``."""
    list_usd: dict[str, float] = {}
    for accelerator, cloud, region, usd in usage:
        k = next((t for t in terms if t.eligible(accelerator, cloud, region)), None)
        key = k.name if k else ""
        list_usd[key] = list_usd.get(key, 0.0) + usd
    by_name = {t.name: t for t in terms}
    return {key: usd if key not in by_name else contract_usage_usd(
        usd, by_name[key].discount, by_name[key].volume_tiers, period_fraction)
        for key, usd in list_usd.items()}
