"""The public performance API: ``estimate`` one serving unit, ``compare`` chips,
``breakeven`` prices. Typed queries in, typed results out; nothing here prints.

``estimate`` is the one path: calibration, its held-out checks and every user query
call it (a measurement states its layout and batching; a user query may). Every result
says which layout it took and why, what its numbers rest on (its family's measurements
or a measured peer's), a provenance label and an uncertainty band from the calibration
errors of that group (see ``tokenfleet.perf.calibration``).
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
from tokenfleet.perf import techniques as tech_mod
from tokenfleet.perf.calibration import Basis, Calibration, GroupFit, load_fit
from tokenfleet.perf.disagg import custom_link
from tokenfleet.perf.engines import DEFAULT_ENGINE, engine_profile
from tokenfleet.perf.measurements import ENGINES
from tokenfleet.perf.operating import (
    OperatingPoint,
    UnitCache,
    best_operating_point,
    choose,
    evaluate_layout,
)
from tokenfleet.perf.precision import PRECISIONS, get_precision, kv_bytes, unsupported_reason
from tokenfleet.perf.speculative import SYNTAX as SPECULATIVE_SYNTAX
from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.perf.unit import Efficiency, Layout, UnitModel, layouts_for

# Serving techniques (prefix caching, speculative decoding, prefill/decode roles) live in
# perf/techniques.py; this module only carries their fields (Query, Estimate) and takes
# that path in _operating_point when one is on: the lines that say "techniques".

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
    precision: str = Field("auto", description=f"{' | '.join(PRECISIONS)} | auto")
    kv_precision: str | None = Field(None, description="KV-cache precision; default per precision")
    engine: str | None = Field(None, description=f"one of {', '.join(ENGINES)}")
    input_len: int = Field(1024, ge=1, description="prompt tokens")
    output_len: int = Field(256, ge=1, description="generated tokens")
    concurrency: int | None = Field(None, ge=1, description="sequences in flight (whole unit)")
    slo_ttft: float | None = Field(None, gt=0, description="mean TTFT bound, seconds")
    slo_tpot: float | None = Field(None, gt=0, description="mean TPOT bound, seconds")
    cloud: str | None = Field(None, description="price from this cloud (default: first listed)")
    usd_per_hour: float | None = Field(None, gt=0, description="override $/chip-hour")
    data_parallel: bool | None = Field(
        None, description="consider layouts that replicate the model (dp > 1 without ep) "
        "inside the unit: default no (one engine instance over all the chips, as engines run "
        "with their defaults; --dp asks for replicas); true: a system of instances behind "
        "one load balancer (as MLPerf submissions run); false: never")
    layout: Layout | None = Field(
        None, description="fix the layout {tp, pp, dp, ep} instead of searching for the best")
    tp: int | None = Field(None, ge=1, description="tensor-parallel size (rest chosen)")
    pp: int | None = Field(None, ge=1, description="pipeline stages (rest chosen)")
    dp: int | None = Field(None, ge=1, description="data-parallel / attention-DP ranks")
    ep: int | None = Field(None, ge=1, description="expert-parallel size (MoE)")
    batching: Literal["static", "continuous"] | None = Field(
        None, description="default from the engine: neuron static, the rest continuous")
    # ---- serving techniques (perf/techniques.py); the defaults are plain serving ----
    prefix_hit_rate: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of prompt tokens served from a prefix cache")
    speculative: str | None = Field(None, description=SPECULATIVE_SYNTAX)
    role: Literal["both", "prefill", "decode"] = Field(
        "both", description="both (aggregated), or one pool of disaggregated serving")
    kv_link_gbps: float | None = Field(
        None, gt=0, description="prefill role: GB/s per chip, one direction, to the decode "
                                "pool (default: the chip's scale-out network)")

    @model_validator(mode="after")
    def _check(self) -> Query:
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        if self.concurrency is not None and (self.slo_ttft or self.slo_tpot):
            raise ValueError("give either concurrency or SLOs, not both")
        if self.speculative is not None:
            try:
                parse_speculation(self.speculative)
            except TokenfleetError as e:
                raise ValueError(str(e)) from None
        return self


class Memory(BaseModel):
    weights_gb: float = Field(description="weights per chip, GB")
    kv_gb_per_token: float = Field(description="KV cache one token costs in the unit, GB")
    kv_gb_available: float = Field(description="KV budget per chip after weights, GB")
    hbm_gb: float = Field(description="HBM per chip, GB")


class Uncertainty(BaseModel):
    relative: float = Field(description="fraction below the estimate the low end lies "
                                        "(what the planner derates by)")
    upside: float | None = Field(None, description="fraction above the estimate the high "
                                                   "end lies, when it differs")
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
    layout: Layout | None
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
    basis: str = Field("", description="which measurements or which peer the numbers rest on")
    peer: str | None = Field(None, description="measured chip borrowed from, if any")
    layout_why: str = Field("", description="why this layout")
    batching: str = "continuous"
    uncertainty: Uncertainty | None = None
    notes: list[str] = []
    # serving techniques (see perf/techniques.py); defaults = plain aggregated serving
    role: str = "both"
    prefix_hit_rate: float = 0.0
    speculative: str | None = None
    tokens_per_step: float | None = Field(None, description="mean tokens a decode step yields")
    prompt_tokens_per_s: float | None = Field(
        None, description="prefill role: prompt tokens computed per second (cache hits excluded)")
    kv_transfer_s: float | None = Field(
        None, description="prefill role: one prompt's KV handover to the decode pool, in TTFT")


def _layout(lo: Layout, count: int) -> Layout:
    if lo.chips != count:
        raise TokenfleetError(f"layout {lo.model_dump()} uses {lo.chips} chips, "
                              f"not count={count}")
    return lo


def _fixed(q: Query) -> dict[str, int]:
    return {k: v for k in ("tp", "pp", "dp", "ep") if (v := getattr(q, k)) is not None}


def candidate_layouts(q: Query, model: ModelSpec, accel: Accelerator, engine: str
                      ) -> list[Layout] | None:
    """Layouts the query allows: a full ``layout``; or those matching the given subset of
    tp/pp/dp/ep (preferring the ones engines run); None = the engines' default search."""
    if q.layout:
        return [_layout(q.layout, q.count)]
    fixed = _fixed(q)
    if not fixed:
        return None
    match = [lo for lo in layouts_for(model, q.count)
             if all(getattr(lo, k) == v for k, v in fixed.items())]
    if not match:
        raise TokenfleetError(
            f"no layout of {q.count} chips has "
            + ", ".join(f"{k}={v}" for k, v in fixed.items())
            + f" for {model.id} (tp*pp*dp = count; ep is 1 or tp*dp, MoE only; "
              f"tp <= {model.num_attention_heads} heads; pp a power of two <= 8)")
    usual = set(layouts_for(model, q.count, accel, engine))
    return [lo for lo in match if lo in usual] or match


