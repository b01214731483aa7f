"""Gray-failure detection: a backend that answers, but slowly or erratically, is taken
out of rotation for a cool-down, then probed back — as Envoy's outlier detection does.

Each backend keeps exponentially weighted moving averages (EWMA) of its TTFT and TPOT,
fed by the requests it serves. A backend is an *outlier* when, with enough samples on
both sides, its average is more than ``slow_factor`` times the median of its peers' (the
other backends of its pool: same model on the same chips, so they should be alike).
(A backend whose requests fail in a row is taken out by its circuit breaker,
``route/breaker.py``: the other half of Envoy's outlier detection.) An outlier is
*ejected* for
``base_ejection_s`` times the number of times it was ejected (a backend that keeps being
slow stays out longer), but never more than ``max_ejection_percent`` of a pool at once
(always at least one, as in Envoy). When the cool-down ends, one trial request goes
through; its sample (or its failure) decides whether the backend is back or ejected
again.

Between "healthy" and "ejected", :func:`relative_speed` gives each backend a weight
(its peers' median over its own average, at most 1) that the router uses to send a
somewhat slower backend proportionally less. Pure logic: the caller gives the times.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Protocol


class OutlierConfig(Protocol):
    enabled: bool
    ewma_alpha: float
    slow_factor: float
    min_samples: int
    min_difference_s: float
    base_ejection_s: float
    max_ejection_s: float
    max_ejection_percent: float


class LatencyStats:
    """EWMAs of one backend's TTFT and TPOT (seconds) and its ejection state."""

    __slots__ = ("ttft_s", "tpot_s", "ttft_n", "tpot_n", "ejected_until", "ejections",
                 "trial", "trial_in_flight")

    def __init__(self) -> None:
        self.ttft_s = 0.0
        self.tpot_s = 0.0
        self.ttft_n = 0
        self.tpot_n = 0
        self.ejected_until = 0.0  # monotonic s; 0 = not ejected
        self.ejections = 0
        self.trial = False  # the cool-down ended: one request decides
        self.trial_in_flight = False

    def reset_latency(self) -> None:
        self.ttft_s = self.tpot_s = 0.0
        self.ttft_n = self.tpot_n = 0

    def add_ttft(self, s: float, alpha: float) -> None:
        self.ttft_s = s if self.ttft_n == 0 else self.ttft_s + alpha * (s - self.ttft_s)
        self.ttft_n += 1

    def add_tpot(self, s: float, alpha: float) -> None:
        self.tpot_s = s if self.tpot_n == 0 else self.tpot_s + alpha * (s - self.tpot_s)
        self.tpot_n += 1

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def allows(self, now: float) -> bool:
        """Whether a request may go to it now (one at a time while on trial)."""
        if now < self.ejected_until:
            return False
        return not (self.trial and self.trial_in_flight)


def _peer_median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def slow_reason(me: LatencyStats, peers: Sequence[LatencyStats], cfg: OutlierConfig,
                own_samples: int | None = None) -> str | None:
    """Why ``me`` is a slow outlier against ``peers`` (None when it is not). A backend
    on trial is judged on ``own_samples`` = 1 sample of its own."""
    n = cfg.min_samples
    own = n if own_samples is None else own_samples
    for what, mine, mine_n, theirs in (
            ("TTFT", me.ttft_s, me.ttft_n, [p.ttft_s for p in peers if p.ttft_n >= n]),
            ("TPOT", me.tpot_s, me.tpot_n, [p.tpot_s for p in peers if p.tpot_n >= n])):
        med = _peer_median(theirs)
        if mine_n >= own and med is not None and mine > cfg.slow_factor * med \
                and mine - med > cfg.min_difference_s:
            return (f"{what} {mine * 1e3:.0f} ms is over {cfg.slow_factor:g}x its peers' "
                    f"median {med * 1e3:.0f} ms")
    return None


def relative_speed(me: LatencyStats, peers: Sequence[LatencyStats], cfg: OutlierConfig
                   ) -> float:
    """Weight in (0, 1]: the peers' median TPOT over this backend's (1 without data)."""
    n = cfg.min_samples
    med = _peer_median([p.tpot_s for p in peers if p.tpot_n >= n])
    if me.tpot_n < n or med is None or me.tpot_s <= 0 or me.tpot_s - med <= cfg.min_difference_s:
        return 1.0
    return max(min(med / me.tpot_s, 1.0), 0.05)


def ejection_s(stats: LatencyStats, cfg: OutlierConfig) -> float:
    """Cool-down for the next ejection: base x times ejected, capped."""
    return min(cfg.base_ejection_s * (stats.ejections + 1), cfg.max_ejection_s)


def may_eject(pool: Sequence[LatencyStats], now: float, cfg: OutlierConfig) -> bool:
    """Whether one more backend of this pool may be ejected (max_ejection_percent,
    but at least one)."""
    out = sum(1 for s in pool if s.ejected(now))
    return out == 0 or (out + 1) <= cfg.max_ejection_percent / 100 * len(pool)
