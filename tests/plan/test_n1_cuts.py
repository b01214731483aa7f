"""N-1 by cuts on synthetic fleets larger than brute force can check: the plan must
meet N-1 exactly (per-group LP), cost what the exact formulation costs (within the
MIP gaps), and the repair path must turn an N-1-breaking fleet into one that holds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tokenfleet.plan.milp import _repair, group_of, solve_fleet
from tokenfleet.plan.n1 import violated

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from plan_scale import Size, synthetic  # noqa: E402


def _groups(cands):
    return {g: [c.id for c in cands if group_of(c, "vendor") == g]
            for g in sorted({c.vendor for c in cands})}


def _replicas(f, sol):
    return {c.id: float(round(sol.x[f.n[c.id]])) for c in f.cands}


@pytest.mark.parametrize("seed", [1, 2])
def test_cuts_meet_n1_and_match_the_exact_formulation(seed):
    results = {}
    for method in ("exact", "cuts"):
        sc, cs = synthetic(Size(3, 6, 3, 8, n_minus_1=method), seed)
        # the two must agree within their proved gaps; 0.5 % keeps the test ~20 s (1e-4 took
        # 160 s), the agreement check as strict relative to what each proves
        sc = sc.model_copy(update={"mip_gap": 5e-3, "time_limit_s": 30})
        f, sol = solve_fleet(sc, cs)
        assert sol.ok, method
        assert violated(cs.candidates, _replicas(f, sol), cs.demands, _groups(cs.candidates),
                        0.7) == [], method
        results[method] = (sol.objective, sol.gap, sol.bound)
    (exact, g1, b1), (cuts, g2, b2) = results["exact"], results["cuts"]
    assert cuts == pytest.approx(exact, rel=g1 + g2 + 1e-6)
    # each proved bound bounds the other formulation's plan too (the same optimum)
    assert b2 is not None and b2 <= exact * (1 + 1e-9)
    assert b1 is not None and b1 <= cuts * (1 + 1e-9)


def test_repair_adds_replicas_until_n1_holds():
    sc, cs = synthetic(Size(3, 6, 3, 8, n_minus_1="cuts"), 1)
    no_n1 = sc.model_copy(update={"policy": sc.policy.model_copy(update={"n_minus_1": None})})
    f, sol = solve_fleet(no_n1, cs)
    last = _replicas(f, sol)
    groups = _groups(cs.candidates)
    assert violated(cs.candidates, last, cs.demands, groups, 0.7), "needs a breaking fleet"
    f2, fixed = _repair(sc, cs, cs.candidates, frozenset(), [], set(), last, groups, 0.7,
                        bound=-np.inf, t0=0.0, rounds=1)
    assert fixed.x is not None
    after = _replicas(f2, fixed)
    assert all(after[k] >= v for k, v in last.items())
    assert violated(cs.candidates, after, cs.demands, groups, 0.7) == []
