"""Against a real Ray cluster started with token authentication: `sweep --address` without
the token fails with one line that names the settings to use, and those settings connect.
(`tests/sim/test_ray_hint.py` checks the hint's wording without a cluster.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tokenfleet-test-0123456789abcdef0123456789abcdef"  # any string works as a token
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tuple(int(x) for x in ray.__version__.split(".")[:2]) < (2, 52),
                       reason="Ray token authentication arrived in Ray 2.52"),
    pytest.mark.skipif(not (BIN / "ray").exists(), reason="no `ray` script next to Python"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = str(ROOT / "src")
    return {**env, **extra}


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-CPU Ray head that wants TOKEN, in its own session and temp dir."""
    port, tmp = _free_port(), tmp_path_factory.mktemp("ray")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}",
         "--node-ip-address=127.0.0.1"],
        env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline_s = time.monotonic() + 120
        while time.monotonic() < deadline_s:  # the head is up once its GCS port listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(1)
        else:
            pytest.fail("the Ray head did not listen within 120 s")
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # its own session: the head and its services
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_sweep_without_the_token_names_the_setting(token_cluster: str, tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "tokenfleet"), "sweep", "benchmarks/sweep_example.yaml",
                        "--out", str(tmp_path / "s.parquet"), "--address", token_cluster],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "RAY_AUTH_MODE=token" in error[0] and "RAY_AUTH_TOKEN" in error[0], error[0]


def test_the_named_setting_connects(token_cluster: str) -> None:
    probe = ("from tokenfleet.sim.distributed import ray_session\n"
             f"with ray_session(address={token_cluster!r}) as ray:\n"
             "    print('CPUS', ray.cluster_resources().get('CPU'))\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                       env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN), timeout=300)
    assert r.returncode == 0 and "CPUS 1.0" in r.stdout, r.stderr[-2000:]
