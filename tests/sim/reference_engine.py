"""The simulator's previous engine, one request at a time: a test oracle.

``tokenfleet.sim.engine`` replaced this per-request implementation (``Req`` objects,
per-lane deques, dicts and heaps, Python scheduling of every lane with work) with slot
arrays and scheduling of many lanes at once. Both implement the same semantics, so on
the same inputs they must give the same answer (``test_engine_equivalence.py``). The
only change from the version that shipped: the requests of one routing window are
routed key by key (each key's in arrival order) instead of in arrival order, as the
vectorised engine routes them.

Speculative pools (``PlanUnit.speculative``) follow the same rule as the engine, one
request at a time: a decoding sequence gains ``E`` tokens per iteration (so one with
``n`` left leaves after ``ceil(n / E)``), takes ``1 + k`` tokens of the budget and
``E`` KV tokens of room per iteration; an iteration costs the target's step with the
``k`` verify positions per sequence plus the drafter's steps (:meth:`_spec_s`).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.routing.policies import PoolState, RoutingPolicy, get_policy
from tokenfleet.sim import kernels
from tokenfleet.sim.fleet import BLOCK_TOKENS, Fleet
from tokenfleet.sim.metrics import GroupStats
from tokenfleet.sim.shocks import Failure, PriceChange
from tokenfleet.sim.stepcost import FleetStepCost, prefill_attention_per_token
from tokenfleet.sim.traffic import RouteKey, Workload


class CompletionBuffer:
    """Finished requests as plain Python lists between vectorised flushes."""

    FLUSH_AT = 8192

    def __init__(self) -> None:
        self.tier: list[int] = []
        self.pool: list[int] = []
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.e2e: list[float] = []
        self.queue: list[float] = []
        self.out: list[int] = []
        self.inp: list[int] = []

    def __len__(self) -> int:
        return len(self.tier)

    def flush(self, tiers: GroupStats, pools: GroupStats, slo_ttft: np.ndarray,
              slo_tpot: np.ndarray) -> None:
        if not self.tier:
            return
        tier = np.asarray(self.tier, dtype=np.int64)
        pool = np.asarray(self.pool, dtype=np.int64)
        vals = {
            "ttft": np.asarray(self.ttft), "tpot": np.asarray(self.tpot),
            "e2e": np.asarray(self.e2e), "queue": np.asarray(self.queue),
        }
        out = np.asarray(self.out, dtype=np.int64)
        inp = np.asarray(self.inp, dtype=np.int64)
        tpot_ok = np.isnan(vals["tpot"]) | (vals["tpot"] <= slo_tpot[tier])
        met = ((vals["ttft"] <= slo_ttft[tier]) & tpot_ok).astype(np.int64)
        tiers.add(tier, vals, met, out, inp)
        pools.add(pool, vals, met, out, inp)
        self.__init__()  # type: ignore[misc]

NEVER = np.iinfo(np.int64).max // 4
# Per-pool columns sampled during a run: levels, then running totals.
SERIES_LEVELS = ("running", "waiting", "kv_used_tokens")
SERIES_TOTALS = ("busy_s", "routed", "preemptions")
SERIES_COLUMNS = SERIES_LEVELS + SERIES_TOTALS
DEFAULT_SYNC_S = 0.02
# Rejection reasons (the summary's keys).
NO_POOL = "no pool serves the tier"
NO_HEALTHY = "no healthy pool"
TOO_LONG = "longer than the KV cache of every pool"
UNFINISHED = "unfinished when the simulation stopped"


class Req:
    """One in-flight request (dropped when it finishes)."""

    __slots__ = ("id", "arrival", "ready", "inp", "out", "key", "tier", "pool", "lane",
                 "gen", "need", "kv", "enter", "gen_entry", "first_t", "admit_t",
                 "retries", "epoch", "att")

    def __init__(self, rid: int, arrival: float, inp: int, out: int, key: int,
                 tier: int) -> None:
        self.id = rid
        self.arrival = arrival
        self.ready = arrival  # earliest time it may enter a batch
        self.inp = inp
        self.out = out
        self.key = key
        self.tier = tier
        self.pool = -1
        self.lane = -1
        self.gen = 0  # output tokens generated (this attempt)
        self.need = inp  # prompt tokens still to prefill in this admission
        self.kv = 0  # KV tokens held, not counting decode growth since `enter`
        self.enter = -1  # lane step at which it started decoding (-1: not decoding)
        self.gen_entry = 0
        self.first_t = -1.0
        self.admit_t = -1.0
        self.retries = 0
        self.epoch = 0  # bumped on preemption/failure: invalidates heap entries
        self.att = 0.0  # prefill-attention FLOPs per prompt token of this admission


from tokenfleet.sim.engine import RunRecord, SimOptions, auto_sample_s  # noqa: E402


class Simulator:
    """One simulation of ``workload`` through ``fleet``; call :meth:`run` once."""

    def __init__(self, fleet: Fleet, workload: Workload, options: SimOptions | None = None,
                 failures: list[Failure] | None = None,
                 prices: list[PriceChange] | None = None) -> None:
        self.fleet = fleet
        self.w = workload
        self.opt = options or SimOptions()
        if not (self.opt.sync_s > 0 and math.isfinite(self.opt.sync_s)):
            raise TokenfleetError(f"sync_s must be > 0, got {self.opt.sync_s}")
        self.failures = failures or []
        self.prices = prices or []
        plan = fleet.plan
        self.tier_names = [t.name for t in plan.tiers]
        self.slo_ttft = np.array([t.slo_ttft_s if t.slo_ttft_s is not None else np.inf
                                  for t in plan.tiers])
        self.slo_tpot = np.array([t.slo_tpot_s if t.slo_tpot_s is not None else np.inf
                                  for t in plan.tiers])
        pools = fleet.pools
        self.pools = pools
        self.n_pools = len(pools)
        lanes = fleet.lanes
        self.n_lanes = lanes
        self.lane_pool = np.concatenate(
            [np.full(p.lanes, p.index, dtype=np.int64) for p in pools]
        ) if pools else np.zeros(0, np.int64)
        self.cost = FleetStepCost([p.coeffs for p in pools], self.lane_pool,
                                  [p.speculation for p in pools], [p.model for p in pools])
        self.verify = self.cost.verify  # per lane: k (0: plain)
        self.adv = self.cost.advance  # per lane: E tokens per iteration (1.0: plain)
        self.pool_starts = np.array([p.first_lane for p in pools], dtype=np.int64)
        self._build_lanes()
        self._build_routing()
        self.sample_s = self.opt.sample_s or auto_sample_s(workload.duration_s, self.opt.sync_s)
        self.sample_s = max(self.opt.sync_s,
                            round(self.sample_s / self.opt.sync_s) * self.opt.sync_s)
        # Departures are counted in bins this wide: fine enough to sample the number in
        # the system densely, coarse enough that a day-long run keeps < 1 MB of counts.
        span = max(workload.duration_s, self.opt.sync_s)
        self.fine_s = self.opt.sync_s * max(1, math.ceil(span / (self.opt.sync_s * 100_000)))
        self.inv_fine = 1.0 / self.fine_s

    # ---- state ------------------------------------------------------------------------

    def _build_lanes(self) -> None:
        n = self.n_lanes
        pools = self.pools
        self.clock = np.zeros(n)
        self.up = np.ones(n, dtype=bool)
        self.down_count = np.zeros(n, dtype=np.int64)
        self.n_dec = np.zeros(n, dtype=np.int64)
        self.dec_ctx = np.zeros(n)
        self.n_seqs = np.zeros(n, dtype=np.int64)
        self.n_wait = np.zeros(n, dtype=np.int64)
        self.kv = np.zeros(n)
        lane_of = self.lane_pool
        per_pool_cap = np.array([p.kv_tokens for p in pools], dtype=float)
        self.kv_cap = per_pool_cap[lane_of] if n else np.zeros(0)
        self.watermark = np.array(
            [self.fleet.engine.kv_watermark * p.kv_tokens for p in pools])[lane_of] \
            if n else np.zeros(0)
        self.max_seqs = np.array([min(p.max_num_seqs,
                                      p.max_batched_tokens // (1 + p.speculation.verify))
                                  for p in pools], dtype=np.int64)[lane_of] \
            if n else np.zeros(0, np.int64)
        self.budget = np.array([p.max_batched_tokens for p in pools],
                               dtype=np.int64)[lane_of] if n else np.zeros(0, np.int64)
        self.step = np.zeros(n, dtype=np.int64)
        self.next_done = np.full(n, NEVER, dtype=np.int64)
        self.prefilling = np.zeros(n, dtype=bool)
        self.wait_head = np.full(n, np.inf)
        self.blocked = np.zeros(n, dtype=bool)
        self.busy = np.zeros(n)
        self.pre_tok = np.zeros(n)
        self.pre_att = np.zeros(n)
        self.outstanding = np.zeros(n)
        self.waiting: list[deque[Req]] = [deque() for _ in range(n)]
        self.running: list[dict[int, Req]] = [{} for _ in range(n)]
        self.prefill_q: list[list[Req]] = [[] for _ in range(n)]
        self.heaps: list[list[tuple[int, int, Req, int]]] = [[] for _ in range(n)]
        self.finishing: list[tuple[int, list[Req]]] = []
        self.att_cache: list[dict[int, float]] = [{} for _ in pools]
        self.price = np.array([p.unit.usd_per_chip_hour for p in pools])
        self.preempt = np.zeros(len(pools), dtype=np.int64)

    def _build_routing(self) -> None:
        """Per routing key: candidate pools, their shares, headroom and policy."""
        plan = self.fleet.plan
        pools = self.pools
        tier_idx = {t: i for i, t in enumerate(self.tier_names)}
        split = {(s.tier, s.bucket): s for s in plan.traffic_split}
        self.key_tier = np.array([tier_idx[k.tier] for k in self.w.keys], dtype=np.int64)
        self.key_pools: list[list[int]] = []
        self.key_states: list[list[PoolState]] = []
        self.key_headroom: list[list[float]] = []
        self.key_policy: list[RoutingPolicy] = []
        self.key_rng: list[random.Random] = []
        self.key_caps: list[np.ndarray] = []
        self.key_min_cap: list[int] = []
        self.pool_states: list[list[PoolState]] = [[] for _ in pools]
        self.pool_states_keys: list[list[tuple[PoolState, int]]] = [[] for _ in pools]
        self.pool_first = [p.first_lane for p in pools]
        self.pool_lanes = [p.lanes for p in pools]
        self.chips_per_replica = np.array([p.unit.chips_per_replica for p in pools], float)
        self.version = 0
        self.key_version = [-1] * len(self.w.keys)
        for k in self.w.keys:
            cand = [p for p in pools if p.unit.tier == k.tier and p.replicas > 0]
            shares = self._shares(k, cand, split)
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
                self.pool_states[p.index].append(st)
                self.pool_states_keys[p.index].append((st, len(self.key_states)))
            self.key_pools.append([p.index for p in cand])
            self.key_states.append(states)
            self.key_headroom.append(heads)
            self.key_policy.append(get_policy(self.opt.policy))
            # One random stream per key, seeded by the key's name: the same requests see
            # the same draws whichever other pools share the process.
            self.key_rng.append(random.Random(f"{self.opt.seed}:{k.tier}:{k.bucket}"))
            caps = np.array([p.kv_tokens for p in cand], dtype=np.int64)
            self.key_caps.append(caps)
            self.key_min_cap.append(int(caps.min()) if caps.size else 0)

    @staticmethod
    def _shares(k: RouteKey, cand: list, split: dict) -> dict[str, float]:
        s = split.get((k.tier, k.bucket))
        if s is not None:
            return dict(s.shares)
        # A bucket the plan does not split: the tier's shares weighted by bucket peak.
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

    # ---- pool snapshots for the router -----------------------------------------------

    def _refresh_states(self) -> None:
        """Take the pool aggregates of this instant; each key's PoolStates are brought up
        to date when the key next routes (:meth:`_key_view`)."""
        self.version += 1
        if not self.n_lanes:
            return
        st = self.pool_starts
        up = self.up
        up_lanes = np.add.reduceat(up.astype(np.int64), st)
        kv_cap = np.add.reduceat(np.where(up, self.kv_cap, 0.0), st)
        kv_used = np.add.reduceat(np.where(up, self.kv, 0.0), st)
        self.agg_running = np.add.reduceat(self.n_seqs, st).tolist()
        self.agg_queued = np.add.reduceat(self.n_wait, st).tolist()
        self.agg_up_lanes = up_lanes.tolist()
        self.agg_healthy = [int(up_lanes[p.index]) // p.lanes_per_replica for p in self.pools]
        self.agg_kv = np.divide(kv_used, kv_cap, out=np.ones(len(self.pools)),
                                where=kv_cap > 0).tolist()
        self.agg_usd = (self.price * self.chips_per_replica).tolist()
        self.routed_win = [0] * len(self.pools)

    def _key_view(self, k: int) -> list[PoolState]:
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

    # ---- routing ---------------------------------------------------------------------

    def _route(self, req: Req, now: float) -> None:
        pi = self._pick(req, now)
        if pi is not None:
            self._place(req, pi, now)

    def _pick(self, req: Req, now: float) -> int | None:
        """The pool for ``req`` (counted as queued in every key's view), or None after
        rejecting it."""
        k = req.key
        states = self._key_view(k)
        if not states:
            self._reject(req, NO_POOL, now)
            return None
        choices = states
        index = None
        if req.inp + req.out > self.key_min_cap[k]:
            fits = np.flatnonzero(self.key_caps[k] >= req.inp + req.out)
            if fits.size == 0:
                self._reject(req, TOO_LONG, now)
                return None
            index = fits.tolist()
            choices = [states[i] for i in index]
        j = self.key_policy[k].choose(choices, self.key_rng[k])
        if j is None:
            self._reject(req, NO_HEALTHY, now)
            return None
        if index is not None:
            j = index[j]
        pi = self.key_pools[k][j]
        self.routed_win[pi] += 1
        v = self.version
        for st, kv in self.pool_states_keys[pi]:
            if self.key_version[kv] == v:
                st.queued += 1
        return pi

    def _place(self, req: Req, pi: int, now: float) -> None:
        """Queue ``req`` on the lane of pool ``pi`` with the fewest outstanding requests."""
        start = self.pool_first[pi]
        n = self.pool_lanes[pi]
        lane = start if n == 1 else start + int(self.outstanding[start:start + n].argmin())
        if not self.up[lane]:  # every lane of the pool is down (policy saw it healthy)
            self._reject(req, NO_HEALTHY, now)
            return
        req.pool = pi
        req.lane = lane
        q = self.waiting[lane]
        if not q:
            self.wait_head[lane] = req.ready
        q.append(req)
        self.n_wait[lane] += 1
        self.outstanding[lane] += 1
        self.routed[pi] += 1

    def _reject(self, req: Req, reason: str, now: float) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rejected += 1
        self.tiers.rejected[req.tier] += 1
        if req.pool >= 0:
            self.pools_stats.rejected[req.pool] += 1
        self._depart(now, now - req.arrival)

    def _depart(self, t: float, sojourn: float) -> None:
        self.in_system -= 1
        self.sojourn += sojourn
        self._bin_departures(t, 1)

    # ---- one lane's scheduler (Python path) -----------------------------------------

    def _schedule(self, r: int) -> None:
        t = float(self.clock[r])
        s = int(self.step[r])
        heap = self.heaps[r]
        if heap and heap[0][0] <= s:
            self._complete_due(r, heap, s, t)
        self.next_done[r] = heap[0][0] if heap else NEVER
        cap = self.kv_cap[r]
        n_dec = int(self.n_dec[r])
        e = float(self.adv[r])
        k = int(self.verify[r])
        while self.kv[r] + n_dec * e > cap and self.n_seqs[r] > 0:
            self._preempt_last(r, t)
            n_dec = int(self.n_dec[r])
        budget = int(self.budget[r]) - n_dec * (1 + k)
        kv = float(self.kv[r])
        pre = 0
        att = 0.0
        fin: list[Req] = []
        pq = self.prefill_q[r]
        while pq:
            keep = []
            for req in pq:
                c = min(req.need, budget, int(cap - kv - n_dec * e))
                if c > 0:
                    kv += c
                    req.need -= c
                    req.kv += c
                    budget -= c
                    pre += c
                    att += c * req.att
                (fin if req.need == 0 else keep).append(req)
            pq[:] = keep
            if pre or n_dec or not pq:
                break
            # Only partial prompts, and no KV left for any of them: free the newest.
            self.kv[r] = kv
            self._preempt_last(r, t)
            kv = float(self.kv[r])
        q = self.waiting[r]
        if q and budget > 0:
            n_seqs = int(self.n_seqs[r])
            max_seqs = int(self.max_seqs[r])
            reserve = float(self.watermark[r])
            pool = int(self.lane_pool[r])
            cache = self.att_cache[pool]
            running = self.running[r]
            while q and budget > 0 and n_seqs < max_seqs:
                req = q[0]
                if req.ready > t:
                    break
                c = min(req.need, budget)
                free = cap - kv - n_dec * e - (reserve if n_seqs else 0.0)
                if c > free:
                    self.blocked[r] = True
                    break
                q.popleft()
                self.n_wait[r] -= 1
                n_seqs += 1
                running[req.id] = req
                if req.admit_t < 0:
                    req.admit_t = t
                plen = req.need
                a = cache.get(plen)
                if a is None:
                    a = prefill_attention_per_token(self.pools[pool].model, plen)
                    cache[plen] = a
                req.att = a
                kv += c
                req.need -= c
                req.kv += c
                budget -= c
                pre += c
                att += c * a
                (fin if req.need == 0 else pq).append(req)
            self.n_seqs[r] = n_seqs
            if q and (n_seqs >= max_seqs or self.budget[r] <= n_dec * (1 + k)
                      ) and q[0].ready <= t:
                # Full batch or token budget: nothing changes until a sequence leaves.
                self.blocked[r] = True
            self.wait_head[r] = q[0].ready if q else np.inf
        self.kv[r] = kv
        self.prefilling[r] = bool(pq)
        self.pre_tok[r] = pre
        self.pre_att[r] = att
        if fin:
            self.finishing.append((r, fin))

    def _enter_decode(self, r: int, reqs: list[Req]) -> None:
        """Prompts whose last chunk ran in the iteration that just ended: that iteration
        produced their next token; they decode from the next one on."""
        t = float(self.clock[r])
        s = int(self.step[r])
        heap = self.heaps[r]
        n_new = 0
        ctx = 0
        for req in reqs:
            req.gen += 1
            if req.first_t < 0:
                req.first_t = t
            if req.gen >= req.out:
                self._complete(r, req, t, decoding=False)
                continue
            n_new += 1
            ctx += req.inp + req.gen
            req.kv += 1
            req.enter = s
            req.gen_entry = req.gen
            heapq.heappush(heap, (s + self._steps(r, req.out - req.gen), req.id, req,
                                  req.epoch))
        if n_new:
            self.n_dec[r] += n_new
            self.dec_ctx[r] += ctx
            self.kv[r] += n_new
        self.next_done[r] = heap[0][0] if heap else NEVER

    def _complete_due(self, r: int, heap: list, s: int, t: float) -> None:
        """Every decoding sequence of lane ``r`` whose last token came at step ``s``."""
        running = self.running[r]
        b = self.buf
        pop = heapq.heappop
        n = 0
        ctx = 0
        e = float(self.adv[r])
        while heap and heap[0][0] <= s:
            d, _, req, ep = pop(heap)
            if ep != req.epoch:
                continue  # preempted since it was scheduled
            n += 1
            # its context (and KV) at the end, as accumulated: inp + out when plain
            ctx += req.inp + req.gen_entry + e * (d - req.enter)
            del running[req.id]
            b.tier.append(req.tier)
            b.pool.append(req.pool)
            first = req.first_t
            b.ttft.append(first - req.arrival)
            b.tpot.append((t - first) / (req.out - 1))  # decoders have out >= 2
            b.e2e.append(t - req.arrival)
            b.queue.append(req.admit_t - req.arrival)
            b.out.append(req.out)
            b.inp.append(req.inp)
            self.sojourn += t - req.arrival
        if n:
            self.n_dec[r] -= n
            self.dec_ctx[r] -= ctx
            self.kv[r] -= ctx
            self.n_seqs[r] -= n
            self.outstanding[r] -= n
            self.blocked[r] = False
            self.completed += n
            self.in_system -= n
            self._bin_departures(t, n)

    def _bin_departures(self, t: float, n: int) -> None:
        i = int(t * self.inv_fine)
        dep = self.departures
        if i >= len(dep):
            dep.extend([0] * (i + 1 - len(dep)))
        dep[i] += n
        if t > self.last_event:
            self.last_event = t

    def _complete(self, r: int, req: Req, t: float, decoding: bool) -> None:
        if decoding:
            grown = float(self.adv[r]) * (int(self.step[r]) - req.enter)
            self.n_dec[r] -= 1
            self.dec_ctx[r] -= req.inp + req.gen_entry + grown
            self.kv[r] -= req.kv + grown
        else:
            self.kv[r] -= req.kv
        self.n_seqs[r] -= 1
        self.outstanding[r] -= 1
        self.blocked[r] = False
        del self.running[r][req.id]
        b = self.buf
        b.tier.append(req.tier)
        b.pool.append(req.pool)
        b.ttft.append(req.first_t - req.arrival)
        b.tpot.append((t - req.first_t) / (req.out - 1) if req.out > 1 else math.nan)
        b.e2e.append(t - req.arrival)
        b.queue.append(req.admit_t - req.arrival)
        b.out.append(req.out)
        b.inp.append(req.inp)
        self.completed += 1
        self._depart(t, t - req.arrival)

    def _preempt_last(self, r: int, t: float) -> None:
        """Recompute preemption of the most recently admitted sequence (vLLM's choice)."""
        _, req = self.running[r].popitem()
        if req.enter >= 0:
            grown = float(self.adv[r]) * (int(self.step[r]) - req.enter)
            req.gen = req.gen_entry + math.floor(grown)  # the whole tokens it had
            self.n_dec[r] -= 1
            self.dec_ctx[r] -= req.inp + req.gen_entry + grown
            self.kv[r] -= req.kv + grown
            req.enter = -1
        else:
            self.prefill_q[r].remove(req)
            self.kv[r] -= req.kv
        req.epoch += 1
        req.kv = 0
        req.need = req.inp + req.gen
        self.n_seqs[r] -= 1
        self.waiting[r].appendleft(req)
        self.n_wait[r] += 1
        self.wait_head[r] = min(req.ready, t)
        self.preempt[self.lane_pool[r]] += 1
        self.prefilling[r] = bool(self.prefill_q[r])

    # ---- rounds: every lane inside the window runs one iteration ----------------------

    def _advance(self, end: float) -> None:
        clock, up, blocked = self.clock, self.up, self.blocked
        while True:
            work = (self.n_seqs > 0) | ((self.wait_head < end) & ~blocked)
            idx = np.flatnonzero(work & up & (clock < end))
            if idx.size == 0:
                return
            clk = clock[idx]
            wh = self.wait_head[idx]
            idle = (self.n_seqs[idx] == 0) & (wh > clk)
            if idle.any():
                clk = np.where(idle, wh, clk)
                clock[idx] = clk
            slow = ((self.next_done[idx] <= self.step[idx]) | self.prefilling[idx]
                    | ((wh <= clk) & ~blocked[idx])
                    | (self.kv[idx] + self.n_dec[idx] * self.adv[idx] > self.kv_cap[idx]))
            slow_idx = idx[slow]
            dec = self.n_dec[idx]
            if slow_idx.size:
                for r in slow_idx.tolist():
                    self._schedule(r)
                dec = self.n_dec[idx]
                pre = self.pre_tok[idx]
                run = (dec > 0) | (pre > 0)
                if not run.all():
                    # Nothing to run: completions emptied the lane, or admission is blocked.
                    stuck = idx[~run]
                    blocked[stuck[(self.n_seqs[stuck] == 0)
                                  & (self.wait_head[stuck] <= clock[stuck])]] = True
                    idx, dec, pre = idx[run], dec[run], pre[run]
                    if idx.size == 0:
                        continue
                pre_att = self.pre_att[idx]
            else:
                # Decode-only lanes: every one has sequences, none prefills.
                pre = pre_att = 0.0
            decf = dec.astype(float)
            ctx = self.dec_ctx[idx] / np.maximum(decf, 1.0)
            dt = self.cost.iteration_s(idx, decf, ctx, pre, pre_att)
            spec = np.flatnonzero(self.verify[idx] > 0)
            for j in spec.tolist():
                dt[j] = self._spec_s(int(idx[j]), float(decf[j]), float(ctx[j]),
                                     float(np.broadcast_to(pre, idx.shape)[j]),
                                     float(np.broadcast_to(pre_att, idx.shape)[j]))
            grow = decf * self.adv[idx]
            clock[idx] += dt
            self.busy[idx] += dt
            self.step[idx] += 1
            self.dec_ctx[idx] += grow
            self.kv[idx] += grow
            if slow_idx.size:
                self.pre_tok[slow_idx] = 0.0
                self.pre_att[slow_idx] = 0.0
            if self.finishing:
                fin, self.finishing = self.finishing, []
                for r, reqs in fin:
                    self._enter_decode(r, reqs)

    def _steps(self, r: int, left: int) -> int:
        """Iterations a sequence with ``left`` tokens to go decodes on lane ``r``."""
        e = float(self.adv[r])
        return left if e == 1.0 else math.ceil(left / e)

    def _spec_s(self, r: int, dec: float, ctx: float, pre: float, pre_att: float) -> float:
        """One speculative iteration of lane ``r``: the target's step with ``k``
        verify positions per decoding sequence (prompt tokens of a prompt ``2 ctx``
        long), plus the drafter's first step (with the prompt tokens) and ``k - 1``
        more over the decoding sequences."""
        spec = self.cost.spec
        att = spec.att[:, r]
        k = int(self.verify[r])
        n = 2.0 * ctx
        pairs_full = n * (n + 1) / 2.0
        pairs_sliding = pairs_full
        w = att[kernels.V_WINDOW]
        if w > 0 and n > w:
            pairs_sliding = w * (w + 1) / 2.0 + (n - w) * w
        per_tok = att[kernels.V_COEF] * (att[kernels.V_FULL] * pairs_full
                                         + att[kernels.V_SLIDING] * pairs_sliding) / max(n, 1.0)
        v = dec * k
        one = np.array([r], dtype=np.int64)

        def step(table: np.ndarray, d: float, p: float, a: float, sliding: bool,
                 moe: bool) -> float:
            return float(kernels.iteration_times(
                table, one, np.array([d]), np.array([ctx]), np.array([p]), np.array([a]),
                sliding, moe)[0])

        t = step(self.cost.table, dec, pre + v, pre_att + v * per_tok, self.cost.sliding,
                 self.cost.moe)
        d_att = pre_att * att[kernels.D_ATT]
        if dec > 0:
            t += step(spec.draft, dec, pre, d_att, True, True)
            if k > 1:
                t += (k - 1) * step(spec.draft, dec, 0.0, 0.0, True, True)
        elif pre > 0:
            t += step(spec.draft, 0.0, pre, d_att, True, True)
        return t

    # ---- shocks -------------------------------------------------------------------------

    def _lanes_of(self, f: Failure) -> list[int]:
        out: list[int] = []
        for p in self.pools:
            n = f.replicas_of(p.unit)
            if n:
                out.extend(range(p.first_lane, p.first_lane + n * p.lanes_per_replica))
        return out

    def _fail(self, f: Failure, t: float) -> None:
        victims: list[Req] = []
        for r in self._lanes_of(f):
            self.down_count[r] += 1
            if self.down_count[r] > 1:
                continue
            victims.extend(self.running[r].values())
            victims.extend(self.waiting[r])
            self._reset_lane(r)
            self.up[r] = False
            self.outstanding[r] = np.inf
        self._refresh_states()
        victims.sort(key=lambda q: (q.arrival, q.id))
        for req in victims:
            # Pools count every request moved away; tiers count each request once.
            self.pools_stats.retried[req.pool] += 1
            if req.retries == 0:
                self.retried += 1
                self.tiers.retried[req.tier] += 1
            req.retries += 1
            self.retries += 1
            req.epoch += 1
            req.gen = 0
            req.need = req.inp
            req.kv = 0
            req.enter = -1
            req.first_t = -1.0
            req.admit_t = -1.0
            req.ready = t
            req.pool = -1
            self._route(req, t)

    def _reset_lane(self, r: int) -> None:
        self.running[r].clear()
        self.waiting[r].clear()
        self.prefill_q[r].clear()
        self.heaps[r].clear()
        self.n_dec[r] = 0
        self.dec_ctx[r] = 0.0
        self.n_seqs[r] = 0
        self.n_wait[r] = 0
        self.kv[r] = 0.0
        self.next_done[r] = NEVER
        self.prefilling[r] = False
        self.wait_head[r] = np.inf
        self.blocked[r] = False
        self.pre_tok[r] = 0.0
        self.pre_att[r] = 0.0

    def _recover(self, f: Failure, t: float) -> None:
        for r in self._lanes_of(f):
            self.down_count[r] -= 1
            if self.down_count[r] == 0:
                self.up[r] = True
                self.clock[r] = t
                self.outstanding[r] = 0.0
        self._refresh_states()

    def _set_price(self, pc: PriceChange, t: float) -> None:
        for p in self.pools:
            if pc.matches(p.unit):
                self.price[p.index] = pc.usd_per_chip_hour
        self._refresh_states()

    # ---- samples ------------------------------------------------------------------------

    def _sample(self) -> None:
        if not self.pools:
            return
        st = self.pool_starts
        up = self.up
        cols = {
            "running": np.add.reduceat(self.n_seqs, st),
            "waiting": np.add.reduceat(self.n_wait, st),
            "kv_used_tokens": np.add.reduceat(np.where(up, self.kv, 0.0), st),
            "busy_s": np.add.reduceat(self.busy, st),
            "routed": self.routed.copy(),
            "preemptions": self.preempt.copy(),
        }
        for p in self.pools:
            ser = self.series[p.id]
            for c, v in cols.items():
                ser[c].append(float(v[p.index]))

    # ---- main loop ----------------------------------------------------------------------

    def run(self) -> RunRecord:
        wall0 = time.perf_counter()
        w = self.w
        n = len(w)
        sync = self.opt.sync_s
        ss = self.sample_s
        self.tiers = GroupStats.empty(self.tier_names)
        self.pools_stats = GroupStats.empty([p.id for p in self.pools])
        self.buf = CompletionBuffer()
        self.reasons: dict[str, int] = {}
        self.completed = self.rejected = self.retried = self.retries = 0
        self.in_system = 0
        self.sojourn = 0.0
        self.departures: list[int] = []
        self.last_event = 0.0
        self.routed = np.zeros(self.n_pools, dtype=np.int64)
        self.series = {p.id: {c: [] for c in SERIES_COLUMNS} for p in self.pools}
        events: list[tuple[float, int, int, object]] = []  # (t, order, seq, shock)
        for j, f in enumerate(self.failures):
            events.append((f.start, 1, j, f))
            if f.end is not None:
                events.append((f.end, 0, j, ("recover", f)))
        for j, pc in enumerate(self.prices):
            events.append((pc.start, 2, j, pc))
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        ei = 0
        arrival = w.arrival_s
        key_tier = self.key_tier.tolist()
        max_time = self.opt.max_time_s if self.opt.max_time_s is not None else (
            (float(arrival[-1]) if n else 0.0) + 7 * 86400.0)
        progress = self.opt.progress
        i = 0
        now = 0.0
        next_sample = ss
        n_samples = 0
        self._refresh_states()
        while True:
            # Shocks due now.
            while ei < len(events) and events[ei][0] <= now + 1e-12:
                _, order, _, ev = events[ei]
                ei += 1
                if order == 0:
                    self._recover(ev[1], now)  # type: ignore[index]
                elif order == 1:
                    self._fail(ev, now)  # type: ignore[arg-type]
                else:
                    self._set_price(ev, now)  # type: ignore[arg-type]
            if i >= n and self.in_system == 0:
                break
            if now >= max_time:
                self._stop_all(now)
                break
            next_event = events[ei][0] if ei < len(events) else math.inf
            # Windows sit on the grid k * sync_s; empty ones are skipped (lanes run
            # across them), so windows with arrivals start on the grid in every run.
            end = (math.floor(now / sync + 1e-9) + 1) * sync
            if i < n:
                end = max(end, math.floor(float(arrival[i]) / sync + 1e-9) * sync)
            else:
                end = max(end, next_sample)
            end = min(end, next_event, next_sample)
            j = int(np.searchsorted(arrival, end, side="left"))
            if j > i:
                self._refresh_states()
                arr = arrival[i:j].tolist()
                inp = w.input_tokens[i:j].tolist()
                out = w.output_tokens[i:j].tolist()
                keys = w.key[i:j].tolist()
                arrived = self.tiers.arrived
                reqs = []
                for q in range(j - i):
                    k = keys[q]
                    tier = key_tier[k]
                    reqs.append(Req(i + q, arr[q], inp[q], out[q], k, tier))
                    arrived[tier] += 1
                # Pools key by key (each key's requests in arrival order), then lanes
                # and queues in arrival order.
                picks: dict[int, int | None] = {}
                for q in np.argsort(w.key[i:j], kind="stable").tolist():
                    picks[q] = self._pick(reqs[q], arr[q])
                for q in range(j - i):
                    pi = picks[q]
                    if pi is not None:
                        self._place(reqs[q], pi, arr[q])
                self.in_system += j - i
                i = j
            self._advance(end)
            if len(self.buf) >= CompletionBuffer.FLUSH_AT:
                self.buf.flush(self.tiers, self.pools_stats, self.slo_ttft, self.slo_tpot)
                if progress is not None:
                    progress(self.completed + self.rejected, n)  # type: ignore[operator]
            now = end
            while next_sample <= now + 1e-9:
                self._sample()
                n_samples += 1
                next_sample = (n_samples + 1) * ss
        end_s = max(self.last_event, now if n == 0 else 0.0)
        while n_samples * ss < end_s - 1e-9:
            self._sample()
            n_samples += 1
        self.buf.flush(self.tiers, self.pools_stats, self.slo_ttft, self.slo_tpot)
        for p in self.pools:
            self.pools_stats.arrived[p.index] = self.routed[p.index]
        if progress is not None:
            progress(self.completed + self.rejected, n)  # type: ignore[operator]
        return self._record(end_s, n_samples, time.perf_counter() - wall0)

    def _stop_all(self, t: float) -> None:
        for r in range(self.n_lanes):
            for req in list(self.running[r].values()) + list(self.waiting[r]):
                self._reject(req, UNFINISHED, t)
            if self.running[r] or self.waiting[r]:
                self._reset_lane(r)

    def _record(self, end_s: float, n_samples: int, wall_s: float) -> RunRecord:
        ss = self.sample_s
        n_fine = max(len(self.departures), math.ceil(end_s * self.inv_fine) + 1)
        arr = np.bincount((self.w.arrival_s * self.inv_fine).astype(np.int64),
                          minlength=n_fine) if len(self.w) else np.zeros(n_fine, np.int64)
        dep = np.zeros(max(n_fine, arr.size), np.int64)
        dep[:len(self.departures)] = self.departures
        arr = np.pad(arr, (0, dep.size - arr.size))
        info = {p.id: p.info() for p in self.pools}
        return RunRecord(
            tier_names=self.tier_names,
            tier_slo={t.name: (t.slo_ttft_s, t.slo_tpot_s) for t in self.fleet.plan.tiers},
            tiers=self.tiers, pools=self.pools_stats, pool_info=info,
            reject_reasons=dict(self.reasons), requests=len(self.w),
            completed=self.completed, rejected=self.rejected, retried=self.retried,
            retries=self.retries,
            preemptions={p.id: int(self.preempt[p.index]) for p in self.pools},
            busy_s={p.id: float(self.busy[p.lane_slice].sum()) for p in self.pools},
            sojourn_s=self.sojourn, sample_s=ss, series=self.series,
            fine_s=self.fine_s, arrivals_fine=arr, departures_fine=dep,
            failures=list(self.failures), prices=list(self.prices), end_s=end_s,
            wall_s=wall_s,
            source=self.w.source, policy=self.opt.policy, seed=self.opt.seed,
        )


def kv_blocks(tokens: float) -> int:
    """KV blocks that hold ``tokens`` (whole blocks of ``BLOCK_TOKENS``)."""
    return int(math.ceil(tokens / BLOCK_TOKENS))
