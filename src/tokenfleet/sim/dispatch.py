"""Routing inside the simulator: which pool each arriving request goes to.

Requests are routed per *routing key* (tier, size bucket) with the policies of
:mod:`tokenfleet.routing.policies`, the gateway's code: each key sees its candidate pools
as :class:`~tokenfleet.routing.policies.PoolState` snapshots, brought up to date from
the pool aggregates the engine hands in (:meth:`KeyRouter.set_health`,
:meth:`KeyRouter.set_load`) when the key next routes. A window's arrivals are routed at
its start, key by key, with one ``choose_many`` per key (the vectorised fast path); a
request too long for some pools' KV cache is routed alone among those that hold it.

Units: requests, tokens, USD per replica-hour.
"""

from __future__ import annotations

import math
import random

import numpy as np

from tokenfleet.plan.schema import BucketSplit, Plan
from tokenfleet.routing.policies import PoolState, RoutingPolicy, get_policy
from tokenfleet.sim.fleet import SimPool
from tokenfleet.sim.traffic import RouteKey

# Rejection reasons (the summary's keys).
NO_POOL = "no pool serves the tier"
NO_HEALTHY = "no healthy pool"
TOO_LONG = "longer than the KV cache of every pool"
# Routing outcomes other than a pool index (negative, so they never clash with one).
REASON_CODES = {-1: NO_POOL, -2: TOO_LONG, -3: NO_HEALTHY}
_NO_POOL, _TOO_LONG, _NO_HEALTHY = -1, -2, -3
# Windows with at most this many arrivals are grouped by key with plain lists.
_SMALL_WINDOW = 32


def key_shares(k: RouteKey, cand: list[SimPool], split: dict[tuple[str, str], BucketSplit]
               ) -> dict[str, float]:
    """The plan's shares for key ``k``; for a bucket the plan does not split, the tier's
    shares weighted by bucket peak (even over ``cand`` when the tier has no split)."""
    s = split.get((k.tier, k.bucket))
    if s is not None:
        return dict(s.shares)
    tot: dict[str, float] = {}
    weight = 0.0
    for (tier, _), sp in split.items():
        if tier != k.tier:
            continue
        w = max(sp.peak_requests_per_s, 1e-12)
        weight += w
        for pid, sh in sp.shares.items():
            tot[pid] = tot.get(pid, 0.0) + w * sh
    if weight <= 0:
        return {p.id: 1.0 for p in cand}
    return {pid: v / weight for pid, v in tot.items()}


