"""Fit residual efficiency factors to published measurements, and measure how well the
model predicts what it has not seen — all through :func:`tokenfleet.perf.estimate.estimate`,
the function users call.

The physics (``tokenfleet.perf.unit``) carries near-universal efficiencies from public
kernel benchmarks (:class:`Efficiency` defaults). Per *group* = (chip family, serving
engine), three bounded residual factors are fitted in log space, pulled towards 1
(ridge): one on math (GEMM, attention), one on memory (weights, KV), one on the host
overhead per step (and launch gaps), one on the MoE path (grouped GEMM and all-to-all),
one on attention relative to the GEMMs (flash-attention maturity differs by platform);
a residual the group's rows do not inform stays at 0. No fitted fraction exceeds 0.95
of a peak.

A chip whose family has no measurement borrows the residuals of its **nearest measured
peer** (architecture class, vendor, HBM bandwidth, FP8 peak, scale-up size), with a band
widened by the spread of its nearest peers — never the prior, which would let a chip
nobody measured beat the chips everyone measured.

Held-out errors (absolute percentage errors |pred / measured - 1|), both with the
layout picked by the tool as a user would ask:

* leave-one-source-out: refit without every row of one source, predict those rows;
* leave-one-family-out: drop every group of a chip family, predict its rows through
  peer borrowing — the error to expect for a chip family nobody measured.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.catalog.schema import Accelerator
from tokenfleet.fileio import write_text
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.measurements import (
    ASSUMPTIONS,
    DATA_FILES,
    Point,
    data_path,
    load_points,
)
from tokenfleet.perf.unit import Efficiency, chip_class

if TYPE_CHECKING:
    from tokenfleet.perf.estimate import Query

FIT_FILE = "efficiency.json"
PRIOR = Efficiency()
RIDGE = 0.5  # pull of each log residual towards 0 (the prior), per parameter
MISS = 2.0  # residual (log units) when the model says a measured setup does not fit
# Bounds of the log residuals: math/memory may fall to 1/4 of the prior (software that
# reaches a quarter of peak) and rise only to the 0.95 cap; the host overhead 1/5-5x.
# Order: math, memory, host (step overhead and launch gaps: 0.2-20x, as eager-mode or
# young stacks pay per-kernel costs), MoE path, attention (relative to math).
LOW = (math.log(0.25), math.log(0.35), math.log(0.2), math.log(0.25), math.log(0.25))
HIGH = (math.log(0.95 / PRIOR.gemm), math.log(0.95 / PRIOR.bandwidth), math.log(20.0),
        math.log(0.95 / PRIOR.moe), math.log(1.5))
PEERS = 3  # nearest measured groups whose spread widens a borrowed band
CONSERVATIVE_PEER = True


def group_key(family: str, engine: str) -> str:
    return f"{family}/{engine}"


def efficiency_of(residual: Sequence[float] | np.ndarray, prior: Efficiency = PRIOR) -> Efficiency:
    """Priors times the residual factors (math, memory, host, MoE path, attention)."""
    r = list(residual) + [0.0] * (5 - len(residual))
    return prior.scaled(math.exp(r[0]), math.exp(r[1]), math.exp(r[2]), math.exp(r[3]),
                        math.exp(r[4]))


@dataclass(frozen=True)
class ChipSpec:
    """What peer matching compares (kept in the fit file, so no catalog is needed)."""

    id: str
    chip_class: str
    vendor: str
    hbm_tbps: float
    peak_tflops: float  # FP8 dense, else 2x BF16
    scaleup_domain: int

    @classmethod
    def of(cls, a: Accelerator) -> ChipSpec:
        peak = a.fp8_tflops or 2 * (a.bf16_tflops or 0.0) or 1.0
        return cls(a.id, chip_class(a), a.vendor, a.hbm_tbps, peak, a.scaleup_domain)

    def distance(self, o: ChipSpec) -> float:
        """How unlike two chips are: class and vendor differences, then log-ratios of
        bandwidth, peak and scale-up size (the things that set serving speed)."""
        return ((self.chip_class != o.chip_class) * 1.0 + (self.vendor != o.vendor) * 0.5
                + abs(math.log(self.hbm_tbps / o.hbm_tbps))
                + abs(math.log(self.peak_tflops / o.peak_tflops))
                + 0.25 * abs(math.log(self.scaleup_domain / o.scaleup_domain)))


@dataclass
class GroupFit:
    residual: list[float]  # log factors on math, memory, host overhead, MoE path, attention
    n_points: int
    accelerators: list[str]
    models: list[str]
    precisions: list[str]
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    params_b: tuple[float, float]  # total parameters of measured models, 1e9
    sources: list[str] = field(default_factory=list)
    chips: list[ChipSpec] = field(default_factory=list)
    held_out: dict[str, float] = field(default_factory=dict)  # LOSO throughput APE
    in_sample: dict[str, float] = field(default_factory=dict)  # throughput APE, user path
    in_sample_stated: dict[str, float] = field(default_factory=dict)  # ... stated layout

    @property
    def efficiency(self) -> Efficiency:
        return efficiency_of(self.residual)


@dataclass(frozen=True)
class Basis:
    """What one chip's numbers rest on."""

    efficiency: Efficiency
    group: str | None  # the group whose residuals are used
    peer: str | None  # the measured chip borrowed from (None: the chip's own family)
    spread: float  # extra band from the spread of nearest peers (0 for measured)
    text: str
    scale: float = 1.0  # speed factor applied to the peer's residuals (conservative < 1)


