"""A day-long plan: a reserved/committed base plus on-demand and spot capacity per
period of the day, one integer program over all periods (HiGHS).

The peak-hour plan holds its peak capacity all day. Traffic swings 2-4x over a day
(:mod:`tokenfleet.workload.day`), so a lab buys a base that is paid every hour
(reserved chips, prepaid blocks, and usage that draws down a take-or-pay commitment)
and rents the rest by the period. Layers of a candidate pool (the peak-hour
candidates: the same per-replica capacities, no new performance-model calls):

* ``reserved``: supply with ``price_kind: reserved`` or ``prepaid``: one replica count
  for the whole day, billed every hour;
* ``committed``: on-demand supply under a contract: replicas per period, paid from the
  commitment (the take-or-pay minimum is billed whatever is used);
* ``on_demand``: other on-demand supply: replicas per period at its price;
* ``spot``: where the cloud sells the chip as spot (plan/data/spot.yaml, overridable
  under ``day.spot_markets``): replicas per period at the spot price.

Spot rule (robust, not expected): in every period each pool must carry its routed load
at the SLO percentile with ``z`` of its spot replicas reclaimed, where ``z`` is the
period's expected losses (replicas x its cloud's interruption rate per hour) rounded up
to whole replicas, and at least one as soon as any spot replica is held
(:func:`_reclaim_var`: an integer ``z >= rate * spot`` and ``z >= spot / M``; the
pool's capacity counts ``held - z``). It holds for every spot pool at once and in the
demand rows and the N-1 rows alike; so a reclaim of one whole replica from each spot
pool, or of its expected share rounded either way, leaves every pool within its SLO
capacity, however few spot replicas a pool holds (the (1 - rate) discount it replaces
was an expectation: with two spot replicas one reclaim takes half). More reclaims than
``z`` in one period are not covered; the plan states the largest chance of that
(:func:`uncovered_chance`). The simulated day (:mod:`tokenfleet.sim.day`) replays the
expected share, or exactly ``z`` per pool (``spot_loss="covered"``).

Each period's demand is the peak-hour demand (plus headroom) times the tier's
multiplier, and every constraint of the peak-hour program holds in every period:
demand, capacity, disaggregated pairs (a prefill half prefills what its decode half
decodes), vendor share and N-1 (the peak program's own row builders,
:mod:`tokenfleet.plan.milp`, applied per period), supply and power (on all chips held,
spot included), and commitments over the whole month (min-share floors are left out
and listed in ``drops``). The program is solved by period (:func:`_solve`: the whole
day's LP relaxation sets the reserved counts and the price of a committed dollar, then
each period is its own MILP); the peak-hour plan held all day is one feasible day plan,
and when the decomposed plan is not cheaper than it, the whole-day MILP is solved
starting from it, so the day plan never costs more.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from functools import cache
from pathlib import Path

import highspy
import numpy as np
import yaml

from tokenfleet.catalog.loader import Catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.billing import bill_usd
from tokenfleet.plan.candidates import Candidate, CandidateSet
from tokenfleet.plan.day_schema import DayPeriod, DayPlan, DayPool, Layer
from tokenfleet.plan.milp import (
    Program,
    Solution,
    _Build,
    _capacity_rows,
    _demand_rows,
    _highs_model,
    _n_minus_1_rows,
    _pair_rows,
    _vendor_share_rows,
    complete_pairs,
    fixed_monthly_cost,
    served_by,
)
from tokenfleet.plan.scenario import Scenario, SpotMarket
from tokenfleet.plan.schema import BucketSplit, Plan, PlanUnit
from tokenfleet.plan.whatrows import add_whatif_rows
from tokenfleet.workload.day import DayProfile, bundled_profiles, resolve_profile

DEFAULT_PROFILE = "weekday"
SPOT_SUFFIX = "#spot"
_SPOT_DATA = Path(__file__).parent / "data" / "spot.yaml"
EPS = 1e-6  # tie-breaker: among equal bills, fewer chip-hours


@cache
def bundled_spot_markets() -> dict[str, SpotMarket]:
    data = yaml.safe_load(_SPOT_DATA.read_text())
    return {cloud: SpotMarket.model_validate({k: v for k, v in m.items() if k != "source"})
            for cloud, m in data.items()}


def spot_market(sc: Scenario, cloud: str) -> SpotMarket | None:
    """The cloud's spot market: the bundled one with the scenario's overrides on top."""
    base = bundled_spot_markets().get(cloud)
    over = sc.day.spot_markets.get(cloud)
    if base is None and over is None:
        return None
    merged = (base.model_dump() if base else {}) | (
        over.model_dump(exclude_none=True) if over else {})
    m = SpotMarket.model_validate(merged)
    if m.interruption_per_hour is None or m.price_fraction is None:
        raise TokenfleetError(f"day.spot_markets.{cloud}: give interruption_per_hour and "
                              "price_fraction (no bundled spot market for this cloud)")
    return m


@dataclass
class _Offer:
    """How one candidate pool can be held: its layer, price and spot terms."""

    cand: Candidate
    layer: Layer
    contract: str | None  # the commitment its spend draws down
    spot_usd_per_chip_hour: float | None = None
    interruption_per_hour: float = 0.0


def offers(sc: Scenario, cands: list[Candidate], catalog: Catalog) -> list[_Offer]:
    """Each candidate's base or hourly layer, plus its spot layer where sold."""
    out = []
    for c in cands:
        s = sc.supply[c.supply_index]
        k = sc.contract_for(c.accelerator.id, c.cloud, c.region)
        if s.prepaid or s.price_kind == "reserved":
            layer: Layer = "reserved"
        elif k is not None:
            layer = "committed"
        else:
            layer = "on_demand"
        out.append(_Offer(c, layer, k.name if k and not s.prepaid else None))
        # a pair's halves are held on-demand/reserved only: the simulator composes a pair
        # from one prefill and one decode unit, so a pair has no spot layer
        m = spot_market(sc, c.cloud) if sc.day.spot and c.pair is None else None
        if m is None or (m.accelerators is not None and c.accelerator.id not in m.accelerators):
            continue
        listed = c.accelerator.price(c.cloud, "spot")
        od = c.accelerator.price(c.cloud, "on_demand")
        price = (listed.usd_per_hour if listed else
                 (od.usd_per_hour if od else c.usd_per_chip_hour) * (m.price_fraction or 1.0))
        out.append(_Offer(c, "spot", None, price, m.interruption_per_hour or 0.0))
    del catalog
    return out


