"""Per-operator physics of the v2 model: FLOPs and bytes per attention kind against
hand computations, the sum-of-operators step, layouts as engines run them, the
concurrency and batching semantics of ``estimate``, precisions split into weights and
compute, runtime memory, and peer borrowing for unmeasured chips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.catalog import load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.estimate import Query, estimate
from tokenfleet.perf.measurements import load_points
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.unit import (
    Efficiency,
    Layout,
    UnitModel,
    allreduce_steps,
    kernels_per_layer,
    layouts_for,
)

CAT = load_catalog()
EFF = Efficiency()
PRIORS = Calibration.of_efficiency(EFF)


def _unit(model: str, chip: str, prec: str, lo: Layout, engine: str | None = None) -> UnitModel:
    p = get_precision(prec)
    return UnitModel(CAT.model(model), CAT.accelerator(chip), p, p.default_kv, lo, EFF, engine)


# ---- FLOPs and bytes per attention kind, by hand ------------------------------------

def test_mla_prefill_runs_in_mha_form_and_decode_absorbed():
    m = CAT.model("deepseek-r1")
    # prefill: qk 128 nope + 64 rope = 192, v 128 per head; decode: 576 and 512 (latent)
    assert arch.prefill_attention_dims(m) == (192, 128)
    assert arch.attention_dims(m) == (576, 512)
    L = 1000
    pairs = L * (L + 1) / 2
    want = 2.0 * 128 * (192 + 128) * 61 * pairs
    assert arch.prefill_attention_flops(m, L) == pytest.approx(want)
    # the absorbed form would cost 3.4x as much: the reason engines prefill in MHA form
    assert pytest.approx(3.4) == (576 + 512) / (192 + 128)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["llama-3.1-70b", "mistral-7b", "gpt-oss-120b", "qwen3-30b-a3b"]),
       st.integers(1, 40000))
def test_gqa_prefill_flops_by_hand(model, L):
    m = CAT.model(model)
    full, sliding = arch.attention_layer_counts(m)
    pf = L * (L + 1) / 2
    if sliding and m.sliding_window and m.sliding_window < L:
        w = m.sliding_window
        ps = w * (w + 1) / 2 + (L - w) * w
    else:
        ps = pf
    want = 2.0 * m.num_attention_heads * 2 * m.head_dim * (full * pf + sliding * ps)
    assert arch.prefill_attention_flops(m, L) == pytest.approx(want)


def test_decode_attention_is_kv_bytes_or_absorbed_math_by_hand():
    # Llama-3.1-70B FP8 KV, tp=1: 2 * 8 heads * 128 * 1 B = 2048 B per token-layer; the
    # 2 * 64 * 256 FLOPs per token-layer are far below the ridge, so bytes bind.
    u = _unit("llama-3.1-70b", "h200", "fp8", Layout(1, 1, 1))
    by_bytes = 2048 / (EFF.kv_bandwidth * 4.8e12)
    assert u.coeffs.c_dec == pytest.approx(by_bytes)
    # DeepSeek MLA BF16 KV: 576 * 2 B per token-layer vs 2*128*(576+512) FLOPs on BF16:
    # with all heads on one chip the absorbed math binds on H200 (FlashMLA is
    # compute-bound at decode); with tp=8 the latent is read whole by every rank while
    # the heads split, so the bytes bind again.
    d = _unit("deepseek-r1", "h200", "bf16", Layout(1, 1, 1))
    math_s = 2 * 128 * (576 + 512) / (EFF.attention * 989.4e12)
    bytes_s = 576 * 2 / (EFF.kv_bandwidth * 4.8e12)
    assert math_s > bytes_s
    assert d.coeffs.c_dec == pytest.approx(math_s)
    d8 = _unit("deepseek-r1", "h200", "bf16", Layout(8, 1, 1))
    assert d8.coeffs.c_dec == pytest.approx(bytes_s)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["llama-3.1-8b", "deepseek-r1", "gpt-oss-120b", "qwen3-235b-a22b"]),
       st.integers(0, 2048), st.integers(0, 8192), st.integers(1, 32768))
def test_step_is_a_sum_of_operator_rooflines(model, dec, pre, ctx):
    """The step is never faster than its slowest operator alone, nor than the weight
    read; and adding tokens never makes it faster."""
    u = _unit(model, "b200", "fp8", Layout(8, 1, 1))
    if not u.memory(1, 1).fits:
        return
    t = float(u.step_s(np.array([dec]), ctx, float(pre), max(pre, 1))[0])
    g = u.coeffs
    assert t >= g.m_weights + g.fixed - 1e-12
    assert t >= (dec + pre) * g.c_gemm + g.fixed - 1e-12
    more = float(u.step_s(np.array([dec + 1]), ctx, float(pre), max(pre, 1))[0])
    assert more >= t - 1e-12


def test_moe_expert_math_falls_with_few_tokens_per_expert():
    u = _unit("qwen3-30b-a3b", "h100-sxm", "fp8", Layout(1, 1, 1))
    g = u.coeffs
    k = CAT.model("qwen3-30b-a3b").experts_per_token
    # effective efficiency at r routed tokens: c_moe * r / (c_moe * (r + half * touched))
    for r in (8.0, 4096.0):
        touched = g.moe_e * (1 - g.moe_keep ** r)
        eff = r / (r + g.moe_half * touched)
        tpe = r * k / touched
        assert eff == pytest.approx(tpe / (tpe + 32.0))


# ---- memory -------------------------------------------------------------------------

def test_runtime_reserve_comes_off_the_kv_budget():
    u = _unit("llama-3.1-8b", "h100-sxm", "bf16", Layout(1, 1, 1), "vllm")
    fit = u.memory(1000, 100)
    reserve = u.runtime_reserve_per_chip()
    assert reserve > 2.5e9  # framework + graphs + buffers, plus workspace and logits
    assert fit.kv_budget_per_chip == pytest.approx(0.9 * 80e9 - u.weights_per_chip - reserve)
    trt = _unit("llama-3.1-8b", "h100-sxm", "bf16", Layout(1, 1, 1), "trtllm")
    r2 = trt.runtime_reserve_per_chip()
    assert trt.memory(1000, 100).kv_budget_per_chip == pytest.approx(
        0.9 * (80e9 - trt.weights_per_chip - r2))


# ---- layouts as engines run them ----------------------------------------------------

def test_tp_inside_the_domain_and_pp_only_across_it():
    m, h200 = CAT.model("llama-3.1-405b"), CAT.accelerator("h200")
    inside = layouts_for(m, 8, h200, "trtllm")
    assert all(lo.pp == 1 for lo in inside)
    across = layouts_for(m, 16, h200, "trtllm")
    assert all(lo.tp <= 8 for lo in across)
    assert any(lo.pp == 2 for lo in across)
    # Neuron runs no attention-DP: no ep with dp > 1
    q = CAT.model("qwen3-235b-a22b")
    assert not [lo for lo in layouts_for(q, 16, CAT.accelerator("trainium2"), "neuron")
                if lo.ep > 1 and lo.dp > 1]


def test_launch_gaps_count_the_kernels_of_each_layer_kind():
    """A dense layer is the prior's ~10 kernels; MoE (router, permute, grouped GEMMs,
    combine) and MLA (the low-rank projections) layers launch more, so a small-batch
    DeepSeek step carries more fixed time per layer than a Llama step."""
    assert kernels_per_layer(CAT.model("llama-3.1-8b")) == 10.0
    ds = CAT.model("deepseek-r1")
    assert 20.0 < kernels_per_layer(ds) < 24.0  # 3 of its 61 layers are dense
    assert 10.0 < kernels_per_layer(CAT.model("qwen3-235b-a22b")) <= 18.0
    llama = _unit("llama-3.1-8b", "h100-sxm", "fp8", Layout(1, 1, 1))
    deep = _unit("deepseek-r1", "h200", "fp8", Layout(8, 1, 1, 8))
    assert (deep.coeffs.fixed - deep._collectives()[2] - EFF.host_overhead_s) / 61 > (
        llama.coeffs.fixed - EFF.host_overhead_s) / 32 * 2


def test_allreduce_latency_follows_the_scaleup_topology():
    """Switched or fully meshed domains reach every chip in one step; rings, tori and
    hypercubes pay 2 log2(n) steps (recursive doubling-halving), so a small-batch decode
    step at tp16 on Trainium1 carries more collective latency than at tp8 on an H100."""
    assert allreduce_steps(CAT.accelerator("h100-sxm"), 8) == 1
    assert allreduce_steps(CAT.accelerator("mi300x"), 8) == 1
    assert allreduce_steps(CAT.accelerator("trainium3"), 16) == 1  # NeuronSwitch
    assert allreduce_steps(CAT.accelerator("trainium1"), 16) == 8
    assert allreduce_steps(CAT.accelerator("inferentia2"), 12) == 8
    assert allreduce_steps(CAT.accelerator("tpu-v6e"), 8) == 6
    assert allreduce_steps(CAT.accelerator("tpu-v6e"), 2) == 1
    trn = _unit("llama-3-8b", "trainium1", "bf16", Layout(16, 1, 1))
    trn_fixed = trn.coeffs.fixed
    flat = EFF.host_overhead_s + EFF.launch_gap_s_per_layer * 32
    assert trn_fixed - flat == pytest.approx(2 * 32 * 8e-6 * 8)


def test_a_unit_is_one_engine_instance_unless_replicas_are_asked():
    """Engines run one model over the chips they are given by default (vLLM's and
    SGLang's data parallelism defaults to 1; TRT-LLM's is attention-DP for MoE only);
    a system of instances (MLPerf) is asked with data_parallel=True, and --dp still
    fixes replicas."""
    m, h200 = CAT.model("llama-3.1-70b"), CAT.accelerator("h200")
    plain = [lo for lo in layouts_for(m, 8, h200, "trtllm") if lo.dp > 1]
    assert not plain
    assert not [lo for lo in layouts_for(m, 8, h200, "vllm") if lo.dp > 1]
    assert any(lo.dp > 1 for lo in layouts_for(m, 8, h200, "trtllm", replicas=True))
    assert any(lo.dp > 1 for lo in layouts_for(m, 8, h200, "vllm", replicas=True))
    q = dict(model="llama-3.1-70b", accelerator="h200", count=8, precision="fp8",
             engine="trtllm", input_len=1000, output_len=1000)
    one = estimate(Query(**q), cal=PRIORS)
    assert one.fits and one.layout == Layout(8, 1, 1, 1)
    system = estimate(Query(**q, data_parallel=True), cal=PRIORS)
    assert system.fits and system.layout is not None and system.layout.dp > 1
    assert system.output_tokens_per_s >= one.output_tokens_per_s
    asked = estimate(Query(**q, tp=2, dp=4), cal=PRIORS)
    assert asked.fits and asked.layout == Layout(2, 1, 4, 1)


def test_concurrency_is_the_whole_unit_and_limits_replicas():
    e = estimate(Query(model="llama-3-8b", accelerator="trainium1", count=16, precision="int8",
                       engine="neuron", input_len=128, output_len=128, concurrency=1), cal=PRIORS)
    assert e.fits and e.layout and e.layout.dp == 1
    assert e.concurrency == 1


def test_explicit_layout_subset_and_batching():
    q = dict(model="llama-3.1-70b", accelerator="h200", count=8, precision="fp8",
             input_len=1024, output_len=256, concurrency=64)
    e = estimate(Query(**q, tp=8), cal=PRIORS)
    assert e.layout == Layout(tp=8)
    s = estimate(Query(**q, tp=8, batching="static"), cal=PRIORS)
    assert s.batching == "static" and e.batching == "continuous"
    # static batching waits for the whole batch: never more throughput than continuous
    assert s.output_tokens_per_s <= e.output_tokens_per_s * 1.05
    with pytest.raises(TokenfleetError, match="no layout of 8 chips"):
        estimate(Query(**q, tp=3), cal=PRIORS)
    neuron = estimate(Query(model="llama-3-8b", accelerator="inferentia2", count=12,
                            precision="bf16", engine="neuron", concurrency=4), cal=PRIORS)
    assert neuron.batching == "static"


def test_simpler_layout_wins_a_near_tie_and_says_why():
    e = estimate(Query(model="llama-3.1-8b", accelerator="h100-sxm", count=8, precision="fp8",
                       input_len=1024, output_len=256), cal=PRIORS)
    assert e.layout_why
    assert e.layout and e.layout.pp == 1


# ---- precision: weights vs compute ---------------------------------------------------

def test_w4a16_runs_gpt_oss_on_hopper_and_fp4_does_not():
    base = dict(model="gpt-oss-120b", accelerator="h100-sxm", count=1, input_len=1024,
                output_len=256)
    ok = estimate(Query(**base, precision="w4a16"), cal=PRIORS)
    assert ok.fits, ok.reason
    assert ok.memory and ok.memory.weights_gb < 70
    no = estimate(Query(**base, precision="fp4"), cal=PRIORS)
    assert not no.fits and "FP4" in (no.reason or "") and "w4a16" in (no.reason or "")
    eng = estimate(Query(**{**base, "accelerator": "trainium2"}, precision="w4a16",
                         engine="neuron"), cal=PRIORS)
    assert not eng.fits and "engine neuron" in (eng.reason or "")


# ---- unmeasured chips ----------------------------------------------------------------

def test_unmeasured_chip_borrows_a_measured_peer_and_says_so():
    cal = load_fit()
    b = cal.basis(CAT.accelerator("maia-200"), None)
    assert b.peer is not None and b.group is not None
    assert "nearest measured peer" in b.text
    e = estimate(Query(model="llama-3.1-70b", accelerator="maia-200", count=1,
                       precision="fp8", input_len=2048, output_len=256))
    assert e.peer == b.peer and e.provenance == "spec-sheet" and "peer" in e.basis
    assert e.uncertainty and e.uncertainty.relative > 0


PAIR_MODELS = ("llama-3.1-70b", "gpt-oss-120b")
SHAPES = ((256, 2048), (4096, 128))  # decode-heavy, prefill-heavy


def _per_chip(model: str, chip: str, shape: tuple[int, int], cal: Calibration, prec: str,
              counts: tuple[int, ...] = (1, 2, 4, 8, 16)) -> tuple[float, int]:
    """Per-chip output tokens/s at the smallest of ``counts`` that fits, and that count."""
    for n in counts:
        e = estimate(Query(model=model, accelerator=chip, count=n, precision=prec,
                           input_len=shape[0], output_len=shape[1]), CAT, cal)
        if e.fits and e.output_tokens_per_s:
            return e.output_tokens_per_s / n, n
    return math.nan, 0


def _like_for_like(model: str, a: str, b: str, shape: tuple[int, int], cal: Calibration
                   ) -> float:
    """Per-chip throughput ratio a/b at the same precision (FP8 where both have it) and
    the same chip count (the smallest both fit)."""
    both_fp8 = CAT.accelerator(a).fp8_tflops and CAT.accelerator(b).fp8_tflops
    prec = "fp8" if both_fp8 else "bf16"
    if not (CAT.accelerator(a).peak_tflops(prec) and CAT.accelerator(b).peak_tflops(prec)):
        return math.nan
    _, na = _per_chip(model, a, shape, PRIORS, prec)
    _, nb = _per_chip(model, b, shape, PRIORS, prec)
    if not (na and nb):
        return math.nan
    n = (max(na, nb),)
    return _per_chip(model, a, shape, cal, prec, n)[0] / _per_chip(model, b, shape, cal, prec,
                                                                    n)[0]


def test_every_chip_pair_tracks_the_spec_roofline_unless_measured():
    """For every pair of catalog chips, the predicted per-chip throughput ratio stays
    within 1.5x of the ratio the plain spec roofline (the same physics, physical priors
    for every chip) gives, like for like (same precision and chip count) — unless both
    chips' numbers rest on public measurements (their own family's, or for an
    unmeasured chip its nearest measured peer's), whose sources the test names. A chip
    on priors must track the spec ratio against every chip, and an unmeasured chip must
    track it against the peer it borrows from, once the stated conservative scaling (to
    the slowest nearest measured group) is taken out."""
    cal = load_fit()
    chips = [a.id for a in CAT.accelerators]
    bad: list[str] = []
    named: set[str] = set()
    for model in PAIR_MODELS:
        for shape in SHAPES:
            for i, a in enumerate(chips):
                for b in chips[i + 1:]:
                    off = (_like_for_like(model, a, b, shape, cal)
                           / _like_for_like(model, a, b, shape, PRIORS))
                    if not math.isfinite(off):
                        continue
                    sa = cal.basis(CAT.accelerator(a), None).scale
                    sb = cal.basis(CAT.accelerator(b), None).scale
                    off = off / (sa / sb)  # the stated conservative scaling
                    if 1 / 1.5 <= off <= 1.5:
                        continue
                    ba = cal.basis(CAT.accelerator(a), None)
                    bb = cal.basis(CAT.accelerator(b), None)
                    borrowed_pair = ba.peer == b or bb.peer == a
                    if ba.group and bb.group and not borrowed_pair:
                        ga, gb = cal.groups[ba.group], cal.groups[bb.group]
                        named.add(f"{ba.group}: {', '.join(ga.sources)}")
                        named.add(f"{bb.group}: {', '.join(gb.sources)}")
                        continue  # measurements of the two groups say so
                    bad.append(f"{model} {shape} {a}/{b}: {off:.2f}x off the spec ratio "
                               f"({ba.text} | {bb.text})")
    print("pairs off the spec ratio rest on these measurements:\n" + "\n".join(sorted(named)))
    assert not bad, "\n".join(bad)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 512), st.integers(128, 32768), st.integers(16, 4096))
def test_attention_dp_waits_for_the_busiest_rank(conc, inp, out):
    """Under attention-DP every rank waits at each expert layer for the rank that runs
    a prompt chunk: never faster than the averaged step, and equal to it without DP."""
    u = _unit("deepseek-r1", "h200", "fp8", Layout(1, 1, 8, 8))
    dec = np.array([float(conc)])
    pre = dec * inp / out
    chunk = np.minimum(float(inp), np.maximum(8192 - dec, 1.0))
    busy = u._busiest_prefill(pre, chunk)
    assert busy is not None and busy[0] >= pre[0] - 1e-9 and busy[0] <= max(chunk[0], pre[0])
    coupled = u.step_s(dec, inp + out / 2, pre, inp, busy)
    averaged = u.step_s(dec, inp + out / 2, pre, inp)
    assert coupled[0] >= averaged[0] - 1e-12
    tp = _unit("deepseek-r1", "h200", "fp8", Layout(8, 1, 1, 8))
    assert tp._busiest_prefill(pre, chunk) is None


def test_every_calibration_row_can_be_asked_and_mlperf_rows_are_systems():
    """Rows beyond the model's catalog context (which estimate refuses) are excluded with
    the reason, so every used row is a query a user could ask; MLPerf figures are asked
    as systems of instances (data_parallel=True) in both paths, other rows are not."""
    points, excluded = load_points(catalog=CAT)
    for p in points:
        ctx = CAT.model(p.model).max_context_tokens
        assert ctx is None or p.input_len + p.output_len <= ctx
    assert any("beyond" in e.reason and "context" in e.reason for e in excluded)
    mlperf = [p for p in points if p.source.startswith("mlcommons/")]
    assert mlperf and all(p.system for p in mlperf)
    assert all(p.query_fields(False).get("data_parallel") for p in mlperf)
    assert not any(p.system for p in points if not p.source.startswith("mlcommons/"))
