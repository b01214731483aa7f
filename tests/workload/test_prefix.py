"""Prefix-block hashes on traces and the exact LRU prefix-cache count."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.prefix import (
    capacity_blocks,
    lru_hit_tokens_reference,
    prefix_reuse,
)
from tokenfleet.workload.readers import read_trace
from tokenfleet.workload.samples import sample_path
from tokenfleet.workload.trace import Trace


def _sample() -> Trace:
    return read_trace(sample_path("mooncake_conversation"))


def _raw_hash_ids(path) -> list[list[int]]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line)["hash_ids"] for line in fh if line.strip()]


def test_reader_keeps_hash_ids_in_file_order() -> None:
    tr = _sample()
    raw = _raw_hash_ids(sample_path("mooncake_conversation"))
    assert tr.has_prefix and tr.out_of_order == 0 and tr.prefix_block_tokens == 512
    assert len(tr) == len(raw)
    for i in (0, 1, 17, len(raw) - 1):
        assert tr.prefix_blocks(i).tolist() == raw[i]


def test_unordered_rows_carry_their_hashes(write) -> None:
    rows = [(5, 1000, [7, 8]), (1, 600, [7]), (3, 100, [])]
    text = "".join(json.dumps({"timestamp": t, "input_length": n, "output_length": 1,
                               "hash_ids": h}) + "\n" for t, n, h in rows)
    tr = read_trace(write("m.jsonl", text))
    assert tr.out_of_order == 1
    assert tr.input_tokens.tolist() == [600, 100, 1000]
    assert [tr.prefix_blocks(i).tolist() for i in range(3)] == [[7], [], [7, 8]]


def test_negative_hash_is_a_clear_error(write) -> None:
    text = json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1,
                       "hash_ids": [-3]}) + "\n"
    with pytest.raises(TokenfleetError, match="hash_ids"):
        read_trace(write("m.jsonl", text))


def test_slice_and_growth_keep_hashes() -> None:
    tr = _sample()
    s = tr.slice(5.0, 60.0)
    lo = int(np.searchsorted(tr.arrival_s, 5.0))
    assert s.prefix_blocks(0).tolist() == tr.prefix_blocks(lo).tolist()
    g = tr.scale_rate(2.0, seed=3)
    assert len(g) == 2 * len(tr) and g.prefix_offsets[-1] == 2 * tr.prefix_offsets[-1]
    # copies are other users: each copy number reuses only its own conversations, so
    # the reuse per request is the trace's
    assert prefix_reuse(g).unbounded_hit_rate() == pytest.approx(
        prefix_reuse(tr).unbounded_hit_rate(), abs=1e-12)
    c = tr.scale_rate(2.0, mode="compress")
    assert np.array_equal(c.prefix_hashes, tr.prefix_hashes)


def test_no_hashes_is_a_clear_error() -> None:
    tr = Trace(np.zeros(2), np.ones(2, dtype=np.int64), np.ones(2, dtype=np.int64))
    assert not tr.has_prefix
    with pytest.raises(TokenfleetError, match="no prefix-block hashes"):
        prefix_reuse(tr)


@pytest.mark.parametrize("cap", [0, 1, 30, 300, 3000, 10**9])
def test_compiled_count_equals_reference_on_the_sample(cap: int) -> None:
    tr = _sample()
    r = prefix_reuse(tr)
    ref = lru_hit_tokens_reference(tr, cap)
    assert np.array_equal(r.hit_tokens(cap), ref)
    assert r.hit_rate(cap) == pytest.approx(ref.sum() / tr.input_tokens.sum())


@st.composite
def _traces(draw) -> Trace:
    n = draw(st.integers(1, 25))
    lens = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    # Few distinct hashes and random orders: repeats, shared heads, duplicates in a request.
    hashes = [draw(st.lists(st.integers(0, 12), min_size=k, max_size=k)) for k in lens]
    bt = draw(st.integers(1, 8))
    inp = [max(0, k * bt - draw(st.integers(0, bt))) for k in lens]
    off = np.concatenate([[0], np.cumsum(lens)])
    return Trace(np.arange(n, dtype=float), np.asarray(inp), np.ones(n, dtype=np.int64),
                 prefix_offsets=off, prefix_hashes=np.asarray(sum(hashes, []), dtype=np.uint64),
                 prefix_block_tokens=bt)


@settings(max_examples=150, deadline=None)
@given(_traces(), st.integers(0, 15))
def test_compiled_count_equals_reference_on_random_traces(tr: Trace, cap: int) -> None:
    r = prefix_reuse(tr)
    assert np.array_equal(r.hit_tokens(cap), lru_hit_tokens_reference(tr, cap))


@settings(max_examples=60, deadline=None)
@given(_traces())
def test_curve_is_monotone_and_bounded(tr: Trace) -> None:
    r = prefix_reuse(tr)
    caps = np.arange(0, 40)
    c = r.curve(caps)
    assert c[0] == 0.0
    assert np.all(np.diff(c) >= -1e-15) and np.all(c <= 1.0)
    assert c[-1] <= r.unbounded_hit_rate() + 1e-15


def test_capacity_for_inverts_the_curve() -> None:
    r = prefix_reuse(_sample())
    target = r.unbounded_hit_rate() * 0.5
    cap = r.capacity_for(target)
    assert cap is not None and r.hit_rate(cap) >= target > r.hit_rate(cap - 1)
    assert r.capacity_for(1.1) is None
    assert capacity_blocks(1500, 512) == 2


def test_trace_prefix_command(cli_app) -> None:
    import json as _json

    from typer.testing import CliRunner

    path = str(sample_path("mooncake_conversation"))
    r = CliRunner().invoke(cli_app, ["trace", "prefix", path, "--cache-tokens", "0,1e6,1e9",
                                     "--json"])
    assert r.exit_code == 0, r.output
    out = _json.loads(r.output)
    reuse = prefix_reuse(_sample())
    assert out["unbounded_hit_rate"] == pytest.approx(reuse.unbounded_hit_rate())
    rates = out["hit_rate_by_cache_tokens"]
    assert rates["0"] == 0.0 and rates["1000000"] == pytest.approx(reuse.hit_rate(1953))
    assert rates["1000000000"] == pytest.approx(reuse.unbounded_hit_rate())
