"""Compiled inner loops of the engine (:mod:`tokenfleet.sim.engine`).

The engine advances every busy lane by one iteration per *round*; the bookkeeping of a
round (completions leaving, admissions from the waiting queues, prompts that finished
entering decode, routed requests joining queues) is a few operations per lane, and as
NumPy array programs it cost dozens of small calls per round whatever the number of
lanes. Here each is the plain per-lane loop an engine runs, compiled with Numba, and
:func:`advance` runs all the rounds of a routing window in one call: work proportional
to what actually happens, one call from Python per window.

Each function takes the engine's arrays — lane arrays as :class:`Lanes`, slot arrays as
:class:`Slots`, the completion ring as :class:`Ring` (named tuples of arrays: Numba
takes each as one argument, and :class:`Direct` calls avoid the cost of typing them on
every call) — and updates them in place with the engine loop's rules — the engine-equivalence
tests (``tests/sim/test_engine_equivalence.py``) compare every run against the previous
one-request-at-a-time engine. Rare paths (preemption, a lane stuck with partial prompts
and no free KV, completions beyond the ring's reach) stay in Python; the kernels report
what needs them. Compiled code is cached next to this file (``__pycache__``): the first
run on a machine compiles for a few seconds.

Units: seconds, tokens.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit


class Direct:
    """A compiled kernel called through its machine-code entry point for the argument
    types of its first call.

    Numba's dispatcher works out the type of every argument on every call; for a named
    tuple of arrays it does so in Python, ~10 µs for the engine's :class:`Lanes`,
    :class:`Slots` and :class:`Ring` together, and the engine calls its per-window
    kernels with the same types tens of thousands of times per simulated hour
    (``benchmarks/RESULTS.md``, "Simulator speed on the example's full hour"). The
    entry point does not check types, so every later call must pass the types of the
    first: the engine's arrays keep their dtypes for the whole run, and its scalars
    are passed as ``float`` / ``int`` / ``bool`` explicitly."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.entry: Any = None

    def __call__(self, *args: Any) -> Any:
        if self.entry is None:
            self.entry = self.kernel.compile(tuple(self.kernel.typeof_pyval(a) for a in args))
        return self.entry(*args)


# What a slot of the engine's request table holds.
SLOT_STATES = FREE, WAITING, PREFILLING, DECODING, DECODING_FAR, DONE = range(6)



class Slots(NamedTuple):
    """The engine's request table: one array per column, indexed by slot (a request in
    flight). Numba takes the tuple as one argument. Lengths and token counts are
    integers; times and FLOPs floats (:data:`SLOT_DTYPES`)."""

    state: np.ndarray  # SLOT_STATES
    arrival: np.ndarray
    ready: np.ndarray  # earliest time it may enter a batch
    inp: np.ndarray
    out: np.ndarray
    tier: np.ndarray
    key: np.ndarray  # routing key
    pool: np.ndarray
    lane: np.ndarray
    rid: np.ndarray  # position in the workload (orders re-routed requests)
    next: np.ndarray  # next slot in the lane's waiting queue (-1: last)
    pnext: np.ndarray  # next slot in the lane's queue of partial prompts (-1: last)
    gen: np.ndarray  # output tokens generated (this attempt), as of the last change
    need: np.ndarray  # prompt tokens still to prefill in this admission
    kvh: np.ndarray  # KV tokens held, not counting decode growth since `enter`
    enter: np.ndarray  # lane step at which it started decoding
    gent: np.ndarray  # `gen` when it started decoding
    done: np.ndarray  # lane step at which it leaves (decoding)
    aseq: np.ndarray  # admission order
    first: np.ndarray  # first-token time (-1: none yet)
    admit: np.ndarray  # first admission time (-1: never admitted)
    att: np.ndarray  # prefill-attention FLOPs per prompt token of this admission
    retries: np.ndarray


_F, _I = np.float64, np.int64
SLOT_DTYPES: dict[str, type] = {
    "state": np.int8, "arrival": _F, "ready": _F, "inp": _I, "out": _I, "tier": _I,
    "key": _I, "pool": _I, "lane": _I, "rid": _I, "next": _I, "pnext": _I, "gen": _I,
    "need": _I, "kvh": _I, "enter": _I, "gent": _I, "done": _I, "aseq": _I, "first": _F,
    "admit": _F, "att": _F, "retries": _I,
}



