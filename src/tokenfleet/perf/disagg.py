"""Disaggregated prefill and decode: the KV cache a prompt hands over, the time the
link takes to move it, and the prefill:decode pool ratio that balances two pools.

A prefill pool computes a prompt's KV cache and its first token; a decode pool
receives that KV cache and generates the rest (DistServe, Splitwise, Mooncake,
NVIDIA Dynamo, llm-d). The handover costs ``bytes / bandwidth + latency`` on the
link between the pools, and that time is added to TTFT:

* same chip kind inside one scale-up domain (NVLink, ICI, NeuronLink): the chip's
  scale-up bandwidth;
* across hosts — and always across vendors — the cloud's scale-out network (EFA,
  InfiniBand, RoCE) at the slower side's per-chip rate.

Bandwidths are the catalog's per-chip ``scaleup_gbps`` / ``scaleout_gbps`` (GB/s,
bidirectional, each with its source in ``catalog/data/accelerators.yaml``); one
direction carries half. The KV cache of a unit is sharded over its chips and every
chip sends its shard over its own link, so a unit of ``n`` chips moves ``n`` times
one chip's rate. The one-way message latencies are assumptions (order of magnitude
of RDMA and of a scale-up fabric), overridable by callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.precision import kv_bytes

LinkKind = Literal["scale-up", "scale-out"]

# Assumptions (no source read gives a per-transfer setup cost): an RDMA write across
# hosts takes some 10 us to start; a scale-up fabric some 2 us.
SCALEOUT_LATENCY_S = 10e-6
SCALEUP_LATENCY_S = 2e-6


@dataclass(frozen=True)
class Link:
    """A one-direction path between a prefill and a decode unit."""

    kind: LinkKind | Literal["custom"]
    gb_per_s_per_chip: float  # one direction, GB/s
    latency_s: float
    basis: str


def prompt_kv_bytes(model: ModelSpec, prompt_tokens: int, kv_precision: str) -> float:
    """Bytes of KV cache a prompt of ``prompt_tokens`` tokens leaves behind (whole model:
    every layer, sliding-window layers capped at their window)."""
    return float(arch.kv_elements(model, prompt_tokens)) * kv_bytes(kv_precision)


def link_between(prefill: Accelerator, decode: Accelerator, same_domain: bool = False) -> Link:
    """The link a prompt's KV takes from a prefill chip to a decode chip.

    ``same_domain``: both pools sit in one scale-up domain (only possible for one chip
    kind); otherwise the transfer crosses hosts on the scale-out network."""
    if same_domain:
        if prefill.id != decode.id:
            raise TokenfleetError(
                f"{prefill.id} and {decode.id} cannot share a scale-up domain; "
                "KV between chip kinds crosses the scale-out network")
        return Link("scale-up", prefill.scaleup_gbps / 2, SCALEUP_LATENCY_S,
                    f"{prefill.id} scale-up ({prefill.scaleup or 'catalog'}), "
                    f"{prefill.scaleup_gbps:g} GB/s bidirectional per chip")
    slow = min(prefill.scaleout_gbps, decode.scaleout_gbps)
    return Link("scale-out", slow / 2, SCALEOUT_LATENCY_S,
                f"scale-out network at the slower side's {slow:g} GB/s per chip "
                f"({prefill.id} {prefill.scaleout_gbps:g}, {decode.id} {decode.scaleout_gbps:g})")


def pair_link(prefill: Accelerator, prefill_where: tuple[str, str], prefill_chips: int,
              decode: Accelerator, decode_where: tuple[str, str], decode_chips: int) -> Link:
    """The link between a prefill and a decode unit of a disaggregated pair, placed at
    ``(cloud, region)``: scale-up when both are one chip kind in one place and together
    fit one scale-up domain (e.g. two units inside one NVL72 rack), else scale-out."""
    same = (prefill.id == decode.id and prefill_where == decode_where
            and prefill_chips + decode_chips <= prefill.scaleup_domain)
    return link_between(prefill, decode, same_domain=same)


def custom_link(gb_per_s_per_chip: float, latency_s: float = SCALEOUT_LATENCY_S) -> Link:
    if not (gb_per_s_per_chip > 0 and math.isfinite(gb_per_s_per_chip)):
        raise TokenfleetError(f"KV link bandwidth must be a positive GB/s, got {gb_per_s_per_chip}")
    return Link("custom", gb_per_s_per_chip, latency_s, f"given: {gb_per_s_per_chip:g} GB/s/chip")


def transfer_s(kv_bytes_total: float, link: Link, chips: int) -> float:
    """Seconds to move ``kv_bytes_total`` over ``chips`` parallel links of ``link``."""
    return link.latency_s + kv_bytes_total / (link.gb_per_s_per_chip * 1e9 * max(chips, 1))


# ---- pool capacities and the P:D ratio -------------------------------------------------


def prefill_requests_per_s(prompts_per_step: float, step_s: float) -> float:
    """Requests per second a prefill unit takes: prompts per step over the step time."""
    return prompts_per_step / step_s if step_s > 0 else 0.0


def decode_requests_per_s(sequences: float, step_s: float, tokens_per_step: float,
                          output_tokens: int) -> float:
    """Requests per second a decode unit finishes: every step advances ``sequences``
    sequences by ``tokens_per_step`` tokens (1, or more with speculation); a request
    needs ``output_tokens`` of them (counted as in ``estimate``: the one token the
    prefill pool made is not subtracted)."""
    if step_s <= 0:
        return 0.0
    return sequences * tokens_per_step / step_s / max(output_tokens, 1)


def pd_ratio(prefill_rps_per_unit: float, decode_rps_per_unit: float) -> float:
    """Prefill units per decode unit that balance the two pools' request rates."""
    if prefill_rps_per_unit <= 0:
        raise TokenfleetError("a prefill unit with no capacity cannot be balanced")
    return decode_rps_per_unit / prefill_rps_per_unit


def balanced_pools(rate_rps: float, prefill_rps_per_unit: float, decode_rps_per_unit: float
                   ) -> tuple[int, int]:
    """Fewest (prefill units, decode units) that serve ``rate_rps`` requests per second."""
    if prefill_rps_per_unit <= 0 or decode_rps_per_unit <= 0:
        raise TokenfleetError("both pools need a positive capacity per unit")
    return (max(math.ceil(rate_rps / prefill_rps_per_unit - 1e-9), 1),
            max(math.ceil(rate_rps / decode_rps_per_unit - 1e-9), 1))
