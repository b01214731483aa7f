"""The run summary that ``tokenfleet loadtest --json`` writes.

Its fields are the ones of ``tokenfleet simulate --json``
(:class:`tokenfleet.sim.results.SimSummary`) that a client can observe, with the same
names, units and nesting — latencies are the simulator's own :class:`Latency` model —
so a plan's simulated and live behaviour compare field by field: ``requests,
completed, retried, rejected, cost_usd, energy_kwh, wall_s`` and per tier
``ttft_s / tpot_s / e2e_s {p50, p90, p99, mean, count}, slo_attainment, ...``.
What only a simulator sees (queue time, KV occupancy, preemptions, Little's-law
checks) is left out; ``failed`` and ``errors`` are added, because live requests can
also fail.

Definitions (the same as :mod:`tokenfleet.perf`): TTFT from sending the request to
the first output token; TPOT the mean time between output tokens *after* the first;
e2e from sending to the last byte; all seconds, measured by the client.
``slo_attainment`` is the fraction of a tier's requests (rejected and failed ones
count as misses) that completed within both of the tier's SLOs; None when the tier
has no SLO. Money in USD, energy in kWh (the tier's pools at TDP for the run's wall
time, as the plan costs them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from tokenfleet.perf.metrics import Latency


def latency(values: Sequence[float]) -> Latency:
    """Exact percentiles, mean and count of ``values`` (seconds)."""
    if len(values) == 0:
        return Latency(p50=None, p90=None, p99=None, mean=None, count=0)
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return Latency(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(a.mean()),
                   count=int(a.size))


class LiveTierResult(BaseModel):
    """One tier, as the client saw it (names as in the simulator's ``TierResult``)."""

    requests: int = Field(description="sent for this tier")
    completed: int
    rejected: int = Field(description="HTTP 429")
    failed: int = Field(description="any other error, mid-stream error events included")
    retried: int = Field(description="completed or not, served after more than one attempt")
    slo_ttft_s: float | None
    slo_tpot_s: float | None
    ttft_s: Latency
    tpot_s: Latency
    e2e_s: Latency
    slo_attainment: float | None = Field(
        description="fraction of sent requests finished within both SLOs")
    mean_ttft_within_slo: bool | None
    mean_tpot_within_slo: bool | None
    output_tokens_per_s: float
    goodput_requests_per_s: float


class LivePoolResult(BaseModel):
    """One pool (from the gateway's ``X-Tokenfleet-Pool`` header)."""

    requests: int
    completed: int
    ttft_s: Latency
    tpot_s: Latency
    e2e_s: Latency


class RunSummary(BaseModel):
    """Every request sent is in exactly one of ``completed``, ``rejected`` or
    ``failed``; ``retried`` counts those the gateway tried on more than one backend."""

    source: str = Field("loadtest", description="what produced it")
    target: str = Field("", description="URL the load was sent to")
    requests: int
    completed: int
    retried: int
    rejected: int
    failed: int
    errors: dict[str, int] = Field(description="failure reason -> count")
    cost_usd: float | None = Field(description="pools' $/h x wall time; None if unknown")
    energy_kwh: float | None = Field(description="pools' TDP x wall time; None if unknown")
    wall_s: float = Field(description="first request sent to last response ended")
    offered_requests_per_s: float
    tiers: dict[str, LiveTierResult]
    pools: dict[str, LivePoolResult]
    notes: list[str] = []
