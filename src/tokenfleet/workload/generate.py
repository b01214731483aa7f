"""Synthetic traces for what-if traffic: arrival processes x length distributions.

* :func:`poisson` — memoryless arrivals at a constant rate (inter-arrival CV 1).
* :func:`gamma_bursty` — gamma-distributed inter-arrival gaps with a chosen
  coefficient of variation; CV > 1 gives bursts and lulls at the same mean rate.
* :class:`EmpiricalLengths` — resample real (input, output) pairs from a trace,
  keeping their correlation and tails exactly.
* :class:`LognormalLengths` — a bivariate lognormal (fitted to a trace or given
  by medians), for smooth what-ifs such as "prompts twice as long".
* :func:`fit_lengths` — either of the two, fitted to a trace by name.
* :func:`grow` — scale a real trace's rate by a growth factor.

Everything is seeded: the same arguments and ``seed`` give the same trace.
Times are seconds, lengths tokens, rates requests/s.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.trace import GrowthMode, IntArray, Trace


class LengthDistribution(ABC):
    """Draws (input, output) token lengths for synthetic requests."""

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        """``n`` input and ``n`` output lengths (int64 tokens)."""


@dataclass(frozen=True)
class FixedLengths(LengthDistribution):
    """Every request has the same lengths (tokens); handy for microbenchmarks."""

    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if self.input_tokens < 0 or self.output_tokens < 0:
            raise TokenfleetError("fixed lengths must be >= 0 tokens")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        return (
            np.full(n, self.input_tokens, dtype=np.int64),
            np.full(n, self.output_tokens, dtype=np.int64),
        )


@dataclass(frozen=True, eq=False)
class EmpiricalLengths(LengthDistribution):
    """Resample (input, output) pairs with replacement from observed requests,
    which keeps the joint distribution (long prompts with short answers, ...)."""

    input_tokens: IntArray
    output_tokens: IntArray

    @classmethod
    def from_trace(cls, trace: Trace) -> EmpiricalLengths:
        if trace.is_empty:
            raise TokenfleetError(f"cannot fit lengths to the empty trace {trace.source}")
        return cls(trace.input_tokens.copy(), trace.output_tokens.copy())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        pick = rng.integers(0, self.input_tokens.size, size=n)
        return self.input_tokens[pick], self.output_tokens[pick]


@dataclass(frozen=True)
class LognormalLengths(LengthDistribution):
    """log(input) and log(output) jointly normal.

    ``input_median``/``output_median`` in tokens (= exp of the log-mean),
    ``input_sigma``/``output_sigma`` the log-space standard deviations,
    ``correlation`` between the logs. Samples are rounded and clipped to
    ``[1, max_tokens]`` (a real request has at least one token each way).
    """

    input_median: float
    output_median: float
    input_sigma: float = 1.0
    output_sigma: float = 1.0
    correlation: float = 0.0
    max_input_tokens: int = 1_000_000
    max_output_tokens: int = 100_000

    def __post_init__(self) -> None:
        if self.input_median <= 0 or self.output_median <= 0:
            raise TokenfleetError("lognormal medians must be > 0 tokens")
        if self.input_sigma < 0 or self.output_sigma < 0:
            raise TokenfleetError("lognormal sigmas must be >= 0")
        if not -1 <= self.correlation <= 1:
            raise TokenfleetError(f"correlation must be in [-1, 1], got {self.correlation}")

    @classmethod
    def fit(cls, trace: Trace) -> LognormalLengths:
        """Maximum-likelihood fit on log lengths (zero lengths counted as 1 token);
        clip limits are the trace's maxima."""
        if len(trace) < 2:
            raise TokenfleetError(f"need >= 2 requests to fit a lognormal, {trace.source}")
        li = np.log(np.maximum(trace.input_tokens, 1))
        lo = np.log(np.maximum(trace.output_tokens, 1))
        si, so = float(li.std()), float(lo.std())
        rho = float(np.corrcoef(li, lo)[0, 1]) if si > 0 and so > 0 else 0.0
        return cls(
            input_median=float(np.exp(li.mean())),
            output_median=float(np.exp(lo.mean())),
            input_sigma=si,
            output_sigma=so,
            correlation=rho,
            max_input_tokens=max(int(trace.input_tokens.max()), 1),
            max_output_tokens=max(int(trace.output_tokens.max()), 1),
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        z1 = rng.standard_normal(n)
        z2 = rng.standard_normal(n)
        # Correlated standard normals: z2' = rho z1 + sqrt(1 - rho^2) z2.
        z2 = self.correlation * z1 + math.sqrt(1 - self.correlation**2) * z2
        inp = np.exp(math.log(self.input_median) + self.input_sigma * z1)
        out = np.exp(math.log(self.output_median) + self.output_sigma * z2)
        return (
            np.clip(np.rint(inp), 1, self.max_input_tokens).astype(np.int64),
            np.clip(np.rint(out), 1, self.max_output_tokens).astype(np.int64),
        )


def fit_lengths(trace: Trace, method: str = "empirical") -> LengthDistribution:
    """Fit a length distribution to ``trace``: ``empirical`` (resample its
    (input, output) pairs) or ``lognormal`` (bivariate lognormal, ML fit)."""
    if method == "empirical":
        return EmpiricalLengths.from_trace(trace)
    if method == "lognormal":
        return LognormalLengths.fit(trace)
    raise TokenfleetError(f"unknown length distribution '{method}'; allowed: empirical, lognormal")


def _check(rate_per_s: float, duration_s: float) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise TokenfleetError(f"rate must be > 0 requests/s, got {rate_per_s}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise TokenfleetError(f"duration must be > 0 s, got {duration_s}")


def _trace(
    arrival: np.ndarray, lengths: LengthDistribution, rng: np.random.Generator, source: str
) -> Trace:
    inp, out = lengths.sample(arrival.size, rng)
    return Trace(arrival_s=arrival, input_tokens=inp, output_tokens=out, source=source)


def poisson(
    rate_per_s: float, duration_s: float, lengths: LengthDistribution, seed: int = 0
) -> Trace:
    """Poisson arrivals at ``rate_per_s`` over ``[0, duration_s)``.

    Drawn as N ~ Poisson(rate x duration) then N uniform times, sorted: the
    same process as exponential gaps, without a loop or a guessed array size.
    """
    _check(rate_per_s, duration_s)
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate_per_s * duration_s))
    arrival = np.sort(rng.uniform(0.0, duration_s, size=n))
    return _trace(arrival, lengths, rng, f"poisson(rate={rate_per_s:g}/s, {duration_s:g}s)")


