"""Every page the project renders, in headless Chromium at 1,400 px: no table hides
columns, no plot spills out of its figure, nothing is clipped."""

from __future__ import annotations

from pathlib import Path

from tokenfleet.perf.unit import Layout
from tokenfleet.plan.schema import Plan
from tokenfleet.plan.tradeoffs import (
    FrontierPoint,
    SensitivityPoint,
    Tradeoffs,
    mark_efficient,
)
from tokenfleet.report.plan_charts import tradeoff_figures
from tokenfleet.report.plan_html import write_plan_report

from .overflow import overflows


def test_the_probe_sees_a_table_too_wide_for_its_box(tmp_path: Path) -> None:
    cells = "".join(f"<td>{'wide-cell-' * 8}{i}</td>" for i in range(12))
    page = tmp_path / "wide.html"
    page.write_text("<!DOCTYPE html><html><head><style>.table-wrap{overflow-x:auto;"
                    "width:600px}td{white-space:nowrap}</style></head><body><main>"
                    f"<h2>Wide</h2><div class='table-wrap'><table><tr>{cells}</tr></table>"
                    "</div></main></body></html>")
    bad = overflows(page, tmp_path)
    assert any("columns hidden" in b and "Wide" in b for b in bad), bad


def test_plan_report_fits_at_1400px(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    write_plan_report(plan, out)
    assert overflows(out, tmp_path) == []


def test_simulation_report_fits_at_1400px(plan: Plan, tmp_path: Path) -> None:
    import subprocess
    import sys

    units = [u.model_copy(update={"layout": Layout(tp=u.layout.tp)})
             for u in plan.units]
    (tmp_path / "plan.json").write_text(plan.model_copy(update={"units": units})
                                        .model_dump_json())
    tf = str(Path(sys.executable).parent / "tokenfleet")
    r = subprocess.run([tf, "simulate", "plan.json", "--duration", "60", "--out", "sim"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert overflows(tmp_path / "sim/report.html", tmp_path) == []


def test_sweep_report_fits_at_1400px(tmp_path: Path) -> None:
    from tokenfleet.report.sweep_html import write_sweep
    from tokenfleet.sim.sweep import GridSpec

    spec = GridSpec(plan="plan.json", grid={
        "set:supply.maia-200.price": [3.0, 4.0, 5.0], "growth": [1.0, 1.5],
        "fail": ["none", "vendor=NVIDIA", "vendor=Microsoft"]})
    rows = [{"point": i, "status": "ok", "set:supply.maia-200.price": p, "growth": g,
             "fail": f, "chat.slo_attainment": 0.99 - 0.01 * i, "chat.slo_target": 0.99,
             "cost_usd": 10.0 + i,
             "plan_usd_per_month": 1e6 + 1e4 * i}
            for i, (p, g, f) in enumerate((p, g, f) for p in (3.0, 4.0, 5.0)
                                          for g in (1.0, 1.5)
                                          for f in ("none", "vendor=NVIDIA",
                                                    "vendor=Microsoft"))]
    _, html_path = write_sweep(rows, spec, tmp_path / "sweep.parquet")
    assert overflows(html_path, tmp_path) == []
    text = html_path.read_text()
    assert "plan $/month" in text
    assert 'id="sweep-facets"' in text and "SLO target 99%" in text


def test_tokens_per_dollar_by_chip_by_hand(plan: Plan) -> None:
    from tokenfleet.report.plan_figures import tokens_per_usd_fig

    # h100-sxm pools: A serves 0.6 x 10 req/s of 200+100 tokens and 0.75 x 2 of 2000+100,
    # D 0.25 x 12 of 300+50: 1,800 + 3,150 + 1,050 = 6,000 tokens/s = 21.6 M/h for
    # 12 + 4 = 16 $/h -> 1.35 M tokens per $.
    bar = tokens_per_usd_fig(plan).figure.data[0]
    got = dict(zip(bar.x, bar.y, strict=True))
    assert abs(got["h100-sxm"] - 1.35) < 1e-9


def _tradeoffs() -> Tradeoffs:
    frontier = [FrontierPoint(confidence=q, usd_per_month=usd, fleet_usd_per_month=fleet,
                              worst_tier_holds=h, worst_tier="chat", efficient=e)
                for q, usd, fleet, h, e in ((0.5, 43_140.0, 30_000.0, 0.4, False),
                                            (0.9, 43_140.0, 35_040.0, 0.88, False),
                                            (0.99, 50_000.0, 50_000.0, 0.97, True))]
    frontier = mark_efficient(frontier)
    sens = [SensitivityPoint(input=i, factor=k, usd_per_month=u, fleet_usd_per_month=f,
                             change=None if u is None else u / 43_140.0 - 1)
            for i, k, u, f in (("price", 0.8, 43_140.0, 28_032.0),
                               ("price", 1.2, 44_808.0, 42_048.0),
                               ("growth", 0.8, 40_000.0, 30_000.0),
                               ("growth", 1.25, None, None),
                               ("uncertainty", 0.5, 43_140.0, 33_000.0),
                               ("uncertainty", 1.5, 47_000.0, 40_000.0))]
    return Tradeoffs(base_usd_per_month=43_140.0, base_fleet_usd_per_month=35_040.0,
                     confidence=0.9, frontier=frontier, sensitivity=sens, solves=9)


def test_plan_report_with_tradeoff_charts_fits_at_1400px(plan: Plan, tmp_path: Path) -> None:
    assert tradeoff_figures(plan) == []  # no tradeoffs in plan.json: no charts
    plan = plan.model_copy(update={"tradeoffs": _tradeoffs()})
    figs = {f.id: f for f in tradeoff_figures(plan)}
    assert set(figs) == {"fig-frontier", "fig-sensitivity"}
    bill, fleet = (figs["fig-frontier"].figure.data[i] for i in (1, 0))
    assert list(bill.x) == [43_140.0, 43_140.0, 50_000.0]
    assert list(fleet.x) == [30_000.0, 35_040.0, 50_000.0]
    # 0.9 is as cheap as 0.5 and surer; 0.99 is the surest: both efficient, 0.5 not
    assert list(bill.marker.color)[0] == "white" and list(bill.marker.color)[1] != "white"
    assert "q = " not in figs["fig-frontier"].caption
    assert "No feasible plan: traffic ×1.25" in figs["fig-sensitivity"].caption
    out = tmp_path / "plan.html"
    write_plan_report(plan, out)
    assert overflows(out, tmp_path) == []
