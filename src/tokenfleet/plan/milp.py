"""The fleet mixed-integer program, solved by HiGHS through highspy
(:mod:`tokenfleet.plan.highs`: warm starts and kept bases, no ``scipy.optimize``).

Variables: ``n[c]`` integer replicas of candidate pool c; ``x[c,b]`` requests/s of
bucket b routed to c; for N-1 resilience, ``y[g][c,b]`` the re-routed traffic when
group g (a vendor, region or cloud) is gone — for the groups modelled exactly; the
others are held by cuts (:mod:`tokenfleet.plan.n1`) added until an exact check of
every group passes; ``od[k]`` spend beyond contract k.

Every row has a name and a family ("demand", "capacity", "supply", "power",
"contract", "vendor-share", "n-1"), so results can say which constraints bind and
infeasible problems can say which ones conflict (elastic mode adds a penalised slack
to every constraint that can be relaxed and minimises total relative violation).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import highspy
import numpy as np
from scipy.sparse import csc_array

from tokenfleet.plan import highs
from tokenfleet.plan.billing import Terms
from tokenfleet.plan.candidates import Candidate, CandidateSet, Demand
from tokenfleet.plan.n1 import N1Check, N1Cut, starting_cuts, violated
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.whatrows import add_whatif_rows

POLICY_FAMILIES = ("vendor-share", "n-1", "min-share")  # min-share: plan.whatrows


@dataclass
class Row:
    name: str
    family: str
    coefs: dict[int, float]
    lb: float
    ub: float
    detail: str = ""
    slack: int | None = None  # elastic slack variable (elastic mode)
    scale: float = 1.0  # slack is reported in units of rhs / scale


@dataclass
class Program:
    """A small named-row LP/MILP builder."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def var(self, name: str, cost: float = 0.0, lb: float = 0.0, ub: float = np.inf,
            integer: bool = False) -> int:
        self.cost.append(cost)
        self.lower.append(lb)
        self.upper.append(ub)
        self.integer.append(1 if integer else 0)
        self.names.append(name)
        return len(self.cost) - 1

    def row(self, name: str, family: str, coefs: dict[int, float], lb: float = -np.inf,
            ub: float = np.inf, detail: str = "") -> Row:
        r = Row(name, family, coefs, lb, ub, detail)
        self.rows.append(r)
        return r

    def matrix(self) -> csc_array:
        data, ri, ci = [], [], []
        for i, r in enumerate(self.rows):
            for j, v in r.coefs.items():
                ri.append(i)
                ci.append(j)
                data.append(v)
        return csc_array((data, (ri, ci)), shape=(len(self.rows), len(self.cost)))

    def solve(self, mip_gap: float, time_limit: float, *, heuristic_start: bool = True,
              start_by_name: Mapping[str, float] | None = None,
              stop_at: float | None = None) -> Solution:
        """Solve with HiGHS; with ``heuristic_start``, seed it with a plan found by
        diving on the LP relaxation (:func:`_dive`), which HiGHS's own heuristics do not
        always find on large fleets. ``start_by_name`` (variable name -> value) is a
        known feasible point instead, e.g. the plan itself when re-solving it with one
        constraint relaxed (:mod:`tokenfleet.plan.prices`). ``stop_at`` stops the
        search once it has a plan at most that dear (a bill known to be good enough)."""
        t0 = time.perf_counter()
        a = self.matrix()
        integer = np.asarray(self.integer, bool)
        start = None
        if start_by_name is not None:
            start = np.array([start_by_name.get(v, 0.0) for v in self.names], float)
        elif heuristic_start and integer.any():
            start = _dive(self, a, integer, deadline=t0 + DIVE_SHARE * time_limit)
        h = _highs_model(self, a, integer)
        h.setOptionValue("mip_rel_gap", mip_gap)
        h.setOptionValue("time_limit", max(time_limit - (time.perf_counter() - t0), 1.0))
        if start is not None:
            hs = highspy.HighsSolution()
            hs.col_value = list(start)
            h.setSolution(hs)
        if stop_at is not None:
            h.cbMipInterrupt.subscribe(_stop_at(stop_at))
        h.run()
        sol = _result(h, a, bool(integer.any()))
        sol.seconds = time.perf_counter() - t0
        return sol


def _stop_at(bill: float) -> Callable[[Any], None]:
    """A HiGHS MIP-interrupt callback: stop once the incumbent costs at most ``bill``."""
    def check(e: Any) -> None:
        if e.data_out.mip_primal_bound <= bill:
            e.interrupt()
    return check


DIVE_SHARE = 0.6  # of the time limit, at most, for the diving heuristic (it is what
# yields a first plan on large fleets; HiGHS improves on it with the rest)


def _highs_model(p: Program, a: csc_array, integer: np.ndarray | None) -> highspy.Highs:
    """The program as a HiGHS model (an LP when ``integer`` is None)."""
    return highs.model(np.asarray(p.cost, float), a, np.asarray(p.lower, float),
                       np.asarray(p.upper, float), np.array([r.lb for r in p.rows], float),
                       np.array([r.ub for r in p.rows], float), integer)


