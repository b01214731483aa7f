"""The compiled prefix caches (sim/prefix_kernels.py) against their Python reference
(routing.affinity.PrefixIndex over workload.blockcache.LruBlockCache, and
sim.prefix_cache.LaneAffinity / ReferencePrefixCaches): the same random operations,
windows and whole simulations give equal hits, choices and cache contents."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfleet.routing.affinity import PrefixIndex
from tokenfleet.sim import prefix_kernels as pk
from tokenfleet.sim.prefix_cache import LaneAffinity, LanePrefixCaches, ReferencePrefixCaches

# Block hashes: small sequential ones (as Mooncake's), 63-bit ones (as prompt_blocks'),
# and ones with the top bit set (uint64 hashes seen as int64): few, so prompts share and
# repeat blocks.
ALPHABET = [0, 1, 2, 3, 7, 8, 1 << 40, (1 << 62) + 5, -(1 << 63), -3, 2**63 - 1, 12345]


def _arr(blocks: list[int]) -> np.ndarray:
    return np.asarray(blocks, dtype=np.int64)


def _room(c: pk.Caches, n: int) -> pk.Caches:
    return pk.grown(c, n) if pk.free_entries(c) < n else c


def _same(c: pk.Caches, ref: PrefixIndex) -> None:
    for t, cache in enumerate(ref.caches):
        assert pk.contents(c, t) == list(cache._blocks)  # same blocks, same LRU order
        assert int(c.n_held[t]) == len(cache) and int(c.cap[t]) == cache.capacity_blocks
    assert int(c.meta[pk.LIVE]) == sum(len(x) for x in ref.caches)
    # each block's owner list: the lanes holding it (PrefixIndex's inverted index)
    for h in {h for x in ref.caches for h in x._blocks} | {10**15}:
        assert pk.owners(c, h) == sorted(ref._owners.get(h, ()))


blocks_st = st.lists(st.sampled_from(ALPHABET), max_size=10)
op_st = st.one_of(
    st.tuples(st.just("resize"), st.integers(0, 3), st.integers(-2, 9)),
    st.tuples(st.just("touch"), st.integers(0, 3), blocks_st),
    st.tuples(st.just("serve"), st.integers(0, 3), blocks_st, st.integers(0, 6000)),
    st.tuples(st.just("matches"), blocks_st),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_st, max_size=60), st.integers(0, 6))
def test_random_operations_match_the_python_index(ops, cap0) -> None:
    """Resizes (to 0 and below it), touches and serves of prompts longer than the cache,
    with repeated blocks and blocks shared between lanes: same contents in the same LRU
    order after every step, same hits, same leading runs per lane."""
    ref = PrefixIndex(4, cap0)
    c = pk.grown(pk.new_caches(4, 16), 0)  # a small start: growing is exercised too
    for t in range(4):
        pk.resize(c, t, cap0)
    for op in ops:
        if op[0] == "resize":
            ref.resize(op[1], op[2])
            pk.resize(c, op[1], op[2])
        elif op[0] == "touch":
            c = _room(c, len(op[2]))
            ref.touch(op[1], op[2])
            pk.touch(c, op[1], _arr(op[2]), 0, len(op[2]))
        elif op[0] == "serve":
            c = _room(c, len(op[2]))
            want = ref.serve(op[1], op[2], op[3], 512)
            assert pk.serve(c, op[1], _arr(op[2]), 0, len(op[2]), op[3], 512) == want
        else:
            b = _arr(op[1])
            runs = {t: pk.leading_run(c, t, b, 0, b.size) for t in range(4)}
            assert ref.matches(op[1]) == {t: n for t, n in runs.items() if n}
        _same(c, ref)


def test_many_operations_on_many_lanes_through_growth_and_deletions() -> None:
    """A long run (chained prefixes of conversations, capacities moving as free KV
    does) keeps the table's backward-shift deletions and the growth exact."""
    rng = np.random.default_rng(5)
    ref, c = PrefixIndex(12, 0), pk.new_caches(12, 16)
    for step in range(4000):
        t = int(rng.integers(12))
        if step % 7 == 0:
            cap = int(rng.integers(0, 40))
            ref.resize(t, cap)
            pk.resize(c, t, cap)
        root = int(rng.integers(30))
        blocks = [root * 1_000_003 + j for j in range(int(rng.integers(0, 25)))]
        c = _room(c, len(blocks))
        want = ref.serve(t, blocks, 512 * len(blocks), 512)
        assert pk.serve(c, t, _arr(blocks), 0, len(blocks), 512 * len(blocks), 512) == want
        if step % 500 == 0:
            _same(c, ref)
    _same(c, ref)
    # every live entry is found through the table, and nothing else is
    for t in range(12):
        for h in list(ref.caches[t]._blocks):
            assert pk.find(c, t, h) >= 0
    assert pk.find(c, 0, 10**12) == -1


