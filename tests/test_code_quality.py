"""The code stays lint-clean and type-checks (the style guide's gates, run in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_finds_nothing_in_the_package() -> None:
    r = _run("mypy", "src/tokenfleet")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
