"""The Trace type: invariants, slicing, growth, Polars interop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import Trace, empty_trace, grow


def _trace(t, i=None, o=None, **kw) -> Trace:
    n = len(t)
    return Trace(
        arrival_s=np.asarray(t, dtype=float),
        input_tokens=np.arange(1, n + 1) if i is None else np.asarray(i),
        output_tokens=np.full(n, 7) if o is None else np.asarray(o),
        **kw,
    )


def test_basic_properties() -> None:
    tr = _trace([0.0, 1.0, 4.5])
    assert len(tr) == 3
    assert tr.duration_s == 4.5
    r = tr.request(2)
    assert (r.index, r.arrival_s, r.input_tokens, r.output_tokens) == (2, 4.5, 3, 7)
    assert tr.arrival_s.dtype == np.float64 and tr.input_tokens.dtype == np.int64
    assert empty_trace().duration_s == 0.0 and len(empty_trace()) == 0


@pytest.mark.parametrize(
    ("t", "i", "pattern"),
    [
        ([0, 2, 1], [1, 1, 1], r"sorted ascending; arrival_s\[2\] = 1.0 < arrival_s\[1\]"),
        ([0, 1, 2], [1, -1, 1], r"input_tokens\[1\] = -1 is negative"),
        ([0, np.nan], [1, 1], r"arrival_s\[1\] is not finite"),
        ([-1, 0], [1, 1], r"must be >= 0"),
    ],
)
def test_invariants_are_enforced(t, i, pattern) -> None:
    with pytest.raises(TokenfleetError, match=pattern):
        _trace(t, i, np.ones(len(t), dtype=int))


def test_length_mismatch() -> None:
    with pytest.raises(TokenfleetError, match="equal length"):
        Trace(np.zeros(2), np.zeros(3, dtype=int), np.zeros(2, dtype=int))


def test_slice_is_half_open_and_rebased() -> None:
    tr = _trace([0, 10, 20, 30, 40], start_epoch_s=1000.0)
    s = tr.slice(10, 30)
    assert s.arrival_s.tolist() == [0.0, 10.0]  # 10 and 20; 30 excluded
    assert s.input_tokens.tolist() == [2, 3]
    assert s.start_epoch_s == 1010.0
    assert len(tr.slice(41, 50)) == 0
    with pytest.raises(TokenfleetError, match="t1 > t0"):
        tr.slice(5, 5)


def test_compress_growth_is_exact() -> None:
    tr = _trace([0, 10, 20, 30])
    g = tr.scale_rate(2.0, mode="compress")
    assert g.arrival_s.tolist() == [0, 5, 10, 15]
    assert g.input_tokens.tolist() == tr.input_tokens.tolist()


def test_resample_integer_growth_duplicates_every_request() -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 100, 200))
    tr = _trace(t, rng.integers(1, 1000, 200), rng.integers(1, 100, 200))
    g = grow(tr, 3.0, seed=1)
    assert len(g) == 600

    # Each (input, output) pair appears exactly three times as often.
    def pairs(x: Trace) -> dict[tuple[int, int], int]:
        k, c = np.unique(np.stack([x.input_tokens, x.output_tokens]), axis=1, return_counts=True)
        return {tuple(col): n for col, n in zip(k.T.tolist(), c.tolist(), strict=True)}

    assert {k: 3 * v for k, v in pairs(tr).items()} == pairs(g)
    # Copies stay inside the original time range (between an original and its successor).
    assert g.arrival_s.min() == tr.arrival_s.min()
    assert g.arrival_s.max() <= tr.arrival_s.max() + np.median(np.diff(t))
    assert np.all(np.diff(g.arrival_s) >= 0)


def test_resample_thinning_and_determinism() -> None:
    t = np.linspace(0, 1000, 10_001)
    tr = _trace(t)
    a = tr.scale_rate(0.3, seed=5)
    b = tr.scale_rate(0.3, seed=5)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert len(a) == pytest.approx(3000, rel=0.05)
    assert not np.array_equal(a.arrival_s, tr.scale_rate(0.3, seed=6).arrival_s)


@settings(max_examples=25, deadline=None)
@given(factor=st.floats(0.25, 4.0), seed=st.integers(0, 2**16))
def test_growth_scales_mean_rate(factor: float, seed: int) -> None:
    t = np.linspace(0, 3600, 20_000)
    tr = _trace(t)
    g = tr.scale_rate(factor, seed=seed)
    # Rate over the same time axis: count ratio ~ factor (binomial noise ~1 %).
    assert len(g) / len(tr) == pytest.approx(factor, rel=0.05)
    c = tr.scale_rate(factor, mode="compress")
    assert (len(c) / c.duration_s) / (len(tr) / tr.duration_s) == pytest.approx(factor)


def test_bad_growth() -> None:
    tr = _trace([0, 1])
    with pytest.raises(TokenfleetError, match="positive"):
        tr.scale_rate(0)
    with pytest.raises(TokenfleetError, match="unknown growth mode"):
        tr.scale_rate(2, mode="stretch")  # type: ignore[arg-type]


def test_polars_round_trip() -> None:
    tr = _trace([0, 1.5, 2])
    df = tr.to_polars()
    assert df.columns == ["arrival_s", "input_tokens", "output_tokens"]
    back = Trace.from_polars(df)
    np.testing.assert_array_equal(back.arrival_s, tr.arrival_s)
    with pytest.raises(TokenfleetError, match=r"missing column\(s\) \['output_tokens'\]"):
        Trace.from_polars(pl.DataFrame({"arrival_s": [0.0], "input_tokens": [1]}))