class KeyRouter:
    """Per routing key: candidate pools, their shares, headroom and policy; the pool
    aggregates of the current instant; the picks."""

    def __init__(self, plan: Plan, pools: list[SimPool], keys: list[RouteKey], policy: str,
                 seed: int) -> None:
        split = {(s.tier, s.bucket): s for s in plan.traffic_split}
        self.n_pools = len(pools)
        self.key_pools: list[list[int]] = []
        self.key_states: list[list[PoolState]] = []
        self.key_headroom: list[list[float]] = []
        self.key_policy: list[RoutingPolicy] = []
        self.key_rng: list[random.Random] = []
        self.key_caps: list[np.ndarray] = []
        self.key_min_cap: list[int] = []
        self.pool_states_keys: list[list[tuple[PoolState, int]]] = [[] for _ in pools]
        self.version = 0
        self.key_version = [-1] * len(keys)
        self.routed_win = [0] * self.n_pools  # picks per pool since the last refresh
        for k in keys:
            cand = [p for p in pools if p.unit.tier == k.tier and p.replicas > 0]
            shares = key_shares(k, cand, split)
            states, heads = [], []
            for p in cand:
                conc = (p.headroom_concurrency.get(k.bucket)
                        or max(p.headroom_concurrency.values(), default=0.0)
                        or float(p.max_num_seqs))
                heads.append(max(1.0, math.ceil(conc)))
                st = PoolState(pool=p.id, share=shares.get(p.id, 0.0),
                               usd_per_replica_hour=p.usd_per_replica_hour,
                               replicas=p.replicas, healthy_replicas=p.replicas,
                               in_flight=0, queued=0,
                               max_in_flight=int(heads[-1] * p.lanes))
                states.append(st)
                self.pool_states_keys[p.index].append((st, len(self.key_states)))
            self.key_pools.append([p.index for p in cand])
            self.key_states.append(states)
            self.key_headroom.append(heads)
            self.key_policy.append(get_policy(policy))
            # One random stream per key, seeded by the key's name: the same requests see
            # the same draws whichever other pools share the process.
            self.key_rng.append(random.Random(f"{seed}:{k.tier}:{k.bucket}"))
            caps = np.array([p.kv_tokens for p in cand], dtype=np.int64)
            self.key_caps.append(caps)
            self.key_min_cap.append(int(caps.min()) if caps.size else 0)

    # ---- the pool aggregates of this instant ------------------------------------------

    def refresh(self) -> None:
        """A new instant: every key's view is stale, no picks counted yet."""
        self.version += 1
        self.routed_win = [0] * self.n_pools

    def set_health(self, up_lanes: list[int], healthy: list[int], usd: list[float]) -> None:
        """Per pool: lanes up, healthy replicas, USD per replica-hour."""
        self.agg_up_lanes = up_lanes
        self.agg_healthy = healthy
        self.agg_usd = usd

    def set_load(self, running: list[int], queued: list[int], kv_used: list[float]) -> None:
        """Per pool: requests running, requests waiting, KV fraction in use."""
        self.agg_running = running
        self.agg_queued = queued
        self.agg_kv = kv_used

    def view(self, k: int) -> list[PoolState]:
        """Key ``k``'s pool snapshots, up to date."""
        states = self.key_states[k]
        if self.key_version[k] != self.version:
            self.key_version[k] = self.version
            for s, head, p in zip(states, self.key_headroom[k], self.key_pools[k],
                                  strict=True):
                s.in_flight = self.agg_running[p]
                s.queued = self.agg_queued[p] + self.routed_win[p]
                s.healthy_replicas = self.agg_healthy[p]
                s.kv_used = self.agg_kv[p]
                s.usd_per_replica_hour = self.agg_usd[p]
                s.max_in_flight = int(head * self.agg_up_lanes[p])
        return states

    # ---- picks ------------------------------------------------------------------------

    def pick_one(self, k: int, size: int) -> int:
        """Pool for one request of key ``k`` with ``size`` prompt + output tokens (or a
        negative rejection code); the pick is counted as queued in every key's view."""
        states = self.view(k)
        if not states:
            return _NO_POOL
        choices = states
        index = None
        if size > self.key_min_cap[k]:
            fits = np.flatnonzero(self.key_caps[k] >= size)
            if fits.size == 0:
                return _TOO_LONG
            index = fits.tolist()
            choices = [states[i] for i in index]
        j = self.key_policy[k].choose(choices, self.key_rng[k])
        if j is None:
            return _NO_HEALTHY
        if index is not None:
            j = index[j]
        pi = self.key_pools[k][j]
        self.routed_win[pi] += 1
        v = self.version
        for st, kv in self.pool_states_keys[pi]:
            if self.key_version[kv] == v:
                st.queued += 1
        return pi

    def pick_window(self, keys: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Pools for a window's arrivals (in arrival order).

        All of a window's requests are routed at its start, key by key (in key order),
        each key's requests in arrival order with one ``choose_many``: every pick is
        seen by the picks after it, the same as routing the requests one at a time in
        that order."""
        m = keys.size
        min_cap = self.key_min_cap
        if m <= _SMALL_WINDOW:
            # A few requests (small fleets): plain lists beat a dozen tiny array calls.
            ks, sizes = keys.tolist(), size.tolist()
            order: list[int] | np.ndarray = sorted(range(m), key=ks.__getitem__)
            sk = [ks[q] for q in order]
            ss: list[int] | np.ndarray = [sizes[q] for q in order]
            starts = [0] + [q for q in range(1, m) if sk[q] != sk[q - 1]]
            group_keys = [sk[b] for b in starts]
            bounds = starts + [m]
            big = [max(ss[bounds[g]:bounds[g + 1]]) > min_cap[k]
                   for g, k in enumerate(group_keys)]
        else:
            order = np.argsort(keys, kind="stable")
            sk_arr = keys[order]
            ss = size[order]
            cuts = np.flatnonzero(sk_arr[1:] != sk_arr[:-1]) + 1
            starts_arr = np.concatenate(([0], cuts))
            bounds = starts_arr.tolist() + [m]
            group_keys = sk_arr[starts_arr].tolist()
            big = (np.maximum.reduceat(ss, starts_arr)
                   > np.asarray(min_cap, dtype=np.int64)[sk_arr[starts_arr]]).tolist()
        picked: list[int] = []
        routed_win = self.routed_win
        for g, k in enumerate(group_keys):
            n = bounds[g + 1] - bounds[g]
            states = self.view(k)
            if not states:
                picked.extend([_NO_POOL] * n)
                continue
            if big[g]:
                # Some need a pool with a larger KV cache: their own candidate lists, in
                # turn with the others so the key's random stream is used in order.
                part = ss[bounds[g]:bounds[g + 1]]
                picked.extend(self.pick_one(k, int(sz)) for sz in part)
                continue
            before = [st.queued for st in states]
            picks = self.key_policy[k].choose_many(states, n, self.key_rng[k])
            kp = self.key_pools[k]
            if None in picks:
                picked.extend(_NO_HEALTHY if j is None else kp[j] for j in picks)
            else:
                picked.extend(map(kp.__getitem__, picks))  # type: ignore[arg-type]
            # The policy counted its picks in this key's view; later keys see them
            # through routed_win when their views are taken.
            for st, b, pi in zip(states, before, kp, strict=True):
                if st.queued != b:
                    routed_win[pi] += st.queued - b
        out = np.empty(m, dtype=np.int64)
        out[order] = picked
        return out
