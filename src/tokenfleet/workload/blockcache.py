"""One prefix (KV) block cache with LRU eviction, in plain Python: the rule of
``tokenfleet.workload.prefix`` for a single cache, used as the reference there and as the
per-replica (or per-pool) cache of routing and simulation. No NumPy or Numba, so the
gateway can import it cheaply."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from tokenfleet.errors import TokenfleetError


class LruBlockCache:
    """One KV cache of ``capacity_blocks`` prefix blocks with the rule of this module:
    a request reuses the leading run of its blocks that is cached, then all its blocks
    become the most recently used (tail first). Plain Python (an ordered dict): the
    reference for :func:`prefix_reuse`, and the per-replica cache of routing and
    simulation."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise TokenfleetError(f"cache capacity must be >= 0 blocks, got {capacity_blocks}")
        self.capacity_blocks = int(capacity_blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def resize(self, capacity_blocks: int) -> list[int]:
        """Set the capacity (e.g. to the KV memory free now), evicting the LRU blocks;
        returns the evicted blocks (``routing.affinity`` keeps an index of them)."""
        self.capacity_blocks = max(int(capacity_blocks), 0)
        return self._evict()

    def _evict(self) -> list[int]:
        cache = self._blocks
        out = []
        while len(cache) > self.capacity_blocks:
            out.append(cache.popitem(last=False)[0])
        return out

    def leading_run(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, are cached."""
        n = 0
        for h in blocks:
            if h not in self._blocks:
                break
            n += 1
        return n

    def touch(self, blocks: Sequence[int]) -> list[int]:
        """Make ``blocks`` the most recently used (the first one last), evicting the LRU;
        returns the evicted blocks."""
        cache = self._blocks
        for h in reversed(blocks):
            cache[h] = None
            cache.move_to_end(h)
        return self._evict() if len(cache) > self.capacity_blocks else []

    def serve(self, blocks: Sequence[int], prompt_tokens: int, block_tokens: int) -> int:
        """Prompt tokens a request finds cached; then its blocks enter the cache."""
        hit = min(self.leading_run(blocks) * block_tokens, prompt_tokens)
        self.touch(blocks)
        return hit
