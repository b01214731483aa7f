"""Summary statistics of a trace: volume, rates, lengths, size mix, daily shape.

Definitions (used by the CLI, the planner and the tests alike):

* ``span_s`` — seconds from the first to the last arrival.
* ``mean_rate_per_s`` — ``count / span_s`` (None when span is 0).
* ``peak_rate_1min_per_s`` / ``peak_rate_10min_per_s`` — the most requests in
  any half-open sliding window ``[t, t + W)`` divided by W (60 s / 600 s);
  None when the trace spans less than W, because a window the trace cannot fill
  would understate the peak.
* percentiles use linear interpolation (NumPy's default).
* ``interarrival_cv`` — standard deviation / mean of the gaps between arrivals
  (1 for Poisson arrivals, > 1 for bursty traffic).
* ``diurnal`` — requests per hour of day (0-23, wall clock as written in the
  file) when absolute timestamps are known, else per tenth of the span.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.buckets import SizeBuckets, busiest_window
from tokenfleet.workload.trace import Trace


class LengthStats(BaseModel):
    """Distribution of one length column, in tokens."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: int
    max: int


class HistogramBin(BaseModel):
    """Requests with ``lo <= length < hi`` tokens (``hi`` None: unbounded)."""

    lo: int
    hi: int | None
    count: int


class BucketGrid(BaseModel):
    """2-D histogram: ``counts[i][j]`` requests with input in range i, output in range j;
    ranges ``[edge_k, edge_k+1)`` in tokens, a None edge means unbounded."""

    input_edges: list[int | None]
    output_edges: list[int | None]
    labels: list[list[str]]
    counts: list[list[int]]


class DiurnalShape(BaseModel):
    """Request counts over the day (``hour_of_day``: 24 bins, hour 0 first) or,
    without absolute timestamps, over the trace (``span_tenths``: 10 equal bins)."""

    kind: Literal["hour_of_day", "span_tenths"]
    counts: list[int]


class TraceStats(BaseModel):
    """What ``tokenfleet trace stats`` prints; rates in requests/s, tokens/s."""

    source: str
    count: int
    span_s: float
    start: str | None  # ISO 8601 wall-clock time of the first request, when known
    mean_rate_per_s: float | None
    peak_rate_1min_per_s: float | None
    peak_rate_10min_per_s: float | None
    interarrival_cv: float | None
    input_tokens: LengthStats
    output_tokens: LengthStats
    input_tokens_per_s: float | None
    output_tokens_per_s: float | None
    input_histogram: list[HistogramBin]
    output_histogram: list[HistogramBin]
    buckets: BucketGrid
    diurnal: DiurnalShape
    out_of_order: int
    dropped: int


def _length_stats(x: np.ndarray) -> LengthStats:
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return LengthStats(
        mean=float(x.mean()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        min=int(x.min()),
        max=int(x.max()),
    )


def log2_histogram(x: np.ndarray) -> list[HistogramBin]:
    """Counts in power-of-two bins ``[0, 1), [1, 2), [2, 4), ... [2^k, 2^(k+1))`` up to
    the largest value (tokens). Log bins because LLM lengths span 1 to 100k+."""
    if x.size == 0:
        return []
    top = int(x.max())
    # bin 0 holds zeros; bin k >= 1 holds [2^(k-1), 2^k)
    k = np.zeros(x.shape, dtype=np.int64)
    pos = x > 0
    k[pos] = np.floor(np.log2(x[pos])).astype(np.int64) + 1
    nbins = int(np.floor(np.log2(top))) + 2 if top > 0 else 1
    counts = np.bincount(k, minlength=nbins)
    bins = []
    for b, c in enumerate(counts):
        lo, hi = (0, 1) if b == 0 else (2 ** (b - 1), 2**b)
        bins.append(HistogramBin(lo=lo, hi=hi, count=int(c)))
    # Leading empty bins (e.g. no zero-length prompts) are noise in a printout.
    while len(bins) > 1 and bins[0].count == 0:
        bins.pop(0)
    return bins


def _peak(t: np.ndarray, span: float, window_s: float) -> float | None:
    if span < window_s:
        return None
    return busiest_window(t, window_s)[1] / window_s


def _edge_list(edges: tuple[float, ...]) -> list[int | None]:
    return [None if math.isinf(e) else int(e) for e in edges]


def _grid(trace: Trace, buckets: SizeBuckets) -> BucketGrid:
    counts = buckets.counts(trace).reshape(buckets.n_input, buckets.n_output)
    labels = np.array([b.label for b in buckets.buckets]).reshape(counts.shape)
    return BucketGrid(
        input_edges=_edge_list(buckets.input_edges),
        output_edges=_edge_list(buckets.output_edges),
        labels=labels.tolist(),
        counts=counts.tolist(),
    )


def _diurnal(trace: Trace) -> DiurnalShape:
    t = trace.arrival_s
    if trace.start_epoch_s is not None:
        # Seconds since midnight of the wall clock in the file, then whole hours.
        day_s = np.mod(trace.start_epoch_s + t, 86400.0)
        hours = np.minimum((day_s // 3600).astype(np.int64), 23)
        return DiurnalShape(kind="hour_of_day", counts=np.bincount(hours, minlength=24).tolist())
    span = trace.duration_s
    if span == 0:
        tenth = np.zeros(t.size, dtype=np.int64)
    else:
        tenth = np.minimum(((t - t[0]) / span * 10).astype(np.int64), 9)
    return DiurnalShape(kind="span_tenths", counts=np.bincount(tenth, minlength=10).tolist())


def trace_stats(trace: Trace, buckets: SizeBuckets | None = None) -> TraceStats:
    """Compute :class:`TraceStats` (vectorised; ~tens of ms for 1M requests).

    ``buckets`` sets the 2-D histogram's edges (default :class:`SizeBuckets`).
    An empty trace is a :class:`TokenfleetError`.
    """
    if trace.is_empty:
        raise TokenfleetError(f"trace {trace.source} has no requests: no statistics")
    buckets = buckets or SizeBuckets()
    t = trace.arrival_s
    span = trace.duration_s
    n = len(trace)
    per_s = (lambda x: float(x) / span) if span > 0 else (lambda x: None)
    gaps = np.diff(t)
    cv = float(gaps.std() / gaps.mean()) if gaps.size >= 2 and gaps.mean() > 0 else None
    start = None
    if trace.start_epoch_s is not None:
        start = (
            datetime.fromtimestamp(trace.start_epoch_s + float(t[0]), tz=UTC)
            .replace(tzinfo=None)
            .isoformat(timespec="microseconds")
        )
    return TraceStats(
        source=trace.source,
        count=n,
        span_s=span,
        start=start,
        mean_rate_per_s=per_s(n),
        peak_rate_1min_per_s=_peak(t, span, 60.0),
        peak_rate_10min_per_s=_peak(t, span, 600.0),
        interarrival_cv=cv,
        input_tokens=_length_stats(trace.input_tokens),
        output_tokens=_length_stats(trace.output_tokens),
        input_tokens_per_s=per_s(trace.input_tokens.sum()),
        output_tokens_per_s=per_s(trace.output_tokens.sum()),
        input_histogram=log2_histogram(trace.input_tokens),
        output_histogram=log2_histogram(trace.output_tokens),
        buckets=_grid(trace, buckets),
        diurnal=_diurnal(trace),
        out_of_order=trace.out_of_order,
        dropped=trace.dropped,
    )
