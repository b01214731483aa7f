"""A pool's performance model — ``PlanUnit -> UnitModel`` — written once, for the
simulator (``sim.fleet``) and the gateway's emulated pools (``route.emulator``).

Errors name the field that is wrong; ``where(field)`` says where that field is (for a
plan: ``plan.json: units[3].accelerator``).
"""

from __future__ import annotations

from collections.abc import Callable

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.precision import get_precision, kv_bytes
from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.perf.techniques import Techniques, TechniqueUnit, check_speculation
from tokenfleet.perf.unit import Layout, UnitModel
from tokenfleet.plan.schema import PlanUnit


def _plain(name: str) -> str:
    return name


def unit_model(model: str, accelerator: str, precision: str, kv_precision: str | None,
               layout: Layout, engine: str | None, catalog: Catalog | None = None,
               cal: Calibration | None = None, where: Callable[[str], str] = _plain,
               speculative: str | None = None) -> tuple[UnitModel, str | None]:
    """The performance model of one replica and the calibration group its efficiency
    came from. ``kv_precision`` None: the precision's default KV format; ``speculative``
    (``perf/speculative.py`` syntax): a :class:`TechniqueUnit` that decodes with it."""
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    try:
        accel = catalog.accelerator(accelerator)
    except TokenfleetError as e:
        raise TokenfleetError(f"{where('accelerator')}: {e}") from None
    try:
        spec = catalog.model(model)
    except TokenfleetError as e:
        raise TokenfleetError(f"{where('model')}: {e}") from None
    try:
        prec = get_precision(precision)
        kv = kv_precision or prec.default_kv
        kv_bytes(kv)
    except TokenfleetError as e:
        raise TokenfleetError(f"{where('precision')}: {e}") from None
    eff, group = cal.efficiency(accel, engine)
    if not speculative:
        return UnitModel(spec, accel, prec, kv, layout, eff, engine), group
    try:
        sp = parse_speculation(speculative)
        draft = catalog.model(sp.draft_model) if sp.draft_model else None
        check_speculation(spec, sp, draft)
    except TokenfleetError as e:
        raise TokenfleetError(f"{where('speculative')}: {e}") from None
    tech = Techniques(speculation=sp, draft=draft)
    return TechniqueUnit(spec, accel, prec, kv, layout, eff, tech, engine), group


def plan_unit_model(unit: PlanUnit, catalog: Catalog | None = None,
                    cal: Calibration | None = None, where: Callable[[str], str] = _plain,
                    ) -> tuple[UnitModel, str | None]:
    """:func:`unit_model` of a plan unit, whose layout must be its chips per replica."""
    if unit.layout.chips != unit.chips_per_replica:
        raise TokenfleetError(f"{where('layout')} = {unit.layout.model_dump()} is "
                              f"{unit.layout.chips} chips but chips_per_replica = "
                              f"{unit.chips_per_replica}")
    return unit_model(unit.model, unit.accelerator, unit.precision, unit.kv_precision,
                      unit.layout, unit.engine, catalog, cal, where, unit.speculative)
