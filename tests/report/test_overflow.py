"""Every page the project renders, in headless Chromium at 1,400 px: no table hides
columns, no plot spills out of its figure, nothing is clipped."""

from __future__ import annotations

from pathlib import Path

from tokenfleet.perf.unit import Layout
from tokenfleet.plan.schema import Plan
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
