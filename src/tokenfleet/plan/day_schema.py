"""plan.json's ``day`` section: the day-long plan (`plan --over-day`), layer by layer
and period by period, and what a simulated day measured. Units: USD, requests/s,
chips; a period is one entry of the tier's day profile (an hour or less)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Layer = Literal["reserved", "committed", "on_demand", "spot"]
LAYERS: tuple[Layer, ...] = ("reserved", "committed", "on_demand", "spot")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DayPool(_Model):
    """One pool of one layer: replicas per period (a reserved pool holds one count all
    day)."""

    pool: str = Field(description="candidate pool id, with '#spot' for its spot layer")
    tier: str
    accelerator: str
    vendor: str
    cloud: str
    region: str
    layer: Layer
    chips_per_replica: int
    usd_per_chip_hour: float
    interruption_per_hour: float = Field(0.0, description="spot only: share of replicas "
                                         "reclaimed per hour; the plan counts the pool "
                                         "with ceil(rate x replicas), at least one, gone")
    replicas: list[int] = Field(description="per period")


class DayPeriod(_Model):
    period: int
    start: str = Field(description="HH:MM, local time of the profile")
    multiplier: dict[str, float] = Field(description="tier -> rate / peak-hour rate")
    demand_requests_per_s: dict[str, float] = Field(description="tier -> demand incl. headroom")
    capacity_requests_per_s: dict[str, float] = Field(
        description="tier -> what its pools serve at the tier's bucket mix (each spot layer "
                    "less its covered reclaims: ceil(rate x replicas), at least one)")
    chips: dict[str, int] = Field(description="layer -> chips held")
    usd_per_hour: dict[str, float] = Field(description="layer -> spend at list (committed: "
                                           "drawn from the commitment)")


class DaySimTier(_Model):
    tier: str
    requests: int
    ttft_attainment: float | None
    tpot_attainment: float | None
    target_ttft: float
    target_tpot: float
    met: bool


class DaySimPeriod(_Model):
    period: int
    start: str
    why: str = Field(description="peak, trough or most spot")
    spot_replicas: int
    spot_lost: int = Field(description="spot replicas reclaimed in the window")
    tiers: list[DaySimTier]


class DaySimulation(_Model):
    """Representative periods replayed (each for ``window_s`` of its tier traffic at the
    period's rate) with spot interruptions drawn at their hourly rate (seeded)."""

    window_s: float
    seed: int
    periods: list[DaySimPeriod]
    tiers: dict[str, dict[str, float | None]] = Field(
        description="tier -> {ttft, tpot}: attainment over every simulated request")
    met: bool
    method: str
    reproduce: str


class DayPlan(_Model):
    periods_per_day: int
    period_h: float
    profiles: dict[str, str] = Field(description="tier -> profile source")
    pools: list[DayPool]
    periods: list[DayPeriod]
    layer_usd_per_day: dict[str, float] = Field(description="layer -> list spend per day")
    usd_per_day: float = Field(description="the month's bill / days per month")
    usd_per_month: float = Field(description="bill of the month: fixed commitments and "
                                 "prepaid blocks + metered usage beyond them")
    peak_plan_usd_per_month: float = Field(description="the peak-hour plan's bill, its "
                                           "capacity held all day")
    saving_usd_per_month: float
    spot_rule: str
    assumptions: list[str]
    drops: list[str] = Field(description="constraints of the peak-hour plan the day plan "
                             "is solved without (empty when none)")
    solver_status: str
    mip_gap: float
    seconds: float
    simulation: DaySimulation | None = None
