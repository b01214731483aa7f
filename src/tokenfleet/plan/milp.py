"""The fleet mixed-integer program, solved by HiGHS (through SciPy's ``milp``).

Variables: ``n[c]`` integer replicas of candidate pool c; ``x[c,b]`` requests/s of
bucket b routed to c; for N-1 resilience, ``y[g][c,b]`` the re-routed traffic when
group g (a vendor, region or cloud) is gone; ``od[k]`` spend beyond contract k.

Every row has a name and a family ("demand", "capacity", "supply", "power",
"contract", "vendor-share", "n-1"), so results can say which constraints bind and
infeasible problems can say which ones conflict (elastic mode adds a penalised slack
to every constraint that can be relaxed and minimises total relative violation).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import LinearConstraint, milp
from scipy.sparse import csr_array

from tokenfleet.plan.candidates import Candidate, CandidateSet
from tokenfleet.plan.scenario import Scenario

POLICY_FAMILIES = ("vendor-share", "n-1")


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

    def solve(self, mip_gap: float, time_limit: float) -> Solution:
        t0 = time.perf_counter()
        n = len(self.cost)
        data, ri, ci = [], [], []
        for i, r in enumerate(self.rows):
            for j, v in r.coefs.items():
                ri.append(i)
                ci.append(j)
                data.append(v)
        a = csr_array((data, (ri, ci)), shape=(len(self.rows), n))
        cons = [LinearConstraint(a, [r.lb for r in self.rows], [r.ub for r in self.rows])]
        from scipy.optimize import Bounds

        res = milp(np.asarray(self.cost), integrality=np.asarray(self.integer),
                   bounds=Bounds(self.lower, self.upper), constraints=cons,
                   options={"mip_rel_gap": mip_gap, "time_limit": time_limit,
                            "disp": False})
        x = np.asarray(res.x) if res.x is not None else None
        activity = (a @ x) if x is not None else None
        return Solution(status=int(res.status), message=str(res.message), x=x,
                        objective=float(res.fun) if res.fun is not None else None,
                        gap=float(getattr(res, "mip_gap", 0.0) or 0.0),
                        seconds=time.perf_counter() - t0, activity=activity)


@dataclass
class Solution:
    status: int  # 0 optimal, 1 time/iteration limit with a solution or not, 2 infeasible
    message: str
    x: np.ndarray | None
    objective: float | None
    gap: float
    seconds: float
    activity: np.ndarray | None

    @property
    def ok(self) -> bool:
        return self.x is not None and self.status in (0, 1)


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
    return sum(k.committed_usd_per_month for k in sc.contracts) + prepaid


def group_of(c: Candidate, by: str) -> str:
    return {"vendor": c.vendor, "region": c.region, "cloud": c.cloud}[by]


def formulate(
    sc: Scenario,
    cs: CandidateSet,
    *,
    candidates: list[Candidate] | None = None,
    drop: frozenset[str] = frozenset(),
    elastic: bool = False,
) -> Formulation:
    """Build the MILP. ``drop`` names constraint rows or families to leave out (to price
    them); ``elastic`` adds a penalised slack to every relaxable row."""
    p = Program()
    cands = candidates if candidates is not None else cs.candidates
    hours = sc.hours_per_month
    contract_clouds = {k.cloud for k in sc.contracts}
    eps = 1e-6  # tie-breaker: among equal bills, use fewer chip-hours

    def dropped(name: str, family: str) -> bool:
        return name in drop or family in drop

    n: dict[str, int] = {}
    x: dict[tuple[str, str], int] = {}
    for c in cands:
        s = sc.supply[c.supply_index]
        monthly = c.usd_per_hour * hours
        if sc.objective == "energy":
            obj = c.watts / 1e6 + eps * monthly
        elif s.prepaid:  # paid for already (a constant below)
            obj = eps * monthly
        else:
            obj = (0.0 if c.cloud in contract_clouds else monthly) + eps * monthly
        # Never more replicas than serving the tier's whole demand alone would take: a
        # valid bound that keeps branch-and-bound small.
        alone = sum(d.rate_per_s * (1 + sc.headroom) / c.capacity[d.bucket]
                    for d in cs.demands if d.tier == c.tier and d.bucket in c.capacity)
        ub = min(s.max_chips // c.count, int(np.ceil(alone)) + 1)
        n[c.id] = p.var(f"n[{c.id}]", obj, 0, ub, integer=True)
        for b in c.capacity:
            x[(c.id, b)] = p.var(f"x[{c.id},{b}]")
    od: dict[str, int] = {}
    for k in sc.contracts:
        od[k.name] = p.var(f"od[{k.name}]", 1.0 if sc.objective == "cost" else 0.0)
    committed = fixed_monthly_cost(sc)
    if sc.objective == "cost" and committed:
        # Commitments and prepaid blocks are paid anyway: a constant in the bill. Carrying
        # it as a fixed variable makes the solver's relative gap relative to the whole bill.
        p.var("committed", committed, 1.0, 1.0)

    # demand: served exactly the peak plus headroom (equality keeps shares meaningful)
    for d in cs.demands:
        need = d.rate_per_s * (1 + sc.headroom)
        coefs = {x[(c.id, d.bucket)]: 1.0 for c in cands
                 if c.tier == d.tier and (c.id, d.bucket) in x}
        p.row(f"demand {d.tier}/{d.bucket}", "demand", coefs, need, need,
              f"{need:.3g} req/s at peak incl. {sc.headroom:.0%} headroom")
    # capacity: a replica's time is shared by the buckets it serves
    for c in cands:
        coefs = {x[(c.id, b)]: 1.0 / cap for b, cap in c.capacity.items()}
        coefs[n[c.id]] = -1.0
        p.row(f"capacity {c.id}", "capacity", coefs, ub=0.0)
    # supply caps
    by_supply: dict[int, list[Candidate]] = defaultdict(list)
    for c in cands:
        by_supply[c.supply_index].append(c)
    for i, group in by_supply.items():
        s = sc.supply[i]
        name = f"supply {s.accelerator}@{s.cloud}/{s.region}"
        if not dropped(name, "supply"):
            p.row(name, "supply", {n[c.id]: float(c.count) for c in group}, ub=s.max_chips,
                  detail=f"at most {s.max_chips} chips")
    # power caps
    for r in sc.regions:
        if r.power_mw is None:
            continue
        members = [c for c in cands if c.region == r.name]
        name = f"power {r.name}"
        if members and not dropped(name, "power"):
            p.row(name, "power", {n[c.id]: c.watts for c in members}, ub=r.power_mw * 1e6,
                  detail=f"cap {r.power_mw:g} MW")
    # committed spend: usage in the contract's cloud beyond the commitment is on-demand
    for k in sc.contracts:
        members = [c for c in cands if c.cloud == k.cloud
                   and not sc.supply[c.supply_index].prepaid]
        coefs = {n[c.id]: c.usd_per_hour * hours for c in members}
        coefs[od[k.name]] = -1.0
        p.row(f"contract {k.name}", "contract", coefs, ub=k.committed_usd_per_month,
              detail=f"{k.committed_usd_per_month:,.0f} USD/month committed in {k.cloud}")
    # vendor share
    pol = sc.policy
    vendors = sorted({c.vendor for c in cands})
    by_id = {c.id: c for c in cands}
    if pol.max_vendor_share is not None and not dropped("vendor-share", "vendor-share"):
        out_len = {(d.tier, d.bucket): d.output_len for d in cs.demands}
        for v in vendors:
            coefs: dict[int, float] = defaultdict(float)
            if pol.vendor_share_basis == "spend":
                for c in cands:
                    w = c.usd_per_hour * hours
                    coefs[n[c.id]] += w * ((1.0 if c.vendor == v else 0.0) - pol.max_vendor_share)
            else:
                for (cid, b), j in x.items():
                    c = by_id[cid]
                    w = out_len[(c.tier, b)]
                    coefs[j] += w * ((1.0 if c.vendor == v else 0.0) - pol.max_vendor_share)
            p.row(f"vendor-share {v}", "vendor-share", dict(coefs), ub=0.0,
                  detail=f"≤ {pol.max_vendor_share:.0%} of {pol.vendor_share_basis}")
    # N-1: without any one group, the rest still serves min_fraction of peak at SLO
    groups: dict[str, list[str]] = {}
    if pol.n_minus_1 is not None and not dropped("n-1", "n-1"):
        by = pol.n_minus_1.by
        for g in sorted({group_of(c, by) for c in cands}):
            groups[g] = [c.id for c in cands if group_of(c, by) == g]
            rest = [c for c in cands if group_of(c, by) != g]
            y = {(c.id, b): p.var(f"y[{g}][{c.id},{b}]") for c in rest for b in c.capacity}
            for d in cs.demands:
                need = d.rate_per_s * pol.n_minus_1.min_fraction
                coefs = {y[(c.id, d.bucket)]: 1.0 for c in rest
                         if c.tier == d.tier and (c.id, d.bucket) in y}
                p.row(f"n-1 without {by} {g}: {d.tier}/{d.bucket}", "n-1", coefs, lb=need,
                      detail=f"{pol.n_minus_1.min_fraction:.0%} of peak without {g}")
            for c in rest:
                coefs = {y[(c.id, b)]: 1.0 / cap for b, cap in c.capacity.items()}
                coefs[n[c.id]] = -1.0
                p.row(f"n-1 capacity without {g}: {c.id}", "n-1-capacity", coefs, ub=0.0)

    if elastic:
        _make_elastic(p)
    return Formulation(p, n, x, od, cands, groups)


def _make_elastic(p: Program) -> None:
    """Replace the objective by total relative violation of relaxable rows."""
    relaxable = {"demand", "supply", "power", "vendor-share", "n-1"}
    p.cost = [0.0] * len(p.cost)
    for r in list(p.rows):
        if r.family not in relaxable:
            continue
        if r.family == "vendor-share":
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
