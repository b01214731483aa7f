"""Cache-affinity (prefix-aware) routing, written once for the simulator and the gateway.

The shape of llm-d's prefix-cache scorer and SGLang's cache-aware router, reduced to its
rule. A *target* is whatever the router chooses between: an engine lane in the simulator,
a pool in the gateway (numbered ``0..n-1`` by the caller).

* :class:`PrefixIndex` keeps, per target, an LRU of prefix blocks (the cache rule of
  ``workload/blockcache.py``) and an inverted index block -> targets holding it, so the
  leading run every target holds of a request's blocks costs O(blocks x targets still
  matching), not O(blocks x targets). The simulator uses it as the lanes' real caches
  (resized to each lane's free KV: a *precise* scorer, like llm-d's KV-event scorer);
  the gateway as its own record of what it sent where (an *approximate* scorer).
* :func:`pick_affine` is the choice: among the candidate targets not more than
  ``max_load_gap`` above the least loaded one (load = outstanding requests over the
  target's concurrency limit, so lanes of different chips compare), the one holding the
  longest leading run of the request's blocks, if that run covers at least
  ``min_match`` of them (a shared system prompt alone is no reason to pile onto one
  target); ties to the least loaded, then the first. ``None`` when no target qualifies:
  the caller routes the request as it would without affinity (the plan's split and
  least-outstanding lane in the simulator, least loaded pool in the gateway).

Plain Python, no NumPy: the gateway imports it cheaply. Deterministic: no randomness,
ties broken by load then candidate order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the workload package loads NumPy and Polars; routing stays light
    from tokenfleet.workload.blockcache import LruBlockCache

# Defaults of the choice (both callers): a turn of a conversation follows its cache
# unless its target is half its concurrency limit fuller than the emptiest candidate,
# and only when the cached run covers 5% of its blocks (one block at least): without
# a floor, one shared leading block (a system prompt most requests carry) would pull
# every new long conversation onto the few targets that saw it first. Set on the
# Mooncake trace (frontier-lab example, 600 s, benchmarks/RESULTS.md): with a 50% floor
# the large tier's simulated hit rate is 24.2%, with any one block 23.3%, with 5% 27.1%.
MAX_LOAD_GAP = 0.5
PREFIX_BLOCK_TOKENS = 512  # the Mooncake trace's block size; vLLM's default is 16
MIN_MATCH = 0.05


def prompt_blocks(token_ids: Sequence[int], block_tokens: int = PREFIX_BLOCK_TOKENS) -> list[int]:
    """Chained hashes of a prompt's whole ``block_tokens`` blocks (the Mooncake
    ``hash_ids`` convention: block ``j``'s hash covers blocks ``0..j``, so two prompts
    share block ``j`` only if they share everything before it); the gateway's way to
    give :class:`~tokenfleet.routing.policies.PrefixAffinity` a live request's blocks.
    A partial last block is left out (engines cache whole blocks only). Deterministic
    across processes (no ``hash()`` randomisation)."""
    import hashlib

    out: list[int] = []
    h = hashlib.blake2b(digest_size=8)
    for j in range(len(token_ids) // block_tokens):
        chunk = token_ids[j * block_tokens:(j + 1) * block_tokens]
        h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in chunk))
        out.append(int.from_bytes(h.copy().digest(), "little") >> 1)  # fits an int64
    return out


def text_blocks(texts: Sequence[str], block_chars: int = 4 * PREFIX_BLOCK_TOKENS) -> list[int]:
    """Chained hashes of a prompt's whole ``block_chars``-character blocks: the gateway's
    stand-in for :func:`prompt_blocks` when it has no tokenizer (``block_chars`` is 512
    tokens at its estimate of 4 characters per token). Two prompts that share their
    first ``k`` blocks of text share their first ``k`` hashes, as with token blocks; the
    texts are joined with a separator so message boundaries count."""
    import hashlib

    text = "\x1e".join(texts).encode("utf-8", "surrogatepass")
    out: list[int] = []
    h = hashlib.blake2b(digest_size=8)
    for j in range(len(text) // block_chars):
        h.update(text[j * block_chars:(j + 1) * block_chars])
        out.append(int.from_bytes(h.copy().digest(), "little") >> 1)
    return out


class PrefixIndex:
    """Per target an LRU block cache, plus block -> targets that hold it."""

    def __init__(self, n_targets: int, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.caches: list[LruBlockCache] = []
        self._owners: dict[int, set[int]] = {}
        for _ in range(n_targets):
            self.add_target()

    def add_target(self) -> int:
        """A new target (an empty cache of ``capacity_blocks``); returns its number."""
        from tokenfleet.workload.blockcache import LruBlockCache

        self.caches.append(LruBlockCache(self.capacity_blocks))
        return len(self.caches) - 1

    def _forget(self, target: int, evicted: list[int]) -> None:
        owners = self._owners
        for h in evicted:
            s = owners.get(h)
            if s is None:  # entered and left in the same touch (cache smaller than it)
                continue
            s.discard(target)
            if not s:
                del owners[h]

    def resize(self, target: int, capacity_blocks: int) -> None:
        """Set one target's capacity (e.g. its free KV now), evicting its LRU blocks."""
        self._forget(target, self.caches[target].resize(capacity_blocks))

    def touch(self, target: int, blocks: Sequence[int]) -> None:
        """``blocks`` are now the most recently used of ``target`` (first one last)."""
        cache = self.caches[target]
        evicted = cache.touch(blocks)
        if evicted:
            self._forget(target, evicted)
        owners = self._owners
        if len(blocks) <= cache.capacity_blocks:  # all of them stay (the most recent)
            for h in blocks:
                held = owners.get(h)
                if held is None:
                    owners[h] = {target}
                else:
                    held.add(target)
            return
        for h in blocks:
            if h in cache:  # (a cache smaller than the prompt keeps only its head)
                owners.setdefault(h, set()).add(target)

    def serve(self, target: int, blocks: Sequence[int], prompt_tokens: int,
              block_tokens: int) -> int:
        """Prompt tokens a request finds cached at ``target``; then its blocks enter it."""
        hit = min(self.caches[target].leading_run(blocks) * block_tokens, prompt_tokens)
        self.touch(target, blocks)
        return hit

    def matches(self, blocks: Sequence[int]) -> dict[int, int]:
        """``{target: leading run of blocks it holds}`` for every target holding block 0."""
        owners = self._owners
        if not blocks or blocks[0] not in owners:
            return {}
        alive = set(owners[blocks[0]])
        run = dict.fromkeys(alive, 1)
        for j in range(1, len(blocks)):
            o = owners.get(blocks[j])
            if o is None:
                break
            alive &= o
            if not alive:
                break
            for t in alive:
                run[t] = j + 1
        return run


