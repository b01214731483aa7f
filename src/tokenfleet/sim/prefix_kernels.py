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

* *entries* ``(lane, block)``, one per block a lane holds, one row each; each lane's
  entries form a doubly linked list from its least (``head``) to its most recently used
  (``tail``) — the ordered dict of ``LruBlockCache``; each block's entries form a second
  list, its *owners* (``PrefixIndex``'s block -> targets index);
* one open-addressing table (linear probing, deletion by backward shift, records
  inline so a probe reads one slot) from ``(lane, block)`` to its entry, and from
  ``(lanes, block)`` (one past the last lane) to the head of the block's owner list;
* free entries chain through the LRU links; ``meta`` holds the free list's head and
  the number of live entries. When a window could need more entries than are free,
  the call changes nothing and returns how many it needs: :func:`grown` makes room.

Blocks are the workload's 64-bit chained hashes (as int64): no renumbering pass.
:func:`follow_paths` is ``disagg._follow_caches`` (which path of a tier holds a
request's prefix), compiled the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

FREE_HEAD, LIVE, SINK = 0, 1, 2  # meta[...]
LANE, BLOCK, PRV, NXT, OPRV, ONXT = range(6)  # ent[e, ...]
_LOW = (1 << 32) - 1


class Caches(NamedTuple):
    """Every lane's LRU block cache (see the module's docstring)."""

    head: np.ndarray   # int64[lanes]: least recently used entry, -1 when empty
    tail: np.ndarray   # int64[lanes]: most recently used entry, -1 when empty
    n_held: np.ndarray  # int64[lanes]: blocks held
    cap: np.ndarray    # int64[lanes]: capacity in blocks
    # int64[entries, 6], one row per entry (one cache line): its LANE (-1 when free),
    # BLOCK, the LRU neighbours PRV (toward the least recently used end; -1 at it) and
    # NXT (toward the most recent; the free list's next), the owner-list neighbours
    # OPRV and ONXT (the other entries of the same block)
    ent: np.ndarray
    # int64[power of two >= 4 x entries, 2]: per record its block and lane << 32 | entry;
    # lane ``lanes`` (one past the last) marks a block's owner-list head. Empty: -1.
    table: np.ndarray
    meta: np.ndarray   # int64[3]: FREE_HEAD, LIVE, SINK (scratch)


def new_caches(n_lanes: int, entries: int = 4096) -> Caches:
    """Empty caches of capacity 0 with room for ``entries`` blocks before growing."""
    entries = max(int(entries), 16)
    ent = np.full((entries, 6), -1, np.int64)
    c = Caches(np.full(n_lanes, -1, np.int64), np.full(n_lanes, -1, np.int64),
               np.zeros(n_lanes, np.int64), np.zeros(n_lanes, np.int64), ent,
               np.full((_table_size(entries), 2), -1, np.int64), np.zeros(3, np.int64))
    _rebuild(c)
    return c


def _table_size(entries: int) -> int:
    # an entry's record and at most one owner-list head per entry: half full at most
    return 1 << max(int(4 * entries - 1).bit_length(), 5)


def free_entries(c: Caches) -> int:
    return int(c.ent.shape[0] - c.meta[LIVE])


def grown(c: Caches, need: int) -> Caches:
    """``c`` with room for at least ``need`` more blocks than it holds now."""
    n = c.ent.shape[0]
    size = max(2 * n, int(c.meta[LIVE]) + int(need))
    ent = np.concatenate([c.ent, np.full((size - n, 6), -1, np.int64)])
    out = Caches(c.head, c.tail, c.n_held, c.cap, ent,
                 np.full((_table_size(size), 2), -1, np.int64), c.meta)
    _rebuild(out)
    return out


@njit(cache=True)
def _rebuild(c: Caches) -> None:
    """The table and the free list again from the entries (after growing)."""
    c.table[:] = -1
    owners = c.head.size
    free = -1
    live = 0
    for e in range(c.ent.shape[0] - 1, -1, -1):
        if c.ent[e, LANE] < 0:
            c.ent[e, NXT] = free
            free = e
            continue
        live += 1
        _put(c, c.ent[e, LANE], c.ent[e, BLOCK], e)
        if c.ent[e, OPRV] < 0:
            _put(c, owners, c.ent[e, BLOCK], e)
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
    return int(np.int64(x & np.uint64(mask)))


@njit(cache=True)
def _probe(c: Caches, lane: int, block: int) -> int:
    """The slot of record ``(lane, block)``, or the empty one it would take."""
    mask = c.table.shape[0] - 1
    i = _slot(lane, block, mask)
    while True:
        v = c.table[i, 1]
        if v < 0 or (c.table[i, 0] == block and (v >> 32) == lane):
            return i
        i = (i + 1) & mask


@njit(cache=True)
def _put(c: Caches, lane: int, block: int, e: int) -> None:
    i = _probe(c, lane, block)
    c.table[i, 0] = block
    c.table[i, 1] = (lane << 32) | e


@njit(cache=True)
def _delete(c: Caches, i: int) -> None:
    """Empty slot ``i`` (backward shift: later records of its probe run move up)."""
    mask = c.table.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        v = c.table[j, 1]
        if v < 0:
            break
        k = _slot(v >> 32, c.table[j, 0], mask)
        # the record at j stays if its home k lies cyclically in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            c.table[i, 0] = c.table[j, 0]
            c.table[i, 1] = v
            i = j
    c.table[i, 1] = -1


@njit(cache=True)
def find(c: Caches, lane: int, block: int) -> int:
    """The entry of ``block`` in ``lane``'s cache, or -1."""
    v = c.table[_probe(c, lane, block), 1]
    return -1 if v < 0 else v & _LOW


@njit(cache=True)
def _first_owner(c: Caches, block: int) -> int:
    """The first entry of ``block``'s owner list (every lane holding it), or -1."""
    v = c.table[_probe(c, c.head.size, block), 1]
    return -1 if v < 0 else v & _LOW


@njit(cache=True)
def _unlink(c: Caches, e: int) -> None:
    p, n, t = c.ent[e, PRV], c.ent[e, NXT], c.ent[e, LANE]
    if p >= 0:
        c.ent[p, NXT] = n
    else:
        c.head[t] = n
    if n >= 0:
        c.ent[n, PRV] = p
    else:
        c.tail[t] = p


@njit(cache=True)
def _push_mru(c: Caches, e: int) -> None:
    t = c.ent[e, LANE]
    last = c.tail[t]
    c.ent[e, PRV] = last
    c.ent[e, NXT] = -1
    if last >= 0:
        c.ent[last, NXT] = e
    else:
        c.head[t] = e
    c.tail[t] = e


@njit(cache=True)
def _insert(c: Caches, lane: int, block: int, slot: int) -> None:
    """``block`` enters ``lane`` (record slot ``slot``, from ``_probe``): most recent."""
    e = c.meta[FREE_HEAD]  # the caller made sure one is free
    c.meta[FREE_HEAD] = c.ent[e, NXT]
    c.meta[LIVE] += 1
    c.ent[e, LANE] = lane
    c.ent[e, BLOCK] = block
    _push_mru(c, e)
    c.n_held[lane] += 1
    c.table[slot, 0] = block
    c.table[slot, 1] = (lane << 32) | e
    owners = c.head.size
    j = _probe(c, owners, block)  # e heads the block's owner list
    first = c.table[j, 1]
    c.ent[e, OPRV] = -1
    c.ent[e, ONXT] = -1
    if first >= 0:
        c.ent[e, ONXT] = first & _LOW
        c.ent[first & _LOW, OPRV] = e
    c.table[j, 0] = block
    c.table[j, 1] = (owners << 32) | e


@njit(cache=True)
def _remove(c: Caches, e: int) -> None:
    """Drop entry ``e`` (its lane's list, its block's owners, the table) and free it."""
    _unlink(c, e)
    lane, block = c.ent[e, LANE], c.ent[e, BLOCK]
    c.n_held[lane] -= 1
    p, n = c.ent[e, OPRV], c.ent[e, ONXT]
    if n >= 0:
        c.ent[n, OPRV] = p
    if p >= 0:
        c.ent[p, ONXT] = n
    else:  # e headed the owner list
        j = _probe(c, c.head.size, block)
        if n >= 0:
            c.table[j, 1] = (c.head.size << 32) | n
        else:
            _delete(c, j)
    _delete(c, _probe(c, lane, block))  # probed after: the delete above may shift it
    c.ent[e, LANE] = -1
    c.ent[e, NXT] = c.meta[FREE_HEAD]
    c.meta[FREE_HEAD] = e
    c.meta[LIVE] -= 1


@njit(cache=True)
def _evict(c: Caches, lane: int) -> None:
    while c.n_held[lane] > c.cap[lane]:
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
        i = _probe(c, lane, h)
        v = c.table[i, 1]
        if v < 0:
            _insert(c, lane, h, i)
        elif c.tail[lane] != v & _LOW:
            _unlink(c, v & _LOW)
            _push_mru(c, v & _LOW)
    _evict(c, lane)


@njit(cache=True)
def _warm(c: Caches, lane: int, blocks: np.ndarray, a: int, b: int) -> None:
    """Read the home slots of the blocks' records (the lane's and the owner lists')
    up front: independent loads, so their cache misses overlap instead of queueing
    behind each lookup in turn (the table is tens of MB on a big fleet)."""
    mask = c.table.shape[0] - 1
    acc = 0
    for j in range(a, b):
        acc += c.table[_slot(lane, blocks[j], mask), 1]
        acc += c.table[_slot(c.head.size, blocks[j], mask), 1]
    c.meta[SINK] = acc  # (kept, so the reads are not optimised away)


@njit(cache=True)
def serve(c: Caches, lane: int, blocks: np.ndarray, a: int, b: int, prompt_tokens: int,
          block_tokens: int) -> int:
    """``PrefixIndex.serve``: prompt tokens found cached; then the blocks enter."""
    _warm(c, lane, blocks, a, b)
    hit = min(leading_run(c, lane, blocks, a, b) * block_tokens, prompt_tokens)
    touch(c, lane, blocks, a, b)
    return hit


@njit(cache=True)
def choose(c: Caches, blocks: np.ndarray, a: int, b: int, lanes: np.ndarray, la: int, lb: int,
           size: float, load: np.ndarray, lane_kv: np.ndarray, max_load_gap: float,
           min_match: float, mark: np.ndarray) -> int:
    """``LaneAffinity.choose`` for a request of blocks ``blocks[a:b]`` (at least one)
    whose key may use ``lanes[la:lb]``: among those up (finite load) whose KV fits
    ``size``, the one with the longest leading run of at least ``max(min_match * n, 1)``
    blocks whose load is within ``max_load_gap`` of the least loaded of them; ties to
    the lower load, then the lower lane. -1 when none qualifies. ``mark``: per lane,
    scratch (left all False).

    Not by asking every lane: a run of two or more is held only by lanes holding the
    second block, few (a conversation's lanes), found through its owner list; only when
    none of them qualifies can a run of one win, and then it is the least loaded (then
    lowest) candidate holding the first block (probed only where it would be the best
    so far)."""
    least = np.inf
    for q in range(la, lb):
        t = lanes[q]
        if np.isfinite(load[t]) and lane_kv[t] >= size:
            least = min(least, load[t])
    if least == np.inf:
        return -1  # no lane up that fits (or all infinitely loaded: the same)
    bound = least + max_load_gap
    for q in range(la, lb):  # the candidates: allowed and within the load bound
        t = lanes[q]
        mark[t] = np.isfinite(load[t]) and lane_kv[t] >= size and load[t] <= bound
    floor = max(min_match * (b - a), 1.0)
    pick, best_run, best_load = -1, 0, 0.0
    e = _first_owner(c, blocks[a + 1]) if b - a > 1 else -1
    while e >= 0:
        t = c.ent[e, LANE]
        if mark[t]:
            ld = load[t]
            run = leading_run(c, t, blocks, a, b)
            if run >= floor and (pick < 0 or run > best_run or (run == best_run and (
                    ld < best_load or (ld == best_load and t < pick)))):
                pick, best_run, best_load = t, run, ld
        e = c.ent[e, ONXT]
    if pick < 0 and floor <= 1.0:  # a run of one: the least loaded holding block 0
        for q in range(la, lb):
            t = lanes[q]
            if not mark[t]:
                continue
            ld = load[t]
            if (pick < 0 or ld < best_load or (ld == best_load and t < pick)) \
                    and find(c, t, blocks[a]) >= 0:
                pick, best_load = t, ld
    for q in range(la, lb):
        mark[lanes[q]] = False
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
    mark = np.zeros(c.head.size, np.bool_)
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
                      key_off[k + 1], size[i], load, lane_kv, max_load_gap, min_match, mark)
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
    if need > c.ent.shape[0] - c.meta[LIVE]:
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
        out.append(int(c.ent[e, BLOCK]))
        e = int(c.ent[e, NXT])
    return out


@njit(cache=True)
def follow_paths(order: np.ndarray, req_row: np.ndarray, req_tier: np.ndarray,
                 path: np.ndarray, tier_paths: np.ndarray, offsets: np.ndarray,
                 blocks: np.ndarray, min_match: float) -> np.ndarray:
    """``disagg._follow_caches`` over requests ``order`` (arrival order; each with prefix
    row ``req_row``, tier ``req_tier`` of ``tier_paths`` paths and drawn path index
    ``path`` in it): the path index each ends on. Per (tier, block), the paths that
    were sent it (bits), in an open-addressing table (one row per record: tier, block,
    bits; tier -1 when empty) that grows, never evicts."""
    out = path.copy()
    held = np.full((1 << 12, 3), -1, np.int64)
    used = 0
    for q in range(order.size):
        i = order[q]
        t = req_tier[i]
        a, b = offsets[req_row[i]], offsets[req_row[i] + 1]
        if b == a:
            continue
        if 2 * (used + b - a) > held.shape[0]:  # keep the table at most half full
            size = held.shape[0]
            while 2 * (used + b - a) > size:
                size *= 2
            held = _rehashed(held, size)
        every = (1 << tier_paths[t]) - 1
        alive, run = every, 0
        for j in range(a, b):
            s = _path_slot(held, t, blocks[j])
            m = (held[s, 2] & alive) if held[s, 0] >= 0 else 0
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
            s = _path_slot(held, t, blocks[j])
            if held[s, 0] < 0:
                held[s, 0] = t
                held[s, 1] = blocks[j]
                held[s, 2] = 0
                used += 1
            held[s, 2] |= mine
    return out


@njit(cache=True)
def _path_slot(held: np.ndarray, tier: int, block: int) -> int:
    """The row of ``(tier, block)``: its own, or the empty one it would take."""
    mask = held.shape[0] - 1
    i = _slot(tier, block, mask)
    while held[i, 0] >= 0 and (held[i, 0] != tier or held[i, 1] != block):
        i = (i + 1) & mask
    return i


@njit(cache=True)
def _rehashed(held: np.ndarray, size: int) -> np.ndarray:
    out = np.full((size, 3), -1, np.int64)
    for s in range(held.shape[0]):
        if held[s, 0] >= 0:
            d = _path_slot(out, held[s, 0], held[s, 1])
            out[d, :] = held[s, :]
    return out


def owners(c: Caches, block: int) -> list[int]:
    """The lanes holding ``block``, by its owner list (for tests)."""
    out = []
    e = int(_first_owner(c, block))
    while e >= 0:
        out.append(int(c.ent[e, LANE]))
        e = int(c.ent[e, ONXT])
    return sorted(out)