def _result(h: highspy.Highs, a: csc_array, is_mip: bool) -> Solution:
    ms = h.getModelStatus()
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    status = {highspy.HighsModelStatus.kOptimal: 0,
              highspy.HighsModelStatus.kTimeLimit: 1,
              highspy.HighsModelStatus.kIterationLimit: 1,
              highspy.HighsModelStatus.kInfeasible: 2,
              highspy.HighsModelStatus.kUnboundedOrInfeasible: 2,
              highspy.HighsModelStatus.kUnbounded: 3}.get(ms, 4)
    gap = float(info.mip_gap) if is_mip and has_x else 0.0
    bound = float(info.mip_dual_bound) if is_mip else None
    return Solution(status=status, message=h.modelStatusToString(ms), x=x,
                    objective=float(info.objective_function_value) if has_x else None,
                    gap=gap if np.isfinite(gap) else 1.0, seconds=0.0,
                    activity=(a @ x) if x is not None else None,
                    bound=bound if bound is not None and np.isfinite(bound) else None)


def _dive(p: Program, a: csc_array, integer: np.ndarray, deadline: float,
          max_rounds: int = 100, lower: np.ndarray | None = None,
          lp: highspy.Highs | None = None) -> np.ndarray | None:
    """A feasible point found by diving on the LP relaxation, or None.

    Each round rounds every fractional replica count up, as a new lower bound, and
    re-solves the LP from the previous basis, so routing and the other counts adapt
    (and shrink). Rounding up is what demand, capacity and N-1 rows tolerate; where it
    would push a ≤ row (a supply or power cap) past its limit, the counts in that row
    round down instead, as an upper bound. On the largest plan_scale fleet this takes
    ~25 warm LP re-solves (rounding to the nearest integer took over 40). ``lp`` is
    the program's LP relaxation already solved (its rows may be in another order, and
    more ≥ rows do no harm), to dive from its basis rather than from scratch.
    """
    h = lp if lp is not None else _highs_model(p, a, None)
    lo, hi = np.asarray(p.lower, float).copy(), np.asarray(p.upper, float).copy()
    if lower is not None:
        lo = np.maximum(lo, lower)
        h.changeColsBounds(len(lo), np.arange(len(lo), dtype=np.int32), lo, hi)
    ub_rows = np.array([r.ub for r in p.rows], float)
    a_rows = a.tocsr()
    cols = np.flatnonzero(integer)
    for _ in range(max_rounds):
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        # HiGHS's time limit counts this instance's run time over all its runs
        h.setOptionValue("time_limit", h.getRunTime() + left)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        x = np.asarray(h.getSolution().col_value)
        v = x[cols]
        frac = np.abs(v - np.round(v)) > 1e-6
        if not frac.any():
            x[cols] = np.round(v)
            return x
        fc = cols[frac]
        ceil_x = x.copy()
        ceil_x[fc] = np.ceil(x[fc])
        over = np.flatnonzero(a_rows @ ceil_x > ub_rows + 1e-9 * np.maximum(abs(ub_rows), 1))
        up = np.ones(len(fc), bool)
        if over.size:
            up &= np.asarray(abs(a_rows[over][:, fc]).sum(axis=0)).ravel() == 0
        new_lo, new_hi = lo[fc].copy(), hi[fc].copy()
        new_lo[up] = np.ceil(x[fc][up])
        new_hi[~up] = np.floor(x[fc][~up])
        lo[fc], hi[fc] = new_lo, new_hi
        h.changeColsBounds(len(fc), fc.astype(np.int32), new_lo, new_hi)
    return None


@dataclass
class Solution:
    status: int  # 0 optimal, 1 time/iteration limit with a solution or not, 2 infeasible
    message: str
    x: np.ndarray | None
    objective: float | None
    gap: float
    seconds: float
    activity: np.ndarray | None
    rounds: int = 1  # master solves (N-1 by cuts re-solves until every group holds)
    bound: float | None = None  # proved lower bound on the objective (MILP)

    @property
    def ok(self) -> bool:
        return self.x is not None and self.status in (0, 1)

    @property
    def timed_out(self) -> bool:
        """Stopped at the time limit without any plan (not proved infeasible)."""
        return self.x is None and self.status == 1


@dataclass
class Formulation:
    program: Program
    n: dict[str, int]  # candidate id -> var
    x: dict[tuple[str, str], int]  # (candidate id, bucket) -> var
    od: dict[str, int]  # contract name -> var
    cands: list[Candidate]
    groups: dict[str, list[str]] = field(default_factory=dict)  # n-1 group -> members


def fixed_monthly_cost(sc: Scenario) -> float:
    """USD per month paid whatever the plan: commitments and prepaid capacity blocks."""
    prepaid = sum(s.max_chips * (s.usd_per_chip_hour or 0.0) * sc.hours_per_month
                  for s in sc.supply if s.prepaid)
    return sum(k.fixed_usd_per_month for k in sc.contracts) + prepaid


def group_of(c: Candidate, by: str) -> str:
    return {"vendor": c.vendor, "region": c.region, "cloud": c.cloud}[by]


@dataclass
class _Build:
    """What every constraint-family builder reads: the scenario, the demand, the
    candidate pools and their variables."""

    sc: Scenario
    cs: CandidateSet
    cands: list[Candidate]
    p: Program
    n: dict[str, int]
    x: dict[tuple[str, str], int]
    od: dict[str, int]
    drop: frozenset[str]

    def dropped(self, name: str, family: str) -> bool:
        return name in self.drop or family in self.drop


