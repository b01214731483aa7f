"""Requests the simulator replays: a trace (or generated traffic) labelled with the tier
and size bucket that decide where the plan routes each request.

A plan splits traffic per (tier, size bucket). A trace has no tier column, so requests
are given tiers in proportion to the tiers' planned peak rates (seeded), or all to one
tier (``tier=``). Buckets come from the plan's bucket edges, read by
:func:`tokenfleet.routing.buckets.plan_buckets` (the gateway's reader too).

Units: seconds, tokens, requests/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.routing.buckets import plan_buckets
from tokenfleet.sim.shocks import Surge
from tokenfleet.workload.trace import Trace, take_blocks

ANY_BUCKET = "*"  # routing key of a tier's requests whose bucket the plan does not split

@dataclass(frozen=True)
class RouteKey:
    """Requests routed alike: one tier, one size bucket."""

    tier: str
    bucket: str


@dataclass(eq=False)
class Workload:
    """Requests as columns, sorted by arrival: ``arrival_s`` (s), ``input_tokens`` and
    ``output_tokens`` (tokens; output at least 1 — an engine always emits one token),
    ``key`` (index into ``keys``)."""

    arrival_s: npt.NDArray[np.float64]
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    key: npt.NDArray[np.int32]
    keys: list[RouteKey]
    source: str
    # Prefix-block hashes, for traces that carry them (Mooncake): request i's blocks are
    # prefix_hashes[prefix_offsets[r]:prefix_offsets[r + 1]] with r = prefix_row[i]
    # (-1: none). Rows index a CSR table shared by every copy of a request.
    prefix_row: npt.NDArray[np.int64] | None = None
    prefix_offsets: npt.NDArray[np.int64] | None = None
    prefix_hashes: npt.NDArray[np.uint64] | None = None
    prefix_block_tokens: int = 512

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def has_prefix(self) -> bool:
        return self.prefix_row is not None

    def prefix_of(self, index: np.ndarray) -> dict:
        """The prefix fields of requests ``index`` (a mask or indices), as keyword args."""
        if self.prefix_row is None:
            return {}
        return {"prefix_row": self.prefix_row[index], "prefix_offsets": self.prefix_offsets,
                "prefix_hashes": self.prefix_hashes,
                "prefix_block_tokens": self.prefix_block_tokens}

    def subset(self, mask: np.ndarray, source: str | None = None) -> Workload:
        return Workload(self.arrival_s[mask], self.input_tokens[mask],
                        self.output_tokens[mask], self.key[mask], self.keys,
                        source or self.source, **self.prefix_of(mask))

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


def tier_weights(plan: Plan) -> dict[str, float]:
    """Planned peak requests/s per tier (from the split; the tier summary if no split)."""
    w: dict[str, float] = {t.name: 0.0 for t in plan.tiers}
    for s in plan.traffic_split:
        w[s.tier] = w.get(s.tier, 0.0) + s.peak_requests_per_s
    for t in plan.tiers:
        if w[t.name] <= 0:
            w[t.name] = t.peak_requests_per_s
    return w


def label_trace(plan: Plan, trace: Trace, tier: str | None = None, seed: int = 0) -> Workload:
    """Give every request of ``trace`` a tier and a size bucket of ``plan``."""
    if trace.is_empty:
        raise TokenfleetError(f"trace {trace.source} is empty: there is nothing to simulate")
    tiers = [t.name for t in plan.tiers]
    if not tiers:
        raise TokenfleetError("the plan has no tiers")
    n = len(trace)
    if tier is not None:
        if tier not in tiers:
            raise TokenfleetError(f"--tier '{tier}' is not a tier of the plan; tiers: "
                                  f"{', '.join(tiers)}")
        tier_idx = np.full(n, tiers.index(tier), dtype=np.int64)
    elif len(tiers) == 1:
        tier_idx = np.zeros(n, dtype=np.int64)
    else:
        w = tier_weights(plan)
        p = np.array([w[t] for t in tiers], dtype=float)
        if not p.sum() > 0:
            raise TokenfleetError("the plan gives no tier a peak rate; pick one with --tier")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7133]))
        tier_idx = rng.choice(len(tiers), size=n, p=p / p.sum())
    inp = trace.input_tokens
    out = np.maximum(trace.output_tokens, 1)
    pb = plan_buckets(plan)
    keys: list[RouteKey] = []
    key = np.empty(n, dtype=np.int32)
    for ti, t in enumerate(tiers):
        rows = np.flatnonzero(tier_idx == ti)
        if rows.size == 0:
            continue
        labels = [s.bucket for s in plan.traffic_split if s.tier == t]
        if not labels:
            keys.append(RouteKey(t, ANY_BUCKET))
            key[rows] = len(keys) - 1
            continue
        got = pb.labels_of(inp[rows], out[rows], tier=t)
        for lab in dict.fromkeys(got.tolist()):
            keys.append(RouteKey(t, lab if lab in labels else ANY_BUCKET))
            key[rows[got == lab]] = len(keys) - 1
    keys, key = _dedupe(keys, key)
    prefix: dict = {}
    if trace.prefix_offsets is not None:
        prefix = {"prefix_row": np.arange(n, dtype=np.int64),
                  "prefix_offsets": trace.prefix_offsets, "prefix_hashes": trace.prefix_hashes,
                  "prefix_block_tokens": trace.prefix_block_tokens}
    return Workload(trace.arrival_s.copy(), inp.copy(), out, key, keys, trace.source, **prefix)


def _dedupe(keys: list[RouteKey], key: np.ndarray) -> tuple[list[RouteKey], np.ndarray]:
    uniq = list(dict.fromkeys(keys))
    remap = np.array([uniq.index(k) for k in keys], dtype=np.int32)
    return uniq, remap[key] if key.size else key


def planned_traffic(plan: Plan, duration_s: float, rate_per_s: float | None = None,
                    seed: int = 0) -> Workload:
    """Poisson traffic shaped like the plan's peak: every (tier, bucket) of the split
    at its ``peak_requests_per_s`` with its representative lengths, all scaled so the
    total is ``rate_per_s`` when given."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise TokenfleetError(f"--duration must be > 0 seconds, got {duration_s}")
    splits = [s for s in plan.traffic_split if s.peak_requests_per_s > 0]
    if not splits:
        raise TokenfleetError("the plan's traffic_split has no peak rates to generate "
                              "traffic from; give a --trace")
    total = sum(s.peak_requests_per_s for s in splits)
    scale = 1.0 if rate_per_s is None else rate_per_s / total
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise TokenfleetError(f"--rate must be > 0 requests/s, got {rate_per_s}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E11]))
    parts = []
    keys = []
    for k, s in enumerate(splits):
        rate = s.peak_requests_per_s * scale
        n = rng.poisson(rate * duration_s)
        t = np.sort(rng.random(n) * duration_s)
        parts.append((t, s.input_len, max(s.output_len, 1), k))
        keys.append(RouteKey(s.tier, s.bucket))
    arrival = np.concatenate([p[0] for p in parts])
    order = np.argsort(arrival, kind="stable")
    inp = np.concatenate([np.full(p[0].size, p[1], dtype=np.int64) for p in parts])
    out = np.concatenate([np.full(p[0].size, p[2], dtype=np.int64) for p in parts])
    key = np.concatenate([np.full(p[0].size, p[3], dtype=np.int32) for p in parts])
    if arrival.size == 0:
        raise TokenfleetError(f"no requests at {total * scale:g} req/s over {duration_s:g} s")
    keys, key = _dedupe(keys, key)
    return Workload(arrival[order], inp[order], out[order], key[order], keys,
                    f"poisson {total * scale:g} req/s x {duration_s:g} s")


def apply_surges(w: Workload, surges: list[Surge], seed: int = 0) -> Workload:
    """Multiply the arrivals inside each surge window by its factor.

    Like ``Trace.scale_rate(mode="resample")``: each request in the window is kept
    ``floor(f)`` times plus once more with probability ``f - floor(f)``; extra copies
    land uniformly between the original and the next arrival, so bursts keep their shape.
    """
    for j, s in enumerate(surges):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A6E, j]))
        end = math.inf if s.end is None else s.end
        inside = (w.arrival_s >= s.start) & (w.arrival_s < end)
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            continue
        whole = int(math.floor(s.factor))
        copies = np.ones(len(w), dtype=np.int64)
        copies[idx] = whole + (rng.random(idx.size) < s.factor - whole)
        rep = np.repeat(np.arange(len(w)), copies)
        gaps = np.diff(w.arrival_s, append=np.nan)
        gaps[-1] = float(np.median(gaps[:-1])) if len(w) > 1 else 0.0
        first = np.zeros(rep.size, dtype=bool)
        starts = np.cumsum(copies) - copies
        first[starts[copies > 0]] = True
        jitter = np.where(first, 0.0, rng.random(rep.size) * gaps[rep])
        arrival = w.arrival_s[rep] + jitter
        order = np.argsort(arrival, kind="stable")
        w = Workload(arrival[order], w.input_tokens[rep][order], w.output_tokens[rep][order],
                     w.key[rep][order], w.keys, f"{w.source} + surge {s.text}",
                     **_copied_prefix(w, rep, np.arange(rep.size) - starts[rep], order, j))
    return w