class Lanes(NamedTuple):
    """The engine's per-lane state: one array per column, indexed by lane (one engine
    instance). The engine keeps the same arrays as attributes; this tuple is how the
    kernels take them (Numba takes it as one argument)."""

    clock: np.ndarray  # start of the lane's next iteration, s
    up: np.ndarray  # bool: not failed
    wait_head: np.ndarray  # ready time of the waiting queue's head (inf: empty), s
    n_seqs: np.ndarray  # sequences admitted (prefilling or decoding)
    n_wait: np.ndarray  # requests in the waiting queue
    blocked: np.ndarray  # bool: the queue head waits for a departure
    step: np.ndarray  # iterations run
    prefilling: np.ndarray  # bool: has partial prompts
    kv: np.ndarray  # KV tokens held
    kv_cap: np.ndarray  # KV tokens the lane holds at most
    watermark: np.ndarray  # KV tokens kept free when admitting beside running sequences
    n_dec: np.ndarray  # sequences decoding
    dec_ctx: np.ndarray  # their total context, tokens
    outstanding: np.ndarray  # requests routed here and not finished (inf: down)
    max_seqs: np.ndarray  # batch size limit
    budget: np.ndarray  # tokens per iteration (decodes plus prompt chunks)
    busy: np.ndarray  # seconds spent in iterations
    pre_tok: np.ndarray  # prompt tokens of the iteration about to run
    pre_att: np.ndarray  # their attention FLOPs
    q_head: np.ndarray  # waiting queue (linked through Slots.next), -1: empty
    q_tail: np.ndarray
    pf_head: np.ndarray  # partial prompts (linked through Slots.pnext), -1: none
    pf_tail: np.ndarray
    far_next: np.ndarray  # nearest completion step beyond the ring's reach
    ring_from: np.ndarray  # completions before this step have left
    verify: np.ndarray  # positions each decoding sequence verifies per iteration (0: plain)
    advance: np.ndarray  # tokens a decoding sequence gains per iteration (1.0: plain)
    kv_arrives: np.ndarray  # bool: prompts arrive as KV caches (a disaggregated decode
    # half): admission takes their whole KV at once and no compute or token budget


class Ring(NamedTuple):
    """Completions ahead, per lane and step: ``n`` sequences leave lane ``r`` at step
    ``s`` with total context ``ctx`` (what their entries and iterations added to the
    lane's ``dec_ctx`` and ``kv``: a float, as speculative lanes advance a fraction of a
    token per iteration on average), at flat index ``(r << shift) | (s & mask)``."""

    n: np.ndarray
    ctx: np.ndarray
    shift: int
    mask: int
    length: int


# Rows of the step-cost coefficient table, in the order of
# :data:`tokenfleet.sim.stepcost.COEFFS` (``tests/sim/test_kernels.py`` holds them equal).
(C_GEMM, C_LM, M_WEIGHTS, C_MOE, MOE_HALF, M_EXPERT, MOE_E, MOE_KEEP, MOE_ROUTED, C_DEC,
 C_PRE, ATT_FULL, ATT_SLIDING, ATT_WINDOW, C_COMM, FIXED, C_SEQ, C_A2A, A2A_OVERLAP,
 PP) = range(20)
# Rows of :attr:`Spec.att` (per lane): the target's prompt-attention constants (as
# :func:`prefill_attention_per_token` takes them), which price the verify positions,
# and the ratio of the drafter's prompt-attention FLOPs to the target's.
V_COEF, V_FULL, V_SLIDING, V_WINDOW, D_ATT = range(5)


class Spec(NamedTuple):
    """Speculative decoding of the fleet's lanes (``tokenfleet.sim.stepcost``): the
    drafter's step coefficients per lane (rows as the target's table; all zero on plain
    lanes) and the constants of :data:`V_COEF`... per lane. ``on``: some lane
    speculates (a plain fleet never reads the tables). How many positions a lane
    verifies and how far it advances are :class:`Lanes` columns."""

    on: bool
    draft: np.ndarray
    att: np.ndarray


@njit(cache=True, nogil=True)
def _before(o, a, b):  # pragma: no cover - compiled
    """Lane ``a`` is picked before lane ``b``: fewer outstanding, then lower index."""
    return o[a] < o[b] or (o[a] == o[b] and a < b)


@njit(cache=True, nogil=True)
def _sift_down(heap, n, i, o):  # pragma: no cover - compiled
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and _before(o, heap[c + 1], heap[c]):
            c += 1
        if not _before(o, heap[c], heap[i]):
            return
        heap[i], heap[c] = heap[c], heap[i]
        i = c


@njit(cache=True, nogil=True)
def enter_decode(slots, lanes, ln, sl, ring):  # pragma: no cover - compiled
    """Prompts whose last chunk ran in the iteration that just ended: that iteration
    produced their next token. Those with nothing left to generate leave their lane
    (code 1); the others decode from the next iteration on, their last step entered in
    the completion ring, or (code 2) beyond its reach, for the caller's per-lane heap."""
    kv, n_dec, dec_ctx = ln.kv, ln.n_dec, ln.dec_ctx
    code = np.zeros(slots.size, np.int8)
    for i in range(slots.size):
        s = slots[i]
        r = lanes[i]
        gen = sl.gen[s] + 1
        sl.gen[s] = gen
        if sl.first[s] < 0:
            sl.first[s] = ln.clock[r]
        out = sl.out[s]
        if gen >= out:
            # One-token answers (or a recompute that had one token left) end here.
            kv[r] -= sl.kvh[s]
            ln.n_seqs[r] -= 1
            ln.outstanding[r] -= 1
            ln.blocked[r] = False
            code[i] = 1
            continue
        st = ln.step[r]
        n_dec[r] += 1
        dec_ctx[r] += sl.inp[s] + gen
        kv[r] += 1
        sl.kvh[s] += 1
        sl.enter[s] = st
        sl.gent[s] = gen
        steps = decode_steps(out - gen, ln.advance[r])
        done = st + steps
        sl.done[s] = done
        sl.state[s] = DECODING
        if steps >= ring.length:
            code[i] = 2
        else:
            at = (r << ring.shift) | (done & ring.mask)
            ring.n[at] += 1
            ring.ctx[at] += left_ctx(sl.inp[s] + gen, steps, ln.advance[r])
    return code


