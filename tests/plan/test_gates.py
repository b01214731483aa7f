"""Precision that keeps quality: the published table and the gate built on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.calibration import load_fit
from tokenfleet.plan.candidates import build_candidates
from tokenfleet.plan.gates import REFERENCE, precision_gate, published_deltas, published_gate
from tokenfleet.plan.scenario import load_scenario

from .test_planner import _scenario

ROOT = Path(__file__).resolve().parents[2]
CAT = load_catalog()


def test_every_published_figure_has_a_source_and_a_catalog_model():
    table = published_deltas()
    assert table
    for (model, prec), pub in table.items():
        assert pub.source and len(pub.source) > 20, (model, prec)
        assert CAT.model(model).id == model
        assert prec in ("fp8", "fp4", "int8") and 0.0 <= pub.loss < 1.0


def test_loss_is_the_worst_published_drop():
    pub = published_deltas()[("deepseek-r1", "fp4")]
    assert pub.worst == "MATH-500" and pub.loss == pytest.approx(1 - 94.2 / 95.4)


def test_gate_rules_out_missing_figures_and_losses_over_tolerance():
    tier = _scenario().tiers[0]
    ok, why = published_gate(tier, "gpt-oss-120b", "fp8")
    assert not ok and "no published quality figure" in why
    ok, why = published_gate(tier, "llama-3.1-8b", "fp4")  # 9 % on GSM8K > 2 %
    assert not ok and "ruled out" in why and "arXiv:2509.23202" in why
    loose = tier.model_copy(update={"quality": tier.quality.model_copy(
        update={"max_loss": 0.1})})
    assert published_gate(loose, "llama-3.1-8b", "fp4")[0]
    assert published_gate(tier, "llama-3.1-8b", "fp8")[0]
    assert published_gate(tier, "anything", REFERENCE) == (True, "")


def test_no_pool_of_the_example_runs_a_precision_without_a_sourced_figure():
    sc, base = load_scenario(ROOT / "examples" / "frontier-lab.yaml")
    gate = precision_gate(sc, base, "frontier-lab.yaml")
    cs = build_candidates(sc, base, CAT, load_fit(), gate)
    table = published_deltas()
    tol = {t.name: t.quality.max_loss for t in sc.tiers}
    model = {t.name: CAT.model(t.model).id for t in sc.tiers}
    for c in cs.candidates:
        if c.precision == REFERENCE:
            continue
        pub = table.get((model[c.tier], c.precision))
        assert pub is not None and pub.loss <= tol[c.tier], c.id
    # and the tiers say what was ruled out, and why
    notes = " ".join(n for ns in cs.precision_notes.values() for n in ns)
    assert "fp4: ruled out" in notes and "fp8: ruled out" in notes
