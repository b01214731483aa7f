"""The planner's MILP against brute force on tiny scenarios, and the independent checker."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from tokenfleet.catalog import load_catalog
from tokenfleet.plan.candidates import Candidate, CandidateSet, Demand
from tokenfleet.plan.check import check_plan
from tokenfleet.plan.milp import formulate, group_of, solve_fleet
from tokenfleet.plan.n1 import check_group, starting_cuts
from tokenfleet.plan.planner import _assemble, bill
from tokenfleet.plan.scenario import Scenario

CAT = load_catalog()
ROOT = Path(__file__).resolve().parents[2]


def _scenario(**policy) -> Scenario:
    return Scenario.model_validate({
        "name": "tiny",
        "headroom": 0.0,
        "mip_gap": 1e-9,
        "tiers": [{"name": "t", "model": "llama-3.1-8b",
                   "traffic": {"rate_per_s": 10, "mix": [{"input_len": 100, "output_len": 50,
                                                          "share": 1}]},
                   "slo": {"tpot_s": 0.05}}],
        "supply": [
            {"accelerator": "h100-sxm", "cloud": "a", "region": "r1", "max_chips": 6},
            {"accelerator": "maia-200", "cloud": "azure", "region": "r2", "max_chips": 5},
            {"accelerator": "mi300x", "cloud": "b", "region": "r2", "max_chips": 6},
        ],
        "regions": [{"name": "r1", "power_mw": 1.0}, {"name": "r2", "power_mw": 0.0032}],
        "contracts": [{"name": "c", "cloud": "azure", "committed_usd_per_month": 2000}],
        "policy": policy,
    })


def _cands(caps: list[dict[str, float]], prices: list[float]) -> CandidateSet:
    """Three pools (one per supply entry); capacities in req/s per replica per bucket."""
    demands = [Demand("t", "b1", 100, 50, 7.0), Demand("t", "b2", 1000, 200, 3.0)]
    cands = []
    for i, (cap, price) in enumerate(zip(caps, prices, strict=True)):
        s = ["h100-sxm", "maia-200", "mi300x"][i]
        cands.append(Candidate(id=f"p{i}", tier="t", supply_index=i,
                               accelerator=CAT.accelerator(s), cloud=["a", "azure", "b"][i],
                               region=["r1", "r2", "r2"][i], precision="fp8", count=1,
                               usd_per_chip_hour=price, price_kind="on_demand", capacity=cap,
                               estimates={}, uncertainty=0.0))
    return CandidateSet(demands, cands)


def _brute_force(sc: Scenario, cs: CandidateSet) -> float | None:
    """Enumerate replica counts; for each, an LP decides whether routing exists."""
    hours = sc.hours_per_month
    bounds = [sc.supply[c.supply_index].max_chips // c.count for c in cs.candidates]
    best = None
    pol = sc.policy
    for n in itertools.product(*[range(b + 1) for b in bounds]):
        watts = {r.name: 0.0 for r in sc.regions}
        for c, k in zip(cs.candidates, n, strict=True):
            watts[c.region] += k * c.watts
        if any(r.power_mw is not None and watts[r.name] > r.power_mw * 1e6 for r in sc.regions):
            continue
        if not _routable(sc, cs, n):
            continue
        usage: dict[str, float] = {}
        for c, k in zip(cs.candidates, n, strict=True):
            if not sc.supply[c.supply_index].prepaid:
                usage[c.cloud] = usage.get(c.cloud, 0.0) + k * c.usd_per_hour * hours
        commit = {k.cloud: k.committed_usd_per_month for k in sc.contracts}
        cost = sum(max(u - commit.get(cl, 0.0), 0.0) for cl, u in usage.items())
        cost += sum(commit.values())
        cost += sum(s.max_chips * s.usd_per_chip_hour * hours for s in sc.supply if s.prepaid)
        if pol.max_vendor_share is not None and pol.vendor_share_basis == "spend":
            tot = sum(k * c.usd_per_hour for c, k in zip(cs.candidates, n, strict=True))
            by_v: dict[str, float] = {}
            for c, k in zip(cs.candidates, n, strict=True):
                by_v[c.vendor] = by_v.get(c.vendor, 0.0) + k * c.usd_per_hour
            if tot and max(by_v.values()) > pol.max_vendor_share * tot + 1e-9:
                continue
        if best is None or cost < best - 1e-9:
            best = cost
    return best


def _routable(sc: Scenario, cs: CandidateSet, n: tuple[int, ...]) -> bool:
    """Is there a split of every bucket over pools within their capacity (and, if asked,
    a traffic-basis vendor cap and N-1 re-routing)? Plain LP feasibility."""
    cands, dem = cs.candidates, cs.demands
    pairs = [(i, j) for i, c in enumerate(cands) for j, d in enumerate(dem)
             if d.bucket in c.capacity]
    nv = len(pairs)
    a_eq = np.zeros((len(dem), nv))
    for k, (_i, j) in enumerate(pairs):
        a_eq[j, k] = 1.0
    b_eq = np.array([d.rate_per_s for d in dem])
    a_ub, b_ub = [], []
    for i, c in enumerate(cands):
        row = np.zeros(nv)
        for k, (ii, j) in enumerate(pairs):
            if ii == i:
                row[k] = 1.0 / c.capacity[dem[j].bucket]
        a_ub.append(row)
        b_ub.append(n[i])
    pol = sc.policy
    if pol.max_vendor_share is not None and pol.vendor_share_basis == "traffic":
        for v in {c.vendor for c in cands}:
            row = np.zeros(nv)
            for k, (i, j) in enumerate(pairs):
                w = dem[j].output_len
                row[k] = w * ((cands[i].vendor == v) - pol.max_vendor_share)
            a_ub.append(row)
            b_ub.append(0.0)
    res = linprog(np.zeros(nv), A_ub=np.array(a_ub), b_ub=np.array(b_ub), A_eq=a_eq,
                  b_eq=b_eq, bounds=[(0, None)] * nv, method="highs")
    if res.status != 0:
        return False
    if pol.n_minus_1 is not None:
        for v in {c.vendor for c in cands}:
            keep = tuple(0 if c.vendor == v else k for c, k in zip(cands, n, strict=True))
            sub = Scenario.model_validate({**sc.model_dump(), "policy": {}})
            scaled = CandidateSet([Demand(d.tier, d.bucket, d.input_len, d.output_len,
                                          d.rate_per_s * pol.n_minus_1.min_fraction)
                                   for d in dem], cands)
            if not _routable(sub, scaled, keep):
                return False
    return True


CAPS = [{"b1": 2.0, "b2": 0.5}, {"b1": 3.0, "b2": 1.2}, {"b1": 1.5}]
PRICES = [2.0, 4.0, 1.2]


POLICIES = [
    {},
    {"max_vendor_share": 0.6},
    {"max_vendor_share": 0.5, "vendor_share_basis": "spend"},
    {"n_minus_1": {"by": "vendor", "min_fraction": 0.5}},
    {"max_vendor_share": 0.7, "n_minus_1": {"by": "vendor", "min_fraction": 0.4}},
]


@pytest.mark.parametrize(("policy", "method"), [
    (p, m) for p in POLICIES for m in (("exact", "cuts") if "n_minus_1" in p else ("exact",))])
def test_milp_matches_brute_force(policy, method):
    if "n_minus_1" in policy:
        policy = {**policy, "n_minus_1": {**policy["n_minus_1"], "method": method}}
    sc = _scenario(**policy)
    cs = _cands(CAPS, PRICES)
    f, sol = solve_fleet(sc, cs)
    expected = _brute_force(sc, cs)
    if expected is None:
        assert not sol.ok
        return
    assert sol.ok
    assert bill(sc, f, sol) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_n1_cuts_and_exact_agree_with_brute_force_on_random_pools(seed):
    """N-1 by cuts must land on the same optimum as the exact copies and as enumeration,
    on random capacities and prices (some pools unable to serve a bucket)."""
    rng = np.random.default_rng(seed)
    caps = []
    for _ in range(3):
        cap = {"b1": float(rng.uniform(0.5, 3.0)), "b2": float(rng.uniform(0.2, 1.5))}
        if rng.random() < 0.3:
            del cap[str(rng.choice(["b1", "b2"]))]
        caps.append(cap)
    prices = [float(v) for v in rng.uniform(1.0, 5.0, 3)]
    cs = _cands(caps, prices)
    if not all(any(b in c for c in caps) for b in ("b1", "b2")):
        pytest.skip("a bucket nobody serves")
    frac = float(rng.uniform(0.2, 0.6))
    expected = _brute_force(_scenario(n_minus_1={"by": "vendor", "min_fraction": frac}), cs)
    for method in ("exact", "cuts"):
        sc = _scenario(n_minus_1={"by": "vendor", "min_fraction": frac, "method": method})
        f, sol = solve_fleet(sc, cs)
        if expected is None:
            assert not sol.ok, method
        else:
            assert sol.ok and bill(sc, f, sol) == pytest.approx(expected, rel=1e-6), method


def test_n1_check_matches_the_independent_checker_and_cuts_are_valid():
    """``check_group`` (the dual LP the cuts come from) gives the same servable
    fraction as ``check.max_served_fraction`` (a primal LP over plan.json), and every
    cut holds at an N-1-feasible plan: cuts never cut off a valid fleet."""
    from tokenfleet.plan.check import max_served_fraction

    sc = _scenario(n_minus_1={"by": "vendor", "min_fraction": 0.4, "method": "exact"})
    cs = _cands(CAPS, PRICES)
    _with_estimates(cs)
    f, sol = solve_fleet(sc, cs)
    plan = _assemble(sc, cs, f, sol, "tiny", [], [], CAT)
    reps = {u.pool: float(u.replicas) for u in plan.units}
    groups = {g: [c.id for c in cs.candidates if group_of(c, "vendor") == g]
              for g in {c.vendor for c in cs.candidates}}
    for g, ids in groups.items():
        chk = check_group(g, "t", set(ids), cs.candidates, reps, cs.demands, 0.4)
        without = {u.pool for u in plan.units if u.vendor == g}
        assert chk.fraction == pytest.approx(max_served_fraction(plan, without), rel=1e-6)
        assert sum(reps.get(c.id, 0) * chk.cut.coefficient(c) for c in cs.candidates
                   if c.id not in ids) == pytest.approx(chk.fraction, rel=1e-6)
    for cut in starting_cuts(cs.candidates, cs.demands, groups, 0.4):
        lhs = sum(reps.get(c.id, 0) * cut.coefficient(c) for c in cs.candidates
                  if c.id not in groups[cut.group])
        assert lhs >= cut.rhs - 1e-9


def _with_estimates(cs: CandidateSet) -> None:
    """The assembler reads estimates for labels only."""
    from tokenfleet.perf.estimate import Query, estimate

    e = estimate(Query(model="llama-3.1-8b", accelerator="h100-sxm", precision="fp8",
                       input_len=100, output_len=50))
    for c in cs.candidates:
        c.estimates = {b: e for b in c.capacity}


def test_power_cap_binds_and_is_respected():
    # r2 has 3.2 kW: Maia (750 W) and MI300X (750 W) replicas together at most 4.
    sc = _scenario()
    cs = _cands(CAPS, PRICES)
    f = formulate(sc, cs)
    sol = f.program.solve(1e-9, 30)
    assert sol.x is not None
    r2 = sum(round(sol.x[f.n[c.id]]) * c.watts for c in cs.candidates if c.region == "r2")
    assert r2 <= 3200 + 1e-6


def test_assembled_plan_passes_independent_check():
    sc = _scenario(max_vendor_share=0.7, n_minus_1={"by": "vendor", "min_fraction": 0.4})
    cs = _cands(CAPS, PRICES)
    for c in cs.candidates:  # the assembler reads estimates for labels only
        from tokenfleet.perf.estimate import Query, estimate

        e = estimate(Query(model="llama-3.1-8b", accelerator=c.accelerator.id,
                           precision="fp8", input_len=100, output_len=50))
        c.estimates = {b: e for b in c.capacity}
    f = formulate(sc, cs)
    sol = f.program.solve(1e-9, 30)
    plan = _assemble(sc, cs, f, sol, "tiny", [], [], CAT)
    assert check_plan(plan, sc) == []
    # the checker is not a rubber stamp: break the plan and it says so
    broken = plan.model_copy(deep=True)
    broken.units[0].replicas = 0
    assert any(v.check in ("load within capacity", "N-1 holds") for v in check_plan(broken, sc))
    broken = plan.model_copy(deep=True)
    broken.traffic_split[0].shares = {k: v / 2 for k, v in broken.traffic_split[0].shares.items()}
    assert any(v.check == "shares sum to 1" for v in check_plan(broken, sc))


@pytest.mark.slow
def test_example_plan_is_verified(tmp_path):
    from tokenfleet.plan.planner import plan_scenario
    from tokenfleet.plan.scenario import load_scenario

    sc, base = load_scenario(ROOT / "examples" / "frontier-lab.yaml")
    plan = plan_scenario(sc, base, name=sc.name, compare_policies=False)
    assert check_plan(plan, sc) == []
    assert plan.units and plan.cost.usd_per_month > 0


def test_prepaid_block_is_a_fixed_cost():
    sc = _scenario()
    data = sc.model_dump()
    # a prepaid block of 2 MI300X at a high nominal price: a sunk cost, free to use
    data["supply"][2].update(prepaid=True, usd_per_chip_hour=10.0, max_chips=2)
    sc = Scenario.model_validate(data)
    cs = _cands(CAPS, [2.0, 4.0, 10.0])
    f = formulate(sc, cs)
    sol = f.program.solve(1e-9, 30)
    expected = _brute_force(sc, cs)
    assert sol.ok and expected is not None
    assert bill(sc, f, sol) == pytest.approx(expected, rel=1e-6)
    assert bill(sc, f, sol) >= 2 * 10.0 * sc.hours_per_month + 2000  # block + commitment


def _estimated(cs: CandidateSet) -> CandidateSet:
    from tokenfleet.perf.estimate import Query, estimate

    e = estimate(Query(model="llama-3.1-8b", accelerator="h100-sxm", precision="fp8",
                       input_len=100, output_len=50))
    for c in cs.candidates:
        c.estimates = {b: e for b in c.capacity}
    return cs


@pytest.mark.parametrize("policy", [{}, {"max_vendor_share": 0.7},
                                    {"n_minus_1": {"by": "vendor", "min_fraction": 0.4}},
                                    {"n_minus_1": {"by": "region", "min_fraction": 0.4}}])
def test_baselines_say_what_they_drop_and_never_beat_a_same_constraint_plan(policy):
    from tokenfleet.plan.planner import solve_plan

    sc = _scenario(**policy)
    cs = _estimated(_cands(CAPS, PRICES))
    plan = solve_plan(sc, cs, "tiny", CAT)
    assert plan.baselines and all(isinstance(b.drops, list) for b in plan.baselines)
    cheapest = plan.baselines[0]
    if not policy:  # nothing to drop: the same constraints, the same optimum
        assert cheapest.drops == [] and cheapest.usd_per_month == pytest.approx(
            plan.cost.usd_per_month, rel=1e-6)
    else:
        assert cheapest.drops and cheapest.usd_per_month <= plan.cost.usd_per_month * 1.000001
    for b in plan.baselines:
        if b.feasible and not b.drops:
            assert plan.cost.usd_per_month <= b.usd_per_month * (1 + 1e-6)
        # a single-vendor fleet keeps N-1 by region (it can meet it) but not by vendor
        if b.name != "cheapest mix, no policy constraints" and "n_minus_1" in policy:
            by = policy["n_minus_1"]["by"]
            assert any(d.startswith("n-1") for d in b.drops) == (by == "vendor")


def test_capacity_scale_only_touches_the_named_pools_and_tiers():
    from tokenfleet.plan.planner import scaled

    cs = _cands(CAPS, PRICES)
    out = scaled(cs, {"p0": 0.5, "tier:t": 0.8})
    assert out.candidates[0].capacity["b1"] == pytest.approx(2.0 * 0.5 * 0.8)
    assert out.candidates[1].capacity["b2"] == pytest.approx(1.2 * 0.8)
    assert cs.candidates[0].capacity["b1"] == 2.0  # the input is left alone
    assert scaled(cs, {}) is cs


@pytest.mark.parametrize("q", [0.8, 0.95])
def test_risk_pools_fall_short_at_most_one_minus_the_confidence(q):
    from tokenfleet.plan.planner import solve_plan

    sc = _scenario().model_copy(update={"confidence": q})
    cs = _estimated(_cands(CAPS, PRICES))
    for c in cs.candidates:  # a ±30 % band, the plan counting on the q-lower quantile
        c.uncertainty = 0.3
        from tokenfleet.plan.risk import confidence_factor

        c.capacity = {b: v * confidence_factor(0.3, q) for b, v in c.capacity.items()}
    plan = solve_plan(sc, cs, "tiny", CAT, compare_policies=False)
    assert plan.risk is not None and plan.risk.confidence == q
    assert all(p.shortfall_probability <= 1 - q + 0.02 for p in plan.risk.pools)
    # a fully loaded pool sits right at the quantile: its shortfall is close to 1 - q
    assert max(p.shortfall_probability for p in plan.risk.pools) > (1 - q) * 0.5
    assert 0 < plan.risk.tiers["t"] <= 1