def _copied_prefix(w: Workload, rep: np.ndarray, copy_no: np.ndarray, order: np.ndarray,
                   surge: int) -> dict:
    """Prefix fields of a surge's requests: copy 0 keeps its row; a further copy gets a
    new row whose hashes sit in a namespace of their own (as ``Trace.scale_rate`` does),
    so a surge adds users rather than repeats of the same prompts."""
    if w.prefix_row is None or w.prefix_offsets is None or w.prefix_hashes is None:
        return {}
    rows = w.prefix_row[rep]
    extra = np.flatnonzero((copy_no > 0) & (rows >= 0))
    if extra.size == 0:
        return w.prefix_of(rep[order])
    off, hashes = take_blocks(w.prefix_offsets, w.prefix_hashes, rows[extra])
    salt = (copy_no[extra].astype(np.uint64) + np.uint64(surge << 20)) * np.uint64(_SURGE_SALT)
    hashes = hashes ^ np.repeat(salt, np.diff(off))
    base = w.prefix_offsets.size - 1
    rows = rows.copy()
    rows[extra] = base + np.arange(extra.size)
    return {"prefix_row": rows[order],
            "prefix_offsets": np.concatenate([w.prefix_offsets, off[1:] + w.prefix_offsets[-1]]),
            "prefix_hashes": np.concatenate([w.prefix_hashes, hashes]),
            "prefix_block_tokens": w.prefix_block_tokens}


