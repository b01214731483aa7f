"""The sweep's faceted view: which axis goes where, and each cell's numbers by hand."""

from __future__ import annotations

from typing import Any

from tokenfleet.sim.sweep_facets import choose_axes, sweep_facets

PRICE = "set:supply.maia-200.price"


def _row(i: int, price: float, growth: float, fail: str, chat: float, large: float,
         usd: float, status: str = "ok") -> dict[str, Any]:
    return {"point": i, "status": status, PRICE: price, "growth": growth, "fail": fail,
            "chat.slo_attainment": chat, "chat.slo_target": 0.99,
            "large.slo_attainment": large, "large.slo_target": 0.9,
            "plan_usd_per_month": usd, "plan_fleet_usd_per_month": usd / 2}


def test_price_goes_along_x_growth_in_rows_failure_in_columns() -> None:
    assert choose_axes(["fail", "growth", PRICE]) == (PRICE, "growth", "fail", [])
    assert choose_axes(["policy", "seed"]) == ("policy", "seed", None, [])
    assert choose_axes(["growth", "fail", "price:h100-sxm", "seed"]) == (
        "price:h100-sxm", "growth", "fail", ["seed"])
    assert choose_axes([]) == (None, None, None, [])


def test_each_cell_holds_its_points_worst_tier_and_target() -> None:
    rows = [_row(0, 3.0, 1.0, "none", 0.995, 0.97, 1.0e6),
            _row(1, 5.0, 1.0, "none", 0.98, 0.95, 1.2e6),
            _row(2, 3.0, 1.5, "vendor=NVIDIA", 0.999, 0.85, 1.5e6),
            _row(3, 5.0, 1.5, "vendor=NVIDIA", 0.0, 0.0, 0.0, status="error")]
    fx = sweep_facets(rows, [PRICE, "growth", "fail"])
    assert (fx.x_axis, fx.row_axis, fx.col_axis) == (PRICE, "growth", "fail")
    assert fx.rows == ["1.0", "1.5"] and fx.cols == ["none", "vendor=NVIDIA"]
    assert fx.xs == ["3.0", "5.0"]  # the failed point adds no x value of its own
    assert fx.slo_target == 0.99
    a, b = fx.cell("1.0", "none")
    # point 0: large (0.97) is below chat (0.995); large is held to 0.9
    assert (a.points, a.worst_tier, a.worst_attainment, a.target) == ([0], "large", 0.97, 0.9)
    assert a.meets_slo is True and a.plan_usd_per_month == 1.0e6
    assert a.fleet_usd_per_month == 0.5e6
    assert (b.worst_tier, b.worst_attainment, b.meets_slo) == ("large", 0.95, True)
    (c,) = fx.cell("1.5", "vendor=NVIDIA")
    assert (c.worst_tier, c.worst_attainment, c.meets_slo) == ("large", 0.85, False)
    assert fx.cell("1.0", "vendor=NVIDIA") == [] and fx.cell("1.5", "none") == []


def test_a_fourth_axis_folds_into_the_worst_of_its_values() -> None:
    rows = [{**_row(0, 3.0, 1.0, "none", 0.995, 0.99, 1.0e6), "seed": 0},
            {**_row(1, 3.0, 1.0, "none", 0.96, 0.99, 1.1e6), "seed": 1}]
    fx = sweep_facets(rows, [PRICE, "growth", "fail", "seed"])
    assert fx.folded_axes == ["seed"]
    (cell,) = fx.cells
    assert cell.points == [0, 1]
    assert (cell.worst_tier, cell.worst_attainment, cell.target) == ("chat", 0.96, 0.99)
    assert cell.meets_slo is False and cell.plan_usd_per_month == 1.1e6
    assert cell.fleet_usd_per_month == 0.55e6
