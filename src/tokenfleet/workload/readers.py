"""Read request traces from files into a :class:`~tokenfleet.workload.trace.Trace`.

Readers are chosen by name from a registry (``trace_formats()`` lists them):

========== ==================================================================
azure      Azure LLM inference traces, 2023 (Splitwise) and 2024 week-long
           (DynamoLLM): CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``;
           ``TIMESTAMP`` is a wall-clock datetime string such as
           ``2023-11-16 18:17:03.9799600`` (7 fractional digits accepted,
           an optional ``+00:00``/``Z`` offset too).
burstgpt   BurstGPT CSV: ``Timestamp`` (seconds from the trace start),
           ``Model``, ``Request tokens``, ``Response tokens``,
           ``Total tokens``, ``Log Type``. Rows with ``Response tokens`` = 0
           are failed requests and are dropped by default; ``model=`` keeps
           one model (e.g. ``ChatGPT`` or ``GPT-4``).
mooncake   Mooncake JSONL: ``timestamp`` (milliseconds from the trace start),
           ``input_length``, ``output_length``, ``hash_ids`` (kept as the
           trace's prefix-block hashes, 512-token blocks; see Trace).
csv        Generic files with a :class:`ColumnMapping` (default columns
jsonl      ``arrival_s``, ``input_tokens``, ``output_tokens`` in seconds,
parquet    which is what ``tokenfleet trace generate`` writes).
========== ==================================================================

``format=None`` detects the format from the extension and the header.
``.gz`` and ``.xz`` files are decompressed transparently (detected by their
magic bytes, so a missing suffix does not matter).

Parsing is columnar (Polars); validation is vectorised NumPy. Bad input raises
:class:`~tokenfleet.errors.TokenfleetError` naming the file, the first
offending row and the field.

**Unordered timestamps are sorted, not rejected**: real traces are sometimes
slightly out of order (logging from several front ends), and rejecting them
would make the public traces unusable. The number of rows that arrived earlier
than the row before them in the file is kept in ``Trace.out_of_order`` and
shown by ``tokenfleet trace stats``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import lzma
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, ValidationError

from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_bytes, write_parquet
from tokenfleet.workload.trace import FloatArray, IntArray, Trace, take_blocks

TimeUnit = Literal["s", "ms", "us", "ns", "datetime"]
_UNIT_SECONDS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# Tried in order on datetime strings (after an ISO "T" separator is turned into a
# space); "%.f" accepts 0-9 fractional digits, so Azure's 7-digit fractions parse,
# and "%#z" accepts "+00:00", "+0000" and "Z".
_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_HEAD_BYTES = 65536


# ---- column mapping -----------------------------------------------------------------


class ColumnMapping(BaseModel):
    """Which columns of a generic CSV/JSONL/Parquet file hold what.

    ``arrival`` is the arrival time in ``time_unit`` (``s``, ``ms``, ``us``,
    ``ns`` from any origin, or ``datetime`` strings/values); ``input`` and
    ``output`` are prompt and generated lengths in tokens.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arrival: str = "arrival_s"
    input: str = "input_tokens"
    output: str = "output_tokens"
    time_unit: TimeUnit = "s"

    @classmethod
    def parse(cls, text: str) -> ColumnMapping:
        """Parse ``"arrival=ts,input=prompt_len,output=gen_len,unit=ms"``.

        Keys: ``arrival``, ``input``, ``output``, ``unit`` (or ``time_unit``);
        omitted keys keep their defaults.
        """
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, val = part.partition("=")
            key, val = key.strip(), val.strip()
            if not sep or not val:
                raise TokenfleetError(
                    f"column mapping '{text}': expected key=value pairs separated by commas, "
                    f"e.g. arrival=ts,input=prompt_tokens,output=completion_tokens,unit=ms"
                )
            key = "time_unit" if key == "unit" else key
            if key not in cls.model_fields:
                raise TokenfleetError(
                    f"column mapping '{text}': unknown key '{key}'; "
                    f"allowed: arrival, input, output, unit"
                )
            values[key] = val
        return cls.coerce(values)

    @classmethod
    def coerce(cls, value: ColumnMapping | Mapping[str, str] | str | None) -> ColumnMapping:
        """Accept a mapping object, a dict (``unit`` or ``time_unit``) or a ``k=v,...`` string."""
        if value is None:
            return cls()
        if isinstance(value, ColumnMapping):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        data = dict(value)
        if "unit" in data:
            data["time_unit"] = data.pop("unit")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise TokenfleetError(
                f"column mapping: field '{loc}': {first['msg']} "
                f"(time units allowed: s, ms, us, ns, datetime)"
            ) from None


