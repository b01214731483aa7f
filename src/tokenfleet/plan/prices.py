"""What each constraint costs: the plan re-solved without it, and, for caps, with one
more unit of it.

Duals of the LP relaxation, or "is the row at its limit", misprice an integer plan: a
power cap that replicas of 8 chips cannot fill to the last watt is at 0.2996 of 0.3 MW
yet costs half the bill. So every price here is a re-solve, and the reported figure is
the difference of the two bills. The re-solves

* start from the plan itself (still feasible once a constraint is relaxed), so a
  re-solve never returns a worse plan and a price is never negative from solver noise;
* run in parallel threads (HiGHS releases the GIL), all within one budget, the
  scenario's ``time_limit_s``; one that runs out reports "at least" the saving its
  bound proves;
* stop at the plan's own gap, and only the prices of binding rows whose proved range
  is then too wide to report (``SETTLED_SHARE``, ``SETTLED_BILL``) close the gap ten
  times further (the loose caps' screen and a commitment's re-solve report their range);
* are screened: every cap with room for another replica of its largest pool is
  dropped together in one re-solve; if that saves nothing, by monotonicity (dropping
  more constraints never costs more) none of them saves anything alone, and only
  otherwise is each priced by itself.

A re-solve that saves money with a plan that meets the dropped constraint anyway is
solver slack (the plan was within its optimality gap, not held back): the constraint
is then priced 0 and the note says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tokenfleet.plan.candidates import CandidateSet
from tokenfleet.plan.milp import Formulation, Row, Solution, solve_fleet
from tokenfleet.plan.n1 import violated
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import ConstraintReport
from tokenfleet.plan.whatrows import FLEET_POWER, MIN_SHARE, contract_power_name

Bill = Callable[[Scenario, Formulation, Solution], float]
Progress = Callable[[str, int, int], None]
CAPS = ("supply", "power", FLEET_POWER)
POLICIES = ("vendor-share", "n-1", MIN_SHARE)
STEP_SHARE = 0.01  # one point of share
STEP_CAP = 0.1  # a cap's marginal price is measured on +10 % of it, per unit
MIN_SOLVE_S = 1.0  # the least time a re-solve gets, even past the pricing budget
# A re-solve starts from the plan, which is already within the plan's own gap of the
# relaxed optimum whenever the constraint is worth less than that gap: stopped at the
# same gap, it would return the plan and price the constraint $0. So a re-solve whose
# proved range is wider than SETTLED_SHARE of its price and SETTLED_BILL of the bill
# closes the gap ten times further (still within the shared time budget; out of time,
# the price is a proved range). Most constraints settle at the plan's own gap, in a
# fraction of the time (a tenth of a 1 % gap took 10-15 s a re-solve on the example).
RESOLVE_GAP_SHARE = 0.1
SETTLED_SHARE = 0.1
SETTLED_BILL = 0.005
# The closer re-solves get this long at most (within the shared budget): on the example
# one took 10-27 s, a third of the whole plan's time, to narrow a range the first pass
# had already proved. Out of it, a price keeps the narrower of its two proved ranges.
REFINE_S = 5.0


@dataclass
class Job:
    key: str
    sc: Scenario
    drop: frozenset[str] = frozenset()
    result: tuple[Formulation, Solution] | None = None
    # may close the gap further when its range is too wide (a binding row's price);
    # the loose caps' screen and a commitment's re-solve stay at the plan's gap
    refine: bool = True


@dataclass
class Price:
    point: float | None  # total - bill of the re-solve
    low: float | None
    high: float | None
    proved: bool
    note: str = ""


@dataclass
class _Ctx:
    sc: Scenario
    cs: CandidateSet
    f: Formulation
    sol: Solution
    total: float
    bill: Bill
    start: dict[str, float]
    deadline: float = float("inf")  # time.perf_counter() by which pricing should be done
    rows: dict[str, list[tuple[Row, float]]] = field(default_factory=dict)


def _solve_jobs(ctx: _Ctx, jobs: list[Job], progress: Progress | None, done0: int,
                total_jobs: int) -> None:
    """Every job re-solved at the plan's own gap; those whose price that leaves too
    uncertain (:func:`_settled`) again at a tenth of it."""
    _solve_pass(ctx, jobs, 1.0, progress, done0, total_jobs)
    rough = [j for j in jobs if j.refine and not _settled(ctx, j)]
    if not rough:
        return
    first = {j.key: j.result for j in rough}
    _solve_pass(ctx, rough, RESOLVE_GAP_SHARE, None, 0, 0,
                deadline=min(ctx.deadline, time.perf_counter() + REFINE_S))
    for j in rough:  # a closer re-solve cut short may prove less than the first did
        closer, closer_width = j.result, _width(ctx, j)
        j.result = first[j.key]
        if closer_width < _width(ctx, j):
            j.result = closer


def _width(ctx: _Ctx, job: Job) -> float:
    """Width of the proved range of ``job``'s price (inf when it has none)."""
    p = _price(ctx, job, None)
    if p.low is None or p.high is None:
        return float("inf")
    return max(p.high, 0.0) - max(p.low, 0.0)


