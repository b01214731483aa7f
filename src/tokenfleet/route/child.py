"""A child process of the CLI (`tokenfleet serve`, `emulate`, ...) watched from Python:
its output lines are collected, waited on by pattern, and it is stopped cleanly. Used by
the end-to-end tests and the gateway benchmark, which run the real commands."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TOKENFLEET = [sys.executable, "-m", "tokenfleet.cli"]


class ChildProcess:
    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        for stream in (self.p.stdout, self.p.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # noqa: ANN001 - a text pipe
        for line in stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        """The first output line matching ``pattern``; RuntimeError (with the output) if
        none appears within ``timeout_s`` seconds or the process exits."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"no line matching {pattern!r}; output:\n{''.join(self.lines)}")

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        """Resident memory, MiB (Linux /proc)."""
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout_s`` seconds."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout_s)


def simulate_and_loadtest(plan: Path, pools: list[str], trace: Path, workdir: Path,
                          tier: str = "chat", timeout_s: float = 600.0) -> tuple[dict, dict]:
    """Replay ``trace`` through ``plan`` twice — in the simulator, and live through
    emulated ``pools`` behind the gateway — and return both JSON summaries (sim, live).
    The same comparison serves the live-vs-sim test and the gateway benchmark."""
    import json

    sim = json.loads(subprocess.run(
        [*TOKENFLEET, "simulate", str(plan), "--trace", str(trace), "--tier", tier, "--json"],
        capture_output=True, text=True, timeout=timeout_s, check=True).stdout)
    procs: list[ChildProcess] = []
    try:
        urls = {}
        for pool in pools:
            procs.append(ChildProcess([*TOKENFLEET, "emulate", "--plan", str(plan), "--pool",
                                       pool, "--port", "0", "--json"]))
            urls[pool] = json.loads(procs[-1].wait_for(r"^\{.*\"url\".*\}$").group(0))["url"]
        backends = workdir / f"{plan.stem}_backends.yaml"  # next to the plan, no clash
        backends.write_text("pools:\n" + "".join(
            f"  {p}: {{backends: [{u}]}}\n" for p, u in urls.items()))
        procs.append(ChildProcess([*TOKENFLEET, "serve", "--plan", str(plan), "--backends",
                                   str(backends), "--port", "0", "--log-level", "warning"]))
        target = procs[-1].wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)
        live = json.loads(subprocess.run(
            [*TOKENFLEET, "loadtest", "--trace", str(trace), "--target", target, "--model",
             tier, "--json"],
            capture_output=True, text=True, timeout=timeout_s, check=True).stdout)
    finally:
        for p in procs:
            p.stop()
    return sim, live
