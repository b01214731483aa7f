"""Capacity at a latency percentile, not at the mean.

The performance model's SLO mode gives, per replica, the highest rate ``r*`` whose
*steady* batch ``c*`` (sequences in flight) keeps TTFT and TPOT within the SLOs. Real
arrivals are random: with continuous batching a replica holds every request from
arrival to its last token, so its occupancy is that of an M/G/inf queue, Poisson with
mean ``L = c* r / r*`` at rate ``r`` (Poisson arrivals; a dispersion index ``burst`` > 1
widens it for burstier traffic). A request's step times follow the batch it shares, so
the SLO holds for a fraction ``q`` of requests while the ``q``-quantile of the
occupancy stays within ``c*``. This module finds the rate where it does: the capacity
the planner counts on at the tier's SLO percentile. Tests check it against the
simulator (tests/sim/test_tail_capacity.py).
"""

from __future__ import annotations

import math

from scipy.stats import norm, poisson


def occupancy_quantile(mean: float, percentile: float, burst: float = 1.0) -> float:
    """``percentile`` of a replica's sequences in flight at mean occupancy ``mean``:
    Poisson for ``burst`` = 1, a normal with variance ``burst * mean`` otherwise."""
    if mean <= 0:
        return 0.0
    q = percentile / 100.0
    if burst <= 1.0:
        return float(poisson.ppf(q, mean))
    return mean + float(norm.ppf(q)) * math.sqrt(burst * mean)


def tail_rate_factor(concurrency: float, percentile: float, burst: float = 1.0) -> float:
    """Fraction of the steady-state SLO rate a replica takes so that the
    ``percentile`` of its occupancy stays within ``concurrency`` (its steady batch at
    the SLO). Bisection on the mean occupancy; 1 for a 50th percentile of a large
    batch, smaller for small batches and high percentiles."""
    if concurrency <= 0:
        return 0.0
    lo, hi = 0.0, float(concurrency)
    if occupancy_quantile(hi, percentile, burst) <= concurrency:
        return 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if occupancy_quantile(mid, percentile, burst) <= concurrency:
            lo = mid
        else:
            hi = mid
    # a replica with a steady batch of one still serves something
    return max(lo / concurrency, MIN_FACTOR)


MIN_FACTOR = 0.05


def binding_percentile(ttft_s: float | None, tpot_s: float | None, slo_ttft_s: float | None,
                       slo_tpot_s: float | None, ttft_percentile: float,
                       tpot_percentile: float) -> float:
    """Which SLO percentile limits a replica's batch: the TPOT percentile when its
    steady TPOT is at the bound (decode speed limits the batch), otherwise the TTFT
    percentile (memory or the engine's sequence cap limits it: excess requests wait,
    which shows in TTFT)."""
    near = 0.9  # steady TPOT within 10 % of the bound: the bound sets the batch
    if slo_tpot_s is not None and tpot_s is not None and tpot_s >= near * slo_tpot_s:
        if slo_ttft_s is not None and ttft_s is not None and ttft_s >= near * slo_ttft_s:
            return max(ttft_percentile, tpot_percentile)
        return tpot_percentile
    return ttft_percentile
