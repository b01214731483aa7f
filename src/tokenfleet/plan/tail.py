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

from scipy.special import gammainccinv, ndtri


def occupancy_quantile(mean: float, percentile: float, burst: float = 1.0) -> float:
    """``percentile`` of a replica's sequences in flight at mean occupancy ``mean``:
    Poisson for ``burst`` = 1, a normal with variance ``burst * mean`` otherwise."""
    from scipy.stats import poisson  # the definition, for tests: the planner uses the closed form

    if mean <= 0:
        return 0.0
    q = percentile / 100.0
    if burst <= 1.0:
        return float(poisson.ppf(q, mean))
    return mean + float(ndtri(q)) * math.sqrt(burst * mean)


def tail_rate_factor(concurrency: float, percentile: float, burst: float = 1.0) -> float:
    """Fraction of the steady-state SLO rate a replica takes so that the
    ``percentile`` of its occupancy stays within ``concurrency`` (its steady batch at
    the SLO): the largest mean occupancy whose quantile fits, over ``concurrency``. 1
    for a 50th percentile of a large batch, smaller for small batches and high
    percentiles.

    Closed form, as the planner calls this for every candidate and bucket (a bisection
    over ``scipy.stats.poisson.ppf`` took ~15 s of the example's plan): the Poisson
    ``q``-quantile is at most ``n = floor(c)`` while ``P(N <= n) = Q(n + 1, L) >= q``,
    and ``Q`` (the regularized upper incomplete gamma) falls with ``L``, so the largest
    such mean is ``gammainccinv(n + 1, q)``; the normal case solves
    ``L + z sqrt(b L) = c`` for ``sqrt(L)``. tests/plan/test_tail.py checks both against
    a bisection on :func:`occupancy_quantile`."""
    if concurrency <= 0:
        return 0.0
    q = percentile / 100.0
    if burst <= 1.0:
        # a hair inside the boundary, where the quantile steps up to n + 1
        largest = float(gammainccinv(math.floor(concurrency) + 1.0, q)) * (1 - 1e-9)
    else:
        zb = float(ndtri(q)) * math.sqrt(burst)
        largest = ((-zb + math.sqrt(zb * zb + 4.0 * concurrency)) / 2.0) ** 2
    # a replica with a steady batch of one still serves something
    return min(max(largest / concurrency, MIN_FACTOR), 1.0)


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