def day_profiles(sc: Scenario, base: Path) -> dict[str, DayProfile]:
    """Tier -> its day profile (the bundled weekday assumption where none is given);
    every tier must use the same number of periods."""
    out = {}
    for t in sc.tiers:
        spec = t.traffic.day_profile
        out[t.name] = (bundled_profiles()[DEFAULT_PROFILE] if spec is None else
                       resolve_profile(spec, base, f"tiers.{t.name}.traffic.day_profile"))
    sizes = {len(p.multipliers) for p in out.values()}
    if len(sizes) > 1:
        raise TokenfleetError("day_profile: every tier needs the same number of periods; "
                              + ", ".join(f"{k}: {len(p.multipliers)}" for k, p in out.items()))
    return out


@dataclass
class _DayVars:
    p: Program
    periods: int
    base: dict[int, int] = field(default_factory=dict)  # offer index -> var (reserved)
    hourly: dict[tuple[int, int], int] = field(default_factory=dict)  # (offer, period) -> var
    od: dict[str, int] = field(default_factory=dict)
    x: list[dict[tuple[str, str], int]] = field(default_factory=list)  # routing per period

    def held(self, i: int, h: int) -> int:
        return self.base[i] if i in self.base else self.hourly[(i, h)]


def _monthly_usd(sc: Scenario, o: _Offer, period_h: float, whole_day: bool) -> float:
    """USD per month of one replica held for one period (or all day)."""
    price = o.spot_usd_per_chip_hour if o.layer == "spot" else o.cand.usd_per_chip_hour
    assert price is not None
    hours = sc.hours_per_month if whole_day else period_h * sc.hours_per_month / 24.0
    return price * o.cand.count * hours