def resolve_precision(accel: Accelerator, precision: str) -> str:
    """'auto' picks FP8 where the chip has it, else BF16 (else FP4)."""
    if precision != "auto":
        return precision
    for p in ("fp8", "bf16", "fp4"):
        if accel.peak_tflops(get_precision(p).compute):
            return p
    raise TokenfleetError(f"{accel.id} lists no BF16, FP8 or FP4 peak")


def _check_supported(accel: Accelerator, precision: str, engine: str | None = None
                     ) -> str | None:
    peaks = {d: accel.peak_tflops(d) for d in ("bf16", "fp8", "fp4", "int8")}
    return unsupported_reason(accel.id, peaks, precision, engine)


# Floor of any band: no estimate is trusted to better than this.
MIN_BAND = 0.1


def _group_band(g: GroupFit, cross: float, stated: bool) -> float:
    """The 90th-percentile throughput error of the group's own rows asked the way this
    query asks (with a layout given, or the tool picking it), with a floor; ``cross``
    when the group has no throughput rows."""
    errs = g.in_sample_stated if stated and g.in_sample_stated else g.in_sample
    return max(errs.get("p90", cross), MIN_BAND)


def _provenance(cal: Calibration, accel: Accelerator, b: Basis, model: ModelSpec,
                q: Query, precision: str) -> tuple[Provenance, float, float, str]:
    """Label, band below and band above (fractions) for an estimate."""
    cross = cal.cross_family.get("p90", FALLBACK_BAND)
    if b.group is None:
        band = max(cross, FALLBACK_BAND)
        return "spec-sheet", band, band, b.text
    g = cal.groups[b.group]
    own = _group_band(g, cross, stated=bool(q.layout or _fixed(q)))
    if b.peer is not None:
        # The borrowed group is the slowest of the nearest peers, so the peers' spread
        # widens the band upwards only; downwards it is the group's own error.
        low = min(max(own, cal.cross_family.get("median", own)), 0.9)
        return "spec-sheet", low, low + b.spread, (
            b.text + f"; band = -max(p90 error of {b.group}, median leave-one-family-out "
            "error), + that plus the peers' spread")
    params = arch.param_counts(model).total / 1e9
    inside = (
        accel.id in g.accelerators
        and precision in g.precisions
        and g.input_len[0] <= q.input_len <= g.input_len[1]
        and g.output_len[0] <= q.output_len <= g.output_len[1]
        and g.params_b[0] / 1.5 <= params <= g.params_b[1] * 1.5
    )
    if inside:
        return ("calibrated", own, own,
                b.text + "; band = 90th-percentile error of the group")
    band = max(own, cal.cross_family.get("median", own))
    return ("extrapolated", band, band,
            b.text + f"; outside its measured range (chips {', '.join(g.accelerators)}; "
            f"precisions {', '.join(g.precisions)}; input {g.input_len[0]}-{g.input_len[1]}, "
            f"output {g.output_len[0]}-{g.output_len[1]} tokens; "
            f"{g.params_b[0]:g}-{g.params_b[1]:g}B params): band = max(group p90, median "
            "leave-one-family-out error)")


