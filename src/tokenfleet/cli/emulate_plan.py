"""``tokenfleet emulate --plan plan.json`` without ``--pool``: every pool of the plan in
this process, one port each, and the ``backends.yaml`` that points the gateway at them
(both halves of a disaggregated pair: the gateway sends the prompt to the prefill pool,
then the request to the decode pool)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import typer

from tokenfleet.errors import TokenfleetError


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def emulate_plan(plan_path: Path, host: str, port: int, backends_out: Path, max_queue: int,
                 seed: int, json_out: bool,
                 serve_until_signal: Callable[[Callable[[], Awaitable[None]],
                                               Callable[[], Awaitable[None]]],
                                              Coroutine[Any, Any, None]]) -> None:
    from tokenfleet.deploy.backends import PoolBackendsEntry, backends_yaml
    from tokenfleet.plan.schema import load_plan
    from tokenfleet.route.plan_emulator import EmulatedPool, emulators_for, start_all, stop_all

    plan = load_plan(plan_path)
    # A backends.yaml left from an earlier run points at ports nobody serves; whoever
    # waits for the file (the README's walkthrough) must see only this run's.
    backends_out.unlink(missing_ok=True)
    emulators = emulators_for(plan, max_queue=max_queue, seed=seed)
    if not emulators:
        raise TokenfleetError(f"{plan_path}: no pool with replicas to emulate")
    running: list[EmulatedPool] = []

    async def start() -> None:
        running.extend(await start_all(emulators, host, port))
        entries = [PoolBackendsEntry(p.unit.pool, p.unit.model, (p.url,),
                                     # the emulator holds max_batch per replica in flight
                                     # and queues the rest: let the gateway send twice that
                                     2 * max(p.max_batch, 1) * p.unit.replicas
                                     * p.unit.layout.dp)
                   for p in running]
        header = (f"Written by `tokenfleet emulate --plan {plan_path}`: one emulated "
                  f"backend per pool on {host}.\nRun: tokenfleet serve --plan {plan_path} "
                  f"--backends {backends_out}")
        write_atomic(backends_out, backends_yaml(entries, header))
        if json_out:
            print(json.dumps({"backends_yaml": str(backends_out), "pools": [
                {"pool": p.unit.pool, "url": p.url, "served_model": p.unit.model,
                 "replicas": p.unit.replicas, "max_batch_per_replica": p.max_batch,
                 "role": p.unit.role}
                for p in running]}), flush=True)
        else:
            for p in running:
                typer.echo(f"emulating {p.unit.pool} ({p.unit.replicas} x "
                           f"{p.unit.chips_per_replica} {p.unit.accelerator}) as "
                           f"'{p.unit.model}' on {p.url}"
                           + (f" [{p.unit.role} half of a pair]" if p.unit.role != "both"
                              else ""), err=True)
            typer.echo(f"wrote {backends_out}", err=True)

    async def stop() -> None:
        await stop_all(running)

    asyncio.run(serve_until_signal(start, stop))
