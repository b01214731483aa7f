"""Safe file handling (atomic writes; binary input named in one line, exit code 2) and
the pure logic of limits and outlier detection."""

from __future__ import annotations

import os

import pytest

from tokenfleet.cli import main
from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import read_text, write_text
from tokenfleet.route.config import OutlierSettings
from tokenfleet.route.limits import Bucket, admit, release
from tokenfleet.route.outlier import LatencyStats, may_eject, relative_speed, slow_reason


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "plan.json"
    write_text(p, '{"old": true}')

    def crash(*_a: object) -> None:
        raise KeyboardInterrupt  # the process is stopped right before the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_text(p, '{"new": true}' * 1000)
    monkeypatch.undo()
    assert p.read_text() == '{"old": true}'
    assert [f.name for f in tmp_path.iterdir()] == ["plan.json"]  # no temp file left
    write_text(p, "new")
    assert p.read_text() == "new"


def test_binary_and_undecodable_files_are_named_in_one_line(tmp_path):
    b = tmp_path / "x.yaml"
    b.write_bytes(b"\x00\x01binary")
    with pytest.raises(TokenfleetError, match=r"x.yaml: this scenario is a binary file"):
        read_text(b, "scenario")
    b.write_bytes(b"\xff\xfe\x80 not utf-8")
    with pytest.raises(TokenfleetError, match="not UTF-8"):
        read_text(b, "scenario")


@pytest.mark.parametrize("argv", [
    ["plan", "{f}.yaml"], ["simulate", "{f}.json", "--duration", "5"],
    ["trace", "stats", "{f}.csv"],
    ["serve", "--plan", "{f}.json", "--backends", "{f}.yaml"],
])
def test_cli_answers_binary_input_with_one_line_and_exit_2(argv, tmp_path, capsys):
    for ext in ("yaml", "json", "csv"):
        (tmp_path / f"bin.{ext}").write_bytes(os.urandom(2000) + b"\x00")
    f = str(tmp_path / "bin")
    with pytest.raises(SystemExit) as e:
        main([a.format(f=f) for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "bin." in err


def test_token_buckets_refuse_with_retry_after_and_refill():
    b = Bucket("key k", requests_per_s=2, burst_requests=2, tokens_per_min=600, now=0.0)
    assert admit([b], 10, 0.0) is None and admit([b], 10, 0.0) is None
    r = admit([b], 10, 0.0)
    assert r is not None and r.what == "requests_per_s" and r.retry_after_s == 1
    assert admit([b], 10, 0.5) is None  # one request's worth refilled in 0.5 s
    big = admit([b], 10_000, 10.0)  # beyond a minute's tokens: charged a full bucket
    assert big is None and b.tokens is not None and b.tokens.level <= 0
    r = admit([b], 10, 10.0)
    assert r is not None and r.what == "tokens_per_min"


def test_a_refused_request_takes_nothing_from_its_other_scopes():
    key = Bucket("key k", requests_per_s=100, now=0.0)
    tier = Bucket("tier t", max_in_flight=1, now=0.0)
    assert admit([tier, key], 1, 0.0) is None
    level = key.requests.level if key.requests else 0
    assert admit([tier, key], 1, 0.0) is not None
    assert key.requests is not None and key.requests.level == level
    release([tier, key])
    assert admit([tier, key], 1, 0.0) is None


def test_outlier_detection_against_pool_peers():
    cfg = OutlierSettings()
    fast, slow, other = LatencyStats(), LatencyStats(), LatencyStats()
    for _ in range(cfg.min_samples):
        fast.add_tpot(0.02, cfg.ewma_alpha)
        other.add_tpot(0.025, cfg.ewma_alpha)
        slow.add_tpot(0.2, cfg.ewma_alpha)
    assert slow_reason(slow, [fast, other], cfg) is not None
    assert slow_reason(fast, [slow, other], cfg) is None
    assert relative_speed(slow, [fast, other], cfg) == pytest.approx(0.1125, rel=0.01)
    assert relative_speed(fast, [slow, other], cfg) == 1.0
    few = LatencyStats()
    few.add_tpot(1.0, cfg.ewma_alpha)
    assert slow_reason(few, [fast, other], cfg) is None  # too few samples to judge
    slow.ejected_until = 100.0
    assert not may_eject([fast, slow], 50.0, cfg)  # half the pool is out already
    assert may_eject([fast, slow, other, LatencyStats()], 50.0, cfg)


def test_loadtest_summary_says_what_to_fix_when_every_request_fails_alike():
    from tokenfleet.route.loadgen import LoadResult, RequestResult, summarize

    res = [RequestResult(tier="chat", outcome="failed", status=401, reason="http_401",
                         message="missing API key") for _ in range(5)]
    notes = summarize(LoadResult(res, 1.0)).notes
    assert any("all 5 requests failed with http_401" in n and "TOKENFLEET_API_KEYS" in n
               for n in notes)
    mixed = [*res, RequestResult(tier="chat", outcome="ok")]
    assert not any("requests failed with" in n for n in summarize(LoadResult(mixed, 1.0)).notes)


def test_loadtest_reads_the_serve_key_variable_and_the_old_one():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFLEET_API_KEY")}
    # No gateway listens there: the run fails to connect, and says so; what matters is
    # which key variable it read (the deprecation note names the old one).
    args = [sys.executable, "-m", "tokenfleet.cli", "loadtest", "--target",
            "http://127.0.0.1:9", "-m", "chat", "--rate", "5", "--duration", "0.3",
            "--input-tokens", "4", "--output-tokens", "2", "--timeout", "2"]
    old = subprocess.run(args, env={**env, "TOKENFLEET_API_KEY": "old-key-123456"},
                         capture_output=True, text=True, timeout=120)
    assert "TOKENFLEET_API_KEY is deprecated" in old.stderr
    new = subprocess.run(args, env={**env, "TOKENFLEET_API_KEYS": "k-12345678,k2-12345678"},
                         capture_output=True, text=True, timeout=120)
    assert "deprecated" not in new.stderr
    assert "cannot connect to the target" in " ".join(new.stdout.split())  # the hint


def test_when_every_backend_up_is_ejected_the_slow_one_still_serves():
    from tokenfleet.route.breaker import CircuitBreaker
    from tokenfleet.route.router import Backend, Pool

    from .conftest import unit

    down = Backend("http://a", "p", 4, CircuitBreaker())
    slow = Backend("http://b", "p", 4, CircuitBreaker())
    down.healthy = False
    slow.stats.ejected_until = 100.0
    pool = Pool(unit("p"), [down, slow], "m")
    ok = Backend("http://c", "p", 4, CircuitBreaker())
    # The plan policy sees the capacity the backends show: one of two out, half the share.
    assert Pool(unit("p"), [ok, slow], "m").state(0.8, 50.0, set()).share == 0.4
    assert pool.pick_backend(50.0, set()) is slow  # panic mode: slow beats nothing
    assert pool.state(1.0, 50.0, set()).healthy_replicas == 1
    slow.healthy = False
    assert pool.pick_backend(50.0, set()) is None
