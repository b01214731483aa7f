"""What a plan costs per unit of work, the way practitioners read it: $ per million
input, output and blended tokens and per request, tokens per $ and per MW; vendor share
by spend, by chips and by tokens; which pools serve traffic and which only stand by for
N-1.

Pure functions of a :class:`~tokenfleet.plan.schema.Plan` (its pools' hourly list price,
chips and watts, and the peak traffic split). Conventions, stated in
:data:`ECONOMICS_BASIS`: money is the list value of the chip-hours (before commitments);
work is the tier's demand at peak (the fleet is sized for it), so these are the unit
costs of a fully used fleet, the floor of what the bill works out to per token.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tokenfleet.plan.schema import Plan

ECONOMICS_BASIS = ("list value of every chip-hour (before committed-spend discounts) over "
                   "the tier's demand at peak; blended = input + output tokens; tokens per "
                   "MW at TDP; vendor share by tokens counts input + output tokens at peak")
_ACTIVE_SHARE = 1e-9  # a pool with no share above this in any bucket only stands by


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierEconomics(_Model):
    tier: str
    usd_per_hour: float = Field(description="list value of the tier's pools")
    input_tokens_per_s: float = Field(description="at peak")
    output_tokens_per_s: float = Field(description="at peak")
    requests_per_s: float = Field(description="at peak")
    usd_per_million_input_tokens: float | None = Field(
        description="the tier's whole cost spread over input tokens only")
    usd_per_million_output_tokens: float | None = Field(
        description="the tier's whole cost spread over output tokens only")
    usd_per_million_tokens: float | None = Field(description="blended: input + output")
    usd_per_request: float | None
    tokens_per_usd: float | None = Field(description="input + output tokens per dollar")
    tokens_per_s_per_mw: float | None = Field(description="input + output tokens/s per MW")


class VendorShare(_Model):
    spend: float = Field(description="fraction of the fleet's list value")
    chips: float = Field(description="fraction of chips")
    tokens: float = Field(description="fraction of input + output tokens at peak")


class PlanEconomics(_Model):
    basis: str = ECONOMICS_BASIS
    tiers: list[TierEconomics]
    vendor_share: dict[str, VendorShare]
    pool_roles: dict[str, Literal["active", "standby"]] = Field(
        description="active: takes a share of traffic at peak; standby: held for N-1 only")


def _per(x_usd_per_s: float, per_s: float, scale: float) -> float | None:
    return x_usd_per_s / per_s * scale if per_s > 0 else None


def pool_roles(plan: Plan) -> dict[str, Literal["active", "standby"]]:
    used = {p for s in plan.traffic_split for p, sh in s.shares.items() if sh > _ACTIVE_SHARE}
    # a prefill half takes the requests its pair's decode half is routed
    used |= {u.pool for u in plan.units for d in plan.units
             if u.role == "prefill" and d.role == "decode" and d.pair == u.pair and d.pool in used}
    return {u.pool: "active" if u.pool in used else "standby" for u in plan.units}


def pool_tokens_per_s(plan: Plan) -> dict[str, float]:
    """Input + output tokens/s each pool serves at peak, by the plan's split."""
    out: dict[str, float] = defaultdict(float)
    for s in plan.traffic_split:
        for pool, share in s.shares.items():
            out[pool] += share * s.peak_requests_per_s * (s.input_len + s.output_len)
    return dict(out)


def tier_economics(plan: Plan) -> list[TierEconomics]:
    rows = []
    for t in plan.tiers:
        splits = [s for s in plan.traffic_split if s.tier == t.name]
        rps = sum(s.peak_requests_per_s for s in splits)
        tin = sum(s.peak_requests_per_s * s.input_len for s in splits)
        tout = sum(s.peak_requests_per_s * s.output_len for s in splits)
        pools = plan.pools_for(t.name)
        usd_h = sum(u.usd_per_hour for u in pools)
        mw = sum(u.watts for u in pools) / 1e6
        usd_s = usd_h / 3600.0
        rows.append(TierEconomics(
            tier=t.name, usd_per_hour=usd_h, input_tokens_per_s=tin, output_tokens_per_s=tout,
            requests_per_s=rps,
            usd_per_million_input_tokens=_per(usd_s, tin, 1e6),
            usd_per_million_output_tokens=_per(usd_s, tout, 1e6),
            usd_per_million_tokens=_per(usd_s, tin + tout, 1e6),
            usd_per_request=_per(usd_s, rps, 1.0),
            tokens_per_usd=(tin + tout) / usd_s if usd_s > 0 else None,
            tokens_per_s_per_mw=(tin + tout) / mw if mw > 0 else None))
    return rows


def vendor_shares(plan: Plan) -> dict[str, VendorShare]:
    spend: dict[str, float] = defaultdict(float)
    chips: dict[str, float] = defaultdict(float)
    tokens: dict[str, float] = defaultdict(float)
    per_pool = pool_tokens_per_s(plan)
    for u in plan.units:
        spend[u.vendor] += u.usd_per_hour
        chips[u.vendor] += u.chips
        tokens[u.vendor] += per_pool.get(u.pool, 0.0)

    def frac(d: dict[str, float], v: str) -> float:
        total = sum(d.values())
        return d[v] / total if total > 0 else 0.0

    return {v: VendorShare(spend=frac(spend, v), chips=frac(chips, v), tokens=frac(tokens, v))
            for v in sorted(spend)}


def plan_economics(plan: Plan) -> PlanEconomics:
    return PlanEconomics(tiers=tier_economics(plan), vendor_share=vendor_shares(plan),
                         pool_roles=pool_roles(plan))
