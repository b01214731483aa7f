"""Compiled prefix caches and cache-affinity choice of the simulator's lanes
(:mod:`tokenfleet.sim.prefix_cache`).

The rule is ``routing.affinity``'s and ``workload/blockcache.py``'s, written once more
as loops Numba compiles, because the simulator applies it to every routed request of
every window: per lane an LRU cache of prompt blocks whose capacity is set before each
lookup (the lane's free KV), and the affinity choice over the lanes that hold a leading
run of a request's blocks (:func:`~tokenfleet.routing.affinity.best_affine`). Python
ran it one request at a time (half of a replay's time on the bundled example,
``benchmarks/RESULTS.md``); here a window's requests go through in one call. The Python
classes stay the reference: ``tests/sim/test_prefix_kernels.py`` drives both with the
same random operations and windows and asserts equal hits, choices and contents.

Layout (:class:`Caches`, a named tuple of arrays so Numba takes it as one argument):

* *entries* ``(lane, block)``, one per block a lane holds, in arrays; each lane's
  entries form a doubly linked list from its least (``head``) to its most recently
  used (``tail``) — the ordered dict of ``LruBlockCache``;
* an open-addressing table (linear probing, deletion by backward shift) from
  ``(lane, block)`` to its entry: "does lane ``t`` hold block ``h``" is one probe.
  The block -> lanes index of ``PrefixIndex`` is not kept: the affinity choice probes
  the request's allowed lanes instead (a tier's lanes, tens to hundreds), which is what
  the index saved Python from, and the answer is the same (each lane's leading run);
* free entries chain through ``nxt``; ``meta`` holds the free list's head and the
  number of live entries. When a window could need more entries than are free, the
  call changes nothing and returns how many it needs: :func:`grown` makes room.

Blocks are the workload's 64-bit chained hashes (as int64): no renumbering pass.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

FREE_HEAD, LIVE = 0, 1  # meta[...]
_EMPTY = -1


class Caches(NamedTuple):
    """Every lane's LRU block cache (see the module's docstring)."""

    head: np.ndarray   # int64[lanes]: least recently used entry, -1 when empty
    tail: np.ndarray   # int64[lanes]: most recently used entry, -1 when empty
    count: np.ndarray  # int64[lanes]: blocks held
    cap: np.ndarray    # int64[lanes]: capacity in blocks
    lane: np.ndarray   # int64[entries]: the entry's lane, -1 when free
    block: np.ndarray  # int64[entries]: the entry's block (hash)
    prv: np.ndarray    # int64[entries]: next entry toward the lane's LRU end, -1 at it
    nxt: np.ndarray    # int64[entries]: toward the MRU end (free list: the next free)
    table: np.ndarray  # int64[power of two >= 2 x entries]: entry, -1 empty
    meta: np.ndarray   # int64[2]: FREE_HEAD, LIVE


def new_caches(n_lanes: int, entries: int = 4096) -> Caches:
    """Empty caches of capacity 0 with room for ``entries`` blocks before growing."""
    entries = max(int(entries), 16)
    c = Caches(np.full(n_lanes, -1, np.int64), np.full(n_lanes, -1, np.int64),
               np.zeros(n_lanes, np.int64), np.zeros(n_lanes, np.int64),
               np.full(entries, -1, np.int64), np.zeros(entries, np.int64),
               np.full(entries, -1, np.int64), np.full(entries, -1, np.int64),
               np.full(_table_size(entries), -1, np.int64), np.zeros(2, np.int64))
    _rebuild(c)
    return c


def _table_size(entries: int) -> int:
    return 1 << max(int(2 * entries - 1).bit_length(), 4)


def grown(c: Caches, need: int) -> Caches:
    """``c`` with room for at least ``need`` more blocks than it holds now."""
    n = c.lane.size
    size = max(2 * n, int(c.meta[LIVE]) + int(need))
    extra = size - n

    def more(a: np.ndarray, fill: int) -> np.ndarray:
        return np.concatenate([a, np.full(extra, fill, np.int64)])

    out = Caches(c.head, c.tail, c.count, c.cap, more(c.lane, -1), more(c.block, 0),
                 more(c.prv, -1), more(c.nxt, -1), np.full(_table_size(size), -1, np.int64),
                 c.meta)
    _rebuild(out)
    return out


@njit(cache=True)
def _rebuild(c: Caches) -> None:
    """The table and the free list again from the entries (after growing)."""
    c.table[:] = _EMPTY
    mask = c.table.size - 1
    free = -1
    live = 0
    for e in range(c.lane.size - 1, -1, -1):
        if c.lane[e] < 0:
            c.nxt[e] = free
            free = e
            continue
        live += 1
        i = _slot(c.lane[e], c.block[e], mask)
        while c.table[i] >= 0:
            i = (i + 1) & mask
        c.table[i] = e
    c.meta[FREE_HEAD] = free
    c.meta[LIVE] = live


@njit(cache=True, inline="always")
def _slot(lane: int, block: int, mask: int) -> int:
    """The table slot ``(lane, block)`` hashes to (splitmix64's finaliser: the trace's
    block hashes may be small sequential integers, as Mooncake's are)."""
    x = np.uint64(block) ^ (np.uint64(lane + 1) * np.uint64(0x9E3779B97F4A7C15))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return np.int64(x & np.uint64(mask))


@njit(cache=True)
def find(c: Caches, lane: int, block: int) -> int:
    """The entry of ``block`` in ``lane``'s cache, or -1."""
    mask = c.table.size - 1
    i = _slot(lane, block, mask)
    while True:
        e = c.table[i]
        if e < 0:
            return -1
        if c.block[e] == block and c.lane[e] == lane:
            return e
        i = (i + 1) & mask


@njit(cache=True)
def _unlink(c: Caches, e: int) -> None:
    p, n, t = c.prv[e], c.nxt[e], c.lane[e]
    if p >= 0:
        c.nxt[p] = n
    else:
        c.head[t] = n
    if n >= 0:
        c.prv[n] = p
    else:
        c.tail[t] = p


@njit(cache=True)
def _push_mru(c: Caches, e: int) -> None:
    t = c.lane[e]
    last = c.tail[t]
    c.prv[e] = last
    c.nxt[e] = -1
    if last >= 0:
        c.nxt[last] = e
    else:
        c.head[t] = e
    c.tail[t] = e


@njit(cache=True)
def _insert(c: Caches, lane: int, block: int) -> None:
    e = c.meta[FREE_HEAD]  # the caller made sure one is free
    c.meta[FREE_HEAD] = c.nxt[e]
    c.meta[LIVE] += 1
    c.lane[e] = lane
    c.block[e] = block
    _push_mru(c, e)
    c.count[lane] += 1
    mask = c.table.size - 1
    i = _slot(lane, block, mask)
    while c.table[i] >= 0:
        i = (i + 1) & mask
    c.table[i] = e


@njit(cache=True)
def _remove(c: Caches, e: int) -> None:
    """Drop entry ``e`` (its lane's list, the table) and free it."""
    _unlink(c, e)
    c.count[c.lane[e]] -= 1
    mask = c.table.size - 1
    i = _slot(c.lane[e], c.block[e], mask)
    while c.table[i] != e:
        i = (i + 1) & mask
    # backward-shift deletion: pull later entries of the probe run into the hole
    j = i
    while True:
        j = (j + 1) & mask
        f = c.table[j]
        if f < 0:
            break
        k = _slot(c.lane[f], c.block[f], mask)
        # f stays if its home k lies cyclically in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            c.table[i] = f
            i = j
    c.table[i] = _EMPTY
    c.lane[e] = -1
    c.nxt[e] = c.meta[FREE_HEAD]
    c.meta[FREE_HEAD] = e
    c.meta[LIVE] -= 1


@njit(cache=True)
def _evict(c: Caches, lane: int) -> None:
    while c.count[lane] > c.cap[lane]:
        _remove(c, c.head[lane])


@njit(cache=True)
def resize(c: Caches, lane: int, capacity_blocks: int) -> None:
    """``LruBlockCache.resize``: set the capacity, evicting the least recently used."""
    c.cap[lane] = max(capacity_blocks, 0)
    _evict(c, lane)


@njit(cache=True)
def leading_run(c: Caches, lane: int, blocks: np.ndarray, a: int, b: int) -> int:
    """How many of ``blocks[a:b]``, from the first, ``lane`` holds."""
    n = 0
    for j in range(a, b):
        if find(c, lane, blocks[j]) < 0:
            break
        n += 1
    return n


@njit(cache=True)
def touch(c: Caches, lane: int, blocks: np.ndarray, a: int, b: int) -> None:
    """``LruBlockCache.touch``: ``blocks[a:b]`` become the most recently used (the first
    one last), then the LRU ones leave (some of these, when they outnumber the
    capacity). Needs ``b - a`` free entries."""
    for j in range(b - 1, a - 1, -1):
        h = blocks[j]
        e = find(c, lane, h)
        if e < 0:
            _insert(c, lane, h)
        elif c.tail[lane] != e:
            _unlink(c, e)
            _push_mru(c, e)
    _evict(c, lane)


@njit(cache=True)
def serve(c: Caches, lane: int, blocks: np.ndarray, a: int, b: int, prompt_tokens: int,
          block_tokens: int) -> int:
    """``PrefixIndex.serve``: prompt tokens found cached; then the blocks enter."""
    hit = min(leading_run(c, lane, blocks, a, b) * block_tokens, prompt_tokens)
    touch(c, lane, blocks, a, b)
    return hit


@njit(cache=True)
def choose(c: Caches, blocks: np.ndarray, a: int, b: int, lanes: np.ndarray, la: int, lb: int,
           size: float, load: np.ndarray, lane_kv: np.ndarray, max_load_gap: float,
           min_match: float) -> int:
    """``LaneAffinity.choose`` for a request of blocks ``blocks[a:b]`` (at least one)
    whose key may use ``lanes[la:lb]``: among those up (finite load) whose KV fits
    ``size``, the one with the longest leading run of at least ``max(min_match * n, 1)``
    blocks whose load is within ``max_load_gap`` of the least loaded of them; ties to
    the lower load, then the lower lane. -1 when none qualifies."""
    least = np.inf
    ok = False
    for q in range(la, lb):
        t = lanes[q]
        ld = load[t]
        if np.isfinite(ld) and lane_kv[t] >= size:
            ok = True
            least = min(least, ld)
    if not ok:
        return -1
    floor = max(min_match * (b - a), 1.0)
    bound = least + max_load_gap
    pick, best_run, best_load = -1, 0, 0.0
    for q in range(la, lb):
        t = lanes[q]
        ld = load[t]
        if not (np.isfinite(ld) and lane_kv[t] >= size) or ld > bound:
            continue
        run = leading_run(c, t, blocks, a, b)
        if run < floor:
            continue
        if (pick < 0 or run > best_run or (run == best_run and ld < best_load)
                or (run == best_run and ld == best_load and t < pick)):
            pick, best_run, best_load = t, run, ld
    return pick


@njit(cache=True)
def prefer_window(c: Caches, slots: np.ndarray, picks: np.ndarray, s_rid: np.ndarray,
                  s_key: np.ndarray, size: np.ndarray, outstanding: np.ndarray,
                  row: np.ndarray, offsets: np.ndarray, blocks: np.ndarray,
                  key_off: np.ndarray, key_lanes: np.ndarray, lane_conc: np.ndarray,
                  lane_kv: np.ndarray, lane_pool: np.ndarray, max_load_gap: float,
                  min_match: float) -> np.ndarray:
    """``LanePrefixCaches.prefer`` for one window: per routed request (``picks[i] >=
    0``) with blocks, the chosen lane (``picks[i]`` becomes its pool, the lane's load
    grows by one request) or -1."""
    out = np.full(slots.size, -1, np.int64)
    load = np.empty(0)
    for i in range(slots.size):
        if picks[i] < 0:
            continue
        rid = s_rid[slots[i]]
        r = row[rid]
        if r < 0 or offsets[r + 1] == offsets[r]:
            continue
        if load.size == 0:  # outstanding over concurrency, as this window's picks leave it
            load = outstanding / lane_conc
        k = s_key[slots[i]]
        lane = choose(c, blocks, offsets[r], offsets[r + 1], key_lanes, key_off[k],
                      key_off[k + 1], size[i], load, lane_kv, max_load_gap, min_match)
        if lane >= 0:
            out[i] = lane
            picks[i] = lane_pool[lane]
            load[lane] += 1.0 / lane_conc[lane]
    return out


@njit(cache=True)
def place_window(c: Caches, slots: np.ndarray, lanes: np.ndarray, s_rid: np.ndarray,
                 s_inp: np.ndarray, s_need: np.ndarray, kv_used: np.ndarray,
                 kv_cap: np.ndarray, row: np.ndarray, offsets: np.ndarray,
                 blocks: np.ndarray, lane_pool: np.ndarray, applied: np.ndarray,
                 hit_tokens: np.ndarray, prompt_tokens: np.ndarray, block_tokens: int) -> int:
    """``LanePrefixCaches.place`` for one window: returns 0, or (changing nothing) the
    number of free entries it needs when fewer are free (grow, call again)."""
    need = 0
    for k in range(slots.size):
        if lanes[k] >= 0:
            r = row[s_rid[slots[k]]]
            if r >= 0:
                need += offsets[r + 1] - offsets[r]
    if need > c.lane.size - c.meta[LIVE]:
        return need
    for k in range(slots.size):
        s = slots[k]
        lane = lanes[k]
        rid = s_rid[s]
        back = applied[rid]
        if back:  # placed again after a failure: the whole prompt is back
            applied[rid] = 0
            s_inp[s] += back
            s_need[s] += back
        if lane < 0:
            continue
        r = row[rid]
        if r < 0:
            continue  # no hashes (another tier's trace): not counted
        pool = lane_pool[lane]
        prompt = s_inp[s]
        prompt_tokens[pool] += prompt
        if prompt <= 1:
            continue
        resize(c, lane, int(max(kv_cap[lane] - kv_used[lane], 0.0) // block_tokens))
        hit = min(serve(c, lane, blocks, offsets[r], offsets[r + 1], prompt, block_tokens),
                  prompt - 1, s_need[s] - 1)
        if hit > 0:
            s_need[s] -= hit
            s_inp[s] -= hit
            applied[rid] = hit
            hit_tokens[pool] += hit
    return 0


def contents(c: Caches, lane: int) -> list[int]:
    """``lane``'s blocks from the least to the most recently used (for tests)."""
    out = []
    e = int(c.head[lane])
    while e >= 0:
        out.append(int(c.block[e]))
        e = int(c.nxt[e])
    return out


@njit(cache=True)
def follow_paths(order: np.ndarray, req_row: np.ndarray, req_tier: np.ndarray,
                 path: np.ndarray, tier_paths: np.ndarray, offsets: np.ndarray,
                 blocks: np.ndarray, min_match: float) -> np.ndarray:
    """``disagg._follow_caches`` over requests ``order`` (arrival order; each with prefix
    row ``req_row``, tier ``req_tier`` of ``tier_paths`` paths and drawn path index
    ``path`` in it): the path index each ends on. Per (tier, block), the paths that
    were sent it (bits), in an open-addressing table that grows, never evicts."""
    out = path.copy()
    size = 1 << 12
    k_tier = np.full(size, -1, np.int64)
    k_block = np.zeros(size, np.int64)
    bits = np.zeros(size, np.int64)
    used = 0
    for q in range(order.size):
        i = order[q]
        t = req_tier[i]
        a, b = offsets[req_row[i]], offsets[req_row[i] + 1]
        if b == a:
            continue
        if 2 * (used + b - a) > size:  # keep the table at most half full
            while 2 * (used + b - a) > size:
                size *= 2
            k_tier, k_block, bits = _rehashed(k_tier, k_block, bits, size)
        every = (1 << tier_paths[t]) - 1
        alive, run = every, 0
        for j in range(a, b):
            m = bits[_path_slot(k_tier, k_block, t, blocks[j])] & alive
            if m == 0:
                break
            alive, run = m, run + 1
        # a run every path holds (the shared system prompt) is no reason to move
        if alive != every and run >= max(min_match * (b - a), 1.0) \
                and (alive >> out[i]) & 1 == 0:
            low = 0
            while (alive >> low) & 1 == 0:
                low += 1
            out[i] = low  # the first path (by name) holding the run
        mine = 1 << out[i]
        for j in range(a, b):
            s = _path_slot(k_tier, k_block, t, blocks[j])
            if k_tier[s] < 0:
                k_tier[s] = t
                k_block[s] = blocks[j]
                used += 1
            bits[s] |= mine
    return out


@njit(cache=True)
def _path_slot(k_tier: np.ndarray, k_block: np.ndarray, tier: int, block: int) -> int:
    """The slot of ``(tier, block)``: its own, or the empty one it would take."""
    mask = k_tier.size - 1
    i = _slot(tier, block, mask)
    while k_tier[i] >= 0 and (k_tier[i] != tier or k_block[i] != block):
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _rehashed(k_tier: np.ndarray, k_block: np.ndarray, bits: np.ndarray, size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nt, nb, nv = np.full(size, -1, np.int64), np.zeros(size, np.int64), np.zeros(size, np.int64)
    for s in range(k_tier.size):
        if k_tier[s] >= 0:
            d = _path_slot(nt, nb, k_tier[s], k_block[s])
            nt[d], nb[d], nv[d] = k_tier[s], k_block[s], bits[s]
    return nt, nb, nv
