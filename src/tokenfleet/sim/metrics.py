"""Streaming metrics of a simulation: fixed-size latency histograms and counters.

Memory does not grow with the number of finished requests: every latency goes into a
log-spaced histogram (``PER_DECADE`` bins per factor of ten between ``LO_S`` and
``HI_S``), so a percentile is exact to within half a bin (±0.6 %) and the histograms
of two runs add up exactly — which is what lets pools simulated on different Ray
workers be merged into one answer. Means use exact sums.

Metric definitions: :mod:`tokenfleet.perf.metrics` (TTFT, TPOT, end-to-end, SLO
attainment of *arrived* requests); queue — arrival to admission into a batch (of the
attempt that finished); goodput — requests (and output tokens) per second that met
the SLO.

Units: seconds, tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tokenfleet.perf.metrics import meets_slo

LO_S = 1e-5
HI_S = 1e5
PER_DECADE = 200
N_BINS = int(round(math.log10(HI_S / LO_S) * PER_DECADE))
METRICS = ("ttft", "tpot", "e2e", "queue")
_LOG_LO = math.log10(LO_S)


def bin_of(x: np.ndarray) -> np.ndarray:
    """Histogram bin of each value (seconds); out-of-range values go to the end bins."""
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.floor((np.log10(np.maximum(x, 1e-300)) - _LOG_LO) * PER_DECADE)
    return np.clip(np.nan_to_num(b, nan=0.0), 0, N_BINS - 1).astype(np.int64)


def bin_edges() -> np.ndarray:
    return LO_S * 10.0 ** (np.arange(N_BINS + 1) / PER_DECADE)


def percentile(counts: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (0..100) of a histogram, geometric within the bin; None
    when empty."""
    total = int(counts.sum())
    if total == 0:
        return None
    rank = q / 100.0 * total
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, max(rank, 1e-12), side="left"))
    b = min(b, N_BINS - 1)
    before = cum[b - 1] if b > 0 else 0
    frac = (rank - before) / counts[b] if counts[b] else 0.0
    lo = _LOG_LO + b / PER_DECADE
    return float(10.0 ** (lo + min(max(frac, 0.0), 1.0) / PER_DECADE))


