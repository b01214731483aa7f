"""Physics invariants of the unit model (hypothesis) and hand-checked memory numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.operating import best_operating_point
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.unit import Efficiency, Layout, UnitModel, layouts_for

CAT = load_catalog()
EFF = Efficiency()  # the physical priors
MODELS = ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-r1",
          "gpt-oss-120b", "mistral-7b"]
CHIPS = ["h100-sxm", "h200", "b200", "gb200", "mi300x", "tpu-v6e", "trainium2", "maia-200"]
PRECS = ["bf16", "fp8", "fp4", "int8"]

models = st.sampled_from(MODELS)
chips = st.sampled_from(CHIPS)
lens = st.integers(min_value=16, max_value=32768)


def _runnable(chip: str) -> str:
    """A precision the chip has a tensor peak for (Maia 200 has no BF16 one)."""
    return "bf16" if CAT.accelerator(chip).bf16_tflops else "fp8"


def _unit(model: str, chip: str, prec: str, layout: Layout, kv: str | None = None) -> UnitModel:
    p = get_precision(prec)
    return UnitModel(CAT.model(model), CAT.accelerator(chip), p, kv or p.default_kv, layout, EFF)


@settings(max_examples=40, deadline=None)
@given(models, chips, st.sampled_from([1, 2, 4, 8]), lens, lens)
def test_more_chips_never_slower(model, chip, n, inp, out):
    """Doubling the chips can always run two copies of the smaller unit, so the best
    offline throughput of a system that may run copies (``data_parallel=True``; one
    engine instance by default runs none) never drops."""
    m, a = CAT.model(model), CAT.accelerator(chip)
    prec = get_precision("fp8" if a.fp8_tflops else "bf16")
    small = best_operating_point(m, a, prec, prec.default_kv, n, EFF, inp, out, "offline",
                                 data_parallel=True)
    big = best_operating_point(m, a, prec, prec.default_kv, 2 * n, EFF, inp, out, "offline",
                               data_parallel=True)
    if small.fits:
        assert big.fits
        assert big.output_tokens_per_s >= small.output_tokens_per_s * (1 - 1e-9)


@settings(max_examples=40, deadline=None)
@given(models, chips, st.sampled_from([1, 2, 4, 8]), st.integers(1, 512), lens)
def test_more_replicas_scale_throughput_at_equal_batch(model, chip, tp, batch, ctx):
    """At equal per-replica batch and layout, dp replicas give exactly dp times the
    tokens per second, never less."""
    one = _unit(model, chip, _runnable(chip), Layout(tp, 1, 1))
    two = _unit(model, chip, _runnable(chip), Layout(tp, 1, 2))
    r1 = one.continuous(np.array([batch]), ctx, 128)
    r2 = two.continuous(np.array([2 * batch]), ctx, 128)
    assert r2["output_tokens_per_s"][0] == pytest.approx(2 * r1["output_tokens_per_s"][0])
    assert r2["tpot_s"][0] == pytest.approx(r1["tpot_s"][0])


@settings(max_examples=60, deadline=None)
@given(models, chips, st.sampled_from([1, 2, 4, 8]))
def test_fp8_never_more_bytes_than_bf16(model, chip, tp):
    lo = Layout(tp, 1, 1)
    bf16 = _unit(model, chip, "bf16", lo)
    fp8 = _unit(model, chip, "fp8", lo)
    fp4 = _unit(model, chip, "fp4", lo)
    assert fp8.weights_per_chip <= bf16.weights_per_chip
    assert fp4.weights_per_chip <= fp8.weights_per_chip
    assert fp8.kv_seq_bytes_per_chip(4096) <= bf16.kv_seq_bytes_per_chip(4096)
    # int8 is weight-only: same weight bytes as fp8, BF16 KV like bf16
    int8 = _unit(model, chip, "int8", lo)
    assert int8.weights_per_chip == fp8.weights_per_chip
    assert int8.kv_seq_bytes_per_chip(4096) == bf16.kv_seq_bytes_per_chip(4096)


@settings(max_examples=60, deadline=None)
@given(models, chips, st.sampled_from([1, 2, 4, 8]), lens, lens, st.integers(1, 8192))
def test_longer_context_never_more_concurrency(model, chip, tp, inp, out, extra):
    u = _unit(model, chip, "fp8" if CAT.accelerator(chip).fp8_tflops else "bf16",
              Layout(tp, 1, 1))
    short = u.memory(inp, out)
    longer = u.memory(inp + extra, out)
    assert longer.max_concurrency <= short.max_concurrency


@settings(max_examples=40, deadline=None)
@given(models, chips, st.sampled_from([1, 2, 4, 8]), lens, st.integers(2, 4096))
def test_latency_and_throughput_monotone_in_concurrency(model, chip, tp, inp, out):
    u = _unit(model, chip, _runnable(chip), Layout(tp, 1, 1))
    c = np.arange(1, 513, dtype=float)
    r = u.continuous(c, inp, out)
    assert np.all(np.diff(r["tpot_s"]) >= -1e-12)
    assert np.all(np.diff(r["ttft_s"]) >= -1e-12)
    assert np.all(np.diff(r["output_tokens_per_s"]) >= -1e-9)


@settings(max_examples=30, deadline=None)
@given(models, chips, st.floats(0.01, 0.2), st.floats(0.5, 0.99))
def test_tighter_slo_never_more_throughput(model, chip, tpot, shrink):
    m, a = CAT.model(model), CAT.accelerator(chip)
    prec = get_precision("fp8" if a.fp8_tflops else "bf16")
    loose = best_operating_point(m, a, prec, prec.default_kv, 8, EFF, 1024, 256, "slo",
                                 slo_tpot=tpot)
    tight = best_operating_point(m, a, prec, prec.default_kv, 8, EFF, 1024, 256, "slo",
                                 slo_tpot=tpot * shrink)
    if tight.fits:
        assert loose.fits
        assert tight.output_tokens_per_s <= loose.output_tokens_per_s * (1 + 1e-9)
        assert tight.tpot_s <= tpot * shrink + 1e-12


def test_kv_bytes_per_chip_by_hand():
    # Llama-3.1-70B, GQA 8 KV heads x 128 dims, 80 layers, FP8 KV.
    # tp=4: 2 KV heads per chip -> 2 (K,V) * 2 heads * 128 * 1 byte * 80 layers = 40,960 B/token.
    u = _unit("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 1, 1))
    assert u.kv_seq_bytes_per_chip(1000) == pytest.approx(1000 * 2 * 2 * 128 * 80)
    # tp=16 > 8 KV heads: each chip still keeps one whole head (replicated), 20,480 B/token.
    u16 = _unit("llama-3.1-70b", "h100-sxm", "fp8", Layout(16, 1, 1))
    assert u16.kv_seq_bytes_per_chip(1000) == pytest.approx(1000 * 2 * 1 * 128 * 80)
    # DeepSeek-R1 MLA: latent 512 + rope 64 per layer, 61 layers, BF16 = 70,272 B/token,
    # the same on every TP rank (the latent is not split by heads).
    for tp in (1, 8):
        d = _unit("deepseek-r1", "h200", "bf16", Layout(tp, 1, 1))
        assert d.kv_seq_bytes_per_chip(100) == pytest.approx(100 * (512 + 64) * 61 * 2)
    # Pipeline stages split the layers: pp=2 halves the per-chip KV of a sequence.
    half = _unit("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 2, 1))
    assert half.kv_seq_bytes_per_chip(1000) == pytest.approx(u.kv_seq_bytes_per_chip(1000) / 2)
    # gpt-oss-120b: 18 full layers + 18 sliding (128 tokens); 8 KV heads x 64 dims, BF16.
    g = _unit("gpt-oss-120b", "h100-sxm", "bf16", Layout(1, 1, 1))
    per_tok_layer = 2 * 8 * 64 * 2
    assert g.kv_seq_bytes_per_chip(10000) == pytest.approx(
        per_tok_layer * (18 * 10000 + 18 * 128))


def test_weights_per_chip_by_hand():
    # Llama-3.1-70B FP8 on tp=8: ~70.55e9 params * 1 byte / 8 chips.
    u = _unit("llama-3.1-70b", "h100-sxm", "fp8", Layout(8, 1, 1))
    assert u.weights_per_chip == pytest.approx(70.55e9 / 8, rel=0.01)
    # MoE with ep spreads experts over all chips of a stage; ep=1 keeps a copy per replica.
    m = CAT.model("deepseek-r1")
    lays = {(lo.tp, lo.dp, lo.ep): lo for lo in layouts_for(m, 8)}
    ep = _unit("deepseek-r1", "h200", "fp8", lays[(1, 8, 8)])
    rep = _unit("deepseek-r1", "h200", "fp8", lays[(1, 8, 1)])
    assert ep.weights_per_chip < rep.weights_per_chip / 4


def test_fp4_halves_weights_with_block_scales():
    u8 = _unit("llama-3.1-8b", "b200", "fp8", Layout(1, 1, 1))
    u4 = _unit("llama-3.1-8b", "b200", "fp4", Layout(1, 1, 1))
    assert u4.weights_per_chip / u8.weights_per_chip == pytest.approx(0.5625)


def test_memory_fit_reports_why():
    u = _unit("llama-3.1-405b", "h100-sxm", "bf16", Layout(1, 1, 1))
    fit = u.memory(1024, 256)
    assert not fit.fits and "weights need" in fit.reason and "80 GB" in fit.reason
    small = _unit("llama-3.1-8b", "h100-sxm", "bf16", Layout(1, 1, 1))
    fit = small.memory(1_000_000, 1)
    assert not fit.fits and "one sequence" in fit.reason


def test_static_batch_matches_definitions():
    u = _unit("llama-3.1-8b", "h100-sxm", "bf16", Layout(1, 1, 1))
    r = u.static(8, 1000, 101)
    # throughput = batch * output / (ttft + (output - 1) * tpot)
    assert r["output_tokens_per_s"] == pytest.approx(
        8 * 101 / (r["ttft_s"] + 100 * r["tpot_s"]))
    assert math.isfinite(r["ttft_s"]) and r["ttft_s"] > 0


def test_metric_definitions():
    from tokenfleet.perf import metrics

    # arrival 1.0, first token 1.5, last token 3.5 after 5 tokens: TPOT = 2.0 / 4
    assert metrics.ttft(1.0, 1.5) == pytest.approx(0.5)
    assert metrics.tpot(1.5, 3.5, 5) == pytest.approx(0.5)
    assert math.isnan(metrics.tpot(1.5, 1.5, 1))
    assert metrics.e2e(1.0, 3.5) == pytest.approx(metrics.ttft(1.0, 1.5) + 4 * 0.5)
    ok = metrics.meets_slo(np.array([0.4, 0.6, 0.4]), np.array([0.01, 0.01, np.nan]), 0.5, 0.02)
    assert ok.tolist() == [True, False, True]


def test_estimate_from_hf_config_path():
    from pathlib import Path

    from tokenfleet.perf.estimate import Query, estimate

    cfg = sorted((Path(__file__).parent / "data" / "hf_configs").glob("*.json"))
    assert cfg, "fixture configs missing"
    e = estimate(Query(model=str(cfg[0]), accelerator="h200", count=8, precision="fp8"))
    assert e.memory is not None and e.memory.weights_gb > 0


def test_layout_screen_matches_operating_point():
    """The planner's screening path (one unit model, many request shapes) gives exactly
    what ``operating_point`` gives query by query."""
    from tokenfleet.catalog import load_catalog
    from tokenfleet.perf.calibration import load_fit
    from tokenfleet.perf.estimate import Query, layout_screen, operating_point

    cat, cal = load_catalog(), load_fit()
    for model, accel, layout in (("llama-3.1-70b", "h100-sxm", {"tp": 4}),
                                 ("deepseek-r1", "mi300x", {"tp": 8}),
                                 ("gpt-oss-120b", "maia-200", {"tp": 2, "dp": 2, "ep": 4})):
        count = layout.get("tp", 1) * layout.get("dp", 1)
        base = Query(model=model, accelerator=accel, count=count, precision="fp8",
                     slo_ttft=2.0, slo_tpot=0.05, layout=layout)
        at = layout_screen(base, cat, cal)
        assert at is not None
        for i, o in ((128, 64), (2000, 300), (12000, 900)):
            want = operating_point(base.model_copy(update={"input_len": i, "output_len": o}),
                                   cat, cal)
            assert repr(at(i, o)) == repr(want)  # repr: failed points carry NaN times