@dataclass(frozen=True)
class ReadOptions:
    """Reader filters. ``model`` keeps only that model (BurstGPT ``Model`` column,
    case-insensitive); ``drop_failed`` drops BurstGPT rows with 0 response tokens."""

    model: str | None = None
    drop_failed: bool = True


# ---- the file being read ------------------------------------------------------------


@dataclass
class TraceFile:
    """A trace file handed to a reader: its path, compression (detected from magic
    bytes) and the format suffix inside (``.csv`` for ``x.csv.gz``). Readers get
    content through ``head()`` (for sniffing) and ``polars_input()``."""

    path: Path
    compression: Literal["gz", "xz"] | None
    suffix: str  # format suffix after stripping .gz/.xz, e.g. ".csv"
    _data: bytes | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> TraceFile:
        p = Path(path)
        if not p.exists():
            raise TokenfleetError(f"trace file not found: {p}")
        if not p.is_file():
            raise TokenfleetError(f"trace path is not a file: {p}")
        with p.open("rb") as fh:
            magic = fh.read(6)
        compression: Literal["gz", "xz"] | None = None
        if magic.startswith(_GZIP_MAGIC):
            compression = "gz"
        elif magic.startswith(_XZ_MAGIC):
            compression = "xz"
        suffixes = [s.lower() for s in p.suffixes]
        if suffixes and suffixes[-1] in (".gz", ".xz"):
            suffixes = suffixes[:-1]
        src = cls(p, compression, suffixes[-1] if suffixes else "")
        if src.suffix in (".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".txt"):
            _check_text(src.head(), p)
        return src

    def data(self) -> bytes:
        """The decompressed bytes (only used for compressed files; cached)."""
        if self._data is None:
            raw = self.path.read_bytes()
            try:
                if self.compression == "gz":
                    self._data = gzip.decompress(raw)
                elif self.compression == "xz":
                    self._data = lzma.decompress(raw)
                else:
                    self._data = raw
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise TokenfleetError(
                    f"{self.path}: cannot decompress ({self.compression}): {e}"
                ) from None
        return self._data

    def head(self) -> bytes:
        """The first bytes of the (decompressed) content, for header sniffing."""
        if self.compression is None:
            with self.path.open("rb") as fh:
                return fh.read(_HEAD_BYTES)
        return self.data()[:_HEAD_BYTES]

    def polars_input(self) -> Path | io.BytesIO:
        """What to hand to Polars: the path itself (mmap, multi-threaded) when
        uncompressed, else an in-memory buffer of the decompressed bytes."""
        return self.path if self.compression is None else io.BytesIO(self.data())


def _check_text(head: bytes, path: Path) -> None:
    """One clear line for a text trace that is binary (NUL bytes) or not UTF-8."""
    import codecs

    if b"\x00" in head:
        raise TokenfleetError(f"{path}: this trace is a binary file, not text")
    try:  # incremental: a character cut at the end of the head is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise TokenfleetError(f"{path}: this trace is not UTF-8 text (byte {e.start}); is "
                              f"it a binary file?") from None


def _csv_header(src: TraceFile) -> list[str]:
    head = src.head()
    if not head.strip():
        raise TokenfleetError(f"{src.path}: file is empty (no header, no requests)")
    first_line = head.decode("utf-8", errors="replace").splitlines()[0]
    return [c.strip() for c in next(csv.reader([first_line]))]


