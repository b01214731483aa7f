"""A self-contained HTML page with Plotly figures: no network access at view time.

plotly.js is inlined once; each figure is a ``<div>`` plus a ``Plotly.newPlot`` call.
Two hooks make rendering checkable by a headless browser's dumped DOM: JavaScript
errors are recorded in the hidden ``#tf-errors`` element, and each plot ``<div>`` gets
``data-rendered="1"`` once its ``newPlot`` promise resolves.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

PLOT_CLASS = "tf-plot"
ERRORS_ID = "tf-errors"


def esc(value: object) -> str:
    """Text for HTML element content or a quoted attribute."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Figure:
    """One plot: a DOM id, a caption, and the Plotly figure."""

    id: str
    caption: str
    figure: go.Figure


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    # ~4.8 MB; cached because a report run may render several pages
    return plotly.offline.get_plotlyjs()


def _script_json(obj: Any) -> str:
    """JSON safe to place inside <script>: '<', '>' and '&' only occur inside JSON
    strings, where the \\uXXXX forms mean the same, so no '</script>' can end the block."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _figure_spec(fig: go.Figure) -> dict[str, Any]:
    # plotly.io's encoder handles numpy and dates; a round trip gives plain JSON types
    spec = json.loads(pio.to_json(fig, validate=True))
    return {"data": spec.get("data", []), "layout": spec.get("layout", {}),
            "config": {"displaylogo": False, "responsive": True,
                       "modeBarButtonsToRemove": ["lasso2d", "select2d"]}}


# Runs before plotly.js so errors while it loads are caught too. #tf-errors does not
# exist yet at that point, so messages wait in a queue until the body is parsed.
_ERROR_HOOK = f"""
(function () {{
  var pending = [];
  function record(msg) {{
    var box = document.getElementById("{ERRORS_ID}");
    if (!box) {{ pending.push(String(msg)); return; }}
    var item = document.createElement("li");
    item.textContent = String(msg);
    box.appendChild(item);
  }}
  window.tfRecordError = record;
  window.onerror = function (msg, src, line, col, err) {{
    record("error: " + msg + " at " + src + ":" + line + ":" + col +
           (err && err.stack ? "\\n" + err.stack : ""));
  }};
  window.addEventListener("unhandledrejection", function (ev) {{
    var r = ev.reason;
    record("unhandled rejection: " + (r && (r.stack || r.message) || r));
  }});
  document.addEventListener("DOMContentLoaded", function () {{
    pending.splice(0).forEach(record);
  }});
}})();
"""

_PLOT_HOOK = """
function tfPlot(id, spec) {
  var el = document.getElementById(id);
  try {
    Plotly.newPlot(el, spec.data, spec.layout, spec.config).then(function () {
      el.setAttribute("data-rendered", "1");
    }, function (err) {
      window.tfRecordError("newPlot " + id + ": " + (err && err.message || err));
    });
  } catch (err) {
    window.tfRecordError("newPlot " + id + ": " + (err && err.stack || err));
  }
}
"""

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#d9dee5; --bg:#f6f7f9; --card:#fff;
        --accent:#2f5d8a; --warn:#a23b16; --ok:#2e7d32; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
             Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 6px; }
p.lede, .muted { color: var(--muted); }
.cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr));
         gap: 12px; margin: 16px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
        padding: 10px 14px; }
.card .k { color:var(--muted); font-size: 12px; text-transform: uppercase;
           letter-spacing: .04em; }
.card .v { font-size: 21px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .s { color:var(--muted); font-size: 13px; }
.plots { display:grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr));
         gap: 16px; }
figure { margin:0; background:var(--card); border:1px solid var(--line);
         border-radius:8px; padding: 10px; }
figcaption { color:var(--muted); font-size: 13px; padding: 4px 6px 0; }
.tf-plot { width: 100%; height: 380px; }
.table-wrap { overflow-x:auto; background:var(--card); border:1px solid var(--line);
              border-radius:8px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background:#eef1f5; font-weight:600; position: sticky; top: 0; }
tr:nth-child(even) td { background:#fafbfc; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
td, th { overflow-wrap: anywhere; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 12.5px; }
/* ids such as tier/chip/cloud/region/precision/xN break at any character rather than
   push the table's last columns out of view */
td .mono { word-break: break-all; }
table.kv { width: auto; font-size: 12.5px; margin: 0; }
table.kv th, table.kv td { padding: 1px 8px 1px 0; border: 0; background: none;
                           position: static; }
.badge { display:inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
         border:1px solid var(--line); background:#eef1f5; white-space: nowrap; }
.badge.calibrated { background:#e3f2e5; border-color:#a5d6a7; }
.badge.extrapolated { background:#fff4e0; border-color:#f3c37a; }
.badge.spec-sheet, .badge.binding { background:#fde8e4; border-color:#f0a99a; }
.warn { color: var(--warn); }
.ok { color: var(--ok); }
ul.findings li { margin: 3px 0; }
details > summary { cursor: pointer; color: var(--accent); margin: 4px 0 8px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def page(title: str, body: str, figures: Sequence[Figure]) -> str:
    """The whole document: head with hooks and plotly.js, ``body`` (already escaped
    HTML), and one ``tfPlot`` call per figure after the body is parsed."""
    calls = "\n".join(f"tfPlot({_script_json(f.id)}, {_script_json(_figure_spec(f.figure))});"
                      for f in figures)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n"
        f"<script>{_ERROR_HOOK}</script>\n"
        f"<script>{_plotly_js()}</script>\n</head>\n<body>\n"
        f"<ol id=\"{ERRORS_ID}\" hidden></ol>\n<main>\n{body}\n</main>\n"
        f"<script>{_PLOT_HOOK}\n{calls}\n</script>\n</body>\n</html>\n")


def figure_html(f: Figure) -> str:
    """The placeholder a figure renders into, with its caption. A figure that sets its
    own height gets a box that tall: Plotly draws at the layout's height whatever the
    box, and a shorter box let the plot spill over the next card."""
    h = f.figure.layout.height
    style = f" style=\"height:{int(h)}px\"" if h else ""
    return (f"<figure><div id=\"{esc(f.id)}\" class=\"{PLOT_CLASS}\"{style}></div>"
            f"<figcaption>{esc(f.caption)}</figcaption></figure>")


def table(headers: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]],
          empty: str = "none") -> str:
    """A table; ``headers`` are (escaped label, numeric?) and cells are escaped HTML."""
    head = "".join(f"<th class=\"num\">{h}</th>" if num else f"<th>{h}</th>"
                   for h, num in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{c}</td>" if headers[i][1] else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f"<tr><td colspan=\"{len(headers)}\" class=\"muted\">{esc(empty)}</td></tr>")
    return (f"<div class=\"table-wrap\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")
