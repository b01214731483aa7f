"""What-if grids: every combination of a few axes, each point planned (optionally) and
simulated, in parallel on Ray; one Parquet row per point.

A grid file (YAML; paths relative to it)::

    scenario: ../examples/frontier-lab.yaml   # re-plan every point (tokenfleet plan)
    # plan: plan.json                          # ... or simulate one fixed plan
    traffic: {scenario: true}                  # each tier's trace from the scenario
    # traffic: {trace: FILE, tier: NAME} | {duration: 600, rate: 50}
    policy: plan
    seed: 0
    grid:
      set:supply.maia-200.price: [3.0, 4.0, 5.0]   # scenario override, as `plan --set`
      growth: [1.0, 1.5]                           # traffic growth
      fail: [none, vendor=NVIDIA, vendor=AMD]      # as `simulate --fail`
      price:maia-200: [3.0, 5.0]                   # $/chip-hour during the simulation
      policy: [plan, jsq]

With a scenario, ``growth`` also sets every tier's ``traffic.growth`` before planning,
so the plan is sized for the grown traffic it is then tested with. A point that fails
(infeasible plan, bad value) becomes a row with ``status = "error"`` and the message.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenfleet.errors import TokenfleetError

AXES = ("growth", "fail", "policy", "surge", "seed")


class TrafficSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenario: bool = Field(False, description="each tier's traffic from the scenario")
    trace: str | None = Field(None, description="one trace file (or sample:NAME)")
    tier: str | None = None
    rate: float | None = Field(None, gt=0, description="generated traffic, requests/s")
    duration: float | None = Field(None, gt=0, description="generated traffic, seconds")


class GridSpec(BaseModel):
    """A sweep grid file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    scenario: str | None = None
    plan: str | None = None
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    policy: str = "plan"
    seed: int = 0
    sync_s: float = Field(0.02, gt=0)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    base_dir: str = "."

    @field_validator("grid")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not (k in AXES or k.startswith("set:") or k.startswith("price:")):
                raise ValueError(f"unknown axis '{k}': use {', '.join(AXES)}, "
                                 "set:SCENARIO.PATH or price:ACCELERATOR")
            if not isinstance(vals, list) or not vals:
                raise ValueError(f"axis '{k}' needs a non-empty list of values")
        return v

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the axes, in order (one dict per point)."""
        names = list(self.grid)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.grid[n] for n in names))] or [{}]

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.base_dir) / q


def load_grid(path: str | Path) -> GridSpec:
    from pydantic import ValidationError

    from tokenfleet.yamlio import format_validation_error, read_yaml

    p = Path(path)
    data, _ = read_yaml(p)
    if not isinstance(data, dict):
        raise TokenfleetError(f"{p}: a sweep grid is a mapping (plan or scenario, traffic, "
                              "grid)")
    data = {**data, "base_dir": str(p.parent)}
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as e:
        raise TokenfleetError(format_validation_error(e, str(p))) from None
    if (spec.plan is None) == (spec.scenario is None):
        raise TokenfleetError(f"{p}: give exactly one of 'plan' (simulate it) or "
                              "'scenario' (re-plan every point)")
    if spec.traffic.scenario and spec.scenario is None:
        raise TokenfleetError(f"{p}: traffic.scenario needs a 'scenario'")
    if not (spec.traffic.scenario or spec.traffic.trace or spec.traffic.duration):
        raise TokenfleetError(f"{p}: traffic needs scenario: true, a trace, or a duration")
    return spec


def _none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null"))


def run_point(spec: GridSpec, point: dict[str, Any]) -> dict[str, Any]:
    """Plan (if a scenario is given) and simulate one grid point; a flat result row."""
    from tokenfleet.plan.schema import load_plan
    from tokenfleet.sim.engine import SimOptions
    from tokenfleet.sim.run import prepare_workload, simulate
    from tokenfleet.sim.shocks import parse_failure, parse_price, parse_surge
    from tokenfleet.sim.sources import build_traffic
    from tokenfleet.sim.traffic import scenario_traffic

    t0 = time.perf_counter()
    growth = float(point.get("growth", 1.0))
    overrides = [f"{k[4:]}={v}" for k, v in point.items() if k.startswith("set:")]
    if spec.scenario is not None:
        from tokenfleet.plan.planner import plan_scenario
        from tokenfleet.plan.scenario import load_scenario

        sc_path = spec.path(spec.scenario)
        sc, _ = load_scenario(sc_path, overrides)
        if growth != 1.0:
            overrides += [f"tiers.{t.name}.traffic.growth={growth}" for t in sc.tiers]
            sc, _ = load_scenario(sc_path, overrides)
        plan = plan_scenario(sc, sc_path.parent, name=sc.name, compare_policies=False)
    else:
        plan = load_plan(spec.path(spec.plan or ""))
    seed = int(point.get("seed", spec.seed))
    tr = spec.traffic
    if tr.scenario:
        # The scenario's own growth was applied above; traces are replayed at it.
        w = scenario_traffic(plan, str(spec.path(spec.scenario or "")), tr.duration, seed,
                             overrides)
        w = prepare_workload(plan, w, seed=seed)
    else:
        trace = [str(spec.path(tr.trace)) if not tr.trace.startswith("sample:") else tr.trace
                 ] if tr.trace else []
        w = build_traffic(plan, trace, None, None, None, tr.tier, tr.rate, tr.duration, seed)
        w = prepare_workload(plan, w, growth=growth, seed=seed)
    fails = point.get("fail")
    fail_list: list[str] = ([] if fails is None or _none(fails) else [fails]
                            if isinstance(fails, str) else list(fails))
    surges = point.get("surge")
    surge_list: list[str] = ([] if surges is None or _none(surges) else [surges]
                             if isinstance(surges, str) else list(surges))
    prices = [parse_price(f"{k[6:]}={v}") for k, v in point.items() if k.startswith("price:")]
    if surge_list:
        w = prepare_workload(plan, w, surges=[parse_surge(s) for s in surge_list], seed=seed)
    opt = SimOptions(policy=str(point.get("policy", spec.policy)), seed=seed,
                     sync_s=spec.sync_s)
    res = simulate(plan, w, failures=[parse_failure(f) for f in fail_list], prices=prices,
                   options=opt)
    s = res.summary
    row: dict[str, Any] = {
        "requests": s.requests, "completed": s.completed, "retried": s.retried,
        "rejected": s.rejected, "cost_usd": s.cost_usd, "energy_kwh": s.energy_kwh,
        "plan_usd_per_month": plan.cost.usd_per_month,
        # its chips at list price: what moves while a bill sits at a commitment's minimum
        "plan_fleet_usd_per_month": plan.cost.fleet_usd_per_month,
        "usd_per_million_output_tokens": s.usd_per_million_output_tokens,
        "sim_duration_s": s.sim_duration_s, "sim_wall_s": s.wall_s,
    }
    # each tier's attainment target, as `plan --verify` holds it: the stricter of its
    # two SLO percentiles (the sweep report draws it as the SLO line)
    targets = {t.name: min(t.slo_ttft_percentile, t.slo_tpot_percentile) / 100
               for t in plan.tiers}
    for name, t in s.tiers.items():
        row[f"{name}.slo_attainment"] = t.slo_attainment
        row[f"{name}.slo_target"] = targets.get(name)
        row[f"{name}.ttft_p99_s"] = t.ttft_s.p99
        row[f"{name}.tpot_p99_s"] = t.tpot_s.p99
    row["point_wall_s"] = time.perf_counter() - t0
    return row


def _point_task(spec_json: str, point: dict[str, Any]) -> dict[str, Any]:
    spec = GridSpec.model_validate_json(spec_json)
    try:
        return {"status": "ok", "error": "", **run_point(spec, point)}
    except TokenfleetError as e:
        return {"status": "error", "error": str(e)}
    except Exception as e:  # a bug at one point must not lose the others
        return {"status": "error", "error": f"{type(e).__name__}: {e}\n"
                                            f"{traceback.format_exc(limit=3)}"}


def _label(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return str(v)
    return "none" if _none(v) else v


def journal_path(out: Path) -> Path:
    """Where a sweep writing ``out`` records each finished point as it completes."""
    return out.with_name(out.name + ".points.jsonl")


def _point_key(i: int, point: dict[str, Any]) -> str:
    return json.dumps([i, {k: _label(v) for k, v in point.items()}], sort_keys=True,
                      default=str)


def read_journal(path: Path, spec: GridSpec) -> dict[int, dict[str, Any]]:
    """Rows of the points already finished (for ``--resume``): those whose index and
    axis values still match the grid. A torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return {}
    from tokenfleet.fileio import read_text

    points = spec.points()
    done: dict[int, dict[str, Any]] = {}
    for line in read_text(path, "sweep journal").splitlines():
        try:
            entry = json.loads(line)
            i, row = entry["key"][0], entry["row"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if isinstance(i, int) and 0 <= i < len(points) \
                and json.loads(_point_key(i, points[i])) == entry["key"]:
            done[i] = row
    return done


def append_journal(path: Path, spec: GridSpec, i: int, row: dict[str, Any]) -> None:
    """Append one finished point, flushed to disk before returning."""
    line = json.dumps({"key": json.loads(_point_key(i, spec.points()[i])), "row": row},
                      default=str)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_sweep(spec: GridSpec, workers: int | None = None, address: str | None = None,
              on_point: Callable[[int, dict[str, Any]], None] | None = None,
              local: bool = False, done_rows: dict[int, dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
    """Run every point (on Ray unless ``local``); rows in grid order, each with the
    point's axis values, ``status`` and ``error``. Points in ``done_rows`` (index ->
    row, from :func:`read_journal`) are not run again."""
    points = spec.points()
    spec_json = spec.model_dump_json()
    done_rows = done_rows or {}
    rows: list[dict[str, Any] | None] = [done_rows.get(i) for i in range(len(points))]
    todo = [i for i in range(len(points)) if i not in done_rows]

    def done(i: int, res: Any) -> None:
        if isinstance(res, Exception):  # Ray itself failed to run the task
            res = {"status": "error", "error": f"{type(res).__name__}: {res}"}
        row = {"point": i, **{k: _label(v) for k, v in points[i].items()}, **res}
        rows[i] = row
        if on_point:
            on_point(i, row)

    if local:
        for i in todo:
            done(i, _point_task(spec_json, points[i]))
    elif todo:
        from tokenfleet.sim.distributed import run_tasks

        run_tasks(_point_task, [(spec_json, points[i]) for i in todo], workers, address,
                  lambda k, res: done(todo[k], res))
    return [r for r in rows if r is not None]


def results_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    data = {c: [r.get(c) for r in rows] for c in cols}
    for c, vals in data.items():
        if any(isinstance(v, float) for v in vals):
            data[c] = [float(v) if isinstance(v, (int, float)) and v is not None else None
                       for v in vals]
        elif any(isinstance(v, str) for v in vals):
            data[c] = [None if v is None else str(v) for v in vals]
    return pl.DataFrame(data, strict=False)
