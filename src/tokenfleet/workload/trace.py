"""The `Trace`: a request log held as columnar NumPy arrays.

A trace is three equal-length arrays, one entry per request:

* ``arrival_s`` — float64, **seconds** since the trace origin, sorted ascending;
* ``input_tokens`` — int64 prompt length in **tokens** (>= 0);
* ``output_tokens`` — int64 generated length in **tokens** (>= 0).

Traces read from Mooncake files also keep each request's prefix-block hashes
(``hash_ids``, one per 512-token block; requests that share a leading run of them
can share that part of the KV cache) as a CSR pair: ``prefix_offsets`` (int64,
n + 1 entries) and ``prefix_hashes`` (uint64); request ``i``'s blocks are
``prefix_hashes[prefix_offsets[i]:prefix_offsets[i + 1]]``. Other formats carry
none (both ``None``); ``tokenfleet.workload.prefix`` counts what a cache reuses.

The origin is the first request for traces read from a file, the start of the
generation window for synthetic traces, and ``t0`` for :meth:`Trace.slice`.
When the file carried wall-clock timestamps, ``start_epoch_s`` is the origin as
Unix seconds (naive timestamps are taken as written, i.e. as if UTC), which is
what lets stats compute a time-of-day profile.

Columns rather than a list of request objects because the simulator replays a
million requests from one trace and the planner reduces it with vectorised
NumPy; :meth:`Trace.request` builds one :class:`Request` when code needs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from tokenfleet.errors import TokenfleetError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
HashArray = npt.NDArray[np.uint64]

GrowthMode = Literal["resample", "compress"]
# Odd 64-bit constant (2^64 / golden ratio) spreading copy numbers over the hash space.
_COPY_SALT = 0x9E3779B97F4A7C15


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a trace: arrival in seconds from the origin, lengths in tokens."""

    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """Requests as columns (see module docstring for units and invariants).

    ``out_of_order`` counts rows whose timestamp was earlier than the previous
    row *in the file* (readers sort them; real traces are sometimes slightly
    unordered). ``dropped`` counts rows removed by a reader filter (e.g. failed
    BurstGPT requests). Both are 0 for synthetic and derived traces.
    """

    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    source: str = "<memory>"
    start_epoch_s: float | None = None
    out_of_order: int = 0
    dropped: int = 0
    prefix_offsets: IntArray | None = None
    prefix_hashes: HashArray | None = None
    prefix_block_tokens: int = 512

    def __post_init__(self) -> None:
        # Coerce once here so every consumer can rely on dtype and contiguity.
        arr = np.ascontiguousarray(self.arrival_s, dtype=np.float64)
        inp = np.ascontiguousarray(self.input_tokens, dtype=np.int64)
        out = np.ascontiguousarray(self.output_tokens, dtype=np.int64)
        object.__setattr__(self, "arrival_s", arr)
        object.__setattr__(self, "input_tokens", inp)
        object.__setattr__(self, "output_tokens", out)
        if arr.ndim != 1 or inp.shape != arr.shape or out.shape != arr.shape:
            raise TokenfleetError(
                f"trace {self.source}: arrival_s, input_tokens and output_tokens must be "
                f"1-D arrays of equal length; got shapes {arr.shape}, {inp.shape}, {out.shape}"
            )
        if arr.size:
            if not np.all(np.isfinite(arr)):
                row = int(np.argmax(~np.isfinite(arr)))
                raise TokenfleetError(f"trace {self.source}: arrival_s[{row}] is not finite")
            if arr[0] < 0:
                raise TokenfleetError(
                    f"trace {self.source}: arrival_s must be >= 0 s from the origin; "
                    f"arrival_s[0] = {arr[0]}"
                )
            if arr.size > 1 and np.any(np.diff(arr) < 0):
                row = int(np.argmax(np.diff(arr) < 0)) + 1
                raise TokenfleetError(
                    f"trace {self.source}: arrival_s must be sorted ascending; "
                    f"arrival_s[{row}] = {arr[row]} < arrival_s[{row - 1}] = {arr[row - 1]}"
                )
            for name, col in (("input_tokens", inp), ("output_tokens", out)):
                if col.min() < 0:
                    row = int(np.argmax(col < 0))
                    raise TokenfleetError(
                        f"trace {self.source}: {name}[{row}] = {col[row]} is negative"
                    )
        self._check_prefix()

    def _check_prefix(self) -> None:
        """Coerce and validate the optional prefix-hash CSR pair."""
        if (self.prefix_offsets is None) != (self.prefix_hashes is None):
            raise TokenfleetError(
                f"trace {self.source}: give both prefix_offsets and prefix_hashes, or neither")
        if self.prefix_offsets is None or self.prefix_hashes is None:
            return
        off = np.ascontiguousarray(self.prefix_offsets, dtype=np.int64)
        hashes = np.ascontiguousarray(self.prefix_hashes, dtype=np.uint64)
        object.__setattr__(self, "prefix_offsets", off)
        object.__setattr__(self, "prefix_hashes", hashes)
        if self.prefix_block_tokens < 1:
            raise TokenfleetError(
                f"trace {self.source}: prefix_block_tokens must be >= 1, "
                f"got {self.prefix_block_tokens}")
        if (off.shape != (self.arrival_s.size + 1,) or off[0] != 0
                or off[-1] != hashes.size or np.any(np.diff(off) < 0)):
            raise TokenfleetError(
                f"trace {self.source}: prefix_offsets must be {self.arrival_s.size + 1} "
                f"non-decreasing offsets from 0 to len(prefix_hashes) = {hashes.size}")

    @property
    def has_prefix(self) -> bool:
        """True when the trace carries prefix-block hashes (Mooncake ``hash_ids``)."""
        return self.prefix_offsets is not None

    def prefix_blocks(self, i: int) -> HashArray:
        """Request ``i``'s prefix-block hashes (empty when the trace has none)."""
        if self.prefix_offsets is None or self.prefix_hashes is None:
            return np.empty(0, dtype=np.uint64)
        return self.prefix_hashes[self.prefix_offsets[i]:self.prefix_offsets[i + 1]]

    def _prefix_rows(self, rows: IntArray, salt: HashArray | None = None) -> dict[str, object]:
        """The prefix CSR pair of requests ``rows`` (in that order), as Trace kwargs;
        ``salt`` (one per row, 0 = none) is XORed into that row's hashes."""
        if self.prefix_offsets is None or self.prefix_hashes is None:
            return {}
        off, hashes = take_blocks(self.prefix_offsets, self.prefix_hashes, rows)
        if salt is not None:
            hashes = hashes ^ np.repeat(salt.astype(np.uint64), np.diff(off))
        return {"prefix_offsets": off, "prefix_hashes": hashes,
                "prefix_block_tokens": self.prefix_block_tokens}

    # ---- size and time -------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival (0.0 for fewer than two requests)."""
        if self.arrival_s.size < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def is_empty(self) -> bool:
        """True when the trace holds no requests."""
        return self.arrival_s.size == 0

    def request(self, i: int) -> Request:
        """Request ``i`` (0-based, in arrival order) as a small object."""
        return Request(
            index=i,
            arrival_s=float(self.arrival_s[i]),
            input_tokens=int(self.input_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
        )

    # ---- derived traces ------------------------------------------------------------

    def _derive(
        self,
        arrival_s: FloatArray,
        input_tokens: IntArray,
        output_tokens: IntArray,
        source: str,
        start_epoch_s: float | None,
        rows: IntArray | None = None,
        salt: HashArray | None = None,
    ) -> Trace:
        """A new trace; ``rows`` (indices into this one) carries the prefix hashes along."""
        extra = self._prefix_rows(rows, salt) if rows is not None else {}
        return Trace(
            arrival_s=arrival_s,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            source=source,
            start_epoch_s=start_epoch_s,
            **extra,  # type: ignore[arg-type]
        )

    def slice(self, t0: float, t1: float) -> Trace:
        """Requests with ``t0 <= arrival_s < t1`` (seconds), re-based so ``t0`` becomes 0.

        Re-basing on the window start (not on the first request inside it) keeps
        a quiet start of the window visible to rate calculations.
        """
        if not t1 > t0:
            raise TokenfleetError(f"slice: need t1 > t0, got t0={t0}, t1={t1}")
        lo, hi = np.searchsorted(self.arrival_s, [t0, t1], side="left")
        epoch = None if self.start_epoch_s is None else self.start_epoch_s + t0
        return self._derive(
            self.arrival_s[lo:hi] - t0,
            self.input_tokens[lo:hi],
            self.output_tokens[lo:hi],
            f"{self.source}[{t0:g}s:{t1:g}s]",
            epoch,
            np.arange(lo, hi, dtype=np.int64),
        )

    def scale_rate(self, factor: float, *, mode: GrowthMode = "resample", seed: int = 0) -> Trace:
        """Multiply the request rate by ``factor`` (> 0), e.g. 1.5 for 50 % traffic growth.

        * ``"resample"`` (default) keeps the time axis: each request is kept
          ``floor(factor)`` times plus once more with probability
          ``factor - floor(factor)`` (so factor < 1 thins the trace). Extra copies
          are placed uniformly at random between the original and the next
          arrival, so the rate profile (bursts, time of day) is preserved at the
          resolution of the original gaps and no two copies coincide exactly.
          Deterministic for a given ``seed``. Prefix hashes: copy ``c`` of every
          request gets its own hash namespace (the same for all turns of a
          conversation), so scaling up adds users, not repeats of the same prompts;
          the prefix reuse per request stays the trace's.
        * ``"compress"`` divides every arrival time by ``factor``: same requests,
          same order, ``factor`` x the rate over ``1/factor`` of the duration.
          Exact, but squeezes the time-of-day shape too.
        """
        if not (np.isfinite(factor) and factor > 0):
            raise TokenfleetError(f"growth factor must be a positive number, got {factor}")
        src = f"{self.source}x{factor:g}"
        n0 = len(self)
        if mode == "compress":
            epoch = self.start_epoch_s
            return self._derive(
                self.arrival_s / factor, self.input_tokens, self.output_tokens, src, epoch,
                np.arange(n0, dtype=np.int64),
            )
        if mode != "resample":
            raise TokenfleetError(f"unknown growth mode '{mode}'; allowed: resample, compress")
        n = len(self)
        if n == 0:
            return self._derive(
                self.arrival_s, self.input_tokens, self.output_tokens, src, self.start_epoch_s,
                np.arange(0, dtype=np.int64),
            )
        rng = np.random.default_rng(seed)
        whole = int(np.floor(factor))
        copies = np.full(n, whole, dtype=np.int64) + (rng.random(n) < factor - whole)
        idx = np.repeat(np.arange(n), copies)
        # First copy of each request sits at the original time; later copies are
        # jittered into the gap to the next arrival (the median gap for the last).
        gaps = np.diff(self.arrival_s, append=np.nan)
        fill = float(np.median(gaps[:-1])) if n > 1 else 0.0
        gaps[-1] = fill
        starts = np.cumsum(copies) - copies  # position in idx of each request's first copy
        first = np.zeros(idx.size, dtype=bool)
        first[starts[copies > 0]] = True
        jitter = np.where(first, 0.0, rng.random(idx.size) * gaps[idx])
        arrival = self.arrival_s[idx] + jitter
        order = np.argsort(arrival, kind="stable")
        # Copy c of every request is another user's: its prefix hashes move to their own
        # namespace (XOR with a salt of c), so copies reuse each other's turns only
        # within the same copy number, as the original conversations do.
        copy_no = (np.arange(idx.size, dtype=np.int64) - np.repeat(starts, copies)).astype(
            np.uint64)
        salt = copy_no * np.uint64(_COPY_SALT)
        return self._derive(
            arrival[order],
            self.input_tokens[idx][order],
            self.output_tokens[idx][order],
            src,
            self.start_epoch_s,
            idx[order],
            salt[order],
        )

    # ---- interop -------------------------------------------------------------------

    def to_polars(self) -> pl.DataFrame:
        """Columns ``arrival_s`` (s), ``input_tokens``, ``output_tokens`` (tokens)."""
        return pl.DataFrame(
            {
                "arrival_s": self.arrival_s,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
            }
        )

    @classmethod
    def from_polars(cls, df: pl.DataFrame, source: str = "<polars>") -> Trace:
        """Inverse of :meth:`to_polars` (rows must already be sorted by ``arrival_s``)."""
        missing = [c for c in ("arrival_s", "input_tokens", "output_tokens") if c not in df.columns]
        if missing:
            raise TokenfleetError(
                f"{source}: missing column(s) {missing}; columns found: {df.columns}"
            )
        return cls(
            arrival_s=df["arrival_s"].to_numpy(),
            input_tokens=df["input_tokens"].to_numpy(),
            output_tokens=df["output_tokens"].to_numpy(),
            source=source,
        )

    def __repr__(self) -> str:
        return (
            f"Trace(source={self.source!r}, requests={len(self)}, duration_s={self.duration_s:.1f})"
        )


def take_blocks(offsets: IntArray, hashes: HashArray, rows: IntArray
                ) -> tuple[IntArray, HashArray]:
    """The CSR runs of ``rows`` (in that order) of an (offsets, hashes) pair."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = offsets[1:][rows] - offsets[:-1][rows]
    new_off = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    # Every chosen request's run: the start of its run + the position within it.
    within = np.arange(int(new_off[-1]), dtype=np.int64) - np.repeat(new_off[:-1], lengths)
    take = np.repeat(offsets[:-1][rows], lengths) + within
    return new_off, hashes[take]


def empty_trace(source: str = "<empty>") -> Trace:
    """A trace with no requests (useful as a neutral element)."""
    return Trace(
        arrival_s=np.empty(0, dtype=np.float64),
        input_tokens=np.empty(0, dtype=np.int64),
        output_tokens=np.empty(0, dtype=np.int64),
        source=source,
    )