def _variables(sc: Scenario, offs: list[_Offer], hours: list[int], period_h: float,
               fixed_base: dict[int, int] | None = None,
               contract_price: dict[str, float] | None = None) -> _DayVars:
    """Replica counts per layer (with their monthly cost) for ``hours``. A period's own
    program (the decomposition in :func:`_solve`) gets the reserved counts fixed and a
    price per committed dollar instead of the commitment rows."""
    p = Program()
    v = _DayVars(p, len(hours))
    for i, o in enumerate(offs):
        s = sc.supply[o.cand.supply_index]
        cap = s.max_chips // o.cand.count
        if o.layer == "reserved":
            usd = 0.0 if s.prepaid else _monthly_usd(sc, o, period_h, True)
            lo = hi = fixed_base[i] if fixed_base is not None else None
            v.base[i] = p.var(f"base[{o.cand.id}]", (0.0 if o.contract else usd) + EPS * usd,
                              lo or 0, cap if hi is None else hi, integer=True)
            continue
        usd = _monthly_usd(sc, o, period_h, False)
        if o.contract is None:
            obj = usd
        elif contract_price is None:
            obj = 0.0  # paid through the commitment row
        else:
            obj = contract_price[o.contract] * usd * (1 - _discount(sc, o.contract))
        tag = o.cand.id + (SPOT_SUFFIX if o.layer == "spot" else "")
        for h in hours:
            v.hourly[(i, h)] = p.var(f"{o.layer}[{h}][{tag}]", obj + EPS * usd, 0, cap,
                                     integer=True)
    if contract_price is None:
        for k in sc.contracts:
            v.od[k.name] = p.var(f"od[{k.name}]", 1.0)
        fixed = fixed_monthly_cost(sc)
        if fixed:
            p.var("committed", fixed, 1.0, 1.0)
    return v


def _discount(sc: Scenario, contract: str) -> float:
    return next(k.discount for k in sc.contracts if k.name == contract)


def _period_demand(cs: CandidateSet, mult: dict[str, float]) -> CandidateSet:
    return dc_replace(cs, demands=[dc_replace(d, rate_per_s=d.rate_per_s * mult[d.tier])
                                   for d in cs.demands])


def _period_rows(sc: Scenario, cs: CandidateSet, offs: list[_Offer], v: _DayVars, h: int,
                 mult: dict[str, float], drop: frozenset[str]) -> tuple[dict, dict]:
    """Period ``h``: the peak program's demand, capacity, pair, vendor-share, N-1 and
    what-if rows over this period's demand, with each pool's replicas ``n`` the capacity its
    layers hold (a spot layer less its reclaims, :func:`_reclaim_var`); supply and power
    over every chip held."""
    p = v.p
    cands = cs.candidates
    n = {c.id: p.var(f"n[{h}][{c.id}]") for c in cands}
    x = {(c.id, b): p.var(f"x[{h}][{c.id},{b}]") for c in cands for b in c.capacity}
    for c in cands:
        coefs = {n[c.id]: 1.0}
        for i, o in enumerate(offs):
            if o.cand is c:
                coefs[v.held(i, h)] = -1.0
                if o.layer == "spot":
                    coefs[_reclaim_var(p, o, v.held(i, h), h)] = 1.0
        p.row(f"[{h}] held {c.id}", "held", coefs, 0.0, 0.0)
    b = _Build(sc, _period_demand(cs, mult), cands, p, n, x, v.od, drop)
    first = len(p.rows)
    _demand_rows(b)
    _capacity_rows(b)
    # a pair's prefill half prefills what its decode half decodes: without this row the
    # prefill half's routed rate is free (0), so its capacity never binds and a period
    # holds one prefill replica for any load (the simulated day then queues there)
    _pair_rows(b)
    _vendor_share_rows(b)
    _n_minus_1_rows(b, None, ())
    add_whatif_rows(p, sc, b.cs, cands, n, x, drop | {"fleet-power"})
    for r in p.rows[first:]:
        r.name = f"[{h}] {r.name}"
    _chip_rows(sc, offs, v, h)
    return n, x


