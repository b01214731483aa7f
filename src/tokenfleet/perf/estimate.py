"""The public performance API: ``estimate`` one serving unit, ``compare`` chips,
``breakeven`` prices. Typed queries in, typed results out; nothing here prints.

Every result says how far to trust it: a provenance label and an uncertainty band
from held-out calibration error (see ``tokenfleet.perf.calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.measurements import ENGINES, FULL_KV_RESERVATION
from tokenfleet.perf.operating import OperatingPoint, best_operating_point, evaluate_layout
from tokenfleet.perf.precision import PRECISIONS, get_precision, kv_bytes
from tokenfleet.perf.unit import Efficiency, Layout, UnitModel

Provenance = Literal["calibrated", "extrapolated", "spec-sheet"]

# Counts `compare` tries for each chip: powers of two, plus the chip's scale-up domain.
COMPARE_COUNTS = (1, 2, 4, 8, 16, 32, 64)
# Band used when no held-out error exists at all (no fit shipped).
FALLBACK_BAND = 0.5


class Query(BaseModel):
    """One estimate request. Keys match the CLI flags and the ``--batch`` JSONL lines."""

    model_config = ConfigDict(extra="forbid")

    model: str
    accelerator: str
    count: int = Field(1, ge=1, le=4096, description="chips in the unit")
    precision: str = Field("auto", description="bf16 | fp8 | fp4 | int8 | auto")
    kv_precision: str | None = Field(None, description="KV-cache precision; default per precision")
    engine: str | None = Field(None, description=f"one of {', '.join(ENGINES)}")
    input_len: int = Field(1024, ge=1, description="prompt tokens")
    output_len: int = Field(256, ge=1, description="generated tokens")
    concurrency: int | None = Field(None, ge=1, description="sequences in flight (whole unit)")
    slo_ttft: float | None = Field(None, gt=0, description="mean TTFT bound, seconds")
    slo_tpot: float | None = Field(None, gt=0, description="mean TPOT bound, seconds")
    cloud: str | None = Field(None, description="price from this cloud (default: first listed)")
    usd_per_hour: float | None = Field(None, gt=0, description="override $/chip-hour")
    data_parallel: bool = Field(
        True, description="consider layouts that replicate the model (dp > 1) inside the unit")
    layout: dict[str, int] | None = Field(
        None, description="fix the layout {tp, pp, dp, ep} instead of searching for the best")

    @model_validator(mode="after")
    def _check(self) -> Query:
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        if self.concurrency is not None and (self.slo_ttft or self.slo_tpot):
            raise ValueError("give either concurrency or SLOs, not both")
        return self


class Memory(BaseModel):
    weights_gb: float = Field(description="weights per chip, GB")
    kv_gb_per_token: float = Field(description="KV cache one token costs in the unit, GB")
    kv_gb_available: float = Field(description="KV budget per chip after weights, GB")
    hbm_gb: float = Field(description="HBM per chip, GB")


class Uncertainty(BaseModel):
    relative: float = Field(description="± fraction applied to throughput")
    low_output_tokens_per_s: float
    high_output_tokens_per_s: float
    basis: str


class Estimate(BaseModel):
    """What one unit does at one operating point. Units in the field names."""

    model: str
    accelerator: str
    count: int
    precision: str
    kv_precision: str
    engine: str | None
    input_len: int
    output_len: int
    layout: dict[str, int] | None
    fits: bool
    reason: str | None = None
    mode: str
    concurrency: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    output_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    usd_per_hour: float | None = None
    price_source: str | None = None
    price_is_assumption: bool = False
    usd_per_million_output_tokens: float | None = None
    watts: float
    joules_per_output_token: float | None = None
    memory: Memory | None = None
    provenance: Provenance
    calibration_group: str | None
    uncertainty: Uncertainty | None = None
    notes: list[str] = []


def _layout(d: dict[str, int], count: int) -> Layout:
    lo = Layout(tp=d.get("tp", 1), pp=d.get("pp", 1), dp=d.get("dp", 1), ep=d.get("ep", 1))
    if lo.chips != count:
        raise TokenfleetError(f"layout {d} uses {lo.chips} chips, not count={count}")
    return lo


def resolve_precision(accel: Accelerator, precision: str) -> str:
    """'auto' picks FP8 where the chip has it, else BF16 (else FP4)."""
    if precision != "auto":
        return precision
    for p in ("fp8", "bf16", "fp4"):
        if accel.peak_tflops(get_precision(p).compute):
            return p
    raise TokenfleetError(f"{accel.id} lists no BF16, FP8 or FP4 peak")


def _check_supported(accel: Accelerator, precision: str) -> str | None:
    prec = get_precision(precision)
    if not accel.peak_tflops(prec.compute):
        have = [p for p in PRECISIONS if accel.peak_tflops(get_precision(p).compute)]
        return (f"{accel.id} has no {prec.compute.upper()} tensor peak, so it cannot run "
                f"{precision}; it supports: {', '.join(have) or 'none'}")
    return None


def _provenance(cal: Calibration, accel: Accelerator, group: str | None, model: ModelSpec,
                q: Query, precision: str) -> tuple[Provenance, float, str]:
    """Label and ± band (fraction) for an estimate."""
    if group is None:
        band = cal.cross_family.get("p90", FALLBACK_BAND)
        return ("spec-sheet", band,
                f"no measurement of the {accel.family} family: band = 90th-percentile "
                "leave-one-family-out error")
    g = cal.groups[group]
    band = g.loo_throughput.get("p90", cal.cross_family.get("p90", FALLBACK_BAND))
    params = arch.param_counts(model).total / 1e9
    inside = (
        accel.id in g.accelerators
        and precision in g.precisions
        and g.input_len[0] <= q.input_len <= g.input_len[1]
        and g.output_len[0] <= q.output_len <= g.output_len[1]
        and g.params_b[0] / 1.5 <= params <= g.params_b[1] * 1.5
    )
    if inside:
        return "calibrated", band, f"90th-percentile leave-one-out error of {group}"
    band = max(band, cal.cross_family.get("median", band))
    return ("extrapolated", band,
            f"outside the measured range of {group} (chips {', '.join(g.accelerators)}; "
            f"precisions {', '.join(g.precisions)}; input {g.input_len[0]}-{g.input_len[1]}, "
            f"output {g.output_len[0]}-{g.output_len[1]} tokens; "
            f"{g.params_b[0]:g}-{g.params_b[1]:g}B params): band widened")


@dataclass(frozen=True)
class _Resolved:
    """A query with its names looked up and its defaults chosen."""

    model: ModelSpec
    accel: Accelerator
    precision: str
    kv_precision: str
    eff: Efficiency
    group: str | None
    engine: str | None
    mode: str


def _resolve(q: Query, catalog: Catalog, cal: Calibration) -> _Resolved:
    accel = catalog.accelerator(q.accelerator)
    precision = resolve_precision(accel, q.precision)
    kv_prec = q.kv_precision or get_precision(precision).default_kv
    kv_bytes(kv_prec)  # validates the name
    eff, group = cal.efficiency(accel.family, q.engine)
    mode = ("slo" if (q.slo_ttft or q.slo_tpot) else
            "concurrency" if q.concurrency else "offline")
    engine = q.engine or (group.split("/")[1] if group else None)
    model = catalog.model(q.model)
    ctx = model.max_context_tokens
    if ctx is not None and q.input_len + q.output_len > ctx:
        raise TokenfleetError(
            f"input {q.input_len} + output {q.output_len} tokens is beyond {model.id}'s context "
            f"of {ctx} tokens (catalog max_context_tokens): no server would accept it")
    return _Resolved(model, accel, precision, kv_prec, eff, group, engine, mode)


def _operating_point(q: Query, r: _Resolved) -> OperatingPoint:
    return best_operating_point(
        r.model, r.accel, get_precision(r.precision), r.kv_precision, q.count, r.eff,
        q.input_len, q.output_len, r.mode, q.concurrency, q.slo_ttft, q.slo_tpot,
        reserve_full=r.engine in FULL_KV_RESERVATION, data_parallel=q.data_parallel,
        layouts=[_layout(q.layout, q.count)] if q.layout else None)


def operating_point(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None
                    ) -> OperatingPoint | None:
    """The unit's best operating point alone (no price, provenance or band): the fast
    path for callers that screen thousands of options. None when the chip has no peak
    for the precision."""
    r = _resolve(q, catalog or load_catalog(), cal or load_fit())
    if _check_supported(r.accel, r.precision):
        return None
    return _operating_point(q, r)


def layout_screen(q: Query, catalog: Catalog, cal: Calibration
                  ) -> Callable[[int, int], OperatingPoint] | None:
    """:func:`operating_point` of a query with a fixed ``layout`` as a function of the
    request shape (input, output tokens): the query is resolved and the unit model
    built once, for callers that evaluate one unit at many shapes (the planner's
    screening). None when the chip has no peak for the precision."""
    assert q.layout, "a screen is for one fixed layout"
    r = _resolve(q, catalog, cal)
    if _check_supported(r.accel, r.precision):
        return None
    unit = UnitModel(r.model, r.accel, get_precision(r.precision), r.kv_precision,
                     _layout(q.layout, q.count), r.eff)
    reserve_full = r.engine in FULL_KV_RESERVATION

    def at(input_len: int, output_len: int) -> OperatingPoint:
        return evaluate_layout(unit, input_len, output_len, r.mode, q.concurrency,
                               q.slo_ttft, q.slo_tpot, reserve_full)

    return at


def estimate(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None
             ) -> Estimate:
    """Estimate one unit. Raises TokenfleetError for unknown names; an impossible
    combination (no FP4 on the chip, does not fit) is a result with ``fits=False``."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    r = _resolve(q, catalog, cal)
    accel, group = r.accel, r.group
    notes = []
    if q.engine and (group is None or not group.endswith("/" + q.engine)):
        notes.append(f"no {q.engine} measurements for {accel.family}; used "
                     f"{group or 'the global fit'}")
    price = None
    usd_h: float | None
    price_src: str | None
    if q.usd_per_hour:
        usd_h, price_src, assumed = q.usd_per_hour * q.count, "user override", False
    else:
        price = accel.price(q.cloud) if q.cloud else accel.price()
        if q.cloud and price is None:
            clouds = sorted({p.cloud for p in accel.prices})
            raise TokenfleetError(f"no on-demand price for {accel.id} in cloud '{q.cloud}'; "
                                  f"known clouds: {', '.join(clouds) or 'none'}")
        usd_h = price.usd_per_hour * q.count if price else None
        price_src = price.source if price else None
        assumed = bool(price and price.assumption)
    watts = accel.tdp_w * q.count
    base = dict(model=r.model.id, accelerator=accel.id, count=q.count, precision=r.precision,
                kv_precision=r.kv_precision, engine=q.engine, input_len=q.input_len,
                output_len=q.output_len, mode=r.mode, usd_per_hour=usd_h,
                price_source=price_src, price_is_assumption=assumed, watts=watts,
                calibration_group=group)
    unsupported = _check_supported(accel, r.precision)
    prov, band, basis = _provenance(cal, accel, group, r.model, q, r.precision)
    if unsupported:
        return Estimate(**base, layout=None, fits=False, reason=unsupported, provenance=prov,
                        notes=notes)
    op = _operating_point(q, r)
    return _from_op(base, op, prov, band, basis, notes, q, accel)


