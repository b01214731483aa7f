"""A browser-side check that nothing on a page overflows its box at a given width:
tables wider than their wrapper (columns hidden behind a scrollbar), plots wider or
taller than their figure, figures or cards that spill into their neighbours. The page
gets a script that, once the plots have rendered, writes what overflows as JSON into
``#tf-overflow``; headless Chromium's dumped DOM carries it back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import run_chromium

OVERFLOW_ID = "tf-overflow"

_SCRIPT = """
<script>
(function () {
  function box(el) { return el.getBoundingClientRect(); }
  function name(el) {
    var id = el.id ? "#" + el.id : "";
    var h = el.closest("section, figure, .table-wrap");
    var head = "";
    var prev = el.closest("figure") || el.closest(".table-wrap") || el;
    while (prev && !head) {
      prev = prev.previousElementSibling;
      if (prev && /^H[1-4]$/.test(prev.tagName)) head = prev.textContent.trim();
    }
    return el.tagName.toLowerCase() + id + (head ? " after '" + head.slice(0, 60) + "'" : "");
  }
  function check() {
    var bad = [];
    var mainBox = box(document.querySelector("main") || document.body);
    document.querySelectorAll(".table-wrap").forEach(function (w) {
      if (w.scrollWidth > w.clientWidth + 1)
        bad.push(name(w) + ": table " + w.scrollWidth + " px wide in a " + w.clientWidth +
                 " px box (columns hidden)");
    });
    document.querySelectorAll("figure").forEach(function (f) {
      var fb = box(f);
      f.querySelectorAll(".main-svg, .tf-plot, img, table").forEach(function (c) {
        var cb = box(c);
        if (cb.right > fb.right + 1 || cb.bottom > fb.bottom + 1 || cb.left < fb.left - 1)
          bad.push(name(f) + ": " + c.tagName.toLowerCase() + " " + Math.round(cb.width) +
                   "x" + Math.round(cb.height) + " spills out of its figure " +
                   Math.round(fb.width) + "x" + Math.round(fb.height));
      });
      if (fb.right > mainBox.right + 1)
        bad.push(name(f) + ": figure runs past the page's right edge");
    });
    document.querySelectorAll(".card, figure, .table-wrap").forEach(function (el) {
      if (el.scrollHeight > el.clientHeight + 1 && getComputedStyle(el).overflowY !== "auto")
        bad.push(name(el) + ": content " + el.scrollHeight + " px tall in " +
                 el.clientHeight + " px (clipped)");
      if (el.scrollWidth > el.clientWidth + 1 && !el.classList.contains("table-wrap"))
        bad.push(name(el) + ": content " + el.scrollWidth + " px wide in " + el.clientWidth +
                 " px");
    });
    var out = document.createElement("pre");
    out.id = "%(id)s";
    out.textContent = JSON.stringify(bad);
    document.body.appendChild(out);
  }
  window.addEventListener("load", function () { setTimeout(check, 2500); });
})();
</script>
"""


def overflows(page: Path, work: Path, width: int = 1400) -> list[str]:
    """What overflows on ``page`` in a ``width`` px wide window."""
    probe = work / (page.stem + ".overflow.html")
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", _SCRIPT % {"id": OVERFLOW_ID} + "</body>"),
                     encoding="utf-8")
    dom = run_chromium(probe, work, "--dump-dom", f"--window-size={width},1200")
    hit = re.search(rf'<pre id="{OVERFLOW_ID}">(.*?)</pre>', dom, re.S)
    assert hit, "the overflow probe did not run (page never finished loading?)"
    import html

    return json.loads(html.unescape(hit.group(1)))
