"""Fit efficiency factors to published measurements, and measure how well they predict.

Parameters are fitted per *group* = (chip family, serving engine): achieved fraction of
peak compute, of peak HBM bandwidth, and a fixed overhead per layer per step. A global
fit over all data is the prior every group is pulled towards (ridge in log/logit
space), so a group with few rows cannot run away, and it is what chips with no
measured family use.

Trust in an estimate comes from two held-out errors:

* leave-one-out (LOO): refit the row's group without the row, predict it;
* leave-one-family-out: refit the global prior without the whole family, predict the
  family — the error to expect for a chip whose family has no data (Maia, TPU v7...).

Units: errors are absolute percentage errors, |pred / measured - 1|.
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
from typing import Any

import numpy as np

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.fileio import write_text
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.measurements import (
    ASSUMPTIONS,
    FULL_KV_RESERVATION,
    Point,
    data_path,
    load_points,
)
from tokenfleet.perf.operating import best_operating_point
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.unit import Efficiency, layouts_for

FIT_FILE = "efficiency.json"
PRIOR = Efficiency(compute=0.5, attention=0.3, bandwidth=0.7, kv_bandwidth=0.5, moe=0.5,
                   overhead_us_per_layer=20.0)
RIDGE = 0.3  # weight of the pull towards the prior, per parameter, in log/logit units
MISS = 3.0  # residual (log units) when the model says a measured setup does not fit


def group_key(family: str, engine: str) -> str:
    return f"{family}/{engine}"


def _to_theta(e: Efficiency) -> np.ndarray:
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    return np.array([logit(e.compute), logit(e.attention), logit(e.bandwidth),
                     logit(e.kv_bandwidth), logit(e.moe), math.log(e.overhead_us_per_layer)])


def _from_theta(t: np.ndarray) -> Efficiency:
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return Efficiency(sig(t[0]), sig(t[1]), sig(t[2]), sig(t[3]), sig(t[4]), math.exp(t[5]))


def predict(p: Point, eff: Efficiency, catalog: Catalog) -> float:
    """The model's value for a measured point (tokens/s or seconds); NaN if it cannot run."""
    model = catalog.model(p.model)
    accel = catalog.accelerator(p.accelerator)
    layouts = None
    if p.tp:
        layouts = [lo for lo in layouts_for(model, p.n_accel) if lo.tp == p.tp and lo.pp == 1]
    op = best_operating_point(
        model, accel, get_precision(p.precision), p.kv_precision, p.n_accel, eff,
        p.input_len, p.output_len, p.mode, p.concurrency, p.slo_ttft, p.slo_tpot,
        layouts=layouts or None, reserve_full=p.engine in FULL_KV_RESERVATION,
    )
    if not op.fits:
        return float("nan")
    return {"throughput": op.output_tokens_per_s, "ttft": op.ttft_s, "tpot": op.tpot_s}[p.metric]


def _residuals(points: Sequence[Point], eff: Efficiency, catalog: Catalog) -> np.ndarray:
    out = np.empty(len(points))
    for i, p in enumerate(points):
        v = predict(p, eff, catalog)
        out[i] = math.log(v / p.value) if v > 0 and math.isfinite(v) else MISS
    return out


def fit_group(points: Sequence[Point], prior: Efficiency, catalog: Catalog,
              ridge: float = RIDGE, start: Efficiency | None = None,
              max_nfev: int = 200) -> Efficiency:
    """Least squares in log error, pulled towards ``prior`` (started at ``start``)."""
    from scipy.optimize import least_squares  # only fitting needs it (slow to import)

    t0 = _to_theta(prior)

    def f(t: np.ndarray) -> np.ndarray:
        return np.concatenate([_residuals(points, _from_theta(t), catalog), ridge * (t - t0)])

    x0 = _to_theta(start) if start is not None else t0
    res = least_squares(f, x0, method="trf", x_scale=1.0, diff_step=1e-3, max_nfev=max_nfev)
    return _from_theta(res.x)


@dataclass
class GroupFit:
    efficiency: Efficiency
    n_points: int
    accelerators: list[str]
    models: list[str]
    precisions: list[str]
    input_len: tuple[int, int]
    output_len: tuple[int, int]
    params_b: tuple[float, float]  # total parameters of measured models, 1e9
    loo_throughput: dict[str, float] = field(default_factory=dict)  # median/p90 APE