def _from_op(base: dict, op: OperatingPoint, prov: Provenance, band: float, basis: str,
             notes: list[str], q: Query, accel: Accelerator) -> Estimate:
    mem = Memory(
        weights_gb=op.memory.weights_per_chip / 1e9,
        kv_gb_per_token=op.memory.kv_per_token_unit / 1e9,
        kv_gb_available=max(op.memory.kv_budget_per_chip, 0) / 1e9,
        hbm_gb=accel.hbm_gb,
    )
    if not op.fits:
        return Estimate(**base, layout=op.layout.as_dict(), fits=False, reason=op.reason,
                        memory=mem, provenance=prov, notes=notes)
    tps = op.output_tokens_per_s
    if q.concurrency and op.concurrency < q.concurrency:
        notes.append(f"KV memory holds only {op.concurrency:.0f} sequences; the rest queue")
    usd_h = base["usd_per_hour"]
    return Estimate(
        **base,
        layout=op.layout.as_dict(),
        fits=True,
        concurrency=op.concurrency,
        ttft_s=op.ttft_s,
        tpot_s=op.tpot_s,
        output_tokens_per_s=tps,
        requests_per_s=tps / q.output_len,
        usd_per_million_output_tokens=(usd_h / 3600 / tps * 1e6) if usd_h and tps > 0 else None,
        joules_per_output_token=base["watts"] / tps if tps > 0 else None,
        memory=mem,
        provenance=prov,
        uncertainty=Uncertainty(relative=band, low_output_tokens_per_s=tps * (1 - band),
                                high_output_tokens_per_s=tps * (1 + band), basis=basis),
        notes=notes,
    )


