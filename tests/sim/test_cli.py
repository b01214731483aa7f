"""`tokenfleet simulate` / `sweep` through the real CLI, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tokenfleet.cli import main
from tokenfleet.errors import TokenfleetError
from tokenfleet.sim.run import prepare_workload
from tokenfleet.workload import read_trace
from tokenfleet.workload.trace import Trace, empty_trace

runner = CliRunner()


@pytest.fixture
def plan_file(two_vendor_plan, tmp_path: Path) -> Path:
    p = tmp_path / "plan.json"
    p.write_text(two_vendor_plan.model_dump_json())
    return p


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


def test_simulate_json_and_outputs(cli_app, plan_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sim"
    r = runner.invoke(cli_app, ["simulate", str(plan_file), "--duration", "40", "--json",
                                "--fail", "vendor=AMD@t=10..20", "--surge", "2x@t=25..30",
                                "--price", "mi300x=1.0@t=5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout[r.stdout.index("{"):])
    for k in ("requests", "completed", "retried", "rejected", "cost_usd", "energy_kwh",
              "wall_s", "simulated_requests_per_s"):
        assert k in s
    chat = s["tiers"]["chat"]
    for m in ("ttft_s", "tpot_s"):
        assert {"p50", "p90", "p99"} <= chat[m].keys()
    assert "slo_attainment" in chat
    assert s["completed"] + s["rejected"] == s["requests"] and s["retried"] > 0
    ts = pl.read_parquet(out / "timeseries.parquet")
    assert {"t_s", "pool", "utilization", "kv_occupancy", "waiting", "up_replicas"} <= set(
        ts.columns)
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html or "tfPlot(" in html
    assert "Outage timeline" in html and "latency-cdf" in html
    assert json.loads((out / "summary.json").read_text())["requests"] == s["requests"]


def test_simulate_table_trace_and_n_minus_1(cli_app, plan_file: Path) -> None:
    r = runner.invoke(cli_app, ["simulate", str(plan_file), "--trace", "sample:azure_conv",
                                "--growth", "4", "--duration", "30", "--fail-each", "vendor"])
    assert r.exit_code == 0, r.output
    assert "N-1 by vendor" in r.output and "AMD" in r.output and "NVIDIA" in r.output


def test_n_minus_1_with_admission_control(cli_app, plan_file: Path) -> None:
    r = runner.invoke(cli_app, ["simulate", str(plan_file), "--duration", "30", "--growth",
                                "3", "--fail-each", "vendor", "--admission", "ttft", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    runs = [out["baseline"], *out["without"].values()]
    assert all(x["admission"] == "ttft" for x in runs)
    for x in runs:
        chat = x["tiers"]["chat"]
        assert chat["completed"] + chat["rejected"] == chat["requests"]
        assert 0 <= chat["goodput_fraction"] <= 1 and chat["shed"] <= chat["rejected"]
    assert max(x["tiers"]["chat"]["shed"] for x in out["without"].values()) > 0
    r = runner.invoke(cli_app, ["simulate", str(plan_file), "--duration", "20",
                                "--fail-each", "vendor", "--admission", "ttft"])
    assert r.exit_code == 0, r.output
    assert "goodput" in r.output and "admission: ttft" in r.output


def test_help_teaches_the_syntax(cli_app) -> None:
    r = runner.invoke(cli_app, ["simulate", "--help"])
    assert r.exit_code == 0
    for text in ("vendor=NVIDIA@t=600..1200", "replicas=POOL_ID:N", "2x@t=600..900",
                 "maia-200=3.5"):
        assert text in r.output.replace("\n", " ").replace("  ", " ") or text in r.output


@pytest.mark.parametrize(("args", "message"), [
    (["--duration", "10", "--fail", "vendor=Intel"], "matches no pool"),
    (["--duration", "10", "--fail", "vendor=AMD@t=5..2"], "end time"),
    (["--duration", "10", "--policy", "fastest"], "--policy"),
    (["--duration", "10", "--admission", "always"], "--admission"),
    ([], "--duration"),
])
def test_bad_flags_exit_2(plan_file: Path, capsys, args: list[str], message: str) -> None:
    code, err = _exit_code(["simulate", str(plan_file), *args], capsys)
    assert code == 2 and message in err


def test_plan_with_unknown_chip_names_the_field(two_vendor_plan, tmp_path: Path,
                                                capsys) -> None:
    d = json.loads(two_vendor_plan.model_dump_json())
    d["units"][1]["accelerator"] = "h900-ultra"
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    code, err = _exit_code(["simulate", str(p), "--duration", "5"], capsys)
    assert code == 2 and "units[1].accelerator" in err and "h900-ultra" in err


def test_bad_traces(two_vendor_plan, tmp_path: Path, capsys) -> None:
    with pytest.raises(TokenfleetError, match="empty"):
        prepare_workload(two_vendor_plan, empty_trace("nothing.csv"))
    bad = tmp_path / "neg.csv"
    bad.write_text("arrival_s,input_tokens,output_tokens\n0,10,5\n1,-3,5\n")
    with pytest.raises(TokenfleetError, match=r"input_tokens.*negative|negative"):
        read_trace(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("arrival_s,input_tokens\n0,10\n")
    with pytest.raises(TokenfleetError, match="output"):
        read_trace(missing)
    with pytest.raises(TokenfleetError, match=r"sorted ascending; arrival_s\[2\]"):
        Trace([0.0, 2.0, 1.0], [1, 1, 1], [1, 1, 1])
    plan = tmp_path / "plan.json"
    plan.write_text(two_vendor_plan.model_dump_json())
    empty = tmp_path / "empty.csv"
    empty.write_text("arrival_s,input_tokens,output_tokens\n")
    code, err = _exit_code(["simulate", str(plan), "--trace", str(empty)], capsys)
    assert code == 2 and "empty" in err and "Traceback" not in err


def test_sweep_locally(two_vendor_plan, tmp_path: Path) -> None:
    from tokenfleet.report.sweep_html import write_sweep
    from tokenfleet.sim.sweep import load_grid, run_sweep

    (tmp_path / "plan.json").write_text(two_vendor_plan.model_dump_json())
    grid = tmp_path / "grid.yaml"
    grid.write_text("plan: plan.json\ntraffic: {duration: 15}\n"
                    "grid:\n  price:mi300x: [1.0, 3.0]\n  fail: [none, vendor=Nobody]\n")
    spec = load_grid(grid)
    rows = run_sweep(spec, local=True)
    assert len(rows) == 4
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and ok[0]["cost_usd"] < ok[1]["cost_usd"]
    assert all("matches no pool" in r["error"] for r in rows if r["status"] != "ok")
    # each tier's attainment target rides along for the report's SLO line
    targets = {t.name: min(t.slo_ttft_percentile, t.slo_tpot_percentile) / 100
               for t in two_vendor_plan.tiers}
    assert all(ok[0][f"{name}.slo_target"] == v for name, v in targets.items())
    assert ok[0]["plan_fleet_usd_per_month"] == two_vendor_plan.cost.fleet_usd_per_month
    paths = write_sweep(rows, spec, tmp_path / "out.parquet")
    assert pl.read_parquet(paths[0]).height == 4 and paths[1].exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: plan.json\ntraffic: {duration: 5}\ngrid: {weather: [1]}\n")
    with pytest.raises(TokenfleetError, match="unknown axis"):
        load_grid(bad)


def test_planned_slo_check_uses_the_slo_percentile_and_served_share():
    from tokenfleet.cli.simulate import _planned_slo_miss
    from tokenfleet.sim.results import Latency, TierResult

    def lat(p50: float, p90: float, p99: float) -> Latency:
        return Latency(p50=p50, p90=p90, p99=p99, mean=p50, count=100)

    tr = TierResult(requests=100, completed=80, rejected=20, retried=0, slo_ttft_s=1.0,
                    slo_tpot_s=0.05, ttft_s=lat(0.5, 2.0, 9.0), tpot_s=lat(0.02, 0.04, 0.2),
                    e2e_s=lat(1, 2, 3), queue_s=lat(0, 0, 1), slo_attainment=0.6,
                    mean_ttft_within_slo=True, mean_tpot_within_slo=True,
                    output_tokens_per_s=1.0, goodput_requests_per_s=1.0,
                    goodput_output_tokens_per_s=1.0)
    assert _planned_slo_miss(tr, 50, 0.7) == ""  # p50s within, 80 % served
    assert _planned_slo_miss(tr, 90, 0.7) == "p90 TTFT 2 s > 1 s"
    assert _planned_slo_miss(tr, 99, 0.9) == ("served 80.0%, p99 TTFT 9 s > 1 s, "
                                              "p99 TPOT 0.2 s > 0.05 s")