def cdf_points(counts: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(seconds, cumulative fraction) at the upper edge of every non-empty bin, thinned
    to ``max_points`` for plotting."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return np.empty(0), np.empty(0)
    cum = np.cumsum(counts)[nz] / counts.sum()
    x = bin_edges()[nz + 1]
    if nz.size > max_points:
        keep = np.unique(np.linspace(0, nz.size - 1, max_points).astype(int))
        x, cum = x[keep], cum[keep]
    return x, cum


@dataclass
class GroupStats:
    """Accumulators for a set of groups (tiers, or pools): one row per group."""

    names: list[str]
    hist: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [group, bin]
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [group] seconds
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> [group]
    completed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    slo_met: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    output_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    input_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    good_output_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    arrived: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    retried: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    shed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # of rejected

    @classmethod
    def empty(cls, names: list[str]) -> GroupStats:
        g = len(names)
        z = lambda: np.zeros(g, np.int64)  # noqa: E731
        return cls(
            names=list(names),
            hist={m: np.zeros((g, N_BINS), np.int64) for m in METRICS},
            sums={m: np.zeros(g) for m in METRICS},
            counts={m: z() for m in METRICS},
            completed=z(), slo_met=z(), output_tokens=z(), input_tokens=z(),
            good_output_tokens=z(), arrived=z(), rejected=z(), retried=z(), shed=z(),
        )

    def add(self, group: np.ndarray, values: dict[str, np.ndarray], met: np.ndarray,
            out_tokens: np.ndarray, in_tokens: np.ndarray) -> None:
        """Record finished requests (one entry per request; NaN = metric undefined)."""
        g = len(self.names)
        for m in METRICS:
            v = values[m]
            ok = ~np.isnan(v)
            gi, vi = group[ok], v[ok]
            flat = gi * N_BINS + bin_of(vi)
            self.hist[m] += np.bincount(flat, minlength=g * N_BINS).reshape(g, N_BINS)
            self.sums[m] += np.bincount(gi, weights=vi, minlength=g)
            self.counts[m] += np.bincount(gi, minlength=g)
        self.completed += np.bincount(group, minlength=g)
        self.slo_met += np.bincount(group, weights=met, minlength=g).astype(np.int64)
        self.output_tokens += np.bincount(group, weights=out_tokens, minlength=g).astype(
            np.int64)
        self.input_tokens += np.bincount(group, weights=in_tokens, minlength=g).astype(
            np.int64)
        self.good_output_tokens += np.bincount(group, weights=out_tokens * met,
                                               minlength=g).astype(np.int64)

    def merge(self, other: GroupStats) -> GroupStats:
        """Sum of two accumulators over the union of their group names."""
        names = list(dict.fromkeys(self.names + other.names))
        out = GroupStats.empty(names)
        for src in (self, other):
            rows = np.array([names.index(n) for n in src.names], dtype=np.int64)
            if rows.size == 0:
                continue
            for m in METRICS:
                out.hist[m][rows] += src.hist[m]
                out.sums[m][rows] += src.sums[m]
                out.counts[m][rows] += src.counts[m]
            for a in ("completed", "slo_met", "output_tokens", "input_tokens",
                      "good_output_tokens", "arrived", "rejected", "retried", "shed"):
                getattr(out, a)[rows] += getattr(src, a)
        return out

    def row(self, name: str) -> int:
        return self.names.index(name)


class CompletionBuffer:
    """Finished requests collected as array chunks between flushes into the histograms,
    so memory is bounded by ``FLUSH_AT`` (plus one chunk), not by the run's length."""

    FLUSH_AT = 32768
    FIELDS = ("tier", "pool", "ttft", "tpot", "e2e", "queue", "out", "inp")

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {f: [] for f in self.FIELDS}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, tier: np.ndarray, pool: np.ndarray, ttft: np.ndarray, tpot: np.ndarray,
            e2e: np.ndarray, queue: np.ndarray, out: np.ndarray, inp: np.ndarray) -> None:
        """Record finished requests (equal-length arrays; tpot NaN = one output token)."""
        for f, v in zip(self.FIELDS, (tier, pool, ttft, tpot, e2e, queue, out, inp),
                        strict=True):
            self.chunks[f].append(v)
        self.n += int(tier.size)

    def flush(self, tiers: GroupStats, pools: GroupStats, slo_ttft: np.ndarray,
              slo_tpot: np.ndarray) -> None:
        """Move the buffered requests into the tier and pool histograms."""
        if not self.n:
            return
        c = {f: np.concatenate(v) for f, v in self.chunks.items()}
        tier = c["tier"].astype(np.int64, copy=False)
        pool = c["pool"].astype(np.int64, copy=False)
        vals = {m: c[m].astype(float, copy=False) for m in ("ttft", "tpot", "e2e", "queue")}
        out = c["out"].astype(np.int64, copy=False)
        inp = c["inp"].astype(np.int64, copy=False)
        met = meets_slo(vals["ttft"], vals["tpot"], slo_ttft[tier], slo_tpot[tier]
                        ).astype(np.int64)
        tiers.add(tier, vals, met, out, inp)
        pools.add(pool, vals, met, out, inp)
        self.__init__()  # type: ignore[misc]


def count_within(counts: np.ndarray, bound_s: float) -> float:
    """How many values of a histogram are at most ``bound_s`` (the bin that holds the
    bound counted in proportion, geometric within the bin, as :func:`percentile`)."""
    if bound_s <= LO_S:
        return 0.0
    pos = (math.log10(bound_s) - _LOG_LO) * PER_DECADE
    b = int(math.floor(pos))
    if b >= N_BINS:
        return float(counts.sum())
    return float(counts[:b].sum() + counts[b] * (pos - b))
