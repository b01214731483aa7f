"""A plan with one pool per vendor (and the awkward shapes: a replica wider than a node,
an MoE model with expert and data parallelism, a TPU slice that is not a shape)."""

from __future__ import annotations

import pytest

from tokenfleet.plan.schema import BucketCapacity, BucketSplit, Cost, Plan, PlanUnit, TierSummary

BUCKET = "in0-1024_out0-256"


def unit(pool: str, accelerator: str, vendor: str, layout: dict[str, int], replicas: int = 2,
         model: str = "llama-3.1-70b", tier: str = "chat", precision: str = "fp8",
         concurrency: float = 100.0, engine: str | None = None) -> PlanUnit:
    chips_per = layout.get("tp", 1) * layout.get("pp", 1) * layout.get("dp", 1)
    return PlanUnit(
        pool=pool, tier=tier, model=model, accelerator=accelerator, vendor=vendor,
        cloud="c", region="r", precision=precision, kv_precision="fp8", engine=engine,
        layout={"tp": 1, "pp": 1, "ep": 1, "dp": 1, **layout}, chips_per_replica=chips_per,
        replicas=replicas, chips=chips_per * replicas, price_kind="on_demand",
        usd_per_chip_hour=2.0, usd_per_hour=2.0 * chips_per * replicas, watts=700.0 * chips_per,
        capacity=[BucketCapacity(bucket=BUCKET, requests_per_s=5, requests_per_s_point=6,
                                 output_tokens_per_s=600, concurrency=concurrency, ttft_s=0.3,
                                 tpot_s=0.04)],
        provenance="spec-sheet", uncertainty=0.2)


UNITS = [
    unit("chat/h100-sxm/aws/us-east/fp8/x4", "h100-sxm", "NVIDIA", {"tp": 4}),
    unit("chat/gb200/azure/us-central/fp4/x8", "gb200", "NVIDIA", {"tp": 4, "pp": 2},
         precision="fp4"),
    unit("chat/mi300x/tensorwave/us-west/fp8/x2", "mi300x", "AMD", {"tp": 2}),
    unit("chat/tpu-v6e/gcp/us-central/fp8/x2", "tpu-v6e", "Google", {"tp": 2}),
    unit("chat/tpu-v7/gcp/us-central/fp8/x16", "tpu-v7", "Google", {"tp": 16}),
    unit("chat/trainium2/aws/us-east/fp8/x8", "trainium2", "AWS", {"tp": 8}),
    unit("chat/maia-200/azure/us-west/fp8/x4", "maia-200", "Microsoft", {"tp": 4},
         concurrency=300.0),
    unit("reason/h200/aws/us-east/fp8/x8", "h200", "NVIDIA", {"tp": 4, "dp": 2, "ep": 8},
         model="deepseek-r1", tier="reason", concurrency=250.0),
]


@pytest.fixture
def vendor_plan() -> Plan:
    tiers = {"chat": "llama-3.1-70b", "reason": "deepseek-r1"}
    return Plan(
        scenario="deploy-test", created="2026-12-07T00:00:00Z", objective="cost",
        tiers=[TierSummary(name=t, model=m, slo_ttft_s=1.0, slo_tpot_s=0.05,
                           peak_requests_per_s=10, output_tokens_per_s=1000,
                           usd_per_million_output_tokens=1.0, precisions=["fp8"])
               for t, m in tiers.items()],
        units=UNITS,
        traffic_split=[BucketSplit(tier=t, bucket=BUCKET, input_len=512, output_len=128,
                                   peak_requests_per_s=10,
                                   shares={u.pool: 1.0 for u in UNITS if u.tier == t})
                       for t in tiers],
        cost=Cost(usd_per_month=1, fleet_usd_per_month=1, committed_usd_per_month=0,
                  committed_used_usd_per_month=0, on_demand_usd_per_month=1),
        vendor_share={}, power_mw={}, limits={}, baselines=[], constraints=[], solver={})
