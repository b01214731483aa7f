"""Size buckets: edges, labels, shares, per-bucket demand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import SizeBuckets, Trace, busiest_window, read_trace, sample_path

INF = math.inf


def _trace(t, i, o) -> Trace:
    return Trace(np.asarray(t, float), np.asarray(i), np.asarray(o), source="t")


def test_default_labels_and_order() -> None:
    b = SizeBuckets()
    labels = [x.label for x in b.buckets]
    assert len(b) == 12 and labels[0] == "in0-512_out0-128"
    assert labels[4] == "in512-2048_out128-512"  # input-major: 1 * 3 + 1
    assert labels[-1] == "in8192-inf_out512-inf"
    assert b.bucket("in512-2048_out128-512").index == 4
    last = b.buckets[-1]
    assert last.input_hi is None and last.output_hi is None
    with pytest.raises(TokenfleetError, match="unknown bucket 'big'"):
        b.bucket("big")


def test_lower_edge_inclusive_upper_exclusive() -> None:
    b = SizeBuckets()
    idx = b.assign_lengths(
        np.array([0, 511, 512, 2047, 2048, 8192, 10**7]),
        np.array([0, 127, 128, 511, 512, 0, 10**6]),
    )
    labels = [b.buckets[k].label for k in idx]
    assert labels == [
        "in0-512_out0-128",
        "in0-512_out0-128",
        "in512-2048_out128-512",
        "in512-2048_out128-512",
        "in2048-8192_out512-inf",
        "in8192-inf_out0-128",
        "in8192-inf_out512-inf",
    ]


@pytest.mark.parametrize(
    ("edges", "pattern"),
    [
        ((10, 100, INF), "first edge must be 0"),
        ((0, 100, 1000), "last edge must be inf"),
        ((0, 100, 100, INF), "strictly increasing"),
        ((0, 10.5, INF), "whole numbers"),
        ((0,), "at least two"),
    ],
)
def test_bad_edges(edges, pattern) -> None:
    with pytest.raises(ValidationError, match=pattern):
        SizeBuckets(input_edges=edges)


def test_config_from_yaml_like_dict_and_json_round_trip() -> None:
    b = SizeBuckets.model_validate({"input_edges": [0, 1024, "inf"], "output_edges": [0, "inf"]})
    assert len(b) == 2
    dumped = b.model_dump_json()
    assert json.loads(dumped)["input_edges"][-1] == "Infinity"
    assert SizeBuckets.model_validate_json(dumped) == b


def test_summary_means_by_hand() -> None:
    b = SizeBuckets(input_edges=(0, 100, INF), output_edges=(0, INF))
    tr = _trace([0, 1, 2, 3], [10, 30, 100, 300], [1, 3, 5, 7])
    s = b.summary(tr)
    assert [x.count for x in s] == [2, 2]
    assert s[0].mean_input_tokens == 20 and s[1].mean_output_tokens == 6
    assert b.shares(tr).tolist() == [0.5, 0.5]
    empty = SizeBuckets(input_edges=(0, 1, INF), output_edges=(0, INF)).summary(tr)
    assert empty[0].count == 0 and empty[0].mean_input_tokens is None


def test_demand_own_peak_vs_coincident_by_hand() -> None:
    b = SizeBuckets(input_edges=(0, 100, INF), output_edges=(0, INF))
    # small requests burst at 0-9 s (5 of them), large ones at 100-104 s (3) plus one early.
    t = [0, 2, 4, 6, 8, 50, 100, 101, 104, 200]
    i = [10, 10, 10, 10, 10, 500, 500, 500, 500, 10]
    tr = _trace(t, i, np.ones(10, int))
    d = {x.bucket.label: x for x in b.demand(tr, peak_window_s=10)}
    small, large = d["in0-100_out0-inf"], d["in100-inf_out0-inf"]
    assert small.peak_rate_per_s == pytest.approx(5 / 10)
    assert large.peak_rate_per_s == pytest.approx(3 / 10)
    # Overall busiest 10-s window is [0, 10): 5 small, 0 large.
    assert small.rate_at_peak_per_s == pytest.approx(0.5)
    assert large.rate_at_peak_per_s == 0.0
    assert small.mean_rate_per_s == pytest.approx(6 / 200)
    overall = busiest_window(tr.arrival_s, 10)[1] / 10
    assert sum(x.rate_at_peak_per_s for x in d.values()) == pytest.approx(overall)
    assert sum(x.peak_rate_per_s for x in d.values()) >= overall


def test_demand_errors() -> None:
    tr = _trace([0, 5], [1, 1], [1, 1])
    with pytest.raises(TokenfleetError, match="shorter than the peak window 60 s"):
        SizeBuckets().demand(tr, 60)
    with pytest.raises(TokenfleetError, match="must be > 0"):
        SizeBuckets().demand(tr, 0)


def test_demand_on_real_sample_is_consistent() -> None:
    tr = read_trace(sample_path("azure_conv"))
    d = SizeBuckets().demand(tr, 60)
    assert sum(x.count for x in d) == len(tr)
    assert sum(x.share for x in d) == pytest.approx(1.0)
    assert all(x.peak_rate_per_s >= x.rate_at_peak_per_s for x in d)


@settings(max_examples=50, deadline=None)
@given(
    lengths=hnp.arrays(np.int64, st.integers(1, 200), elements=st.integers(0, 200_000)),
    cuts=st.lists(st.integers(1, 100_000), max_size=5, unique=True),
)
def test_shares_sum_to_one(lengths: np.ndarray, cuts: list[int]) -> None:
    n = lengths.size
    b = SizeBuckets(input_edges=(0, *sorted(cuts), INF))
    tr = _trace(np.arange(n), lengths, lengths[::-1].copy())
    sh = b.shares(tr)
    assert sh.sum() == pytest.approx(1.0)
    assert b.counts(tr).sum() == n


@settings(max_examples=50, deadline=None)
@given(
    t=hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(0, 100)),
    w=st.floats(0.5, 50),
)
def test_busiest_window_matches_brute_force(t: np.ndarray, w: float) -> None:
    t = np.sort(t)
    brute = max(int(np.count_nonzero((t >= s) & (t < s + w))) for s in t)
    assert busiest_window(t, w)[1] == brute
