"""The N-1 cut loop's parts (plan/milp.py ``_CutLoop``, plan/n1.py ``check_group``):
the per-group check gives the answer of an independent re-routing LP, the first plan
(a dive repaired until N-1 holds) meets every row and N-1, and a run cut short by its
time limit still returns a plan meeting N-1 with its gap against a valid bound."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_array

from tokenfleet.plan.highs import solve_lp
from tokenfleet.plan.milp import _CutLoop, _dive, _lp_cuts, group_of, solve_fleet
from tokenfleet.plan.n1 import check_group, starting_cuts, violated

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from plan_scale import Size, synthetic  # noqa: E402

FRACTION = 0.7  # plan_scale's N-1 policy


def _groups(cands):
    return {g: [c.id for c in cands if group_of(c, "vendor") == g]
            for g in sorted({c.vendor for c in cands})}


def _served_fraction(cands, replicas, demands, tier, members):
    """max f: pools outside ``members`` route f x every bucket's peak within their
    replicas' capacity — the primal LP, over every pool of the tier (with or without
    replicas), written here independently of plan/n1.py."""
    peak: dict[str, float] = {}
    for d in demands:
        if d.tier == tier:
            peak[d.bucket] = peak.get(d.bucket, 0.0) + d.rate_per_s
    rest = [c for c in cands if c.tier == tier and c.id not in members]
    cols = [(c, b) for c in rest for b in c.capacity if b in peak]
    nf = len(cols)  # column nf is f
    rows, ci, vals, lo, hi = [], [], [], [], []
    for i, b in enumerate(sorted(peak)):  # sum_c y_cb - f * peak_b >= 0
        for j, (_, bb) in enumerate(cols):
            if bb == b:
                rows.append(i)
                ci.append(j)
                vals.append(1.0)
        rows.append(i)
        ci.append(nf)
        vals.append(-peak[b])
        lo.append(0.0)
        hi.append(np.inf)
    r0 = len(peak)
    for k, c in enumerate(rest):  # sum_b y_cb / cap_cb <= n_c
        for j, (cc, b) in enumerate(cols):
            if cc is c:
                rows.append(r0 + k)
                ci.append(j)
                vals.append(1.0 / c.capacity[b])
        lo.append(-np.inf)
        hi.append(replicas.get(c.id, 0.0))
    a = coo_array((vals, (rows, ci)), shape=(r0 + len(rest), nf + 1))
    cost = np.zeros(nf + 1)
    cost[nf] = -1.0
    res = solve_lp(cost, a, np.array(lo), np.array(hi))
    assert res.objective is not None
    return -res.objective


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_check_matches_an_independent_rerouting_lp(seed):
    """The check solves only the pools with replicas; the answer is the full LP's."""
    _, cs = synthetic(Size(3, 6, 3, 8), seed)
    rng = np.random.default_rng(seed)
    # most pools empty, a few with a handful of replicas (fractional, as LP points are)
    reps = {c.id: float(rng.uniform(0, 4)) if rng.random() < 0.15 else 0.0
            for c in cs.candidates}
    groups = _groups(cs.candidates)
    tiers = sorted({d.tier for d in cs.demands})
    for g, members in groups.items():
        for t in tiers:
            got = check_group(g, t, set(members), cs.candidates, reps, cs.demands, FRACTION)
            want = _served_fraction(cs.candidates, reps, cs.demands, t, set(members))
            assert got.fraction == pytest.approx(want, rel=1e-6, abs=1e-9), (g, t)
            # the cut the check returns is tight at these replicas
            cut = got.cut
            lhs = sum(reps[c.id] * cut.coefficient(c) for c in cs.candidates
                      if c.tier == t and c.id not in members)
            assert lhs == pytest.approx(got.fraction, rel=1e-6, abs=1e-9)


def _meets_rows(f, x, tol=1e-6):
    p = f.program
    act = p.matrix() @ x
    lo = np.array([r.lb for r in p.rows])
    hi = np.array([r.ub for r in p.rows])
    scale = np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, 0.0)))
    assert (act >= lo - tol * scale).all()
    scale = np.maximum(1.0, np.abs(np.where(np.isfinite(hi), hi, 0.0)))
    assert (act <= hi + tol * scale).all()
    ints = np.asarray(p.integer, bool)
    assert np.allclose(x[ints], np.round(x[ints]), atol=1e-6)


def _cut_loop():
    """The synthetic 5x10x5x12 fleet and an N-1 cut loop over it with only the starting
    cuts."""
    sc, cs = synthetic(Size(5, 10, 5, 12), 3)
    cands = cs.candidates
    groups = _groups(cands)
    loop = _CutLoop(sc, cs, cands, frozenset(), groups, "vendor", FRACTION,
                    starting_cuts(cands, cs.demands, groups, FRACTION))
    return cs, cands, groups, loop


def test_first_plan_is_repaired_until_n1_holds():
    # only the starting cuts: the dive point breaks N-1, so the repair has work to do
    cs, cands, groups, loop = _cut_loop()
    f = loop.formulate()
    p = f.program
    dive = _dive(p, p.matrix(), np.asarray(p.integer, bool), time.perf_counter() + 30)
    assert dive is not None
    dived = loop.replicas(f, dive)
    assert violated(cands, dived, cs.demands, groups, FRACTION), "needs a breaking dive"
    loop.first_plan(None, time.perf_counter() + 30)
    assert loop.best is not None
    fb, xb, bill, _ = loop.best
    _meets_rows(fb, xb)
    after = loop.replicas(fb, xb)
    assert violated(cands, after, cs.demands, groups, FRACTION) == []
    assert all(after[k] >= v for k, v in dived.items())  # repaired by adding only
    assert bill == pytest.approx(float(np.dot(fb.program.cost, xb)))


def test_cut_short_run_returns_a_plan_meeting_n1_and_an_honest_gap():
    sc, cs = synthetic(Size(5, 10, 5, 12), 3)
    sc = sc.model_copy(update={"mip_gap": 1e-4, "time_limit_s": 4})
    f, sol = solve_fleet(sc, cs)
    assert sol.x is not None and sol.objective is not None and sol.bound is not None
    _meets_rows(f, sol.x)
    reps = {c.id: float(round(sol.x[f.n[c.id]])) for c in f.cands}
    assert violated(cs.candidates, reps, cs.demands, _groups(cs.candidates), FRACTION) == []
    assert sol.objective == pytest.approx(float(np.dot(f.program.cost, sol.x)))
    assert sol.gap == pytest.approx(max((sol.objective - sol.bound) / sol.objective, 0.0))
    assert sol.bound <= sol.objective


def test_neighbourhood_search_keeps_n1_and_never_raises_the_bill():
    cs, cands, groups, loop = _cut_loop()
    cut_lp = _lp_cuts(loop.formulate(), loop.cuts, groups, "vendor", FRACTION, cs.demands,
                      time.perf_counter() + 30)
    assert cut_lp.replicas
    dived = loop.first_plan(cut_lp.lp, time.perf_counter() + 30)
    assert dived is not None and loop.best is not None
    before = loop.best[2]
    loop.rins(cut_lp.replicas, loop.replicas(*dived), time.perf_counter() + 10)
    fb, xb, bill, _ = loop.best
    assert bill <= before
    _meets_rows(fb, xb)
    assert violated(cands, loop.replicas(fb, xb), cs.demands, groups, FRACTION) == []
    assert cut_lp.bound <= bill  # the cut LP's optimum bounds every plan
