"""What the plan's bill depends on, by re-solving the same program with one input moved:

* a cost–assurance frontier: the plan re-solved at several confidence levels (each pool
  counted at that lower quantile of its capacity estimate, :mod:`tokenfleet.plan.risk`),
  with the bill and the chance the worst tier's pools cover its planned peak;
* sensitivities: the bill with every chip's list price, every tier's traffic, or every
  estimate's uncertainty band moved down and up, everything else as planned.

Each point is one MILP solve on the candidate set the plan was solved on (capacities
and demands rescaled exactly; the performance model is not re-run), so the numbers are
the planner's own. Commitments and prepaid blocks stay as signed: a price change moves
only what is metered.

Library code: typed output stored in ``plan.json`` (``Plan.tradeoffs``); the plan report
draws it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tokenfleet.plan.candidates import CandidateSet
    from tokenfleet.plan.scenario import Scenario
    from tokenfleet.plan.schema import Cost

CONFIDENCES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
PRICE_FACTORS = (0.8, 1.2)
GROWTH_FACTORS = (0.8, 1.25)
BAND_FACTORS = (0.5, 1.5)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrontierPoint(_Model):
    confidence: float = Field(description="each pool counted at this lower quantile of "
                                          "its capacity estimate")
    usd_per_month: float | None = Field(description="the bill re-solved at it; None: "
                                                    "infeasible")
    fleet_usd_per_month: float | None = Field(
        description="its chips at list price (what the fleet uses of a commitment)")
    worst_tier_holds: float | None = Field(
        description="chance the worst tier's pools all cover its planned peak "
                    "(one model error per chip family, tokenfleet.plan.risk)")
    worst_tier: str | None
    efficient: bool = Field(description="no other point is cheaper and at least as sure")


class SensitivityPoint(_Model):
    input: str = Field(description="price | growth | uncertainty")
    factor: float = Field(description="multiple of the planned value")
    usd_per_month: float | None = Field(description="the bill re-solved; None: infeasible")
    fleet_usd_per_month: float | None = Field(description="its chips at list price")
    change: float | None = Field(description="bill relative to the plan's bill")


class Tradeoffs(_Model):
    base_usd_per_month: float
    base_fleet_usd_per_month: float = Field(description="the plan's chips at list price")
    confidence: float | None = Field(description="the plan's own confidence (None when "
                                                 "the scenario sets a fixed derate)")
    frontier: list[FrontierPoint]
    sensitivity: list[SensitivityPoint]
    solves: int
    notes: list[str] = []


def _priced(cs: CandidateSet, factor: float) -> CandidateSet:
    return dataclasses.replace(cs, candidates=[
        dataclasses.replace(c, usd_per_chip_hour=c.usd_per_chip_hour * factor)
        for c in cs.candidates])


def _recapacity(cs: CandidateSet, factor_of: dict[str, float]) -> CandidateSet:
    return dataclasses.replace(cs, candidates=[
        dataclasses.replace(c, capacity={b: v * factor_of[c.id] for b, v in c.capacity.items()})
        for c in cs.candidates])


def _at_confidence(sc: Scenario, cs: CandidateSet, q: float) -> CandidateSet:
    """Capacities counted at the ``q`` lower quantile instead of the scenario's."""
    from tokenfleet.plan.candidates import risk_factor
    from tokenfleet.plan.risk import confidence_factor

    return _recapacity(cs, {c.id: confidence_factor(c.uncertainty, q)
                            / risk_factor(sc, c.uncertainty) for c in cs.candidates})


def _band_scaled(sc: Scenario, cs: CandidateSet, k: float) -> CandidateSet:
    """Capacities as if every estimate's uncertainty band were ``k`` times as wide."""
    from tokenfleet.plan.candidates import risk_factor

    out = []
    for c in cs.candidates:
        f = risk_factor(sc, c.uncertainty * k) / risk_factor(sc, c.uncertainty)
        out.append(dataclasses.replace(c, uncertainty=c.uncertainty * k,
                                       capacity={b: v * f for b, v in c.capacity.items()}))
    return dataclasses.replace(cs, candidates=out)