def _settled(ctx: _Ctx, job: Job) -> bool:
    """Is the price's proved range narrow enough to report: within SETTLED_SHARE of the
    price, or within SETTLED_BILL of the bill (a few thousand dollars a month on a
    fleet whose estimates carry a ±10-20 % band)? Only a cost objective has a range;
    a failed re-solve is not made better by a tighter gap."""
    assert job.result is not None
    if ctx.sc.objective != "cost" or not job.result[1].ok:
        return True
    p = _price(ctx, job, None)
    return _width(ctx, job) <= max(SETTLED_SHARE * abs(p.point or 0.0),
                                   SETTLED_BILL * abs(ctx.total))


def _solve_pass(ctx: _Ctx, jobs: list[Job], gap_share: float, progress: Progress | None,
                done0: int, total_jobs: int, deadline: float | None = None) -> None:
    end = ctx.deadline if deadline is None else deadline

    def run(j: Job) -> tuple[Formulation, Solution]:
        # all pricing shares one budget, the scenario's time_limit_s: a re-solve that
        # starts late gets what is left (at least MIN_SOLVE_S) and, started from the plan,
        # always returns a plan; out of time, its price is "at least" its proved bound
        left = max(end - time.perf_counter(), MIN_SOLVE_S)
        sc = j.sc.model_copy(update={"time_limit_s": min(left, j.sc.time_limit_s),
                                     "mip_gap": j.sc.mip_gap * gap_share})
        return solve_fleet(sc, ctx.cs, drop=j.drop, start=ctx.start)

    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, j) for j in jobs]
        for i, (j, fut) in enumerate(zip(jobs, futures, strict=True)):
            j.result = fut.result()
            if progress:
                progress("pricing constraints", done0 + i + 1, total_jobs)


def _objective_bound(s: Solution) -> float | None:
    if s.objective is None:
        return None
    if s.bound is not None:
        return min(s.bound, s.objective)
    return s.objective * (1 - s.gap)


def _price(ctx: _Ctx, job: Job, meets: Callable[[Formulation, Solution], bool] | None,
           rebill: bool = False) -> Price:
    assert job.result is not None
    g, s2 = job.result
    if not s2.ok:
        # cannot happen for a relaxation started from a feasible plan, but say so if it does
        return Price(None, None, None, False, f"re-solve failed: {s2.message}")
    point = ctx.total - ctx.bill(job.sc, g, s2)
    if rebill:
        # dropping a commitment changes the bill, not what is feasible: the re-solve's
        # fleet is a plan of the scenario too, and where it bills less than the plan
        # under the commitment, that part of the saving is solver slack, not the price
        point -= max(ctx.total - ctx.bill(ctx.sc, g, s2), 0.0)
    proved = s2.status == 0
    low = high = None
    if ctx.sc.objective == "cost":
        b1, b2 = _objective_bound(ctx.sol), _objective_bound(s2)
        if b1 is not None and s2.objective is not None:
            low = b1 - s2.objective
        if b2 is not None and ctx.sol.objective is not None:
            high = ctx.sol.objective - b2
    note = ""
    if ctx.sc.objective == "energy":
        # the re-solves minimise MW at TDP; what dropping the constraint saves in energy
        mwh = (_fleet_mw(ctx.f, ctx.sol) - _fleet_mw(g, s2)) * ctx.sc.hours_per_month
        note = f"energy objective: saves {mwh:,.0f} MWh/month (the $ is the bill's change)"
    if point > 0 and meets is not None and meets(g, s2):
        note = (f"the re-solve found a plan ${point:,.0f}/month cheaper that meets this "
                "constraint too: solver slack, not a price")
        point = 0.0
    return Price(point, low, high, proved, note)


