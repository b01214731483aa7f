"""The plan report: sections, escaping, numbers, consistency checks, and rendering in a
real headless Chromium (Debian's package)."""

from __future__ import annotations

import html
import re
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import plotly.offline
import pytest

from tokenfleet.plan.check import check_plan, pool_load
from tokenfleet.plan.schema import Plan, SolverInfo
from tokenfleet.report.html_page import ERRORS_ID, PLOT_CLASS, Figure, page
from tokenfleet.report.plan_figures import plan_figures
from tokenfleet.report.plan_html import render_plan_report, write_plan_report
from tokenfleet.report.plan_metrics import (
    mix_throughput,
    spend_by_cloud,
    usd_per_million_tokens,
)

from .conftest import EVIL_SCENARIO, EVIL_TIER, LONG, SHORT, run_chromium

REPO = Path(__file__).resolve().parents[2]
FIGURE_IDS = ["fig-cost-vendor", "fig-cost-cloud", "fig-chips", "fig-power", "fig-token-cost",
              "fig-vendor-share", "fig-tokens-per-usd", "fig-constraints", "fig-baselines"]


class Dom(HTMLParser):
    """Just enough of the DOM: every element's attributes, and the text of #tf-errors
    and of the document body (without scripts and styles)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self._in_errors = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag in ("img", "br", "meta", "link", "input", "hr"):
            return
        self._stack.append(tag)
        if a.get("id") == ERRORS_ID or self._in_errors:
            self._in_errors += 1

    def handle_endtag(self, tag: str) -> None:
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()
            if self._in_errors:
                self._in_errors -= 1

    def handle_data(self, data: str) -> None:
        if self._in_errors:
            self.errors.append(data)
        elif not (self._stack and self._stack[-1] in ("script", "style")):
            self.text.append(data)

    def by_class(self, cls: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if cls in (a.get("class") or "").split()]

    def by_id(self, id_: str) -> dict[str, str | None] | None:
        return next((a for _, a in self.elements if a.get("id") == id_), None)


def visible_text(doc: str) -> str:
    return " ".join(" ".join(Dom(doc).text).split())


# ---- structure ----------------------------------------------------------------------

def test_every_section_and_figure_present(plan: Plan) -> None:
    doc = render_plan_report(plan)
    dom = Dom(doc)
    for section in ("checks", "plots", "tiers", "pools", "traffic", "capacity", "constraints",
                    "baselines", "limits", "solver", "notes"):
        assert dom.by_id(section) is not None, section
    plots = dom.by_class(PLOT_CLASS)
    assert [p["id"] for p in plots] == FIGURE_IDS
    assert [f.id for f in plan_figures(plan)] == FIGURE_IDS
    # one newPlot call per figure, after the hooks are defined
    assert len(re.findall(r"^tfPlot\(", doc, flags=re.M)) == len(FIGURE_IDS)
    assert dom.by_id(ERRORS_ID) is not None and "hidden" in dom.by_id(ERRORS_ID)
    assert doc.index("window.onerror") < doc.index("tfPlot(\"fig-cost-vendor\"")
    assert "unhandledrejection" in doc and 'setAttribute("data-rendered", "1")' in doc


def test_self_contained_plotly_inlined_once(plan: Plan) -> None:
    doc = render_plan_report(plan)
    head = plotly.offline.get_plotlyjs()[:300]
    assert doc.count(head) == 1
    # nothing fetched at view time: no external scripts, styles, fonts or images
    page_only = doc.replace(plotly.offline.get_plotlyjs(), "")
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page_only)
    assert "@import" not in doc and "@font-face" not in doc


def test_write_creates_directory(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "plan.html"
    write_plan_report(plan, out)
    assert out.read_text(encoding="utf-8") == render_plan_report(plan)


def test_empty_fleet_renders(plan: Plan) -> None:
    # a plan with no pools (nothing to serve) must still give a readable report
    empty = plan.model_copy(update={
        "units": [], "traffic_split": [], "baselines": [], "constraints": [], "notes": [],
        "power_mw": {}, "vendor_share": {}, "solver": SolverInfo(),
        "cost": plan.cost.model_copy(update={"fleet_usd_per_month": 0.0,
                                             "committed_used_usd_per_month": 0.0,
                                             "on_demand_usd_per_month": 0.0,
                                             "usd_per_month": 30_000.0})})
    text = visible_text(render_plan_report(empty))
    assert "$30,000" in text and "unused $30,000" in text
    assert len(plan_figures(empty)) == len(FIGURE_IDS)


# ---- escaping -----------------------------------------------------------------------

def test_names_are_escaped_everywhere(plan: Plan) -> None:
    doc = render_plan_report(plan)
    for evil in (EVIL_SCENARIO, EVIL_TIER, "fp4 <b>forbidden</b>", "<assumptions>"):
        assert evil not in doc
    assert html.escape(EVIL_SCENARIO) in doc  # title, header
    assert html.escape(EVIL_TIER) in doc  # tier and pool tables
    # figure JSON: Plotly gets the escaped name, and its '&' is written \u0026 so no
    # string in a <script> can contain '</script>'
    assert "chat\\u0026lt;img" in doc
    # the only script elements are the page's own three
    plotly_js = plotly.offline.get_plotlyjs()
    assert doc.replace(plotly_js, "").count("<script") == 3
    assert visible_text(doc).count("fp4 <b>forbidden</b>") == 1


def test_plot_labels_escaped_for_plotly(plan: Plan) -> None:
    # Plotly renders a subset of HTML in labels: plan text must reach it escaped
    figs = {f.id: f.figure for f in plan_figures(plan)}
    names = [t.name for t in figs["fig-cost-vendor"].data]
    assert html.escape(EVIL_TIER, quote=False) in names and EVIL_TIER not in names


# ---- numbers ------------------------------------------------------------------------

def test_summary_and_tables_show_the_plans_numbers(plan: Plan) -> None:
    text = visible_text(render_plan_report(plan))
    assert "$43,140" in text  # bill
    assert "$30,000" in text and "used $21,900" in text and "unused $8,100" in text
    assert "$13,140" in text  # on-demand
    assert "$35,040" in text  # fleet at list
    assert "Optimal" in text and "gap 0.42% of the bill" in text
    assert "0.008 MW" in text  # 2.8 + 5.25 kW
    for u in plan.units:
        assert u.pool in text
    # pool A: 3 replicas, $8,760 / month, 2.1 kW, 90 % load, trust label
    assert re.search(r"chat/h100/aws/us-east/fp8/x1 h100-sxm \(NVIDIA\) aws/us-east fp8 KV "
                     r"fp8 tp1 3 1 3 \$4\.00 on-demand \$8,760 2\.1 90% calibrated ±10%", text)
    assert "spec-sheet ±50%" in text and "extrapolated ±30%" in text
    # traffic split and tiers
    assert "chat/mi300x/tw/us-west/fp8/x1 40.0%" in text
    assert "$3.111" in text and "$18.889" in text
    # constraints: priced, unpriced, binding
    assert "$1,234" in text or "$1,235" in text
    assert "$4,321" in text and "not priced" in text
    # baselines: relative to this plan, infeasible one
    assert "-7.3%" in text  # 40,000 / 43,140 - 1
    assert "NVIDIA supply cannot serve it" in text
    assert "All consistency checks passed" in text


def test_derived_numbers_by_hand(plan: Plan) -> None:
    assert plan.limits.hours_per_month == pytest.approx(730.0)
    clouds = {c.cloud: c for c in spend_by_cloud(plan)}
    assert clouds["azure"].committed_used_usd_per_month == pytest.approx(21_900)
    assert clouds["azure"].committed_unused_usd_per_month == pytest.approx(8_100)
    assert clouds["aws"].on_demand_usd_per_month == pytest.approx(16 * 730)
    assert sum(c.on_demand_usd_per_month for c in clouds.values()) == pytest.approx(
        plan.cost.on_demand_usd_per_month)
    assert pool_load(plan) == pytest.approx({u.pool: v for u, v in zip(
        plan.units, [0.9, 0.75, 0.75, 0.6], strict=True)})
    # pool A on the chat mix (10 req/s SHORT, 2 LONG): 1 / (10/12/5 + 2/12/1) = 3 req/s
    m = mix_throughput(plan.units[0], {SHORT: 10.0, LONG: 2.0})
    assert m.requests_per_s == pytest.approx(3.0)
    assert m.output_tokens_per_s == pytest.approx(300.0)
    assert m.coverage == 1.0
    cost = {(r.tier, r.accelerator): r for r in usd_per_million_tokens(plan)}
    h100 = cost[("chat", "h100-sxm")]
    assert h100.usd_per_m_tokens == pytest.approx(12 / 3600 / 900 * 1e6)
    point_rate = 1 / (10 / 12 / 6 + 2 / 12 / 1.25)
    assert h100.usd_per_m_tokens_point == pytest.approx(12 / 3600 / (point_rate * 300) * 1e6)
    assert cost[(EVIL_TIER, "maia-200")].coverage == 1.0
    # a pool without LONG capacity covers 10 of 12 req/s of the chat mix
    partial = mix_throughput(plan.units[2], {SHORT: 10.0, LONG: 2.0})
    assert partial.coverage == pytest.approx(10 / 12)
    assert partial.requests_per_s == pytest.approx(4.0)


def test_figure_data_matches_the_plan(plan: Plan) -> None:
    figs = {f.id: f.figure for f in plan_figures(plan)}
    vendor_total = sum(sum(t.y) for t in figs["fig-cost-vendor"].data)
    assert vendor_total == pytest.approx(plan.cost.fleet_usd_per_month)
    cloud = figs["fig-cost-cloud"].data
    assert sum(sum(t.y) for t in cloud) == pytest.approx(plan.cost.usd_per_month)
    chips = sum(sum(t.y) for t in figs["fig-chips"].data)
    assert chips == sum(u.chips for u in plan.units)
    used, caps = figs["fig-power"].data
    assert list(used.x) == ["eu-north", "us-east", "us-west"]
    assert list(used.y) == pytest.approx([0.0, 0.0028, 0.00525])
    assert list(caps.y) == pytest.approx([2.0, 1.0, 0.5])
    (bars,) = figs["fig-constraints"].data
    # the non-binding power cap that saves $0 is left out of the plot (not the table)
    assert dict(zip(bars.y, bars.x, strict=True)) == {
        "supply h100-sxm@aws/us-east": 1234.5, "vendor-share": 4321.0}
    (base,) = figs["fig-baselines"].data
    assert list(base.x)[::-1] == pytest.approx([43_140.0, 40_000.0, 0.0])
    assert "infeasible" in list(base.text)


# ---- consistency checks -------------------------------------------------------------

def test_checks_flag_a_broken_plan(plan: Plan) -> None:
    chat_pool = plan.units[0].pool
    broken = plan.model_copy(deep=True)
    # route some of the other tier's traffic to a chat pool (a real planner bug once),
    # overload a pool, and exceed a power cap
    broken.traffic_split[2].shares = {plan.units[2].pool: 0.5, chat_pool: 0.5}
    broken.traffic_split[0].shares = {chat_pool: 1.0}
    broken.power_mw["us-west"] = 0.75
    found = check_plan(broken)
    kinds = {f.check for f in found}
    assert {"pools serve their own tier", "load within capacity", "power within cap"} <= kinds
    text = visible_text(render_plan_report(broken))
    assert f"{len(found)} consistency check(s) failed" in text
    assert "a pool of tier 'chat'" in text
    assert check_plan(plan) == []


# ---- in a real browser ----------------------------------------------------------------

def _png_size_and_variety(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct sampled byte values) of an 8-bit PNG, by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = b"".join(data[i + 8:i + 8 + struct.unpack(">I", data[i:i + 4])[0]]
                    for i in [m.start() - 4 for m in re.finditer(b"IDAT", data)])
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[::101]))


def _assert_rendered(dom_text: str, n_figures: int) -> Dom:
    dom = Dom(dom_text)
    assert dom.by_id(ERRORS_ID) is not None, "no #tf-errors in the dumped DOM"
    assert "".join(dom.errors).strip() == "", f"JS errors: {dom.errors}"
    plots = dom.by_class(PLOT_CLASS)
    assert len(plots) == n_figures
    not_done = [p["id"] for p in plots if p.get("data-rendered") != "1"]
    assert not not_done, f"plots not rendered: {not_done}"
    # Plotly drew real SVG into each div
    assert dom_text.count("class=\"main-svg\"") >= n_figures
    return dom


def test_renders_in_headless_chromium(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    write_plan_report(plan, out)
    dumped = run_chromium(out, tmp_path, "--dump-dom")
    dom = _assert_rendered(dumped, len(plan_figures(plan)))
    body = next(a for t, a in dom.elements if t == "body")
    assert "data-pwned" not in body, "a plan name ran as script"


def test_screenshot_is_a_real_picture(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    write_plan_report(plan, out)
    shot = tmp_path / "plan.png"
    run_chromium(out, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400",
                 "--hide-scrollbars")
    assert shot.stat().st_size > 50_000
    width, height, variety = _png_size_and_variety(shot)
    assert (width, height) == (1400, 2400)
    assert variety > 50, "screenshot is (nearly) blank"


def test_browser_check_catches_errors_and_unrendered_plots(plan: Plan, tmp_path: Path) -> None:
    # Negative control: the hooks must report a thrown error and a plot whose div is
    # missing, or the passing browser test above proves nothing.
    fig = plan_figures(plan)[0]
    ghost = Figure("fig-ghost", "no div for this one", fig.figure)
    body = (f"<div id=\"{fig.id}\" class=\"{PLOT_CLASS}\"></div>"
            "<script>throw new Error('tf-canary');</script>")
    out = tmp_path / "broken.html"
    out.write_text(page("broken", body, [fig, ghost]), encoding="utf-8")
    dumped = run_chromium(out, tmp_path, "--dump-dom")
    with pytest.raises(AssertionError, match="JS errors"):
        _assert_rendered(dumped, 1)
    dom = Dom(dumped)
    errors = "\n".join(dom.errors)
    assert "tf-canary" in errors
    assert "newPlot fig-ghost" in errors
    assert dom.by_id(fig.id)["data-rendered"] == "1"


@pytest.mark.slow
def test_real_planner_example_renders(tmp_path: Path) -> None:
    """The CLI on the example scenario: plan.json + plan.html, rendered by Chromium."""
    out = tmp_path / "plan.json"
    report = tmp_path / "plan.html"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "tokenfleet"), "plan",
         str(REPO / "examples/frontier-lab.yaml"), "--out", str(out), "--report", str(report)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = Plan.model_validate_json(out.read_text())
    doc = report.read_text(encoding="utf-8")
    assert f"${plan.cost.usd_per_month:,.0f}" in visible_text(doc)
    assert check_plan(plan) == [], "the planner's output fails the report's checks"
    _assert_rendered(run_chromium(report, tmp_path, "--dump-dom"), len(plan_figures(plan)))
    shot = tmp_path / "plan.png"
    run_chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400",
                 "--hide-scrollbars")
    assert _png_size_and_variety(shot)[2] > 50