def mark_efficient(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """Flag the points no other feasible point beats on both cost and assurance."""
    ok = [p for p in points if p.usd_per_month is not None and p.worst_tier_holds is not None]
    out = []
    for p in points:
        dominated = p not in ok or any(
            o is not p and o.usd_per_month is not None and p.usd_per_month is not None
            and o.worst_tier_holds is not None and p.worst_tier_holds is not None
            and o.usd_per_month <= p.usd_per_month and o.worst_tier_holds >= p.worst_tier_holds
            and (o.usd_per_month < p.usd_per_month or o.worst_tier_holds > p.worst_tier_holds)
            for o in ok)
        out.append(p.model_copy(update={"efficient": not dominated}))
    return out


def plan_tradeoffs(sc: Scenario, cs: CandidateSet, base: Cost,
                   start: Mapping[str, float] | None = None) -> Tradeoffs:
    """The frontier and sensitivities of the plan solved on ``cs`` whose bill is
    ``base`` (see the module); ``start``: that plan's solution by variable name, where
    each re-solve starts (a price move keeps it feasible, so HiGHS begins with an
    incumbent; where a move makes it infeasible HiGHS drops it)."""
    from tokenfleet.plan.milp import solve_fleet
    from tokenfleet.plan.planner import _risk, chosen_units, cost_breakdown
    from tokenfleet.plan.whatif import scaled

    def cost(s: Scenario, c: CandidateSet) -> tuple[Cost | None, Any]:
        f, sol = solve_fleet(s, c, start=start)
        return (cost_breakdown(s, chosen_units(f, sol)), (f, sol)) if sol.ok else (None, None)

    # every solve is independent: in threads (HiGHS releases the GIL), on every core
    qs = [] if sc.derate is not None else list(CONFIDENCES)
    moves = [(name, k, move(k)) for name, factors, move in (
        ("price", PRICE_FACTORS, lambda k: _priced(cs, k)),
        ("growth", GROWTH_FACTORS, lambda k: scaled(cs, k)),
        ("uncertainty", BAND_FACTORS, lambda k: _band_scaled(sc, cs, k))) for k in factors]
    jobs = [(sc.model_copy(update={"confidence": q}), _at_confidence(sc, cs, q)) for q in qs]
    jobs += [(sc, c) for _, _, c in moves]
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1, 4))) as pool:
        results = list(pool.map(lambda j: cost(*j), jobs))
    solves = len(jobs)
    notes = []
    frontier = []
    if sc.derate is not None:
        notes.append("the scenario sets a fixed derate, not a confidence: no frontier")
    else:
        for q, (s, c), (bill, fs) in zip(qs, jobs, results, strict=False):
            worst: tuple[float | None, str | None] = (None, None)
            if fs is not None:
                f, sol = fs
                risk = _risk(s, c, chosen_units(f, sol), f, sol.x, q)
                if risk.tiers:
                    name = min(risk.tiers, key=lambda t: risk.tiers[t])
                    worst = (risk.tiers[name], name)
            frontier.append(FrontierPoint(confidence=q,
                                          usd_per_month=bill and bill.usd_per_month,
                                          fleet_usd_per_month=bill and bill.fleet_usd_per_month,
                                          worst_tier_holds=worst[0], worst_tier=worst[1],
                                          efficient=False))
        frontier = mark_efficient(frontier)
    sens = []
    for (name, k, _), (bill, _) in zip(moves, results[len(qs):], strict=True):
        sens.append(SensitivityPoint(
            input=name, factor=k, usd_per_month=bill and bill.usd_per_month,
            fleet_usd_per_month=bill and bill.fleet_usd_per_month,
            change=None if bill is None or not base.usd_per_month
            else bill.usd_per_month / base.usd_per_month - 1))
    from tokenfleet.plan.candidates import DEFAULT_CONFIDENCE

    return Tradeoffs(base_usd_per_month=base.usd_per_month,
                     base_fleet_usd_per_month=base.fleet_usd_per_month,
                     confidence=None if sc.derate is not None else
                     sc.confidence if sc.confidence is not None else DEFAULT_CONFIDENCE,
                     frontier=frontier, sensitivity=sens, solves=solves, notes=notes)