@dataclass
class Calibration:
    """Fitted efficiencies with the evidence about them. Load with :func:`load_fit`."""

    global_fit: Efficiency
    groups: dict[str, GroupFit]
    families: dict[str, list[str]]  # family -> group keys with data
    cross_family: dict[str, float]  # leave-one-family-out APE on throughput: median, p90
    meta: dict[str, Any]

    def efficiency(self, family: str, engine: str | None) -> tuple[Efficiency, str | None]:
        """Efficiency for a chip family and engine, and the group it came from.

        Falls back to the family's best-measured engine, then to the global fit
        (group None)."""
        if engine and group_key(family, engine) in self.groups:
            key = group_key(family, engine)
            return self.groups[key].efficiency, key
        keys = self.families.get(family, [])
        if keys:
            key = max(keys, key=lambda k: self.groups[k].n_points)
            return self.groups[key].efficiency, key
        return self.global_fit, None

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "global": asdict(self.global_fit),
            "cross_family": self.cross_family,
            "groups": {k: {**asdict(g), "efficiency": asdict(g.efficiency)}
                       for k, g in self.groups.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        groups = {}
        for k, g in d["groups"].items():
            g = dict(g)
            g["efficiency"] = Efficiency(**g["efficiency"])
            for t in ("input_len", "output_len", "params_b"):
                g[t] = tuple(g[t])
            groups[k] = GroupFit(**g)
        families: dict[str, list[str]] = {}
        for k in groups:
            families.setdefault(k.split("/")[0], []).append(k)
        return cls(Efficiency(**d["global"]), groups, families, d["cross_family"], d["meta"])


def ape(pred: float, meas: float) -> float:
    if not (pred > 0 and math.isfinite(pred)):
        return float("inf")
    return abs(pred / meas - 1.0)


def _summary(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray([x for x in errors], dtype=float)
    if not len(e):
        return {}
    return {"median": float(np.median(e)), "p90": float(np.percentile(e, 90)), "n": len(e)}


def _family_of(p: Point, catalog: Catalog) -> str:
    return catalog.accelerator(p.accelerator).family


@dataclass
class Evaluation:
    """Per-row predictions: in-sample, leave-one-out, leave-one-family-out."""

    rows: list[dict[str, Any]]


def run_fit(
    catalog: Catalog | None = None,
    points: list[Point] | None = None,
    loo: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Calibration, Evaluation]:
    """Fit every group, then measure held-out errors. Deterministic."""
    catalog = catalog or load_catalog()
    if points is None:
        points, _ = load_points()
    by_group: dict[str, list[Point]] = {}
    for p in points:
        by_group.setdefault(group_key(_family_of(p, catalog), p.engine), []).append(p)

    global_eff = fit_group(points, PRIOR, catalog, ridge=0.05)
    groups: dict[str, GroupFit] = {}
    for key, pts in sorted(by_group.items()):
        eff = fit_group(pts, global_eff, catalog)
        specs = [catalog.model(p.model) for p in pts]
        totals = [arch.param_counts(m).total / 1e9 for m in specs]
        groups[key] = GroupFit(
            efficiency=eff, n_points=len(pts),
            accelerators=sorted({p.accelerator for p in pts}),
            models=sorted({m.id for m in specs}),
            precisions=sorted({p.precision for p in pts}),
            input_len=(min(p.input_len for p in pts), max(p.input_len for p in pts)),
            output_len=(min(p.output_len for p in pts), max(p.output_len for p in pts)),
            params_b=(round(min(totals), 2), round(max(totals), 2)),
        )

    rows: list[dict[str, Any]] = []
    total = len(points)
    for i, p in enumerate(points):
        key = group_key(_family_of(p, catalog), p.engine)
        row = {"row": p.row, "group": key, "model": p.model, "accelerator": p.accelerator,
               "n_accel": p.n_accel, "precision": p.precision, "mode": p.mode,
               "input_len": p.input_len, "output_len": p.output_len,
               "concurrency": p.concurrency, "metric": p.metric, "measured": p.value,
               "fitted": predict(p, groups[key].efficiency, catalog)}
        if loo:
            rest = [q for q in by_group[key] if q is not p]
            # Warm start from the full fit: dropping one row moves the optimum little.
            eff = (fit_group(rest, global_eff, catalog, start=groups[key].efficiency,
                             max_nfev=60) if rest else global_eff)
            row["loo"] = predict(p, eff, catalog)
        rows.append(row)
        if progress:
            progress("leave-one-out", i + 1, total)

    cross: list[float] = []
    if loo:
        families = sorted({_family_of(p, catalog) for p in points})
        for j, fam in enumerate(families):
            held = [p for p in points if _family_of(p, catalog) == fam]
            rest = [p for p in points if _family_of(p, catalog) != fam]
            g = fit_group(rest, PRIOR, catalog, ridge=0.05)
            for p in held:
                v = predict(p, g, catalog)
                for r in rows:
                    if r["row"] == p.row:
                        r["cross_family"] = v
                if p.metric == "throughput":
                    cross.append(ape(v, p.value))
            if progress:
                progress("leave-one-family-out", j + 1, len(families))
        for key, grp in groups.items():
            grp.loo_throughput = _summary([ape(r["loo"], r["measured"]) for r in rows
                                           if r["group"] == key and r["metric"] == "throughput"])

    data = data_path().read_bytes()
    families_map: dict[str, list[str]] = {}
    for k in groups:
        families_map.setdefault(k.split("/")[0], []).append(k)
    meta = {
        "fitted_on": date.today().isoformat(),
        "data_file": "tokenfleet/perf/data/published_measurements.csv",
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "points": len(points),
        "assumptions": ASSUMPTIONS,
        "prior": asdict(PRIOR),
        "ridge": RIDGE,
        "command": "tokenfleet calibrate --write",
    }
    cal = Calibration(global_eff, groups, families_map, _summary(cross) if cross else {}, meta)
    return cal, Evaluation(rows)


def fit_path() -> Path:
    return Path(str(resources.files("tokenfleet.perf.data").joinpath(FIT_FILE)))


_CACHE: dict[str, Calibration] = {}


def load_fit(path: Path | None = None) -> Calibration:
    """The shipped fit (``perf/data/efficiency.json``), or the prior alone if absent."""
    p = path or fit_path()
    key = str(p)
    if key not in _CACHE:
        if p.exists():
            _CACHE[key] = Calibration.from_json(json.loads(p.read_text()))
        else:
            _CACHE[key] = Calibration(PRIOR, {}, {}, {}, {"note": "no fit shipped"})
    return _CACHE[key]


def write_fit(cal: Calibration, path: Path | None = None) -> Path:
    p = path or fit_path()
    write_text(p, json.dumps(cal.to_json(), indent=2, sort_keys=False) + "\n")
    _CACHE.pop(str(p), None)
    return p
