"""Prefix (KV) caching in the simulator: every engine lane keeps an LRU block cache in
the KV memory it has free, and a request that finds a leading run of its prompt's
blocks there skips that part of its prefill.

Kept beside the event loop rather than inside it: the engine asks :meth:`prefer` for a
lane per request (cache-affinity routing, :class:`LaneAffinity`; -1 leaves the plan's
split and the least loaded lane) before ``kernels.place`` queues them, and calls
:meth:`place` once they are on lanes; this module lowers each request's prompt work
(``need``, the prompt tokens still to prefill) by its hit. What it models:

* one cache per lane (an engine instance has its own KV cache), holding 512-token
  blocks (the trace's block size), least recently used evicted first; its capacity
  at each lookup is the KV memory the lane has free then, so a busy lane keeps less;
* a hit is the cached leading run of the prompt's blocks (``workload/blockcache.py``),
  at most the prompt less one token (an engine computes the last prompt token to get
  the first output token, as vLLM does on a full hit);
* then the prompt's blocks are in the cache, most recently used;
* the cached prefix is the cache's, shared (its KV blocks are counted once, as vLLM's
  and SGLang's block managers do): the request is queued as a prompt of ``I - hit``
  tokens (its ``s_inp`` and ``need`` both drop by the hit), so its own KV, its
  prefill and its decode context all leave the prefix out. That keeps the engine's KV
  bookkeeping exact without touching its kernels, at a cost: decode attention does not
  read the prefix's KV (it understates decode time by up to the hit fraction of the
  context) and the prefix does not take memory from the lane. Keeping the context
  (for attention) apart from the KV a request owns is a change inside the engine's
  hot kernels (a slot column for the shared prefix, added to ``dec_ctx`` in
  ``enter_decode`` and taken off again where the completion ring, preemption and moves
  take ``s_inp``), left for when the kernels are not being reworked;
* a request preempted (recompute) prefills its own part again; one moved after a
  failure gets its whole prompt back and is looked up again where it lands;
* the tier's ``input_tokens`` (completed requests) then count the prompt tokens
  computed; prompt tokens served from the cache are counted here.

The engine runs :class:`LanePrefixCaches`, compiled (``sim/prefix_kernels.py``: a
window's requests in one call); :class:`ReferencePrefixCaches` is the same rule one
request at a time over ``routing.affinity.PrefixIndex`` and :meth:`LaneAffinity.choose`
(the gateway's structures), kept as the reference the tests hold the compiled one to.

Counts per pool: prompt tokens looked up and tokens served from the cache (requests
with prefix hashes only; a pool that saw none reports no hit rate).
"""

from __future__ import annotations

from typing import Self

import numpy as np

from tokenfleet.routing.affinity import MAX_LOAD_GAP, MIN_MATCH, PrefixIndex, best_affine
from tokenfleet.sim import prefix_kernels as pk
from tokenfleet.sim.dispatch import KeyRouter
from tokenfleet.sim.fleet import SimPool
from tokenfleet.sim.kernels import Direct
from tokenfleet.sim.traffic import Workload
from tokenfleet.workload.prefix import PrefixReuse, prefix_reuse
from tokenfleet.workload.trace import Trace, take_blocks


class _PoolCounts:
    """What the compiled caches and the reference share: built only for traffic with
    prefix hashes, and the hits counted per pool."""

    def __init__(self, workload: Workload, lane_pool: np.ndarray, n_pools: int,
                 affinity: LaneAffinity | None = None) -> None:
        self.hit_tokens = np.zeros(n_pools, np.int64)
        self.prompt_tokens = np.zeros(n_pools, np.int64)

    @classmethod
    def of(cls, workload: Workload, lane_pool: np.ndarray, n_pools: int,
           affinity: LaneAffinity | None = None) -> Self | None:
        """The caches when the workload carries prefix hashes, else None (no caching)."""
        if not workload.has_prefix:
            return None
        return cls(workload, lane_pool, n_pools, affinity)

    def by_pool(self, pool_ids: list[str]) -> dict[str, tuple[int, int]]:
        """``{pool: (tokens served from cache, prompt tokens looked up)}``."""
        return {pid: (int(self.hit_tokens[i]), int(self.prompt_tokens[i]))
                for i, pid in enumerate(pool_ids)}


