"""The estimate / compare / breakeven API and CLI, catalogs, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokenfleet.catalog import load_catalog
from tokenfleet.cli import app
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import fit_path, load_fit
from tokenfleet.perf.estimate import Query, breakeven, compare, estimate

RUN = CliRunner()
REQUIRED_CHIPS = ["a100-80gb", "h100-sxm", "h200", "gh200", "b200", "gb200", "b300", "gb300",
                  "mi300x", "mi325x", "mi355x", "tpu-v5e", "tpu-v5p", "tpu-v6e", "tpu-v7",
                  "trainium1", "trainium2", "trainium3", "inferentia2", "maia-200"]
KEYS = ["model", "accelerator", "count", "precision", "kv_precision", "layout", "fits",
        "concurrency", "ttft_s", "tpot_s", "output_tokens_per_s", "requests_per_s",
        "usd_per_hour", "usd_per_million_output_tokens", "watts", "joules_per_output_token",
        "memory", "provenance", "uncertainty"]


def test_every_required_chip_is_in_the_catalog_with_sources():
    cat = load_catalog()
    for chip in REQUIRED_CHIPS:
        a = cat.accelerator(chip)
        assert a.sources, chip
        assert a.prices, f"{chip}: no price (an assumption would do)"
        for p in a.prices:
            assert p.source and (p.assumption or "assumption" not in p.source)
    maia = cat.accelerator("maia-200")
    assert maia.price().assumption and "prices" in maia.assumptions


def test_estimate_issue_example():
    e = estimate(Query(model="llama-3.1-70b", accelerator="maia-200", count=4, precision="fp8",
                       input_len=2048, output_len=256, slo_ttft=1.0, slo_tpot=0.05))
    d = e.model_dump()
    for k in KEYS:
        assert k in d, k
    assert e.fits and e.mode == "slo"
    assert e.ttft_s <= 1.0 and e.tpot_s <= 0.05
    # definitions: requests/s = tokens/s / output; $/Mtok and J/token from the same rate
    assert e.requests_per_s == pytest.approx(e.output_tokens_per_s / 256)
    assert e.usd_per_million_output_tokens == pytest.approx(
        e.usd_per_hour / 3600 / e.output_tokens_per_s * 1e6)
    assert e.joules_per_output_token == pytest.approx(e.watts / e.output_tokens_per_s)
    assert e.provenance == "spec-sheet"  # no Maia measurement exists
    assert e.uncertainty.relative > 0.1


def test_operating_modes_are_ordered():
    base = dict(model="llama-3.1-8b", accelerator="h100-sxm", precision="fp8", input_len=1000,
                output_len=200)
    offline = estimate(Query(**base))
    slo = estimate(Query(**base, slo_tpot=0.03))
    c8 = estimate(Query(**base, concurrency=8))
    assert offline.output_tokens_per_s >= slo.output_tokens_per_s >= c8.output_tokens_per_s
    assert c8.concurrency == 8 and c8.tpot_s < offline.tpot_s


def test_impossible_combinations_say_so():
    e = estimate(Query(model="llama-3.1-8b", accelerator="h100-sxm", precision="fp4"))
    assert not e.fits and "cannot run fp4" in e.reason and "fp8" in e.reason
    e = estimate(Query(model="deepseek-r1", accelerator="tpu-v5e", count=1, precision="bf16"))
    assert not e.fits and "weights need" in e.reason
    with pytest.raises(TokenfleetError, match="Did you mean: h100-sxm"):
        estimate(Query(model="llama-3.1-8b", accelerator="h100-sx"))
    with pytest.raises(TokenfleetError, match="llama-3.1-8b"):
        estimate(Query(model="llama-3.1-8", accelerator="h100-sxm"))


def test_compare_ranks_by_cost_and_explains_exclusions():
    rows = compare(Query(model="llama-3.1-70b", accelerator="h100-sxm", input_len=2048,
                         output_len=256, slo_tpot=0.05, precision="fp8"))
    ok = [r for r in rows if r.fits]
    bad = [r for r in rows if not r.fits]
    costs = [r.usd_per_million_output_tokens for r in ok]
    assert costs == sorted(costs)
    assert {r.accelerator for r in rows} == {a.id for a in load_catalog().accelerators}
    assert all(r.reason for r in bad)
    assert any("cannot run fp8" in r.reason for r in bad)  # A100, TPU v5e have no FP8


def test_breakeven_price_reproduces_equal_cost():
    b = breakeven(Query(model="llama-3.1-70b", accelerator="maia-200", input_len=1024,
                        output_len=256), "gb200", 0.30)
    a = b.accelerator_estimate
    # at the breakeven price, A's $/token equals B's
    usd_per_tok_a = b.breakeven_usd_per_chip_hour * a.count / 3600 / a.output_tokens_per_s
    assert usd_per_tok_a * 1e6 == pytest.approx(b.versus_usd_per_million_output_tokens)
    assert b.advantage_usd_per_chip_hour == pytest.approx(b.breakeven_usd_per_chip_hour / 1.3)
    lo, hi = b.band_usd_per_chip_hour
    assert lo < b.breakeven_usd_per_chip_hour < hi


def test_shipped_fit_matches_the_shipped_data():
    from tokenfleet.perf.calibration import data_sha256

    meta = json.loads(fit_path().read_text())["meta"]
    assert meta["data_sha256"] == data_sha256()
    cal = load_fit()
    assert cal.groups and cal.cross_family["p90"] > 0
    for g in cal.groups.values():
        e = g.efficiency
        # physical bounds: no fitted fraction of a peak above 0.95
        for frac in (e.gemm, e.attention, e.bandwidth, e.kv_bandwidth, e.moe, e.collective):
            assert 0 < frac <= 0.95
        assert 0 < e.host_overhead_s < 0.01


def test_cli_estimate_json_and_exit_codes():
    r = RUN.invoke(app, ["estimate", "-m", "llama-3.1-70b", "-a", "maia-200", "--count", "4",
                         "--precision", "fp8", "--input-len", "2048", "--output-len", "256",
                         "--slo-ttft", "1.0", "--slo-tpot", "0.05", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] and d["layout"]["tp"] * d["layout"]["pp"] * d["layout"]["dp"] == 4
    r = RUN.invoke(app, ["estimate", "-m", "llama-3.1-8b", "-a", "h100-sxm", "--precision",
                         "fp4", "--json"])
    assert r.exit_code == 1 and "cannot run fp4" in r.output


def test_cli_errors_exit_nonzero_with_message():
    from tokenfleet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["estimate", "-a", "h1000", "-m", "llama-3.1-8b"])
    assert e.value.code == 2


def test_cli_batch(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join([
        json.dumps({"model": "llama-3.1-8b", "accelerator": "h100-sxm", "precision": "fp8",
                    "input_len": 512, "output_len": 128}),
        json.dumps({"model": "llama-3.1-8b", "accelerator": "nope"}),
        "{not json",
        json.dumps({"model": "llama-3.1-8b", "accelerator": "h200", "slo_tpot": 0.02,
                    "concurrency": 4}),
        json.dumps({"model": "llama-3.1-8b", "accelerator": "b200", "precision": "fp4"}),
    ]))
    r = RUN.invoke(app, ["estimate", "--batch", str(q), "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert len(lines) == 5
    assert lines[0]["fits"] and lines[4]["fits"]
    assert "unknown accelerator" in lines[1]["error"]
    assert "invalid JSON" in lines[2]["error"]
    assert "either concurrency or SLOs" in lines[3]["error"]


def test_cli_compare_breakeven_catalog():
    r = RUN.invoke(app, ["compare", "-m", "llama-3.1-8b", "--accelerators", "h100,mi300x,maia-200",
                         "--json"])
    assert r.exit_code == 0, r.output
    assert [x["accelerator"] for x in json.loads(r.output)] != []
    r = RUN.invoke(app, ["breakeven", "-m", "llama-3.1-70b", "-a", "maia-200", "--versus",
                         "gb200", "--advantage", "0.3"])
    assert r.exit_code == 0, r.output
    assert "+30% tokens per dollar" in r.output
    r = RUN.invoke(app, ["catalog", "list", "accelerators"])
    assert r.exit_code == 0 and "maia-200" in r.output
    r = RUN.invoke(app, ["catalog", "list", "models"])
    assert r.exit_code == 0 and "deepseek-r1" in r.output and "MLA" in r.output


def test_user_catalog_overrides_and_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("accelerators:\n  - id: maia-200\n    prices:\n      - cloud: azure\n"
                    "        usd_per_hour: 3.0\n        date: '2026-11'\n"
                    "        source: internal transfer price\n")
    cat = load_catalog([good])
    assert cat.accelerator("maia-200").price().usd_per_hour == 3.0
    assert cat.accelerator("maia-200").hbm_gb == 216  # other fields kept
    bad = tmp_path / "bad.yaml"
    bad.write_text("accelerators:\n  - id: maia-200\n    hbm_gb: lots\n")
    with pytest.raises(TokenfleetError) as e:
        load_catalog([bad])
    assert "bad.yaml:3" in str(e.value) and "accelerators.0.hbm_gb" in str(e.value)
    new = tmp_path / "new.yaml"
    new.write_text("accelerators:\n  - id: my-chip\n    vendor: X\n")
    with pytest.raises(TokenfleetError, match="family"):
        load_catalog([new])


def test_cli_usage_errors_are_a_message_not_a_traceback(capsys):
    """An unknown option is click's usage error (Typer vendors its own click): the entry
    point shows the usage line and exits 2 instead of raising."""
    from tokenfleet.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plan", "examples/frontier-lab.yaml", "-o", "x.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "No such option: -o" in err and "Traceback" not in err


def test_cli_layout_and_batching_flags(tmp_path):
    """--tp/--pp/--dp/--ep/--batching are flags, shown in --help with an example, and
    the same names are the --batch JSONL keys."""
    h = RUN.invoke(app, ["estimate", "--help"], terminal_width=200)
    for flag in ("--tp", "--pp", "--dp", "--ep", "--batching", "Example"):
        assert flag in h.output
    r = RUN.invoke(app, ["estimate", "-m", "llama-3.1-70b", "-a", "h200", "--count", "8",
                         "--precision", "fp8", "--tp", "8", "--concurrency", "16",
                         "--batching", "static", "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.output)
    assert e["layout"] == {"tp": 8, "pp": 1, "ep": 1, "dp": 1}
    assert e["batching"] == "static" and e["layout_why"]
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join([
        json.dumps({"model": "qwen3-235b-a22b", "accelerator": "h200", "count": 8,
                    "precision": "fp8", "dp": 8, "ep": 8, "concurrency": 64}),
        json.dumps({"model": "llama-3.1-70b", "accelerator": "h200", "count": 8, "tp": 3}),
        json.dumps({"model": "llama-3.1-70b", "accelerator": "h200", "batching": "lazy"}),
    ]))
    r = RUN.invoke(app, ["estimate", "--batch", str(q)])
    lines = [json.loads(x) for x in r.output.strip().splitlines()]
    assert lines[0]["layout"] == {"tp": 1, "pp": 1, "ep": 8, "dp": 8}
    assert "no layout of 8 chips" in lines[1]["error"]
    assert "batching" in lines[2]["error"]


def test_compare_says_what_each_chip_rests_on():
    rows = compare(Query(model="llama-3.1-70b", accelerator="h100-sxm", input_len=2048,
                         output_len=256, slo_tpot=0.05), accelerators=["h100-sxm", "maia-200"])
    by = {e.accelerator: e for e in rows}
    assert by["h100-sxm"].basis and "measurements of" in by["h100-sxm"].basis
    assert by["maia-200"].peer and "nearest measured peer" in by["maia-200"].basis
