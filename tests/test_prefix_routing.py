"""Cache-affinity (prefix-aware) routing against round-robin, on the Mooncake sample."""

from __future__ import annotations

import random

import pytest

from tokenfleet.routing.policies import PoolState, PrefixAffinity, RoundRobin
from tokenfleet.workload.blockcache import LruBlockCache
from tokenfleet.workload.readers import read_trace
from tokenfleet.workload.samples import sample_path


def _pools(n: int) -> list[PoolState]:
    return [PoolState(pool=f"p{i}", share=1.0 / n, usd_per_replica_hour=1.0, replicas=1,
                      healthy_replicas=1, in_flight=0, queued=0, max_in_flight=64)
            for i in range(n)]


def _hit_rate(policy: str, n_pools: int, capacity_blocks: int) -> float:
    """Route the sample request by request; each pool serves from its own LRU cache."""
    tr = read_trace(sample_path("mooncake_conversation"))
    pools = _pools(n_pools)
    caches = [LruBlockCache(capacity_blocks) for _ in pools]
    rr, pa = RoundRobin(), PrefixAffinity(capacity_blocks=capacity_blocks)
    rng = random.Random(0)
    hit = 0
    for i in range(len(tr)):
        blocks = [int(h) for h in tr.prefix_blocks(i)]
        j = pa.choose_prefix(pools, blocks, rng) if policy == "affinity" else rr.choose(pools, rng)
        assert j is not None
        pools[j].queued = 0  # requests finish at once: only the cache decides
        hit += caches[j].serve(blocks, int(tr.input_tokens[i]), tr.prefix_block_tokens)
    return hit / int(tr.input_tokens.sum())


@pytest.mark.parametrize("n_pools,capacity", [(4, 2000), (8, 500)])
def test_cache_affinity_beats_round_robin(n_pools: int, capacity: int) -> None:
    rr = _hit_rate("round-robin", n_pools, capacity)
    aff = _hit_rate("affinity", n_pools, capacity)
    one = _hit_rate("round-robin", 1, capacity * n_pools)  # one shared cache of the same size
    assert aff > 1.5 * rr
    assert aff <= one + 0.05  # splitting a cache cannot beat sharing it by much


def test_affinity_is_deterministic() -> None:
    assert _hit_rate("affinity", 4, 2000) == _hit_rate("affinity", 4, 2000)


def test_load_gap_keeps_a_hot_prefix_from_piling_up() -> None:
    pools = _pools(2)
    # load is outstanding over the concurrency limit (64): a gap of 2 requests
    pa = PrefixAffinity(capacity_blocks=100, max_load_gap=2.0 / 64)
    rng = random.Random(0)
    picks = [pa.choose_prefix(pools, [1, 2, 3], rng) for _ in range(10)]
    # the first pool takes the prefix; once 2 requests ahead, the other gets the overflow
    assert picks[0] == 0 and 1 in picks
    assert abs(pools[0].queued - pools[1].queued) <= 3


def test_no_healthy_pool_and_no_hashes() -> None:
    pools = _pools(2)
    for p in pools:
        p.healthy_replicas = 0
    assert PrefixAffinity().choose_prefix(pools, [1], random.Random(0)) is None
    pools = _pools(3)
    pools[0].queued = 5
    assert PrefixAffinity().choose_prefix(pools, [], random.Random(0)) == 1  # least loaded


def test_index_matches_each_cache_leading_run() -> None:
    """The inverted index answers what asking every target's cache would, through
    evictions and resizes (random chained prefixes, small caches)."""
    from tokenfleet.routing.affinity import PrefixIndex

    rng = random.Random(3)
    idx = PrefixIndex(5, 12)
    roots = list(range(6))
    for step in range(3000):
        root = rng.choice(roots)
        blocks = [root * 1000 + j for j in range(rng.randint(1, 9))]
        t = rng.randrange(5)
        if step % 97 == 0:
            idx.resize(t, rng.randint(0, 20))
        want = {u: c.leading_run(blocks) for u, c in enumerate(idx.caches)}
        assert idx.matches(blocks) == {u: n for u, n in want.items() if n}
        idx.serve(t, blocks, 512 * len(blocks), 512)
    held = {h for c in idx.caches for h in c._blocks}
    assert set(idx._owners) == held  # nothing evicted lingers in the index


def test_pick_affine_load_bound_and_floor() -> None:
    from tokenfleet.routing.affinity import pick_affine

    m = {0: 8, 1: 5, 2: 1}
    assert pick_affine(m, [0, 1, 2, 3], [0.2, 0.1, 0.0, 0.0], 10) == 0  # longest run
    # lane 0 is more than the gap above the emptiest: the next best within it
    assert pick_affine(m, [0, 1, 2, 3], [0.9, 0.1, 0.0, 0.0], 10, max_load_gap=0.5) == 1
    assert pick_affine(m, [0, 1], [0.9, 0.1], 10, max_load_gap=0.5, least=0.0) == 1
    assert pick_affine(m, [0, 1], [0.9, 0.8], 10, max_load_gap=0.5, least=0.0) is None
    # a run under the floor (min_match of the blocks) is no reason to pick a target
    assert pick_affine({2: 1}, [2, 3], [0.0, 0.0], 40, min_match=0.05) is None
    assert pick_affine({0: 4, 1: 4}, [0, 1], [0.3, 0.2], 10) == 1  # ties: less loaded


def test_prompt_blocks_are_chained() -> None:
    from tokenfleet.routing.affinity import prompt_blocks

    a = list(range(1300))
    b = a[:512] + [7] * 788
    ha, hb = prompt_blocks(a), prompt_blocks(b)
    assert len(ha) == 2 and len(hb) == 2  # whole blocks only
    assert ha[0] == hb[0] and ha[1] != hb[1]
    c = [9] + a[1:]  # differs in block 0: every later block differs too
    assert all(x != y for x, y in zip(prompt_blocks(c), ha, strict=True))
    assert prompt_blocks(a) == ha and prompt_blocks(a[:100]) == []