def compare_counts(accel: Accelerator) -> list[int]:
    counts = set(COMPARE_COUNTS)
    if accel.scaleup_domain <= 128:
        counts.add(accel.scaleup_domain)
    return sorted(counts)


def _cost_key(e: Estimate) -> float:
    """$ per output token; chips without a price rank by joules per token instead."""
    if e.usd_per_million_output_tokens is not None:
        return e.usd_per_million_output_tokens
    return (e.joules_per_output_token or math.inf) * 1e6


def best_count(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None,
               max_count: int = 64) -> Estimate:
    """The count (and layout) with the lowest $ per output token that meets the query;
    ties go to fewer chips. When none fits, the result at the largest count says why."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    accel = catalog.accelerator(q.accelerator)
    best: Estimate | None = None
    last: Estimate | None = None
    for n in compare_counts(accel):
        if n > max_count:
            break
        e = estimate(q.model_copy(update={"count": n}), catalog, cal)
        last = e
        if not e.fits:
            if e.reason and "cannot run" in e.reason:
                return e  # no count helps a missing precision
            continue
        if best is None or _cost_key(e) < _cost_key(best) * (1 - 1e-6):
            best = e
    assert last is not None
    return best or last


def compare(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None,
            accelerators: list[str] | None = None) -> list[Estimate]:
    """Every chip's best unit for one model and traffic shape, cheapest first; chips
    that cannot serve it come last with the reason."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    ids = accelerators or [a.id for a in catalog.accelerators]
    out = [best_count(q.model_copy(update={"accelerator": a}), catalog, cal) for a in ids]

    def key(e: Estimate) -> tuple[int, float]:
        if not e.fits:
            return (2, 0.0)
        return (1 if e.usd_per_million_output_tokens is None else 0, _cost_key(e))

    return sorted(out, key=key)