class LanePrefixCaches(_PoolCounts):
    """The prefix caches of every lane, cache-affinity routing over them, and the hit
    counts per pool: :class:`ReferencePrefixCaches`' rule, compiled
    (``sim/prefix_kernels.py``), one call per routing window."""

    def __init__(self, workload: Workload, lane_pool: np.ndarray, n_pools: int,
                 affinity: LaneAffinity | None = None) -> None:
        assert workload.prefix_row is not None
        assert workload.prefix_offsets is not None and workload.prefix_hashes is not None
        self.row = np.ascontiguousarray(workload.prefix_row, dtype=np.int64)
        self.offsets = np.ascontiguousarray(workload.prefix_offsets, dtype=np.int64)
        # the hashes as int64 (same bits): every kernel array is int64
        self.blocks = np.ascontiguousarray(workload.prefix_hashes).view(np.int64)
        self.block_tokens = int(workload.prefix_block_tokens)
        self.lane_pool = np.ascontiguousarray(lane_pool, dtype=np.int64)
        self.caches = pk.new_caches(int(lane_pool.size))
        self.affinity = affinity
        if affinity is not None:
            sizes = [k.size for k in affinity.key_lanes]
            self.key_off = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
            self.key_lanes = (np.concatenate(affinity.key_lanes).astype(np.int64) if sizes
                              else np.zeros(0, np.int64))
            self.lane_conc = np.ascontiguousarray(affinity.lane_conc, dtype=float)
            self.lane_kv = np.ascontiguousarray(affinity.lane_kv, dtype=float)
        super().__init__(workload, lane_pool, n_pools, affinity)
        self.applied = np.zeros(self.row.size, np.int64)  # request -> hit taken off its prompt
        self._prefer = Direct(pk.prefer_window)
        self._place = Direct(pk.place_window)

    def prefer(self, slots: np.ndarray, picks: np.ndarray, s_rid: np.ndarray,
               s_key: np.ndarray, size: np.ndarray, outstanding: np.ndarray) -> np.ndarray:
        """Cache-affinity routing: the lane for each routed request (``picks``: its pool,
        rewritten to the chosen lane's pool), or -1 to leave it to ``kernels.place``
        (the plan's pool, its least loaded lane). See :class:`LaneAffinity`."""
        aff = self.affinity
        if aff is None:
            return np.full(slots.size, -1, np.int64)
        return self._prefer(self.caches, slots, picks, s_rid, s_key, size, outstanding,
                            self.row, self.offsets, self.blocks, self.key_off, self.key_lanes,
                            self.lane_conc, self.lane_kv, self.lane_pool,
                            float(aff.max_load_gap), float(aff.min_match))

    def place(self, slots: np.ndarray, lanes: np.ndarray, s_rid: np.ndarray,
              s_inp: np.ndarray, s_need: np.ndarray, kv_used: np.ndarray,
              kv_cap: np.ndarray) -> None:
        """Requests in ``slots`` were just queued on ``lanes`` (-1: not placed): look
        their prompts up in those lanes' caches and take the hits off ``s_need``."""
        while True:
            need = self._place(self.caches, slots, lanes, s_rid, s_inp, s_need, kv_used,
                               kv_cap, self.row, self.offsets, self.blocks, self.lane_pool,
                               self.applied, self.hit_tokens, self.prompt_tokens,
                               self.block_tokens)
            if not need:
                return
            self.caches = pk.grown(self.caches, need)