@njit(cache=True, nogil=True)
def decode_steps(left, advance):  # pragma: no cover - compiled
    """Iterations a decoding sequence with ``left`` tokens to go stays: ``left`` on a
    plain lane; ``ceil(left / E)`` on a speculative one, which gains ``E`` tokens per
    iteration (the expected tokens per step; deterministic, no random acceptance)."""
    if advance == 1.0:
        return left
    return int(math.ceil(left / advance))


@njit(cache=True, nogil=True)
def left_ctx(entered, steps, advance):  # pragma: no cover - compiled
    """A decoding sequence's context (and KV) when it leaves after ``steps``
    iterations, as the lane accumulated it: ``entered`` (prompt plus tokens at entry)
    plus ``E`` per iteration (``inp + out`` on a plain lane)."""
    return entered + advance * steps


@njit(cache=True, nogil=True)
def pf_push(r, s, pf_head, pf_tail, sl):  # pragma: no cover - compiled
    """Append slot ``s`` to lane ``r``'s queue of partial prompts (admission order)."""
    sl.pnext[s] = -1
    if pf_tail[r] < 0:
        pf_head[r] = s
    else:
        sl.pnext[pf_tail[r]] = s
    pf_tail[r] = s


@njit(cache=True, nogil=True)
def continue_prefill(lanes, pos, left, pre, att, ln, sl):  # pragma: no cover - compiled
    """Partial prompts of each lane ``lanes[a]`` take their next chunks, oldest first,
    within the token budget ``left[pos[a]]`` and the free KV blocks (no watermark: they
    are already admitted); the tokens and attention FLOPs go to ``pre`` / ``att``.

    Returns the prompts that are now whole and their lanes (off the queue), and the
    positions ``a`` of lanes that could move none of their partial prompts while
    nothing decodes (stuck: the caller frees KV for them)."""
    pf_head, kv, n_dec = ln.pf_head, ln.kv, ln.n_dec
    total = 0
    for a in range(lanes.size):
        s = pf_head[lanes[a]]
        while s >= 0:
            total += 1
            s = sl.pnext[s]
    fin = np.empty(total, np.int64)
    fin_lane = np.empty(total, np.int64)
    stuck = np.empty(lanes.size, np.int64)
    m = 0
    n_stuck = 0
    for a in range(lanes.size):
        r = lanes[a]
        p = pos[a]
        free = int(ln.kv_cap[r] - kv[r] - n_dec[r] * ln.advance[r])
        took = 0
        s = pf_head[r]
        # Every chunk before the first cut prompt is whole: after a cut, the budget or
        # the KV blocks are spent.
        while s >= 0:
            need = sl.need[s]
            c = max(min(need, left[p] - took, free - took), 0)
            sl.need[s] = need - c
            sl.kvh[s] += c
            took += c
            att[p] += c * sl.att[s]
            if c < need:
                break
            fin[m] = s
            fin_lane[m] = r
            m += 1
            s = sl.pnext[s]
        pf_head[r] = s
        if s < 0:
            ln.pf_tail[r] = -1
        kv[r] += took
        left[p] -= took
        pre[p] += took
        ln.prefilling[r] = s >= 0
        if took == 0 and n_dec[r] == 0 and s >= 0:
            stuck[n_stuck] = a
            n_stuck += 1
    return fin[:m], fin_lane[:m], stuck[:n_stuck]


