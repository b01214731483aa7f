"""N-1 resilience as cuts: a small master program plus exact checks, instead of one
copy of the routing variables per failure group.

The exact N-1 condition for group g (a vendor, region or cloud) and tier t is that the
tier's pools outside g can re-route ``min_fraction`` of every bucket's peak within
their capacity. For fixed replica counts ``n`` that is an LP; by LP duality it holds
iff for every bucket weighting ``u >= 0`` with ``sum_b u_b * peak_b = 1``

    sum_{c not in g} n_c * max_b(u_b * cap_cb)  >=  min_fraction.

Each ``u`` therefore gives a valid linear cut on ``n`` (a Benders feasibility cut), and
the ``u`` that the dual LP picks for a violating ``n`` is the one that cuts it off. The
planner solves the fleet MILP with only these cuts (one row each, no new variables),
checks every (group, tier) exactly, adds the cuts that the incumbent violates and
re-solves, until the incumbent passes. Because the master is a relaxation of the full
program, its proved lower bound still bounds the true optimum, so the reported gap is
honest. A pair that keeps coming back gets its exact routing copy instead
(``formulate(n1_exact=...)``), which bounds the number of rounds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_array

from tokenfleet.plan.candidates import Candidate, Demand
from tokenfleet.plan.highs import solve_lp


@dataclass(frozen=True)
class N1Cut:
    """``sum_{c in tier, group(c) != group} n_c * max_b(weights_b * cap_cb) >= rhs``."""

    group: str
    tier: str
    weights: tuple[tuple[str, float], ...]  # (bucket, u_b), normalised: sum u_b * peak_b = 1
    rhs: float  # min_fraction

    def coefficient(self, c: Candidate) -> float:
        """Replica coefficient of candidate ``c`` in this cut (req/s-weighted capacity)."""
        return max((u * c.capacity[b] for b, u in self.weights if b in c.capacity),
                   default=0.0)


def _tier_demand(demands: Iterable[Demand], tier: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for d in demands:
        if d.tier == tier:
            out[d.bucket] += d.rate_per_s
    return dict(out)


def starting_cuts(cands: Sequence[Candidate], demands: Sequence[Demand],
                  groups: Mapping[str, Sequence[str]], min_fraction: float) -> list[N1Cut]:
    """One cut per (group, tier) before any solve, weighting each bucket by the inverse
    of a typical pool's capacity for it: close to exact when chips' speeds differ by a
    similar factor across buckets, and never wrong (any weighting is valid)."""
    cuts: list[N1Cut] = []
    tiers = sorted({c.tier for c in cands})
    for t in tiers:
        peak = _tier_demand(demands, t)
        typical = {b: float(np.median([c.capacity[b] / c.count for c in cands
                                       if c.tier == t and b in c.capacity]) or 1.0)
                   for b in peak if any(c.tier == t and b in c.capacity for c in cands)}
        norm = sum(peak[b] / typical[b] for b in typical)
        if norm <= 0:
            continue
        w = tuple(sorted((b, 1.0 / typical[b] / norm) for b in typical))
        cuts.extend(N1Cut(g, t, w, min_fraction) for g in groups)
    return cuts


@dataclass(frozen=True)
class N1Check:
    group: str
    tier: str
    fraction: float  # largest share of every bucket's peak the rest can serve
    cut: N1Cut  # the weighting that proves ``fraction`` (violated iff fraction < rhs)


def check_group(group: str, tier: str, members: set[str], cands: Sequence[Candidate],
                replicas: Mapping[str, float], demands: Sequence[Demand],
                min_fraction: float) -> N1Check:
    """Largest fraction of tier ``tier``'s peak the pools outside ``members`` can serve
    with ``replicas``, and the dual weighting that proves it.

    Solves the dual of "max f: sum_c y_cb >= f * peak_b, sum_b y_cb / cap_cb <= n_c":
    min sum_c n_c v_c  s.t.  sum_b u_b peak_b = 1,  u_b cap_cb <= v_c,  u, v >= 0.
    """
    peak = _tier_demand(demands, tier)
    buckets = sorted(peak)
    bi = {b: i for i, b in enumerate(buckets)}
    # Pools without replicas serve nothing: their v_c costs nothing, so their rows never
    # bind u and leaving them out gives the same optimum (and the same cut) from an LP
    # a tenth the size (a plan uses few of its tier's pools).
    rest = [c for c in cands if c.tier == tier and c.id not in members
            and replicas.get(c.id, 0.0) > 0]
    nb, nc = len(buckets), len(rest)
    rows, cols, vals = [], [], []
    r = 0
    for j, c in enumerate(rest):
        for b, cap in c.capacity.items():
            if b not in bi:
                continue
            rows += [r, r]
            cols += [bi[b], nb + j]
            vals += [cap, -1.0]
            r += 1
    cost = np.concatenate([np.zeros(nb), [replicas[c.id] for c in rest]])
    # rows: u_b cap_cb - v_c <= 0 for every (c, b), then sum_b u_b peak_b = 1
    rows.extend([r] * nb)
    cols.extend(range(nb))
    vals.extend(peak[b] for b in buckets)
    a = coo_array((vals, (rows, cols)), shape=(r + 1, nb + nc))
    res = solve_lp(cost, a, np.r_[np.full(r, -np.inf), 1.0], np.r_[np.zeros(r), 1.0])
    if res.x is None or res.objective is None:  # cannot happen: u = e_b / peak_b is feasible
        raise RuntimeError(f"N-1 check LP for {group}/{tier} failed: {res.message}")
    u = res.x[:nb]
    weights = tuple((b, float(u[i])) for i, b in enumerate(buckets) if u[i] > 1e-12)
    return N1Check(group, tier, res.objective, N1Cut(group, tier, weights, min_fraction))


def violated(cands: Sequence[Candidate], replicas: Mapping[str, float],
             demands: Sequence[Demand], groups: Mapping[str, Sequence[str]],
             min_fraction: float, tol: float = 1e-6) -> list[N1Check]:
    """Every (group, tier) whose N-1 condition ``replicas`` breaks."""
    out = []
    tiers = sorted({d.tier for d in demands})
    for g, ids in groups.items():
        members = set(ids)
        for t in tiers:
            if not any(c.tier == t and c.id in members and replicas.get(c.id, 0) > 0
                       for c in cands):
                continue  # the group serves none of this tier: losing it changes nothing
            chk = check_group(g, t, members, cands, replicas, demands, min_fraction)
            if chk.fraction < min_fraction - tol:
                out.append(chk)
    return out