def _jsonl_keys(src: TraceFile) -> list[str]:
    head = src.head().decode("utf-8", errors="replace")
    for lineno, line in enumerate(head.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TokenfleetError(f"{src.path}: line {lineno} is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise TokenfleetError(f"{src.path}: line {lineno} is not a JSON object")
        return list(obj)
    raise TokenfleetError(f"{src.path}: file is empty (no requests)")


def _parquet_columns(src: TraceFile) -> list[str]:
    try:
        return list(pl.read_parquet_schema(src.polars_input()))
    except Exception as e:  # polars raises several error types for a bad footer
        raise TokenfleetError(f"{src.path}: not a readable Parquet file: {e}") from None


# ---- vectorised conversion and validation -------------------------------------------


RowLabel = Callable[[int], str]


def _csv_row(n: int) -> str:
    return f"row {n} (line {n + 1})"


def _jsonl_row(n: int) -> str:
    return f"line {n}"


def _plain_row(n: int) -> str:
    return f"row {n}"


def _fail(
    src: TraceFile,
    where: RowLabel,
    rows: np.ndarray,
    bad: np.ndarray,
    column: str,
    problem: str,
    raw: pl.Series,
) -> TokenfleetError:
    """Build the error for the first True in ``bad``, with the raw value and a count."""
    i = int(np.argmax(bad))
    total = int(np.count_nonzero(bad))
    more = f"; {total - 1} more bad row(s) in this field" if total > 1 else ""
    return TokenfleetError(
        f"{src.path}: {where(int(rows[i]))}, field '{column}': {problem} (value: {raw[i]!r}){more}"
    )


def _check_dtype(src: TraceFile, s: pl.Series, column: str) -> None:
    if not (s.dtype.is_numeric() or s.dtype == pl.String or s.dtype == pl.Null):
        raise TokenfleetError(f"{src.path}: field '{column}' holds {s.dtype}, expected numbers")


def _to_float(s: pl.Series) -> pl.Series:
    """Numbers as float64; strings parsed (surrounding spaces ignored), bad ones -> null."""
    if s.dtype == pl.String:
        s = s.str.strip_chars()
    return s.cast(pl.Float64, strict=False)


def _lengths(
    src: TraceFile, where: RowLabel, rows: np.ndarray, s: pl.Series, column: str
) -> IntArray:
    """A token-length column as int64, or an error naming the first bad row."""
    _check_dtype(src, s, column)
    if s.dtype.is_integer():
        missing = s.is_null().to_numpy()
        vals = s.fill_null(0).cast(pl.Int64).to_numpy()
        not_number = np.zeros_like(missing)
        fractional = np.zeros_like(missing)
    else:
        f = _to_float(s)
        fv = f.to_numpy()  # nulls become NaN for float columns
        missing = s.is_null().to_numpy() | (np.isnan(fv) & ~f.is_null().to_numpy())
        not_number = f.is_null().to_numpy() & ~s.is_null().to_numpy()
        safe = np.where(np.isfinite(fv), fv, 0.0)
        fractional = np.isfinite(fv) & (safe != np.round(safe))
        not_number |= np.isinf(fv)
        vals = safe.astype(np.int64)
    negative = vals < 0
    bad = missing | not_number | negative | fractional
    if bad.any():
        i = int(np.argmax(bad))
        problem = (
            "missing token count"
            if missing[i]
            else "not a number"
            if not_number[i]
            else "negative token count"
            if negative[i]
            else "token count is not a whole number"
        )
        raise _fail(src, where, rows, bad, column, problem, s)
    return vals


def _arrivals(
    src: TraceFile, where: RowLabel, rows: np.ndarray, s: pl.Series, column: str, unit: str
) -> tuple[FloatArray, float | None]:
    """Arrival times as float64 seconds relative to the earliest one, plus that
    earliest time as Unix seconds when the column held absolute datetimes."""
    if unit == "datetime":
        if s.dtype == pl.String:
            s = s.str.strip_chars()
            dt = _parse_datetimes(s.str.replace("T", " ", literal=True))
        elif isinstance(s.dtype, pl.Datetime) or s.dtype == pl.Date:
            dt = s.cast(pl.Datetime("us"))
        else:
            raise TokenfleetError(
                f"{src.path}: field '{column}' holds {s.dtype}, but time unit 'datetime' "
                f"needs date-time strings; use unit=s|ms|us|ns for numbers"
            )
        if isinstance(dt.dtype, pl.Datetime) and dt.dtype.time_zone is not None:
            dt = dt.dt.convert_time_zone("UTC")
        missing = s.is_null().to_numpy()
        unparsed = dt.is_null().to_numpy() & ~missing
        if missing.any() or unparsed.any():
            bad = missing | unparsed
            i = int(np.argmax(bad))
            problem = (
                "missing timestamp"
                if missing[i]
                else ("not a date-time (expected e.g. 2023-11-16 18:17:03.9799600)")
            )
            raise _fail(src, where, rows, bad, column, problem, s)
        us = dt.dt.epoch("us").to_numpy().astype(np.int64)
        if us.size == 0:
            return np.empty(0), None
        ref = int(us.min())
        # Subtract in integer microseconds so float64 keeps sub-microsecond precision.
        return (us - ref).astype(np.float64) * 1e-6, ref * 1e-6

    _check_dtype(src, s, column)
    f = _to_float(s)
    fv = f.to_numpy().astype(np.float64)
    missing = s.is_null().to_numpy() | (np.isnan(fv) & ~f.is_null().to_numpy())
    not_number = (f.is_null().to_numpy() & ~s.is_null().to_numpy()) | np.isinf(fv)
    if missing.any() or not_number.any():
        bad = missing | not_number
        i = int(np.argmax(bad))
        problem = "missing timestamp" if missing[i] else "timestamp is not a number"
        raise _fail(src, where, rows, bad, column, problem, s)
    secs = fv * _UNIT_SECONDS[unit]
    if secs.size == 0:
        return secs, None
    return secs - secs.min(), None


def _parse_datetimes(s: pl.Series) -> pl.Series:
    """Parse with the first format in ``_DATETIME_FORMATS`` that reads a sample of
    the column; the caller reports rows that still fail to parse."""
    sample = s.drop_nulls().head(200)
    best: tuple[int, str] | None = None
    for fmt in _DATETIME_FORMATS:
        ok = int(sample.str.to_datetime(fmt, time_unit="us", strict=False).is_not_null().sum())
        if best is None or ok > best[0]:
            best = (ok, fmt)
        if ok == sample.len():
            break
    assert best is not None
    return s.str.to_datetime(best[1], time_unit="us", strict=False)


def _assemble(
    src: TraceFile,
    where: RowLabel,
    df: pl.DataFrame,
    arrival: str,
    inp: str,
    out: str,
    unit: str,
    keep: np.ndarray | None = None,
    dropped_note: str = "",
) -> Trace:
    """Validate the three columns of ``df`` (which carries ``__row``, 1-based file
    rows), apply an optional row filter, count out-of-order rows, sort, re-base."""
    if df.height == 0:
        raise TokenfleetError(f"{src.path}: trace has no requests (only a header, or empty)")
    rows = df["__row"].to_numpy()
    t, epoch = _arrivals(src, where, rows, df[arrival], arrival, unit)
    i_tok = _lengths(src, where, rows, df[inp], inp)
    o_tok = _lengths(src, where, rows, df[out], out)
    dropped = 0
    if keep is not None:
        dropped = int(keep.size - np.count_nonzero(keep))
        t, i_tok, o_tok = t[keep], i_tok[keep], o_tok[keep]
        if t.size == 0:
            raise TokenfleetError(f"{src.path}: no requests left {dropped_note}")
        shift = float(t.min())
        t = t - shift
        if epoch is not None:
            epoch += shift
    out_of_order = int(np.count_nonzero(np.diff(t) < 0))
    if out_of_order:
        order = np.argsort(t, kind="stable")
        t, i_tok, o_tok = t[order], i_tok[order], o_tok[order]
    return Trace(
        arrival_s=t,
        input_tokens=i_tok,
        output_tokens=o_tok,
        source=str(src.path),
        start_epoch_s=epoch,
        out_of_order=out_of_order,
        dropped=dropped,
    )


def _require(src: TraceFile, fmt: str, found: list[str], needed: list[str], hint: str) -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        raise TokenfleetError(
            f"{src.path}: format '{fmt}' needs column(s) {missing}; columns found: {found}. {hint}"
        )


_MAP_HINT = (
    "Name the columns with a mapping, e.g. --map arrival=ts,input=prompt_tokens,"
    "output=completion_tokens,unit=ms (or pass --format)."
)


def _polars_error(src: TraceFile, e: Exception) -> TokenfleetError:
    return TokenfleetError(f"{src.path}: cannot parse file: {e}")


def _read_csv(src: TraceFile, columns: list[str]) -> pl.DataFrame:
    try:
        # infer_schema_length=0 reads every column as text so that one bad value far
        # down the file becomes a row-level error of ours, not a Polars type error.
        return pl.read_csv(
            src.polars_input(),
            columns=columns,
            infer_schema_length=0,
            row_index_name="__row",
            row_index_offset=1,
        )
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _polars_error(src, e) from None


def _read_jsonl(src: TraceFile, columns: list[str]) -> pl.DataFrame:
    try:
        # A schema of strings: keys not named are skipped (e.g. Mooncake hash_ids,
        # the bulk of the file), numbers arrive as text and are parsed by us.
        df = pl.read_ndjson(src.polars_input(), schema=dict.fromkeys(columns, pl.String))
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _polars_error(src, e) from None
    return df.with_row_index("__row", offset=1)


def _read_parquet(src: TraceFile, columns: list[str]) -> pl.DataFrame:
    try:
        df = pl.read_parquet(src.polars_input(), columns=columns)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _polars_error(src, e) from None
    return df.with_row_index("__row", offset=1)


# ---- readers and the registry -------------------------------------------------------


class TraceReader(ABC):
    """One trace format. Subclasses set ``name``, ``description`` and ``suffixes``,
    say whether a header looks like theirs (``sniff``) and read a file (``read``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    generic: ClassVar[bool] = False  # generic readers take a ColumnMapping

    def sniff(self, src: TraceFile) -> bool:
        """True when the file's header identifies this specific format."""
        return False

    @abstractmethod
    def read(self, src: TraceFile, mapping: ColumnMapping, options: ReadOptions) -> Trace:
        """Read the whole file into a Trace (raise TokenfleetError on bad input)."""


class AzureReader(TraceReader):
    name = "azure"
    description = (
        "Azure LLM inference trace 2023/2024: CSV TIMESTAMP (datetime), ContextTokens, "
        "GeneratedTokens"
    )
    suffixes = (".csv",)
    columns = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

    def sniff(self, src: TraceFile) -> bool:
        return set(self.columns) <= set(_csv_header(src))

    def read(self, src: TraceFile, mapping: ColumnMapping, options: ReadOptions) -> Trace:
        _require(src, self.name, _csv_header(src), list(self.columns), "")
        df = _read_csv(src, list(self.columns))
        return _assemble(src, _csv_row, df, *self.columns, "datetime")


class BurstGPTReader(TraceReader):
    name = "burstgpt"
    description = (
        "BurstGPT CSV: Timestamp (s), Model, Request tokens, Response tokens, Total tokens, "
        "Log Type; failed rows (0 response tokens) dropped unless keep-failed; model filter"
    )
    suffixes = (".csv",)
    columns = ("Timestamp", "Request tokens", "Response tokens")

    def sniff(self, src: TraceFile) -> bool:
        return set(self.columns) <= set(_csv_header(src))

    def read(self, src: TraceFile, mapping: ColumnMapping, options: ReadOptions) -> Trace:
        header = _csv_header(src)
        needed = list(self.columns) + (["Model"] if options.model else [])
        _require(src, self.name, header, needed, "")
        df = _read_csv(src, needed)
        keep = np.ones(df.height, dtype=bool)
        notes = []
        if options.model:
            models = df["Model"].str.strip_chars()
            keep &= (models.str.to_lowercase() == options.model.strip().lower()).to_numpy()
            if not keep.any():
                found = sorted(str(m) for m in models.unique().drop_nulls().to_list())
                raise TokenfleetError(
                    f"{src.path}: no rows for model '{options.model}'; models found: {found}"
                )
            notes.append(f"model '{options.model}'")
        if options.drop_failed:
            # A failed BurstGPT request is logged with 0 response tokens; non-numeric
            # values are left in so that validation reports them with their row.
            resp = _to_float(df["Response tokens"]).to_numpy()
            keep &= ~(resp == 0)
            notes.append("failed rows (0 response tokens) dropped")
        note = f"after filtering ({', '.join(notes)})" if notes else ""
        return _assemble(
            src,
            _csv_row,
            df,
            *self.columns,
            "s",
            keep=None if keep.all() else keep,
            dropped_note=note,
        )


class MooncakeReader(TraceReader):
    name = "mooncake"
    description = "Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids"
    suffixes = (".jsonl", ".json", ".ndjson")
    columns = ("timestamp", "input_length", "output_length")

    def sniff(self, src: TraceFile) -> bool:
        return set(self.columns) <= set(_jsonl_keys(src))

    def read(self, src: TraceFile, mapping: ColumnMapping, options: ReadOptions) -> Trace:
        keys = _jsonl_keys(src)
        _require(src, self.name, keys, list(self.columns), "")
        if "hash_ids" not in keys:
            df = _read_jsonl(src, list(self.columns))
            return _assemble(src, _jsonl_row, df, *self.columns, "ms")
        df = _read_mooncake(src, list(self.columns))
        trace = _assemble(src, _jsonl_row, df, *self.columns, "ms")
        offsets, hashes = _hash_csr(src, df["hash_ids"])
        # _assemble sorts unordered rows stably by time; apply the same order here.
        secs = _to_float(df["timestamp"]).to_numpy()
        order = (np.argsort(secs, kind="stable") if trace.out_of_order
                 else np.arange(df.height, dtype=np.int64))
        new_off, new_hashes = take_blocks(offsets, hashes, order)
        return dataclasses.replace(trace, prefix_offsets=new_off, prefix_hashes=new_hashes,
                                   prefix_block_tokens=MOONCAKE_BLOCK_TOKENS)


# Mooncake's hash_ids cover 512-token blocks (kvcache-ai/Mooncake @ 3b5a5941:
# FAST25-release/traces/README.md).
MOONCAKE_BLOCK_TOKENS = 512


def _read_mooncake(src: TraceFile, columns: list[str]) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {c: pl.String() for c in columns}
    schema["hash_ids"] = pl.List(pl.Int64())
    try:
        df = pl.read_ndjson(src.polars_input(), schema=schema)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise _polars_error(src, e) from None
    return df.with_row_index("__row", offset=1)


def _hash_csr(src: TraceFile, col: pl.Series) -> tuple[IntArray, np.ndarray]:
    """``hash_ids`` lists as (offsets, uint64 hashes); a missing list is no blocks."""
    col = col.list.drop_nulls()
    lengths = col.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = col.explode().drop_nulls().to_numpy()
    if flat.size and flat.min() < 0:
        row = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(flat < 0)), side="right"))
        raise TokenfleetError(
            f"{src.path}: line {row + 1}, field 'hash_ids': negative block hash")
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, flat.astype(np.uint64)


