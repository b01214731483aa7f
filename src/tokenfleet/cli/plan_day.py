"""`tokenfleet plan --over-day`: the day-long plan on top of the peak-hour plan, its
simulated day, and their console tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from tokenfleet.catalog.loader import Catalog
    from tokenfleet.plan.candidates import CandidateSet
    from tokenfleet.plan.day_schema import DayPlan, DaySimulation
    from tokenfleet.plan.scenario import Scenario
    from tokenfleet.plan.schema import Plan

LAYER_NAMES = {"reserved": "reserved", "committed": "committed", "on_demand": "on-demand",
               "spot": "spot"}


DAY_ROUNDS = 4  # day plans simulated at most (re-sizing the pools that missed between)


def add_day(plan: Plan, sc: Scenario, cs: CandidateSet, base: Path, cat: Catalog,
            scenario: str, window_s: float, seed: int, time_limit_s: float,
            spot_loss: str = "expected") -> Plan:
    """Plan the day over the capacities the peak plan settled on (its verification's
    re-sizing), simulate it (``spot_loss``: expected or covered reclaims), and attach
    both as ``plan.day``. The day program may pick pools the peak plan's verification
    never replayed (spot chips, other pairs), so as that verification does: when a
    period misses, the pools that missed are re-sized and the day re-planned, up to
    DAY_ROUNDS plans; the first that meets its SLOs is kept, else the one closest to
    them, with its simulated day (which says it missed)."""
    from tokenfleet.plan.day import plan_day
    from tokenfleet.plan.planner import scaled
    from tokenfleet.sim.day import simulate_day

    scale = dict(plan.verification.resized) if plan.verification else {}
    loss: Literal["expected", "covered"] = "covered" if spot_loss == "covered" else "expected"
    by_day: dict[str, float] = {}
    best = None
    for rounds in range(1, DAY_ROUNDS + 1):
        ds = plan_day(sc, scaled(cs, scale), plan, base, cat, time_limit_s)
        shrink: dict[str, float] = {}
        sim = simulate_day(ds.plan, ds.period_plan, scenario, window_s, seed, loss,
                           shrink=shrink)
        ds.plan.simulation = sim
        if best is None or _shortfall(sim) < _shortfall(best[0].plan.simulation):
            best = (ds, rounds)
        if sim.met or rounds == DAY_ROUNDS or ds.plan.usd_per_month > plan.cost.usd_per_month:
            break  # met, out of rounds, or re-sizing made the day dearer than the peak
        for k, f in shrink.items():
            scale[k] = scale.get(k, 1.0) * f
            by_day[k] = by_day.get(k, 1.0) * f
    assert best is not None
    ds, kept = best
    if rounds > 1:
        ds.plan.solver_status += (f"; day plan {kept} of the {rounds} simulated (the one "
                                  "closest to its SLOs), re-sizing pools the simulated day "
                                  "found slower than modelled: " + ", ".join(
                                      f"{k} x{v:.2f}" for k, v in sorted(by_day.items())))
    plan.day = ds.plan
    return plan


def _shortfall(sim: DaySimulation | None) -> float:
    """How far a simulated day falls short of its SLO percentiles, summed (0 when met)."""
    if sim is None:
        return float("inf")
    return sum(max(c.target_ttft - (c.ttft_attainment or 0.0), 0.0)
               + max(c.target_tpot - (c.tpot_attainment or 0.0), 0.0)
               for p in sim.periods for c in p.tiers)


def _m(x: float) -> str:
    return f"${x:,.0f}"


def print_day(day: DayPlan, console: Console) -> None:
    used = [k for k in LAYER_NAMES if any(p.chips.get(k) for p in day.periods)]
    t = Table(title=f"Over the day: chips and $/hour per layer ({day.periods_per_day} "
                    f"periods of {day.period_h:g} h)")
    t.add_column("from")
    t.add_column("rate × peak", justify="right")
    for k in used:
        t.add_column(f"{LAYER_NAMES[k]} chips", justify="right")
    t.add_column("$/hour", justify="right")
    t.add_column("capacity / demand", justify="right")
    for p in day.periods:
        mult = sorted(set(p.multiplier.values()))
        ratio = min((p.capacity_requests_per_s.get(k, 0.0) / d for k, d in
                     p.demand_requests_per_s.items() if d > 0), default=0.0)
        t.add_row(p.start, "/".join(f"{m:.2f}" for m in mult),
                  *[str(p.chips.get(k, 0)) for k in used],
                  _m(sum(p.usd_per_hour.values())), f"≥ {ratio:.2f}")
    console.print(t)
    layers = ", ".join(f"{LAYER_NAMES[k]} {_m(v)}" for k, v in day.layer_usd_per_day.items()
                       if v)
    console.print(f"  day plan: {_m(day.usd_per_month)}/month ({_m(day.usd_per_day)}/day; "
                  f"list spend per day: {layers or 'none'}) vs the peak-hour plan held all "
                  f"day {_m(day.peak_plan_usd_per_month)}/month: saves "
                  f"{_m(day.saving_usd_per_month)}/month "
                  f"({day.saving_usd_per_month / (day.peak_plan_usd_per_month or 1):.0%}); "
                  f"solver: {day.solver_status} in {day.seconds:.1f} s")
    console.print(f"  spot rule: {day.spot_rule}")
    for a in day.assumptions:
        console.print(f"  assumption: {a}")
    if day.drops:
        console.print(f"  solved without: {', '.join(day.drops)}")
    if day.simulation is not None:
        _print_sim(day, console)


def _print_sim(day: DayPlan, console: Console) -> None:
    s = day.simulation
    assert s is not None
    t = Table(title="Simulated day: " + ("every tier meets its SLO percentiles" if s.met
                                         else "SLO MISSED"))
    for col in ("period", "why", "spot replicas", "reclaimed", "tier", "requests",
                "within TTFT", "within TPOT"):
        t.add_column(col, justify="left" if col in ("period", "why", "tier") else "right")
    for p in s.periods:
        for i, c in enumerate(p.tiers):
            first = i == 0
            t.add_row(p.start if first else "", p.why if first else "",
                      str(p.spot_replicas) if first else "", str(p.spot_lost) if first else "",
                      c.tier, f"{c.requests:,}",
                      _pct(c.ttft_attainment, c.target_ttft),
                      _pct(c.tpot_attainment, c.target_tpot))
    console.print(t)
    console.print("  day (every simulated request): " + "; ".join(
        f"{k} TTFT {_pct(v.get('ttft'))}, TPOT {_pct(v.get('tpot'))}"
        for k, v in s.tiers.items()))
    console.print(f"  method: {s.method}")


def _pct(x: float | None, target: float | None = None) -> str:
    if x is None:
        return "—"
    mark = "" if target is None or x >= target - 1e-9 else " ✗"
    return f"{x:.1%}" + (f" (≥ {target:.0%})" if target is not None else "") + mark
