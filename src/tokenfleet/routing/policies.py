"""Routing policies, written once and used by both the simulator and the live gateway.

A routing decision is a small pipeline (filter -> score -> pick): drop pools that
cannot take the request now, score the rest, pick one. A policy sees only
:class:`PoolState` snapshots, so the same code runs against simulated replicas and
against real backends.

Each policy's logic is written once, as ``choose_many``: picks for ``n`` requests one
after another, each pick counted as queued in its pool before the next (what a router
that counts its own decisions sees). ``choose`` — the gateway's call, one request — is
``choose_many`` with ``n = 1``, leaving the snapshot as it was. The simulator routes a
window's arrivals with one ``choose_many`` call per routing key; it returns exactly
what ``n`` calls of ``choose`` would (``tests/sim/test_routing.py`` checks it on random
snapshots) but in few steps: between two moments where some pool's headroom can
change, picks by the plan's shares are independent draws and picks by load are a
water-filling.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tokenfleet.errors import TokenfleetError
from tokenfleet.routing.affinity import MAX_LOAD_GAP, MIN_MATCH, PrefixIndex, pick_affine


@dataclass(slots=True)
class PoolState:
    """What a router knows about one pool when a request for one (tier, bucket) arrives."""

    pool: str
    share: float  # the plan's fraction of this bucket's requests for this pool
    usd_per_replica_hour: float
    replicas: int
    healthy_replicas: int
    in_flight: int  # requests being served
    queued: int  # requests waiting in the pool
    max_in_flight: int  # concurrency limit of the healthy replicas together
    kv_used: float = 0.0  # fraction of KV-cache blocks in use, 0..1

    @property
    def healthy(self) -> bool:
        return self.healthy_replicas > 0

    @property
    def has_headroom(self) -> bool:
        # (healthy, inlined: this runs for every pool of every routing decision)
        return self.healthy_replicas > 0 and self.in_flight + self.queued < self.max_in_flight

    @property
    def load(self) -> float:
        """Outstanding requests per healthy replica."""
        return (self.in_flight + self.queued) / max(self.healthy_replicas, 1)

    @property
    def room(self) -> int:
        """Requests it takes before it runs out of headroom (0: none now)."""
        if self.healthy_replicas <= 0:
            return 0
        return max(self.max_in_flight - self.in_flight - self.queued, 0)


class RoutingPolicy(Protocol):
    name: str

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        """Index of the pool to send to, or None when no pool can take it."""

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        """Picks for ``n`` requests in turn; bumps ``queued`` of each chosen pool."""


class _Policy:
    """``choose`` as the one-request case of ``choose_many``."""

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        raise NotImplementedError

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        j = self.choose_many(pools, 1, rng)[0]
        if j is not None:
            pools[j].queued -= 1  # one decision only: leave the snapshot as it was
        return j


def _healthy(pools: Sequence[PoolState]) -> list[int]:
    return [i for i, p in enumerate(pools) if p.healthy_replicas > 0]


def _count(pools: Sequence[PoolState], idx: list[int], picks: list[int]) -> None:
    """Add each of ``idx``'s picks to its pool's queue (one update per pool)."""
    for i in idx:
        c = picks.count(i)
        if c:
            pools[i].queued += c


def _by_load(pools: Sequence[PoolState], idx: list[int], n: int) -> list[int]:
    """``n`` picks among ``idx``, each to the least loaded pool (the first of equals),
    every pick adding one request to its pool's load; counts the picks."""
    # Pool q's next pick happens at load (c_q + k) / h_q, the same float
    # ``PoolState.load`` computes then; a heap of (load, position) pops them in the
    # loop's order (ties to the first pool).
    c = [pools[i].in_flight + pools[i].queued for i in idx]
    h = [max(pools[i].healthy_replicas, 1) for i in idx]
    if n == 1 or len(idx) == 1:
        q = min(range(len(idx)), key=lambda q: c[q] / h[q])
        pools[idx[q]].queued += n
        return [idx[q]] * n
    heap = [(c[q] / h[q], q) for q in range(len(idx))]
    heapq.heapify(heap)
    order = []
    for _ in range(n):
        _, q = heap[0]
        c[q] += 1
        heapq.heapreplace(heap, (c[q] / h[q], q))
        order.append(q)
    for q, i in enumerate(idx):
        pools[i].queued = c[q] - pools[i].in_flight
    return [idx[q] for q in order]


def _spill(pools: Sequence[PoolState], n: int) -> list[int | None]:
    """The cheapest pool (per replica-hour) with headroom, the least loaded of equally
    cheap ones; with no headroom anywhere, the least loaded healthy pool."""
    picks: list[int | None] = []
    while len(picks) < n:
        left = n - len(picks)
        room = [p.room for p in pools]
        idx = [i for i, r in enumerate(room) if r > 0]
        if not idx:
            # Nobody gains headroom while requests are only added: load decides the rest.
            healthy = _healthy(pools)
            picks.extend(_by_load(pools, healthy, left) if healthy else [None] * left)
            break
        usd = min(pools[i].usd_per_replica_hour for i in idx)
        cheap = [i for i in idx if pools[i].usd_per_replica_hour == usd]
        # No pool of the cheapest group can run out of headroom before this many picks.
        picks.extend(_by_load(pools, cheap, min(left, min(room[i] for i in cheap))))
    return picks


