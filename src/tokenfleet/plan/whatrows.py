"""Rows the what-ifs add to the fleet program: a floor on a vendor's share of a tier's
traffic (``policy.min_share``, ``plan --require``) and a fleet-wide power cap
(``max_power_mw``, ``plan --power-mw``).

Kept apart from :mod:`tokenfleet.plan.milp` so the what-ifs stay one call in
``formulate``; each row carries a name and family like every other row, so the
constraint pricing (:mod:`tokenfleet.plan.prices`) prices them too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.candidates import Candidate, CandidateSet
from tokenfleet.plan.scenario import Scenario

if TYPE_CHECKING:  # milp imports this module
    from tokenfleet.plan.milp import Program

MIN_SHARE = "min-share"
FLEET_POWER = "fleet-power"


def min_share_name(tier: str, vendor: str) -> str:
    return f"{MIN_SHARE} {tier}: {vendor}"


def contract_power_name(contract: str) -> str:
    return f"power contract {contract}"


def region_pue(sc: Scenario) -> dict[str, float]:
    return {r.name: r.pue for r in sc.regions}


def add_whatif_rows(p: Program, sc: Scenario, cs: CandidateSet, cands: Sequence[Candidate],
                    n: dict[str, int], x: dict[tuple[str, str], int],
                    drop: Collection[str]) -> None:
    """Append the min-share and fleet-power rows that ``sc`` asks for, minus ``drop``."""
    out_len = {(d.tier, d.bucket): d.output_len for d in cs.demands}
    tiers = {t.name for t in sc.tiers}
    by_id = {c.id: c for c in cands}
    for m in sc.policy.min_share:
        if m.tier not in tiers:
            raise TokenfleetError(f"policy.min_share: no tier '{m.tier}' (tiers: "
                                  f"{', '.join(sorted(tiers))})")
        if MIN_SHARE in drop:  # baselines drop every policy
            continue
        vendors = {c.vendor for c in cands if c.tier == m.tier}
        vendor = next((v for v in vendors if v.lower() == m.vendor.lower()), None)
        if vendor is None:
            raise TokenfleetError(f"policy.min_share: tier '{m.tier}' has no candidate pool "
                                  f"on vendor '{m.vendor}' (vendors: "
                                  f"{', '.join(sorted(vendors)) or 'none'})")
        name = min_share_name(m.tier, vendor)
        if name in drop:
            continue
        # sum over the tier's routed output tokens of (on vendor - fraction) >= 0
        coefs: dict[int, float] = defaultdict(float)
        for (cid, b), j in x.items():
            c = by_id[cid]
            if c.tier != m.tier or c.role == "prefill":  # tokens are made where decoded
                continue
            w = out_len[(c.tier, b)]
            coefs[j] += w * ((1.0 if c.vendor == vendor else 0.0) - m.min_fraction)
        p.row(name, MIN_SHARE, dict(coefs), lb=0.0,
              detail=f"≥ {m.min_fraction:.0%} of {m.tier}'s output tokens on {vendor}")
    for k in sc.contracts:
        name = contract_power_name(k.name)
        if k.power_mw is None or name in drop or "power" in drop:
            continue
        pue = region_pue(sc)
        members = [c for c in cands if sc.contract_for(c.accelerator.id, c.cloud, c.region)
                   is k]
        if members:
            p.row(name, "power", {n[c.id]: c.watts * pue.get(c.region, 1.0) for c in members},
                  ub=k.power_mw * 1e6, detail=f"cap {k.power_mw:g} MW on contract {k.name}")
    if sc.max_power_mw is not None and FLEET_POWER not in drop:
        pue = region_pue(sc)
        p.row(FLEET_POWER, FLEET_POWER,
              {n[c.id]: c.watts * pue.get(c.region, 1.0) for c in cands},
              ub=sc.max_power_mw * 1e6, detail=f"cap {sc.max_power_mw:g} MW over all regions")