@dataclass(frozen=True)
class _Resolved:
    """A query with its names looked up and its defaults chosen."""

    model: ModelSpec
    accel: Accelerator
    precision: str
    kv_precision: str
    basis: Basis
    engine: str
    mode: str
    batching: str
    techniques: tech_mod.Techniques | None = None  # None: plain serving

    @property
    def eff(self) -> Efficiency:
        return self.basis.efficiency

    @property
    def group(self) -> str | None:
        return self.basis.group


def _techniques(q: Query, catalog: Catalog) -> tech_mod.Techniques | None:
    spec = parse_speculation(q.speculative) if q.speculative else None
    t = tech_mod.Techniques(
        prefix_hit_rate=q.prefix_hit_rate, speculation=spec,
        draft=catalog.model(spec.draft_model) if spec and spec.draft_model else None,
        role=q.role, kv_link=custom_link(q.kv_link_gbps) if q.kv_link_gbps else None)
    return None if t.plain else t


def _resolve(q: Query, catalog: Catalog, cal: Calibration, units: UnitCache | None = None
             ) -> _Resolved:
    accel = catalog.accelerator(q.accelerator)
    precision = resolve_precision(accel, q.precision)
    kv_prec = q.kv_precision or get_precision(precision).default_kv
    kv_bytes(kv_prec)  # validates the name
    b = (cal.basis(accel, q.engine) if units is None
         else units.get((cal, accel), ("basis", q.engine), lambda: cal.basis(accel, q.engine)))
    mode = ("slo" if (q.slo_ttft or q.slo_tpot) else
            "concurrency" if q.concurrency else "offline")
    engine = q.engine or (b.group.split("/")[1] if b.group else DEFAULT_ENGINE)
    batching = q.batching or engine_profile(engine).batching
    model = catalog.model(q.model)
    ctx = model.max_context_tokens
    if ctx is not None and q.input_len + q.output_len > ctx:
        raise TokenfleetError(
            f"input {q.input_len} + output {q.output_len} tokens is beyond {model.id}'s context "
            f"of {ctx} tokens (catalog max_context_tokens): no server would accept it")
    return _Resolved(model, accel, precision, kv_prec, b, engine, mode, batching,
                     _techniques(q, catalog))


def _operating_point(q: Query, r: _Resolved, units: UnitCache | None = None
                     ) -> OperatingPoint:
    if r.techniques is not None:  # serving techniques on: perf/techniques.py
        return tech_mod.best_technique_point(
            r.model, r.accel, get_precision(r.precision), r.kv_precision, q.count, r.eff,
            q.input_len, q.output_len, r.mode, r.techniques, q.concurrency, q.slo_ttft,
            q.slo_tpot, engine=r.engine, batching=r.batching,
            data_parallel=q.data_parallel,
            layouts=[_layout(q.layout, q.count)] if q.layout else None, units=units)
    return best_operating_point(
        r.model, r.accel, get_precision(r.precision), r.kv_precision, q.count, r.eff,
        q.input_len, q.output_len, r.mode, q.concurrency, q.slo_ttft, q.slo_tpot,
        data_parallel=q.data_parallel,
        layouts=candidate_layouts(q, r.model, r.accel, r.engine), engine=r.engine,
        batching=r.batching, units=units)


def operating_point(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None
                    ) -> OperatingPoint | None:
    """The unit's best operating point alone (no price, provenance or band): the fast
    path for callers that screen thousands of options. None when the chip has no peak
    for the precision."""
    r = _resolve(q, catalog or load_catalog(), cal or load_fit())
    if _check_supported(r.accel, r.precision, r.engine):
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
    if _check_supported(r.accel, r.precision, r.engine):
        return None
    unit = UnitModel(r.model, r.accel, get_precision(r.precision), r.kv_precision,
                     _layout(q.layout, q.count), r.eff, r.engine)

    def at(input_len: int, output_len: int) -> OperatingPoint:
        op = evaluate_layout(unit, input_len, output_len, r.mode, q.concurrency,
                             q.slo_ttft, q.slo_tpot, batching=r.batching)
        return choose([op], 1) or op  # the same labels as the search path

    return at


