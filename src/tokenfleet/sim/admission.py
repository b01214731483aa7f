"""Admission control in the simulator (``SimOptions.admission == "ttft"``): turn a
request away at the door when its predicted queueing delay exceeds its tier's TTFT SLO
on the pool it was routed to and on every other pool of the tier — the simulator's
counterpart of the gateway's 429 backpressure.

A pool's predicted delay for the next request is the queue ahead of it over its service
rate: requests/s per replica times healthy replicas. The rate per replica is the plan's
estimate until the pool has had a queue, then what it actually drained while it had one
(an exponential average, measured on the sample grid so a part of the fleet simulated
alone measures the same).

Units: seconds, requests per second.
"""

from __future__ import annotations

import math

import numpy as np

from tokenfleet.plan.schema import Plan
from tokenfleet.sim.dispatch import KeyRouter
from tokenfleet.sim.fleet import SimPool
from tokenfleet.sim.kernels import Slots

SHED = "shed: predicted queueing delay over the TTFT SLO on every pool of the tier"
# Time constant of the measured drain rate, s.
DRAIN_TAU_S = 5.0


def replica_rate(plan: Plan, p: SimPool) -> float:
    """Requests per second one replica of ``p`` serves, by the plan's capacity estimate
    (point value) over the pool's planned mix of size buckets; inf when the plan gives
    none (admission control then never turns requests away there)."""
    caps = {c.bucket: c.requests_per_s_point for c in p.unit.capacity
            if c.requests_per_s_point > 0}
    if not caps:
        return math.inf
    weight = {s.bucket: s.peak_requests_per_s * s.shares.get(p.id, 0.0)
              for s in plan.traffic_split
              if s.tier == p.unit.tier and s.bucket in caps}
    if sum(weight.values()) <= 0:
        weight = dict.fromkeys(caps, 1.0)
    seconds = sum(w / caps[b] for b, w in weight.items()) / sum(weight.values())
    return 1.0 / seconds


class Admission:
    """Each pool's service rate and TTFT SLO; which routed requests to turn away."""

    def __init__(self, plan: Plan, pools: list[SimPool], slo_ttft_s: dict[str, float]
                 ) -> None:
        self.n_pools = len(pools)
        self.pool_rate = np.array([replica_rate(plan, p) for p in pools], dtype=float)
        self.pool_done = np.zeros(len(pools))  # completions so far (the engine counts)
        self.rate_done = np.zeros(len(pools))
        self.rate_t = 0.0
        self.rate_queued = np.zeros(len(pools), dtype=bool)
        self.pool_slo = np.array([slo_ttft_s[p.unit.tier] for p in pools], dtype=float)

    def measure_drain(self, now: float, waiting: np.ndarray, healthy: np.ndarray) -> None:
        """Update each pool's service rate per replica (``healthy`` replicas up, at least
        1) with what it completed since the last sample, if it had a queue then and now
        (completions are then what it can drain; without a queue they only echo the
        arrivals)."""
        dt = now - self.rate_t
        if dt <= 0:
            return
        seen = (self.pool_done - self.rate_done) / dt / healthy
        busy = self.rate_queued & (waiting > 0)
        if busy.any():
            a = 1.0 - math.exp(-dt / DRAIN_TAU_S)
            first = ~np.isfinite(self.pool_rate)
            self.pool_rate = np.where(busy & first, seen, self.pool_rate)
            self.pool_rate = np.where(busy & ~first,
                                      self.pool_rate + a * (seen - self.pool_rate),
                                      self.pool_rate)
        self.rate_done = self.pool_done.copy()
        self.rate_t = now
        self.rate_queued = waiting > 0

    def shed(self, slots: np.ndarray, picks: np.ndarray, sl: Slots, router: KeyRouter
             ) -> list[int]:
        """Positions in ``slots`` of the routed requests to turn away (``picks``: their
        pools, in arrival order).

        The routed requests fill each pool's room in arrival order; one that finds its
        pool full goes to the pool of its tier with the shortest predicted delay that
        still has room and a large enough KV cache (``picks`` is updated in place), and
        is shed when there is none."""
        queued = np.asarray(router.agg_queued, dtype=float)
        mu = self.pool_rate * np.asarray(router.agg_healthy, dtype=float)
        with np.errstate(invalid="ignore"):
            room = np.where(mu > 0, np.floor(self.pool_slo * mu - queued) + 1, 0.0)
        room = np.maximum(np.nan_to_num(room, nan=np.inf), 0.0)
        order = np.argsort(picks, kind="stable")
        sp = picks[order]
        rank = np.arange(sp.size) - np.searchsorted(sp, sp, side="left")
        ok = np.empty(slots.size, dtype=bool)
        ok[order] = rank < room[sp]
        if ok.all():
            return []
        taken = np.bincount(picks[ok], minlength=self.n_pools).astype(float)
        over = np.flatnonzero(~ok)
        size = (sl.inp[slots[over]] + sl.out[slots[over]]).tolist()
        keys = sl.key[slots[over]].tolist()
        shed: list[int] = []
        for i, k, sz in zip(over.tolist(), keys, size, strict=True):
            best, best_wait = -1, math.inf
            for pi, cap in zip(router.key_pools[k], router.key_caps[k].tolist(),
                               strict=True):
                if taken[pi] < room[pi] and cap >= sz:
                    wait = (queued[pi] + taken[pi]) / mu[pi]
                    if wait < best_wait:
                        best, best_wait = pi, wait
            if best < 0:
                shed.append(i)
            else:
                picks[i] = best
                taken[best] += 1
        return shed
