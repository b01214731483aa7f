"""`--json` output is one JSON document on stdout: HiGHS prints its banner from C on
file descriptor 1 when the first solver is made; it must not reach stdout (nor open
every printed plan on stderr)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import json
from tokenfleet.plan.highs import _new_highs
_new_highs(); _new_highs()
print(json.dumps({"ok": True}))
"""


def test_highs_banner_is_kept_off_stdout_and_stderr() -> None:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"ok": true}\n'
    assert "HiGHS" not in r.stderr
    # the control: without the redirect the banner does reach stdout
    raw = subprocess.run([sys.executable, "-c", "import highspy; highspy.Highs()"],
                         capture_output=True, text=True, timeout=60)
    assert "HiGHS" in raw.stdout
