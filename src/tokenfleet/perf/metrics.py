"""Serving metrics, defined once for the whole of tokenfleet.

Every number tokenfleet prints, predicts, simulates or measures uses these definitions
(the performance model, the simulator, the load generator and the reports):

* **TTFT** (time to first token): seconds from the request's *arrival* (when it reaches
  the system, queueing included) to its first output token.
* **TPOT** (time per output token): mean seconds between output tokens *after the
  first*: ``(t_last - t_first) / (n_output - 1)``; undefined (None) for one token.
* **End-to-end latency**: arrival to last token, = TTFT + (n - 1) * TPOT.
* **Throughput**: output tokens per second of the whole unit or fleet, unless a name
  says otherwise (``total_tokens_per_s`` counts prompt tokens too).
* **Goodput**: requests per second that met every SLO of their tier.
* **SLO attainment**: of the *arrived* requests, the fraction that completed within
  every SLO of their tier; rejected, shed and failed requests count as misses
  (:func:`attainment`). The planner's promise, the simulator, the sweep and the live
  gateway's summary all use this one definition.
* **Attainment of one SLO at a percentile**: an SLO "TTFT p99 <= 1 s" holds when at
  least 99 % of arrived requests have TTFT <= 1 s (:func:`attainment` of those).
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
from pydantic import BaseModel


@overload
def ttft(arrival_s: float, first_token_s: float) -> float: ...
@overload
def ttft(arrival_s: np.ndarray, first_token_s: np.ndarray) -> np.ndarray: ...
def ttft(arrival_s: np.ndarray | float, first_token_s: np.ndarray | float
         ) -> np.ndarray | float:
    """Time to first token, seconds."""
    return np.subtract(first_token_s, arrival_s)


@overload
def tpot(first_token_s: float, last_token_s: float, output_tokens: int) -> float: ...
@overload
def tpot(first_token_s: np.ndarray, last_token_s: np.ndarray, output_tokens: np.ndarray
         ) -> np.ndarray: ...
def tpot(first_token_s: np.ndarray | float, last_token_s: np.ndarray | float,
         output_tokens: np.ndarray | int) -> np.ndarray | float:
    """Mean time per output token after the first, seconds (NaN where only one token)."""
    if isinstance(output_tokens, int):  # one request (the gateway's hot path): no NumPy
        if output_tokens <= 1:
            return math.nan
        return (float(last_token_s) - float(first_token_s)) / (output_tokens - 1)
    n = np.asarray(output_tokens, dtype=float)
    gap = np.subtract(last_token_s, first_token_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(n > 1, gap / np.maximum(n - 1, 1), np.nan)
    return out if out.ndim else float(out)


@overload
def e2e(arrival_s: float, last_token_s: float) -> float: ...
@overload
def e2e(arrival_s: np.ndarray, last_token_s: np.ndarray) -> np.ndarray: ...
def e2e(arrival_s: np.ndarray | float, last_token_s: np.ndarray | float
        ) -> np.ndarray | float:
    """End-to-end latency, seconds."""
    return np.subtract(last_token_s, arrival_s)


def meets_slo(ttft_s: np.ndarray, tpot_s: np.ndarray,
              slo_ttft: np.ndarray | float | None, slo_tpot: np.ndarray | float | None
              ) -> np.ndarray:
    """Per request: True where every given SLO holds (a one-token request has no TPOT
    and so cannot miss a TPOT SLO). An SLO may be one bound or one per request."""
    ok = np.ones(np.shape(ttft_s), dtype=bool)
    if slo_ttft is not None:
        ok &= np.asarray(ttft_s) <= slo_ttft
    if slo_tpot is not None:
        t = np.asarray(tpot_s, dtype=float)
        ok &= np.isnan(t) | (t <= slo_tpot)
    return ok


def attainment(met: int, arrived: int) -> float | None:
    """Fraction of arrived requests that met the SLO(s); None when none arrived.
    ``met`` counts completed requests within the bound only, so rejected, shed and
    failed requests are misses."""
    if arrived <= 0:
        return None
    return min(met, arrived) / arrived


class Latency(BaseModel):
    """Percentiles of one latency (seconds; ±0.6 % histogram resolution)."""

    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    count: int