def estimate(q: Query, catalog: Catalog | None = None, cal: Calibration | None = None,
             *, units: UnitCache | None = None) -> Estimate:
    """Estimate one unit. Raises TokenfleetError for unknown names; an impossible
    combination (no FP4 on the chip, does not fit) is a result with ``fits=False``.
    ``units``: units already built (a caller asking many request shapes of the same
    units, over one catalog and calibration whose objects it does not change)."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    r = _resolve(q, catalog, cal, units)
    accel, group = r.accel, r.group
    notes: list[str] = []
    if q.engine and (group is None or not group.endswith("/" + q.engine)):
        notes.append(f"no {q.engine} measurements for {accel.family}; used "
                     f"{group or 'the physical priors'}")
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
                calibration_group=group, basis=r.basis.text, peer=r.basis.peer,
                batching=r.batching)
    unsupported = _check_supported(accel, r.precision, r.engine)
    prov, band, upside, basis = _provenance(cal, accel, r.basis, r.model, q, r.precision)
    if unsupported:
        return Estimate(**base, layout=None, fits=False, reason=unsupported, provenance=prov,
                        notes=notes)
    op = _operating_point(q, r, units)
    e = _from_op(base, op, prov, (band, upside), basis, notes, q, accel)
    return _with_techniques(e, q, r, op, units) if r.techniques is not None else e


def _with_techniques(e: Estimate, q: Query, r: _Resolved, op: OperatingPoint,
                     units: UnitCache | None = None) -> Estimate:
    """The technique fields of an estimate (and a prefill unit's TPOT is not its own)."""
    t = r.techniques
    assert t is not None
    upd: dict = {"role": t.role, "prefix_hit_rate": t.prefix_hit_rate,
                 "speculative": t.speculation.label() if t.speculation else None,
                 "tokens_per_step": t.tokens_per_step if t.role != "prefill" else None}
    if t.role == "prefill":
        unit = tech_mod.technique_units(r.model, r.accel, get_precision(r.precision),
                                        r.kv_precision, r.eff, t, r.engine, units)(op.layout)
        upd["kv_transfer_s"] = unit.kv_transfer_s(q.input_len)
        upd["tpot_s"] = None
        if e.requests_per_s is not None:
            upd["prompt_tokens_per_s"] = e.requests_per_s * q.input_len * (1 - t.prefix_hit_rate)
        e.notes.append(f"prefill pool: KV handover {upd['kv_transfer_s'] * 1e3:.1f} ms on "
                       f"{unit.link.basis}; output tokens/s = requests/s x output tokens "
                       "the decode pool will make")
    if t.role == "decode":
        e.notes.append("decode pool: prompts arrive as KV caches; TTFT is this pool's share "
                       "(join the batch + one step), after the prefill pool's TTFT")
    return e.model_copy(update=upd)


def _from_op(base: dict, op: OperatingPoint, prov: Provenance, bands: tuple[float, float],
             basis: str,
             notes: list[str], q: Query, accel: Accelerator) -> Estimate:
    mem = Memory(
        weights_gb=op.memory.weights_per_chip / 1e9,
        kv_gb_per_token=op.memory.kv_per_token_unit / 1e9,
        kv_gb_available=max(op.memory.kv_budget_per_chip, 0) / 1e9,
        hbm_gb=accel.hbm_gb,
    )
    if not op.fits:
        return Estimate(**base, layout=op.layout, fits=False, reason=op.reason,
                        memory=mem, provenance=prov, notes=notes)
    base = {**base, "layout_why": op.why}
    tps = op.output_tokens_per_s
    if q.concurrency and op.concurrency < q.concurrency:
        notes.append(f"KV memory or the engine's batch cap holds only {op.concurrency:.0f} "
                     "sequences; the rest queue")
    usd_h = base["usd_per_hour"]
    return Estimate(
        **base,
        layout=op.layout,
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
        uncertainty=Uncertainty(relative=bands[0],
                                upside=bands[1] if bands[1] != bands[0] else None,
                                low_output_tokens_per_s=tps * (1 - bands[0]),
                                high_output_tokens_per_s=tps * (1 + bands[1]), basis=basis),
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