def formulate(
    sc: Scenario,
    cs: CandidateSet,
    *,
    candidates: list[Candidate] | None = None,
    drop: frozenset[str] = frozenset(),
    elastic: bool = False,
    n1_exact: Collection[str] | None = None,
    n1_cuts: Sequence[N1Cut] = (),
) -> Formulation:
    """Build the MILP. ``drop`` names constraint rows or families to leave out (to price
    them); ``elastic`` adds a penalised slack to every relaxable row.

    N-1 resilience is modelled exactly (a copy of the routing per failure group) for the
    groups in ``n1_exact`` (all groups when None), and by the cuts ``n1_cuts`` (see
    :mod:`tokenfleet.plan.n1`) otherwise. One builder per constraint family below."""
    cands = complete_pairs(candidates if candidates is not None else cs.candidates)
    b = _variables(sc, cs, cands, drop)
    _demand_rows(b)
    _capacity_rows(b)
    _pair_rows(b)
    _supply_rows(b)
    _power_rows(b)
    _contract_rows(b)
    _vendor_share_rows(b)
    groups = _n_minus_1_rows(b, n1_exact, n1_cuts)
    # what-if rows (min share of a tier on a vendor, fleet-wide power): plan/whatrows.py
    add_whatif_rows(b.p, b.sc, b.cs, b.cands, b.n, b.x, b.drop)
    if elastic:
        _make_elastic(b.p)
    return Formulation(b.p, b.n, b.x, b.od, b.cands, groups)