class _GenericReader(TraceReader):
    generic = True
    _header: Callable[[TraceFile], list[str]]
    _reader: Callable[[TraceFile, list[str]], pl.DataFrame]
    _where: RowLabel

    def read(self, src: TraceFile, mapping: ColumnMapping, options: ReadOptions) -> Trace:
        cols = [mapping.arrival, mapping.input, mapping.output]
        if len(set(cols)) != 3:
            raise TokenfleetError(
                f"{src.path}: column mapping uses a column twice: arrival={mapping.arrival}, "
                f"input={mapping.input}, output={mapping.output}"
            )
        _require(src, self.name, type(self)._header(src), cols, _MAP_HINT)
        df = type(self)._reader(src, cols)
        return _assemble(
            src,
            type(self)._where,
            df,
            mapping.arrival,
            mapping.input,
            mapping.output,
            mapping.time_unit,
        )


class CsvReader(_GenericReader):
    name = "csv"
    description = (
        "generic CSV with a column mapping (default arrival_s, input_tokens, output_tokens; "
        "seconds)"
    )
    suffixes = (".csv",)
    _header = staticmethod(_csv_header)
    _reader = staticmethod(_read_csv)
    _where = staticmethod(_csv_row)


class JsonlReader(_GenericReader):
    name = "jsonl"
    description = "generic JSON Lines with a column mapping (same defaults as csv)"
    suffixes = (".jsonl", ".json", ".ndjson")
    _header = staticmethod(_jsonl_keys)
    _reader = staticmethod(_read_jsonl)
    _where = staticmethod(_jsonl_row)


