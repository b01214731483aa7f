"""The Plan: what the planner decided, in the form the simulator and router read.

``plan.json`` is this model serialised. Units: rates per second, money in USD, power
in watts (per pool) and megawatts (per region).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokenfleet.errors import TokenfleetError

PLAN_VERSION = 1
HOURS_PER_MONTH = 730.0  # 8,760 h / 12


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BucketCapacity(_Model):
    """What one replica of a pool sustains for one size bucket at the tier's SLO."""

    bucket: str
    requests_per_s: float = Field(description="derated by the estimate's uncertainty band")
    requests_per_s_point: float = Field(description="point estimate, before derating")
    output_tokens_per_s: float = Field(description="point estimate (not derated)")
    concurrency: float = Field(description="sequences in flight per replica at that rate")
    ttft_s: float
    tpot_s: float


class PlanUnit(_Model):
    """One pool: ``replicas`` identical serving units of one chip kind in one place."""

    pool: str = Field(description="unique id: tier/accelerator/cloud/region/precision")
    tier: str
    model: str
    accelerator: str
    vendor: str
    cloud: str
    region: str
    precision: str
    kv_precision: str
    engine: str | None = None
    layout: dict[str, int]
    chips_per_replica: int
    replicas: int
    chips: int
    price_kind: str = Field(description="on_demand | reserved")
    usd_per_chip_hour: float
    usd_per_hour: float = Field(description="whole pool")
    watts: float = Field(description="whole pool, at TDP")
    capacity: list[BucketCapacity]
    provenance: str
    uncertainty: float = Field(description="± fraction used to derate capacity")

    def capacity_for(self, bucket: str) -> BucketCapacity | None:
        return next((c for c in self.capacity if c.bucket == bucket), None)


class BucketSplit(_Model):
    """Peak demand of one (tier, size bucket) and how it is split over pools."""

    tier: str
    bucket: str
    input_len: int = Field(description="representative prompt tokens of the bucket")
    output_len: int = Field(description="representative output tokens of the bucket")
    peak_requests_per_s: float = Field(description="demand at peak, headroom included")
    shares: dict[str, float] = Field(description="pool id -> fraction of this bucket's requests")


class TierSummary(_Model):
    name: str
    model: str
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    slo_percentile: float = Field(50.0, description="percentile the SLO bounds apply to")
    peak_requests_per_s: float
    output_tokens_per_s: float = Field(description="at peak")
    usd_per_million_output_tokens: float
    precisions: list[str]
    precision_notes: list[str] = []


class Cost(_Model):
    usd_per_month: float = Field(description="what the plan adds to the bill: on-demand "
                                             "spend plus committed spend left unused")
    fleet_usd_per_month: float = Field(description="list value of every chip-hour used")
    committed_usd_per_month: float = Field(description="commitments, paid whether used or not")
    committed_used_usd_per_month: float
    on_demand_usd_per_month: float


class Baseline(_Model):
    name: str
    usd_per_month: float | None
    feasible: bool
    note: str = ""


class ConstraintReport(_Model):
    name: str
    binding: bool
    marginal_usd_per_month: float | None = Field(
        description="how much the plan would save per month without this constraint")
    detail: str = ""


class Plan(_Model):
    version: int = PLAN_VERSION
    scenario: str
    created: str
    objective: str
    tiers: list[TierSummary]
    units: list[PlanUnit]
    traffic_split: list[BucketSplit]
    cost: Cost
    vendor_share: dict[str, float] = Field(description="vendor -> share of peak capacity used")
    power_mw: dict[str, float] = Field(description="region -> MW at TDP")
    limits: dict[str, Any] = Field(description="caps and policies honoured, from the scenario")
    baselines: list[Baseline]
    constraints: list[ConstraintReport]
    solver: dict[str, Any]
    notes: list[str] = []

    def pools_for(self, tier: str) -> list[PlanUnit]:
        return [u for u in self.units if u.tier == tier]


def load_plan(path: str | Path) -> Plan:
    """Read a ``plan.json``; errors name the file and field."""
    from pydantic import ValidationError

    from tokenfleet.fileio import read_text
    from tokenfleet.yamlio import format_validation_error

    p = Path(path)
    text = read_text(p, "plan")
    try:
        return Plan.model_validate_json(text)
    except ValidationError as e:
        raise TokenfleetError(format_validation_error(e, str(p))) from None
