"""Fleet simulator: replay a trace (or generated traffic) through a plan's fleet.

Every replica runs iteration-level continuous batching (token budget, chunked prefill,
KV-cache blocks, preemption with recompute) with step times from the performance model;
requests are routed by :mod:`tokenfleet.routing.policies` (shared with the live gateway);
failures, surges and price changes are shocks on a timeline.

Entry points (imported lazily, so ``tokenfleet.routing`` stays independent of the engine)::

    from tokenfleet.sim import simulate, planned_traffic, prepare_workload
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "simulate": "tokenfleet.sim.run",
    "prepare_workload": "tokenfleet.sim.run",
    "independent_parts": "tokenfleet.sim.run",
    "SimResult": "tokenfleet.sim.run",
    "SimOptions": "tokenfleet.sim.engine",
    "EngineConfig": "tokenfleet.sim.fleet",
    "SimSummary": "tokenfleet.sim.results",
    "planned_traffic": "tokenfleet.sim.traffic",
    "scenario_traffic": "tokenfleet.sim.traffic",
    "label_trace": "tokenfleet.sim.traffic",
    "Workload": "tokenfleet.sim.traffic",
    "parse_failure": "tokenfleet.sim.shocks",
    "parse_surge": "tokenfleet.sim.shocks",
    "parse_price": "tokenfleet.sim.shocks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenfleet.sim' has no attribute {name!r}")