def _fleet_mw(f: Formulation, s: Solution) -> float:
    """Chips at TDP, MW (what the energy objective minimises)."""
    assert s.x is not None
    return sum(c.watts * round(float(s.x[f.n[c.id]])) for c in f.cands) / 1e6


def solution_by_name(f: Formulation, s: Solution) -> dict[str, float]:
    """A solution as variable name -> value (a start for re-solves of the same program)."""
    assert s.x is not None
    return dict(zip(f.program.names, (float(v) for v in s.x), strict=True))


def _row_holds(rows: list[tuple[Row, float]], f: Formulation, g: Formulation, s2: Solution,
               tol: float = 1e-6) -> bool:
    """Do the original rows hold at the re-solve's point (mapped by variable name)?"""
    x2 = solution_by_name(g, s2)
    names = f.program.names
    for r, _ in rows:
        act = sum(v * x2.get(names[j], 0.0) for j, v in r.coefs.items())
        scale = max(abs(r.ub) if np.isfinite(r.ub) else 0.0,
                    abs(r.lb) if np.isfinite(r.lb) else 0.0,
                    max((abs(v) for v in r.coefs.values()), default=1.0))
        if act > r.ub + tol * scale or act < r.lb - tol * scale:
            return False
    return True


def _n1_holds(ctx: _Ctx, g: Formulation, s2: Solution) -> bool:
    n1 = ctx.sc.policy.n_minus_1
    if n1 is None:
        return True
    x2 = solution_by_name(g, s2)
    reps = {c.id: round(x2.get(f"n[{c.id}]", 0.0)) for c in ctx.f.cands}
    return not violated(ctx.f.cands, reps, ctx.cs.demands, ctx.f.groups, n1.min_fraction)


def _cap_unit(ctx: _Ctx, r: Row, act: float) -> tuple[str, float, float]:
    """(unit, limit, used) of a cap row in its unit."""
    if r.family == "supply":
        return "chip", r.ub, act
    return "MW", r.ub / 1e6, act / 1e6


