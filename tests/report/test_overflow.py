"""Every page the project renders, in headless Chromium at 1,400 px: no table hides
columns, no plot spills out of its figure, nothing is clipped."""

from __future__ import annotations

from pathlib import Path

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
