"""Trace readers: every bundled sample, the full public traces, generic formats,
compression, detection, and every bad-input error."""

from __future__ import annotations

import csv
import gzip
import json
import lzma
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import (
    SAMPLES,
    ColumnMapping,
    read_trace,
    sample_path,
    trace_formats,
    write_trace,
)

# CI checks out ../shared beside the clone; the full public traces live there.
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"


def _azure_expected(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent parse with the csv module and datetime (the reader uses Polars)."""
    with gzip.open(path, "rt") as fh:
        rows = list(csv.DictReader(fh))

    def ts(s: str) -> float:
        # Python's %f takes at most 6 digits: drop Azure's 7th fractional digit.
        head, frac = s.split(".")
        return datetime.strptime(f"{head}.{frac[:6]}", "%Y-%m-%d %H:%M:%S.%f").timestamp()

    t = np.array([ts(r["TIMESTAMP"]) for r in rows])
    i = np.array([int(r["ContextTokens"]) for r in rows])
    o = np.array([int(r["GeneratedTokens"]) for r in rows])
    return t - t.min(), i, o


def _mooncake_expected(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    t = np.array([r["timestamp"] for r in rows], dtype=float) / 1000
    return (
        t - t.min(),
        np.array([r["input_length"] for r in rows]),
        np.array([r["output_length"] for r in rows]),
    )


# ---- bundled samples ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_reads_with_detected_format(name: str) -> None:
    tr = read_trace(sample_path(name))
    assert len(tr) + tr.dropped == 500
    assert tr.arrival_s[0] == 0.0
    assert np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.input_tokens.dtype == np.int64 and tr.output_tokens.dtype == np.int64


@pytest.mark.parametrize("name", ["azure_code", "azure_conv"])
def test_azure_sample_matches_independent_parse(name: str) -> None:
    tr = read_trace(sample_path(name), format="azure")
    t, i, o = _azure_expected(sample_path(name))
    order = np.argsort(t, kind="stable")
    np.testing.assert_allclose(tr.arrival_s, t[order], atol=2e-6)
    np.testing.assert_array_equal(tr.input_tokens, i[order])
    np.testing.assert_array_equal(tr.output_tokens, o[order])
    assert tr.start_epoch_s is not None


def test_azure_conv_first_rows_by_hand() -> None:
    # 2023-11-16 18:15:46.6805900,374,44 then 18:15:50.9951690,396,109
    tr = read_trace(sample_path("azure_conv"))
    assert tr.input_tokens[:2].tolist() == [374, 396]
    assert tr.output_tokens[:2].tolist() == [44, 109]
    assert tr.arrival_s[1] == pytest.approx(50.995169 - 46.68059, abs=1e-9)
    start = datetime(2023, 11, 16, 18, 15, 46, 680590)
    assert tr.start_epoch_s == pytest.approx((start - datetime(1970, 1, 1)).total_seconds())


@pytest.mark.parametrize("name", ["mooncake_conversation", "mooncake_synthetic"])
def test_mooncake_sample_matches_independent_parse(name: str) -> None:
    tr = read_trace(sample_path(name))
    t, i, o = _mooncake_expected(sample_path(name))
    order = np.argsort(t, kind="stable")
    np.testing.assert_allclose(tr.arrival_s, t[order])
    np.testing.assert_array_equal(tr.input_tokens, i[order])
    np.testing.assert_array_equal(tr.output_tokens, o[order])
    assert tr.start_epoch_s is None


def _burst_rows() -> list[dict[str, str]]:
    with gzip.open(sample_path("burstgpt"), "rt") as fh:
        return list(csv.DictReader(fh))


def test_burstgpt_drops_failed_rows_by_default() -> None:
    rows = _burst_rows()
    failed = sum(r["Response tokens"] == "0" for r in rows)
    assert failed > 0  # the sample is built to contain failures
    tr = read_trace(sample_path("burstgpt"))
    assert len(tr) == len(rows) - failed
    assert tr.dropped == failed
    assert tr.output_tokens.min() > 0
    kept = read_trace(sample_path("burstgpt"), drop_failed=False)
    assert len(kept) == len(rows) and kept.dropped == 0


def test_burstgpt_model_filter_case_insensitive() -> None:
    rows = _burst_rows()
    want = sum(r["Model"] == "GPT-4" and r["Response tokens"] != "0" for r in rows)
    tr = read_trace(sample_path("burstgpt"), model="gpt-4")
    assert len(tr) == want
    assert tr.dropped == len(rows) - want  # other models and failed rows alike


def test_burstgpt_unknown_model_lists_models() -> None:
    with pytest.raises(TokenfleetError, match=r"no rows for model 'Claude'.*ChatGPT.*GPT-4"):
        read_trace(sample_path("burstgpt"), model="Claude")


# ---- full public traces (when ../shared is present) ---------------------------------

FULL = [
    # file, requests, span (s), mean input, mean output: all from the traces README
    ("azure_llm_2023_code.csv.gz", 8819, 57 * 60 + 16 - 0.05, 2048, 28),  # 18:17:03.98-19:14:19.93
    ("azure_llm_2023_conv.csv.gz", 19366, 58 * 60 + 21.72, 1155, 211),  # 18:15:46.68-19:14:08.40
    ("mooncake_fast25_conversation_trace.jsonl.xz", 12031, 3536.999, 12035, 343),
    ("mooncake_fast25_synthetic_trace.jsonl.xz", 3993, 1022.025, 15325, 149),
]


@pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} not present")
@pytest.mark.parametrize(("name", "count", "span_s", "mean_in", "mean_out"), FULL)
def test_full_public_traces(
    name: str, count: int, span_s: float, mean_in: int, mean_out: int
) -> None:
    t0 = time.perf_counter()
    tr = read_trace(SHARED / name)
    elapsed = time.perf_counter() - t0
    assert len(tr) == count
    assert tr.input_tokens.mean() == pytest.approx(mean_in, abs=1)
    assert tr.output_tokens.mean() == pytest.approx(mean_out, abs=1)
    assert tr.duration_s == pytest.approx(span_s, abs=0.01)
    assert elapsed < 5.0  # generous bound for slow CI; ~30-60 ms measured locally


# ---- generic formats ----------------------------------------------------------------


def test_generic_csv_default_columns(write) -> None:
    p = write("t.csv", "arrival_s,input_tokens,output_tokens\n1.5,10,2\n2.0,20,3\n")
    tr = read_trace(p)
    assert tr.arrival_s.tolist() == [0.0, 0.5]
    assert tr.input_tokens.tolist() == [10, 20]


def test_generic_csv_mapping_ms_and_extra_columns(write) -> None:
    p = write("t.csv", "id,ts,prompt,completion,user\na,1000,10,2,u\nb,3500,20,3,v\n")
    tr = read_trace(p, mapping="arrival=ts,input=prompt,output=completion,unit=ms")
    assert tr.arrival_s.tolist() == [0.0, 2.5]
    assert tr.output_tokens.tolist() == [2, 3]


def test_generic_mapping_as_dict_and_model(write) -> None:
    p = write("t.csv", "a,b,c\n0,1,2\n1000000,3,4\n")
    m = {"arrival": "a", "input": "b", "output": "c", "unit": "us"}
    assert read_trace(p, mapping=m).arrival_s.tolist() == [0.0, 1.0]
    m2 = ColumnMapping(arrival="a", input="b", output="c", time_unit="us")
    assert read_trace(p, mapping=m2).arrival_s.tolist() == [0.0, 1.0]


def test_generic_datetime_with_offsets_converted_to_utc(write) -> None:
    p = write(
        "t.csv",
        "when,i,o\n2024-05-10T02:00:00+02:00,1,1\n2024-05-10 00:00:01.5Z,2,2\n",
    )
    tr = read_trace(p, mapping="arrival=when,input=i,output=o,unit=datetime")
    assert tr.arrival_s.tolist() == [0.0, 1.5]
    assert tr.start_epoch_s == pytest.approx(datetime(2024, 5, 10).timestamp() - _tz_offset())


def _tz_offset() -> float:
    # datetime(...).timestamp() uses local time; the reader uses UTC.
    naive = datetime(2024, 5, 10)
    return naive.timestamp() - (naive - datetime(1970, 1, 1)).total_seconds()


def test_azure_2024_style_timestamps(write) -> None:
    # Same columns as 2023; seconds without a fraction and with 7 digits both parse.
    p = write(
        "week.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00,100,10\n2024-05-10 00:00:00.5000000,200,20\n",
    )
    tr = read_trace(p)
    assert tr.arrival_s.tolist() == [0.0, 0.5]


def test_generic_jsonl_and_parquet(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"t": 2, "in": 5, "out": 1}\n{"t": 4, "in": 6, "out": 2}\n')
    tr = read_trace(p, mapping="arrival=t,input=in,output=out")
    assert tr.arrival_s.tolist() == [0.0, 2.0]
    q = tmp_path / "t.parquet"
    pl.DataFrame(
        {
            "ts": [datetime(2024, 1, 1, 0, 0, 0), datetime(2024, 1, 1, 0, 1, 0)],
            "a": [7, 8],
            "b": [1.0, 2.0],
        }
    ).write_parquet(q)
    tr = read_trace(q, mapping="arrival=ts,input=a,output=b,unit=datetime")
    assert tr.arrival_s.tolist() == [0.0, 60.0]
    assert tr.output_tokens.tolist() == [1, 2]
    assert tr.start_epoch_s == (datetime(2024, 1, 1) - datetime(1970, 1, 1)).total_seconds()


def test_compression_gz_xz_and_magic_without_suffix(tmp_path: Path) -> None:
    body = b"arrival_s,input_tokens,output_tokens\n0,1,2\n1,3,4\n"
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(body))
    (tmp_path / "a.csv.xz").write_bytes(lzma.compress(body))
    (tmp_path / "b.csv").write_bytes(gzip.compress(body))  # gzip content, no .gz suffix
    for name in ("a.csv.gz", "a.csv.xz", "b.csv"):
        assert read_trace(tmp_path / name).input_tokens.tolist() == [1, 3], name


def test_unordered_rows_are_sorted_and_counted(write) -> None:
    p = write(
        "t.csv",
        "arrival_s,input_tokens,output_tokens\n0,1,1\n5,5,5\n3,3,3\n4,4,4\n2,2,2\n6,6,6\n",
    )
    tr = read_trace(p)
    assert tr.arrival_s.tolist() == [0, 2, 3, 4, 5, 6]
    # lengths travel with their timestamps
    assert tr.input_tokens.tolist() == [1, 2, 3, 4, 5, 6]
    assert tr.out_of_order == 2  # 3 after 5, 2 after 4


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet", ".csv.gz", ".jsonl.gz"])
def test_write_trace_round_trip(tmp_path: Path, ext: str) -> None:
    tr = read_trace(sample_path("azure_conv"))
    p = write_trace(tr, tmp_path / f"out{ext}")
    back = read_trace(p)
    np.testing.assert_array_equal(back.arrival_s, tr.arrival_s)
    np.testing.assert_array_equal(back.input_tokens, tr.input_tokens)
    np.testing.assert_array_equal(back.output_tokens, tr.output_tokens)


def test_formats_registry_lists_all() -> None:
    assert set(trace_formats()) >= {"azure", "burstgpt", "mooncake", "csv", "jsonl", "parquet"}


# ---- errors -------------------------------------------------------------------------

HEADER = "arrival_s,input_tokens,output_tokens\n"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenfleetError, match=r"trace file not found: .*nope\.csv"):
        read_trace(tmp_path / "nope.csv")


def test_unknown_format_lists_allowed(write) -> None:
    p = write("t.csv", HEADER + "0,1,1\n")
    with pytest.raises(TokenfleetError, match=r"unknown trace format 'excel'.*azure.*burstgpt"):
        read_trace(p, format="excel")


def test_unknown_extension(write) -> None:
    p = write("t.txt", HEADER + "0,1,1\n")
    with pytest.raises(TokenfleetError, match=r"cannot tell the trace format.*'\.txt'"):
        read_trace(p)


def test_missing_columns_named_with_columns_found(write) -> None:
    p = write("t.csv", "time,prompt,answer\n0,1,1\n")
    with pytest.raises(TokenfleetError) as e:
        read_trace(p)
    msg = str(e.value)
    assert "['arrival_s', 'input_tokens', 'output_tokens']" in msg
    assert "columns found: ['time', 'prompt', 'answer']" in msg
    assert "--map" in msg and str(p) in msg


def test_azure_format_forced_on_wrong_file_names_columns(write) -> None:
    p = write("t.csv", HEADER + "0,1,1\n")
    with pytest.raises(TokenfleetError, match=r"format 'azure' needs column\(s\) \['TIMESTAMP'"):
        read_trace(p, format="azure")


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ("2,,5", r"row 3 \(line 4\), field 'input_tokens': missing token count"),
        ("2,7,-1", r"row 3 \(line 4\), field 'output_tokens': negative token count"),
        ("2,abc,5", r"row 3 \(line 4\), field 'input_tokens': not a number \(value: 'abc'\)"),
        ("2,7.5,5", r"row 3 \(line 4\), field 'input_tokens': .*not a whole number"),
        ("x,7,5", r"row 3 \(line 4\), field 'arrival_s': timestamp is not a number"),
        (",7,5", r"row 3 \(line 4\), field 'arrival_s': missing timestamp"),
    ],
)
def test_bad_csv_values_name_row_and_field(write, row: str, pattern: str) -> None:
    p = write("t.csv", HEADER + "0,1,1\n1,2,2\n" + row + "\n3,3,3\n")
    with pytest.raises(TokenfleetError, match=pattern) as e:
        read_trace(p)
    assert str(p) in str(e.value)


def test_error_counts_further_bad_rows(write) -> None:
    p = write("t.csv", HEADER + "0,-1,1\n1,-2,2\n2,-3,3\n")
    with pytest.raises(TokenfleetError, match=r"row 1 .*2 more bad row\(s\)"):
        read_trace(p)


def test_bad_azure_timestamp(write) -> None:
    p = write(
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,1,1\nyesterday,2,2\n",
    )
    with pytest.raises(TokenfleetError, match=r"row 2 \(line 3\), field 'TIMESTAMP': not a date"):
        read_trace(p)


def test_jsonl_errors_name_line(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 9, "input_length": null, "output_length": 1, "hash_ids": [2]}\n'
    )
    with pytest.raises(TokenfleetError, match=r"line 2, field 'input_length': missing"):
        read_trace(p)
    q = tmp_path / "n.jsonl"
    q.write_text('{"ts": 0, "input_length": 5}\n')
    with pytest.raises(TokenfleetError, match=r"needs column\(s\).*columns found: \['ts'"):
        read_trace(q)
    r = tmp_path / "bad.jsonl"
    r.write_text("not json\n")
    with pytest.raises(TokenfleetError, match=r"line 1 is not valid JSON"):
        read_trace(r)


def test_parquet_negative_names_row(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    pl.DataFrame(
        {"arrival_s": [0.0, 1.0], "input_tokens": [1, -4], "output_tokens": [1, 1]}
    ).write_parquet(p)
    with pytest.raises(TokenfleetError, match=r"row 2, field 'input_tokens': negative"):
        read_trace(p)


def test_empty_trace_and_empty_file(write) -> None:
    with pytest.raises(TokenfleetError, match="has no requests"):
        read_trace(write("h.csv", HEADER))
    with pytest.raises(TokenfleetError, match="file is empty"):
        read_trace(write("e.csv", ""))
    with pytest.raises(TokenfleetError, match="file is empty"):
        read_trace(write("e.jsonl", "\n"))


def test_all_rows_filtered_is_clear(write) -> None:
    p = write(
        "b.csv",
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "0,ChatGPT,10,0,10,API log\n",
    )
    with pytest.raises(TokenfleetError, match=r"no requests left after filtering.*failed"):
        read_trace(p)


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "t.csv.gz"
    p.write_bytes(gzip.compress(b"arrival_s,input_tokens\n" * 100)[:30])
    with pytest.raises(TokenfleetError, match=r"t\.csv\.gz: cannot decompress"):
        read_trace(p)


def test_mapping_errors(write) -> None:
    p = write("t.csv", HEADER + "0,1,1\n")
    with pytest.raises(TokenfleetError, match=r"unknown key 'start'"):
        read_trace(p, mapping="start=arrival_s")
    with pytest.raises(TokenfleetError, match=r"field 'time_unit'.*s, ms, us, ns, datetime"):
        read_trace(p, mapping="unit=hours")
    with pytest.raises(TokenfleetError, match=r"key=value"):
        ColumnMapping.parse("arrival")
    with pytest.raises(TokenfleetError, match=r"only to the generic formats"):
        read_trace(sample_path("azure_conv"), format="azure", mapping="unit=s")
    with pytest.raises(TokenfleetError, match=r"uses a column twice"):
        read_trace(p, mapping="input=arrival_s")
    with pytest.raises(TokenfleetError, match=r"model filter applies only to BurstGPT"):
        read_trace(p, model="GPT-4")


def test_datetime_unit_on_numbers_is_explained(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    pl.DataFrame(
        {"arrival_s": [0.0, 1.0], "input_tokens": [1, 2], "output_tokens": [1, 1]}
    ).write_parquet(p)
    with pytest.raises(TokenfleetError, match=r"time unit 'datetime' needs date-time strings"):
        read_trace(p, mapping="unit=datetime")


def test_non_numeric_column_type(tmp_path: Path) -> None:
    p = tmp_path / "t.parquet"
    pl.DataFrame(
        {"arrival_s": [0.0], "input_tokens": [[1, 2]], "output_tokens": [1]}
    ).write_parquet(p)
    with pytest.raises(TokenfleetError, match=r"(?i)'input_tokens' holds list.*expected numbers"):
        read_trace(p)


def test_million_rows_round_trip_parquet_quickly(tmp_path: Path) -> None:
    from tokenfleet.workload import FixedLengths, poisson

    tr = poisson(1000.0, 1000.0, FixedLengths(512, 64), seed=0)  # ~1M requests
    assert len(tr) > 990_000
    t0 = time.perf_counter()
    back = read_trace(write_trace(tr, tmp_path / "big.parquet"))
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(back.arrival_s, tr.arrival_s - tr.arrival_s[0])
    np.testing.assert_array_equal(back.output_tokens, tr.output_tokens)
    assert elapsed < 10.0  # ~0.2 s measured on 2 cores; bound is for slow CI