class ReferencePrefixCaches(_PoolCounts):
    """:class:`LanePrefixCaches` one request at a time in Python, over
    ``routing.affinity.PrefixIndex`` and :meth:`LaneAffinity.choose`: the reference the
    compiled caches are tested against (``tests/sim/test_prefix_kernels.py``), with the
    same interface (an engine runs with either)."""

    def __init__(self, workload: Workload, lane_pool: np.ndarray, n_pools: int,
                 affinity: LaneAffinity | None = None) -> None:
        assert workload.prefix_row is not None
        self.row = workload.prefix_row
        self.offsets = workload.prefix_offsets
        self.hashes = workload.prefix_hashes
        self.block_tokens = workload.prefix_block_tokens
        self.lane_pool = lane_pool
        # The lanes' caches and the affinity router's view of them are one structure
        # (routing.affinity.PrefixIndex): the router sees what each engine holds.
        self.index = PrefixIndex(int(lane_pool.size), 0)
        self.affinity = affinity
        super().__init__(workload, lane_pool, n_pools, affinity)
        self.applied: dict[int, int] = {}  # request -> hit taken off its prompt

    def _blocks(self, rid: int) -> list[int] | None:
        r = int(self.row[rid])
        if r < 0:
            return None
        assert self.offsets is not None and self.hashes is not None
        return self.hashes[self.offsets[r]:self.offsets[r + 1]].tolist()

    def prefer(self, slots: np.ndarray, picks: np.ndarray, s_rid: np.ndarray,
               s_key: np.ndarray, size: np.ndarray, outstanding: np.ndarray) -> np.ndarray:
        """Cache-affinity routing: the lane for each routed request (``picks``: its pool,
        rewritten to the chosen lane's pool), or -1 to leave it to ``kernels.place``
        (the plan's pool, its least loaded lane). See :class:`LaneAffinity`."""
        prefer = np.full(slots.size, -1, np.int64)
        aff = self.affinity
        if aff is None:
            return prefer
        # Outstanding as this window's affinity picks leave it (the plan-routed ones
        # are counted when placed, after this call: a window is a few requests).
        load = outstanding / aff.lane_conc
        rids, keys, sizes = s_rid[slots].tolist(), s_key[slots].tolist(), size.tolist()
        for i, p in enumerate(picks.tolist()):
            if p < 0:
                continue
            blocks = self._blocks(rids[i])
            if not blocks:
                continue
            lane = aff.choose(self.index, keys[i], sizes[i], blocks, load)
            if lane >= 0:
                prefer[i] = lane
                picks[i] = self.lane_pool[lane]
                load[lane] += 1.0 / aff.lane_conc[lane]
        return prefer

    def place(self, slots: np.ndarray, lanes: np.ndarray, s_rid: np.ndarray,
              s_inp: np.ndarray, s_need: np.ndarray, kv_used: np.ndarray,
              kv_cap: np.ndarray) -> None:
        """Requests in ``slots`` were just queued on ``lanes`` (-1: not placed): look
        their prompts up in those lanes' caches and take the hits off ``s_need``."""
        assert self.offsets is not None and self.hashes is not None
        bt = self.block_tokens
        for s, lane in zip(slots.tolist(), lanes.tolist(), strict=True):
            rid = int(s_rid[s])
            back = self.applied.pop(rid, 0)
            if back:  # placed again after a failure: the whole prompt is back
                s_inp[s] += back
                s_need[s] += back
            if lane < 0:
                continue
            r = int(self.row[rid])
            if r < 0:
                continue  # no hashes (another tier's trace): not counted
            pool = int(self.lane_pool[lane])
            prompt = int(s_inp[s])
            self.prompt_tokens[pool] += prompt
            if prompt <= 1:
                continue
            self.index.resize(lane, int(max(kv_cap[lane] - kv_used[lane], 0.0) // bt))
            blocks = self.hashes[self.offsets[r]:self.offsets[r + 1]].tolist()
            hit = min(self.index.serve(lane, blocks, prompt, bt), prompt - 1,
                      int(s_need[s]) - 1)
            if hit > 0:
                s_need[s] -= hit
                s_inp[s] -= hit
                self.applied[rid] = hit
                self.hit_tokens[pool] += hit



class LaneAffinity:
    """Cache-affinity routing of the simulator: the rule of ``routing.affinity``
    (:func:`~tokenfleet.routing.affinity.pick_affine`, the gateway's too) applied to
    engine lanes. A request with prefix hashes goes to the lane, among the up lanes of
    the pools the plan gives its tier whose KV holds the request (any of them: a
    conversation's turns change size buckets, and the plan splits buckets over pools,
    so keeping to the bucket's pools would scatter them; the large tier's hit rate on
    the example drops from 27% to 23% that way),
    with the longest cached leading run of its blocks, unless that lane is more than
    ``max_load_gap`` fuller (outstanding over the lane's planned concurrency) than the
    emptiest of them; no qualifying lane: the plan's split and least-loaded lane, as
    without affinity. A conversation's turns so meet the cache of its earlier turns.

    The same trace routes the same way every time: no randomness, ties to the least
    loaded, then the lowest lane."""

    def __init__(self, key_lanes: list[np.ndarray], lane_conc: np.ndarray,
                 lane_kv: np.ndarray, max_load_gap: float = MAX_LOAD_GAP,
                 min_match: float = MIN_MATCH) -> None:
        self.key_lanes = key_lanes
        self.lane_conc = np.maximum(lane_conc, 1.0)
        self.lane_kv = lane_kv
        self.max_load_gap = max_load_gap
        self.min_match = min_match

    @classmethod
    def of(cls, router: KeyRouter, pools: list[SimPool]) -> LaneAffinity:
        """The lanes each routing key may use: those of its tier's pools."""
        key_lanes = []
        for kp in router.key_pools:
            lanes = [np.arange(pools[p].first_lane, pools[p].first_lane + pools[p].lanes)
                     for p in kp]
            key_lanes.append(np.concatenate(lanes) if lanes else np.zeros(0, np.int64))
        conc = [np.full(p.lanes, max(p.headroom_concurrency.values(),
                                     default=float(p.max_num_seqs))) for p in pools]
        kv = [np.full(p.lanes, float(p.kv_tokens)) for p in pools]
        return cls(key_lanes, np.concatenate(conc) if conc else np.zeros(0),
                   np.concatenate(kv) if kv else np.zeros(0))

    def choose(self, index: PrefixIndex, key: int, size: int, blocks: list[int],
               load: np.ndarray) -> int:
        """The lane for one request of routing key ``key`` (``size``: prompt + output
        tokens) or -1; ``load``: per lane, outstanding over planned concurrency."""
        matches = index.matches(blocks)
        if not matches:
            return -1
        lanes = self.key_lanes[key]
        if not lanes.size:
            return -1
        ok = lanes[np.isfinite(load[lanes]) & (self.lane_kv[lanes] >= size)]  # up, fits
        if not ok.size:
            return -1
        allowed = set(ok.tolist())
        # pick_affine's rule over the matching lanes, ties to the lowest lane (one pass:
        # no sort, no per-request NumPy gather; this runs for every request with hashes)
        lane = best_affine(((t, t, run, float(load[t])) for t, run in matches.items()
                            if t in allowed), len(blocks), float(load[ok].min()),
                           self.max_load_gap, self.min_match)
        return -1 if lane is None else lane


def offline_reuse(w: Workload, tier: str | None = None) -> PrefixReuse | None:
    """The exact offline LRU count (``workload.prefix``) of a workload's requests with
    hashes, optionally one tier's: what one cache of any size would reuse, the yardstick
    for the simulated per-lane hit rates. None when none carries hashes."""
    if w.prefix_row is None or w.prefix_offsets is None or w.prefix_hashes is None:
        return None
    keep = w.prefix_row >= 0
    if tier is not None:
        keep &= np.asarray([k.tier == tier for k in w.keys], dtype=bool)[w.key]
    if not keep.any():
        return None
    off, hashes = take_blocks(w.prefix_offsets, w.prefix_hashes, w.prefix_row[keep])
    tr = Trace(w.arrival_s[keep], w.input_tokens[keep], w.output_tokens[keep],
               source=w.source, prefix_offsets=off, prefix_hashes=hashes,
               prefix_block_tokens=w.prefix_block_tokens)
    return prefix_reuse(tr)
