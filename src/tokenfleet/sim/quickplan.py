"""A plan built by hand from ``tokenfleet.perf`` estimates — no optimisation.

For simulator tests, benchmarks and what-if demos that need a fleet of a chosen shape
("400 replicas of 70B on H100 and 300 on MI300X") rather than the cheapest one the
planner would pick. Capacities are the estimate's point values at the tier's SLO;
every (tier, bucket) is split over the tier's pools in proportion to their capacity.

Units: requests/s, seconds, USD, watts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.estimate import Estimate, Query, best_count, estimate
from tokenfleet.plan.schema import (
    HOURS_PER_MONTH,
    BucketCapacity,
    BucketSplit,
    Cost,
    Plan,
    PlanUnit,
    TierSummary,
)
from tokenfleet.workload.buckets import SizeBuckets


@dataclass
class TierSpec:
    """A tier: model, SLOs (mean bounds, s) and its request mix as
    ``(input_len, output_len, share)`` triples (shares sum to 1)."""

    name: str
    model: str
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    mix: list[tuple[int, int, float]]
    peak_requests_per_s: float | None = None  # default: load x capacity of its pools


@dataclass
class QuickPool:
    """``replicas`` units of ``count`` chips (None: the cheapest count per token)."""

    tier: str
    accelerator: str
    replicas: int
    count: int | None = None
    cloud: str | None = None
    region: str = "region-1"
    precision: str = "auto"
    engine: str | None = None
    notes: list[str] = field(default_factory=list)
    speculative: str | None = None  # perf/speculative.py syntax: priced and simulated


def _estimate(t: TierSpec, p: QuickPool, inp: int, out: int, count: int | None,
              catalog: Catalog, cal: Calibration) -> Estimate:
    q = Query(model=t.model, accelerator=p.accelerator, count=count or 1,
              precision=p.precision, engine=p.engine, input_len=inp, output_len=out,
              slo_ttft=t.slo_ttft_s, slo_tpot=t.slo_tpot_s, cloud=p.cloud,
              speculative=p.speculative)
    e = estimate(q, catalog, cal) if count else best_count(q, catalog, cal)
    if not e.fits or not e.requests_per_s:
        raise TokenfleetError(f"{p.accelerator} cannot serve tier {t.name} "
                              f"({t.model}, {inp} in / {out} out): {e.reason}")
    return e


def quick_plan(tiers: list[TierSpec], pools: list[QuickPool], load: float = 0.8,
               buckets: SizeBuckets | None = None, name: str = "quick-plan",
               catalog: Catalog | None = None, cal: Calibration | None = None) -> Plan:
    """A :class:`Plan` of exactly ``pools``; tier peaks default to ``load`` x capacity."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    buckets = buckets or SizeBuckets()
    labels = [b.label for b in buckets.buckets]
    by_name = {t.name: t for t in tiers}
    units: list[PlanUnit] = []
    caps: dict[str, dict[str, float]] = {}  # pool -> bucket -> requests/s per replica
    for p in pools:
        t = by_name.get(p.tier)
        if t is None:
            raise TokenfleetError(f"pool on {p.accelerator} names unknown tier '{p.tier}'")
        count = p.count
        if count is None:  # size the unit on the tier's first mix entry
            count = _estimate(t, p, t.mix[0][0], t.mix[0][1], None, catalog, cal).count
        capacity = []
        first: Estimate | None = None
        for inp, out, _ in t.mix:
            e = _estimate(t, p, inp, out, count, catalog, cal)
            first = first or e
            label = labels[int(buckets.assign_lengths(inp, out))]
            capacity.append(BucketCapacity(
                bucket=label, requests_per_s=e.requests_per_s or 0.0,
                requests_per_s_point=e.requests_per_s or 0.0,
                output_tokens_per_s=e.output_tokens_per_s or 0.0,
                concurrency=e.concurrency or 1.0, ttft_s=e.ttft_s or 0.0,
                tpot_s=e.tpot_s or 0.0))
        assert first is not None and first.layout is not None
        accel = catalog.accelerator(p.accelerator)
        cloud = p.cloud or (accel.prices[0].cloud if accel.prices else "none")
        pool_id = f"{t.name}/{accel.id}/{cloud}/{p.region}/{first.precision}"
        usd_chip = (first.usd_per_hour or 0.0) / count
        units.append(PlanUnit(
            pool=pool_id, tier=t.name, model=catalog.model(t.model).id, accelerator=accel.id,
            vendor=accel.vendor, cloud=cloud, region=p.region, precision=first.precision,
            kv_precision=first.kv_precision, engine=p.engine, layout=first.layout,
            chips_per_replica=count, replicas=p.replicas, chips=count * p.replicas,
            price_kind="on_demand", usd_per_chip_hour=usd_chip,
            usd_per_hour=usd_chip * count * p.replicas, watts=first.watts * p.replicas,
            capacity=capacity, provenance=first.provenance,
            uncertainty=first.uncertainty.relative if first.uncertainty else 0.0,
            speculative=first.speculative))
        caps[pool_id] = {c.bucket: c.requests_per_s for c in capacity}
    splits: list[BucketSplit] = []
    summaries: list[TierSummary] = []
    for t in tiers:
        tier_units = [u for u in units if u.tier == t.name]
        if not tier_units:
            raise TokenfleetError(f"tier '{t.name}' has no pools")
        if not math.isclose(sum(s for _, _, s in t.mix), 1.0, rel_tol=1e-6):
            raise TokenfleetError(f"tier '{t.name}': mix shares must sum to 1")
        # Replica throughput on the mix: harmonic mean of the bucket capacities.
        fleet_rate = sum(u.replicas / sum(s / caps[u.pool][labels[int(
            buckets.assign_lengths(i, o))]] for i, o, s in t.mix) for u in tier_units)
        peak = t.peak_requests_per_s or load * fleet_rate
        out_tps = 0.0
        for inp, out, share in t.mix:
            label = labels[int(buckets.assign_lengths(inp, out))]
            weight = {u.pool: u.replicas * caps[u.pool][label] for u in tier_units}
            total = sum(weight.values())
            splits.append(BucketSplit(
                tier=t.name, bucket=label, input_len=inp, output_len=out,
                peak_requests_per_s=peak * share,
                shares={k: v / total for k, v in weight.items()}))
            out_tps += peak * share * out
        usd_h = sum(u.usd_per_hour for u in tier_units)
        summaries.append(TierSummary(
            name=t.name, model=tier_units[0].model, slo_ttft_s=t.slo_ttft_s,
            slo_tpot_s=t.slo_tpot_s, peak_requests_per_s=peak, output_tokens_per_s=out_tps,
            usd_per_million_output_tokens=usd_h / 3600 / out_tps * 1e6 if out_tps else 0.0,
            precisions=sorted({u.precision for u in tier_units})))
    monthly = sum(u.usd_per_hour for u in units) * HOURS_PER_MONTH
    vendors: dict[str, float] = {}
    power: dict[str, float] = {}
    for u in units:
        vendors[u.vendor] = vendors.get(u.vendor, 0.0) + u.chips
        power[u.region] = power.get(u.region, 0.0) + u.watts / 1e6
    chips = sum(vendors.values()) or 1.0
    return Plan(
        scenario=name, created=datetime.now(UTC).isoformat(timespec="seconds"),
        objective="none: pools given by hand (tokenfleet.sim.quickplan)",
        tiers=summaries, units=units, traffic_split=splits, buckets=buckets,
        cost=Cost(usd_per_month=monthly, fleet_usd_per_month=monthly,
                  committed_usd_per_month=0.0, committed_used_usd_per_month=0.0,
                  on_demand_usd_per_month=monthly),
        vendor_share={k: v / chips for k, v in vendors.items()}, power_mw=power,
        baselines=[], constraints=[],
        notes=["capacities are point estimates at the tier SLO, not derated"],
    )
