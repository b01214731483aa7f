"""trace_stats against values computed by hand on tiny traces."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import SizeBuckets, Trace, empty_trace, trace_stats
from tokenfleet.workload.stats import log2_histogram

T = [0, 10, 20, 30, 65, 70, 75, 80, 85, 200]  # seconds
IN = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
OUT = [10, 20, 30, 40, 50, 60, 70, 80, 90, 600]


def _tiny(**kw) -> Trace:
    return Trace(np.array(T, float), np.array(IN), np.array(OUT), source="tiny", **kw)


def test_counts_rates_and_peak_by_hand() -> None:
    s = trace_stats(_tiny())
    assert s.count == 10
    assert s.span_s == 200
    assert s.mean_rate_per_s == pytest.approx(10 / 200)
    # Busiest [t, t+60): starting at 30 holds 30, 65, 70, 75, 80, 85 -> 6 requests.
    assert s.peak_rate_1min_per_s == pytest.approx(6 / 60)
    # The trace spans 200 s < 600 s: no honest 10-min peak.
    assert s.peak_rate_10min_per_s is None
    assert s.input_tokens_per_s == pytest.approx(sum(IN) / 200)
    assert s.output_tokens_per_s == pytest.approx(sum(OUT) / 200)
    gaps = np.diff(T)
    assert s.interarrival_cv == pytest.approx(gaps.std() / gaps.mean())


def test_window_edge_is_exclusive() -> None:
    # Arrivals at 0 and 60: a [0, 60) window holds only one of them.
    tr = Trace(np.array([0.0, 60.0, 120.0]), np.ones(3, int), np.ones(3, int))
    assert trace_stats(tr).peak_rate_1min_per_s == pytest.approx(1 / 60)
    tr2 = Trace(np.array([0.0, 59.9, 120.0]), np.ones(3, int), np.ones(3, int))
    assert trace_stats(tr2).peak_rate_1min_per_s == pytest.approx(2 / 60)


def test_length_percentiles_by_hand() -> None:
    s = trace_stats(_tiny())
    # 100..1000 step 100: linear-interpolated p50 = 550, p90 = 910, p99 = 991
    assert (s.input_tokens.p50, s.input_tokens.p90, s.input_tokens.p99) == pytest.approx(
        (550, 910, 991)
    )
    assert s.input_tokens.mean == 550 and s.input_tokens.max == 1000
    assert s.input_tokens.min == 100
    assert s.output_tokens.max == 600 and s.output_tokens.p50 == 55


def test_bucket_grid_by_hand() -> None:
    b = SizeBuckets(input_edges=(0, 500, float("inf")), output_edges=(0, 100, float("inf")))
    s = trace_stats(_tiny(), b)
    # inputs < 500: 100..400 (outputs 10..40); >= 500: 500..1000 (outputs 50..90 and 600)
    assert s.buckets.counts == [[4, 0], [5, 1]]
    assert s.buckets.labels[1][1] == "in500-inf_out100-inf"
    assert s.buckets.input_edges == [0, 500, None]


def test_diurnal_span_tenths_by_hand() -> None:
    s = trace_stats(_tiny())
    assert s.diurnal.kind == "span_tenths"
    # t / 200 * 10 -> 0,0,1,1,3,3,3,4,4,10->9
    assert s.diurnal.counts == [2, 2, 0, 3, 2, 0, 0, 0, 0, 1]


def test_diurnal_hour_of_day_and_start() -> None:
    start = (datetime(2023, 11, 16, 18, 59, 0) - datetime(1970, 1, 1)).total_seconds()
    tr = Trace(
        np.array([0.0, 30.0, 61.0, 3700.0]), np.ones(4, int), np.ones(4, int), start_epoch_s=start
    )
    s = trace_stats(tr)
    assert s.diurnal.kind == "hour_of_day"
    expected = [0] * 24
    expected[18], expected[19], expected[20] = 2, 1, 1
    assert s.diurnal.counts == expected
    assert s.start == "2023-11-16T18:59:00.000000"


def test_log2_histogram_bins() -> None:
    bins = log2_histogram(np.array([0, 1, 2, 3, 4, 1000]))
    got = {(b.lo, b.hi): b.count for b in bins}
    assert got[(0, 1)] == 1 and got[(1, 2)] == 1 and got[(2, 4)] == 2 and got[(4, 8)] == 1
    assert got[(512, 1024)] == 1
    assert sum(got.values()) == 6
    # leading empty bins are trimmed
    assert log2_histogram(np.array([100]))[0].lo == 64


def test_out_of_order_and_dropped_are_reported() -> None:
    s = trace_stats(_tiny(out_of_order=3, dropped=2))
    assert (s.out_of_order, s.dropped) == (3, 2)


def test_single_request_and_empty() -> None:
    one = Trace(np.array([0.0]), np.array([5]), np.array([1]))
    s = trace_stats(one)
    assert s.count == 1 and s.mean_rate_per_s is None and s.interarrival_cv is None
    with pytest.raises(TokenfleetError, match="has no requests"):
        trace_stats(empty_trace())


def test_json_round_trip() -> None:
    s = trace_stats(_tiny())
    assert type(s).model_validate_json(s.model_dump_json()) == s
