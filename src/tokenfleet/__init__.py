"""tokenfleet: plan, simulate and route LLM inference across mixed accelerators.

The public entry points, for notebooks and scripts (each typed, none prints)::

    import tokenfleet as tf
    e = tf.estimate(tf.Query(model="llama-3.1-70b", accelerator="maia-200", count=4))
    sc, base = tf.load_scenario("examples/frontier-lab.yaml")
    plan = tf.plan_scenario(sc, base, name=sc.name)

They are imported on first use (PEP 562), so ``import tokenfleet`` and the CLI's
``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "load_catalog": "tokenfleet.catalog.loader",
    "Query": "tokenfleet.perf.estimate",
    "Estimate": "tokenfleet.perf.estimate",
    "estimate": "tokenfleet.perf.estimate",
    "compare": "tokenfleet.perf.estimate",
    "breakeven": "tokenfleet.perf.estimate",
    "load_scenario": "tokenfleet.plan.scenario",
    "plan_scenario": "tokenfleet.plan.planner",
    "Plan": "tokenfleet.plan.schema",
    "load_plan": "tokenfleet.plan.schema",
    "plan_economics": "tokenfleet.plan.economics",
    "build_traffic": "tokenfleet.sim.sources",
    "simulate": "tokenfleet.sim.run",
    "export_plan": "tokenfleet.deploy.bundle",
    "TokenfleetError": "tokenfleet.errors",
}

__all__ = [
    "Estimate", "Plan", "Query", "TokenfleetError", "__version__", "breakeven",
    "build_traffic", "compare", "estimate", "export_plan", "load_catalog", "load_plan",
    "load_scenario", "plan_economics", "plan_scenario", "simulate",
]

if TYPE_CHECKING:
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.deploy.bundle import export_plan
    from tokenfleet.errors import TokenfleetError
    from tokenfleet.perf.estimate import Estimate, Query, breakeven, compare, estimate
    from tokenfleet.plan.economics import plan_economics
    from tokenfleet.plan.planner import plan_scenario
    from tokenfleet.plan.scenario import load_scenario
    from tokenfleet.plan.schema import Plan, load_plan
    from tokenfleet.sim.run import simulate
    from tokenfleet.sim.sources import build_traffic


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenfleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