def test_a_full_small_table_keeps_finding_what_it_holds() -> None:
    """The smallest table (64 slots) at half load (16 entries, 16 owner-list heads),
    for many insertions and evictions: probe runs wrap past its end and deletions shift
    records back across it; every block a lane holds stays findable, nothing else is
    found, and each block's owner list is the lanes holding it."""
    rng = np.random.default_rng(11)
    ref, c = PrefixIndex(2, 0), pk.new_caches(2, 16)
    assert c.table.shape[0] == 64
    for step in range(6000):
        t = int(rng.integers(2))
        if step % 3 == 0:
            cap = int(rng.integers(0, 7))
            ref.resize(t, cap)
            pk.resize(c, t, cap)
        blocks = rng.integers(0, 40, int(rng.integers(0, 5))).tolist()
        want = ref.serve(t, blocks, 512 * len(blocks), 512)
        assert pk.serve(c, t, _arr(blocks), 0, len(blocks), 512 * len(blocks), 512) == want
        for u in range(2):
            held = set(ref.caches[u]._blocks)
            assert [h for h in range(40) if pk.find(c, u, h) >= 0] == sorted(held)
        for h in range(40):
            assert pk.owners(c, h) == sorted(ref._owners.get(h, ()))
    assert c.table.shape[0] == 64  # never grew: the test stayed on the small table


def _affinity(rng: np.random.Generator, n_lanes: int, n_keys: int) -> LaneAffinity:
    keys = [np.sort(rng.choice(n_lanes, int(rng.integers(0, n_lanes + 1)), replace=False))
            .astype(np.int64) for _ in range(n_keys)]
    conc = rng.choice([0.5, 1.0, 3.0, 8.0], n_lanes)
    kv = rng.choice([2000.0, 9000.0, 50000.0], n_lanes)
    return LaneAffinity(keys, conc, kv, max_load_gap=float(rng.choice([0.0, 0.25, 0.5])),
                        min_match=float(rng.choice([0.0, 0.05, 0.3])))


@pytest.mark.parametrize("seed", range(6))
def test_choice_matches_lane_affinity(seed: int) -> None:
    """``choose`` against ``LaneAffinity.choose`` on random caches, loads (lanes down:
    infinite), KV sizes and keys; loads drawn from few values, so ties happen."""
    rng = np.random.default_rng(seed)
    n_lanes = 9
    aff = _affinity(rng, n_lanes, 4)
    ref, c = PrefixIndex(n_lanes, 0), pk.new_caches(n_lanes)
    key_off = np.concatenate([[0], np.cumsum([k.size for k in aff.key_lanes])]).astype(np.int64)
    key_lanes = np.concatenate(aff.key_lanes).astype(np.int64)
    chosen = 0
    mark = np.zeros(n_lanes, bool)
    for _ in range(1500):
        t = int(rng.integers(n_lanes))
        cap = int(rng.integers(0, 30))
        ref.resize(t, cap)
        pk.resize(c, t, cap)
        root = int(rng.integers(8))
        n = int(rng.integers(1, 20))
        blocks = [7] + [root * 100 + j for j in range(n - 1)]  # a shared first block
        load = rng.choice([0.0, 0.1, 0.3, 0.6, 1.0, np.inf], n_lanes)
        size = int(rng.choice([1000, 5000, 20000, 60000]))
        k = int(rng.integers(len(aff.key_lanes)))
        want = aff.choose(ref, k, size, blocks, load)
        got = pk.choose(c, _arr(blocks), 0, n, key_lanes, key_off[k], key_off[k + 1],
                        size, load, aff.lane_kv, aff.max_load_gap, aff.min_match, mark)
        assert not mark.any()
        assert got == want
        chosen += want >= 0
        c = _room(c, n)
        ref.serve(t, blocks, 512 * n, 512)
        pk.serve(c, t, _arr(blocks), 0, n, 512 * n, 512)
    assert chosen > 100  # the choice was exercised, not only its -1


def _workload(rng: np.random.Generator, n_req: int) -> SimpleNamespace:
    """Requests, most with chained prefix hashes (conversations of a few roots, a
    shared system block; some empty), some without (row -1)."""
    rows, off, hashes = [], [0], []
    for _ in range(n_req):
        if rng.random() < 0.2:
            rows.append(-1)
            continue
        root = int(rng.integers(6))
        n = int(rng.integers(0, 14))
        hashes += [99] + [root * 1000 + j for j in range(n - 1)] if n else []
        rows.append(len(off) - 1)
        off.append(len(hashes))
    return SimpleNamespace(prefix_row=np.asarray(rows, np.int64),
                           prefix_offsets=np.asarray(off, np.int64),
                           prefix_hashes=np.asarray(hashes, np.int64).view(np.uint64),
                           prefix_block_tokens=512, has_prefix=True)


