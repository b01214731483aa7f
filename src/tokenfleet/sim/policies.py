"""Routing policies, written once and used by both the simulator and the live gateway.

A routing decision is a small pipeline (filter -> score -> pick): drop pools that
cannot take the request now, score the rest, pick one. A policy sees only
:class:`PoolState` snapshots, so the same code runs against simulated replicas and
against real backends.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tokenfleet.errors import TokenfleetError


@dataclass
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
        return self.healthy and self.in_flight + self.queued < self.max_in_flight

    @property
    def load(self) -> float:
        """Outstanding requests per healthy replica."""
        return (self.in_flight + self.queued) / max(self.healthy_replicas, 1)


class RoutingPolicy(Protocol):
    name: str

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        """Index of the pool to send to, or None when no pool can take it."""


def _healthy(pools: Sequence[PoolState]) -> list[int]:
    return [i for i, p in enumerate(pools) if p.healthy]


def _cheapest_with_headroom(pools: Sequence[PoolState]) -> int | None:
    idx = [i for i, p in enumerate(pools) if p.has_headroom]
    if idx:
        return min(idx, key=lambda i: (pools[i].usd_per_replica_hour, pools[i].load))
    idx = _healthy(pools)
    return min(idx, key=lambda i: pools[i].load) if idx else None


class PlanSplit:
    """Follow the plan's shares (weighted random) among healthy pools with headroom;
    when the planned pools are full or down, spill to the cheapest pool with headroom."""

    name = "plan"

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        idx = [i for i, p in enumerate(pools) if p.has_headroom and p.share > 0]
        if idx:
            weights = [pools[i].share for i in idx]
            return rng.choices(idx, weights=weights)[0]
        return _cheapest_with_headroom(pools)


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        idx = _healthy(pools)
        if not idx:
            return None
        pick = idx[self._next % len(idx)]
        self._next += 1
        return pick


class JoinShortestQueue:
    name = "jsq"

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        idx = _healthy(pools)
        return min(idx, key=lambda i: (pools[i].load, i)) if idx else None


class LeastKV:
    name = "least-kv"

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        idx = _healthy(pools)
        return min(idx, key=lambda i: (pools[i].kv_used, pools[i].load, i)) if idx else None


class CostAwareSpill:
    """Cheapest pool (per replica-hour) with headroom first, then the least loaded."""

    name = "cost-spill"

    def choose(self, pools: Sequence[PoolState], rng: random.Random) -> int | None:
        return _cheapest_with_headroom(pools)


POLICIES: dict[str, Callable[[], RoutingPolicy]] = {
    PlanSplit.name: PlanSplit,
    RoundRobin.name: RoundRobin,
    JoinShortestQueue.name: JoinShortestQueue,
    LeastKV.name: LeastKV,
    CostAwareSpill.name: CostAwareSpill,
}


def get_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise TokenfleetError(
            f"unknown routing policy '{name}'; allowed: {', '.join(POLICIES)}") from None