class ParquetReader(_GenericReader):
    name = "parquet"
    description = "generic Parquet with a column mapping (same defaults as csv)"
    suffixes = (".parquet", ".pq")
    _header = staticmethod(_parquet_columns)
    _reader = staticmethod(_read_parquet)
    _where = staticmethod(_plain_row)


_READERS: dict[str, TraceReader] = {}


def register_reader(reader: TraceReader) -> None:
    """Add a reader to the registry (a later one with the same name replaces it).
    Specific formats are sniffed in registration order before generic ones."""
    _READERS[reader.name] = reader


for _r in (
    AzureReader(),
    BurstGPTReader(),
    MooncakeReader(),
    CsvReader(),
    JsonlReader(),
    ParquetReader(),
):
    register_reader(_r)


def trace_formats() -> dict[str, str]:
    """Registered format names and one-line descriptions."""
    return {name: r.description for name, r in _READERS.items()}


def _detect(src: TraceFile, want_generic: bool) -> TraceReader:
    candidates = [r for r in _READERS.values() if src.suffix in r.suffixes]
    if not candidates:
        raise TokenfleetError(
            f"{src.path}: cannot tell the trace format from the extension "
            f"'{src.suffix or '(none)'}'; expected .csv, .jsonl or .parquet (optionally .gz/.xz), "
            f"or pass a format: {', '.join(_READERS)}"
        )
    if not want_generic:
        for r in candidates:
            if not r.generic and r.sniff(src):
                return r
    for r in candidates:
        if r.generic:
            return r
    return candidates[0]


