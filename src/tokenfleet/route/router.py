"""Routing state of the gateway: which tier a model name means, which size bucket a
request falls in, and which pool and backend serve it.

A decision is *filter -> score -> pick* (STYLE.md): pools with no available backend
or no headroom are dropped, then the plan's policy from :mod:`tokenfleet.routing.policies`
(the same code the simulator runs) picks among the rest from :class:`PoolState`
snapshots. Inside a pool the least-loaded available backend is used. After a failure
the request goes to another backend of the same pool, else to the next-cheapest pool
with headroom (the ``cost-spill`` policy).

Disaggregated pairs: the plan routes a pair's requests to its decode half (its prefill
half's share is the same requests, taken first). The prefill pool is therefore not
among a tier's routable pools; :attr:`Router.prefill_for` maps each decode pool to the
prefill pool the gateway sends the prompt to first.

Nothing here does I/O: the gateway feeds in health and in-flight counts, so the
logic is tested without sockets. Times are seconds on ``time.monotonic``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from tokenfleet.plan.schema import Plan, PlanUnit
from tokenfleet.route.backend_metrics import BackendLoad
from tokenfleet.route.breaker import CircuitBreaker
from tokenfleet.route.config import BackendsFile
from tokenfleet.route.outlier import LatencyStats
from tokenfleet.routing.affinity import PREFIX_BLOCK_TOKENS, PrefixIndex, pick_affine
from tokenfleet.routing.buckets import plan_buckets
from tokenfleet.routing.policies import PoolState, PrefixAffinity, RoutingPolicy, get_policy


class Backend:
    """One OpenAI-compatible server behind a pool, with its live state."""

    __slots__ = ("url", "pool", "max_in_flight", "breaker", "healthy", "in_flight",
                 "_good_checks", "_bad_checks", "stats", "weight")

    def __init__(self, url: str, pool: str, max_in_flight: int, breaker: CircuitBreaker
                 ) -> None:
        self.url = url
        self.pool = pool
        self.max_in_flight = max_in_flight
        self.breaker = breaker
        self.healthy = True  # optimistic until the first failed check or request
        self.in_flight = 0
        self._good_checks = 0
        self._bad_checks = 0
        self.stats = LatencyStats()  # gray-failure detection (route/outlier.py)
        self.weight = 1.0  # observed speed relative to its pool's peers, (0, 1]

    def available(self, now: float) -> bool:
        """Health checks pass, the circuit lets traffic through, not ejected as slow."""
        return self.healthy and self.breaker.allows(now) and self.stats.allows(now)

    def up(self, now: float) -> bool:
        """Health checks pass and the circuit lets traffic through (ejected or not)."""
        return self.healthy and self.breaker.allows(now)

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight

    def record_check(self, ok: bool, unhealthy_after: int, healthy_after: int) -> bool:
        """Apply one health-check result; return True when ``healthy`` changed."""
        if ok:
            self._good_checks += 1
            self._bad_checks = 0
            if not self.healthy and self._good_checks >= healthy_after:
                self.healthy = True
                return True
        else:
            self._bad_checks += 1
            self._good_checks = 0
            if self.healthy and self._bad_checks >= unhealthy_after:
                self.healthy = False
                return True
        return False


@dataclass
class Pool:
    """A plan unit and the backends that serve it."""

    unit: PlanUnit
    backends: list[Backend]
    upstream_model: str  # the model name the backends serve
    api_key: str | None = field(default=None, repr=False)  # sent upstream; never logged
    health_path: str | None = None
    # Cache-affinity routing (prefix-affinity policy): what was sent to which backend,
    # as an LRU of prefix blocks per backend the size of an engine's prefix cache.
    prefix_cache_blocks: int = 4096
    prefix_index: PrefixIndex | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.unit.pool

    @property
    def usd_per_replica_hour(self) -> float:
        return self.unit.usd_per_hour / max(self.unit.replicas, 1)

    def state(self, share: float, now: float, exclude: frozenset[Backend] | set[Backend],
              loads: Callable[[str], BackendLoad | None] | None = None) -> PoolState:
        """Snapshot for the routing policies over the backends usable now; with
        ``loads`` (scraped /metrics), the backends' own mean KV-cache use. (Their
        waiting requests are not added to ``queued``: the gateway's in-flight count
        already holds every request it sent.)"""
        usable = [b for b in self.backends if b not in exclude and b.available(now)]
        if not usable:
            usable = self._panic(now, exclude)
        # The plan's share scaled by the capacity the backends show now: an ejected or
        # slow backend takes its part of the pool's share with it.
        capacity = sum(b.weight for b in usable) / max(len(self.backends), 1)
        kv_used, queued = 0.0, 0
        if loads is not None:
            kvs = [x.kv_used for x in (loads(b.url) for b in usable)
                   if x is not None and x.kv_used is not None]
            kv_used = sum(kvs) / len(kvs) if kvs else 0.0
        return PoolState(
            pool=self.name, share=share * capacity, usd_per_replica_hour=self.usd_per_replica_hour,
            replicas=len(self.backends), healthy_replicas=len(usable),
            in_flight=sum(b.in_flight for b in usable), queued=queued,
            max_in_flight=sum(b.max_in_flight for b in usable), kv_used=kv_used)

    def pick_backend(self, now: float, exclude: frozenset[Backend] | set[Backend],
                     blocks: Sequence[int] = ()) -> Backend | None:
        """Least loaded available backend with room, by in-flight fraction of its
        limit scaled by its observed speed (a backend half as fast takes half); with a
        request's prefix ``blocks`` (the ``prefix-affinity`` policy), the backend that
        was sent the longest run of them, within the load bound of
        :func:`~tokenfleet.routing.affinity.pick_affine`."""
        if blocks:
            b = self._pick_affine(now, exclude, blocks)
            if b is not None:
                return b
        best: Backend | None = None
        best_load = math.inf
        for b in self.backends:
            if b in exclude or not b.has_room or not b.available(now):
                continue
            load = (b.in_flight + 1) / (b.max_in_flight * b.weight)
            if load < best_load:
                best, best_load = b, load
        if best is None:
            for b in self._panic(now, exclude):
                if b.has_room and (b.in_flight + 1) / b.max_in_flight < best_load:
                    best, best_load = b, (b.in_flight + 1) / b.max_in_flight
        return best

    def _pick_affine(self, now: float, exclude: frozenset[Backend] | set[Backend],
                     blocks: Sequence[int]) -> Backend | None:
        idx = [i for i, b in enumerate(self.backends)
               if b not in exclude and b.has_room and b.available(now)]
        if not idx:
            return None
        if self.prefix_index is None:
            self.prefix_index = PrefixIndex(len(self.backends), self.prefix_cache_blocks)
        bs = self.backends
        load = [(bs[i].in_flight + 1) / (bs[i].max_in_flight * bs[i].weight) for i in idx]
        t = pick_affine(self.prefix_index.matches(blocks), idx, load, len(blocks))
        if t is None:
            t = idx[load.index(min(load))]
        self.prefix_index.touch(t, blocks)
        return bs[t]

    def _panic(self, now: float, exclude: frozenset[Backend] | set[Backend]) -> list[Backend]:
        """When every backend that is up has been ejected as slow, the slow ones serve
        (Envoy's panic mode): a slow answer beats none."""
        return [b for b in self.backends if b not in exclude and b.up(now)]


@dataclass
class TierRoutes:
    """A tier's routable pools and the plan's split of its traffic per size bucket."""

    name: str
    model: str
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    pools: list[Pool]
    shares: dict[str, dict[str, float]]  # bucket label -> pool -> fraction
    default_shares: dict[str, float]  # for buckets the plan did not size
    policy: RoutingPolicy

    def shares_for(self, bucket: str) -> dict[str, float]:
        return self.shares.get(bucket, self.default_shares)


class Verdict(str, Enum):
    """Why no backend was chosen."""

    saturated = "saturated"  # healthy pools exist but none has headroom: HTTP 429
    unavailable = "unavailable"  # no healthy backend at all: HTTP 503


@dataclass(frozen=True, slots=True)
class Choice:
    pool: Pool
    backend: Backend
    failover: bool  # True when a pool other than the policy's first choice was used


class Router:
    """Maps requests to (pool, backend) by the plan; see the module docstring."""

    def __init__(self, plan: Plan, backends: BackendsFile, policy: str | None = None,
                 seed: int = 0) -> None:
        settings = backends.gateway
        self.policy_name = policy or settings.policy
        get_policy(self.policy_name)  # validates the name with a clear error
        self._buckets = plan_buckets(plan)
        self.buckets = self._buckets.edges  # None: a hand-written plan without edges
        self.rng = random.Random(seed)
        # Backends' scraped /metrics (route.backend_metrics), set by the gateway.
        self.backend_load: Callable[[str], BackendLoad | None] | None = None
        self._failover_policy = get_policy("cost-spill")
        units = {u.pool: u for u in plan.units}
        self.pools: dict[str, Pool] = {}
        for name, spec in backends.pools.items():
            unit = units[name]
            per_backend = spec.max_in_flight or settings.default_max_in_flight
            pool_backends = [
                Backend(b.url, name, b.max_in_flight or per_backend,
                        CircuitBreaker(settings.breaker.failures, settings.breaker.cooldown_s))
                for b in spec.backends]
            key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
            self.pools[name] = Pool(unit, pool_backends, spec.model or unit.model, key,
                                    spec.health_path or settings.health.path,
                                    settings.prefix_cache_tokens // PREFIX_BLOCK_TOKENS)
        # decode pool -> its pair's prefill pool (when both have backends)
        self.prefill_for: dict[str, Pool] = {}
        prefill_units = {u.pair: u for u in plan.units if u.role == "prefill" and u.pair}
        for u in plan.units:
            pre = prefill_units.get(u.pair) if u.role == "decode" and u.pair else None
            if pre is not None and u.pool in self.pools and pre.pool in self.pools:
                self.prefill_for[u.pool] = self.pools[pre.pool]
        self.tiers: dict[str, TierRoutes] = {}
        for t in plan.tiers:
            pools = [self.pools[u.pool] for u in plan.pools_for(t.name)
                     if u.pool in self.pools and u.role != "prefill"]
            shares: dict[str, dict[str, float]] = {}
            weighted: dict[str, float] = {}
            for s in plan.traffic_split:
                if s.tier != t.name:
                    continue
                shares[s.bucket] = dict(s.shares)
                for p, f in s.shares.items():
                    weighted[p] = weighted.get(p, 0.0) + f * max(s.peak_requests_per_s, 1e-9)
            if not weighted:  # no split for the tier: spread evenly
                weighted = {p.name: 1.0 for p in pools}
            total = sum(weighted.values()) or 1.0
            self.tiers[t.name] = TierRoutes(
                t.name, t.model, t.slo_ttft_s, t.slo_tpot_s, pools, shares,
                {p: f / total for p, f in weighted.items()}, get_policy(self.policy_name))
        # A request may name the tier or the tier's model id (when only one tier has it).
        self._by_model: dict[str, TierRoutes] = {}
        by_model_id: dict[str, list[TierRoutes]] = {}
        for tier in self.tiers.values():
            by_model_id.setdefault(tier.model.lower(), []).append(tier)
        for mid, tiers in by_model_id.items():
            if len(tiers) == 1:
                self._by_model[mid] = tiers[0]
        for tier in self.tiers.values():
            self._by_model[tier.name.lower()] = tier

    # ---- lookups ------------------------------------------------------------------

    def tier_for(self, model: str) -> TierRoutes | None:
        """The tier a request's ``model`` names (tier name or unique model id)."""
        return self._by_model.get(model.lower())

    def bucket_label(self, prompt_tokens: int, output_tokens: int) -> str:
        """Label of the size bucket of one request (:mod:`tokenfleet.routing.buckets`)."""
        return self._buckets.label_of(prompt_tokens, output_tokens)

    def all_backends(self) -> Iterable[Backend]:
        for p in self.pools.values():
            yield from p.backends

    # ---- decisions ----------------------------------------------------------------

    def choose(self, tier: TierRoutes, bucket: str, now: float,
               exclude: frozenset[Backend] | set[Backend] = frozenset(),
               after_failure_in: Pool | None = None, blocks: Sequence[int] = ()
               ) -> Choice | Verdict:
        """Pick a pool and a backend for one attempt.

        First attempt (``after_failure_in`` None): the tier's policy over pools with
        headroom. Retry: another backend of the failed pool, else the next-cheapest
        pool with headroom. Backends in ``exclude`` (already tried) are skipped.
        ``blocks``: the request's prefix-block hashes, for the ``prefix-affinity`` policy
        (pool, then backend, by cached prefix).
        """
        if after_failure_in is not None:
            b = after_failure_in.pick_backend(now, exclude)
            if b is not None:
                return Choice(after_failure_in, b, failover=False)
            policy = self._failover_policy
        else:
            policy = tier.policy
        shares = tier.shares_for(bucket)
        states = [p.state(shares.get(p.name, 0.0), now, exclude, self.backend_load)
                  for p in tier.pools]
        cand = [i for i, s in enumerate(states) if s.has_headroom]
        if not cand:
            return (Verdict.saturated if any(s.healthy for s in states)
                    else Verdict.unavailable)
        first_choice = None
        while cand:
            sub = [states[i] for i in cand]
            pick = (policy.choose_prefix(sub, blocks, self.rng)
                    if blocks and isinstance(policy, PrefixAffinity)
                    else policy.choose(sub, self.rng))
            if pick is None:
                break
            i = cand[pick]
            if first_choice is None:
                first_choice = i
            b = tier.pools[i].pick_backend(now, exclude, blocks)
            if b is not None:
                return Choice(tier.pools[i], b, failover=after_failure_in is not None
                              or i != first_choice)
            # Pool-level headroom but every backend individually full: drop it, re-pick.
            cand.remove(i)
        return Verdict.saturated