def _reclaim_var(p: Program, o: _Offer, held: int, h: int) -> int:
    """Spot replicas of ``o`` counted as reclaimed in period ``h``: an integer ``z`` with
    ``z >= rate * held`` (the period's expected losses, rounded up to whole replicas by
    integrality) and ``z >= held / M`` (M the layer's replica cap: at least one whole
    replica as soon as any is held). The pool's capacity rows then see ``held - z``
    spot replicas, so the routed load still fits with any ``z`` of them gone."""
    big_m = max(p.upper[held], 1.0)
    z = p.var(f"reclaim[{h}][{o.cand.id}{SPOT_SUFFIX}]", 0.0, 0, big_m, integer=True)
    p.row(f"[{h}] reclaim rate {o.cand.id}", "spot", {z: 1.0, held: -o.interruption_per_hour},
          lb=0.0)
    p.row(f"[{h}] reclaim one {o.cand.id}", "spot", {z: 1.0, held: -1.0 / big_m}, lb=0.0)
    return z


def reclaim_covered(replicas: int, interruption_per_hour: float) -> int:
    """Spot replicas a pool of ``replicas`` is planned to lose in a period and still
    carry its load: the expected losses rounded up, at least one (0 when none held);
    the least ``z`` of :func:`_reclaim_var`."""
    if replicas <= 0:
        return 0
    return min(replicas, max(1, math.ceil(replicas * interruption_per_hour - 1e-6)))


def uncovered_chance(replicas: int, interruption_per_hour: float, period_h: float) -> float:
    """Chance that more than :func:`reclaim_covered` of ``replicas`` spot replicas are
    reclaimed within one period: each independently with probability
    1 - (1 - rate)^period_h (a Binomial tail)."""
    k = reclaim_covered(replicas, interruption_per_hour)
    q = 1.0 - (1.0 - interruption_per_hour) ** period_h
    return max(0.0, 1.0 - sum(math.comb(replicas, j) * q**j * (1 - q) ** (replicas - j)
                              for j in range(k + 1)))


def _chip_rows(sc: Scenario, offs: list[_Offer], v: _DayVars, h: int) -> None:
    """Supply caps and power caps (per region, fleet) over every chip held in period h."""
    by_supply: dict[int, dict[int, float]] = defaultdict(dict)
    by_region: dict[str, dict[int, float]] = defaultdict(dict)
    fleet: dict[int, float] = {}
    pue = {r.name: r.pue for r in sc.regions}
    for i, o in enumerate(offs):
        j = v.held(i, h)
        by_supply[o.cand.supply_index][j] = float(o.cand.count)
        w = o.cand.watts * pue.get(o.cand.region, 1.0)
        by_region[o.cand.region][j] = w
        fleet[j] = w
    for si, coefs in by_supply.items():
        s = sc.supply[si]
        v.p.row(f"[{h}] supply {s.accelerator}@{s.cloud}/{s.region}", "supply", coefs,
                ub=s.max_chips)
    for r in sc.regions:
        if r.power_mw is not None and by_region.get(r.name):
            v.p.row(f"[{h}] power {r.name}", "power", by_region[r.name], ub=r.power_mw * 1e6)
    if sc.max_power_mw is not None:
        v.p.row(f"[{h}] fleet power", "fleet-power", fleet, ub=sc.max_power_mw * 1e6)


def _contract_rows(sc: Scenario, offs: list[_Offer], v: _DayVars, period_h: float,
                   hours: list[int]) -> None:
    """A month of usage under each commitment, beyond it paid as ``od``."""
    for k in sc.contracts:
        coefs: dict[int, float] = {v.od[k.name]: -1.0}
        for i, o in enumerate(offs):
            if o.contract != k.name:
                continue
            if i in v.base:
                coefs[v.base[i]] = _monthly_usd(sc, o, period_h, True) * (1 - k.discount)
            else:
                for h in hours:
                    coefs[v.hourly[(i, h)]] = (_monthly_usd(sc, o, period_h, False)
                                               * (1 - k.discount))
        v.p.row(f"contract {k.name}", "contract", coefs, ub=k.fixed_usd_per_month)


def _peak_start(plan: Plan, offs: list[_Offer], v: _DayVars) -> dict[str, float]:
    """The peak-hour plan held all day, as a starting point (integer columns only;
    HiGHS completes the routing)."""
    reps = {u.pool: u.replicas for u in plan.units}
    start: dict[str, float] = {}
    for i, o in enumerate(offs):
        if o.layer == "spot":
            continue
        r = float(reps.get(o.cand.id, 0))
        if i in v.base:
            start[v.p.names[v.base[i]]] = r
        else:
            for h in range(v.periods):
                start[v.p.names[v.hourly[(i, h)]]] = r
    return start