class Breakeven(BaseModel):
    model: str
    accelerator: str
    versus: str
    advantage: float = Field(description="tokens-per-dollar edge asked for, e.g. 0.30")
    accelerator_estimate: Estimate
    versus_estimate: Estimate
    versus_usd_per_million_output_tokens: float
    breakeven_usd_per_chip_hour: float = Field(description="A's price that matches B's $/token")
    advantage_usd_per_chip_hour: float = Field(
        description="A's price at which A gives (1 + advantage) x B's tokens per dollar")
    current_usd_per_chip_hour: float | None
    current_advantage: float | None = Field(
        None, description="A's tokens-per-dollar edge over B at A's catalog price")
    band_usd_per_chip_hour: tuple[float, float] = Field(
        description="breakeven price range from both estimates' uncertainty bands")


def breakeven(q: Query, versus: str, advantage: float = 0.0,
              catalog: Catalog | None = None, cal: Calibration | None = None) -> Breakeven:
    """At what hourly price per chip does ``q.accelerator`` match ``versus`` in $/token,
    and at what price does it beat it by ``advantage`` (0.30 = 30% more tokens/$)?"""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    a = best_count(q, catalog, cal)
    b = best_count(q.model_copy(update={"accelerator": versus}), catalog, cal)
    for e in (a, b):
        if not e.fits:
            raise TokenfleetError(f"{e.accelerator} cannot serve this query: {e.reason}")
    if b.usd_per_million_output_tokens is None:
        raise TokenfleetError(f"{b.accelerator} has no price; give one with --catalog")
    assert a.output_tokens_per_s and b.output_tokens_per_s
    usd_per_tok_b = b.usd_per_million_output_tokens / 1e6
    # A's unit cost per hour that gives the same $/token, spread over its chips.
    per_chip = usd_per_tok_b * a.output_tokens_per_s * 3600 / a.count
    ua = a.uncertainty.relative if a.uncertainty else 0.0
    ub = b.uncertainty.relative if b.uncertainty else 0.0
    lo = per_chip * (1 - ua) / (1 + ub)
    hi = per_chip * (1 + ua) / max(1 - ub, 1e-9)
    current = a.usd_per_hour / a.count if a.usd_per_hour else None
    edge = (per_chip / current - 1.0) if current else None
    return Breakeven(
        model=a.model, accelerator=a.accelerator, versus=b.accelerator, advantage=advantage,
        accelerator_estimate=a, versus_estimate=b,
        versus_usd_per_million_output_tokens=b.usd_per_million_output_tokens,
        breakeven_usd_per_chip_hour=per_chip,
        advantage_usd_per_chip_hour=per_chip / (1 + advantage),
        current_usd_per_chip_hour=current, current_advantage=edge,
        band_usd_per_chip_hour=(lo, hi),
    )
