"""The README's "Python API" block runs as written, and `import tokenfleet` loads none of
the entry points until they are used."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tokenfleet

ROOT = Path(__file__).resolve().parents[1]


def test_every_export_resolves() -> None:
    for name in tokenfleet.__all__:
        assert getattr(tokenfleet, name) is not None, name


def test_import_is_lazy() -> None:
    r = subprocess.run([sys.executable, "-c", "import sys, tokenfleet; "
                        "print(sorted(m for m in sys.modules if m.startswith(('numpy', "
                        "'tokenfleet.perf', 'tokenfleet.plan', 'tokenfleet.sim'))))"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout


def test_readme_python_block_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert block, "README has no Python API block"
    r = subprocess.run([sys.executable, "-c", block.group(1)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "requests completed" in r.stdout and "files, e.g." in r.stdout