@dataclass
class DaySolution:
    """The day plan, and each period's fleet as a :class:`Plan` the simulator replays."""

    plan: DayPlan
    sc: Scenario
    cs: CandidateSet
    offs: list[_Offer]
    v: _DayVars
    sol: Solution
    peak: Plan

    def period_plan(self, h: int) -> Plan:
        return period_plan(self, h)


def plan_day(sc: Scenario, cs: CandidateSet, peak: Plan, base: Path, catalog: Catalog,
             time_limit_s: float | None = None) -> DaySolution:
    """The cheapest day: one MILP over every period of the tiers' day profiles."""
    profiles = day_profiles(sc, base)
    periods = len(next(iter(profiles.values())).multipliers)
    period_h = 24.0 / periods
    # whole pairs only, as the peak program builds them (a lone half cannot serve)
    cs = dc_replace(cs, candidates=complete_pairs(cs.candidates))
    offs = offers(sc, cs.candidates, catalog)
    if not sc.day.on_demand:
        for o in offs:
            if o.layer == "on_demand":
                o.layer = "reserved"  # held all day at its price
    drops = ["min-share"] if sc.policy.min_share else []
    mults = [{t: profiles[t].multipliers[h] for t in profiles} for h in range(periods)]
    spec = _Spec(sc, cs, offs, mults, period_h,
                 frozenset({"min-share"} if drops else set()))
    v = spec.build(list(range(periods)))
    sol = _solve(spec, v, time_limit_s or sc.time_limit_s, peak)
    if not sol.ok:
        raise TokenfleetError(f"scenario '{sc.name}': no day plan ({sol.message}); the "
                              "peak-hour plan held all day should be one: report this")
    return DaySolution(_assemble(sc, cs, offs, v, sol, profiles, mults, peak, drops),
                       sc, cs, offs, v, sol, peak)


@dataclass
class _Spec:
    """What a day program is built from; :meth:`build` makes the whole day's program
    or one period's."""

    sc: Scenario
    cs: CandidateSet
    offs: list[_Offer]
    mults: list[dict[str, float]]
    period_h: float
    drop: frozenset[str]

    def build(self, hours: list[int], fixed_base: dict[int, int] | None = None,
              contract_price: dict[str, float] | None = None) -> _DayVars:
        v = _variables(self.sc, self.offs, hours, self.period_h, fixed_base, contract_price)
        for h in hours:
            v.x.append(_period_rows(self.sc, self.cs, self.offs, v, h, self.mults[h],
                                    self.drop)[1])
        if contract_price is None:
            _contract_rows(self.sc, self.offs, v, self.period_h, hours)
        return v


def _solve(spec: _Spec, v: _DayVars, limit_s: float, peak: Plan) -> Solution:
    """The day program, decomposed by period.

    Periods are tied together only by the reserved counts (held all day) and the
    commitments (a month of usage). So: solve the whole day's LP relaxation (its value
    is a lower bound on the day's bill); fix each reserved count at its LP value
    rounded up, price a committed dollar at the LP's dual of its commitment row (0
    while the commitment has room, 1 once usage spills past it); then solve each
    period's own MILP (the peak program's size). Their union is a feasible day plan;
    its gap is measured against the LP bound. When that fails, or does not beat the
    peak-hour plan held all day, the whole-day MILP is solved from the better start."""
    t0 = time.perf_counter()
    p = v.p
    a = p.matrix()
    cost = np.asarray(p.cost, float)
    h = _highs_model(p, a, None)
    h.setOptionValue("time_limit", limit_s)
    h.run()
    x = None
    if h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        bound = float(h.getInfo().objective_function_value)
        x = _decomposed(spec, v, np.asarray(h.getSolution().col_value),
                        np.asarray(h.getSolution().row_dual), t0 + limit_s)
    peak_start = _peak_start(peak, spec.offs, v)
    peak_usd = sum(cost[j] * peak_start.get(nm, 1.0 if nm == "committed" else 0.0)
                   for j, nm in enumerate(p.names))
    if x is None or float(cost @ x) > peak_usd:
        sol = p.solve(spec.sc.mip_gap, max(limit_s - (time.perf_counter() - t0), 1.0),
                      start_by_name=peak_start)
        sol.seconds = time.perf_counter() - t0
        return sol
    obj = float(cost @ x)
    gap = max(obj - bound, 0.0) / obj if obj else 0.0
    return Solution(status=0 if gap <= spec.sc.mip_gap else 1,
                    message=f"decomposed by period, {gap:.2%} above the day's LP bound",
                    x=x, objective=obj, gap=gap, seconds=time.perf_counter() - t0,
                    activity=a @ x, bound=bound)


