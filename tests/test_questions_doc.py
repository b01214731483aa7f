"""Every command in docs/questions.md runs on the example and prints the line that
answers its question (the `expect:` comments under it: each checks the substance of the
answer, e.g. that a power cap binds and is priced in $ and per MW, or that a saving comes
with its band)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "questions.md"
TIMEOUT_S = 600


def _commands() -> list[tuple[str, list[str]]]:
    """(command, expected regexes) in document order."""
    out: list[tuple[str, list[str]]] = []
    in_console = False
    for line in DOC.read_text().splitlines():
        if line.startswith("```console"):
            in_console = True
        elif line.startswith("```"):
            in_console = False
        elif in_console and line.startswith("$ tokenfleet "):
            out.append((line[2:], []))
        elif (m := re.match(r"<!-- expect: (.*) -->$", line)) and out:
            out[-1][1].append(m.group(1))
    return out


def _run(cmd: str, cwd: Path) -> str:
    args = shlex.split(cmd)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "400"}
    r = subprocess.run([sys.executable, "-m", "tokenfleet.cli", *args[1:]], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


def test_every_command_in_the_questions_doc_answers(tmp_path):
    cmds = _commands()
    assert len(cmds) >= 10 and all(expect for _, expect in cmds), cmds
    # the page says its plans skip the simulator check (--no-verify); keep it true, and fast
    assert all("--no-verify" in c for c, _ in cmds if c.startswith("tokenfleet plan ")), cmds
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    # the first command writes plan.json, which later ones compare against; the rest are
    # independent, so they run side by side
    outputs = [_run(cmds[0][0], tmp_path)]
    with ThreadPoolExecutor(max(1, min(len(cmds) - 1, os.cpu_count() or 1))) as pool:
        outputs += list(pool.map(lambda c: _run(c[0], tmp_path), cmds[1:]))
    for (cmd, expect), text in zip(cmds, outputs, strict=True):
        flat = " ".join(text.split())  # tables wrap; the answer lines are matched unwrapped
        for pattern in expect:
            assert re.search(pattern, flat), f"{cmd}: no match for {pattern!r} in:\n{text[-3000:]}"