def pick_affine(matches: dict[int, int], candidates: Sequence[int], load: Sequence[float],
                n_blocks: int, max_load_gap: float = MAX_LOAD_GAP,
                min_match: float = MIN_MATCH, least: float | None = None) -> int | None:
    """The candidate (a target id from ``candidates``, loads aligned with it) that holds
    the longest qualifying run of a request's ``n_blocks`` blocks within the load bound,
    or None (route it as without affinity). ``least``: the load the bound counts from
    (default the least among ``candidates``; a caller that passes only the matching
    targets gives the least of all it could route to)."""
    if not matches or not candidates:
        return None
    if least is None:
        least = min(load)
    return best_affine(((q, t, matches.get(t, 0), load[q]) for q, t in enumerate(candidates)),
                       n_blocks, least, max_load_gap, min_match)


def best_affine(items: Iterable[tuple[int, int, int, float]], n_blocks: int, least: float,
                max_load_gap: float = MAX_LOAD_GAP, min_match: float = MIN_MATCH
                ) -> int | None:
    """The rule of :func:`pick_affine` over ``(order, target, run, load)`` items: the
    target with the longest run of at least ``min_match`` of the ``n_blocks`` blocks
    (one at least) whose load is within ``max_load_gap`` of ``least``; ties to the lower
    load, then the lower ``order``. None when none qualifies."""
    floor = max(min_match * n_blocks, 1.0)
    bound = least + max_load_gap
    best: tuple[int, float, int] | None = None  # (-run, load, order)
    pick = None
    for order, t, run, ld in items:
        if run < floor or ld > bound:
            continue
        key = (-run, ld, order)
        if best is None or key < best:
            best, pick = key, t
    return pick
