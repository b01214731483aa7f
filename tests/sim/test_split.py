"""A fleet split into independent parts gives the answer of one process."""

from __future__ import annotations

import pytest

from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.results import merge_records, summarize
from tokenfleet.sim.run import independent_parts, run_part, simulate
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.traffic import planned_traffic


def _comparable(s) -> dict:
    d = s.model_dump()
    for k in ("wall_s", "simulated_requests_per_s", "source"):
        d.pop(k)
    return d


def _assert_same(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and b is not None:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_parts_merge_to_the_single_process_answer(two_tier_plan) -> None:
    w = planned_traffic(two_tier_plan, 60, seed=6)
    fails = [parse_failure("vendor=NVIDIA@t=20..35")]
    opt = SimOptions(policy="jsq", seed=3)
    one = simulate(two_tier_plan, w, failures=fails, options=opt)
    from dataclasses import replace

    opt = replace(opt, sample_s=one.record.sample_s, max_time_s=w.duration_s + 7 * 86400.0)
    parts = independent_parts(two_tier_plan, w)
    assert len(parts) == 2
    recs = [run_part(two_tier_plan.model_dump_json(), ids, w.subset(mask), opt, fails, [],
                     None) for ids, mask in parts]
    merged = summarize(merge_records(recs))
    assert merged.requests == one.summary.requests and merged.retried > 0
    _assert_same(_comparable(one.summary), _comparable(merged))
    ts1 = one.timeseries().sort(["t_s", "pool"])
    ts2 = __import__("tokenfleet.sim.results", fromlist=["timeseries"]).timeseries(
        merge_records(recs)).sort(["t_s", "pool"])
    assert ts1.shape == ts2.shape
    assert ts1.drop("usd").equals(ts2.drop("usd"))


@pytest.mark.slow
def test_ray_split_and_sweep(two_tier_plan, tmp_path) -> None:
    """Ray: the split run equals one process, and a sweep runs (one point fails)."""
    pytest.importorskip("ray")
    from tokenfleet.sim.distributed import ray_session
    from tokenfleet.sim.sweep import GridSpec, results_frame, run_sweep

    w = planned_traffic(two_tier_plan, 30, seed=8)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(two_tier_plan.model_dump_json())
    with ray_session(workers=2):
        one = simulate(two_tier_plan, w)
        many = simulate(two_tier_plan, w, workers=2)
        _assert_same(_comparable(one.summary), _comparable(many.summary))
        spec = GridSpec(plan=str(plan_path), traffic={"duration": 20},
                        grid={"growth": [1.0, 2.0], "fail": ["none", "vendor=Nobody"]})
        rows = run_sweep(spec)
    df = results_frame(rows)
    assert df.height == 4
    assert df.filter(df["status"] == "ok").height == 2
    bad = df.filter(df["status"] == "error")
    assert all("matches no pool" in e for e in bad["error"].to_list())