@dataclass
class Calibration:
    """Fitted residuals with the evidence about them. Load with :func:`load_fit`."""

    groups: dict[str, GroupFit]
    cross_family: dict[str, float]  # leave-one-family-out APE on throughput
    meta: dict[str, Any]
    fixed: Efficiency | None = None  # every chip gets this (a trial fit)
    prior: Efficiency = PRIOR

    @property
    def families(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k in self.groups:
            out.setdefault(k.split("/")[0], []).append(k)
        return out

    @classmethod
    def of_efficiency(cls, eff: Efficiency) -> Calibration:
        """A calibration that gives every chip ``eff`` (for fitting and tests)."""
        return cls({}, {}, {"note": "fixed efficiency"}, fixed=eff)

    def _own_group(self, family: str, engine: str | None) -> str | None:
        if engine and group_key(family, engine) in self.groups:
            return group_key(family, engine)
        keys = self.families.get(family, [])
        return max(keys, key=lambda k: self.groups[k].n_points) if keys else None

    def basis(self, accel: Accelerator, engine: str | None) -> Basis:
        """Efficiencies for a chip and engine: its family's group (the engine's, else
        the family's best measured); else its nearest measured peer's."""
        if self.fixed is not None:
            return Basis(self.fixed, None, None, 0.0, "fixed efficiencies")
        own = self._own_group(accel.family, engine)
        if own is not None:
            g = self.groups[own]
            return Basis(g.efficiency, own, None, 0.0,
                         f"{g.n_points} measurements of {own} ({', '.join(g.accelerators)}; "
                         f"{len(g.sources)} source(s))")
        me = ChipSpec.of(accel)
        ranked = sorted(((me.distance(c), c.id, k) for k, g in self.groups.items()
                         for c in g.chips), key=lambda t: (t[0], t[1]))
        if not ranked:
            return Basis(self.prior, None, None, 0.0, "no calibration: physical priors")
        # Prefer the peer's group for the asked engine when that engine was measured.
        _, peer, key = ranked[0]
        if engine:
            same = [r for r in ranked if r[2].endswith("/" + engine)]
            if same and same[0][0] <= ranked[0][0] + 0.25:
                _, peer, key = same[0]
        near: list[str] = []
        for _, _, k in ranked:
            if k not in near:
                near.append(k)
            if len(near) == PEERS:
                break
        speed = [_speed(self.groups[k].residual) for k in near]
        spread = max(speed) / min(speed) - 1.0
        g = self.groups[key]
        residual = list(g.residual)
        slow = min(speed)
        if CONSERVATIVE_PEER and slow < _speed(residual):
            # Never faster than the slowest of the nearest measured groups: the nearest
            # peer's residuals (their balance of math and memory) scaled down to it.
            shift = math.log(slow / _speed(residual))
            residual[0] += shift
            residual[1] += shift
        eff = efficiency_of(residual)
        scale = _speed(residual) / _speed(g.residual)
        return Basis(eff, key, peer, spread,
                     f"no measurement of the {accel.family} family: borrows {key}'s "
                     f"efficiencies via its nearest measured peer {peer} "
                     f"({g.n_points} measurements), scaled to the slowest of the "
                     f"{len(near)} nearest measured groups ({', '.join(near)}); band "
                     f"widened by their {spread:.0%} spread", scale)

    def efficiency(self, family_or_accel: str | Accelerator, engine: str | None
                   ) -> tuple[Efficiency, str | None]:
        """Efficiency and the group it came from (an Accelerator also finds peers)."""
        if isinstance(family_or_accel, str):
            if self.fixed is not None:
                return self.fixed, None
            own = self._own_group(family_or_accel, engine)
            return (self.groups[own].efficiency, own) if own else (self.prior, None)
        b = self.basis(family_or_accel, engine)
        return b.efficiency, b.group

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "prior": asdict(self.prior),
            "cross_family": self.cross_family,
            "groups": {k: {**asdict(g)} for k, g in self.groups.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        groups = {}
        for k, g in d["groups"].items():
            g = dict(g)
            for t in ("input_len", "output_len", "params_b"):
                g[t] = tuple(g[t])
            g["chips"] = [ChipSpec(**c) for c in g.get("chips", [])]
            groups[k] = GroupFit(**g)
        return cls(groups, d.get("cross_family", {}), d.get("meta", {}),
                   prior=Efficiency(**d["prior"]) if "prior" in d else PRIOR)


def _speed(residual: Sequence[float]) -> float:
    """A scalar 'how fast' of a residual: geometric mean of the math and memory factors."""
    return math.exp((residual[0] + residual[1]) / 2)


def ape(pred: float, meas: float) -> float:
    if not (pred > 0 and math.isfinite(pred)):
        return float("inf")
    return abs(pred / meas - 1.0)


def summary(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray(list(errors), dtype=float)
    if not len(e):
        return {}
    return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "n": len(e)}


# ---- the one prediction path --------------------------------------------------------

_QUERIES: dict[tuple[str, bool], Query] = {}


def query_of(p: Point, stated_layout: bool = True) -> Query:
    """The estimate query that asks for a measured point (cached per row)."""
    from tokenfleet.perf.estimate import Query

    key = (p.key, stated_layout)
    if key not in _QUERIES:
        _QUERIES[key] = Query(**p.query_fields(stated_layout))
    return _QUERIES[key]


def predict(p: Point, cal: Calibration, catalog: Catalog, stated_layout: bool = True
            ) -> float:
    """What ``estimate`` says for a measured point (tokens/s or seconds); NaN when the
    model says the measured setup cannot run."""
    from tokenfleet.perf.estimate import estimate

    e = estimate(query_of(p, stated_layout), catalog, cal)
    if not e.fits or e.output_tokens_per_s is None:
        return float("nan")
    assert e.ttft_s is not None and e.tpot_s is not None
    if p.metric == "throughput":
        return e.output_tokens_per_s
    if p.metric == "ttft":
        return e.ttft_s
    if p.metric == "tpot":
        return e.tpot_s
    return e.ttft_s + max(p.output_len - 1, 0) * e.tpot_s  # e2e latency


def _residuals(points: Sequence[Point], eff: Efficiency, catalog: Catalog) -> np.ndarray:
    cal = Calibration.of_efficiency(eff)
    out = np.empty(len(points))
    for i, p in enumerate(points):
        v = predict(p, cal, catalog)
        out[i] = math.log(v / p.value) if v > 0 and math.isfinite(v) else MISS
    return out


def fit_group(points: Sequence[Point], catalog: Catalog, ridge: float = RIDGE,
              max_nfev: int = 40) -> list[float]:
    """Bounded least squares in log error over the three residuals, pulled to 0."""
    from scipy.optimize import least_squares  # only fitting needs it (slow to import)

    def f(t: np.ndarray) -> np.ndarray:
        return np.concatenate([_residuals(points, efficiency_of(t), catalog), ridge * t])

    res = least_squares(f, np.zeros(5), bounds=(LOW, HIGH), method="trf",
                        diff_step=1e-2, max_nfev=max_nfev)
    return [float(x) for x in res.x]


def _group_fit(key: str, pts: list[Point], catalog: Catalog) -> GroupFit:
    specs = [catalog.model(p.model) for p in pts]
    totals = [arch.param_counts(m).total / 1e9 for m in specs]
    chips = sorted({p.accelerator for p in pts})
    return GroupFit(
        residual=fit_group(pts, catalog), n_points=len(pts), accelerators=chips,
        models=sorted({m.id for m in specs}), precisions=sorted({p.precision for p in pts}),
        input_len=(min(p.input_len for p in pts), max(p.input_len for p in pts)),
        output_len=(min(p.output_len for p in pts), max(p.output_len for p in pts)),
        params_b=(round(min(totals), 2), round(max(totals), 2)),
        sources=sorted({p.source_name for p in pts}),
        chips=[ChipSpec.of(catalog.accelerator(c)) for c in chips])


def group_points(points: Sequence[Point], catalog: Catalog) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(group_key(catalog.accelerator(p.accelerator).family, p.engine),
                       []).append(p)
    return dict(sorted(out.items()))


def fit_all(points: Sequence[Point], catalog: Catalog,
            progress: Callable[[str, int, int], None] | None = None) -> dict[str, GroupFit]:
    by = group_points(points, catalog)
    out = {}
    for j, (k, pts) in enumerate(by.items()):
        out[k] = _group_fit(k, pts, catalog)
        if progress:
            progress(f"fit {k}", j + 1, len(by))
    return out


@dataclass
class Evaluation:
    """Per-row predictions: in-sample (stated layout and user path), leave-one-source-out
    and leave-one-family-out (user path)."""

    rows: list[dict[str, Any]]


def _held_out(points: list[Point], groups: dict[str, GroupFit], catalog: Catalog,
              label: str, split: Callable[[Point], str],
              progress: Callable[[str, int, int], None] | None) -> dict[str, float]:
    """Refit without each part (by ``split``) and predict that part through the user
    path; a group left with no rows is dropped, so its chips borrow from peers."""
    preds: dict[str, float] = {}
    parts = sorted({split(p) for p in points})
    by = group_points(points, catalog)
    for j, part in enumerate(parts):
        held = [p for p in points if split(p) == part]
        trial = dict(groups)
        for k, pts in by.items():
            rest = [p for p in pts if split(p) != part]
            if len(rest) == len(pts):
                continue
            if rest:
                trial[k] = _group_fit(k, rest, catalog)
            else:
                trial.pop(k)
        cal = Calibration(trial, {}, {})
        for p in held:
            preds[p.key] = predict(p, cal, catalog, stated_layout=False)
        if progress:
            progress(label, j + 1, len(parts))
    return preds


def run_fit(
    catalog: Catalog | None = None,
    points: list[Point] | None = None,
    loo: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Calibration, Evaluation]:
    """Fit every group, then measure held-out errors. Deterministic."""
    catalog = catalog or load_catalog()
    if points is None:
        points, _ = load_points(catalog=catalog)
    groups = fit_all(points, catalog, progress)
    cal = Calibration(groups, {}, {})
    rows: list[dict[str, Any]] = []
    for p in points:
        key = group_key(catalog.accelerator(p.accelerator).family, p.engine)
        rows.append({"row": p.key, "group": key, "source": p.source_name, "model": p.model,
                     "accelerator": p.accelerator, "n_accel": p.n_accel,
                     "precision": p.precision, "mode": p.mode, "input_len": p.input_len,
                     "output_len": p.output_len, "concurrency": p.concurrency,
                     "metric": p.metric, "measured": p.value,
                     "fitted": predict(p, cal, catalog),
                     "user": predict(p, cal, catalog, stated_layout=False)})
    for k, g in groups.items():
        mine = [r for r in rows if r["group"] == k and r["metric"] == "throughput"]
        g.in_sample = summary([ape(r["user"], r["measured"]) for r in mine])
        g.in_sample_stated = summary([ape(r["fitted"], r["measured"]) for r in mine])
    cross: list[float] = []
    if loo:
        family = {p.key: catalog.accelerator(p.accelerator).family for p in points}
        loso = _held_out(points, groups, catalog, "leave-one-source-out",
                         lambda p: p.source_name, progress)
        lofo = _held_out(points, groups, catalog, "leave-one-family-out",
                         lambda p: family[p.key], progress)
        for r in rows:
            r["loso"], r["lofo"] = loso[r["row"]], lofo[r["row"]]
        cross = [ape(r["lofo"], r["measured"]) for r in rows if r["metric"] == "throughput"]
        for k, g in groups.items():
            g.held_out = summary([ape(r["loso"], r["measured"]) for r in rows
                                  if r["group"] == k and r["metric"] == "throughput"])
    digest = hashlib.sha256()
    for f in DATA_FILES:
        if data_path(f).exists():
            digest.update(data_path(f).read_bytes())
    meta = {
        "fitted_on": date.today().isoformat(),
        "data_files": [f"tokenfleet/perf/data/{f}" for f in DATA_FILES],
        "data_sha256": digest.hexdigest(),
        "points": len(points),
        "assumptions": ASSUMPTIONS,
        "ridge": RIDGE,
        "residual_bounds": {"low": LOW, "high": HIGH},
        "command": "tokenfleet calibrate --write",
    }
    return Calibration(groups, summary(cross) if cross else {}, meta), Evaluation(rows)


def data_sha256() -> str:
    digest = hashlib.sha256()
    for f in DATA_FILES:
        if data_path(f).exists():
            digest.update(data_path(f).read_bytes())
    return digest.hexdigest()


def fit_path() -> Path:
    return Path(str(resources.files("tokenfleet.perf.data").joinpath(FIT_FILE)))


_CACHE: dict[str, Calibration] = {}


def load_fit(path: Path | None = None) -> Calibration:
    """The shipped fit (``perf/data/efficiency.json``), or the priors alone if absent."""
    p = path or fit_path()
    key = str(p)
    if key not in _CACHE:
        d = json.loads(p.read_text()) if p.exists() else None
        if d and "prior" in d:
            _CACHE[key] = Calibration.from_json(d)
        else:  # absent, or a fit of an older model whose factors mean something else
            _CACHE[key] = Calibration({}, {}, {"note": "no fit shipped"})
    return _CACHE[key]


def write_fit(cal: Calibration, path: Path | None = None) -> Path:
    p = path or fit_path()
    write_text(p, json.dumps(cal.to_json(), indent=2, sort_keys=False) + "\n")
    _CACHE.pop(str(p), None)
    return p
