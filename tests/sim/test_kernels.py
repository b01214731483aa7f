"""The compiled inner loops (``tokenfleet.sim.kernels``) against plain statements of
their rules. Whole runs are checked against the previous engine in
``test_engine_equivalence.py``; these pin the pieces where a slip would be subtle."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.sim import kernels
from tokenfleet.sim.stepcost import FleetStepCost, StageCoefficients, stage_time

from .test_stepcost import case_units


def test_iteration_time_is_stage_time_over_micro_batches() -> None:
    """Dense, MoE, MLA, sliding windows and pipelines in one fleet: the compiled
    per-lane iteration time is ``pp`` stage steps of ``stage_time`` (the formula
    ``test_stepcost`` checks against the performance model), each carrying 1/pp of
    the batch but at least one token when anything decodes."""
    coeffs = [StageCoefficients.of(u) for u in case_units(layouts=3)]
    rng = np.random.default_rng(3)
    lanes = rng.integers(0, len(coeffs), 4000)
    cost = FleetStepCost(coeffs, lanes)
    assert cost.moe and cost.sliding
    assert max(c.pp for c in coeffs) > 1
    idx = np.arange(lanes.size)
    dec = rng.integers(0, 400, idx.size).astype(float)
    dec[::7] = 0.0
    dec[::11] = 1.0
    ctx = rng.integers(1, 60000, idx.size).astype(float)
    pre = np.where(rng.random(idx.size) < 0.5, 0.0, rng.integers(0, 6000, idx.size))
    att = pre * rng.random(idx.size) * 1e9
    got = cost.iteration_s(idx, dec, ctx, pre, att)
    pp = np.array([coeffs[j].pp for j in lanes])
    per_stage = np.where(dec > 0, np.maximum(dec / pp, np.minimum(dec, 1.0)), 0.0)
    table = {name: np.array([getattr(coeffs[j], name) for j in lanes]) for name in
             StageCoefficients.__dataclass_fields__}
    want = pp * stage_time(table, per_stage, ctx, pre / pp, att / pp)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _fill_plainly(picks, outstanding, first, lanes):
    """Each request in turn to its pool's lane with the fewest outstanding requests,
    the lowest index on ties; -1 when every lane of the pool is down."""
    out = []
    for p in picks:
        own = range(first[p], first[p] + lanes[p])
        best = min(own, key=lambda r: (outstanding[r], r), default=None)
        if best is None or outstanding[best] == np.inf:
            out.append(-1)
        else:
            outstanding[best] += 1
            out.append(best)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_place_takes_the_least_loaded_lane_in_turn(seed: int) -> None:
    """Requests of several pools, interleaved, go to their pool's least loaded lane in
    turn and join that lane's waiting queue in arrival order."""
    rng = np.random.default_rng(seed)
    lanes = rng.integers(1, 40, 5)
    first = np.concatenate(([0], np.cumsum(lanes)[:-1]))
    n_lanes = int(lanes.sum())
    o = rng.integers(0, 6, n_lanes).astype(float)  # many ties
    o[first[1]:first[1] + lanes[1]] = np.inf  # a pool that is down
    o[first[2]] = np.inf  # a lane that is down
    picks = rng.integers(0, 5, 300)
    want_o = o.copy()
    want = _fill_plainly(picks.tolist(), want_o, first.tolist(), lanes.tolist())
    m = picks.size
    slots = rng.permutation(m)
    cols = {f: np.zeros(m, kernels.SLOT_DTYPES[f]) for f in kernels.Slots._fields}
    cols["need"] = rng.integers(1, 5000, m)
    cols["ready"] = rng.random(m)
    sl = kernels.Slots(**cols)
    q_head, q_tail = np.full(n_lanes, -1), np.full(n_lanes, -1)
    n_wait, wait_head, routed = np.zeros(n_lanes, np.int64), np.full(n_lanes, np.inf), \
        np.zeros(5, np.int64)
    coef = np.ones(5)
    got = kernels.place(slots, picks, np.full(m, -1), o, first, lanes, routed, sl, q_head, q_tail,
                        n_wait, wait_head, coef, coef, np.zeros(5), np.zeros(5, np.int64))
    assert got.tolist() == want
    np.testing.assert_array_equal(o, want_o)
    placed = got >= 0
    assert routed.tolist() == np.bincount(picks[placed], minlength=5).tolist()
    for r in range(n_lanes):  # each lane's queue: its requests in arrival order
        queue, s = [], q_head[r]
        while s >= 0:
            queue.append(int(s))
            s = sl.next[s]
        assert queue == slots[got == r].tolist()
        assert n_wait[r] == len(queue)
        assert wait_head[r] == (sl.ready[queue[0]] if queue else np.inf)


def test_coefficient_rows_are_named_in_the_table_order() -> None:
    from tokenfleet.sim.stepcost import COEFFS

    assert [getattr(kernels, name.upper()) for name in COEFFS] == list(range(len(COEFFS)))