@njit(cache=True, nogil=True)
def admit(lanes, t, pos, left, pre, att, ln, sl, aseq):  # pragma: no cover - compiled
    """Admit waiting requests of each lane ``lanes[a]`` (iteration start ``t[a]``) in
    queue order while the token budget ``left[pos[a]]``, the batch size and the KV
    blocks (less the watermark once anything runs) allow; the first that does not fit
    for KV blocks the lane until something leaves. Adds the prompt tokens taken and
    their attention FLOPs to ``pre`` / ``att`` at ``pos[a]``.

    A request that got only part of its prompt (only the last one admitted into a
    lane can) joins the lane's queue of partial prompts. Returns the admitted requests
    that got their whole prompt, their lanes, and the next admission number."""
    n_seqs, max_seqs, n_wait, kv = ln.n_seqs, ln.max_seqs, ln.n_wait, ln.kv
    cap = 0
    for a in range(lanes.size):
        cap += min(n_wait[lanes[a]], max(max_seqs[lanes[a]] - n_seqs[lanes[a]], 0))
    got = np.empty(cap, np.int64)
    got_lane = np.empty(cap, np.int64)
    m = 0
    for a in range(lanes.size):
        r = lanes[a]
        p = pos[a]
        ta = t[a]
        s = ln.q_head[r]
        n = n_seqs[r]
        room = ln.kv_cap[r] - kv[r] - ln.n_dec[r] * ln.advance[r]
        taken = 0.0
        while s >= 0:
            # The engine loop's stopping rules, in its order: budget or batch full; not
            # yet arrived; no KV blocks (this one blocks the lane).
            if left[p] <= 0 or n >= max_seqs[r]:
                break
            if sl.ready[s] > ta:
                break
            need = sl.need[s]
            whole = ln.kv_arrives[r]
            c = need if whole else min(need, left[p])
            free = room - taken - (ln.watermark[r] if n > 0 else 0.0)
            if c > free:
                ln.blocked[r] = True
                break
            if sl.admit[s] < 0:
                sl.admit[s] = ta
            sl.kvh[s] += c
            sl.need[s] = need - c
            sl.state[s] = PREFILLING
            sl.aseq[s] = aseq
            aseq += 1
            kv[r] += c
            taken += c
            if not whole:
                left[p] -= c
                pre[p] += c
                att[p] += c * sl.att[s]
            n_wait[r] -= 1
            n += 1
            if need == c:
                got[m] = s
                got_lane[m] = r
                m += 1
            else:
                pf_push(r, s, ln.pf_head, ln.pf_tail, sl)
                ln.prefilling[r] = True
            s = sl.next[s]
        n_seqs[r] = n
        ln.q_head[r] = s
        if s < 0:
            ln.q_tail[r] = -1
            ln.wait_head[r] = np.inf
        else:
            # The queue head now, and whether the lane waits for a departure (full
            # batch, or no token budget beside its decodes).
            ln.wait_head[r] = sl.ready[s]
            if sl.ready[s] <= ta and (n >= max_seqs[r]
                                      or ln.budget[r] <= ln.n_dec[r] * (1 + ln.verify[r])):
                ln.blocked[r] = True
    return got[:m], got_lane[:m], aseq


# What :func:`schedule` stopped for: done, or the caller must preempt first (KV
# overflow) or free KV for lanes stuck with partial prompts (then admit).
SCHEDULED, SCHEDULE_PREEMPT, SCHEDULE_STUCK = 0, 1, 2


@njit(cache=True, nogil=True)
def schedule(lanes, t, ln, sl, aseq):  # pragma: no cover - compiled
    """The scheduler at the start of an iteration of each of ``lanes`` (clocks ``t``;
    completions already left): the token budget beside the decodes goes to partial
    prompts (:func:`continue_prefill`), then to admissions (:func:`admit`); each lane's
    prompt tokens and their attention FLOPs go to ``pre_tok`` / ``pre_att``.

    Returns (status, prompts now whole, their lanes, stuck positions, budget left,
    prompt tokens and FLOPs per position, next admission number). With
    ``SCHEDULE_PREEMPT`` nothing was done (a lane's KV overflows); with
    ``SCHEDULE_STUCK`` partial prompts moved but nothing was admitted and ``pre_tok`` /
    ``pre_att`` are not written: the caller unsticks those lanes, then admits."""
    n = lanes.size
    empty = np.empty(0, np.int64)
    left = np.empty(n, np.int64)
    pre = np.zeros(n)
    att = np.zeros(n)
    n_pf = 0
    for a in range(n):
        r = lanes[a]
        if ln.kv[r] + ln.n_dec[r] * ln.advance[r] > ln.kv_cap[r]:
            return SCHEDULE_PREEMPT, empty, empty, empty, left, pre, att, aseq
        # every decoding sequence takes its own token and its verify positions
        left[a] = ln.budget[r] - ln.n_dec[r] * (1 + ln.verify[r])
        n_pf += ln.prefilling[r]
    fin = empty
    fin_lane = empty
    if n_pf:
        at = np.empty(n_pf, np.int64)
        j = 0
        for a in range(n):
            if ln.prefilling[lanes[a]]:
                at[j] = a
                j += 1
        fin, fin_lane, stuck = continue_prefill(lanes[at], at, left, pre, att, ln, sl)
        if stuck.size:
            return SCHEDULE_STUCK, fin, fin_lane, at[stuck], left, pre, att, aseq
    n_adm = 0
    for a in range(n):
        n_adm += ln.n_wait[lanes[a]] > 0 and left[a] > 0
    if n_adm:
        pos = np.empty(n_adm, np.int64)
        j = 0
        for a in range(n):
            if ln.n_wait[lanes[a]] > 0 and left[a] > 0:
                pos[j] = a
                j += 1
        got, got_lane, aseq = admit(lanes[pos], t[pos], pos, left, pre, att, ln, sl, aseq)
        if fin.size:
            fin = np.concatenate((fin, got))
            fin_lane = np.concatenate((fin_lane, got_lane))
        else:
            fin, fin_lane = got, got_lane
    for a in range(n):
        ln.pre_tok[lanes[a]] = pre[a]
        ln.pre_att[lanes[a]] = att[a]
    return SCHEDULED, fin, fin_lane, empty, left, pre, att, aseq