def _decomposed(spec: _Spec, v: _DayVars, x_lp: np.ndarray, duals: np.ndarray,
                deadline: float) -> np.ndarray | None:
    """A whole-day point from one MILP per period (see :func:`_solve`), or None."""
    p = v.p
    fixed = {i: int(math.ceil(x_lp[j] - 1e-6)) for i, j in v.base.items()}
    price = {}
    for r, dual in zip(p.rows, duals, strict=True):
        if r.family == "contract":
            price[r.name.removeprefix("contract ")] = min(max(abs(float(dual)), 0.0), 1.0)
    index = {nm: j for j, nm in enumerate(p.names)}
    x = np.zeros(len(p.names))
    for i, j in v.base.items():
        x[j] = fixed[i]
    if "committed" in index:
        x[index["committed"]] = 1.0
    hours = list(range(v.periods))
    progs = [spec.build([hh], fixed, price).p for hh in hours]
    # HiGHS releases the GIL: periods solve side by side, sharing what is left of the
    # budget (each stops at the scenario's gap or its share of the time)
    workers = max(1, min(os.cpu_count() or 1, 4))
    each_s = max((deadline - time.perf_counter()) * workers / len(hours), 1.0)
    with ThreadPoolExecutor(workers) as pool:
        sols = list(pool.map(lambda q: q.solve(spec.sc.mip_gap, each_s), progs))
    for q, sol in zip(progs, sols, strict=True):
        if not sol.ok:
            return None
        assert sol.x is not None
        for nm, val in zip(q.names, sol.x, strict=True):
            if nm in index:
                x[index[nm]] = val
    for k, j in v.od.items():
        row = next(r for r in p.rows if r.name == f"contract {k}")
        used = sum(c * x[col] for col, c in row.coefs.items() if col != j)
        x[j] = max(used - row.ub, 0.0)
    return x


def _replicas(v: _DayVars, sol: Solution, i: int) -> list[int]:
    assert sol.x is not None
    if i in v.base:
        return [int(round(sol.x[v.base[i]]))] * v.periods
    return [int(round(sol.x[v.hourly[(i, h)]])) for h in range(v.periods)]


def _tier_capacity(v: _DayVars, sol: Solution, pools: list[DayPool], offs: list[_Offer],
                   h: int, demand: dict[str, float]) -> dict[str, float]:
    """Requests/s each tier's pools serve in period ``h`` along the day program's
    routing: the demand over the share of held replica-time it uses (a spot layer
    held less its :func:`reclaim_covered` replicas), i.e. the routing scaled up until
    the tier's pools are full."""
    assert sol.x is not None
    held: dict[str, float] = defaultdict(float)
    used: dict[str, float] = defaultdict(float)
    seen = set()
    for pool, o in zip(pools, offs, strict=True):
        c = o.cand
        held[c.tier] += _held_after_reclaims(o, pool.replicas[h])
        if c.id in seen:
            continue  # a pool's base and spot layers share its routing
        seen.add(c.id)
        used[c.tier] += sum(float(sol.x[v.x[h][(c.id, b)]]) / cap
                            for b, cap in c.capacity.items())
    return {t: demand[t] * held[t] / used[t] if used[t] > 1e-12 else 0.0 for t in demand}


def _held_after_reclaims(o: _Offer, replicas: int) -> float:
    if o.layer != "spot":
        return float(replicas)
    return float(replicas - reclaim_covered(replicas, o.interruption_per_hour))