def read_trace(
    path: str | Path,
    format: str | None = None,
    mapping: ColumnMapping | Mapping[str, str] | str | None = None,
    *,
    model: str | None = None,
    drop_failed: bool = True,
) -> Trace:
    """Read a trace file (any registered format, optionally .gz/.xz compressed).

    ``format``: a name from :func:`trace_formats`, or None to detect it from the
    extension and header. ``mapping``: column mapping for the generic csv/jsonl/
    parquet readers (a :class:`ColumnMapping`, a dict or ``"arrival=..,input=..,
    output=..,unit=.."``); giving one implies a generic reader. ``model`` and
    ``drop_failed`` filter BurstGPT rows. Arrival times are returned in seconds
    from the first request, sorted (see module docstring on unordered rows).
    """
    src = TraceFile.open(path)
    if format is None:
        reader = _detect(src, want_generic=mapping is not None)
    else:
        key = format.strip().lower()
        if key not in _READERS:
            raise TokenfleetError(
                f"unknown trace format '{format}'; allowed: {', '.join(_READERS)}"
            )
        reader = _READERS[key]
    if mapping is not None and not reader.generic:
        raise TokenfleetError(
            f"{src.path}: a column mapping applies only to the generic formats "
            f"({', '.join(n for n, r in _READERS.items() if r.generic)}), not '{reader.name}'"
        )
    if model is not None and reader.name != "burstgpt":
        raise TokenfleetError(
            f"{src.path}: the model filter applies only to BurstGPT traces, not '{reader.name}'"
        )
    return reader.read(src, ColumnMapping.coerce(mapping), ReadOptions(model, drop_failed))


# ---- writing ------------------------------------------------------------------------


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as .csv, .jsonl or .parquet (csv/jsonl may end in .gz) with
    columns ``arrival_s`` (s), ``input_tokens``, ``output_tokens``: exactly what the
    generic readers read without a mapping. Returns the path written."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    kind = (suffixes[-2] if gz and len(suffixes) > 1 else suffixes[-1]) if suffixes else ""
    df = trace.to_polars()
    if kind == ".parquet" and not gz:
        write_parquet(p, df)
        return p
    if kind not in (".csv", ".jsonl"):
        raise TokenfleetError(
            f"{p}: cannot write a trace with extension '{''.join(p.suffixes) or '(none)'}'; "
            f"use .csv, .jsonl, .parquet, .csv.gz or .jsonl.gz"
        )
    buf = io.BytesIO()
    if kind == ".csv":
        df.write_csv(buf)
    else:
        df.write_ndjson(buf)
    data = buf.getvalue()
    write_bytes(p, gzip.compress(data, mtime=0) if gz else data)
    return p