@njit(cache=True, nogil=True)
def _needs_python(lanes, ln, sl):  # pragma: no cover - compiled
    """Whether :func:`schedule` might stop for the Python side on ``lanes``: a lane's KV
    overflows (preemption), or a lane with partial prompts and nothing decoding might
    move none of them (stuck: no free KV, no budget, or nothing left to take). A
    superset of both: when it says no, ``schedule`` runs to the end."""
    for a in range(lanes.size):
        r = lanes[a]
        if ln.kv[r] + ln.n_dec[r] * ln.advance[r] > ln.kv_cap[r]:
            return True
        if ln.prefilling[r] and ln.n_dec[r] == 0 and (
                int(ln.kv_cap[r] - ln.kv[r]) <= 0 or ln.budget[r] <= 0
                or sl.need[ln.pf_head[r]] <= 0):
            return True
    return False


@njit(cache=True, nogil=True)
def _begin(idx, ln, ring, done, nd):  # pragma: no cover - compiled
    """Start a round of lanes ``idx``: each at its iteration start (an idle lane jumps
    to its queue head's arrival), the completions due at this step leave (recorded
    in ``done`` from row ``nd`` on, which must have room for ``idx.size`` more).
    Returns the clocks, the steps, which lanes need the scheduler (a partial prompt, a
    request ready to admit, or KV overflow) and the new ``nd``."""
    clock, kv, n_dec = ln.clock, ln.kv, ln.n_dec
    n = idx.size
    clk = np.empty(n)
    stp = np.empty(n, np.int64)
    slow = np.empty(n, np.bool_)
    for a in range(n):
        r = idx[a]
        t = clock[r]
        wh = ln.wait_head[r]
        if ln.n_seqs[r] == 0 and wh > t:
            t = wh
            clock[r] = t
        clk[a] = t
        s = ln.step[r]
        stp[a] = s
        ln.ring_from[r] = s + 1  # every completion before this step is done
        at = (r << ring.shift) | (s & ring.mask)
        c = ring.n[at]
        if c:
            ctx = ring.ctx[at]  # the leaving sequences' contexts (and KV) at the end
            ring.n[at] = 0
            ring.ctx[at] = 0
            n_dec[r] -= c
            ln.dec_ctx[r] -= ctx
            kv[r] -= ctx
            ln.n_seqs[r] -= c
            ln.outstanding[r] -= c
            ln.blocked[r] = False
            done.lane[nd] = r
            done.step[nd] = s
            done.when[nd] = t
            done.n[nd] = c
            nd += 1
        slow[a] = (ln.prefilling[r] or (wh <= t and not ln.blocked[r])
                   or kv[r] + n_dec[r] * ln.advance[r] > ln.kv_cap[r])
    return clk, stp, slow, nd


class Done(NamedTuple):
    """Completions in a round: ``n`` decoding sequences left lane ``lane`` at the start
    of its iteration ``step`` (time ``when``)."""

    lane: np.ndarray
    step: np.ndarray
    when: np.ndarray
    n: np.ndarray


@njit(cache=True, nogil=True)
def _grown(a, n, size):  # pragma: no cover - compiled
    """``a`` with its first ``n`` entries kept, ``size`` long."""
    out = np.empty(size, a.dtype)
    out[:n] = a[:n]
    return out


@njit(cache=True, nogil=True)
def _room(done, nd, more):  # pragma: no cover - compiled
    """``done`` with room for ``more`` rows after the first ``nd``."""
    if nd + more <= done.lane.size:
        return done
    size = max(2 * done.lane.size, nd + more)
    return Done(_grown(done.lane, nd, size), _grown(done.step, nd, size),
                _grown(done.when, nd, size), _grown(done.n, nd, size))


# What :func:`advance` stopped for: every lane reached the window's end or ran out of
# work; completions beyond the ring came within its reach (before a round); a round
# needs the Python side's scheduler (after its start); prompts that entered decode
# finish beyond the ring's reach (after a round).
ADVANCE_DONE, ADVANCE_FAR, ADVANCE_SLOW, ADVANCE_FAR_PUSH = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def _working(cand, end, ln, check_up):  # pragma: no cover - compiled
    """The lanes of ``cand`` with work before ``end``: sequences, or a waiting request
    that is not blocked (and up, with ``check_up``)."""
    idx = np.empty(cand.size, np.int64)
    n = 0
    for a in range(cand.size):
        r = cand[a]
        if (ln.clock[r] < end and (ln.n_seqs[r] > 0 or (ln.wait_head[r] < end
                                                         and not ln.blocked[r]))
                and (not check_up or ln.up[r])):
            idx[n] = r
            n += 1
    return idx[:n]


