"""The workload a simulation replays, described the way ``simulate`` and ``sweep`` take
it: trace files (one for all tiers or one per tier), a scenario's own traffic, or the
plan's planned rates — with an optional time window and tier filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.sim.run import prepare_workload
from tokenfleet.sim.traffic import Workload, planned_traffic, scenario_traffic, tier_traces


def _load_trace(spec: str, fmt: str | None, mapping: str | None):
    from tokenfleet.workload import read_trace, sample_path

    path = sample_path(spec.removeprefix("sample:")) if spec.startswith("sample:") else Path(
        spec)
    return read_trace(path, format=fmt, mapping=mapping)


def build_traffic(plan: Plan, traces: list[str], fmt: str | None, mapping: str | None,
                  scenario: Path | None, tier: str | None, rate: float | None,
                  duration: float | None, seed: int) -> Workload:
    """The workload the flags describe (see ``simulate --help``)."""
    if scenario is not None:
        if traces or rate is not None:
            raise TokenfleetError("--scenario takes each tier's traffic from the scenario; "
                                  "do not combine it with --trace or --rate")
        return _first(scenario_traffic(plan, str(scenario), duration, seed), duration)
    if traces:
        if rate is not None:
            raise TokenfleetError("give --trace or --rate, not both")
        return _first(_from_traces(plan, traces, fmt, mapping, tier, seed), duration)
    if duration is None:
        raise TokenfleetError("give --trace FILE, --scenario FILE, or --duration SECONDS "
                              "(with optional --rate) to generate traffic")
    w = planned_traffic(plan, duration, rate, seed)
    if tier is not None:
        keep = [i for i, k in enumerate(w.keys) if k.tier == tier]
        if not keep:
            raise TokenfleetError(f"--tier '{tier}' has no planned traffic")
        w = w.subset(np.isin(w.key, keep))
    return w


def _first(w: Workload, duration: float | None) -> Workload:
    """Only the first ``duration`` seconds of a replayed trace."""
    if duration is None:
        return w
    if not duration > 0:
        raise TokenfleetError(f"--duration must be > 0 seconds, got {duration}")
    cut = w.subset(w.arrival_s < duration, f"{w.source} [0, {duration:g} s)")
    if len(cut) == 0:
        raise TokenfleetError(f"no requests arrive in the first {duration:g} s of "
                              f"{w.source}")
    return cut


def _from_traces(plan: Plan, traces: list[str], fmt: str | None, mapping: str | None,
                 tier: str | None, seed: int) -> Workload:
    per_tier = [t for t in traces if "=" in t and not Path(t).exists()]
    if per_tier and len(per_tier) != len(traces):
        raise TokenfleetError("--trace: either one trace for all tiers, or TIER=FILE "
                              "for every trace")
    if per_tier:
        tiers = {t.name for t in plan.tiers}
        loaded = {}
        for spec in per_tier:
            name, _, file = spec.partition("=")
            if name not in tiers:
                raise TokenfleetError(f"--trace {spec}: '{name}' is not a tier of the "
                                      f"plan; tiers: {', '.join(sorted(tiers))}")
            loaded[name] = _load_trace(file, fmt, mapping)
        return tier_traces(plan, loaded, seed=seed)
    if len(traces) > 1:
        raise TokenfleetError("give one --trace for all tiers, or TIER=FILE per tier")
    return prepare_workload(plan, _load_trace(traces[0], fmt, mapping), tier=tier,
                            seed=seed)
