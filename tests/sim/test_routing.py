"""Routing through the shared policies (the same objects the gateway uses)."""

from __future__ import annotations

import copy
import random

import pytest

from tokenfleet.routing.policies import POLICIES, PoolState, get_policy
from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.run import simulate
from tokenfleet.sim.traffic import planned_traffic


def _routed(plan, policy: str, duration: float = 40, rate: float | None = None):
    w = planned_traffic(plan, duration, rate, seed=9)
    s = simulate(plan, w, options=SimOptions(policy=policy, seed=1)).summary
    assert s.checks.conservation_ok
    return {p.vendor: p.requests for p in s.pools.values()}, s


def test_plan_policy_follows_shares(two_vendor_plan) -> None:
    routed, s = _routed(two_vendor_plan, "plan")
    total = sum(routed.values())
    # Expected share per vendor: the split's shares weighted by bucket peak rates.
    want = {}
    peak = sum(x.peak_requests_per_s for x in two_vendor_plan.traffic_split)
    for sp in two_vendor_plan.traffic_split:
        for pid, share in sp.shares.items():
            v = next(u.vendor for u in two_vendor_plan.units if u.pool == pid)
            want[v] = want.get(v, 0.0) + share * sp.peak_requests_per_s / peak
    for v, frac in want.items():
        assert routed[v] / total == pytest.approx(frac, abs=0.03)


def test_round_robin_alternates(two_vendor_plan) -> None:
    routed, _ = _routed(two_vendor_plan, "round-robin")
    assert abs(routed["NVIDIA"] - routed["AMD"]) <= len(two_vendor_plan.traffic_split)


def test_cost_spill_prefers_the_cheaper_pool(two_vendor_plan) -> None:
    price = {u.vendor: u.usd_per_chip_hour for u in two_vendor_plan.units}
    cheap = min(price, key=price.get)
    dear = max(price, key=price.get)
    routed, _ = _routed(two_vendor_plan, "cost-spill", rate=5.0)
    assert routed[dear] == 0 and routed[cheap] > 0  # light load fits the cheap pool
    routed, _ = _routed(two_vendor_plan, "cost-spill", duration=20, rate=2000.0)
    assert routed[dear] > 0 and routed[cheap] > routed[dear] / 10  # overload spills


@pytest.mark.parametrize("policy", ["jsq", "least-kv"])
def test_load_aware_policies_balance(two_vendor_plan, policy: str) -> None:
    routed, s = _routed(two_vendor_plan, policy)
    assert min(routed.values()) > 0.2 * sum(routed.values())
    assert s.completed == s.requests


def test_unknown_policy(two_vendor_plan) -> None:
    from tokenfleet.errors import TokenfleetError

    with pytest.raises(TokenfleetError, match="unknown routing policy"):
        _routed(two_vendor_plan, "random-walk")


def _random_pools(rng: random.Random) -> list[PoolState]:
    """A snapshot with ties in price and load, pools full, down, unplanned."""
    pools = []
    for i in range(rng.randint(1, 5)):
        replicas = rng.choice([1, 2, 4, 8])
        healthy = rng.choice([0, replicas, replicas, max(replicas // 2, 1)])
        cap = rng.choice([4, 16, 64]) * max(healthy, 1)
        pools.append(PoolState(
            pool=f"p{i}", share=rng.choice([0.0, 0.2, 0.5, 0.5]),
            usd_per_replica_hour=rng.choice([2.0, 2.0, 3.5]), replicas=replicas,
            healthy_replicas=healthy, in_flight=rng.randint(0, cap),
            queued=rng.randint(0, cap // 2), max_in_flight=cap,
            kv_used=rng.choice([0.1, 0.1, 0.7])))
    return pools


@pytest.mark.parametrize("policy", list(POLICIES))
def test_choose_many_is_choose_one_at_a_time(policy: str) -> None:
    """The batched picks (independent draws, water-filling by load) are exactly the
    gateway's one-request ``choose`` called n times, each pick queued before the next —
    the same picks, the same random draws, the same queued counts after — and what the
    policy's rule, written plainly (``_oracle``), picks."""
    rng = random.Random(5)
    for case in range(400):
        pools = _random_pools(rng)
        n = rng.choice([1, 2, 3, 7, 9, 40, 300])
        seed = rng.random()
        batch_pools, loop_pools = copy.deepcopy(pools), copy.deepcopy(pools)
        batch_policy, loop_policy = get_policy(policy), get_policy(policy)
        r1, r2 = random.Random(seed), random.Random(seed)
        got = batch_policy.choose_many(batch_pools, n, r1)
        want = []
        for _ in range(n):
            j = loop_policy.choose(loop_pools, r2)
            want.append(j)
            if j is not None:
                loop_pools[j].queued += 1
        assert got == want, (case, policy, n)
        assert [p.queued for p in batch_pools] == [p.queued for p in loop_pools]
        assert r1.random() == r2.random()  # the same number of draws
        # ... and the plain statement of the rule, independently of choose_many.
        plain, r3 = copy.deepcopy(pools), random.Random(seed)
        for q, j in enumerate(want):
            assert _oracle(policy, plain, r3, q) == j, (case, policy, n, q)
            if j is not None:
                plain[j].queued += 1


def test_choose_leaves_the_snapshot_alone() -> None:
    pools = _random_pools(random.Random(1))
    before = copy.deepcopy(pools)
    for name in POLICIES:
        get_policy(name).choose(pools, random.Random(0))
    assert pools == before


def _oracle(policy: str, pools: list[PoolState], rng: random.Random, turn: int) -> int | None:
    """Each policy's rule for one request, written plainly from its docstring (no
    batching, no shortcuts): the independent check of ``choose_many``'s fast paths."""
    healthy = [i for i, p in enumerate(pools) if p.healthy_replicas > 0]

    def least_loaded(idx: list[int]) -> int:
        return min(idx, key=lambda i: (pools[i].in_flight + pools[i].queued)
                   / max(pools[i].healthy_replicas, 1))

    def spill() -> int | None:
        room = [i for i in healthy
                if pools[i].in_flight + pools[i].queued < pools[i].max_in_flight]
        if room:
            usd = min(pools[i].usd_per_replica_hour for i in room)
            return least_loaded([i for i in room if pools[i].usd_per_replica_hour == usd])
        return least_loaded(healthy) if healthy else None

    if policy == "plan":
        planned = [i for i in healthy if pools[i].share > 0
                   and pools[i].in_flight + pools[i].queued < pools[i].max_in_flight]
        if planned:
            return rng.choices(planned, weights=[pools[i].share for i in planned])[0]
        return spill()
    if policy == "cost-spill":
        return spill()
    if not healthy:
        return None
    if policy == "round-robin":
        return healthy[turn % len(healthy)]
    if policy in ("jsq", "prefix-affinity"):  # prefix-affinity without blocks: by load
        return least_loaded(healthy)
    assert policy == "least-kv"
    least = min(pools[i].kv_used for i in healthy)
    return least_loaded([i for i in healthy if pools[i].kv_used == least])
