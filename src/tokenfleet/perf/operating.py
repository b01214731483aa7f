"""Operating points of a unit: offline max throughput, fixed concurrency, or the highest
throughput that meets latency SLOs — with continuous or static batching, over the
layouts engines run. Among layouts within ``SIMPLER_WITHIN`` of the best, the simplest
wins, and every result says which layout it took and why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, TypeVar, cast

import numpy as np

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.perf.precision import Precision
from tokenfleet.perf.unit import Efficiency, Layout, MemoryFit, UnitModel, layouts_for

T = TypeVar("T")
U = TypeVar("U", bound=UnitModel)
MODES = ("offline", "concurrency", "static", "slo")
BATCHING = ("continuous", "static")
# Layouts whose throughput is within this fraction of the best are equivalent; the
# simplest of them is chosen (fewer pipeline stages, no all-to-all, fewer chips per copy).
SIMPLER_WITHIN = 0.02


@dataclass(frozen=True)
class OperatingPoint:
    """Result for one layout (or the chosen one). Times in seconds, rates per second."""

    layout: Layout
    fits: bool
    reason: str
    concurrency: float
    ttft_s: float
    tpot_s: float
    output_tokens_per_s: float
    memory: MemoryFit
    violation: float = 0.0  # failed SLO: worst ratio of predicted to bound at concurrency 1
    why: str = ""  # why this layout was chosen
    batching: str = "continuous"


class UnitCache:
    """Units already built (and the calibration bases they are built with), for a caller
    that evaluates the same units at many request shapes (the planner: one unit per
    bucket of a tier). A unit is a pure function of what it is built from and never of
    the shape, so one built unit serves every shape. Keyed on the model, chip (and
    draft, calibration) objects by identity, which the cache holds so their ids stay
    theirs (the caller must not change them in place while it uses the cache), and on
    every other input by value."""

    def __init__(self) -> None:
        self._built: dict[tuple, tuple[tuple, Any]] = {}

    def get(self, refs: tuple, key: tuple, make: Callable[[], T]) -> T:
        k = (tuple(map(id, refs)), key)
        hit = self._built.get(k)
        if hit is None:
            hit = self._built[k] = (refs, make())
        return cast(T, hit[1])

    def by_layout(self, refs: tuple, key: tuple) -> dict[Layout, UnitModel]:
        """The units built of ``refs`` and ``key`` (every input but the layout), by
        layout: one look-up of the long key per layout search, not one per layout."""
        return self.get(refs, ("by layout", *key), dict)


def unit_getter(units: dict[Layout, UnitModel] | None, make: Callable[[Layout], U]
                ) -> Callable[[Layout], U]:
    """``make``, through ``units`` (a :meth:`UnitCache.by_layout`) when given."""
    if units is None:
        return make

    def get(lo: Layout) -> U:
        u = units.get(lo)
        if u is None:
            u = units[lo] = make(lo)
        return cast(U, u)
    return get


@lru_cache(maxsize=8192)
def _grid(limit: int) -> np.ndarray:
    dense = np.arange(1, min(limit, 64) + 1, dtype=float)
    if limit <= 64:
        return dense
    # above 64 sequences, 2% steps: the SLO boundary is found to within 2% of the rate
    sparse = np.unique(np.round(np.geomspace(64, limit, int(np.log(limit / 64) / 0.02) + 2)))
    return np.unique(np.concatenate([dense, sparse]))


def slo_grid(limit: int) -> np.ndarray:
    """Per-replica concurrencies to try in SLO mode: every value up to 64, then 2% apart,
    always including ``limit`` (read-only array)."""
    return _grid(max(int(limit), 1))


def _fail(layout: Layout, mem: MemoryFit, reason: str, violation: float = float("inf")
          ) -> OperatingPoint:
    return OperatingPoint(layout, False, reason, 0.0, float("nan"), float("nan"), 0.0, mem,
                          violation)


def _run(unit: UnitModel, c: np.ndarray, input_len: int, output_len: int, batching: str
         ) -> dict[str, np.ndarray]:
    if batching == "static":
        return unit.static(c / unit.layout.dp, input_len, output_len)
    return unit.continuous(c, input_len, output_len)


def evaluate_layout(
    unit: UnitModel,
    input_len: int,
    output_len: int,
    mode: str,
    concurrency: int | None = None,
    slo_ttft: float | None = None,
    slo_tpot: float | None = None,
    reserve_full: bool | None = None,
    batching: str | None = None,
) -> OperatingPoint:
    """One layout at the operating point ``mode`` asks for; ``concurrency`` is the
    sequences in the whole unit (static batching: the batch of the whole unit)."""
    lo = unit.layout
    batching = batching or unit.engine.batching
    if mode == "static":  # legacy spelling: a static batch of ``concurrency``
        mode, batching = "concurrency", "static"
    mem = unit.memory(input_len, output_len, reserve_full)
    if not mem.fits:
        return _fail(lo, mem, mem.reason)
    if unit.peak_flops <= 0:
        return _fail(lo, mem, f"{unit.accel.id} has no {unit.precision.compute} peak")
    if mode == "offline":
        c = np.asarray([mem.max_concurrency], dtype=float)
    elif mode == "concurrency":
        c = np.asarray([min(int(concurrency or 1), mem.max_concurrency)], dtype=float)
    elif mode == "slo":
        c = slo_grid(mem.max_concurrency // lo.dp) * lo.dp
    else:
        raise ValueError(f"mode must be one of {MODES}")
    r = _run(unit, c, input_len, output_len, batching)
    if mode == "slo":
        ok = np.ones(len(c), dtype=bool)
        if slo_ttft is not None:
            ok &= r["ttft_s"] <= slo_ttft
        if slo_tpot is not None:
            ok &= r["tpot_s"] <= slo_tpot
        if not ok.any():
            bits = []
            if slo_ttft is not None:
                bits.append(f"TTFT {r['ttft_s'][0]:.3g} s vs SLO {slo_ttft:g} s")
            if slo_tpot is not None:
                bits.append(f"TPOT {r['tpot_s'][0] * 1e3:.3g} ms vs SLO {slo_tpot * 1e3:.3g} ms")
            ratios = [r["ttft_s"][0] / slo_ttft if slo_ttft else 0.0,
                      r["tpot_s"][0] / slo_tpot if slo_tpot else 0.0]
            return _fail(lo, mem, f"misses the SLO even at concurrency {lo.dp} ({lo}): "
                                  + ", ".join(bits), max(ratios))
        tput = np.where(ok, r["output_tokens_per_s"], -1.0)
        i = int(np.argmax(tput))
    else:
        i = 0
    return OperatingPoint(lo, True, "", float(r["concurrency"][i]), float(r["ttft_s"][i]),
                          float(r["tpot_s"][i]), float(r["output_tokens_per_s"][i]), mem,
                          batching=batching)


def choose(points: list[OperatingPoint], considered: int) -> OperatingPoint | None:
    """The simplest layout within SIMPLER_WITHIN of the best throughput, with why."""
    fits = [p for p in points if p.fits]
    if not fits:
        return None
    best = max(fits, key=lambda p: p.output_tokens_per_s)
    near = [p for p in fits if p.output_tokens_per_s >= best.output_tokens_per_s
            * (1 - SIMPLER_WITHIN)]
    pick = min(near, key=lambda p: p.layout.simplicity())
    if pick is best or pick.layout == best.layout:
        why = (f"highest throughput of {considered} layout(s) engines run"
               if considered > 1 else "the only layout asked for or allowed")
    else:
        gap = 1 - pick.output_tokens_per_s / best.output_tokens_per_s
        why = (f"within {gap:.1%} of the fastest ({best.layout}) of {considered} layouts, "
               "and simpler")
    return replace(pick, why=why)


def best_operating_point(
    model: ModelSpec,
    accel: Accelerator,
    precision: Precision,
    kv_precision: str,
    count: int,
    eff: Efficiency,
    input_len: int,
    output_len: int,
    mode: str,
    concurrency: int | None = None,
    slo_ttft: float | None = None,
    slo_tpot: float | None = None,
    layouts: list[Layout] | None = None,
    reserve_full: bool | None = None,
    data_parallel: bool | None = None,
    engine: str | None = None,
    batching: str | None = None,
    unit_of: Callable[[Layout], UnitModel] | None = None,
    units: UnitCache | None = None,
) -> OperatingPoint:
    """The layout engines would run for this operating point (see :func:`choose`).

    ``unit_of`` builds the unit of a layout (default: a plain :class:`UnitModel`; the
    serving techniques pass theirs). ``units``: plain units already built (callers
    that ask many shapes of one unit; ``unit_of`` does its own caching).

    ``layouts`` default: those engines run on this chip (``layouts_for`` with
    ``accel``). A layout with more dp ranks than the unit has sequences
    (``concurrency``) is not considered. ``data_parallel``: whether layouts that are
    copies of a smaller unit (dp > 1 without expert parallelism) count — None: the
    engine's policy (``EngineProfile.replicas``: none by default); True: yes (a system
    of instances behind one load balancer); False: never, for callers that choose
    replica counts themselves. When no layout works, the returned point has
    ``fits=False`` and the reason of the layout that came closest (nearest to the SLO,
    else least memory per chip).
    """
    closest: OperatingPoint | None = None
    candidates = layouts or layouts_for(model, count, accel, engine, data_parallel)
    if not candidates:
        candidates = layouts_for(model, count)
    if data_parallel is False:  # plain replicas are the caller's business (the planner's)
        candidates = [lo for lo in candidates if lo.dp == 1 or lo.ep > 1] or candidates
    if concurrency is not None and mode in ("concurrency", "static"):
        candidates = [lo for lo in candidates if lo.dp <= concurrency] or [
            min(candidates, key=lambda lo: lo.dp)]
    if unit_of is None:
        unit_of = unit_getter(
            None if units is None else units.by_layout(
                (model, accel), ("plain", precision, kv_precision, eff, engine)),
            lambda lo: UnitModel(model, accel, precision, kv_precision, lo, eff, engine))
    points = []
    for lo in candidates:
        unit = unit_of(lo)
        op = evaluate_layout(unit, input_len, output_len, mode, concurrency, slo_ttft, slo_tpot,
                             reserve_full, batching)
        points.append(op)
        if not op.fits and (closest is None or (
            # prefer a reason about the SLO (it fit in memory) over one about memory, and
            # among those the layout that came closest to the SLO
            (op.memory.fits, -op.violation, -op.memory.weights_per_chip)
            > (closest.memory.fits, -closest.violation, -closest.memory.weights_per_chip))):
            closest = op
    best = choose(points, len(candidates))
    if best is not None:
        return best
    assert closest is not None, "there is always at least one layout"
    return closest
