"""The three commands as a user runs them: separate processes over loopback, one
emulated pool killed with SIGKILL mid-run, and `loadtest --json` accounting for
every request."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenfleet.cli import app
from tokenfleet.route.child import TOKENFLEET, ChildProcess

from .conftest import BUCKET, make_plan, unit

MODEL = "llama-3.1-70b"


@pytest.mark.parametrize("cmd, words", [
    ("serve", ["--plan", "--backends", "--api-keys-file", "--policy"]),
    ("emulate", ["--accelerator", "--replicas", "--port", "--error-rate", "--slowdown"]),
    ("loadtest", ["--trace", "--target", "--rate", "--json"]),
])
def test_help_teaches_the_flags(cmd, words):
    out = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for w in words:
        assert w in out.output


def test_bad_invocations_are_clear_errors(tmp_path):
    r = subprocess.run([*TOKENFLEET, "serve", "--plan", str(tmp_path / "nope.json"),
                        "--backends", str(tmp_path / "b.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read plan" in r.stderr
    r = subprocess.run([*TOKENFLEET, "emulate", "--model", MODEL, "--accelerator", "no-chip"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no-chip" in r.stderr


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=5) as r:  # loopback only
        return json.loads(r.read())


def test_serve_emulate_loadtest_with_a_pool_killed(tmp_path: Path):
    plan = make_plan([unit("chat/maia-200", accelerator="maia-200", usd_per_hour=8.0,
                           model=MODEL),
                      unit("chat/mi300x", accelerator="mi300x", usd_per_hour=10.0,
                           model=MODEL)],
                     {("chat", BUCKET): {"chat/maia-200": 0.6, "chat/mi300x": 0.4}})
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    procs: list[ChildProcess] = []
    try:
        emus = {}
        for pool, accel in (("chat/maia-200", "maia-200"), ("chat/mi300x", "mi300x")):
            procs.append(ChildProcess([*TOKENFLEET, "emulate", "--accelerator", accel, "--model",
                                MODEL, "--port", "0", "--json"]))
            emus[pool] = procs[-1]
        urls = {pool: json.loads(p.wait_for(r"^\{.*\"url\".*\}$").group(0))["url"]
                for pool, p in emus.items()}
        (tmp_path / "backends.yaml").write_text(
            "gateway:\n  health: {interval_s: 0.25}\npools:\n" + "".join(
                f"  {pool}: {{backends: [{url}]}}\n" for pool, url in urls.items()))
        gw = ChildProcess([*TOKENFLEET, "serve", "--plan", str(tmp_path / "plan.json"),
                    "--backends", str(tmp_path / "backends.yaml"), "--port", "0"])
        procs.append(gw)
        target = gw.wait_for(r"gateway on (http://127\.0\.0\.1:\d+)").group(1)

        load = ChildProcess([*TOKENFLEET, "loadtest", "--target", target, "--rate", "25",
                      "--duration", "3", "--input-tokens", "200", "--output-tokens", "10",
                      "--json", "--out", str(tmp_path / "summary.json")])
        procs.append(load)
        # Kill the maia pool once it is serving (the client takes ~1.5 s to start).
        victim = urls["chat/maia-200"]
        end = time.monotonic() + 30
        while _stats(victim)["completed"] < 3 or _stats(victim)["running"] < 1:
            assert time.monotonic() < end, "the load never reached the maia pool"
            time.sleep(0.02)
        emus["chat/maia-200"].p.send_signal(signal.SIGKILL)
        assert load.p.wait(60) == 0, "".join(load.lines)
        summary = json.loads((tmp_path / "summary.json").read_text())
        with urllib.request.urlopen(target + "/metrics", timeout=5) as r:  # loopback only
            metrics = r.read().decode()
    finally:
        for p in procs:
            p.stop()
    assert summary["requests"] > 40
    assert summary["completed"] + summary["rejected"] + summary["failed"] == summary["requests"]
    assert summary["rejected"] == 0
    # Only streams cut by the crash failed, each with an error event; the rest completed.
    assert set(summary["errors"]) <= {"stream_error"}
    assert summary["completed"] >= summary["requests"] - 10
    # The kill landed mid-run: requests in flight there failed, were retried by the
    # client, or (streams) were resumed elsewhere by the gateway, which counts that.
    gateway_saw = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith(("tokenfleet_gateway_errors_total{",
                                          "tokenfleet_gateway_stream_resumes_total{")))
    assert summary["failed"] + summary["retried"] + gateway_saw >= 1
    chat = summary["tiers"]["chat"]
    assert chat["ttft_s"]["p50"] > 0 and chat["tpot_s"]["p50"] > 0.01
    assert summary["cost_usd"] > 0 and summary["wall_s"] > 2.5
