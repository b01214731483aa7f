"""prepare's caches change nothing: the builds of the prefix fixed point sharing one
EstimateMemo give exactly the candidates that fresh builds give, and each cache answers
exactly what the call it stands in for answers (issue 14, point 2: prepare's speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.calibration import load_fit
from tokenfleet.perf.estimate import Query, estimate, layout_screen
from tokenfleet.perf.operating import UnitCache
from tokenfleet.perf.unit import Layout
from tokenfleet.plan import candidates as candidates_mod
from tokenfleet.plan.candidates import CandidateSet, EstimateMemo, query_key, screen_query
from tokenfleet.plan.planner import prepare
from tokenfleet.plan.scenario import Scenario
from tokenfleet.workload.prefix import NEVER, prefix_reuse
from tokenfleet.workload.readers import read_trace
from tokenfleet.workload.samples import sample_path


def _scenario() -> Scenario:
    """A tier with prefix hashes (re-built at its hit rate), speculative decoding and
    prefill/decode pairs over two vendors, and a tier without hashes."""
    return Scenario.model_validate({
        "name": "memo",
        "headroom": 0.0,
        "tiers": [
            {"name": "chat", "model": "llama-3.1-8b",
             "traffic": {"trace": str(sample_path("mooncake_conversation")), "scale": 20.0},
             "slo": {"ttft_s": 20.0, "tpot_s": 0.05},
             "speculative": ["draft:llama-3.2-1b"]},
            {"name": "plain", "model": "llama-3.1-8b",
             "traffic": {"rate_per_s": 2, "mix": [{"input_len": 500, "output_len": 100,
                                                   "share": 1}]},
             "slo": {"tpot_s": 0.1}}],
        "supply": [{"accelerator": "h100-sxm", "cloud": "runpod", "region": "r",
                    "max_chips": 512, "counts": [1, 2]},
                   {"accelerator": "mi300x", "cloud": "tensorwave", "region": "r",
                    "max_chips": 512, "counts": [1]}],
    })


def _digest(cs: CandidateSet) -> dict:
    """Everything in ``cs`` the plan reads; floats compared exactly."""
    return {
        "demands": cs.demands,
        "candidates": [(c.id, c.tier, c.supply_index, c.accelerator.id, c.cloud, c.region,
                        c.precision, c.count, c.usd_per_chip_hour, c.price_kind, c.capacity,
                        {b: e.model_dump() for b, e in c.estimates.items()},
                        c.uncertainty, c.role, c.pair, c.link_basis, c.speculative)
                       for c in cs.candidates],
        "rejected": cs.rejected,
        "precision_notes": cs.precision_notes,
        "prefix_cache": {k: v.model_dump() for k, v in cs.prefix_cache.items()},
        "prefix_reuse": sorted(cs.prefix_reuse),
        "pairs": cs.pairs,
    }


def test_shared_memo_gives_exactly_the_candidates_of_fresh_builds(monkeypatch) -> None:
    catalog = load_catalog()
    shared = prepare(_scenario(), Path("."), catalog)
    monkeypatch.setattr(candidates_mod, "SHARED_MEMO", False)
    fresh = prepare(_scenario(), Path("."), catalog)
    # the case the memo is for: a re-built tier, pairs, and speculative options
    assert "chat" in shared.prefix_cache and shared.prefix_cache["chat"].hit_rate > 0
    assert shared.pairs
    assert any(c.speculative for c in shared.candidates)
    assert _digest(shared) == _digest(fresh)


def _queries() -> list[Query]:
    base = dict(model="llama-3.1-8b", accelerator="h100-sxm", count=2, precision="fp8",
                engine=None, input_len=3000, output_len=300, slo_ttft=2.0, slo_tpot=0.05,
                usd_per_hour=1.0)
    return [Query(**base), Query(**base, prefix_hit_rate=0.4),
            Query(**base, speculative="draft:llama-3.2-1b"),
            Query(**{**base, "slo_tpot": None}, role="prefill", kv_link_gbps=25.0),
            Query(**base, role="decode", speculative="draft:llama-3.2-1b"),
            Query(**base, layout=Layout(tp=2))]


def test_memo_and_unit_cache_answer_what_estimate_answers() -> None:
    catalog, cal = load_catalog(), load_fit()
    memo = EstimateMemo(catalog, cal)
    units = UnitCache()
    for q in _queries():
        want = estimate(q, catalog, cal)
        assert memo.estimate(q) == want
        assert memo.estimate(q) is memo.estimate(q)  # asked again: the kept answer
        # the same units asked at other shapes, then the first again
        for n_in, n_out in ((3000, 300), (500, 50), (20000, 1000), (3000, 300)):
            other = q.model_copy(update={"input_len": n_in, "output_len": n_out})
            assert estimate(other, catalog, cal, units=units) == estimate(other, catalog, cal)


def test_query_key_tells_apart_every_field() -> None:
    q = _queries()[0]
    for field, value in (("prefix_hit_rate", 0.1), ("speculative", "mtp"), ("count", 4),
                         ("precision", "bf16"), ("input_len", 3001), ("slo_ttft", 2.5),
                         ("role", "prefill"), ("kv_link_gbps", 10.0), ("engine", "vllm"),
                         ("layout", Layout(tp=2)), ("model", "gpt-oss-120b")):
        assert query_key(q.model_copy(update={field: value})) != query_key(q), field


def test_the_layout_screen_does_not_read_the_techniques() -> None:
    """Why the memo keys screens on the plain query: the screen prices plain serving."""
    catalog, cal = load_catalog(), load_fit()
    q = _queries()[-1]
    plain = layout_screen(q, catalog, cal)
    cached = layout_screen(screen_query(q.model_copy(update={"prefix_hit_rate": 0.5})),
                           catalog, cal)
    with_rate = layout_screen(q.model_copy(update={"prefix_hit_rate": 0.5}), catalog, cal)
    assert plain is not None and cached is not None and with_rate is not None
    for shape in ((3000, 300), (100, 10), (30000, 2000)):
        assert plain(*shape) == cached(*shape) == with_rate(*shape)


@pytest.mark.parametrize("blocks", [0, 1, 7, 100, 1000, 10**6, int(NEVER)])
def test_hit_rate_without_the_sort_is_the_curve_exactly(blocks: int) -> None:
    r = prefix_reuse(read_trace(sample_path("mooncake_conversation")).scale_rate(3.0))
    assert r.hit_rate(blocks) == r.curve([blocks])[0]