def gamma_bursty(
    rate_per_s: float,
    cv: float,
    duration_s: float,
    lengths: LengthDistribution,
    seed: int = 0,
) -> Trace:
    """Renewal process with gamma inter-arrival gaps over ``[0, duration_s)``.

    Mean gap ``1 / rate_per_s``; coefficient of variation ``cv`` (std/mean of
    the gaps): shape ``k = 1 / cv^2``, scale ``1 / (rate k)``. ``cv = 1`` is
    Poisson; real LLM front ends show 1.5-4 (bursts).
    """
    _check(rate_per_s, duration_s)
    if not (math.isfinite(cv) and cv > 0):
        raise TokenfleetError(f"cv must be > 0, got {cv}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    scale = 1.0 / (rate_per_s * shape)
    expected = rate_per_s * duration_s
    # Draw a few standard deviations more gaps than expected; top up in the rare
    # case that was not enough (a handful of iterations, never one per request).
    chunk = int(expected + 6 * cv * math.sqrt(expected) + 16)
    times = np.cumsum(rng.gamma(shape, scale, size=chunk))
    while times[-1] < duration_s:
        more = np.cumsum(rng.gamma(shape, scale, size=chunk)) + times[-1]
        times = np.concatenate([times, more])
    arrival = times[times < duration_s]
    return _trace(
        arrival, lengths, rng, f"gamma(rate={rate_per_s:g}/s, cv={cv:g}, {duration_s:g}s)"
    )


def grow(trace: Trace, factor: float, *, mode: GrowthMode = "resample", seed: int = 0) -> Trace:
    """``trace`` with ``factor`` x the request rate (see :meth:`Trace.scale_rate`)."""
    return trace.scale_rate(factor, mode=mode, seed=seed)