@njit(cache=True, nogil=True)
def advance(cand, check_up, end, n_far, aseq, ln, sl, ring, table, sliding, moe, spec
            ):  # pragma: no cover - compiled
    """Rounds of the lanes of ``cand`` with work before ``end`` until none has any:
    every lane runs one iteration per round (sequences due leave at its start; the
    scheduler admits; prompts whose last chunk ran enter decode), for as long as none
    needs the Python side (``check_up``: also drop lanes that are down).

    Returns (status, the round's lanes, their clocks, which need the scheduler — for
    ``ADVANCE_SLOW`` —, the completions as :class:`Done` rows and their number, the
    requests that finished right after their prompt and when, the prompts that
    entered decode beyond the ring's reach and their lanes, the next admission
    number). ``ADVANCE_FAR`` stops before a round (nothing of it done); ``ADVANCE_SLOW``
    after a round's start, its scheduling, iteration and decode entries left to the
    caller; ``ADVANCE_FAR_PUSH`` after a whole round."""
    size = 4 * cand.size + 16
    done = Done(np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size),
                np.empty(size, np.int64))
    nd = 0
    ended = np.empty(16, np.int64)
    ended_t = np.empty(16)
    n_end = 0
    empty_i = np.empty(0, np.int64)
    idx = _working(cand, end, ln, check_up)
    while True:
        status = ADVANCE_DONE if idx.size == 0 else ADVANCE_SLOW
        if idx.size and n_far:
            for a in range(idx.size):
                if ln.far_next[idx[a]] - ln.step[idx[a]] < ring.length:
                    status = ADVANCE_FAR
                    break
        if status != ADVANCE_SLOW:
            return (status, idx, np.empty(0), np.empty(0, np.bool_), done, nd,
                    ended[:n_end], ended_t[:n_end], empty_i, empty_i, aseq)
        done = _room(done, nd, idx.size)
        clk, stp, slow, nd = _begin(idx, ln, ring, done, nd)
        fin = empty_i
        fin_lane = empty_i
        if slow.any():
            lanes = idx[slow]
            t = clk[slow]
            if _needs_python(lanes, ln, sl):
                return (ADVANCE_SLOW, idx, clk, slow, done, nd, ended[:n_end],
                        ended_t[:n_end], empty_i, empty_i, aseq)
            st, fin, fin_lane, _, _, _, _, aseq = schedule(lanes, t, ln, sl, aseq)
            if st != SCHEDULED:
                raise AssertionError("schedule stopped where _needs_python said it would not")
        round_end(idx, table, sliding, moe, ln, spec)
        if fin.size:
            code = enter_decode(fin, fin_lane, ln, sl, ring)
            n_far_new = 0
            for i in range(fin.size):
                if code[i] == 1:
                    if n_end == ended.size:
                        ended = _grown(ended, n_end, 2 * n_end)
                        ended_t = _grown(ended_t, n_end, 2 * n_end)
                    ended[n_end] = fin[i]
                    ended_t[n_end] = ln.clock[fin_lane[i]]
                    n_end += 1
                elif code[i] == 2:
                    n_far_new += 1
            if n_far_new:
                far = code == 2
                return (ADVANCE_FAR_PUSH, idx, clk, slow, done, nd, ended[:n_end],
                        ended_t[:n_end], fin[far], fin_lane[far], aseq)
        idx = _working(idx, end, ln, False)


@njit(cache=True, nogil=True)
def iteration_s(table, r, decode, context, prefill, prefill_attention, sliding, moe
                ):  # pragma: no cover - compiled
    """Seconds of one iteration of lane ``r`` (column ``r`` of the coefficient table of
    :class:`tokenfleet.sim.stepcost.FleetStepCost`): ``decode`` decode tokens at mean
    ``context``, ``prefill`` prompt tokens with ``prefill_attention`` attention FLOPs,
    the batch split into micro-batches over the ``pp`` pipeline stages. It is
    :func:`tokenfleet.sim.stepcost.stage_time` per stage, times ``pp``; fleets without
    sliding-window layers or MoE skip those terms."""
    pp = table[PP, r]
    # A single sequence cannot be split into micro-batches: at least one token per
    # stage step when anything decodes.
    dec = max(decode / pp, min(decode, 1.0)) if decode > 0 else 0.0
    pre = prefill / pp
    tokens = dec + pre
    attended = table[ATT_FULL, r] * context
    if sliding:
        attended += table[ATT_SLIDING, r] * min(context, table[ATT_WINDOW, r])
    t = max(tokens * table[C_GEMM, r] + dec * table[C_LM, r], table[M_WEIGHTS, r])
    if moe and table[M_EXPERT, r] > 0.0:
        routed = tokens * table[MOE_ROUTED, r]
        touched = table[MOE_E, r] * (1.0 - table[MOE_KEEP, r] ** routed)
        t += max(table[C_MOE, r] * (routed + table[MOE_HALF, r] * touched),
                 touched * table[M_EXPERT, r])
    t += dec * attended * table[C_DEC, r] + (prefill_attention / pp) * table[C_PRE, r]
    a2a = tokens * table[C_A2A, r]
    t = max(t, a2a) if table[A2A_OVERLAP, r] > 0.0 else t + a2a
    return pp * (t + tokens * table[C_COMM, r] + dec * table[C_SEQ, r] + table[FIXED, r])