@pytest.mark.parametrize("seed", range(5))
def test_windows_match_the_reference(seed: int) -> None:
    """Random routing windows through ``prefer`` and ``place`` of both classes: same
    choices and picks, same prompts and needs left (hits taken off, and given back when
    a request is placed again after a failure), same counts and cache contents. Lanes
    go down (infinite load) and requests fail to place (lane -1)."""
    rng = np.random.default_rng(seed)
    n_lanes, n_pools, n_req = 8, 3, 400
    lane_pool = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int64)
    aff = _affinity(rng, n_lanes, 3)
    w = _workload(rng, n_req)
    fast = LanePrefixCaches(w, lane_pool, n_pools, aff)  # type: ignore[arg-type]
    fast.caches = pk.new_caches(n_lanes, 16)  # start small: grows mid-run
    slow = ReferencePrefixCaches(w, lane_pool, n_pools, aff)  # type: ignore[arg-type]
    n_slots = 64
    inp = rng.integers(1, 9000, n_req)
    s_rid = np.zeros(n_slots, np.int64)
    s_key = np.zeros(n_slots, np.int64)
    state = {k: (np.zeros(n_slots, np.int64), np.zeros(n_slots, np.int64))
             for k in ("fast", "slow")}
    for _ in range(300):
        m = int(rng.integers(1, 8))
        slots = np.sort(rng.choice(n_slots, m, replace=False)).astype(np.int64)
        rids = rng.choice(n_req, m, replace=False)  # one may come back (moved after a failure)
        s_rid[slots] = rids
        s_key[slots] = rng.integers(0, 3, m)
        picks = rng.integers(-2, n_pools, m).astype(np.int64)
        size = (inp[rids] + 200).astype(np.int64)
        outstanding = rng.choice([0.0, 1.0, 2.0, 5.0, np.inf], n_lanes)
        got = {}
        for name, caches in (("fast", fast), ("slow", slow)):
            p = picks.copy()
            got[name] = (caches.prefer(slots, p, s_rid, s_key, size, outstanding.copy()), p)
        assert got["fast"][0].tolist() == got["slow"][0].tolist()
        assert got["fast"][1].tolist() == got["slow"][1].tolist()
        lanes = np.where(rng.random(m) < 0.15, -1, rng.integers(0, n_lanes, m))
        pref = got["slow"][0]
        lanes = np.where(pref >= 0, pref, lanes).astype(np.int64)
        kv_used = rng.choice([0.0, 3000.0, 9000.0, 20000.0], n_lanes)
        kv_cap = rng.choice([0.0, 4096.0, 10000.0, 25000.0], n_lanes)
        # a new request: its whole prompt (some already part prefilled); one coming back
        # keeps what the last placement left (the hit it took is given back)
        fresh = rng.random(m) < 0.7
        done = rng.choice([0, 0, 0, 600, 5000], m)
        for name, caches in (("fast", fast), ("slow", slow)):
            s_inp, s_need = state[name]
            s_inp[slots] = np.where(fresh, inp[rids], s_inp[slots])
            s_need[slots] = np.where(fresh, np.maximum(inp[rids] - done, 0), s_need[slots])
            caches.place(slots, lanes, s_rid, s_inp, s_need, kv_used, kv_cap)
        assert state["fast"][0].tolist() == state["slow"][0].tolist()
        assert state["fast"][1].tolist() == state["slow"][1].tolist()
        assert fast.hit_tokens.tolist() == slow.hit_tokens.tolist()
        assert fast.prompt_tokens.tolist() == slow.prompt_tokens.tolist()
        assert {r: int(v) for r, v in enumerate(fast.applied) if v} == slow.applied
        _same(fast.caches, slow.index)
    assert slow.hit_tokens.sum() > 0 and slow.applied  # hits were taken, and given back


def _sim_fixture():
    from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
    from tokenfleet.sim.traffic import label_trace
    from tokenfleet.workload.readers import read_trace
    from tokenfleet.workload.samples import sample_path

    trace = read_trace(sample_path("mooncake_conversation"))
    plan = quick_plan([TierSpec("t", "llama-3.1-8b", None, None, [(12000, 350, 1.0)])],
                      [QuickPool("t", "h100-sxm", 3, count=1),
                       QuickPool("t", "mi300x", 3, count=1)], load=0.5)
    return plan, label_trace(plan, trace, tier="t")


