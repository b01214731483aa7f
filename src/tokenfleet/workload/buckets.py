"""Size buckets: group requests by (input length x output length).

Different chips are cost-optimal for different request shapes (long prompts
are prefill/compute-bound, long answers decode/bandwidth-bound), so the
planner sizes a fleet per bucket.

Edges are in **tokens**. A request with length ``x`` falls in bucket ``i`` when
``edges[i] <= x < edges[i + 1]``: **lower edge inclusive, upper edge
exclusive** (so with input edges ``[0, 512, ...]`` a 512-token prompt is in
``in512-2048``). The first edge must be 0 and the last ``inf`` so every
request lands in exactly one bucket.

Buckets are numbered input-major: ``index = i_input * n_output + i_output``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, field_validator

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.trace import IntArray, Trace

DEFAULT_INPUT_EDGES: tuple[float, ...] = (0, 512, 2048, 8192, math.inf)
DEFAULT_OUTPUT_EDGES: tuple[float, ...] = (0, 128, 512, math.inf)


def _edge_label(x: float) -> str:
    return "inf" if math.isinf(x) else str(int(x))


class Bucket(BaseModel):
    """One (input range x output range) cell; ranges in tokens, ``[lo, hi)``;
    ``hi`` None means unbounded."""

    model_config = ConfigDict(frozen=True)

    index: int
    label: str
    input_lo: int
    input_hi: int | None
    output_lo: int
    output_hi: int | None


class BucketSummary(BaseModel):
    """How much of a trace falls in one bucket."""

    bucket: Bucket
    count: int
    share: float  # fraction of all requests, 0..1
    mean_input_tokens: float | None  # None when the bucket is empty
    mean_output_tokens: float | None


class BucketDemand(BaseModel):
    """Load one bucket puts on the fleet, in requests/s and tokens/s.

    ``peak_rate_per_s`` is this bucket's own busiest window (size a *separate*
    pool per bucket to this); ``rate_at_peak_per_s`` is its rate inside the
    trace's overall busiest window (these sum to the overall peak: size a
    *shared* pool to that). Own peaks can fall at different times, so their sum
    is >= the overall peak.
    """

    bucket: Bucket
    count: int
    share: float
    mean_rate_per_s: float
    peak_rate_per_s: float
    rate_at_peak_per_s: float
    mean_input_tokens: float | None
    mean_output_tokens: float | None
    peak_window_s: float


class SizeBuckets(BaseModel):
    """Input and output length edges (tokens); see the module docstring for the
    inclusive/exclusive rule. Configurable from YAML, e.g.
    ``{input_edges: [0, 1024, .inf], output_edges: [0, 256, .inf]}``."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    input_edges: tuple[float, ...] = DEFAULT_INPUT_EDGES
    output_edges: tuple[float, ...] = DEFAULT_OUTPUT_EDGES

    @field_validator("input_edges", "output_edges")
    @classmethod
    def _check_edges(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) < 2:
            raise ValueError("need at least two edges, e.g. [0, inf]")
        if v[0] != 0:
            raise ValueError(f"first edge must be 0 (got {v[0]}) so short requests have a bucket")
        if not math.isinf(v[-1]):
            raise ValueError(f"last edge must be inf (got {v[-1]}) so long requests have a bucket")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"edges must be strictly increasing, got {list(v)}")
        if any(not math.isinf(x) and x != int(x) for x in v):
            raise ValueError(f"edges are token counts and must be whole numbers, got {list(v)}")
        return v

    # ---- the buckets themselves ----------------------------------------------------

    @property
    def n_input(self) -> int:
        """Number of input-length ranges."""
        return len(self.input_edges) - 1

    @property
    def n_output(self) -> int:
        """Number of output-length ranges."""
        return len(self.output_edges) - 1

    def __len__(self) -> int:
        return self.n_input * self.n_output

    @property
    def buckets(self) -> list[Bucket]:
        """All buckets in index order."""
        out = []
        for i in range(self.n_input):
            ilo, ihi = self.input_edges[i], self.input_edges[i + 1]
            for j in range(self.n_output):
                olo, ohi = self.output_edges[j], self.output_edges[j + 1]
                out.append(
                    Bucket(
                        index=i * self.n_output + j,
                        label=f"in{_edge_label(ilo)}-{_edge_label(ihi)}"
                        f"_out{_edge_label(olo)}-{_edge_label(ohi)}",
                        input_lo=int(ilo),
                        input_hi=None if math.isinf(ihi) else int(ihi),
                        output_lo=int(olo),
                        output_hi=None if math.isinf(ohi) else int(ohi),
                    )
                )
        return out

    def bucket(self, label: str) -> Bucket:
        """Look a bucket up by its label."""
        for b in self.buckets:
            if b.label == label:
                return b
        raise TokenfleetError(
            f"unknown bucket '{label}'; known: {', '.join(b.label for b in self.buckets)}"
        )

    # ---- assignment ----------------------------------------------------------------

    def assign_lengths(self, input_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike
                       ) -> IntArray:
        """Bucket index for each (input, output) pair (tokens; arrays or scalars)."""
        inp = np.asarray(input_tokens)
        out = np.asarray(output_tokens)
        # side="right" puts x == edge into the bucket that starts at that edge.
        i = np.searchsorted(np.asarray(self.input_edges), inp, side="right") - 1
        j = np.searchsorted(np.asarray(self.output_edges), out, side="right") - 1
        if np.any(i < 0) or np.any(j < 0):
            raise TokenfleetError("token lengths must be >= 0 to be assigned to a size bucket")
        return (i * self.n_output + j).astype(np.int64)

    def assign(self, trace: Trace) -> IntArray:
        """Bucket index per request of ``trace`` (int64, same order as the trace)."""
        return self.assign_lengths(trace.input_tokens, trace.output_tokens)

    def counts(self, trace: Trace) -> IntArray:
        """Requests per bucket (length ``len(self)``)."""
        return np.bincount(self.assign(trace), minlength=len(self)).astype(np.int64)

    def shares(self, trace: Trace) -> np.ndarray:
        """Fraction of requests per bucket; sums to 1 (an empty trace is an error)."""
        if trace.is_empty:
            raise TokenfleetError(f"trace {trace.source} is empty: no bucket shares")
        c = self.counts(trace)
        return c / c.sum()

    def summary(self, trace: Trace) -> list[BucketSummary]:
        """Count, share and mean lengths per bucket, every bucket listed."""
        if trace.is_empty:
            raise TokenfleetError(f"trace {trace.source} is empty: nothing to bucket")
        idx = self.assign(trace)
        n = len(self)
        counts = np.bincount(idx, minlength=n)
        sum_in = np.bincount(idx, weights=trace.input_tokens, minlength=n)
        sum_out = np.bincount(idx, weights=trace.output_tokens, minlength=n)
        total = len(trace)
        return [
            BucketSummary(
                bucket=b,
                count=int(counts[k]),
                share=float(counts[k] / total),
                mean_input_tokens=float(sum_in[k] / counts[k]) if counts[k] else None,
                mean_output_tokens=float(sum_out[k] / counts[k]) if counts[k] else None,
            )
            for k, b in enumerate(self.buckets)
        ]

    def demand(self, trace: Trace, peak_window_s: float = 60.0) -> list[BucketDemand]:
        """Per-bucket mean and peak request rates (requests/s) over sliding windows of
        ``peak_window_s`` seconds (see :class:`BucketDemand` for own vs coincident peak).

        The planner sizes capacity to these. The window must not be longer than
        the trace: a peak over a window the trace cannot fill would understate it.
        """
        if trace.is_empty:
            raise TokenfleetError(f"trace {trace.source} is empty: no demand to size for")
        if not peak_window_s > 0:
            raise TokenfleetError(f"peak window must be > 0 s, got {peak_window_s}")
        span = trace.duration_s
        if span < peak_window_s:
            raise TokenfleetError(
                f"trace {trace.source} spans {span:.1f} s, shorter than the peak window "
                f"{peak_window_s:g} s; use a shorter window"
            )
        idx = self.assign(trace)
        t = trace.arrival_s
        start, _ = busiest_window(t, peak_window_s)
        lo, hi = np.searchsorted(t, [start, start + peak_window_s], side="left")
        at_peak = np.bincount(idx[lo:hi], minlength=len(self))
        out = []
        for s in self.summary(trace):
            k = s.bucket.index
            tb = t[idx == k]
            own = busiest_window(tb, peak_window_s)[1] if tb.size else 0
            out.append(
                BucketDemand(
                    bucket=s.bucket,
                    count=s.count,
                    share=s.share,
                    mean_rate_per_s=s.count / span,
                    peak_rate_per_s=own / peak_window_s,
                    rate_at_peak_per_s=float(at_peak[k]) / peak_window_s,
                    mean_input_tokens=s.mean_input_tokens,
                    mean_output_tokens=s.mean_output_tokens,
                    peak_window_s=peak_window_s,
                )
            )
        return out


def busiest_window(arrival_s: np.ndarray, window_s: float) -> tuple[float, int]:
    """Start (s) and request count of the half-open window ``[start, start + window_s)``
    holding the most arrivals; ``arrival_s`` must be sorted.

    The maximum over all window positions is always reached by a window that
    starts at an arrival, so checking those n windows (vectorised) is exact.
    """
    if arrival_s.size == 0:
        return 0.0, 0
    ends = np.searchsorted(arrival_s, arrival_s + window_s, side="left")
    counts = ends - np.arange(arrival_s.size)
    i = int(np.argmax(counts))
    return float(arrival_s[i]), int(counts[i])
