"""The gateway's ``backends.yaml`` for a plan: which URLs serve each pool.

Used by ``tokenfleet export`` (Kubernetes Service URLs) and ``tokenfleet emulate
--plan`` (local emulator ports). The format is ``tokenfleet.route.config.BackendsFile``;
tests load every file written here through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class PoolBackendsEntry:
    pool: str
    served_model: str
    urls: tuple[str, ...]
    max_in_flight: int | None = None  # per backend


def backends_yaml(entries: list[PoolBackendsEntry], header: str, policy: str = "plan") -> str:
    """The file's text: a comment ``header`` (one line per ``\\n``), then the YAML."""
    pools: dict[str, dict[str, object]] = {}
    for e in entries:
        spec: dict[str, object] = {"model": e.served_model}
        if e.max_in_flight is not None:
            spec["max_in_flight"] = e.max_in_flight
        spec["backends"] = list(e.urls)
        pools[e.pool] = spec
    body = yaml.safe_dump({"gateway": {"policy": policy}, "pools": pools}, sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + body
