"""Unit costs and vendor shares of a plan, against numbers worked by hand."""

from __future__ import annotations

import pytest

from tokenfleet.plan.economics import plan_economics
from tokenfleet.plan.schema import BucketCapacity, BucketSplit, Cost, Plan, PlanUnit, TierSummary


def _unit(pool: str, vendor: str, usd_per_hour: float, chips: int, watts: float) -> PlanUnit:
    return PlanUnit(pool=pool, tier="chat", model="llama-3.1-8b", accelerator="x",
                    vendor=vendor, cloud="c", region="r", precision="fp8", kv_precision="fp8",
                    layout={"tp": 1}, chips_per_replica=1, replicas=chips, chips=chips,
                    price_kind="on_demand", usd_per_chip_hour=usd_per_hour / chips,
                    usd_per_hour=usd_per_hour, watts=watts,
                    capacity=[BucketCapacity(bucket="b", requests_per_s=1,
                                             requests_per_s_point=1, output_tokens_per_s=1,
                                             concurrency=1, ttft_s=0.1, tpot_s=0.01)],
                    provenance="spec-sheet", uncertainty=0.0)


def test_hand_worked_plan() -> None:
    # 10 req/s of 900 in + 100 out tokens; pool A takes all of it; B stands by (N-1).
    # $/s = (36 + 36) / 3600 = 0.02 -> $/M in = 0.02 / 9000 * 1e6 = 2.222,
    # $/M out = 0.02 / 1000 * 1e6 = 20, blended 0.02 / 10000 * 1e6 = 2, $/req = 0.002,
    # tokens/$ = 10000 / 0.02 = 500,000; MW = 0.002 -> 5e6 tokens/s per MW.
    plan = Plan(
        scenario="t", created="2026-01-01T00:00:00Z", objective="cost",
        tiers=[TierSummary(name="chat", model="llama-3.1-8b", slo_ttft_s=1, slo_tpot_s=0.1,
                           peak_requests_per_s=10, output_tokens_per_s=1000,
                           usd_per_million_output_tokens=1, precisions=["fp8"])],
        units=[_unit("A", "NVIDIA", 36.0, 3, 1500.0), _unit("B", "Google", 36.0, 1, 500.0)],
        traffic_split=[BucketSplit(tier="chat", bucket="b", input_len=900, output_len=100,
                                   peak_requests_per_s=10, shares={"A": 1.0, "B": 0.0})],
        cost=Cost(usd_per_month=1, fleet_usd_per_month=1, committed_usd_per_month=0,
                  committed_used_usd_per_month=0, on_demand_usd_per_month=1),
        vendor_share={}, power_mw={}, limits={}, baselines=[], constraints=[], solver={})
    e = plan_economics(plan)
    t = e.tiers[0]
    assert t.usd_per_million_input_tokens == pytest.approx(0.02 / 9000 * 1e6)
    assert t.usd_per_million_output_tokens == pytest.approx(20.0)
    assert t.usd_per_million_tokens == pytest.approx(2.0)
    assert t.usd_per_request == pytest.approx(0.002)
    assert t.tokens_per_usd == pytest.approx(500_000)
    assert t.tokens_per_s_per_mw == pytest.approx(5e6)
    assert e.pool_roles == {"A": "active", "B": "standby"}
    assert e.vendor_share["Google"].spend == pytest.approx(0.5)
    assert e.vendor_share["Google"].chips == pytest.approx(0.25)
    assert e.vendor_share["Google"].tokens == 0.0
    assert e.vendor_share["NVIDIA"].tokens == pytest.approx(1.0)
