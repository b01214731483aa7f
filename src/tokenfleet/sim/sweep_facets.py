"""A sweep's results arranged for a faceted view: one panel per value of up to two
grid axes (rows and columns, e.g. growth x failure), the remaining axis along x (a
price, when the grid has one), and in each cell the plan's USD per month next to the
worst tier's SLO attainment and the target it is held to.

Library code: typed output from the sweep's rows (``tokenfleet.sim.sweep``); the report
draws it and computes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

ATTAINMENT_SUFFIX = ".slo_attainment"
TARGET_SUFFIX = ".slo_target"


class FacetCell(BaseModel):
    """One grid point (or, with more than three axes, the worst of the points that
    share its row, column and x values)."""

    row: str
    col: str
    x: str
    points: list[int] = Field(description="the sweep's point numbers in this cell")
    plan_usd_per_month: float | None = Field(
        description="the point's plan, USD per month (the highest when several points "
                    "share the cell)")
    fleet_usd_per_month: float | None = Field(
        None, description="its chips at list price (the highest in the cell)")
    worst_attainment: float | None = Field(
        description="the lowest SLO attainment of any tier at any of the cell's points")
    worst_tier: str | None
    target: float | None = Field(
        description="the attainment that tier is held to (its SLO percentile / 100)")

    @property
    def meets_slo(self) -> bool | None:
        if self.worst_attainment is None or self.target is None:
            return None
        return self.worst_attainment >= self.target - 1e-9


class SweepFacets(BaseModel):
    x_axis: str | None
    row_axis: str | None
    col_axis: str | None
    rows: list[str]
    cols: list[str]
    xs: list[str]
    cells: list[FacetCell]
    folded_axes: list[str] = Field(
        description="axes beyond three: each cell keeps the worst over their values")
    slo_target: float | None = Field(
        description="the strictest tier target in the sweep: the line on every panel")

    def cell(self, row: str, col: str) -> list[FacetCell]:
        """The cells of one panel, in x order."""
        order = {x: i for i, x in enumerate(self.xs)}
        return sorted((c for c in self.cells if c.row == row and c.col == col),
                      key=lambda c: order[c.x])


def _label(v: Any) -> str:
    return "none" if v is None else str(v)


def _is_price(axis: str) -> bool:
    return axis.startswith("price:") or (axis.startswith("set:") and "price" in axis)


def choose_axes(axes: Sequence[str]) -> tuple[str | None, str | None, str | None, list[str]]:
    """(x, facet rows, facet columns, folded): x is the first price axis if any, else
    the first axis; ``growth`` makes the rows and ``fail`` the columns when present,
    otherwise the next axes in grid order; a fourth axis and on are folded."""
    rest = list(axes)
    x = next((a for a in rest if _is_price(a)), rest[0] if rest else None)
    if x is not None:
        rest.remove(x)
    row = "growth" if "growth" in rest else (rest[0] if rest else None)
    if row is not None:
        rest.remove(row)
    col = "fail" if "fail" in rest else (rest[0] if rest else None)
    if col is not None:
        rest.remove(col)
    return x, row, col, rest


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _worst_tier(r: dict[str, Any]) -> tuple[float | None, str | None, float | None]:
    worst: tuple[float | None, str | None, float | None] = (None, None, None)
    for k, v in r.items():
        a = _finite(v) if k.endswith(ATTAINMENT_SUFFIX) else None
        if a is None:
            continue
        tier = k[: -len(ATTAINMENT_SUFFIX)]
        if worst[0] is None or a < worst[0]:
            worst = (a, tier, _finite(r.get(tier + TARGET_SUFFIX)))
    return worst


def sweep_facets(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> SweepFacets:
    """The faceted view of a sweep's ok rows over its grid ``axes`` (in grid order)."""
    x_axis, row_axis, col_axis, folded = choose_axes(axes)
    ok = [r for r in rows if r.get("status", "ok") == "ok"]

    def values(axis: str | None) -> list[str]:
        return list(dict.fromkeys(_label(r.get(axis)) for r in ok)) if axis else [""]

    rs, cs, xs = values(row_axis), values(col_axis), values(x_axis)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in ok:
        key = tuple(_label(r.get(a)) if a else "" for a in (row_axis, col_axis, x_axis))
        groups.setdefault((key[0], key[1], key[2]), []).append(r)
    cells = []
    for (row, col, x), members in groups.items():
        costs = [c for m in members if (c := _finite(m.get("plan_usd_per_month"))) is not None]
        fleet = [c for m in members
                 if (c := _finite(m.get("plan_fleet_usd_per_month"))) is not None]
        worst = min((_worst_tier(m) for m in members),
                    key=lambda w: math.inf if w[0] is None else w[0])
        cells.append(FacetCell(row=row, col=col, x=x,
                               points=[int(m.get("point", -1)) for m in members],
                               plan_usd_per_month=max(costs) if costs else None,
                               fleet_usd_per_month=max(fleet) if fleet else None,
                               worst_attainment=worst[0], worst_tier=worst[1],
                               target=worst[2]))
    targets = [t for r in ok for k, v in r.items()
               if k.endswith(TARGET_SUFFIX) and (t := _finite(v)) is not None]
    return SweepFacets(x_axis=x_axis, row_axis=row_axis, col_axis=col_axis, rows=rs,
                       cols=cs, xs=xs, cells=cells, folded_axes=folded,
                       slo_target=max(targets) if targets else None)