def _spot_rule(offs: list[_Offer], pools: list[DayPool], period_h: float) -> str:
    """The rule as plan output states it, with the largest chance per pool and period
    that more is reclaimed than the plan covers."""
    spot = sorted({f"{o.cand.cloud} {o.interruption_per_hour:.0%}/h" for o in offs
                   if o.layer == "spot"})
    rule = ("each period, every pool still carries its routed load at the SLO percentile "
            "with its spot layer's expected reclaims rounded up to whole replicas, at least "
            "one, gone (ceil(rate x replicas), min 1, per spot pool, all pools at once), in "
            "demand and N-1 rows alike")
    if not spot:
        return rule + " (no spot market offered)"
    tail = max((uncovered_chance(r, pl.interruption_per_hour, period_h)
                for pl in pools if pl.layer == "spot" for r in pl.replicas if r), default=0.0)
    return (f"{rule} ({', '.join(spot)}); largest chance that a spot pool loses more in "
            f"one period: {tail:.2%} (binomial at the hourly rate)")


def _assemble(sc: Scenario, cs: CandidateSet, offs: list[_Offer], v: _DayVars,
              sol: Solution, profiles: dict[str, DayProfile],
              mults: list[dict[str, float]], peak: Plan, drops: list[str]) -> DayPlan:
    periods = v.periods
    period_h = 24.0 / periods
    pools = []
    for i, o in enumerate(offs):
        c = o.cand
        price = o.spot_usd_per_chip_hour if o.layer == "spot" else c.usd_per_chip_hour
        pools.append(DayPool(
            pool=c.id + (SPOT_SUFFIX if o.layer == "spot" else ""), tier=c.tier,
            accelerator=c.accelerator.id, vendor=c.vendor, cloud=c.cloud, region=c.region,
            layer=o.layer, chips_per_replica=c.count, usd_per_chip_hour=price or 0.0,
            interruption_per_hour=o.interruption_per_hour, replicas=_replicas(v, sol, i)))
    need: dict[str, float] = defaultdict(float)
    for d in cs.demands:
        need[d.tier] += d.rate_per_s * (1 + sc.headroom)
    rows = []
    for h in range(periods):
        chips: dict[str, int] = defaultdict(int)
        usd: dict[str, float] = defaultdict(float)
        for pl in pools:
            chips[pl.layer] += pl.replicas[h] * pl.chips_per_replica
            usd[pl.layer] += pl.replicas[h] * pl.chips_per_replica * pl.usd_per_chip_hour
        rows.append(DayPeriod(
            period=h, start=next(iter(profiles.values())).label(h), multiplier=mults[h],
            demand_requests_per_s={t: need[t] * mults[h][t] for t in need},
            capacity_requests_per_s=_tier_capacity(
                v, sol, pools, offs, h, {t: need[t] * mults[h][t] for t in need}),
            chips=dict(chips), usd_per_hour={k: round(x, 4) for k, x in usd.items()}))
    month = _bill(sc, offs, pools, period_h)
    days = sc.hours_per_month / 24.0
    layer_day = {k: sum(r.usd_per_hour.get(k, 0.0) for r in rows) * period_h
                 for k in ("reserved", "committed", "on_demand", "spot")}
    return DayPlan(
        periods_per_day=periods, period_h=period_h,
        profiles={t: p.source for t, p in profiles.items()}, pools=[p for p in pools
                                                                    if any(p.replicas)],
        periods=rows, layer_usd_per_day=layer_day, usd_per_day=month / days,
        usd_per_month=month, peak_plan_usd_per_month=peak.cost.usd_per_month,
        saving_usd_per_month=peak.cost.usd_per_month - month,
        spot_rule=_spot_rule(offs, pools, period_h),
        assumptions=_assumptions(sc, profiles),
        drops=drops, solver_status=sol.message + (
            "; DEARER than the peak-hour plan held all day (the solver did not complete "
            "that start within its time)" if month > peak.cost.usd_per_month * (1 + 1e-9)
            + 0.01 else ""), mip_gap=sol.gap,
        seconds=round(sol.seconds, 3))


