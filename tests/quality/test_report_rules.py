"""The quality report schema and the precision rules the planner checks (no PyTorch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.assessment import (
    DataInfo,
    FormatResult,
    QualityReport,
    check_precision,
    check_rule,
    load_report,
    parse_rule,
)


def _llm_report() -> QualityReport:
    return QualityReport(
        model="tiny-llm",
        kind="causal-lm",
        data=DataInfo(path="texts.txt", texts=10, tokens=200),
        results=[
            FormatResult(format="bf16", kl_mean=1e-5, ppl_delta_pct=0.01, top1_agreement=1.0),
            FormatResult(format="fp8-e4m3", kl_mean=0.004, ppl_delta_pct=0.3, top1_agreement=0.97),
            FormatResult(
                format="fp8-e4m3",
                activations=True,
                kl_mean=0.02,
                ppl_delta_pct=1.5,
                top1_agreement=0.93,
            ),
            FormatResult(
                format="nvfp4",
                activations=True,
                kl_mean=0.04,
                ppl_delta_pct=4.0,
                top1_agreement=0.9,
            ),
            FormatResult(
                format="mxfp4",
                activations=True,
                kl_mean=0.09,
                ppl_delta_pct=9.0,
                top1_agreement=0.85,
            ),
            FormatResult(format="int8", kl_mean=0.001, ppl_delta_pct=0.1, top1_agreement=0.99),
        ],
    )


def _encoder_report() -> QualityReport:
    return QualityReport(
        model="all-minilm-l6-v2",
        kind="encoder",
        data=DataInfo(path="bundled", texts=200, tokens=3000),
        results=[
            FormatResult.model_validate(
                {
                    "format": "nvfp4",
                    "activations": True,
                    "cosine_mean": 0.975,
                    "cosine_min": 0.95,
                    "knn_agreement@10": 0.88,
                }
            ),
            FormatResult.model_validate(
                {
                    "format": "fp8-e4m3",
                    "activations": True,
                    "cosine_mean": 0.998,
                    "cosine_min": 0.996,
                    "knn_agreement@10": 0.97,
                }
            ),
        ],
    )


def test_rule_allows_and_explains_with_numbers() -> None:
    ok, why = check_rule(_llm_report(), "nvfp4", {"max_kl": 0.05})
    assert ok
    assert why.startswith("allowed") and "nvfp4" in why and "kl_mean 0.04 <= 0.05" in why


def test_rule_forbids_and_names_the_failing_threshold() -> None:
    ok, why = check_rule(_llm_report(), "mxfp4", {"max_kl": 0.05, "min_top1_agreement": 0.8})
    assert not ok
    assert "kl_mean 0.09 > 0.05" in why and "top1_agreement 0.85 >= 0.8" in why


def test_rule_judges_the_most_aggressive_measurement_unless_told() -> None:
    report = _llm_report()
    ok, why = check_rule(report, "fp8-e4m3", {"max_ppl_delta_pct": 1.0})
    assert not ok and "weights+activations" in why and "ppl_delta_pct 1.5 > 1" in why
    ok, why = check_rule(report, "fp8-e4m3", {"max_ppl_delta_pct": 1.0, "activations": False})
    assert ok and "(weights)" in why


def test_unmeasured_format_is_forbidden_with_the_command_to_run() -> None:
    ok, why = check_rule(_llm_report(), "int4", {"max_kl": 1.0})
    assert not ok and "validate-precision --formats int4" in why


def test_nan_metric_fails_every_threshold() -> None:
    report = _encoder_report()
    report.results[0].cosine_mean = math.nan
    ok, why = check_rule(report, "nvfp4", {"min_cosine": 0.0})
    assert not ok and "nan" in why


def test_thresholds_of_the_other_kind_are_skipped_but_one_must_apply() -> None:
    rule = {"max_kl": 0.05, "min_cosine": 0.99}  # one rule for LLM and embedding tiers
    ok, why = check_rule(_encoder_report(), "fp8-e4m3", rule)
    assert ok and "cosine_mean 0.998 >= 0.99" in why and "kl" not in why
    with pytest.raises(TokenfleetError, match="applies to encoder models; use min_cosine"):
        check_rule(_encoder_report(), "fp8-e4m3", {"max_kl": 0.05})


def test_invalid_rules_raise_clear_errors() -> None:
    with pytest.raises(TokenfleetError, match="at least one"):
        parse_rule({"format": "nvfp4"})
    with pytest.raises(TokenfleetError, match="max_kld"):
        parse_rule({"max_kld": 0.1})
    with pytest.raises(TokenfleetError, match="allowed"):
        parse_rule({"max_kl": 0.1, "format": "fp6"})


def test_planner_precision_maps_to_formats() -> None:
    report = _llm_report()
    ok, why = check_precision(report, "fp4", {"max_kl": 0.05})  # default fp4 -> nvfp4
    assert ok and why.startswith("fp4: allowed: nvfp4")
    ok, why = check_precision(report, "fp4", {"max_kl": 0.05, "format": "mxfp4"})
    assert not ok and "mxfp4" in why
    ok, why = check_precision(report, "fp4", {"max_kl": 0.05}, fmt="mxfp4")
    assert not ok
    # planner fp8 runs FP8 activations: judged on the weights+activations measurement
    ok, why = check_precision(report, "fp8", {"max_kl": 0.01})
    assert not ok and "weights+activations" in why and "kl_mean 0.02 > 0.01" in why
    # planner int8 is weight-only (W8A16)
    ok, why = check_precision(report, "INT8", {"max_kl": 0.01})
    assert ok and "int8 (weights)" in why
    with pytest.raises(TokenfleetError, match="cannot stand for"):
        check_precision(report, "fp8", {"max_kl": 0.01, "format": "nvfp4"})
    with pytest.raises(TokenfleetError, match="allowed: bf16, fp8, fp4, int8"):
        check_precision(report, "fp6", {"max_kl": 0.01})


def test_fp4_falls_back_to_mxfp4_when_only_it_was_measured() -> None:
    report = _llm_report()
    report.results = [r for r in report.results if r.format != "nvfp4"]
    ok, why = check_precision(report, "fp4", {"max_kl": 0.1})
    assert ok and "mxfp4" in why


def test_precision_without_activation_measurement_is_forbidden() -> None:
    report = _llm_report()
    report.results = [r for r in report.results if not r.activations]
    ok, why = check_precision(report, "fp8", {"max_kl": 1.0})
    assert not ok and "--activations" in why


def test_json_round_trip_keeps_alias_and_nan(tmp_path: Path) -> None:
    report = _encoder_report()
    report.results[1].cosine_min = math.nan
    path = tmp_path / "report.json"
    report.write(path)
    raw = json.loads(path.read_text())
    assert raw["results"][0]["knn_agreement@10"] == 0.88
    assert {
        "model",
        "kind",
        "reference",
        "data",
        "results",
        "tokenfleet_version",
        "created",
    } <= set(raw)
    assert raw["reference"] == "fp32" and raw["data"] == {
        "path": "bundled",
        "texts": 200,
        "tokens": 3000,
    }
    back = load_report(path)
    assert back.results[0].knn_agreement_at_10 == 0.88
    assert math.isnan(back.results[1].cosine_min)


def test_load_report_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenfleetError, match="cannot read"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x"}')
    with pytest.raises(TokenfleetError, match="not a tokenfleet quality report"):
        load_report(bad)
    bad.write_text(json.dumps({**json.loads(_llm_report().to_json()), "kind": "vision"}))
    with pytest.raises(TokenfleetError):
        load_report(bad)


@pytest.mark.parametrize(
    "module", ["tokenfleet.quality.assessment", "tokenfleet.cli.quality", "tokenfleet.quality"]
)
def test_planner_facing_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
