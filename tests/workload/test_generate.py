"""Synthetic generators: rates, burstiness, lengths, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import (
    EmpiricalLengths,
    FixedLengths,
    LognormalLengths,
    fit_lengths,
    gamma_bursty,
    poisson,
    read_trace,
    sample_path,
)

FIXED = FixedLengths(100, 10)


def _cv(t: np.ndarray) -> float:
    g = np.diff(t)
    return float(g.std() / g.mean())


def test_poisson_rate_and_cv() -> None:
    tr = poisson(50.0, 2000.0, FIXED, seed=1)
    # N ~ Poisson(100_000): sd 316 = 0.3 %
    assert len(tr) / 2000.0 == pytest.approx(50.0, rel=0.015)
    assert _cv(tr.arrival_s) == pytest.approx(1.0, abs=0.03)
    assert tr.arrival_s.min() >= 0 and tr.arrival_s.max() < 2000.0


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    tr = gamma_bursty(20.0, cv, 20_000.0, FIXED, seed=2)
    assert len(tr) / 20_000.0 == pytest.approx(20.0, rel=0.03)
    assert _cv(tr.arrival_s) == pytest.approx(cv, rel=0.05)


def test_seeded_and_deterministic() -> None:
    lengths = LognormalLengths(1000, 200)
    a = gamma_bursty(5, 2, 600, lengths, seed=7)
    b = gamma_bursty(5, 2, 600, lengths, seed=7)
    c = gamma_bursty(5, 2, 600, lengths, seed=8)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)
    assert not np.array_equal(a.arrival_s[:10], c.arrival_s[:10])
    p1, p2 = poisson(5, 600, lengths, seed=7), poisson(5, 600, lengths, seed=7)
    np.testing.assert_array_equal(p1.output_tokens, p2.output_tokens)


def test_empirical_lengths_resample_real_pairs() -> None:
    src = read_trace(sample_path("azure_conv"))
    dist = fit_lengths(src, "empirical")
    tr = poisson(100, 100, dist, seed=3)
    key = lambda i, o: i * 1_000_000 + o  # noqa: E731 - a pair as one integer
    assert np.isin(
        key(tr.input_tokens, tr.output_tokens), key(src.input_tokens, src.output_tokens)
    ).all()
    assert tr.input_tokens.mean() == pytest.approx(src.input_tokens.mean(), rel=0.1)


def test_lognormal_fit_recovers_parameters() -> None:
    truth = LognormalLengths(800, 150, input_sigma=0.8, output_sigma=0.6, correlation=0.5)
    tr = poisson(200, 500, truth, seed=4)  # ~100k requests
    fit = LognormalLengths.fit(tr)
    assert fit.input_median == pytest.approx(800, rel=0.03)
    assert fit.output_median == pytest.approx(150, rel=0.03)
    assert fit.input_sigma == pytest.approx(0.8, rel=0.03)
    assert fit.output_sigma == pytest.approx(0.6, rel=0.05)  # rounding to tokens
    assert fit.correlation == pytest.approx(0.5, abs=0.03)
    assert tr.input_tokens.min() >= 1


def test_generator_errors() -> None:
    with pytest.raises(TokenfleetError, match="rate must be > 0"):
        poisson(0, 10, FIXED)
    with pytest.raises(TokenfleetError, match="duration must be > 0"):
        poisson(1, -1, FIXED)
    with pytest.raises(TokenfleetError, match="cv must be > 0"):
        gamma_bursty(1, 0, 10, FIXED)
    with pytest.raises(TokenfleetError, match="allowed: empirical, lognormal"):
        fit_lengths(read_trace(sample_path("azure_code")), "kde")
    with pytest.raises(TokenfleetError, match="correlation"):
        LognormalLengths(1, 1, correlation=2)
    with pytest.raises(TokenfleetError, match=">= 0 tokens"):
        FixedLengths(-1, 1)


def test_fit_on_empty_is_clear() -> None:
    from tokenfleet.workload import empty_trace

    with pytest.raises(TokenfleetError, match="empty trace"):
        EmpiricalLengths.from_trace(empty_trace())