def _assumptions(sc: Scenario, profiles: dict[str, DayProfile]) -> list[str]:
    out = [f"{t}: day profile {p.source} (peak/trough {p.peak_to_trough:.2g}x)"
           for t, p in profiles.items()]
    out.append("spot and on-demand capacity come from the same supply caps as the base")
    out.append("spot is billed at its price outside any commitment; a reserved count is "
               "held (and billed) all day")
    out.append(f"a month is {sc.hours_per_month / 24:.4g} identical days")
    return out


def _bill(sc: Scenario, offs: list[_Offer], pools: list[DayPool], period_h: float) -> float:
    """The month's bill (:func:`tokenfleet.plan.billing.bill_usd`, the peak plan's
    formula): usage per account over a month of identical days."""
    days = sc.hours_per_month / 24.0
    metered: dict[str, float] = defaultdict(float)
    prepaid_used = 0.0
    disc = {k.name: k.discount for k in sc.contracts}
    for o, pl in zip(offs, pools, strict=True):
        usd = sum(pl.replicas) * period_h * pl.chips_per_replica * pl.usd_per_chip_hour * days
        if sc.supply[o.cand.supply_index].prepaid:
            prepaid_used += usd
        elif o.contract:
            metered[o.contract] += usd * (1 - disc[o.contract])
        else:
            metered[""] += usd
    prepaid = fixed_monthly_cost(sc) - sum(k.fixed_usd_per_month for k in sc.contracts)
    return bill_usd(metered, {k.name: k.fixed_usd_per_month for k in sc.contracts},
                    prepaid, prepaid_used).usd



def _unit(o: _Offer, replicas: int, sc: Scenario) -> PlanUnit:
    """A pool of the period's fleet, as the peak planner writes one (a spot pool is
    priced at its spot price and carries the ``#spot`` id)."""
    c = o.cand
    price = o.spot_usd_per_chip_hour if o.layer == "spot" else c.usd_per_chip_hour
    assert price is not None
    return c.plan_unit(replicas, sc.supply[c.supply_index].prepaid,
                       pool=c.id + (SPOT_SUFFIX if o.layer == "spot" else ""),
                       price_kind="reserved" if o.layer == "reserved" else "on_demand",
                       usd_per_chip_hour=price)


def period_plan(ds: DaySolution, h: int) -> Plan:
    """Period ``h``'s fleet (every layer's replicas) with the day program's routing
    split; tiers, limits and buckets as in the peak-hour plan."""
    x = ds.sol.x
    assert x is not None
    reps = [_replicas(ds.v, ds.sol, i)[h] for i in range(len(ds.offs))]
    units = [_unit(o, r, ds.sc) for o, r in zip(ds.offs, reps, strict=True) if r]
    mult = ds.plan.periods[h].multiplier
    splits = []
    for d in ds.cs.demands:
        served: dict[str, float] = {}
        for i, o in enumerate(ds.offs):
            j = ds.v.x[h].get((o.cand.id, d.bucket))
            # buckets are named alike in every tier: only the tier's own pools serve it
            if j is None or reps[i] == 0 or o.cand.tier != d.tier or not served_by(o.cand):
                continue  # a prefill half carries its decode half's requests, not a share
            # a pool and its spot layer share the routed rate by the capacity they hold
            # with the planned reclaims gone: the spot layer then still carries its
            # share after losing reclaim_covered replicas
            held = {k: _held_after_reclaims(q, reps[k])
                    for k, q in enumerate(ds.offs) if q.cand is o.cand}
            tag = o.cand.id + (SPOT_SUFFIX if o.layer == "spot" else "")
            served[tag] = float(x[j]) * held[i] / (sum(held.values()) or 1.0)
        tot = sum(served.values())
        splits.append(BucketSplit(
            tier=d.tier, bucket=d.bucket, input_len=d.input_len, output_len=d.output_len,
            peak_requests_per_s=d.rate_per_s * mult[d.tier] * (1 + ds.sc.headroom),
            shares={k: s / tot for k, s in served.items() if tot and s > 1e-9 * tot}))
    return ds.peak.model_copy(update={
        "units": units, "traffic_split": splits, "baselines": [], "constraints": [],
        "verification": None, "day": None, "economics": None, "risk": None,
        "scenario": f"{ds.peak.scenario} @ {ds.plan.periods[h].start}"})