@njit(cache=True, nogil=True)
def iteration_times(table, idx, decode, context, prefill, prefill_attention, sliding, moe
                    ):  # pragma: no cover - compiled
    """:func:`iteration_s` of each lane ``idx[i]`` with the i-th inputs."""
    out = np.empty(idx.size)
    for i in range(idx.size):
        out[i] = iteration_s(table, idx[i], decode[i], context[i], prefill[i],
                             prefill_attention[i], sliding, moe)
    return out


@njit(cache=True, nogil=True)
def verify_attention_per_token(att, r, context):  # pragma: no cover - compiled
    """Attention FLOPs of one verify position of a sequence at ``context`` on lane
    ``r``: priced as ``UnitModel.steady_state`` prices them (``_mixed_len``), like a
    prompt token of a prompt ``2 context`` long (whose tokens attend to ``context`` on
    average), with :func:`_attention`'s operations."""
    n = 2.0 * context
    pairs_full = n * (n + 1) / 2.0
    pairs_sliding = pairs_full
    w = att[V_WINDOW, r]
    if w > 0 and n > w:
        pairs_sliding = w * (w + 1) / 2.0 + (n - w) * w
    return att[V_COEF, r] * (att[V_FULL, r] * pairs_full
                             + att[V_SLIDING, r] * pairs_sliding) / max(n, 1.0)


@njit(cache=True, nogil=True)
def speculative_s(table, spec, r, decode, context, prefill, prefill_attention, k, sliding,
                  moe):  # pragma: no cover - compiled
    """Seconds of one iteration of speculative lane ``r`` (as ``TechniqueUnit``
    prices it): the target's step with each decoding sequence's ``k`` verify
    positions riding as prompt tokens at its context, plus the drafter's ``k``
    proposal steps over the decoding sequences, the first also prefilling the
    iteration's prompt tokens (a draft model keeps its own KV of the prompt; an MTP
    head is one more layer of the target). ``spec.draft`` holds the drafter's
    coefficients: the draft unit's (no fixed per-step cost when ``fused``) or the
    target's over its number of layers (MTP)."""
    v = decode * k
    t = iteration_s(table, r, decode, context, prefill + v,
                    prefill_attention + v * verify_attention_per_token(spec.att, r, context),
                    sliding, moe)
    d_att = prefill_attention * spec.att[D_ATT, r]
    if decode > 0:
        t += iteration_s(spec.draft, r, decode, context, prefill, d_att, True, True)
        if k > 1:
            t += (k - 1) * iteration_s(spec.draft, r, decode, context, 0.0, 0.0, True, True)
    elif prefill > 0:  # nothing to propose yet: the drafter only takes the prompts in
        t += iteration_s(spec.draft, r, 0.0, context, prefill, d_att, True, True)
    return t


@njit(cache=True, nogil=True)
def round_end(idx, table, sliding, moe, ln, spec):  # pragma: no cover - compiled
    """Run the round's iteration on every lane of ``idx`` that has something to run:
    its decodes plus the prompt tokens the scheduler gave it. A lane with nothing (its
    last sequences left, or admission is blocked) waits, blocked if requests are
    waiting for it. Every decoding sequence gains one token per iteration, or ``E``
    (``Lanes.advance``) on a speculative lane, its verify positions and drafter
    priced by :func:`speculative_s`."""
    clock, pre_tok, pre_att = ln.clock, ln.pre_tok, ln.pre_att
    for a in range(idx.size):
        r = idx[a]
        dec = ln.n_dec[r]
        pre = pre_tok[r]
        if dec == 0 and pre == 0:
            if ln.n_seqs[r] == 0 and ln.wait_head[r] <= clock[r]:
                ln.blocked[r] = True
            continue
        decf = float(dec)
        ctx = ln.dec_ctx[r] / max(decf, 1.0)
        if spec.on and ln.verify[r] > 0:
            dt = speculative_s(table, spec, r, decf, ctx, pre, pre_att[r], ln.verify[r],
                               sliding, moe)
            grow = decf * ln.advance[r]
        else:
            dt = iteration_s(table, r, decf, ctx, pre, pre_att[r], sliding, moe)
            grow = decf
        clock[r] += dt
        ln.busy[r] += dt
        ln.step[r] += 1
        ln.dec_ctx[r] += grow
        ln.kv[r] += grow
        pre_tok[r] = 0.0
        pre_att[r] = 0.0


@njit(cache=True, nogil=True)
def pool_load(pool_first, pool_lanes, up, n_seqs, n_wait, kv, up_kv_cap
              ):  # pragma: no cover - compiled
    """Per pool: sequences running, requests waiting, and the fraction of the KV tokens
    of its lanes that are up (``up_kv_cap``) held on them, 1 when none is up (the
    router's view of the pool)."""
    n = pool_first.size
    running = np.zeros(n, np.int64)
    queued = np.zeros(n, np.int64)
    kv_frac = np.ones(n)
    for p in range(n):
        kv_used = 0.0
        for r in range(pool_first[p], pool_first[p] + pool_lanes[p]):
            running[p] += n_seqs[r]
            queued[p] += n_wait[r]
            if up[r]:
                kv_used += kv[r]
        if up_kv_cap[p] > 0:
            kv_frac[p] = kv_used / up_kv_cap[p]
    return running, queued, kv_frac


