"""The simulator's public entry points: prepare the traffic, run (in one process or
split by independent pools over Ray workers), and write the outputs.

>>> from tokenfleet.sim import simulate, planned_traffic
>>> result = simulate(plan, planned_traffic(plan, duration_s=600))   # doctest: +SKIP
>>> result.summary.tiers["chat"].ttft_s.p99                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from tokenfleet.catalog.loader import Catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration
from tokenfleet.plan.schema import Plan
from tokenfleet.sim.disagg import has_pairs, run_plan
from tokenfleet.sim.engine import RunRecord, SimOptions, Simulator, auto_sample_s
from tokenfleet.sim.fleet import EngineConfig, build_fleet
from tokenfleet.sim.results import SimSummary, merge_records, summarize, timeseries
from tokenfleet.sim.shocks import Failure, PriceChange, Surge, check_against_plan
from tokenfleet.sim.traffic import Workload, apply_surges, label_trace, scale_traffic
from tokenfleet.workload.trace import Trace


@dataclass
class SimResult:
    """A finished simulation: the raw record, its summary, and writers."""

    record: RunRecord
    summary: SimSummary

    def timeseries(self) -> pl.DataFrame:
        return timeseries(self.record)


def prepare_workload(plan: Plan, traffic: Trace | Workload, *, tier: str | None = None,
                     growth: float = 1.0, surges: list[Surge] | None = None,
                     seed: int = 0) -> Workload:
    """Label a trace with tiers and buckets, then apply growth and surges."""
    w = traffic if isinstance(traffic, Workload) else label_trace(plan, traffic, tier, seed)
    if len(w) == 0:
        raise TokenfleetError(f"{w.source}: no requests to simulate")
    w = scale_traffic(w, growth, seed)
    if surges:
        w = apply_surges(w, surges, seed)
    return w


def independent_parts(plan: Plan, w: Workload) -> list[tuple[list[str], np.ndarray]]:
    """Groups of pools no request can move between, with the requests of each.

    A request may be routed to any pool of its tier (the policies spill beyond the
    planned split), so tiers are the independent units."""
    parts = []
    for t in plan.tiers:
        pool_ids = [u.pool for u in plan.units if u.tier == t.name]
        key_ids = [i for i, k in enumerate(w.keys) if k.tier == t.name]
        mask = np.isin(w.key, np.asarray(key_ids, dtype=np.int32))
        if pool_ids or mask.any():
            parts.append((pool_ids, mask))
    return parts


def simulate(plan: Plan, workload: Workload, *, failures: list[Failure] | None = None,
             prices: list[PriceChange] | None = None, options: SimOptions | None = None,
             engine: EngineConfig | None = None, workers: int = 1,
             address: str | None = None, catalog: Catalog | None = None,
             cal: Calibration | None = None) -> SimResult:
    """Replay ``workload`` through ``plan``.

    ``workers > 1`` splits the fleet into independent parts (tiers) and runs them on
    Ray (a local cluster with ``workers`` CPUs, or the cluster at ``address``); the
    merged answer is the same as one process gives.
    """
    failures = list(failures or [])
    prices = list(prices or [])
    check_against_plan(plan, failures, prices)
    opt = options or SimOptions()
    if len(workload) == 0:
        raise TokenfleetError(f"{workload.source}: no requests to simulate")
    # Fix everything that depends on the whole workload, so every part agrees.
    opt = replace(opt, sample_s=opt.sample_s or auto_sample_s(workload.duration_s, opt.sync_s))
    if opt.max_time_s is None:
        opt = replace(opt, max_time_s=workload.duration_s + 7 * 86400.0)
    t0 = time.perf_counter()
    if workers <= 1 or has_pairs(plan):  # prefill/decode pairs: composed runs, here
        rec = run_plan(plan, workload, opt, failures, prices, engine, catalog, cal)
    else:
        build_fleet(plan, engine, catalog=catalog, cal=cal)  # validate before shipping
        parts = independent_parts(plan, workload)
        from tokenfleet.sim.distributed import run_parts

        recs = run_parts(plan, workload, parts, replace(opt, progress=None), failures,
                         prices, engine, workers, address)
        rec = merge_records(recs, wall_s=time.perf_counter() - t0)
        rec.source = workload.source
    return SimResult(rec, summarize(rec, plan.limits,
                                    {u.pool for u in plan.units if u.prepaid}))


def run_part(plan_json: str, pool_ids: list[str], workload: Workload, opt: SimOptions,
             failures: list[Failure], prices: list[PriceChange],
             engine: EngineConfig | None) -> RunRecord:
    """One independent part (used by Ray workers and by the in-process split)."""
    plan = Plan.model_validate(json.loads(plan_json))
    fleet = build_fleet(plan, engine, pool_ids=pool_ids)
    return Simulator(fleet, workload, opt, failures, prices).run()
