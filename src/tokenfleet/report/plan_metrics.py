"""Figures derived from a Plan for the report: spend by group, chips, power, $ per
million output tokens, per-pool load at peak.

Pure functions over :class:`~tokenfleet.plan.schema.Plan`; nothing here prints, plots or
reads files, so the numbers the report shows can be tested on their own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tokenfleet.plan.schema import Plan, PlanUnit


def monthly_by(plan: Plan, key: str) -> dict[str, dict[str, float]]:
    """List value in USD/month of every pool, grouped by ``key`` (a PlanUnit field such
    as ``vendor`` or ``cloud``) and then by tier."""
    hours = plan.limits.hours_per_month
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for u in plan.units:
        out[str(getattr(u, key))][u.tier] += u.usd_per_hour * hours
    return {k: dict(v) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class CloudSpend:
    """One cloud's monthly spend split the way the bill splits it."""

    cloud: str
    used_usd_per_month: float  # list value of the chip-hours used in this cloud
    committed_used_usd_per_month: float  # usage covered by a commitment
    on_demand_usd_per_month: float  # usage beyond the commitment
    committed_unused_usd_per_month: float  # commitment paid but not used


def spend_by_cloud(plan: Plan) -> list[CloudSpend]:
    """Per cloud: committed (used), on-demand and committed-but-unused USD/month,
    using the contracts recorded in ``plan.limits``."""
    hours = plan.limits.hours_per_month
    used: dict[str, float] = defaultdict(float)
    for u in plan.units:
        used[u.cloud] += u.usd_per_hour * hours
    committed: dict[str, float] = defaultdict(float)
    for k in plan.limits.contracts.values():
        committed[k.cloud] += k.committed_usd_per_month
    out = []
    for cloud in sorted(set(used) | set(committed)):
        use, com = used.get(cloud, 0.0), committed.get(cloud, 0.0)
        out.append(CloudSpend(cloud, use, min(use, com), max(use - com, 0.0),
                              max(com - use, 0.0)))
    return out


def chips_by_region(plan: Plan) -> dict[str, dict[str, int]]:
    """region -> accelerator -> chips."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for u in plan.units:
        out[u.region][u.accelerator] += u.chips
    return {r: dict(v) for r, v in sorted(out.items())}


def tier_mix(plan: Plan) -> dict[str, dict[str, float]]:
    """tier -> bucket -> peak requests/s (headroom included), from the traffic split."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for s in plan.traffic_split:
        out[s.tier][s.bucket] = out[s.tier].get(s.bucket, 0.0) + s.peak_requests_per_s
    return dict(out)


@dataclass(frozen=True)
class MixThroughput:
    """What one replica sustains on its tier's request mix."""

    requests_per_s: float  # derated (the capacity the plan counts on)
    output_tokens_per_s: float  # derated
    output_tokens_per_s_point: float  # point estimate, before derating
    coverage: float  # share of the tier's peak requests in buckets this pool can serve


def mix_throughput(u: PlanUnit, mix: dict[str, float]) -> MixThroughput:
    """Per-replica throughput on the tier's mix.

    A replica's time is shared by the buckets it serves (the planner's capacity row:
    sum_b x_b / cap_b <= replicas), so on a mix with request fractions w_b it sustains
    R = 1 / sum_b(w_b / cap_b) requests/s. Buckets the pool cannot serve are left out
    and the mix renormalised; ``coverage`` says how much of the mix that kept.
    """
    caps = {c.bucket: c for c in u.capacity}
    total = sum(mix.values())
    served = {b: r for b, r in mix.items() if b in caps and caps[b].requests_per_s > 0}
    kept = sum(served.values())
    if total <= 0 or kept <= 0:
        return MixThroughput(0.0, 0.0, 0.0, 0.0)

    def rate(derated: bool) -> tuple[float, float]:
        time_per_req = 0.0
        tokens_per_req = 0.0
        for b, r in served.items():
            c = caps[b]
            w = r / kept
            cap = c.requests_per_s if derated else (c.requests_per_s_point or c.requests_per_s)
            time_per_req += w / cap
            # output tokens per request of this bucket, as the estimate saw it
            tok = c.output_tokens_per_s / c.requests_per_s_point if c.requests_per_s_point else 0.0
            tokens_per_req += w * tok
        req = 1.0 / time_per_req
        return req, req * tokens_per_req

    req, tok = rate(True)
    _, tok_point = rate(False)
    return MixThroughput(req, tok, tok_point, kept / total)


@dataclass(frozen=True)
class TokenCost:
    """$ per million output tokens of one chip type in one tier, at full SLO capacity."""

    tier: str
    accelerator: str
    usd_per_m_tokens: float  # derated capacity: what the plan pays for
    usd_per_m_tokens_point: float  # point-estimate capacity: the optimistic end
    pools: tuple[str, ...]
    coverage: float  # lowest mix coverage among the pools


def usd_per_million_tokens(plan: Plan) -> list[TokenCost]:
    """Per (tier, accelerator): the pools' hourly price over the output tokens/s they
    sustain on the tier's mix at the SLO, in USD per million output tokens.

    This is the price of capacity (pools run flat out), not of the traffic actually
    served, which the tier summary's ``usd_per_million_output_tokens`` gives.
    """
    mixes = tier_mix(plan)
    groups: dict[tuple[str, str], list[PlanUnit]] = defaultdict(list)
    for u in plan.units:
        groups[(u.tier, u.accelerator)].append(u)
    out = []
    for (tier, accel), units in sorted(groups.items()):
        usd_h = 0.0
        tok = tok_point = 0.0
        cover = 1.0
        for u in units:
            m = mix_throughput(u, mixes.get(tier, {}))
            usd_h += u.usd_per_hour
            tok += m.output_tokens_per_s * u.replicas
            tok_point += m.output_tokens_per_s_point * u.replicas
            cover = min(cover, m.coverage)
        if tok <= 0:
            continue
        out.append(TokenCost(tier, accel, usd_h / 3600 / tok * 1e6,
                             usd_h / 3600 / tok_point * 1e6 if tok_point else 0.0,
                             tuple(u.pool for u in units), cover))
    return out
