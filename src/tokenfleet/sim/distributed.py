"""Ray plumbing: run independent parts of one simulation, or many what-if simulations,
on a local Ray instance (default) or an existing cluster (``address``).

Ray is imported only here, so the rest of the simulator works without it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.sim.engine import RunRecord, SimOptions
from tokenfleet.sim.fleet import EngineConfig
from tokenfleet.sim.shocks import Failure, PriceChange
from tokenfleet.sim.traffic import Workload


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TokenfleetError("Ray is not installed: `pip install ray` to run on several "
                              "workers (or use --workers 1)") from None
    return ray


def ray_connect_hint(message: str, address: str | None, env: Mapping[str, str]) -> str:
    """What to try when joining a cluster fails. Ray clusters started with token
    authentication (``RAY_AUTH_MODE=token``) refuse a driver without the token, and Ray
    reports it only as a failed connection."""
    if not address:
        return ""
    if env.get("RAY_AUTH_MODE") == "token" and (env.get("RAY_AUTH_TOKEN")
                                                 or env.get("RAY_AUTH_TOKEN_PATH")):
        return (". RAY_AUTH_MODE=token and a token are set: check the token is the "
                "cluster's, and that the address and port (GCS, default 6379) are right")
    return (". If the cluster uses token authentication, run with RAY_AUTH_MODE=token and "
            "the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH; "
            "default ~/.ray/auth_token), e.g. RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... "
            "tokenfleet sweep grid.yaml --address HOST:6379"
            + (" (the cluster said: invalid or missing authentication token)"
               if "authenticat" in message.lower() or "UNAUTHENTICATED" in message else ""))


def unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``), or None
    when it accepts a TCP connection (or is not a host:port, e.g. ``auto``). Ray itself
    retries a dead address for minutes before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as e:
        return f"nothing accepts connections at {host}:{port} ({e.strerror or e})"


@contextmanager
def ray_session(workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """A Ray connection for the duration of the block.

    Without ``address``: a private local instance with ``workers`` CPUs (default: all
    cores), shut down afterwards. With ``address`` (``auto`` or ``host:port``): join that
    cluster and leave it running. An already initialised Ray is reused as is.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Workers must import tokenfleet the way this process does (src layout, editable).
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"),) if p)}} if os.environ.get(
        "PYTHONPATH") else None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if env:
        kwargs["runtime_env"] = env
    if address and (why := unreachable(address)):
        raise TokenfleetError(f"could not join the Ray cluster at {address}: {why}; start "
                              "it with `ray start --head` there, or leave --address out to "
                              "run on a local Ray instance")
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError...
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise TokenfleetError(f"could not start or join {where}: {e}"
                              + ray_connect_hint(str(e), address, os.environ)) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _part_task(plan_json: str, pool_ids: list[str], w: Workload, opt: SimOptions,
               failures: list[Failure], prices: list[PriceChange],
               engine: EngineConfig | None) -> RunRecord:
    from tokenfleet.sim.run import run_part

    return run_part(plan_json, pool_ids, w, opt, failures, prices, engine)


def run_parts(plan: Plan, w: Workload, parts: list[tuple[list[str], np.ndarray]],
              opt: SimOptions, failures: list[Failure], prices: list[PriceChange],
              engine: EngineConfig | None, workers: int, address: str | None
              ) -> list[RunRecord]:
    """Simulate each independent part on a Ray worker; records in part order."""
    plan_json = plan.model_dump_json()
    with ray_session(workers, address) as ray:
        task = ray.remote(_part_task)
        refs = [task.remote(plan_json, pool_ids, w.subset(mask), opt, failures, prices,
                            engine) for pool_ids, mask in parts]
        return list(ray.get(refs))


def run_tasks(fn: Callable[..., Any], args: list[tuple], workers: int | None,
              address: str | None, on_done: Callable[[int, Any], None]) -> None:
    """Run ``fn(*a)`` for every ``a`` on Ray; ``on_done(i, result_or_exception)`` is
    called as each finishes (a failing task hands its exception, it does not stop the
    others)."""
    with ray_session(workers, address) as ray:
        task = ray.remote(max_retries=0)(fn)
        refs = {task.remote(*a): i for i, a in enumerate(args)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    res = ray.get(ref)
                except Exception as e:  # the task's own error, wrapped by Ray
                    cause = getattr(e, "cause", None) or e
                    res = cause if isinstance(cause, Exception) else e
                on_done(refs[ref], res)
