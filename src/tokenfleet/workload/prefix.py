"""Prefix (KV) cache reuse of a trace: an exact offline count for an LRU block cache.

A trace with prefix-block hashes (Mooncake ``hash_ids``: one hash per 512-token block,
chained, so two requests share block ``j`` only if they share blocks ``0..j``) tells
how much prompt work a KV cache can skip. The cache modelled here is what vLLM's and
SGLang's prefix caches do, reduced to its rule:

* a request looks its blocks up in order and reuses the **leading run** that is
  cached (a prefix cache cannot use block ``j`` without blocks ``0..j-1``);
* then every block of its prompt is in the cache, most recently used; blocks are
  touched tail first, so when the cache is full the tail of a prefix is evicted
  before its head (vLLM frees a sequence's blocks in reverse order for this reason);
* the cache holds ``capacity_blocks`` blocks and evicts the least recently used.

Hit rate = prompt tokens served from the cache / all prompt tokens. Block ``j`` of a
prompt of ``I`` tokens covers ``min(B, I - j*B)`` tokens (``B`` = block tokens), so a
partial last block counts its own tokens only.

**One pass gives every cache size.** LRU keeps the ``C`` most recently used distinct
blocks, so a block is cached in a cache of ``C`` blocks iff fewer than ``C`` distinct
blocks were used since its last use (its *stack distance*). A request's block ``j``
is reused iff the largest stack distance among its blocks ``0..j`` (looked up when
the request arrives) is below ``C``. :func:`prefix_reuse` computes that running
maximum for every block once (a Fenwick tree over use times, compiled with Numba,
O(blocks * log blocks)); :class:`PrefixReuse` then answers any capacity, or a whole
hit-rate curve, with a sorted search. :func:`lru_hit_tokens_reference` runs the plain
Python cache (``workload/blockcache.py``) the tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.blockcache import LruBlockCache
from tokenfleet.workload.trace import IntArray, Trace

FloatArray = npt.NDArray[np.float64]

# Stack distance of a block never seen before: no cache holds it.
NEVER = np.iinfo(np.int64).max


@numba.njit(cache=True)
def _fenwick_add(tree: np.ndarray, i: int, v: int) -> None:
    i += 1
    while i < tree.size:
        tree[i] += v
        i += i & -i


@numba.njit(cache=True)
def _fenwick_sum(tree: np.ndarray, i: int) -> int:
    """Sum of entries 0..i-1."""
    s = 0
    while i > 0:
        s += tree[i]
        i -= i & -i
    return s


@numba.njit(cache=True)
def _prefix_depths(offsets: np.ndarray, ids: np.ndarray, n_ids: int) -> np.ndarray:
    """Per block reference: the running maximum, over the request's blocks up to this
    one, of the block's LRU stack distance when the request arrives (NEVER if unseen)."""
    total = ids.size
    tree = np.zeros(total + 1, dtype=np.int64)  # 1 at the last-use time of each block
    last = np.full(n_ids, -1, dtype=np.int64)
    depth = np.empty(total, dtype=np.int64)
    never = np.iinfo(np.int64).max
    pos = 0
    live = 0  # distinct blocks used so far
    for r in range(offsets.size - 1):
        a, b = offsets[r], offsets[r + 1]
        running = 0
        for j in range(a, b):
            t = last[ids[j]]
            # distinct blocks used after t = live blocks whose last use is later than t
            d = never if t < 0 else live - _fenwick_sum(tree, t + 1)
            if d > running:
                running = d
            depth[j] = running
        for j in range(b - 1, a - 1, -1):  # tail first: the head ends most recent
            t = last[ids[j]]
            if t >= 0:
                _fenwick_add(tree, t, -1)
            else:
                live += 1
            _fenwick_add(tree, pos, 1)
            last[ids[j]] = pos
            pos += 1
    return depth


def _block_tokens(offsets: IntArray, input_tokens: IntArray, block_tokens: int) -> IntArray:
    """Prompt tokens each block reference covers: ``min(B, I - j*B)``, at least 0."""
    lengths = np.diff(offsets)
    j = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    left = np.repeat(input_tokens, lengths) - j * block_tokens
    return np.clip(left, 0, block_tokens)


