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

Real traces are burstier than Poisson at the seconds that a TTFT SLO is written in: the
bundled Azure code trace carries, at one minute, 4x its mean rate, and over ten seconds
13x. Capacity sized at the busiest minute then queues for the length of every burst.
:func:`burst_factor` sizes for the trace's own arrivals instead: the smallest drain rate
at which a fluid queue fed by the trace keeps the TTFT percentile of its waits within a
share of the SLO, as a multiple of the busiest window's rate.
"""

from __future__ import annotations

import math

import numpy as np
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


# The share of a TTFT SLO a request may spend queued in a burst: the rest is its own
# prefill and the batch it joins (the steady TTFT the performance model sizes for).
QUEUE_SHARE = 0.5
_MAX_BINS = 2_000_000  # a day-long trace at 50 ms bins is 1.7 M: one pass each, no sort


def arrivals_by_bin(arrival_s: np.ndarray, edges_s: np.ndarray, scale: float) -> np.ndarray:
    """Requests arriving between consecutive ``edges_s`` once a trace (sorted
    ``arrival_s``) is scaled by ``scale`` as the simulator scales it
    (``Trace.scale_rate``, resample): each request once at its time (kept with
    probability ``scale`` when ``scale`` < 1), its ``scale - 1`` extra copies spread
    evenly over the gap to the next arrival (their expectation)."""
    t = arrival_s
    gap = np.diff(t, append=t[-1] + (float(np.median(np.diff(t))) if t.size > 1 else 1.0))
    k = np.searchsorted(t, edges_s, side="right") - 1  # last arrival at or before the edge
    kk = np.clip(k, 0, None)
    part = np.clip((edges_s - t[kk]) / np.maximum(gap[kk], 1e-12), 0.0, 1.0)
    before = np.where(k >= 0, min(scale, 1.0) * (k + 1) + max(scale - 1.0, 0.0) * (k + part),
                      0.0)
    return np.diff(before)


def _late_share(a: np.ndarray, bin_s: float, rate_per_s: float, wait_s: float) -> float:
    """Share of the arrivals ``a`` (per bin) that wait longer than ``wait_s`` in a fluid
    queue drained at ``rate_per_s``: the backlog at a bin's start (Lindley's recursion
    in closed form, ``S_n - min_{m<=n} S_m``) over the drain rate."""
    s = np.concatenate(([0.0], np.cumsum(a - rate_per_s * bin_s)))
    backlog = (s - np.minimum.accumulate(s))[:-1]
    return float(a[backlog > wait_s * rate_per_s].sum() / a.sum())


def burst_factor(arrival_s: np.ndarray, peak_rate_per_s: float, wait_s: float,
                 percentile: float, scale: float = 1.0) -> float:
    """The drain rate (requests/s) a tier needs so that ``percentile`` of its requests
    wait at most ``wait_s`` in a fluid queue fed by the trace's arrivals (scaled by
    ``scale``), as a multiple of ``peak_rate_per_s`` (the busiest window's rate of the
    same scaled trace). 1 for an empty trace or no wait bound; below 1 when the peak
    window itself can be queued through within the bound.

    A fluid queue is the lower bound of what any fleet of that total rate achieves
    (one perfectly shared server, no per-request service time): it captures the
    bursts, not the model's error, which the simulation in the loop measures.
    Bins of 50 ms (shorter for a tight bound, longer for a long trace)."""
    t = np.sort(np.asarray(arrival_s, dtype=float))
    if t.size < 2 or peak_rate_per_s <= 0 or not wait_s > 0 or not math.isfinite(wait_s):
        return 1.0
    span = float(t[-1] - t[0])
    bin_s = max(min(0.05, wait_s / 20.0), span / _MAX_BINS)
    a = arrivals_by_bin(t, np.arange(t[0], t[-1] + 2 * bin_s, bin_s), scale)
    if a.sum() <= 0:
        return 1.0
    miss = 1.0 - percentile / 100.0
    lo, hi = float(a.sum()) / span, float(a.max()) / bin_s * 2.0
    if _late_share(a, bin_s, lo, wait_s) <= miss:
        return lo / peak_rate_per_s
    for _ in range(40):  # geometric bisection to ~1e-6 relative
        mid = math.sqrt(lo * hi)
        if _late_share(a, bin_s, mid, wait_s) <= miss:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.0 + 1e-6:
            break
    return hi / peak_rate_per_s