def _stepped(sc: Scenario, r: Row) -> tuple[Scenario, float] | None:
    """The scenario with one step more of cap or policy ``r`` and the step in its unit."""
    s2 = sc.model_copy(deep=True)
    # a cap grows by 10 % of itself, and at least by its largest replica (so one more
    # of any pool fits); the price is per unit of that step
    biggest = max(r.coefs.values(), default=0.0)
    if r.family == "supply":
        hit = [s for s in s2.supply
               if r.name == f"supply {s.accelerator}@{s.cloud}/{s.region}"]
        if not hit:
            return None
        step = max(int(round(STEP_CAP * sum(s.max_chips for s in hit))), int(biggest), 1)
        each = max(1, -(-step // len(hit)))
        for s in hit:
            s.max_chips += each
        return s2, float(each * len(hit))
    k = next((k for k in s2.contracts if r.name == contract_power_name(k.name)), None)
    if r.family == "power" and k is not None and k.power_mw is not None:
        step_mw = max(STEP_CAP * k.power_mw, biggest / 1e6)
        k.power_mw += step_mw
        return s2, step_mw
    if r.family == "power":
        reg = next((x for x in s2.regions if r.name == f"power {x.name}"), None)
        if reg is None or reg.power_mw is None:
            return None
        step_mw = max(STEP_CAP * reg.power_mw, biggest / 1e6)
        reg.power_mw += step_mw
        return s2, step_mw
    if r.family == FLEET_POWER and s2.max_power_mw is not None:
        step_mw = max(STEP_CAP * s2.max_power_mw, biggest / 1e6)
        s2.max_power_mw += step_mw
        return s2, step_mw
    if r.family == "vendor-share" and s2.policy.max_vendor_share is not None:
        s2.policy.max_vendor_share = min(s2.policy.max_vendor_share + STEP_SHARE, 1.0)
        return s2, 1.0
    return None


def price_constraints(sc: Scenario, cs: CandidateSet, f: Formulation, sol: Solution,
                      total: float, bill: Bill, progress: Progress | None = None,
                      policies_only: bool = False) -> list[ConstraintReport]:
    """A report per cap, commitment and policy with its price (see the module doc).
    ``policies_only``: the vendor share, N-1 and min-share floors alone (each one
    re-solve, independent of the baselines and of the caps' screening), for a plan that
    skips the rest (``plan --no-baselines``)."""
    assert sol.activity is not None and sol.x is not None
    ctx = _Ctx(sc, cs, f, sol, total, bill, solution_by_name(f, sol),
               deadline=time.perf_counter() + sc.time_limit_s)
    wanted = POLICIES if policies_only else (*CAPS, *POLICIES, "contract")
    for i, r in enumerate(f.program.rows):
        if r.family in wanted:
            ctx.rows.setdefault(r.name, []).append((r, float(sol.activity[i])))

    def tight(name: str) -> bool:
        return any(r.ub - act < max(r.coefs.values(), default=0.0) * (1 - 1e-9)
                   for r, act in ctx.rows[name])

    caps = [n for n, rs in ctx.rows.items() if rs[0][0].family in CAPS]
    tight_caps = [n for n in caps if tight(n)]
    loose_caps = [n for n in caps if n not in tight_caps]
    policies = sorted({rs[0][0].family for rs in ctx.rows.values()
                       if rs[0][0].family in ("vendor-share", "n-1")})
    floors = [n for n, rs in ctx.rows.items() if rs[0][0].family == MIN_SHARE]

    drops = {n: Job(n, sc, frozenset({n})) for n in tight_caps + policies + floors}
    for k in [] if policies_only else sc.contracts:
        drops[f"contract {k.name}"] = Job(
            f"contract {k.name}",
            sc.model_copy(update={"contracts": [c for c in sc.contracts if c is not k]}),
            refine=False)
    steps: dict[str, tuple[Job, float]] = {}
    for n in tight_caps + policies:
        st = _stepped(sc, ctx.rows[n][0][0]) if n in ctx.rows else (
            _stepped(sc, _family_row(ctx, n)))
        if st is not None:
            steps[n] = (Job(n + " +step", st[0]), st[1])
    screen = Job("loose caps", sc, frozenset(loose_caps), refine=False) if loose_caps else None
    jobs = list(drops.values()) + [j for j, _ in steps.values()] + ([screen] if screen else [])
    _solve_jobs(ctx, jobs, progress, 0, len(jobs))

    loose_price: dict[str, Price] = {}
    if screen is not None:
        p = _price(ctx, screen, lambda g, s2: _row_holds(
            [rw for n in loose_caps for rw in ctx.rows[n]], f, g, s2))
        if (p.point or 0.0) <= 0.0:
            for n in loose_caps:
                loose_price[n] = Price(0.0, 0.0, p.high, p.proved,
                                       "room for another replica (all such caps "
                                       "dropped at once save $0)")
        else:  # some loose cap matters after all: price each alone
            more = {n: Job(n, sc, frozenset({n})) for n in loose_caps}
            more_steps = {n: (Job(n + " +step", st[0]), st[1]) for n in loose_caps
                          for st in [_stepped(sc, ctx.rows[n][0][0])] if st is not None}
            wave = list(more.values()) + [j for j, _ in more_steps.values()]
            _solve_jobs(ctx, wave, progress, len(jobs), len(jobs) + len(wave))
            drops.update(more)
            steps.update(more_steps)
    return _reports(ctx, drops, steps, loose_price)


def rebased(reports: list[ConstraintReport], shift_usd: float) -> list[ConstraintReport]:
    """Prices measured against a plan whose bill is ``shift_usd`` below the plan they
    are reported for (the same re-solves: what each saves is the reported plan's bill
    minus the re-solve's, so every figure moves by the shift), floored at 0."""
    def up(x: float | None) -> float | None:
        return None if x is None else max(x + shift_usd, 0.0)

    return [r.model_copy(update={
        "marginal_usd_per_month": up(r.marginal_usd_per_month),
        "price_low_usd_per_month": up(r.price_low_usd_per_month),
        "price_high_usd_per_month": up(r.price_high_usd_per_month)})
        if r.marginal_usd_per_month else r for r in reports]


def _family_row(ctx: _Ctx, family: str) -> Row:
    return next(rs[0][0] for rs in ctx.rows.values() if rs[0][0].family == family)


def _reports(ctx: _Ctx, drops: Mapping[str, Job], steps: Mapping[str, tuple[Job, float]],
             loose_price: Mapping[str, Price]) -> list[ConstraintReport]:
    sc, f = ctx.sc, ctx.f
    out: list[ConstraintReport] = []

    def meets_for(name: str) -> Callable[[Formulation, Solution], bool] | None:
        if name == "n-1":
            return lambda g, s2: _n1_holds(ctx, g, s2)
        if name.startswith("contract "):
            return None  # dropping a commitment changes the bill, not what is feasible
        rows = ([rw for rs in ctx.rows.values() for rw in rs if rs[0][0].family == name]
                if name in ("vendor-share",) else ctx.rows.get(name))
        if rows is None:
            return None
        return lambda g, s2: _row_holds(rows, f, g, s2)

    def report(name: str, detail: str, unit: str | None = None, limit: float | None = None,
               used: float | None = None, binding_hint: bool = False) -> ConstraintReport:
        p = loose_price.get(name) or _price(ctx, drops[name], meets_for(name),
                                            rebill=name.startswith("contract "))
        per_unit = step = None
        if name in steps and (p.point or 0.0) > 0:
            sj, step = steps[name]
            sp = _price(ctx, sj, None)
            per_unit = (sp.point or 0.0) / step if sp.point is not None else None
        note = f"; {p.note}" if p.note else ""
        return ConstraintReport(
            name=name, binding=binding_hint or (p.point or 0.0) > 0,
            marginal_usd_per_month=p.point, detail=detail + note,
            price_low_usd_per_month=None if p.low is None else max(p.low, 0.0),
            price_high_usd_per_month=None if p.high is None else max(p.high, 0.0),
            price_proved=p.proved, per_unit_usd_per_month=per_unit, unit=unit, limit=limit,
            used=used, per_unit_step=step)

    for name, rs in ctx.rows.items():
        r, act = rs[0]
        if r.family in CAPS:
            unit, limit, used = _cap_unit(ctx, r, act)
            tight = r.ub - act < max(r.coefs.values(), default=0.0) * (1 - 1e-9)
            shown = f"{used:,.0f} chips" if unit == "chip" else f"{used:,.3g} MW"
            out.append(report(name, f"{r.detail}; uses {shown}", unit, limit, used, tight))
    for k in sc.contracts:
        name = f"contract {k.name}"
        if name not in ctx.rows:  # policies only
            continue
        r, act = ctx.rows[name][0]
        assert ctx.sol.x is not None
        used = act + float(ctx.sol.x[f.od[k.name]])  # row: usage - od <= commitment
        wasted = max(r.ub - used, 0.0)
        out.append(report(name, f"{r.detail}; used {min(used, r.ub):,.0f}"
                          + (f", {wasted:,.0f} wasted" if wasted else ""),
                          "USD/month", r.ub, min(used, r.ub), binding_hint=wasted > 0))
    pol = sc.policy
    for fam in sorted({rs[0][0].family for rs in ctx.rows.values()
                       if rs[0][0].family in ("vendor-share", "n-1")}):
        if fam == "vendor-share":
            assert pol.max_vendor_share is not None
            detail = f"max {pol.max_vendor_share:.0%} per vendor ({pol.vendor_share_basis})"
            out.append(report(fam, detail, "point of share", pol.max_vendor_share * 100))
        else:
            assert pol.n_minus_1 is not None
            detail = (f"without any one {pol.n_minus_1.by}, ≥ "
                      f"{pol.n_minus_1.min_fraction:.0%} of peak at SLO")
            out.append(report(fam, detail))
    for name, rs in ctx.rows.items():
        if rs[0][0].family == MIN_SHARE:
            out.append(report(name, rs[0][0].detail))
    return out