@dataclass(frozen=True)
class PrefixReuse:
    """The reuse an LRU block cache finds in one trace, for every cache size.

    ``depth[k]`` / ``tokens[k]``: per block reference (CSR order of the trace), the
    smallest cache (in blocks) that still reuses it is ``depth[k] + 1``, and the
    prompt tokens it covers. ``total_prompt_tokens`` counts every request's prompt,
    those without hashes included.
    """

    offsets: IntArray
    depth: IntArray
    tokens: IntArray
    block_tokens: int
    total_prompt_tokens: int
    distinct_blocks: int

    @property
    def requests(self) -> int:
        return int(self.offsets.size - 1)

    def hit_tokens(self, capacity_blocks: int) -> IntArray:
        """Prompt tokens each request finds cached in an LRU cache of that many blocks."""
        hit = np.where(self.depth < capacity_blocks, self.tokens, 0)
        out = np.zeros(self.requests, dtype=np.int64)
        nonempty = self.offsets[:-1] < self.offsets[1:]
        out[nonempty] = np.add.reduceat(hit, self.offsets[:-1][nonempty])
        return out

    def hit_rate(self, capacity_blocks: int) -> float:
        """Fraction of all prompt tokens served from the cache: :meth:`curve` at one
        size without its sort (the tokens of the references a cache that size still
        reuses, summed: integers, so exactly the same figure; the planner's fixed point
        asks a few sizes of one count of millions of references)."""
        if self.total_prompt_tokens == 0:
            return 0.0
        return float(self.tokens[self.depth < capacity_blocks].sum() / self.total_prompt_tokens)

    def curve(self, capacity_blocks: npt.ArrayLike) -> FloatArray:
        """Hit rate at each cache size (blocks): the hit-rate-vs-size curve, exactly."""
        caps = np.asarray(capacity_blocks, dtype=np.int64)
        if self.total_prompt_tokens == 0:
            return np.zeros(caps.shape)
        order = np.argsort(self.depth, kind="stable")
        cum = np.concatenate([[0], np.cumsum(self.tokens[order])])
        n = np.searchsorted(self.depth[order], caps, side="left")  # depths < cap
        return cum[n] / self.total_prompt_tokens

    def unbounded_hit_rate(self) -> float:
        """Hit rate with a cache that never evicts (every repeat of a prefix is reused)."""
        return self.hit_rate(int(NEVER))

    def repeated_block_fraction(self) -> float:
        """Fraction of block references whose block some earlier request used (any
        position, not only a leading run): the trace's raw block-level repetition."""
        refs = int(self.offsets[-1])
        return 1.0 - self.distinct_blocks / refs if refs else 0.0

    def capacity_for(self, hit_rate: float) -> int | None:
        """The smallest cache (blocks) that reaches ``hit_rate``; None if none does."""
        order = np.sort(self.depth[self.depth < NEVER])
        if order.size == 0:
            return None
        caps = np.unique(order) + 1
        rates = self.curve(caps)
        ok = np.nonzero(rates >= hit_rate - 1e-12)[0]
        return int(caps[ok[0]]) if ok.size else None


def prefix_reuse(trace: Trace) -> PrefixReuse:
    """Count what an LRU prefix cache of any size reuses on ``trace`` (which must carry
    prefix hashes: a Mooncake trace)."""
    if trace.prefix_offsets is None or trace.prefix_hashes is None:
        raise TokenfleetError(
            f"trace {trace.source} carries no prefix-block hashes (only Mooncake traces "
            f"have hash_ids); a prefix-cache hit rate cannot be counted from it")
    offsets = trace.prefix_offsets
    uniq, ids = np.unique(trace.prefix_hashes, return_inverse=True)
    ids = ids.astype(np.int64).ravel()
    depth = _prefix_depths(offsets, ids, int(uniq.size))
    tokens = _block_tokens(offsets, trace.input_tokens, trace.prefix_block_tokens)
    return PrefixReuse(offsets, depth, tokens, trace.prefix_block_tokens,
                       int(trace.input_tokens.sum()), int(uniq.size))


def capacity_blocks(capacity_tokens: float, block_tokens: int) -> int:
    """Whole blocks a cache of ``capacity_tokens`` tokens holds."""
    return max(int(capacity_tokens // block_tokens), 0)


def lru_hit_tokens_reference(trace: Trace, capacity_blocks: int) -> IntArray:
    """Plain-Python LRU block cache, request by request (the oracle for the tests)."""
    cache = LruBlockCache(capacity_blocks)
    out = np.zeros(len(trace), dtype=np.int64)
    for i in range(len(trace)):
        blocks = [int(h) for h in trace.prefix_blocks(i)]
        out[i] = cache.serve(blocks, int(trace.input_tokens[i]), trace.prefix_block_tokens)
    return out
