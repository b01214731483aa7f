"""The README's "From plan to running fleet" block runs as written: plan -> export ->
emulate every pool -> serve -> loadtest, and the load test completes requests of every
tier without errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def walkthrough_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From plan to running fleet", 1)[1]
    hit = re.search(r"```bash\n(.*?)```", section, re.S)
    assert hit, "README has no bash block under 'From plan to running fleet'"
    return hit.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README block uses curl")
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", "-e", "-c", walkthrough_block()], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        # The block starts servers in the background: end the whole group, whatever happened.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, out[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    pools = {u["pool"] for u in plan["units"] if u["replicas"]}
    exported = yaml.safe_load((tmp_path / "deploy/backends.yaml").read_text())
    assert set(exported["pools"]) == pools
    assert len(list((tmp_path / "deploy/k8s").glob("*.yaml"))) == len(plan["units"])
    local = yaml.safe_load((tmp_path / "backends.yaml").read_text())
    assert set(local["pools"]) == pools
    summary = json.loads((tmp_path / "loadtest.json").read_text())
    assert summary["requests"] > 20
    assert summary["failed"] == 0 and summary["completed"] == summary["requests"], summary
    assert {t for t, r in summary["tiers"].items() if r["completed"]} == {"small", "medium",
                                                                          "large"}