# Odd 64-bit constant spreading (surge, copy) numbers over the hash space.
_SURGE_SALT = 0xD1B54A32D192ED03


def scale_traffic(w: Workload, factor: float, seed: int = 0) -> Workload:
    """Traffic growth: every arrival multiplied by ``factor`` (a whole-run surge)."""
    if not (math.isfinite(factor) and factor > 0):
        raise TokenfleetError(f"growth factor must be > 0, got {factor}")
    if factor == 1.0:
        return w
    return apply_surges(w, [Surge(factor, 0.0, None, f"{factor:g}x")], seed)


def merge_workloads(parts: list[Workload], source: str) -> Workload:
    """One workload from several (e.g. one per tier), sorted by arrival."""
    keys: list[RouteKey] = []
    arrays = []
    for w in parts:
        remap = np.array([len(keys) + i for i in range(len(w.keys))], dtype=np.int32)
        keys.extend(w.keys)
        arrays.append((w.arrival_s, w.input_tokens, w.output_tokens,
                       remap[w.key] if len(w) else w.key))
    arrival = np.concatenate([a[0] for a in arrays])
    order = np.argsort(arrival, kind="stable")
    key = np.concatenate([a[3] for a in arrays])
    keys, key = _dedupe(keys, key)
    return Workload(arrival[order], np.concatenate([a[1] for a in arrays])[order],
                    np.concatenate([a[2] for a in arrays])[order], key[order], keys, source,
                    **_merged_prefix(parts, order))