@njit(cache=True, nogil=True)
def _attention(p, n, coef, full, sliding, window):  # pragma: no cover - compiled
    pairs_full = n * (n + 1) / 2.0
    pairs_sliding = pairs_full
    w = window[p]
    if w > 0 and n > w:
        pairs_sliding = w * (w + 1) / 2.0 + (n - w) * w
    return coef[p] * (full[p] * pairs_full + sliding[p] * pairs_sliding) / max(n, 1)


@njit(cache=True, nogil=True)
def prefill_attention_per_token(pool, prompt, coef, full, sliding, window
                                ):  # pragma: no cover - compiled
    """:func:`tokenfleet.sim.stepcost.prefill_attention_per_token` for prompts of
    ``prompt[i]`` tokens on pools ``pool[i]``: attention FLOPs per prompt token, over
    the (query, key) pairs of every full-attention layer and of every sliding-window
    layer (``window`` 0: none), with the same operations in the same order."""
    out = np.empty(prompt.size)
    for i in range(prompt.size):
        out[i] = _attention(pool[i], prompt[i], coef, full, sliding, window)
    return out


@njit(cache=True, nogil=True)
def place(slots, picks, prefer, outstanding, pool_first, pool_lanes, routed, sl, q_head, q_tail,
          n_wait, wait_head, att_coef, att_full, att_sliding,
          att_window):  # pragma: no cover - compiled
    """Routed requests (in arrival order) join the waiting queue of the lane of their
    pool ``picks[i]`` with the fewest outstanding requests (lowest index on ties),
    counting earlier ones, with their prompt-attention cost per token; or of lane
    ``prefer[i]`` (an up lane of that pool) where it is >= 0 (cache affinity). Returns
    each one's lane; -1 (and nothing done) where every lane of the pool is down."""
    n_pools = pool_first.size
    # A binary heap of each pool's lanes that gets requests, ordered by (outstanding,
    # index); the pools' heaps share one array.
    start = np.full(n_pools, -1, np.int64)
    size = 0
    for i in range(picks.size):
        p = picks[i]
        if start[p] < 0:
            start[p] = size
            size += pool_lanes[p]
    heap = np.empty(size, np.int64)
    for p in range(n_pools):
        if start[p] >= 0:
            n = pool_lanes[p]
            h = heap[start[p]:start[p] + n]
            for j in range(n):
                h[j] = pool_first[p] + j
            for j in range(n // 2 - 1, -1, -1):
                _sift_down(h, n, j, outstanding)
    lanes = np.empty(slots.size, np.int64)
    for i in range(slots.size):
        p = picks[i]
        n = pool_lanes[p]
        h = heap[start[p]:start[p] + n]
        if prefer[i] >= 0:  # cache affinity chose the lane: restore the heap below it
            r = prefer[i]
            outstanding[r] += 1.0
            k = 0
            while h[k] != r:
                k += 1
            _sift_down(h, n, k, outstanding)
        elif n == 0 or outstanding[h[0]] == np.inf:
            lanes[i] = -1  # every lane of the pool is down
            continue
        else:
            r = h[0]
            outstanding[r] += 1.0
            _sift_down(h, n, 0, outstanding)
        lanes[i] = r
        s = slots[i]
        sl.pool[s] = p
        sl.lane[s] = r
        # Prompt-attention cost per prompt token of the first admission (a recompute
        # after preemption sets its own).
        sl.att[s] = _attention(p, sl.need[s], att_coef, att_full, att_sliding, att_window)
        routed[p] += 1
        sl.next[s] = -1
        sl.state[s] = WAITING
        tail = q_tail[r]
        if tail < 0:
            q_head[r] = s
            wait_head[r] = sl.ready[s]
        else:
            sl.next[tail] = s
        q_tail[r] = s
        n_wait[r] += 1
    return lanes


@njit(cache=True, nogil=True)
def arrive(s, first, arrival, inp, out, key, key_tier, tier_arrived,
           sl):  # pragma: no cover - compiled
    """Requests ``first, first + 1, ...`` of the workload (``arrival``, ``inp``, ``out``,
    ``key``: theirs) take slots ``s``, fresh: not routed, nothing generated."""
    for i in range(s.size):
        q = s[i]
        tier = key_tier[key[i]]
        tier_arrived[tier] += 1
        sl.arrival[q] = arrival[i]
        sl.ready[q] = arrival[i]
        sl.inp[q] = inp[i]
        sl.out[q] = out[i]
        sl.tier[q] = tier
        sl.key[q] = key[i]
        sl.pool[q] = -1
        sl.rid[q] = first + i
        sl.gen[q] = 0
        sl.need[q] = inp[i]
        sl.kvh[q] = 0
        sl.first[q] = -1.0
        sl.admit[q] = -1.0
        sl.retries[q] = 0