def _variables(sc: Scenario, cs: CandidateSet, cands: list[Candidate],
               drop: frozenset[str]) -> _Build:
    """Replica counts (with their cost), routed rates, spend beyond each contract."""
    p = Program()
    hours = sc.hours_per_month
    eps = 1e-6  # tie-breaker: among equal bills, use fewer chip-hours
    n: dict[str, int] = {}
    x: dict[tuple[str, str], int] = {}
    for c in cands:
        s = sc.supply[c.supply_index]
        monthly = c.usd_per_hour * hours
        # ... and plain decoding over speculative (one more thing to run and tune)
        tie = eps * monthly * (2.0 if c.speculative else 1.0)
        if sc.objective == "energy":
            obj = c.watts / 1e6 + 1e-3 * tie  # MW first; $ only breaks ties
        elif s.prepaid:  # paid for already (a constant below)
            obj = tie
        else:
            # usage under a contract is paid through its row (minimum + overage, od)
            under = sc.contract_for(c.accelerator.id, c.cloud, c.region) is not None
            obj = (0.0 if under else monthly) + tie
        # Never more replicas than serving the tier's whole demand alone would take: a
        # valid bound that keeps branch-and-bound small.
        alone = sum(d.need_per_s(sc.headroom) / c.capacity[d.bucket]
                    for d in cs.demands if d.tier == c.tier and d.bucket in c.capacity)
        ub = min(s.max_chips // c.count, int(np.ceil(alone)) + 1)
        n[c.id] = p.var(f"n[{c.id}]", obj, 0, ub, integer=True)
        for bk in c.capacity:
            x[(c.id, bk)] = p.var(f"x[{c.id},{bk}]")
    od: dict[str, int] = {}
    for k in sc.contracts:
        od[k.name] = p.var(f"od[{k.name}]", 1.0 if sc.objective == "cost" else 0.0)
    committed = fixed_monthly_cost(sc)
    if sc.objective == "cost" and committed:
        # Commitments and prepaid blocks are paid anyway: a constant in the bill. Carrying
        # it as a fixed variable makes the solver's relative gap relative to the whole bill.
        p.var("committed", committed, 1.0, 1.0)
    return _Build(sc, cs, cands, p, n, x, od, drop)


def complete_pairs(cands: Sequence[Candidate]) -> list[Candidate]:
    """``cands`` less the halves of disaggregated pairs whose other half is not among
    them (a baseline restricted to one vendor or chip keeps whole pairs only)."""
    halves: dict[str, int] = defaultdict(int)
    for c in cands:
        if c.pair is not None:
            halves[c.pair] += 1
    return [c for c in cands if c.pair is None or halves[c.pair] == 2]


def served_by(c: Candidate) -> bool:
    """Whether routing to ``c`` serves requests (aggregated or decode pools; a prefill
    half carries the same requests as its decode half, by the pair rows)."""
    return c.role != "prefill"


def _demand_rows(b: _Build) -> None:
    """Each (tier, bucket) served exactly its peak plus headroom, or what the tier's
    bursts need when that is more (equality keeps the shares meaningful)."""
    for d in b.cs.demands:
        need = d.need_per_s(b.sc.headroom)
        coefs = {b.x[(c.id, d.bucket)]: 1.0 for c in b.cands
                 if c.tier == d.tier and (c.id, d.bucket) in b.x and served_by(c)}
        why = (f"{d.burst:.2f}x peak for the tier's bursts" if d.burst > 1 + b.sc.headroom
               else f"at peak incl. {b.sc.headroom:.0%} headroom")
        b.p.row(f"demand {d.tier}/{d.bucket}", "demand", coefs, need, need,
                f"{need:.3g} req/s {why}")


def _capacity_rows(b: _Build) -> None:
    """A replica's time is shared by the buckets it serves."""
    for c in b.cands:
        coefs = {b.x[(c.id, bk)]: 1.0 / cap for bk, cap in c.capacity.items()}
        coefs[b.n[c.id]] = -1.0
        b.p.row(f"capacity {c.id}", "capacity", coefs, ub=0.0)


def _pair_rows(b: _Build) -> None:
    """A disaggregated pair's prefill half prefills exactly the requests its decode half
    decodes, bucket by bucket (their replica counts then set the P:D ratio)."""
    for p, d in _pairs_of(b.cands):
        for bk in p.capacity:
            if (d.id, bk) in b.x:
                b.p.row(f"pair {p.pair}/{bk}", "pair",
                        {b.x[(p.id, bk)]: 1.0, b.x[(d.id, bk)]: -1.0}, 0.0, 0.0)


def _pairs_of(cands: Sequence[Candidate]) -> list[tuple[Candidate, Candidate]]:
    """(prefill, decode) candidates of every whole pair among ``cands``."""
    by: dict[str, dict[str, Candidate]] = defaultdict(dict)
    for c in cands:
        if c.pair is not None:
            by[c.pair][c.role] = c
    return [(h["prefill"], h["decode"]) for h in by.values() if len(h) == 2]


def _supply_rows(b: _Build) -> None:
    """At most ``max_chips`` of each supply entry."""
    by_supply: dict[int, list[Candidate]] = defaultdict(list)
    for c in b.cands:
        by_supply[c.supply_index].append(c)
    for i, group in by_supply.items():
        s = b.sc.supply[i]
        name = f"supply {s.accelerator}@{s.cloud}/{s.region}"
        if not b.dropped(name, "supply"):
            b.p.row(name, "supply", {b.n[c.id]: float(c.count) for c in group},
                    ub=s.max_chips, detail=f"at most {s.max_chips} chips")


def _power_rows(b: _Build) -> None:
    """Each region's power cap, at TDP."""
    for r in b.sc.regions:
        if r.power_mw is None:
            continue
        members = [c for c in b.cands if c.region == r.name]
        name = f"power {r.name}"
        if members and not b.dropped(name, "power"):
            b.p.row(name, "power", {b.n[c.id]: c.watts * r.pue for c in members},
                    ub=r.power_mw * 1e6, detail=f"cap {r.power_mw:g} MW")


def _contract_rows(b: _Build) -> None:
    """Committed spend: usage in the contract's cloud beyond it is on-demand."""
    hours = b.sc.hours_per_month
    for k in b.sc.contracts:
        members = [c for c in b.cands
                   if b.sc.contract_for(c.accelerator.id, c.cloud, c.region) is k
                   and not b.sc.supply[c.supply_index].prepaid]
        if k.volume_tiers:
            coefs = _volume_tier_terms(b, k.name, k.terms, members)
        else:
            coefs = {b.n[c.id]: c.usd_per_hour * hours * (1 - k.discount) for c in members}
        coefs[b.od[k.name]] = -1.0
        b.p.row(f"contract {k.name}", "contract", coefs, ub=k.fixed_usd_per_month,
                detail=f"{k.committed_usd_per_month:,.0f} USD/month committed in {k.cloud}")


def _volume_tier_terms(b: _Build, name: str, t: Terms, members: list[Candidate]
                       ) -> dict[int, float]:
    """The billed usage of a contract with volume tiers, exactly, as a sum over bands.

    Usage at list L = sum_c price_c * n_c is split into bands s_0..s_m (s_i in [0, w_i],
    band i from threshold a_i to a_{i+1}, a_0 = 0, the last one up to the most the
    members can use); billed = sum_i (1 - d_i) s_i. Discounts rise with usage, so the
    billed amount is concave in L: a solver free to pick bands would fill the cheap
    upper bands first. A binary z_i per threshold keeps the order: s_{i-1} >= w_{i-1} z_i
    (band i opens only once band i-1 is full) and s_i <= w_i z_i (the incremental
    piecewise-linear model, exact for any rates). Returns the contract row's terms."""
    hours = b.sc.hours_per_month
    price = {c.id: c.usd_per_hour * hours for c in members}
    most = sum(price[c.id] * b.p.upper[b.n[c.id]] for c in members)
    edges = [0.0, *(a for a, _ in t.volume_tiers)]
    rates = [t.discount, *(d for _, d in t.volume_tiers)]
    widths = [max(min(hi, most) - lo, 0.0)
              for lo, hi in zip(edges, [*edges[1:], max(most, edges[-1])], strict=True)]
    s = [b.p.var(f"vol[{name}][{i}]", 0.0, 0.0, w) for i, w in enumerate(widths)]
    link = {b.n[c.id]: -price[c.id] for c in members}
    link.update({j: 1.0 for j in s})
    b.p.row(f"contract {name}: usage by volume tier", "contract-volume", link, 0.0, 0.0)
    for i in range(1, len(s)):
        z = b.p.var(f"vol-open[{name}][{i}]", 0.0, 0.0, 1.0, integer=True)
        b.p.row(f"contract {name}: tier {i - 1} full before tier {i}", "contract-volume",
                {s[i - 1]: 1.0, z: -widths[i - 1]}, lb=0.0)
        b.p.row(f"contract {name}: tier {i} only once open", "contract-volume",
                {s[i]: 1.0, z: -max(widths[i], 1.0)}, ub=0.0)
    return {j: 1.0 - r for j, r in zip(s, rates, strict=True)}


def _vendor_share_rows(b: _Build) -> None:
    """No vendor above ``max_vendor_share`` of output tokens at peak (or of spend)."""
    pol = b.sc.policy
    cap = pol.max_vendor_share
    if cap is None or b.dropped("vendor-share", "vendor-share"):
        return
    by_id = {c.id: c for c in b.cands}
    # output tokens per request/s served (served rates include any burst margin)
    out_len = {(d.tier, d.bucket): d.output_len * d.traffic_per_need(b.sc.headroom)
               for d in b.cs.demands}
    for v in sorted({c.vendor for c in b.cands}):
        share: dict[int, float] = defaultdict(float)
        if pol.vendor_share_basis == "spend":
            for c in b.cands:
                w = c.usd_per_hour * b.sc.hours_per_month
                share[b.n[c.id]] += w * ((1.0 if c.vendor == v else 0.0) - cap)
        else:  # output tokens: made where requests are decoded
            for (cid, bk), j in b.x.items():
                c = by_id[cid]
                if not served_by(c):
                    continue
                w = out_len[(c.tier, bk)]
                share[j] += w * ((1.0 if c.vendor == v else 0.0) - cap)
        b.p.row(f"vendor-share {v}", "vendor-share", dict(share), ub=0.0,
                detail=f"≤ {cap:.0%} of {pol.vendor_share_basis}")


def _n_minus_1_rows(b: _Build, n1_exact: Collection[str] | None,
                    n1_cuts: Sequence[N1Cut]) -> dict[str, list[str]]:
    """Without any one group, the rest still serves ``min_fraction`` of peak at SLO:
    cuts over the replica counts, and an exact copy of the routing per group in
    ``n1_exact`` (all when None). Returns the groups and their pools."""
    n1 = b.sc.policy.n_minus_1
    groups: dict[str, list[str]] = {}
    if n1 is None or b.dropped("n-1", "n-1"):
        return groups
    by = n1.by
    for g in sorted({group_of(c, by) for c in b.cands}):
        groups[g] = [c.id for c in b.cands if group_of(c, by) == g]
    for ci, cut in enumerate(n1_cuts):
        if cut.group in groups:
            b.p.row(f"n-1 without {by} {cut.group}: {cut.tier} (cut {ci})", "n-1",
                    _cut_coefs(cut, b.cands, b.n, by), lb=cut.rhs,
                    detail=f"{n1.min_fraction:.0%} of peak without {cut.group}")
    for g in groups:
        if n1_exact is None or g in n1_exact:
            _n_minus_1_copy(b, g, by, n1.min_fraction)
    return groups


def _n_minus_1_copy(b: _Build, g: str, by: str, fraction: float) -> None:
    """The routing re-solved without group ``g``: its own demand and capacity rows (a
    pair with either half in ``g`` is gone whole)."""
    rest = complete_pairs([c for c in b.cands if group_of(c, by) != g])
    y = {(c.id, bk): b.p.var(f"y[{g}][{c.id},{bk}]") for c in rest for bk in c.capacity}
    for p, dc in _pairs_of(rest):
        for bk in p.capacity:
            if (dc.id, bk) in y:
                b.p.row(f"n-1 pair without {g}: {p.pair}/{bk}", "n-1-capacity",
                        {y[(p.id, bk)]: 1.0, y[(dc.id, bk)]: -1.0}, 0.0, 0.0)
    for d in b.cs.demands:
        coefs = {y[(c.id, d.bucket)]: 1.0 for c in rest
                 if c.tier == d.tier and (c.id, d.bucket) in y and served_by(c)}
        b.p.row(f"n-1 without {by} {g}: {d.tier}/{d.bucket}", "n-1", coefs,
                lb=d.rate_per_s * fraction, detail=f"{fraction:.0%} of peak without {g}")
    for c in rest:
        coefs = {y[(c.id, bk)]: 1.0 / cap for bk, cap in c.capacity.items()}
        coefs[b.n[c.id]] = -1.0
        b.p.row(f"n-1 capacity without {g}: {c.id}", "n-1-capacity", coefs, ub=0.0)


MAX_CUTS_PER_PAIR = 3  # then that group gets its exact routing copy
LP_CUTS_SHARE = 0.25  # of the time limit, at most, for cutting the LP relaxation first
# 'auto' models N-1 exactly up to this many copied routing variables: below it one solve
# beats several rounds of cuts (the example: 1.2k copies, 0.5 s exact vs 1.2 s by cuts).
AUTO_EXACT_MAX_COPIES = 5_000


def _cut_coefs(cut: N1Cut, cands: Sequence[Candidate], n: dict[str, int], by: str
               ) -> dict[int, float]:
    """Row of an N-1 cut over the replica variables ``n``."""
    coefs = {n[c.id]: cut.coefficient(c) for c in cands
             if c.tier == cut.tier and group_of(c, by) != cut.group}
    return {j: v for j, v in coefs.items() if v > 0}


def _lp_cuts(f: Formulation, cuts: list[N1Cut], groups: dict[str, list[str]], by: str,
             fraction: float, demands: Sequence[Demand], deadline: float,
             max_rounds: int = 30) -> _CutLp:
    """Cut the LP relaxation until it meets N-1 (or rounds or time run out), appending
    to ``cuts``. Each round adds the violated cuts as
    rows to the same HiGHS instance and re-solves from the previous basis: far cheaper
    than MILP rounds, and since N-1 only gets easier with more replicas, an integer plan
    rounded up from an LP point that meets N-1 usually meets it too."""
    cands = f.cands
    h = _highs_model(f.program, f.program.matrix(), None)
    out = _CutLp(h)
    for _ in range(max_rounds):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        h.setOptionValue("time_limit", h.getRunTime() + left)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break  # infeasible or out of time: the MILP rounds will say
        out.bound = max(out.bound, float(h.getInfo().objective_function_value))
        x = np.asarray(h.getSolution().col_value)
        out.replicas = {c.id: float(x[f.n[c.id]]) for c in cands}
        out.solved = True
        bad = violated(cands, out.replicas, demands, groups, fraction)
        if not bad:
            break
        out.solved = False  # rows added below
        for chk in bad:
            cuts.append(chk.cut)
            row = _cut_coefs(chk.cut, cands, f.n, by)
            h.addRow(chk.cut.rhs, highspy.kHighsInf, len(row),
                     np.fromiter(row.keys(), np.int32), np.fromiter(row.values(), float))
    return out


@dataclass
class _CutLp:
    """The LP relaxation cut by :func:`_lp_cuts`: its HiGHS instance, the last LP
    optimum (a valid lower bound on the full program, every cut being valid for it)
    and that optimum's replica counts; ``solved`` while the instance holds that optimum
    (no rows added since)."""

    lp: highspy.Highs
    bound: float = -np.inf
    replicas: dict[str, float] = field(default_factory=dict)
    solved: bool = False


def solve_fleet(
    sc: Scenario,
    cs: CandidateSet,
    *,
    candidates: list[Candidate] | None = None,
    drop: frozenset[str] = frozenset(),
    elastic: bool = False,
    start: Mapping[str, float] | None = None,
) -> tuple[Formulation, Solution]:
    """Formulate and solve; N-1 by cuts (:mod:`tokenfleet.plan.n1`) unless the scenario
    asks for the exact formulation or the program is elastic (infeasibility reports
    need every N-1 row explicitly).

    By cuts: cut the LP relaxation until it meets N-1; on a large master, dive from it,
    repair the dive to meet N-1 and search two RINS neighbourhoods around it, stopping
    once a plan is within the MIP gap of the proved bound; otherwise solve masters from
    the best plan, checking each incumbent per group (a broken one is repaired and
    searched around with the cuts it broke). The plan returned always meets N-1."""
    pol = sc.policy
    cands = complete_pairs(candidates if candidates is not None else cs.candidates)
    candidates = cands
    n1 = pol.n_minus_1
    method = n1.method if n1 is not None else "exact"
    if any(c.pair is not None for c in cands):
        # the cuts of plan/n1.py price each pool on its own; a pair's capacity needs
        # both halves, which only the exact routing copy models
        method = "exact"
    if n1 is not None and method == "auto":
        by = n1.by
        copies = sum(len(c.capacity) for c in cands) * len({group_of(c, by) for c in cands})
        method = "exact" if copies <= AUTO_EXACT_MAX_COPIES else "cuts"
    if n1 is None or "n-1" in drop or elastic or method == "exact":
        f = formulate(sc, cs, candidates=candidates, drop=drop, elastic=elastic)
        return f, f.program.solve(sc.mip_gap, sc.time_limit_s, start_by_name=start)
    by, fraction = n1.by, n1.min_fraction
    groups = {g: [c.id for c in cands if group_of(c, by) == g]
              for g in sorted({group_of(c, by) for c in cands})}
    loop = _CutLoop(sc, cs, cands, drop, groups, by, fraction,
                    starting_cuts(cands, cs.demands, groups, fraction))
    t0 = time.perf_counter()
    deadline = t0 + sc.time_limit_s
    cut_lp = _lp_cuts(loop.formulate(), loop.cuts, groups, by, fraction, cs.demands,
                      t0 + LP_CUTS_SHARE * sc.time_limit_s)
    loop.bound = cut_lp.bound
    rins_s = RINS_SHARE * sc.time_limit_s
    # Small masters close their gap quickly, and lower: the heuristics below, and
    # stopping at the first plan within the gap of the LP bound, are for large ones.
    large = len(cands) >= LARGE_MASTER_POOLS
    if start is None and large:
        dived = loop.first_plan(cut_lp.lp, deadline)
        if dived is not None:
            loop.rins(cut_lp.replicas, loop.replicas(*dived),
                      min(time.perf_counter() + rins_s, deadline))
            if loop.best is not None and not loop.good_enough():
                loop.rins(cut_lp.replicas, loop.replicas(loop.best[0], loop.best[1]),
                          min(time.perf_counter() + rins_s, deadline))
    sol: Solution | None = None
    masters = 0
    while not (large or masters == 0) or not loop.good_enough():
        if masters and deadline - time.perf_counter() < MIN_ROUND_SHARE * sc.time_limit_s:
            break
        masters += 1
        loop.rounds += 1
        f = loop.formulate()
        begin = loop.best_by_name() if loop.best is not None else start
        left = deadline - REPAIR_SHARE * sc.time_limit_s - time.perf_counter()
        sol = f.program.solve(sc.mip_gap, max(left, 1.0), heuristic_start=begin is None,
                              start_by_name=begin, stop_at=loop.stop_at() if large else None)
        # Every master relaxes the full program: its proved bound bounds the optimum.
        loop.bound = max(loop.bound, sol.bound if sol.bound is not None else -np.inf)
        if sol.x is None:
            break  # infeasible (so is the full program), or no plan in time at all
        # A master whose incumbent breaks N-1 still tells where to look: the plan with
        # replicas added to it until N-1 holds is a plan, the next start, and the
        # centre of a neighbourhood search with the cuts it broke.
        if loop.keep_or_repair(f, sol.x, sol.message):
            break
        loop.rins(cut_lp.replicas, loop.replicas(f, sol.x),
                  min(time.perf_counter() + rins_s, deadline))
    return loop.result(sol, t0)


REPAIR_SHARE = 0.1  # of the time limit, kept back from the master for a final repair
LARGE_MASTER_POOLS = 1_000  # candidate pools from which a master counts as large
RINS_SHARE = 0.25  # of the time limit, at most, for the neighbourhood search (_CutLoop.rins)
MIN_ROUND_SHARE = 0.25  # a new master round needs at least this share of the time limit


@dataclass
class _CutLoop:
    """Solving with N-1 by cuts: the cuts so far, the groups escalated to an exact
    routing copy, the best bound proved by any master and the cheapest plan found that
    meets N-1 exactly (with the formulation its ``x`` belongs to)."""

    sc: Scenario
    cs: CandidateSet
    cands: list[Candidate]
    drop: frozenset[str]
    groups: dict[str, list[str]]
    by: str
    fraction: float
    cuts: list[N1Cut]
    exact: set[str] = field(default_factory=set)
    seen: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    bound: float = -np.inf
    rounds: int = 0
    best: tuple[Formulation, np.ndarray, float, str] | None = None  # f, x, bill, how

    def formulate(self) -> Formulation:
        return formulate(self.sc, self.cs, candidates=self.cands, drop=self.drop,
                         n1_exact=self.exact, n1_cuts=self.cuts)

    def replicas(self, f: Formulation, x: np.ndarray) -> dict[str, float]:
        return {c.id: float(round(x[f.n[c.id]])) for c in self.cands}

    def add(self, bad: Sequence[N1Check]) -> None:
        """The cuts a plan broke; a pair that keeps breaking gets its exact copy."""
        for chk in bad:
            self.seen[(chk.group, chk.tier)] += 1
            if self.seen[(chk.group, chk.tier)] >= MAX_CUTS_PER_PAIR:
                self.exact.add(chk.group)
            else:
                self.cuts.append(chk.cut)

    def offer(self, f: Formulation, x: np.ndarray, how: str) -> None:
        """Keep ``x`` (a plan meeting N-1) if it is the cheapest so far."""
        bill = float(np.dot(f.program.cost, x))
        if self.best is None or bill < self.best[2]:
            self.best = (f, x, bill, how)

    def best_by_name(self) -> dict[str, float]:
        assert self.best is not None
        f, x = self.best[0], self.best[1]
        return dict(zip(f.program.names, x.tolist(), strict=True))

    def good_enough(self) -> bool:
        """Whether the best plan is already within the MIP gap of the proved bound."""
        stop = self.stop_at()
        return self.best is not None and stop is not None and self.best[2] <= stop

    def stop_at(self) -> float | None:
        """The dearest bill within the MIP gap of the proved bound."""
        if not np.isfinite(self.bound) or self.bound <= 0:
            return None
        return self.bound / (1.0 - min(self.sc.mip_gap, 0.5))

    def first_plan(self, lp: highspy.Highs | None, deadline: float
                   ) -> tuple[Formulation, np.ndarray] | None:
        """Dive from the master's LP relaxation (``lp``: already solved with the
        current cuts, or None) for a first plan, add the cuts it breaks and repair it,
        so the MILP rounds start from a plan meeting N-1. Returns the dive's point and
        the master it is a point of (None if it found no plan)."""
        f = self.formulate()
        p = f.program
        left = deadline - time.perf_counter()
        x = _dive(p, p.matrix(), np.asarray(p.integer, bool),
                  deadline=time.perf_counter() + DIVE_SHARE * left, lp=lp)
        if x is None:
            return None
        self.keep_or_repair(f, x, "diving heuristic")
        return f, x

    def keep_or_repair(self, f: Formulation, x: np.ndarray, how: str) -> bool:
        """Offer ``x`` if it meets N-1 (True); else add the cuts it breaks and repair
        it (False)."""
        reps = self.replicas(f, x)
        bad = violated(self.cands, reps, self.cs.demands, self.groups, self.fraction)
        if not bad:
            self.offer(f, x, how)
            return True
        self.add(bad)
        self.repair(reps, time.perf_counter() + max(self.sc.time_limit_s / 2, 1.0))
        return False

    def rins(self, lp: Mapping[str, float], around: Mapping[str, float], deadline: float
             ) -> None:
        """Relaxation-induced neighbourhood search: the master with every replica count
        on which the LP optimum ``lp`` and a plan ``around`` (which may break N-1)
        agree held between that value and the best plan's (most pools: both leave them
        empty), started from the best plan. A few hundred free counts instead of
        thousands: HiGHS finds in seconds the plan that its own RINS, run only after
        its long root cut loop, finds in tens."""
        if self.best is None or not lp or deadline - time.perf_counter() < 1.0:
            return
        f = self.formulate()
        p = f.program
        best = self.replicas(self.best[0], self.best[1])
        lower, upper = list(p.lower), list(p.upper)
        for c in self.cands:
            if abs(lp.get(c.id, 0.0) - around[c.id]) < 1e-6:
                lower[f.n[c.id]] = min(around[c.id], best[c.id])
                upper[f.n[c.id]] = max(around[c.id], best[c.id])
        sub = Program(cost=p.cost, lower=lower, upper=upper, integer=p.integer,
                      names=p.names, rows=p.rows)
        self.rounds += 1
        sol = sub.solve(self.sc.mip_gap / 4, max(deadline - time.perf_counter(), 1.0),
                        heuristic_start=False, start_by_name=self.best_by_name(),
                        stop_at=self.stop_at())
        if sol.x is not None:
            self.keep_or_repair(f, sol.x, "time limit; plan from a neighbourhood search")

    def repair(self, last: dict[str, float], deadline: float) -> bool:
        """Add replicas to ``last`` until it meets N-1: dive (no branching) with every
        replica count at least ``last``'s, adding the cuts each dive point breaks. N-1
        only gets easier with more replicas, so this converges. Offers the plan found;
        False if none was found by ``deadline``."""
        while time.perf_counter() < deadline:
            self.rounds += 1
            f = self.formulate()
            p = f.program
            lower = np.zeros(len(p.cost))
            for c in self.cands:
                lower[f.n[c.id]] = last[c.id]
            x = _dive(p, p.matrix(), np.asarray(p.integer, bool), deadline, lower=lower)
            if x is None:
                return False
            last = self.replicas(f, x)
            bad = violated(self.cands, last, self.cs.demands, self.groups, self.fraction)
            if not bad:
                self.offer(f, x, "time limit; N-1 met by adding replicas to the last "
                           "incumbent")
                return True
            self.cuts.extend(chk.cut for chk in bad)
        return False

    def result(self, sol: Solution | None, t0: float) -> tuple[Formulation, Solution]:
        """The cheapest plan meeting N-1, its gap against the best proved bound."""
        seconds = time.perf_counter() - t0
        if self.best is None:
            if sol is None or sol.x is not None:  # a plan that breaks N-1 is no plan
                sol = Solution(status=1, x=None, objective=None, gap=0.0, activity=None,
                               seconds=seconds, message=f"time limit: no plan meeting "
                               f"N-1 after {self.rounds} rounds")
            sol.seconds, sol.rounds = seconds, self.rounds
            return self.formulate(), sol
        f, x, bill, how = self.best
        gap = max((bill - self.bound) / abs(bill), 0.0) if np.isfinite(self.bound) and bill \
            else 1.0
        done = gap <= self.sc.mip_gap + 1e-9
        return f, Solution(status=0 if done else 1,
                           message="Optimal" if done else how, x=x, objective=bill,
                           gap=gap, seconds=seconds, activity=f.program.matrix() @ x,
                           rounds=self.rounds,
                           bound=self.bound if np.isfinite(self.bound) else None)


def _repair(sc: Scenario, cs: CandidateSet, cands: list[Candidate], drop: frozenset[str],
            cuts: list[N1Cut], exact: set[str], last: dict[str, float],
            groups: dict[str, list[str]], fraction: float, bound: float, t0: float,
            rounds: int) -> tuple[Formulation, Solution]:
    """``last`` (a plan that breaks N-1) with replicas added until N-1 holds."""
    n1 = sc.policy.n_minus_1
    loop = _CutLoop(sc, cs, cands, drop, groups, n1.by if n1 is not None else "vendor",
                    fraction, cuts, exact, bound=bound, rounds=rounds)
    loop.repair(last, time.perf_counter() + max(sc.time_limit_s / 2, 1.0))
    return loop.result(None, t0)


def _make_elastic(p: Program) -> None:
    """Replace the objective by total relative violation of relaxable rows."""
    relaxable = {"demand", "supply", "power", "vendor-share", "n-1", "min-share"}
    p.cost = [0.0] * len(p.cost)
    for r in list(p.rows):
        if r.family not in relaxable:
            continue
        if r.family in ("vendor-share", "min-share"):
            # scale by the row's largest coefficient: slack in "token-rate" units
            scale = max((abs(v) for v in r.coefs.values()), default=1.0)
        elif r.family == "demand" or r.family == "n-1":
            scale = max(abs(r.lb), 1e-9)
        else:
            scale = max(abs(r.ub), 1e-9)
        s = p.var(f"slack[{r.name}]", 1.0 / scale)
        r.slack, r.scale = s, scale
        # ≤ rows: allow exceeding the bound; ≥ and == rows: allow falling short
        r.coefs[s] = -1.0 if r.family in ("supply", "power", "vendor-share") else 1.0


POLISH_SLACK_USD = 1.0  # the polished plan's bill may exceed the optimum by this much


def polish(sc: Scenario, cs: CandidateSet, f: Formulation, sol: Solution
           ) -> tuple[Formulation, Solution]:
    """At the optimal bill, the fleet with the least list spend.

    Under a take-or-pay commitment the bill is flat until usage passes the commitment,
    so every fleet inside it is optimal and the solver stops at the first one within
    ``mip_gap`` of the bill (the objective's tie-breaker on list spend is far smaller
    than that gap). A second solve minimises list spend with the bill held at its
    optimum (plus ``POLISH_SLACK_USD``), started from the plan found. Only for the cost
    objective, and kept only when it is cheaper at list and meets N-1 exactly."""
    if sc.objective != "cost" or not sol.ok or sol.x is None or sol.objective is None:
        return f, sol
    p = f.program
    hours = sc.hours_per_month
    list_cost = [0.0] * len(p.cost)
    for c in f.cands:
        list_cost[f.n[c.id]] = c.usd_per_hour * hours
    x0 = sol.x
    spend0 = float(np.dot(list_cost, x0))
    p2 = Program(cost=list_cost, lower=list(p.lower), upper=list(p.upper),
                 integer=list(p.integer), names=list(p.names), rows=list(p.rows))
    p2.row("polish: bill at its optimum", "polish",
           {j: v for j, v in enumerate(p.cost) if v}, ub=sol.objective + POLISH_SLACK_USD)
    sol2 = p2.solve(sc.mip_gap, sc.time_limit_s,
                    start_by_name=dict(zip(p.names, x0.tolist(), strict=True)))
    if not sol2.ok or sol2.x is None or float(np.dot(list_cost, sol2.x)) >= spend0 - 1e-6:
        return f, sol
    n1 = sc.policy.n_minus_1
    if n1 is not None and not any(c.pair is not None for c in f.cands):
        groups = {g: [c.id for c in f.cands if group_of(c, n1.by) == g]
                  for g in sorted({group_of(c, n1.by) for c in f.cands})}
        reps = {c.id: float(round(sol2.x[f.n[c.id]])) for c in f.cands}
        if violated(f.cands, reps, cs.demands, groups, n1.min_fraction):
            return f, sol  # the program held N-1 by cuts only; keep the checked plan
    sol2.objective = float(np.dot(p.cost, sol2.x))
    sol2.gap = sol.gap  # of the bill, as the first solve proved it
    sol2.bound = sol.bound
    sol2.message = f"{sol.message}; then the least list spend at that bill"
    sol2.rounds = sol.rounds + 1
    sol2.seconds += sol.seconds
    return replace(f, program=p2), sol2
