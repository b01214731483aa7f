"""Every pool of a plan emulated in one process: one :class:`Emulator` per pool, each on
its own port, paced by the performance model of the pool's unit (the planner's inputs).

``tokenfleet emulate --plan plan.json`` runs this and writes the ``backends.yaml`` that
points the gateway at the ports, so ``tokenfleet serve`` fronts the whole plan on one
machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfleet.plan.schema import Plan, PlanUnit
from tokenfleet.route.emulator import Emulator, Faults, PoolSpec, build_engine
from tokenfleet.route.server import RunningServer


@dataclass
class EmulatedPool:
    unit: PlanUnit
    emulator: Emulator
    server: RunningServer
    max_batch: int

    @property
    def url(self) -> str:
        return self.server.url


def emulators_for(plan: Plan, max_queue: int = 4096, seed: int = 0,
                  pools: list[str] | None = None) -> list[tuple[PlanUnit, Emulator]]:
    """An emulator per pool with replicas (all pools, or those named in ``pools``)."""
    units = [u for u in plan.units if u.replicas > 0 and (pools is None or u.pool in pools)]
    out = []
    for i, u in enumerate(units):
        engine, _unit = build_engine(PoolSpec.from_plan_unit(u), max_queue=max_queue)
        out.append((u, Emulator(engine, u.model, Faults(), seed=seed + i,
                                info={"pool": u.pool, "model": u.model,
                                      "accelerator": u.accelerator, "replicas": u.replicas})))
    return out


async def start_all(emulators: list[tuple[PlanUnit, Emulator]], host: str = "127.0.0.1",
                    first_port: int = 0) -> list[EmulatedPool]:
    """Listen on ``first_port``, ``first_port + 1``, ... (0: a free port each)."""
    started: list[EmulatedPool] = []
    try:
        for i, (u, em) in enumerate(emulators):
            server = await em.serve(host, first_port + i if first_port else 0)
            started.append(EmulatedPool(u, em, server, getattr(em.engine, "max_batch", 0)))
    except BaseException:
        await stop_all(started)
        raise
    return started


async def stop_all(pools: list[EmulatedPool]) -> None:
    for p in pools:
        await p.server.stop()