class PlanSplit(_Policy):
    """Follow the plan's shares (weighted random) among healthy pools with headroom;
    when the planned pools are full or down, spill to the cheapest pool with headroom."""

    name = "plan"

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        picks: list[int | None] = []
        left = n
        while left:
            idx: list[int] = []
            weights: list[float] = []
            k = left
            for i, p in enumerate(pools):
                if p.share > 0:
                    r = p.room
                    if r > 0:
                        idx.append(i)
                        weights.append(p.share)
                        k = min(k, r)
            if not idx:
                # Planned pools only fill up from here: the rest spill.
                picks.extend(_spill(pools, left))
                break
            # Until one of them can run out of headroom (k picks), picks are independent
            # draws; random.choices(k=...) draws exactly as that many calls with k=1.
            draws = rng.choices(idx, weights=weights, k=k)
            _count(pools, idx, draws)
            picks.extend(draws)
            left -= k
        return picks


class RoundRobin(_Policy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        idx = _healthy(pools)
        if not idx:
            return [None] * n
        picks = [idx[(self._next + q) % len(idx)] for q in range(n)]
        self._next += n
        _count(pools, idx, picks)
        return list(picks)


class JoinShortestQueue(_Policy):
    name = "jsq"

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        idx = _healthy(pools)
        return list(_by_load(pools, idx, n)) if idx else [None] * n


class LeastKV(_Policy):
    name = "least-kv"

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        idx = _healthy(pools)
        if not idx:
            return [None] * n
        # KV use is a snapshot (it does not move with picks): the least used pools
        # share the requests by load.
        least = min(pools[i].kv_used for i in idx)
        return list(_by_load(pools, [i for i in idx if pools[i].kv_used == least], n))


class CostAwareSpill(_Policy):
    """Cheapest pool (per replica-hour) with headroom first, then the least loaded."""

    name = "cost-spill"

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        return _spill(pools, n)


class PrefixAffinity(_Policy):
    """Cache-affinity routing (prefix-aware, like llm-d's prefix-cache scorer and SGLang's
    cache-aware router): a request goes to the pool that already holds the longest
    leading run of its prefix blocks, so a conversation's turns meet their own KV cache.

    The rule is :mod:`tokenfleet.routing.affinity`'s, shared with the simulator (which
    applies it to engine lanes): the router keeps its own index of what it sent where
    (per pool an LRU of the last ``capacity_blocks`` prefix blocks routed there; set it
    to the pool's cache size), so it needs nothing from the backends. Filter -> score ->
    pick: pools with headroom (else every healthy pool); :func:`~tokenfleet.routing.
    affinity.pick_affine` among them (longest run covering ``min_match`` of the blocks,
    within ``max_load_gap`` of the least loaded, load = outstanding over the pool's
    concurrency limit); a request no pool qualifies for goes to the least loaded pool,
    equals in turn. A request without hashes (or ``choose_many``, which carries none)
    is routed by load, as ``jsq``.

    The gateway (``route/router.py``) passes each request's blocks
    (``routing.affinity.prompt_blocks`` of its token ids, or ``text_blocks`` of its text
    without a tokenizer) to ``choose_prefix`` and applies the same rule again over the
    chosen pool's backends; the simulator applies it per engine lane
    (``sim/prefix_cache.py``).
    """

    name = "prefix-affinity"

    def __init__(self, capacity_blocks: int = 65536, max_load_gap: float = MAX_LOAD_GAP,
                 min_match: float = MIN_MATCH) -> None:
        self.min_match = min_match
        self.capacity_blocks = capacity_blocks
        self.max_load_gap = max_load_gap
        self._ids: dict[str, int] = {}  # pool name -> target number in the index
        self.index = PrefixIndex(0, capacity_blocks)
        self._turn = 0

    def choose_many(self, pools: Sequence[PoolState], n: int, rng: random.Random
                    ) -> list[int | None]:
        idx = _healthy(pools)
        return list(_by_load(pools, idx, n)) if idx else [None] * n

    def _target(self, name: str) -> int:
        t = self._ids.get(name)
        if t is None:
            t = self._ids[name] = self.index.add_target()
        return t

    def choose_prefix(self, pools: Sequence[PoolState], blocks: Sequence[int],
                      rng: random.Random) -> int | None:
        """Pick a pool for one request with prefix blocks ``blocks``; counts the pick as
        queued in its pool and records the blocks in that pool's index."""
        idx = [i for i, p in enumerate(pools) if p.room > 0] or _healthy(pools)
        if not idx:
            return None
        targets = [self._target(pools[i].pool) for i in idx]
        load = [(pools[i].in_flight + pools[i].queued) / max(pools[i].max_in_flight, 1)
                for i in idx]
        t = pick_affine(self.index.matches(blocks), targets, load, len(blocks),
                        self.max_load_gap, self.min_match)
        if t is not None:
            pick = idx[targets.index(t)]
        else:
            low = min(load)
            tied = [i for i, ld in zip(idx, load, strict=True) if ld == low]
            pick = tied[self._turn % len(tied)]  # equals take turns, as round-robin
            self._turn += 1
        self.index.touch(self._target(pools[pick].pool), blocks)
        pools[pick].queued += 1
        return pick


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    PlanSplit.name: PlanSplit,
    RoundRobin.name: RoundRobin,
    JoinShortestQueue.name: JoinShortestQueue,
    LeastKV.name: LeastKV,
    CostAwareSpill.name: CostAwareSpill,
    PrefixAffinity.name: PrefixAffinity,
}


def get_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise TokenfleetError(
            f"unknown routing policy '{name}'; allowed: {', '.join(POLICIES)}") from None