def test_whole_simulation_matches_the_reference(monkeypatch) -> None:
    """A simulation with the compiled caches gives the answer the Python reference
    gives, with and without affinity and through a vendor outage (requests moved, their
    prompts given back and looked up again)."""
    from tokenfleet.sim import engine
    from tokenfleet.sim.engine import SimOptions
    from tokenfleet.sim.run import simulate
    from tokenfleet.sim.shocks import parse_failure

    plan, w = _sim_fixture()
    fails = [parse_failure("vendor=AMD@t=40..90")]
    cases = [(SimOptions(), []), (SimOptions(cache_affinity=False), []), (SimOptions(), fails)]
    for opt, f in cases:
        fast = simulate(plan, w, options=opt, failures=f)
        with monkeypatch.context() as mp:
            mp.setattr(engine, "LanePrefixCaches", ReferencePrefixCaches)
            slow = simulate(plan, w, options=opt, failures=f)
        assert fast.record.prefix_tokens == slow.record.prefix_tokens
        a = fast.summary.model_dump(exclude={"wall_s", "simulated_requests_per_s"})
        b = slow.summary.model_dump(exclude={"wall_s", "simulated_requests_per_s"})
        assert a == b
        assert sum(v[0] for v in fast.record.prefix_tokens.values()) > 0
        assert not f or fast.summary.retried > 0  # the outage moved requests


def _follow_caches_reference(w, out: np.ndarray, tier_paths: dict[str, list[str]]
                             ) -> np.ndarray:
    """``disagg._follow_caches`` as it was in Python, one request at a time (the rule
    its docstring states); the compiled one must move the same requests."""
    from tokenfleet.routing.affinity import MIN_MATCH

    out = out.copy()
    offsets, hashes = w.prefix_offsets, w.prefix_hashes
    tier_of = [k.tier for k in w.keys]
    held: dict[str, dict[int, int]] = {t: {} for t, ps in tier_paths.items() if len(ps) > 1}
    bit = {t: {p: 1 << j for j, p in enumerate(ps)} for t, ps in tier_paths.items()}
    for i in np.argsort(w.arrival_s, kind="stable").tolist():
        r = int(w.prefix_row[i])
        tier = tier_of[int(w.key[i])]
        seen = held.get(tier)
        if r < 0 or seen is None or out[i] not in bit[tier]:
            continue
        blocks = hashes[offsets[r]:offsets[r + 1]].tolist()
        if not blocks:
            continue
        every = (1 << len(bit[tier])) - 1
        alive, run = every, 0
        for h in blocks:
            m = seen.get(h, 0) & alive
            if not m:
                break
            alive, run = m, run + 1
        if alive != every and run >= max(MIN_MATCH * len(blocks), 1.0) \
                and not alive & bit[tier][out[i]]:
            out[i] = next(p for p, b in bit[tier].items() if alive & b)
        mine = bit[tier][out[i]]
        for h in blocks:
            seen[h] = seen.get(h, 0) | mine
    return out


@pytest.mark.parametrize("seed", range(4))
def test_following_caches_between_paths_matches_the_reference(seed: int) -> None:
    """Three tiers (three paths, one, two), paths drawn at random (some a tier does not
    have), arrival ties, requests without hashes and with none at all; enough blocks
    that the compiled record grows. Same path for every request."""
    from tokenfleet.sim.disagg import _follow_caches
    from tokenfleet.sim.traffic import RouteKey, Workload

    rng = np.random.default_rng(seed)
    n = 3000
    base = _workload(rng, n)
    # longer conversations too (a floor above one block), beyond the first table's size
    extra = [int(x) for x in rng.integers(0, 3000, 4000)]
    offsets = np.concatenate([base.prefix_offsets, base.prefix_offsets[-1] + [2000, 4000]])
    hashes = np.concatenate([base.prefix_hashes.view(np.int64), extra]).view(np.uint64)
    row = base.prefix_row.copy()
    row[rng.integers(0, n, 40)] = rng.integers(offsets.size - 3, offsets.size - 1, 40)
    keys = [RouteKey("a", "s"), RouteKey("a", "l"), RouteKey("b", "s"), RouteKey("c", "s")]
    w = Workload(np.round(np.sort(rng.random(n)) * 50, 1), np.ones(n, np.int64),
                 np.ones(n, np.int64), rng.integers(0, 4, n).astype(np.int32), keys, "t",
                 prefix_row=row, prefix_offsets=offsets.astype(np.int64), prefix_hashes=hashes)
    tier_paths = {"a": ["agg", "p1", "p2"], "b": ["agg"], "c": ["agg", "p2"]}
    out = rng.choice(np.array(["agg", "p1", "p2", "zz"], dtype=object), n)
    want = _follow_caches_reference(w, out, tier_paths)
    got = _follow_caches(w, out, tier_paths)
    assert got.tolist() == want.tolist()
    assert (want != out).sum() > 50  # requests did move
