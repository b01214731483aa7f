"""The discrete-event core: iteration-level continuous batching on every engine lane,
routing through the shared policies, failures with re-queueing.

How time advances
-----------------
Every lane (one engine instance, see :mod:`tokenfleet.sim.fleet`) has its own clock
and runs engine *iterations* back to back while it has work, exactly like an engine
loop: each iteration decodes one token for every running sequence and spends the rest
of the token budget on prompt chunks (chunked prefill), admitting waiting requests in
arrival order while batch slots and KV blocks allow. When a decode step cannot get a
KV block, the most recently admitted sequence is preempted and re-queued at the front
(recompute: its prompt and the tokens generated so far are prefilled again). An
iteration's length is the performance model's step time for exactly that batch
(:mod:`tokenfleet.sim.stepcost`).

Speculative decoding (a pool whose plan unit sets ``speculative``): every iteration of
its lanes each decoding sequence verifies ``k`` proposed tokens and advances ``E``, the
expected tokens per step ``(1 - a^(k+1)) / (1 - a)`` — a deterministic expectation, no
random acceptance — so a sequence with ``n`` tokens to go leaves after ``ceil(n / E)``
iterations, and its context and KV grow ``E`` per iteration (``E`` is a multiple of
1/1024, so the lane's float sums stay exact). It takes ``1 + k`` tokens of the
iteration's budget and ``E`` KV tokens of room; the iteration costs the target's step
with the verify positions as prompt tokens at the sequence's context plus the
drafter's steps (``kernels.speculative_s``, what ``TechniqueUnit`` charges). A
preempted sequence recomputes the whole tokens it had (``gent + floor(E * grown)``).

Lanes are independent between routing decisions, so the simulator advances them in
*rounds*: every lane whose clock is inside the current synchronisation window runs one
iteration. Requests live in *slots* (rows of per-request arrays, reused once a request
has been measured), and each lane's state is a row of per-lane arrays, so a round is a
loop over lanes with no Python object per request. Those loops are compiled
(:mod:`tokenfleet.sim.kernels`, Numba): a round's bookkeeping is a few operations per
lane, and as NumPy array programs it cost dozens of small calls per round whatever the
number of lanes.

* waiting queues (and each lane's partial prompts) are linked lists through the slots;
  routing appends a window's arrivals to the lanes, admission walks each queue's head;
* a window's rounds run inside one compiled call (:func:`~tokenfleet.sim.kernels.advance`:
  completions leaving, the scheduler, the iterations, prompts entering decode); it comes
  back here only for the rare paths — a round that may need preemption or has a lane
  stuck with partial prompts and no free KV (that round's scheduling runs here), and
  completions beyond the ring's reach — then goes on. The example's traffic has a few
  requests per window, so the cost of a window (routing, one call per kernel; see
  :class:`~tokenfleet.sim.kernels.Direct`) is what sets the speed there, not the cost of
  a request;
* a decoding sequence's last step is known when it starts decoding, so each lane keeps
  a ring of "sequences (and context) leaving at step s": an iteration subtracts its
  step's entry, and the requests themselves are measured, all together, at the next
  flush (their slots are held until then; memory stays bounded).

Arrivals are routed at the start of each window (``sync_s``, default 20 ms) with the
pool states of that instant plus the requests routed so far in the window — what a
gateway sees with metrics a few milliseconds old. A window's requests are routed key
by key (each key's in arrival order) with one ``choose_many`` per key, which gives what
that many single ``choose`` calls would; lanes and queues then take them in arrival
order. Each request still enters a batch at the first iteration boundary after its own
arrival time. Windows sit on a fixed time grid (plus shock times), so a part of the
fleet behaves identically whether it is simulated alone or together with independent
pools. ``tests/sim/reference_engine.py`` keeps the previous one-request-at-a-time
engine; ``tests/sim/test_engine_equivalence.py`` checks that both give the same answer.

Accounting
----------
Every request ends exactly once as *completed* or *rejected* (with a reason); a
request re-queued because its replica failed is also counted once as *retried* and
restarts from scratch elsewhere. Latencies go to fixed-size histograms
(:mod:`tokenfleet.sim.metrics`): memory holds in-flight requests, plus at most
``CompletionBuffer.FLUSH_AT`` finished ones waiting to be measured.

Units: seconds, tokens, USD, watts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf import metrics as perf_metrics
from tokenfleet.sim import kernels
from tokenfleet.sim.admission import SHED, Admission
from tokenfleet.sim.dispatch import NO_HEALTHY, REASON_CODES, KeyRouter
from tokenfleet.sim.fleet import Fleet, PoolInfo
from tokenfleet.sim.metrics import CompletionBuffer, GroupStats
from tokenfleet.sim.prefix_cache import LaneAffinity, LanePrefixCaches
from tokenfleet.sim.shocks import Failure, PriceChange
from tokenfleet.sim.stepcost import FleetStepCost, PrefillAttention
from tokenfleet.sim.traffic import Workload

NEVER = np.iinfo(np.int64).max // 4
# Per-pool columns sampled during a run: levels, then running totals.
SERIES_LEVELS = ("running", "waiting", "kv_used_tokens")
SERIES_TOTALS = ("busy_s", "routed", "preemptions")
SERIES_COLUMNS = SERIES_LEVELS + SERIES_TOTALS
DEFAULT_SYNC_S = 0.02
# Rejection reasons (the summary's keys; routing's and admission's in their modules).
UNFINISHED = "unfinished when the simulation stopped"
# Admission control (SimOptions.admission): "none" queues everything that can be routed;
# "ttft" turns a request away at the door when its predicted queueing delay exceeds
# the tier's TTFT SLO on the pool it was routed to and on every other pool of the tier
# (the simulator's counterpart of the gateway's 429 backpressure).
ADMISSION_MODES = ("none", "ttft")

# A completion-log key is (lane << _LANE_SHIFT) | step.
_LANE_SHIFT = 32
# Memory allowed for the per-lane completion rings (see Simulator._build_lanes).
_RING_BYTES = 64 << 20
# What a slot holds.
_FREE, _WAITING, _PREFILLING, _DECODING, _DECODING_FAR, _DONE = kernels.SLOT_STATES

@dataclass
class SimOptions:
    """How to run (not what to simulate). ``sample_s`` is rounded to whole windows."""

    policy: str = "plan"
    seed: int = 0
    sync_s: float = DEFAULT_SYNC_S
    sample_s: float | None = None  # time-series interval; default ~1/500 of the traffic
    max_time_s: float | None = None  # stop (and reject what is left) after this time
    progress: object | None = None  # callable(done_requests, total) for progress bars
    admission: str = "none"  # one of ADMISSION_MODES
    cache_affinity: bool = True  # prefix-hashed requests follow their cache (prefix_cache.py)


@dataclass
class RunRecord:
    """Everything one run measured; records of independent parts of a fleet merge
    exactly (:func:`tokenfleet.sim.results.merge_records`)."""

    tier_names: list[str]
    tier_slo: dict[str, tuple[float | None, float | None]]
    tiers: GroupStats
    pools: GroupStats
    pool_info: dict[str, PoolInfo]
    reject_reasons: dict[str, int]
    requests: int
    completed: int
    rejected: int
    retried: int
    retries: int
    preemptions: dict[str, int]
    busy_s: dict[str, float]
    sojourn_s: float
    sample_s: float
    series: dict[str, dict[str, list[float]]]  # pool -> column -> one value per sample
    fine_s: float  # bin width of the arrival/departure counts (Little's-law check)
    arrivals_fine: np.ndarray  # arrivals per fine bin
    departures_fine: np.ndarray  # completions + rejections per fine bin
    failures: list[Failure]
    prices: list[PriceChange]
    end_s: float
    wall_s: float
    source: str
    policy: str
    seed: int
    notes: list[str] = field(default_factory=list)
    admission: str = "none"
    # prefix caching (sim/prefix_cache.py): pool -> (tokens served from cache, looked up)
    prefix_tokens: dict[str, tuple[int, int]] = field(default_factory=dict)


def auto_sample_s(duration_s: float, sync_s: float) -> float:
    """About 500 samples over the traffic, at least 1 s, a whole number of windows."""
    raw = max(1.0, duration_s / 500.0)
    return max(sync_s, round(raw / sync_s) * sync_s)


class Simulator:
    """One simulation of ``workload`` through ``fleet``; call :meth:`run` once."""

    dep: np.ndarray  # departures per fine bin (run)
    last_event: float  # s
    sl: kernels.Slots  # the slot table (one array per column), set by _grow_slots

    def __init__(self, fleet: Fleet, workload: Workload, options: SimOptions | None = None,
                 failures: list[Failure] | None = None,
                 prices: list[PriceChange] | None = None) -> None:
        self.fleet = fleet
        self.w = workload
        self.opt = options or SimOptions()
        if not (self.opt.sync_s > 0 and math.isfinite(self.opt.sync_s)):
            raise TokenfleetError(f"sync_s must be > 0, got {self.opt.sync_s}")
        if self.opt.admission not in ADMISSION_MODES:
            raise TokenfleetError(f"admission '{self.opt.admission}': allowed: "
                                  f"{', '.join(ADMISSION_MODES)}")
        self.shedding = self.opt.admission == "ttft"
        self.failures = failures or []
        self.prices = prices or []
        plan = fleet.plan
        self.tier_names = [t.name for t in plan.tiers]
        self.slo_ttft = np.array([t.slo_ttft_s if t.slo_ttft_s is not None else np.inf
                                  for t in plan.tiers])
        self.slo_tpot = np.array([t.slo_tpot_s if t.slo_tpot_s is not None else np.inf
                                  for t in plan.tiers])
        pools = fleet.pools
        self.pools = pools
        self.n_pools = len(pools)
        lanes = fleet.lanes
        self.n_lanes = lanes
        self.lane_pool = np.concatenate(
            [np.full(p.lanes, p.index, dtype=np.int64) for p in pools]
        ) if pools else np.zeros(0, np.int64)
        self.cost = FleetStepCost([p.coeffs for p in pools], self.lane_pool,
                                  [p.speculation for p in pools], [p.model for p in pools])
        self.prefill_att = PrefillAttention([p.model for p in pools])
        self.pool_starts = np.array([p.first_lane for p in pools], dtype=np.int64)
        # Pools without lanes (0 replicas) have no segment to reduce over.
        self.pool_has_lanes = np.array([p.lanes > 0 for p in pools], dtype=bool)
        self.lanes_per_replica = np.array([p.lanes_per_replica for p in pools], dtype=np.int64)
        self.all_pools_have_lanes = bool(self.pool_has_lanes.all())
        self._build_lanes()
        self._build_slots()
        tier_idx = {t: i for i, t in enumerate(self.tier_names)}
        self.key_tier = np.array([tier_idx[k.tier] for k in workload.keys], dtype=np.int64)
        # Contiguous columns: a window's slices of them keep one array type (kernels.Direct).
        self.w_key = np.ascontiguousarray(workload.key)
        self.w_inp = np.ascontiguousarray(workload.input_tokens)
        self.w_out = np.ascontiguousarray(workload.output_tokens)
        self.w_arrival = np.ascontiguousarray(workload.arrival_s)
        self.pool_first_arr = np.array([p.first_lane for p in pools], dtype=np.int64)
        self.pool_lanes_arr = np.array([p.lanes for p in pools], dtype=np.int64)
        self.chips_per_replica = np.array([p.unit.chips_per_replica for p in pools], float)
        self.router = KeyRouter(fleet.plan, pools, workload.keys, self.opt.policy,
                                self.opt.seed)
        self.admission = Admission(
            fleet.plan, pools, dict(zip(self.tier_names, self.slo_ttft.tolist(), strict=True)))
        # Prefix caching, when the traffic carries prefix hashes (sim/prefix_cache.py).
        self.prefix = LanePrefixCaches.of(
            workload, self.lane_pool, self.n_pools,
            LaneAffinity.of(self.router, pools) if self.opt.cache_affinity else None)
        self.sample_s = self.opt.sample_s or auto_sample_s(workload.duration_s, self.opt.sync_s)
        self.sample_s = max(self.opt.sync_s,
                            round(self.sample_s / self.opt.sync_s) * self.opt.sync_s)
        # Departures are counted in bins this wide: fine enough to sample the number in
        # the system densely, coarse enough that a day-long run keeps < 1 MB of counts.
        span = max(workload.duration_s, self.opt.sync_s)
        self.fine_s = self.opt.sync_s * max(1, math.ceil(span / (self.opt.sync_s * 100_000)))
        self.inv_fine = 1.0 / self.fine_s
        # sim/disagg.py: per workload request, (first-token time, completion time), or None
        self.request_log: np.ndarray | None = None

    # ---- state ------------------------------------------------------------------------

    def _build_lanes(self) -> None:
        n = self.n_lanes
        pools = self.pools
        self.clock = np.zeros(n)
        self.up = np.ones(n, dtype=bool)
        self.down_count = np.zeros(n, dtype=np.int64)
        self.n_dec = np.zeros(n, dtype=np.int64)
        self.dec_ctx = np.zeros(n)
        self.n_seqs = np.zeros(n, dtype=np.int64)
        self.n_wait = np.zeros(n, dtype=np.int64)
        self.kv = np.zeros(n)
        lane_of = self.lane_pool
        per_pool_cap = np.array([p.kv_tokens for p in pools], dtype=float)
        self.kv_cap = per_pool_cap[lane_of] if n else np.zeros(0)
        self.watermark = np.array(
            [self.fleet.engine.kv_watermark * p.kv_tokens for p in pools])[lane_of] \
            if n else np.zeros(0)
        # A decoding sequence takes 1 + k tokens of the budget (k verify positions).
        self.max_seqs = np.array([min(p.max_num_seqs,
                                      p.max_batched_tokens // (1 + p.speculation.verify))
                                  for p in pools], dtype=np.int64)[lane_of] \
            if n else np.zeros(0, np.int64)
        self.budget = np.array([p.max_batched_tokens for p in pools],
                               dtype=np.int64)[lane_of] if n else np.zeros(0, np.int64)
        self.step = np.zeros(n, dtype=np.int64)
        self.prefilling = np.zeros(n, dtype=bool)
        self.wait_head = np.full(n, np.inf)
        self.blocked = np.zeros(n, dtype=bool)
        self.busy = np.zeros(n)
        self.pre_tok = np.zeros(n)
        self.pre_att = np.zeros(n)
        self.outstanding = np.zeros(n)
        # Waiting queue of each lane: a linked list through the slots (FIFO; preempted
        # requests go back to the front), so routing appends and admission pops for
        # many lanes at once.
        self.q_head = np.full(n, -1, dtype=np.int64)
        self.q_tail = np.full(n, -1, dtype=np.int64)
        # Completions ahead, per lane and step: ring[lane, step % H] holds how many
        # decoding sequences finish at that step and their context then. A lane's
        # iteration subtracts its slot's entry, so completions cost no per-request work
        # in the round; the requests themselves are measured at the next flush. H
        # covers the longest answer when memory allows; sequences further ahead wait in
        # a per-lane list until they come within H steps.
        longest = int(self.w.output_tokens.max()) + 2 if len(self.w) else 2
        fit = max(64, _RING_BYTES // (16 * max(n, 1)))  # steps that fit the memory cap
        self.ring_len = min(1 << max(6, (min(longest, fit) - 1).bit_length()),
                            1 << max(6, fit.bit_length() - 1))
        self.ring_mask = self.ring_len - 1
        self.ring_n = np.zeros((n, self.ring_len), dtype=np.int64)
        self.ring_ctx = np.zeros((n, self.ring_len))
        # Flat views, indexed lane * ring_len + step % ring_len (1-D indexing is cheaper).
        self.ring_nf = self.ring_n.reshape(-1)
        self.ring_cf = self.ring_ctx.reshape(-1)
        self.ring_shift = self.ring_len.bit_length() - 1
        self.far: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (step, slot) heaps
        self.far_next = np.full(n, NEVER, dtype=np.int64)
        self.ring_from = np.zeros(n, dtype=np.int64)  # completions before it are applied
        self.n_far = 0
        # Completions so far since the last flush: (lane << 32 | step) -> clock.
        self.done_keys: list[np.ndarray] = []
        self.done_when: list[np.ndarray] = []
        # Partial prompts of each lane (admitted, prompt not all prefilled yet), in
        # admission order: a linked list through the slots, like the waiting queue.
        self.pf_head = np.full(n, -1, dtype=np.int64)
        self.pf_tail = np.full(n, -1, dtype=np.int64)
        self.fin_slots: list[np.ndarray] = []  # prompts whose last chunk is in this round
        self.fin_lanes: list[np.ndarray] = []
        # The same arrays as the kernels take them (views: no copies).
        self.ln = kernels.Lanes(
            clock=self.clock, up=self.up, wait_head=self.wait_head, n_seqs=self.n_seqs,
            n_wait=self.n_wait, blocked=self.blocked, step=self.step,
            prefilling=self.prefilling, kv=self.kv, kv_cap=self.kv_cap,
            watermark=self.watermark, n_dec=self.n_dec, dec_ctx=self.dec_ctx,
            outstanding=self.outstanding, max_seqs=self.max_seqs, budget=self.budget,
            busy=self.busy, pre_tok=self.pre_tok, pre_att=self.pre_att, q_head=self.q_head,
            q_tail=self.q_tail, pf_head=self.pf_head, pf_tail=self.pf_tail,
            far_next=self.far_next, ring_from=self.ring_from, verify=self.cost.verify,
            advance=self.cost.advance, kv_arrives=np.zeros(n, dtype=np.bool_))
        self.ring = kernels.Ring(n=self.ring_nf, ctx=self.ring_cf, shift=self.ring_shift,
                                 mask=self.ring_mask, length=self.ring_len)
        self.all_lanes = np.arange(n, dtype=np.int64)
        # The kernels called once or more per routing window, without Numba's per-call
        # type dispatch (see kernels.Direct; their arguments' types never change).
        self._k_advance = kernels.Direct(kernels.advance)
        self._k_pool_load = kernels.Direct(kernels.pool_load)
        self._k_place = kernels.Direct(kernels.place)
        self._k_arrive = kernels.Direct(kernels.arrive)
        self.price = np.array([p.unit.usd_per_chip_hour for p in pools])
        self.preempt = np.zeros(len(pools), dtype=np.int64)

    def _build_slots(self) -> None:
        self.n_slots = 0
        self.free: list[int] = []
        self.aseq = 0  # admission counter: the newest running sequence is preempted
        # Requests that finished right after their prompt (one-token answers), with the
        # time; the others are found through done_keys at the flush.
        self.finished: list[np.ndarray] = []
        self.finished_t: list[np.ndarray] = []
        self.n_finished = 0
        self.sl = kernels.Slots(*(np.zeros(0, dtype=kernels.SLOT_DTYPES[f])
                                  for f in kernels.Slots._fields))
        self._grow_slots(1024)

    def _grow_slots(self, need: int) -> None:
        """Make room for ``need`` slots at least (doubling): memory follows the largest
        number of requests in flight at once, not the number that finished."""
        old = self.n_slots
        new = max(need, 2 * old, 1024)
        grown = []
        for f, col in zip(kernels.Slots._fields, self.sl, strict=True):
            a: np.ndarray = np.zeros(new, dtype=kernels.SLOT_DTYPES[f])
            a[:old] = col
            grown.append(a)
        self.sl = kernels.Slots(*grown)
        # Handed out from the end: low slot numbers first.
        self.free.extend(range(new - 1, old - 1, -1))
        self.n_slots = new

    def _alloc(self, m: int) -> np.ndarray:
        if len(self.free) < m:
            self._grow_slots(self.n_slots + m)
        take = self.free[-m:]
        del self.free[-m:]
        return np.array(take, dtype=np.int64)

    # ---- pool snapshots for the router -----------------------------------------------

    def _per_pool(self, ufunc: np.ufunc, a: np.ndarray, empty: float = 0) -> np.ndarray:
        """``ufunc`` over each pool's lanes of lane array ``a`` (``empty`` for a pool
        without lanes)."""
        if self.all_pools_have_lanes:
            return ufunc.reduceat(a, self.pool_starts)
        out = np.full(self.n_pools, empty, dtype=a.dtype)
        if self.n_lanes:
            out[self.pool_has_lanes] = ufunc.reduceat(
                a, self.pool_starts[self.pool_has_lanes])
        return out

    def _refresh_states(self, health: bool = False) -> None:
        """Take the pool aggregates of this instant; each key's PoolStates are brought up
        to date when the key next routes (:meth:`_key_view`). ``health``: lanes went
        down or up, or prices changed, since the last call."""
        router = self.router
        router.refresh()
        if not self.n_lanes:
            return
        if health:
            up = self.up
            up_lanes = self._per_pool(np.add, up.astype(np.int64))
            self.up_kv_cap = self._per_pool(np.add, np.where(up, self.kv_cap, 0.0))
            router.set_health(up_lanes.tolist(), (up_lanes // self.lanes_per_replica).tolist(),
                              (self.price * self.chips_per_replica).tolist())
        running, queued, kv_frac = self._k_pool_load(self.pool_first_arr, self.pool_lanes_arr,
                                                     self.up, self.n_seqs, self.n_wait, self.kv,
                                                     self.up_kv_cap)
        router.set_load(running.tolist(), queued.tolist(), kv_frac.tolist())

    # ---- routing ---------------------------------------------------------------------

    def _dispatch(self, slots: np.ndarray, picks: np.ndarray, when: np.ndarray) -> None:
        """Send routed requests to their pools' lanes (in order) or reject them."""
        bad = picks < 0
        if bad.any():
            for code in np.unique(picks[bad]).tolist():
                sel = picks == code
                self._reject_slots(slots[sel], REASON_CODES[code], when[sel])
            keep = ~bad
            slots, picks, when = slots[keep], picks[keep], when[keep]
            if not slots.size:
                return
        if self.shedding:
            shed = self.admission.shed(slots, picks, self.sl, self.router)
            if shed:
                out = np.array(shed, dtype=np.int64)
                self._reject_slots(slots[out], SHED, when[out])
                keep = np.ones(slots.size, dtype=bool)
                keep[out] = False
                slots, picks, when = slots[keep], picks[keep], when[keep]
            if not slots.size:
                return
        att = self.prefill_att
        # Cache-affinity routing (sim/prefix_cache.py): a lane per request, or -1.
        prefer = (self.prefix.prefer(slots, picks, self.sl.rid, self.sl.key,
                                     self.sl.inp[slots] + self.sl.out[slots], self.outstanding)
                  if self.prefix is not None else np.full(slots.size, -1, np.int64))
        lanes = self._k_place(slots, picks, prefer, self.outstanding, self.pool_first_arr,
                              self.pool_lanes_arr, self.routed, self.sl, self.q_head, self.q_tail,
                              self.n_wait, self.wait_head, att.coef, att.full, att.sliding,
                              att.window)
        if self.prefix is not None:  # cached prompt blocks skip their prefill
            self.prefix.place(slots, lanes, self.sl.rid, self.sl.inp, self.sl.need, self.kv,
                              self.kv_cap)
        down = lanes < 0
        if down.any():
            self._reject_slots(slots[down], NO_HEALTHY, when[down])

    def _arrive(self, i: int, j: int) -> None:
        """Requests ``i..j-1`` of the workload arrive in this window."""
        self._refresh_states()
        m = j - i
        keys = self.w_key[i:j]
        inp = self.w_inp[i:j]
        out = self.w_out[i:j]
        arrival = self.w_arrival[i:j]
        self.in_system += m
        s = self._alloc(m)
        self._k_arrive(s, int(i), arrival, inp, out, keys, self.key_tier, self.tiers.arrived,
                       self.sl)
        picks = self.router.pick_window(keys, inp + out)
        # A request turned away at the door leaves at its arrival time.
        self._dispatch(s, picks, arrival)

    def _reject_slots(self, slots: np.ndarray, reason: str, when: np.ndarray | float) -> None:
        n = int(slots.size)
        if not n:
            return
        self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.rejected += n
        by_tier = np.bincount(self.sl.tier[slots], minlength=len(self.tier_names))
        self.tiers.rejected += by_tier
        if reason == SHED:
            self.tiers.shed += by_tier
        pool = self.sl.pool[slots]
        if (pool >= 0).any():
            self.pools_stats.rejected += np.bincount(pool[pool >= 0], minlength=self.n_pools)
        t = np.broadcast_to(np.asarray(when, dtype=float), (n,))
        self.sojourn += float((t - self.sl.arrival[slots]).sum())
        self._departures(t, np.ones(n, dtype=np.int64))
        self.in_system -= n
        self.sl.state[slots] = _FREE
        self.free.extend(slots.tolist())

    def _departures(self, t: np.ndarray, n: np.ndarray) -> None:
        """Count ``n[i]`` departures at time ``t[i]`` (fine bins)."""
        b = (t * self.inv_fine).astype(np.int64)
        top = int(b.max()) + 1
        if top > self.dep.size:
            grown = np.zeros(max(top, 2 * self.dep.size), dtype=np.int64)
            grown[:self.dep.size] = self.dep
            self.dep = grown
        np.add.at(self.dep, b, n)
        last = float(t.max())
        if last > self.last_event:
            self.last_event = last

    # ---- completions -----------------------------------------------------------------

    def _completed(self, lanes: np.ndarray, stp: np.ndarray, clk: np.ndarray,
                   c: np.ndarray) -> None:
        """``c[i]`` decoding sequences left lane ``lanes[i]`` at the start of its
        iteration ``stp[i]`` (time ``clk[i]``); they are measured at the next flush."""
        self.done_keys.append((lanes << _LANE_SHIFT) | stp)
        self.done_when.append(clk)
        if self.shedding:
            np.add.at(self.admission.pool_done, self.lane_pool[lanes], c)
        n = int(c.sum())
        self.completed += n
        self.in_system -= n
        self.n_finished += n

    def _finish(self, slots: np.ndarray, t: np.ndarray) -> None:
        """Requests done right after their prompt (already off their lanes)."""
        if self.shedding:
            np.add.at(self.admission.pool_done, self.sl.pool[slots], 1)
        self.sl.state[slots] = _DONE
        self.finished.append(slots)
        self.finished_t.append(t)
        n = int(slots.size)
        self.n_finished += n
        self.completed += n
        self.in_system -= n

    def _flush(self) -> None:
        """Latencies, departures and sojourn of the requests completed since the last
        flush; their slots are free again."""
        parts, times = self.finished, self.finished_t
        if self.done_keys:
            keys = np.concatenate(self.done_keys)
            when = np.concatenate(self.done_when)
            order = np.argsort(keys)
            keys, when = keys[order], when[order]
            dec = np.flatnonzero(self.sl.state == _DECODING)
            lane, done = self.sl.lane[dec], self.sl.done[dec]
            gone = done < self.ring_from[lane]
            dec, lane, done = dec[gone], lane[gone], done[gone]
            # Each left when its lane passed its last step: that (lane, step)'s clock.
            at = np.searchsorted(keys, (lane << _LANE_SHIFT) | done)
            parts = parts + [dec]
            times = times + [when[at]]
        self.done_keys, self.done_when = [], []
        self.finished, self.finished_t = [], []
        self.n_finished = 0
        slots = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if slots.size:
            t = np.concatenate(times)
            arrival = self.sl.arrival[slots]
            first = self.sl.first[slots]
            out = self.sl.out[slots]
            tpot = perf_metrics.tpot(first, t, out)
            e2e = perf_metrics.e2e(arrival, t)
            if self.request_log is not None:
                self.request_log[self.sl.rid[slots]] = np.stack([first, t], axis=1)
            self.buf.add(self.sl.tier[slots], self.sl.pool[slots],
                         perf_metrics.ttft(arrival, first), tpot, e2e,
                         self.sl.admit[slots] - arrival, out, self.sl.inp[slots])
            self.sojourn += float(e2e.sum())
            self._departures(t, np.ones(slots.size, dtype=np.int64))
            self.sl.state[slots] = _FREE
            self.free.extend(slots.tolist())
        self.buf.flush(self.tiers, self.pools_stats, self.slo_ttft, self.slo_tpot)

    def _enter_decode(self) -> None:
        """Prompts whose last chunk ran in the iteration that just ended: that iteration
        produced their next token; they decode from the next one on."""
        slots = np.concatenate(self.fin_slots) if len(self.fin_slots) > 1 else self.fin_slots[0]
        lanes = np.concatenate(self.fin_lanes) if len(self.fin_lanes) > 1 else self.fin_lanes[0]
        self.fin_slots, self.fin_lanes = [], []
        code = kernels.enter_decode(slots, lanes, self.ln, self.sl, self.ring)
        if not code.any():
            return
        ends = code == 1
        if ends.any():
            self._finish(slots[ends], self.clock[lanes[ends]])
        far = code == 2
        if far.any():
            self._push_far(slots[far], lanes[far])

    def _push_far(self, slots: np.ndarray, lanes: np.ndarray) -> None:
        """Decoding sequences whose last step is beyond the ring's reach wait in their
        lane's heap until it comes near (long answers)."""
        for slot, r in zip(slots.tolist(), lanes.tolist(), strict=True):
            heappush(self.far[r], (int(self.sl.done[slot]), slot))
            self.far_next[r] = self.far[r][0][0]
            self.sl.state[slot] = _DECODING_FAR
        self.n_far += int(slots.size)

    def _leave_ctx(self, slot: int, r: int) -> float:
        """The context (and KV) decoding ``slot`` takes off lane ``r`` when it leaves:
        ``kernels.left_ctx``, what its entry and iterations added."""
        steps = int(self.sl.done[slot]) - int(self.sl.enter[slot])
        entered = int(self.sl.inp[slot]) + int(self.sl.gent[slot])
        return entered + float(self.cost.advance[r]) * steps

    def _bring_near(self, lanes: np.ndarray, stp: np.ndarray) -> None:
        """Move completions that came within the ring's reach into it (long answers)."""
        for r, s in zip(lanes.tolist(), stp.tolist(), strict=True):
            h = self.far[r]
            while h and h[0][0] - s < self.ring_len:
                d, slot = heappop(h)
                self.ring_n[r, d & self.ring_mask] += 1
                self.ring_ctx[r, d & self.ring_mask] += self._leave_ctx(slot, r)
                self.sl.state[slot] = _DECODING
                self.n_far -= 1
            self.far_next[r] = h[0][0] if h else NEVER

    # ---- one lane's scheduler, for many lanes at once ----------------------------------

    def _schedule(self, lanes: np.ndarray, t: np.ndarray) -> None:
        """At the start of an iteration of each of ``lanes`` (clocks ``t``; completions
        already left): preempt on KV overflow, then spend the token budget on partial
        prompts and on admissions (compiled: :func:`~tokenfleet.sim.kernels.schedule`;
        the rare paths here)."""
        while True:
            status, fin, fin_lane, stuck, left, pre, att, self.aseq = kernels.schedule(
                lanes, t, self.ln, self.sl, self.aseq)
            if status != kernels.SCHEDULE_PREEMPT:
                break
            adv = self.cost.advance
            over = self.kv[lanes] + self.n_dec[lanes] * adv[lanes] > self.kv_cap[lanes]
            for r, tr in zip(lanes[over].tolist(), t[over].tolist(), strict=True):
                while (self.kv[r] + self.n_dec[r] * adv[r] > self.kv_cap[r]
                       and self.n_seqs[r] > 0):
                    self._preempt_last(r, tr)
        if fin.size:
            self.fin_slots.append(fin)
            self.fin_lanes.append(fin_lane)
        if status == kernels.SCHEDULE_STUCK:
            for a in stuck.tolist():
                self._unstick(int(lanes[a]), float(t[a]), a, left, pre, att)
            adm = (self.n_wait[lanes] > 0) & (left > 0)
            if adm.any():
                self._admit(lanes, t, adm, left, pre, att)
            self.pre_tok[lanes] = pre
            self.pre_att[lanes] = att

    def _partial(self, r: int) -> list[int]:
        """Lane ``r``'s partial prompts, oldest first (for the rare paths)."""
        out = []
        s = int(self.pf_head[r])
        while s >= 0:
            out.append(s)
            s = int(self.sl.pnext[s])
        return out

    def _set_partial(self, r: int, slots: list[int]) -> None:
        self.pf_head[r] = self.pf_tail[r] = -1
        for s in slots:
            kernels.pf_push(r, s, self.pf_head, self.pf_tail, self.sl)
        self.prefilling[r] = bool(slots)

    def _unstick(self, r: int, t: float, a: int, left: np.ndarray, pre: np.ndarray,
                 att: np.ndarray) -> None:
        """Only partial prompts and no KV left for any of them: free the newest and give
        the rest another try, until one moves (the rare path, one request at a time)."""
        budget = int(left[a])
        cap = self.kv_cap[r]
        fin: list[int] = []
        while self.pf_head[r] >= 0:
            self._preempt_last(r, t)
            kv = float(self.kv[r])
            took = 0
            a_sum = 0.0
            keep: list[int] = []
            for s in self._partial(r):
                c = min(int(self.sl.need[s]), budget, int(cap - kv))
                if c > 0:
                    kv += c
                    self.sl.need[s] -= c
                    self.sl.kvh[s] += c
                    budget -= c
                    took += c
                    a_sum += c * float(self.sl.att[s])
                (fin if self.sl.need[s] == 0 else keep).append(s)
            self._set_partial(r, keep)
            self.kv[r] = kv
            if took:
                pre[a] += took
                att[a] += a_sum
                break
        left[a] = budget
        if fin:
            self.fin_slots.append(np.array(fin, dtype=np.int64))
            self.fin_lanes.append(np.full(len(fin), r, dtype=np.int64))

    def _admit(self, lanes: np.ndarray, t: np.ndarray, adm: np.ndarray, left: np.ndarray,
               pre: np.ndarray, att: np.ndarray) -> None:
        """Admit waiting requests in queue order while the budget, the batch size and
        the KV blocks (less the watermark, once anything runs) allow; the first that
        does not fit for KV blocks the lane until something leaves."""
        at = np.flatnonzero(adm)
        fin, fin_lane, self.aseq = kernels.admit(lanes[at], t[at], at, left, pre, att, self.ln,
                                                 self.sl, self.aseq)
        if fin.size:
            self.fin_slots.append(fin)
            self.fin_lanes.append(fin_lane)

    def _live_on(self, lanes: np.ndarray) -> np.ndarray:
        """Slots in flight on ``lanes`` (waiting, prefilling or decoding; a scan of the
        slot table, for the rare paths: preemption, failures, the final stop)."""
        on = np.isin(self.sl.lane, lanes) if lanes.size > 1 else self.sl.lane == lanes[0]
        st = self.sl.state
        live = on & ((st == _WAITING) | (st == _PREFILLING) | (st == _DECODING_FAR)
                     | ((st == _DECODING) & (self.sl.done >= self.ring_from[self.sl.lane])))
        return np.flatnonzero(live)

    def _preempt_last(self, r: int, t: float) -> None:
        """Recompute preemption of the most recently admitted sequence (vLLM's choice)."""
        cand = self._live_on(np.array([r]))
        cand = cand[self.sl.state[cand] != _WAITING]
        slot = int(cand[np.argmax(self.sl.aseq[cand])])
        state = int(self.sl.state[slot])
        if state in (_DECODING, _DECODING_FAR):
            # E tokens per iteration (1 on a plain lane): what the lane accumulated for
            # it comes off; it recomputes the whole tokens it had.
            e = float(self.cost.advance[r])
            grown = int(self.step[r]) - int(self.sl.enter[slot])
            entered = int(self.sl.inp[slot]) + int(self.sl.gent[slot])
            self.sl.gen[slot] = int(self.sl.gent[slot]) + math.floor(e * grown)
            self.n_dec[r] -= 1
            self.dec_ctx[r] -= entered + e * grown
            self.kv[r] -= int(self.sl.kvh[slot]) + e * grown
            # Its completion is off.
            d = int(self.sl.done[slot])
            if state == _DECODING:
                self.ring_n[r, d & self.ring_mask] -= 1
                self.ring_ctx[r, d & self.ring_mask] -= self._leave_ctx(slot, r)
            else:
                h = self.far[r]
                h.remove((d, slot))
                heapify(h)
                self.far_next[r] = h[0][0] if h else NEVER
                self.n_far -= 1
        else:
            self._set_partial(r, [q for q in self._partial(r) if q != slot])
            self.kv[r] -= int(self.sl.kvh[slot])
        self.sl.kvh[slot] = 0
        need = int(self.sl.inp[slot] + self.sl.gen[slot])
        self.sl.need[slot] = need
        self.sl.att[slot] = self.prefill_att.per_token(self.lane_pool[[r]],
                                                      np.array([need]))[0]
        self.sl.state[slot] = _WAITING
        self.n_seqs[r] -= 1
        self.sl.next[slot] = self.q_head[r]
        self.q_head[r] = slot
        if self.q_tail[r] < 0:
            self.q_tail[r] = slot
        self.n_wait[r] += 1
        self.wait_head[r] = min(float(self.sl.ready[slot]), t)
        self.preempt[self.lane_pool[r]] += 1

    # ---- rounds: every lane inside the window runs one iteration ----------------------

    def _advance(self, end: float) -> None:
        """Rounds until every lane's clock reaches ``end`` or it runs out of work: the
        compiled :func:`~tokenfleet.sim.kernels.advance` runs them (scheduler included)
        while no lane needs the Python side; the rare paths (preemption, a lane stuck
        with partial prompts, completions beyond the ring) run here, then it goes on."""
        cost = self.cost
        idx = self.all_lanes
        check_up = True
        while True:
            (status, idx, clk, slow, done, nd, ended, ended_t, far, far_lane,
             self.aseq) = self._k_advance(idx, check_up, float(end), int(self.n_far),
                                          int(self.aseq), self.ln, self.sl, self.ring,
                                          cost.table, cost.sliding, cost.moe, cost.spec)
            # From here on only lanes of the last round can have work: routing came
            # before the rounds, and a lane without sequences changes only when it is
            # scheduled.
            check_up = False
            if nd:
                self._completed(done.lane[:nd], done.step[:nd], done.when[:nd],
                                done.n[:nd])
            if ended.size:
                self._finish(ended, ended_t)
            if status == kernels.ADVANCE_DONE:
                return
            if status == kernels.ADVANCE_FAR:
                near = self.far_next[idx] - self.step[idx] < self.ring_len
                self._bring_near(idx[near], self.step[idx[near]])
            elif status == kernels.ADVANCE_SLOW:
                self._schedule(idx[slow], clk[slow])
                kernels.round_end(idx, cost.table, cost.sliding, cost.moe, self.ln, cost.spec)
                if self.fin_slots:
                    self._enter_decode()
            else:  # ADVANCE_FAR_PUSH
                self._push_far(far, far_lane)

    # ---- shocks -------------------------------------------------------------------------

    def _lanes_of(self, f: Failure) -> list[int]:
        out: list[int] = []
        for p in self.pools:
            n = f.replicas_of(p.unit)
            if n:
                out.extend(range(p.first_lane, p.first_lane + n * p.lanes_per_replica))
        return out

    def _fail(self, f: Failure, t: float) -> None:
        hit: list[int] = []
        for r in self._lanes_of(f):
            self.down_count[r] += 1
            if self.down_count[r] == 1:
                hit.append(r)
        v = self._live_on(np.array(hit, dtype=np.int64)) if hit else np.zeros(0, np.int64)
        for r in hit:
            self._reset_lane(r)
            self.up[r] = False
            self.outstanding[r] = np.inf
        self._refresh_states(health=True)
        if not v.size:
            return
        v = v[np.lexsort((self.sl.rid[v], self.sl.arrival[v]))]
        # Pools count every request moved away; tiers count each request once.
        self.pools_stats.retried += np.bincount(self.sl.pool[v], minlength=self.n_pools)
        firsts = v[self.sl.retries[v] == 0]
        self.retried += int(firsts.size)
        self.tiers.retried += np.bincount(self.sl.tier[firsts],
                                          minlength=len(self.tier_names))
        self.sl.retries[v] += 1
        self.retries += int(v.size)
        self.sl.gen[v] = 0
        self.sl.need[v] = self.sl.inp[v]
        self.sl.kvh[v] = 0
        self.sl.first[v] = -1.0
        self.sl.admit[v] = -1.0
        self.sl.ready[v] = t
        self.sl.pool[v] = -1
        self.sl.state[v] = _FREE  # until enqueued again
        # Routed one by one, each seeing the ones before.
        size = (self.sl.inp[v] + self.sl.out[v]).tolist()
        picks = np.array([self.router.pick_one(k, sz)
                          for k, sz in zip(self.sl.key[v].tolist(), size, strict=True)],
                         dtype=np.int64)
        self._dispatch(v, picks, np.full(v.size, t))

    def _reset_lane(self, r: int) -> None:
        self.pf_head[r] = self.pf_tail[r] = -1
        self.n_far -= len(self.far[r])
        self.far[r].clear()
        self.far_next[r] = NEVER
        self.ring_n[r] = 0
        self.ring_ctx[r] = 0
        self.q_head[r] = -1
        self.q_tail[r] = -1
        self.n_dec[r] = 0
        self.dec_ctx[r] = 0.0
        self.n_seqs[r] = 0
        self.n_wait[r] = 0
        self.kv[r] = 0.0
        self.prefilling[r] = False
        self.wait_head[r] = np.inf
        self.blocked[r] = False
        self.pre_tok[r] = 0.0
        self.pre_att[r] = 0.0

    def _recover(self, f: Failure, t: float) -> None:
        for r in self._lanes_of(f):
            self.down_count[r] -= 1
            if self.down_count[r] == 0:
                self.up[r] = True
                self.clock[r] = t
                self.outstanding[r] = 0.0
        self._refresh_states(health=True)

    def _set_price(self, pc: PriceChange, t: float) -> None:
        for p in self.pools:
            if pc.matches(p.unit):
                self.price[p.index] = pc.usd_per_chip_hour
        self._refresh_states(health=True)

    # ---- samples ------------------------------------------------------------------------

    def _sample(self, t: float) -> None:
        if not self.pools:
            return
        up = self.up
        cols = {
            "running": self._per_pool(np.add, self.n_seqs),
            "waiting": self._per_pool(np.add, self.n_wait),
            "kv_used_tokens": self._per_pool(np.add, np.where(up, self.kv, 0.0)),
            "busy_s": self._per_pool(np.add, self.busy),
            "routed": self.routed.copy(),
            "preemptions": self.preempt.copy(),
        }
        for p in self.pools:
            ser = self.series[p.id]
            for c, v in cols.items():
                ser[c].append(float(v[p.index]))
        if self.shedding:
            up = self._per_pool(np.add, self.up.astype(np.int64))
            self.admission.measure_drain(t, cols["waiting"],
                                         np.maximum(up // self.lanes_per_replica, 1))

    # ---- main loop ----------------------------------------------------------------------

    def run(self) -> RunRecord:
        wall0 = time.perf_counter()
        w = self.w
        n = len(w)
        ss = self.sample_s
        self._reset_counters()
        events = self._shock_events()
        ei = 0
        arrival = w.arrival_s
        max_time = self.opt.max_time_s if self.opt.max_time_s is not None else (
            (float(arrival[-1]) if n else 0.0) + 7 * 86400.0)
        progress = self.opt.progress
        i = 0
        now = 0.0
        next_sample = ss
        n_samples = 0
        self._refresh_states(health=True)
        while True:
            ei = self._apply_shocks(events, ei, now)
            if i >= n and self.in_system == 0:
                break
            if now >= max_time:
                self._stop_all(now)
                break
            next_event = events[ei][0] if ei < len(events) else math.inf
            end = self._window_end(now, float(arrival[i]) if i < n else None, next_sample,
                                   next_event)
            j = int(np.searchsorted(arrival, end, side="left"))
            if j > i:
                self._arrive(i, j)
                i = j
            self._advance(end)
            if self.n_finished >= CompletionBuffer.FLUSH_AT:
                self._flush()
                if progress is not None:
                    progress(self.completed + self.rejected, n)  # type: ignore[operator]
            now = end
            while next_sample <= now + 1e-9:
                self._sample(next_sample)
                n_samples += 1
                next_sample = (n_samples + 1) * ss
        self._flush()  # the last departures set the end
        end_s = max(self.last_event, now if n == 0 else 0.0)
        while n_samples * ss < end_s - 1e-9:
            self._sample((n_samples + 1) * ss)
            n_samples += 1
        for p in self.pools:
            self.pools_stats.arrived[p.index] = self.routed[p.index]
        if progress is not None:
            progress(self.completed + self.rejected, n)  # type: ignore[operator]
        return self._record(end_s, n_samples, time.perf_counter() - wall0)

    def _reset_counters(self) -> None:
        """Statistics and counters of one run, all zero."""
        self.tiers = GroupStats.empty(self.tier_names)
        self.pools_stats = GroupStats.empty([p.id for p in self.pools])
        self.buf = CompletionBuffer()
        self.reasons: dict[str, int] = {}
        self.completed = self.rejected = self.retried = self.retries = 0
        self.in_system = 0
        self.sojourn = 0.0
        self.dep = np.zeros(1024, dtype=np.int64)
        self.last_event = 0.0
        self.routed = np.zeros(self.n_pools, dtype=np.int64)
        self.series: dict[str, dict[str, list[float]]] = {
            p.id: {c: [] for c in SERIES_COLUMNS} for p in self.pools}

    def _shock_events(self) -> list[tuple[float, int, int, object]]:
        """Failures, recoveries and price changes as (t, order, seq, shock), in the order
        they apply: by time, then recoveries before failures before prices."""
        events: list[tuple[float, int, int, object]] = []
        for j, f in enumerate(self.failures):
            events.append((f.start, 1, j, f))
            if f.end is not None:
                events.append((f.end, 0, j, ("recover", f)))
        for j, pc in enumerate(self.prices):
            events.append((pc.start, 2, j, pc))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        return events

    def _apply_shocks(self, events: list[tuple[float, int, int, object]], ei: int,
                      now: float) -> int:
        """Apply the shocks due by ``now`` from ``events[ei:]``; the index of the next."""
        while ei < len(events) and events[ei][0] <= now + 1e-12:
            _, order, _, ev = events[ei]
            ei += 1
            if order == 0:
                self._recover(ev[1], now)  # type: ignore[index]
            elif order == 1:
                self._fail(ev, now)  # type: ignore[arg-type]
            else:
                self._set_price(ev, now)  # type: ignore[arg-type]
        return ei

    def _window_end(self, now: float, next_arrival_s: float | None, next_sample: float,
                    next_event: float) -> float:
        """End of the window that starts at ``now``. Windows sit on the grid k * sync_s;
        empty ones are skipped (lanes run across them), so windows with arrivals start
        on the grid in every run."""
        sync = self.opt.sync_s
        end = (math.floor(now / sync + 1e-9) + 1) * sync
        if next_arrival_s is not None:
            end = max(end, math.floor(next_arrival_s / sync + 1e-9) * sync)
        else:
            end = max(end, next_sample)
        return min(end, next_event, next_sample)

    def _stop_all(self, t: float) -> None:
        busy = np.flatnonzero((self.n_seqs > 0) | (self.n_wait > 0))
        if not busy.size:
            return
        left = self._live_on(busy)
        for r in busy.tolist():
            self._reset_lane(r)
        self._reject_slots(left, UNFINISHED, t)

    def _record(self, end_s: float, n_samples: int, wall_s: float) -> RunRecord:
        ss = self.sample_s
        used = int(np.flatnonzero(self.dep).max()) + 1 if self.dep.any() else 0
        n_fine = max(used, math.ceil(end_s * self.inv_fine) + 1)
        arr = np.bincount((self.w.arrival_s * self.inv_fine).astype(np.int64),
                          minlength=n_fine) if len(self.w) else np.zeros(n_fine, np.int64)
        dep = np.zeros(max(n_fine, arr.size), np.int64)
        dep[:used] = self.dep[:used]
        arr = np.pad(arr, (0, dep.size - arr.size))
        info = {p.id: p.info() for p in self.pools}
        return RunRecord(
            tier_names=self.tier_names,
            tier_slo={t.name: (t.slo_ttft_s, t.slo_tpot_s) for t in self.fleet.plan.tiers},
            tiers=self.tiers, pools=self.pools_stats, pool_info=info,
            reject_reasons=dict(self.reasons), requests=len(self.w),
            completed=self.completed, rejected=self.rejected, retried=self.retried,
            retries=self.retries,
            preemptions={p.id: int(self.preempt[p.index]) for p in self.pools},
            busy_s={p.id: float(self.busy[p.lane_slice].sum()) for p in self.pools},
            sojourn_s=self.sojourn, sample_s=ss, series=self.series,
            fine_s=self.fine_s, arrivals_fine=arr, departures_fine=dep,
            failures=list(self.failures), prices=list(self.prices), end_s=end_s,
            wall_s=wall_s,
            source=self.w.source, policy=self.opt.policy, seed=self.opt.seed,
            admission=self.opt.admission,
            prefix_tokens=(self.prefix.by_pool([p.id for p in self.pools])
                           if self.prefix is not None else {}),
        )
