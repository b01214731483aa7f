"""The bill of a fleet over a period: one formula for the plan's $/month and the
simulator's cost of a replayed window.

What is paid: every committed dollar and every prepaid capacity block, whatever is used
(a lab pays for reserved chips and commitments during an outage too), plus metered
usage beyond the commitment of its cloud. Metered usage counts every planned replica
for the whole period, failed or not: capacity a plan rents does not leave the bill when
a vendor has an outage. Units: USD over one period (a month for the plan, the replayed
window for a simulation).
"""

from __future__ import annotations

from collections.abc import Mapping
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
