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


def _lanes(n: int, **cols: np.ndarray) -> kernels.Lanes:
    dtypes = {"up": bool, "blocked": bool, "prefilling": bool, "n_seqs": np.int64,
              "n_wait": np.int64, "step": np.int64, "n_dec": np.int64,
              "max_seqs": np.int64, "budget": np.int64, "q_head": np.int64,
              "q_tail": np.int64, "pf_head": np.int64, "pf_tail": np.int64,
              "far_next": np.int64, "ring_from": np.int64, "verify": np.int64,
              "kv_arrives": bool}
    base = {f: np.zeros(n, dtypes.get(f, np.float64)) for f in kernels.Lanes._fields}
    base["advance"] = np.ones(n)  # plain lanes: one token per iteration
    base.update(q_head=np.full(n, -1), q_tail=np.full(n, -1), pf_head=np.full(n, -1),
                pf_tail=np.full(n, -1), wait_head=np.full(n, np.inf))
    base.update(cols)
    return kernels.Lanes(**base)


@pytest.mark.parametrize("seed", range(40))
def test_the_compiled_round_hands_back_every_round_that_needs_python(seed: int) -> None:
    """``advance`` runs the scheduler itself only where ``_needs_python`` says no; then
    ``schedule`` must finish (no preemption, no stuck lane) on any lane state: KV near
    or over capacity, budgets down to zero, partial prompts with nothing decoding."""
    rng = np.random.default_rng(seed)
    n = 6
    cap = rng.integers(200, 400, n).astype(float)
    n_dec = rng.integers(0, 3, n)
    # KV free: none (stuck if nothing decodes), a little, plenty; one lane over in some.
    kv = cap - n_dec - rng.choice([0.0, 0.0, 1.0, 40.0, 150.0], n)
    if seed % 4 == 0:
        r = rng.integers(n)
        kv[r] = cap[r] + 5.0
    lanes = _lanes(n, kv_cap=cap, kv=kv, n_dec=n_dec,
                   budget=rng.integers(0, 300, n), max_seqs=np.full(n, 8),
                   watermark=np.full(n, 10.0))
    m = 4 * n
    cols = {f: np.zeros(m, kernels.SLOT_DTYPES[f]) for f in kernels.Slots._fields}
    cols["need"] = rng.integers(1, 300, m)
    sl = kernels.Slots(**cols)
    for r in range(n):  # up to three partial prompts per lane
        for s in range(4 * r, 4 * r + int(rng.integers(0, 4))):
            kernels.pf_push(r, s, lanes.pf_head, lanes.pf_tail, sl)
            lanes.prefilling[r] = True
        lanes.n_seqs[r] = n_dec[r] + lanes.prefilling[r]
    idx = np.arange(n, dtype=np.int64)
    hand_back = kernels._needs_python(idx, lanes, sl)
    status = kernels.schedule(idx, np.zeros(n), lanes, sl, 0)[0]
    assert hand_back or status == kernels.SCHEDULED


def test_direct_calls_answer_as_the_dispatcher() -> None:
    """``kernels.Direct`` calls the machine code Numba's dispatcher would pick for the
    first call's argument types (it relies on ``Dispatcher.compile`` handing back that
    entry point: a Numba upgrade that changes it fails here, not silently)."""
    first = np.array([0, 2, 5], dtype=np.int64)
    lanes = np.array([2, 3, 0], dtype=np.int64)
    up = np.array([True, False, True, True, True])
    n_seqs = np.array([1, 2, 3, 4, 5], dtype=np.int64)
    n_wait = np.array([0, 1, 0, 2, 0], dtype=np.int64)
    kv = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    cap = np.array([100.0, 300.0, 0.0])
    direct = kernels.Direct(kernels.pool_load)
    for _ in range(2):  # resolved on the first call, reused on the second
        got = direct(first, lanes, up, n_seqs, n_wait, kv, cap)
        want = kernels.pool_load(first, lanes, up, n_seqs, n_wait, kv, cap)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert callable(direct.entry)
    assert got[0].tolist() == [3, 12, 0] and got[1].tolist() == [1, 2, 0]
    assert got[2].tolist() == [0.1, 120.0 / 300.0, 1.0]
