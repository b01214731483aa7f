"""Every pool of a plan emulated in one process: one :class:`Emulator` per pool, each on
its own port, paced by the performance model of the pool's unit (the planner's inputs).

``tokenfleet emulate --plan plan.json`` runs this and writes the ``backends.yaml`` that
points the gateway at the ports, so ``tokenfleet serve`` fronts the whole plan on one
machine.

A disaggregated pair's two halves get one emulator each: the prefill pool's answers one
token after the prompt's prefill, the decode pool's waits the KV handover of the pair's
link (as the planner and the simulator cost it) and then decodes without prefilling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.perf.disagg import pair_link, prompt_kv_bytes, transfer_s
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


def prefill_halves(plan: Plan) -> dict[str, PlanUnit]:
    """decode pool id -> the prefill unit of its pair, for every whole pair of ``plan``."""
    pre = {u.pair: u for u in plan.units if u.role == "prefill" and u.pair is not None}
    return {u.pool: pre[u.pair] for u in plan.units
            if u.role == "decode" and u.pair is not None and u.pair in pre}


def handover_fn(pre: PlanUnit, dec: PlanUnit) -> Callable[[int], float]:
    """Seconds a prompt's KV cache takes from ``pre`` to ``dec``: the pair's link
    (``perf.disagg.pair_link``, the one the planner priced) and the prompt's KV bytes,
    sent over the prefill replica's tensor- and pipeline-parallel chips at once."""
    catalog = load_catalog()
    link = pair_link(catalog.accelerator(pre.accelerator), (pre.cloud, pre.region),
                     pre.chips_per_replica, catalog.accelerator(dec.accelerator),
                     (dec.cloud, dec.region), dec.chips_per_replica)
    model = catalog.model(pre.model)
    chips = pre.layout.tp * pre.layout.pp

    @lru_cache(maxsize=4096)
    def seconds(prompt_tokens: int) -> float:
        return transfer_s(prompt_kv_bytes(model, max(prompt_tokens, 1), pre.kv_precision),
                          link, chips)

    return seconds


def emulators_for(plan: Plan, max_queue: int = 4096, seed: int = 0,
                  pools: list[str] | None = None) -> list[tuple[PlanUnit, Emulator]]:
    """An emulator per pool with replicas (all pools, or those named in ``pools``)."""
    units = [u for u in plan.units if u.replicas > 0 and (pools is None or u.pool in pools)]
    prefill_of = prefill_halves(plan)
    out = []
    for i, u in enumerate(units):
        engine, _unit = build_engine(PoolSpec.from_plan_unit(u), max_queue=max_queue)
        pre = prefill_of.get(u.pool)
        handover = handover_fn(pre, u) if u.role == "decode" and pre is not None else None
        out.append((u, Emulator(engine, u.model, Faults(), seed=seed + i,
                                info={"pool": u.pool, "model": u.model,
                                      "accelerator": u.accelerator, "replicas": u.replicas,
                                      "role": u.role},
                                role=u.role, handover_s=handover)))
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
