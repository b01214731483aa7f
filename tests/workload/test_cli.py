"""`tokenfleet trace stats` and `tokenfleet trace generate` through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload import read_trace, sample_path

runner = CliRunner()


def _ok(app: typer.Typer, args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_stats_tables(cli_app) -> None:
    out = _ok(cli_app, ["trace", "stats", str(sample_path("azure_conv"))])
    assert "500" in out and "peak rate, 1-min window" in out
    assert "Size buckets" in out and "Input length histogram" in out
    assert "hour of day" in out


def test_stats_json_matches_library(cli_app) -> None:
    out = _ok(cli_app, ["trace", "stats", str(sample_path("burstgpt")), "--json"])
    data = json.loads(out)
    assert data["count"] == len(read_trace(sample_path("burstgpt")))
    assert data["dropped"] > 0
    out = _ok(
        cli_app,
        [
            "trace",
            "stats",
            str(sample_path("burstgpt")),
            "--json",
            "--keep-failed",
            "--model",
            "ChatGPT",
        ],
    )
    assert json.loads(out)["count"] < 500


def test_stats_with_map_and_edges(cli_app, write) -> None:
    p = write("x.csv", "ts,p,c\n0,100,10\n1500,3000,700\n")
    out = _ok(
        cli_app,
        [
            "trace",
            "stats",
            str(p),
            "--map",
            "arrival=ts,input=p,output=c,unit=ms",
            "--input-edges",
            "0,1000,inf",
            "--json",
        ],
    )
    data = json.loads(out)
    assert data["span_s"] == 1.5
    assert data["buckets"]["counts"] == [[1, 0, 0], [0, 0, 1]]


def test_generate_then_stats(cli_app, tmp_path: Path) -> None:
    out = tmp_path / "g.parquet"
    msg = _ok(
        cli_app,
        [
            "trace",
            "generate",
            "--kind",
            "gamma",
            "--rate",
            "4",
            "--cv",
            "2",
            "--duration",
            "600",
            "--growth",
            "1.5",
            "--seed",
            "3",
            "-o",
            str(out),
        ],
    )
    assert "wrote" in msg
    tr = read_trace(out)
    assert len(tr) / 600 == pytest.approx(6.0, rel=0.25)
    data = json.loads(_ok(cli_app, ["trace", "stats", str(out), "--json"]))
    assert data["count"] == len(tr)


def test_generate_like_defaults_rate_and_duration(cli_app, tmp_path: Path) -> None:
    like = sample_path("mooncake_synthetic")
    out = tmp_path / "g.jsonl"
    _ok(
        cli_app,
        ["trace", "generate", "--like", str(like), "--lengths", "lognormal", "-o", str(out)],
    )
    ref, tr = read_trace(like), read_trace(out)
    assert len(tr) == pytest.approx(len(ref), rel=0.2)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--duration", "10"], "--rate is required"),
        (["--rate", "1", "--duration", "10", "--kind", "gamma"], "needs --cv"),
        (["--rate", "1", "--duration", "10", "--cv", "2"], "--cv applies to --kind gamma"),
        (["--rate", "1", "--duration", "10", "--growth", "0"], "--growth must be > 0"),
    ],
)
def test_generate_errors(cli_app, tmp_path: Path, args: list[str], pattern: str) -> None:
    r = runner.invoke(cli_app, ["trace", "generate", "-o", str(tmp_path / "x.csv"), *args])
    assert isinstance(r.exception, TokenfleetError)
    assert pattern in str(r.exception)


def test_generate_bad_extension(cli_app, tmp_path: Path) -> None:
    r = runner.invoke(
        cli_app,
        ["trace", "generate", "--rate", "5", "--duration", "10", "-o", str(tmp_path / "x.xlsx")],
    )
    assert isinstance(r.exception, TokenfleetError)
    assert "use .csv, .jsonl, .parquet" in str(r.exception)


def test_stats_missing_file_is_clean_error(cli_app, tmp_path: Path) -> None:
    r = runner.invoke(cli_app, ["trace", "stats", str(tmp_path / "none.csv")])
    assert isinstance(r.exception, TokenfleetError)
    assert "trace file not found" in str(r.exception)


def test_main_entry_point_prints_error_and_exits_2(tmp_path: Path, capsys) -> None:
    try:
        from tokenfleet.cli import main
    except ImportError:
        pytest.skip("tokenfleet.cli does not import yet in this checkout")
    with pytest.raises(SystemExit) as e:
        main(["trace", "stats", str(tmp_path / "none.csv")])
    assert e.value.code == 2
    assert "error: trace file not found" in capsys.readouterr().err


def test_help_teaches(cli_app) -> None:
    out = _ok(cli_app, ["trace", "--help"])
    assert "stats" in out and "generate" in out
    out = _ok(cli_app, ["trace", "stats", "--help"])
    assert "--map" in out and "azure" in out
