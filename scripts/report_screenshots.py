"""Render every HTML page tokenfleet writes for the bundled example and screenshot it
in headless Chromium at 1,400 px wide, into docs/screenshots/ (referenced from the
README).

    python scripts/report_screenshots.py      # needs `chromium` (scripts/ci-system-deps.sh)

Runs: tokenfleet plan examples/frontier-lab.yaml; tokenfleet simulate plan.json
--scenario examples/frontier-lab.yaml --duration 300; tokenfleet sweep on a 2 x 2 x 2 grid
(Maia 200 price x growth, re-planned; each replayed with NVIDIA up and down).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
TF = str(Path(sys.executable).parent / "tokenfleet")
# re-plans each point (price x growth), then replays it with a vendor down or not: the
# sweep page's faceted view (growth x failure panels, price along x)
GRID = """scenario: {scenario}
traffic: {{scenario: true, duration: 60}}
grid:
  set:supply.maia-200.price: [4.0, 6.0]
  growth: [1.0, 1.5]
  fail: [none, vendor=NVIDIA]
"""


def run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def shot(page: Path, png: Path, height: int, work: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium is not installed (bash scripts/ci-system-deps.sh)")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={work / 'profile'}", "--virtual-time-budget=10000",
                    f"--window-size=1400,{height}", f"--screenshot={png}",
                    page.resolve().as_uri()], check=True, capture_output=True)
    print(f"wrote {png.relative_to(ROOT)}")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        w = Path(d)
        run(TF, "plan", str(ROOT / "examples/frontier-lab.yaml"), "--out", "plan.json", cwd=w)
        run(TF, "simulate", "plan.json", "--scenario", str(ROOT / "examples/frontier-lab.yaml"),
            "--duration", "300", "--out", "sim", cwd=w)
        (w / "grid.yaml").write_text(GRID.format(scenario=ROOT / "examples/frontier-lab.yaml"))
        run(TF, "sweep", "grid.yaml", "--out", "sweep.parquet", "--workers", "2", cwd=w)
        shot(w / "plan.html", OUT / "plan-report.png", 3800, w)
        shot(w / "sim/report.html", OUT / "simulation-report.png", 2400, w)
        shot(w / "sweep.html", OUT / "sweep-report.png", 1700, w)


if __name__ == "__main__":
    main()