def _merged_prefix(parts: list[Workload], order: np.ndarray) -> dict:
    """The parts' prefix tables stacked into one (rows shifted), in merged order."""
    if not any(w.has_prefix for w in parts):
        return {}
    sizes = {w.prefix_block_tokens for w in parts if w.has_prefix}
    if len(sizes) > 1:
        raise TokenfleetError(f"traces with different prefix block sizes {sorted(sizes)} "
                              "cannot be simulated together")
    rows, offs, hashes = [], [np.zeros(1, np.int64)], []
    n_rows = n_hashes = 0
    for w in parts:
        if w.prefix_row is None or w.prefix_offsets is None or w.prefix_hashes is None:
            rows.append(np.full(len(w), -1, np.int64))
            continue
        rows.append(np.where(w.prefix_row >= 0, w.prefix_row + n_rows, -1))
        offs.append(w.prefix_offsets[1:] + n_hashes)
        hashes.append(w.prefix_hashes)
        n_rows += w.prefix_offsets.size - 1
        n_hashes += w.prefix_hashes.size
    return {"prefix_row": np.concatenate(rows)[order], "prefix_offsets": np.concatenate(offs),
            "prefix_hashes": np.concatenate(hashes), "prefix_block_tokens": sizes.pop()}


def tier_traces(plan: Plan, traces: dict[str, Trace], growth: float = 1.0,
                seed: int = 0) -> Workload:
    """One trace per tier (``{tier: trace}``), each labelled with its tier's buckets."""
    parts = []
    for tier, trace in traces.items():
        w = label_trace(plan, trace, tier=tier, seed=seed)
        parts.append(scale_traffic(w, growth, seed))
    return merge_workloads(parts, " + ".join(f"{t}={tr.source}" for t, tr in traces.items()))


def scenario_traffic(plan: Plan, scenario_path: str, duration_s: float | None = None,
                     seed: int = 0, overrides: list[str] | None = None) -> Workload:
    """The traffic a planner scenario describes, tier by tier: its real trace scaled by
    ``scale * growth`` (the planner's definition), or Poisson arrivals at ``rate_per_s *
    growth`` with the length mix for ``duration_s`` (default: the longest trace, else
    600 s)."""
    from pathlib import Path

    from tokenfleet.plan.scenario import load_scenario
    from tokenfleet.workload.readers import read_trace

    sc, base = load_scenario(scenario_path, overrides or [])
    plan_tiers = {t.name for t in plan.tiers}
    traces: dict[str, Trace] = {}
    mixes = []
    for t in sc.tiers:
        if t.name not in plan_tiers:
            raise TokenfleetError(f"scenario tier '{t.name}' is not in the plan (tiers: "
                                  f"{', '.join(sorted(plan_tiers))}); plan it first")
        tr = t.traffic
        if tr.trace:
            p = Path(tr.trace)
            trace = read_trace(p if p.is_absolute() else base / p, format=tr.format)
            traces[t.name] = trace.scale_rate(tr.scale * tr.growth, seed=seed)
        else:
            mixes.append(t)
    parts = [label_trace(plan, trace, tier=name, seed=seed) for name, trace in traces.items()]
    span = duration_s or max((tr.duration_s for tr in traces.values()), default=600.0)
    for j, t in enumerate(mixes):
        assert t.traffic.rate_per_s is not None and t.traffic.mix
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x3C1A, j]))
        rate = t.traffic.rate_per_s * t.traffic.growth
        n = int(rng.poisson(rate * span))
        shares = np.array([m.share for m in t.traffic.mix])
        pick = rng.choice(len(shares), size=n, p=shares / shares.sum())
        inp = np.array([m.input_len for m in t.traffic.mix], dtype=np.int64)[pick]
        out = np.array([m.output_len for m in t.traffic.mix], dtype=np.int64)[pick]
        if n == 0:
            continue
        arrival = np.sort(rng.random(n) * span)
        parts.append(label_trace(plan, Trace(arrival, inp, out, source=f"{t.name} mix"),
                                 tier=t.name, seed=seed))
    if not parts:
        raise TokenfleetError(f"{scenario_path}: no tier traffic to simulate")
    return merge_workloads(parts, f"scenario {sc.name}")
