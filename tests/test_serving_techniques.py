"""Serving techniques in the performance model: prefix caching, speculative decoding /
MTP, prefill- and decode-only units, and the KV handover between them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import load_fit
from tokenfleet.perf.disagg import (
    balanced_pools,
    custom_link,
    decode_requests_per_s,
    link_between,
    pd_ratio,
    prefill_requests_per_s,
    prompt_kv_bytes,
    transfer_s,
)
from tokenfleet.perf.estimate import Query, estimate
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.speculative import (
    Speculation,
    expected_tokens_per_step,
    parse_speculation,
    tpot_s,
)
from tokenfleet.perf.techniques import Techniques, TechniqueUnit
from tokenfleet.perf.unit import Layout, UnitModel

CAT = load_catalog()
CAL = load_fit()

# ---- speculation arithmetic ------------------------------------------------------------


@given(st.integers(1, 12), st.floats(0.0, 1.0))
def test_expected_tokens_is_the_geometric_sum(k: int, a: float) -> None:
    want = sum(a ** i for i in range(k + 1))
    assert expected_tokens_per_step(k, a) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert 1.0 <= expected_tokens_per_step(k, a) <= k + 1


def test_expected_tokens_edges_and_tpot() -> None:
    assert expected_tokens_per_step(7, 0.0) == 1.0
    assert expected_tokens_per_step(7, 1.0) == 8.0
    # DeepSeek-V3 MTP: one extra token at 85% acceptance -> 1.85 tokens per step
    assert expected_tokens_per_step(1, 0.85) == pytest.approx(1.85)
    assert tpot_s(0.02, 0.001, 3, 0.5) == pytest.approx(0.023 / 1.875)


def test_parse_speculation_forms_and_errors() -> None:
    assert parse_speculation("mtp") == Speculation("mtp", 1, 0.85)
    assert parse_speculation("mtp:2:0.7") == Speculation("mtp", 2, 0.7)
    assert parse_speculation("draft:llama-3.2-1b") == Speculation("draft", 4, 0.8, "llama-3.2-1b")
    s = parse_speculation("fused:llama-3.2-1b:7:0.8")
    assert (s.kind, s.k, s.acceptance, s.label()) == ("fused", 7, 0.8, "fused:llama-3.2-1b:7:0.8")
    for bad in ("eagle:3", "draft", "draft::3", "mtp:x", "mtp:2:1.5", "mtp:0", "mtp:1:0.5:9"):
        with pytest.raises(TokenfleetError):
            parse_speculation(bad)


# ---- the technique unit ----------------------------------------------------------------


def _units(model: str, chip: str, prec: str, layout: Layout, tech: Techniques
           ) -> tuple[UnitModel, TechniqueUnit]:
    m, a = CAT.model(model), CAT.accelerator(chip)
    p = get_precision(prec)
    eff, _ = CAL.efficiency(a.family, None)
    return (UnitModel(m, a, p, p.default_kv, layout, eff),
            TechniqueUnit(m, a, p, p.default_kv, layout, eff, tech))


@pytest.mark.parametrize("model,chip,prec,layout", [
    ("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 1, 1)),
    ("llama-3.1-70b", "mi300x", "fp8", Layout(2, 2, 2)),
    ("deepseek-r1", "h200", "fp8", Layout(8, 1, 1, 8)),
])
def test_no_technique_equals_the_plain_unit(model: str, chip: str, prec: str,
                                            layout: Layout) -> None:
    plain, tech = _units(model, chip, prec, layout, Techniques())
    c = np.asarray([1.0, 8.0, 64.0, 300.0])
    a, b = plain.continuous(c, 3000, 400), tech.continuous(c, 3000, 400)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12)
    assert tech.memory(3000, 400) == plain.memory(3000, 400)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 0.95), st.floats(0.0, 0.95))
def test_prefix_hits_only_help(h1: float, h2: float) -> None:
    lo, hi = sorted((h1, h2))
    _, u_lo = _units("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 1, 1), Techniques(lo))
    _, u_hi = _units("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 1, 1), Techniques(hi))
    c = np.asarray([1.0, 16.0, 128.0])
    r_lo, r_hi = u_lo.continuous(c, 8000, 300), u_hi.continuous(c, 8000, 300)
    assert np.all(r_hi["output_tokens_per_s"] >= r_lo["output_tokens_per_s"] * (1 - 1e-12))
    assert np.all(r_hi["ttft_s"] <= r_lo["ttft_s"] * (1 + 1e-12))
    # the cache skips compute, not memory: the whole context stays in KV
    assert u_hi.memory(8000, 300) == u_lo.memory(8000, 300)


def test_speculation_that_never_hits_only_costs() -> None:
    spec = Speculation("draft", 4, 0.0, "llama-3.2-1b")
    plain, unit = _units("llama-3.1-70b", "h100-sxm", "fp8", Layout(4, 1, 1),
                         Techniques(speculation=spec, draft=CAT.model("llama-3.2-1b")))
    c = np.asarray([1.0, 32.0])
    slow, base = unit.continuous(c, 2000, 500), plain.continuous(c, 2000, 500)
    assert np.all(slow["tpot_s"] > base["tpot_s"])
    # the draft's weights and KV take memory from the target's sequences
    assert unit.memory(2000, 500).max_concurrency < plain.memory(2000, 500).max_concurrency


def test_speculation_cuts_tpot_at_low_batch() -> None:
    q = Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4, precision="fp8",
              input_len=2000, output_len=500, concurrency=1, layout={"tp": 4})
    e0 = estimate(q)
    for s in ("draft:llama-3.2-1b:4:0.8", "fused:llama-3.2-1b:4:0.8"):
        e = estimate(q.model_copy(update={"speculative": s}))
        assert e.tpot_s < e0.tpot_s / 1.5
        assert e.tokens_per_step == pytest.approx(expected_tokens_per_step(4, 0.8))


def test_mtp_on_deepseek() -> None:
    q = Query(model="deepseek-r1", accelerator="h200", count=8, precision="fp8",
              input_len=4000, output_len=1000, concurrency=8)
    e0, e = estimate(q), estimate(q.model_copy(update={"speculative": "mtp"}))
    assert e.speculative == "mtp:1:0.85" and e.tpot_s < e0.tpot_s


def test_bad_draft_is_a_clear_error() -> None:
    with pytest.raises(TokenfleetError):  # unknown model
        estimate(Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4,
                       speculative="draft:no-such-model"))
    with pytest.raises(TokenfleetError, match="vocabulary"):  # other tokenizer
        estimate(Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4,
                       speculative="draft:mistral-7b"))
    with pytest.raises(ValidationError):
        Query(model="x", accelerator="y", speculative="eagle")
    with pytest.raises(TokenfleetError, match="multi-token-prediction"):  # no MTP head
        estimate(Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4,
                       speculative="mtp"))


# ---- the checks ----------------------------------------------------------------


def test_prefix_cache_raises_r1_long_prompt_throughput() -> None:
    q = Query(model="deepseek-r1", accelerator="h200", count=8, precision="fp8",
              input_len=8000, output_len=300)
    e0, e1 = estimate(q), estimate(q.model_copy(update={"prefix_hit_rate": 0.5}))
    assert e1.output_tokens_per_s > 1.2 * e0.output_tokens_per_s
    # The cache skips compute, not memory: at one layout the KV held is the same.
    fixed = q.model_copy(update={"layout": Layout(tp=8, ep=8)})
    m0, m1 = estimate(fixed), estimate(fixed.model_copy(update={"prefix_hit_rate": 0.5}))
    assert m1.memory == m0.memory


# AWS Neuron, Trn2 (16 chips, TP=64 logical cores at LNC=2), 10,000 in / 1,500 out, batch 1,
# Llama-3.2-1B fused draft, speculation length 7 (aws-neuron/aws-neuron-sdk@81ce03ae:
# libraries/nxd-inference/tutorials/llama70b_perf_comparison.csv, llama405b_perf_comparison.csv
# and the tutorials next to them). TPOT P50 in ms.
AWS_FUSED_TPOT_MS = {("llama-3.3-70b", "bf16"): 5.3, ("llama-3.1-405b", "fp8"): 8.27}


@pytest.mark.parametrize("model,prec", list(AWS_FUSED_TPOT_MS))
def test_fused_speculation_matches_aws_trn2_within_30_percent(model: str, prec: str) -> None:
    e = estimate(Query(model=model, accelerator="trainium2", count=16, precision=prec,
                       engine="neuron", input_len=10000, output_len=1500, concurrency=1,
                       layout={"tp": 16}, speculative="fused:llama-3.2-1b:7"))
    assert e.speculative == "fused:llama-3.2-1b:7:0.8"  # the default acceptance, stated
    assert e.tpot_s * 1e3 == pytest.approx(AWS_FUSED_TPOT_MS[(model, prec)], rel=0.30)


# ---- roles and the KV handover ---------------------------------------------------------


def test_prefill_role_reports_prompt_rate_and_handover() -> None:
    q = Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4, precision="fp8",
              input_len=4000, output_len=400, slo_ttft=2.0, prefix_hit_rate=0.25)
    e = estimate(q.model_copy(update={"role": "prefill"}))
    assert e.role == "prefill" and e.tpot_s is None and e.kv_transfer_s > 0
    assert e.prompt_tokens_per_s == pytest.approx(e.requests_per_s * 4000 * 0.75)
    slow = estimate(q.model_copy(update={"role": "prefill", "kv_link_gbps": 0.5}))
    assert slow.kv_transfer_s > e.kv_transfer_s
    assert slow.output_tokens_per_s <= e.output_tokens_per_s * (1 + 1e-9)
    # Under a TTFT SLO both sit near the SLO; at one batch the slow link adds its time.
    at = {"role": "prefill", "slo_ttft": None, "concurrency": 8, "layout": Layout(tp=4)}
    fast_c = estimate(q.model_copy(update=at))
    slow_c = estimate(q.model_copy(update={**at, "kv_link_gbps": 0.5}))
    assert slow_c.ttft_s > fast_c.ttft_s


def test_decode_role_carries_no_prefill() -> None:
    q = Query(model="llama-3.1-70b", accelerator="h100-sxm", count=4, precision="fp8",
              input_len=4000, output_len=400, concurrency=64, layout={"tp": 4})
    agg, dec = estimate(q), estimate(q.model_copy(update={"role": "decode"}))
    assert dec.tpot_s < agg.tpot_s and dec.output_tokens_per_s > agg.output_tokens_per_s


def test_draft_model_record_by_hand() -> None:
    from tokenfleet.perf.architecture import param_counts

    # Llama-3.2-1B: tied embedding 128256*2048; per layer q,o 2048^2, k,v 2048*512,
    # gated MLP 3*2048*8192; 16 layers (norm weights, 67,584 in all, are not counted)
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192
    assert param_counts(CAT.model("llama-3.2-1b")).total == 128256 * 2048 + 16 * layer


def test_kv_bytes_by_hand() -> None:
    # Llama-3.1-70B, GQA: K and V, 8 heads x 128, 80 layers, 2 bytes (bf16)
    assert prompt_kv_bytes(CAT.model("llama-3.1-70b"), 1000, "bf16") == 1000 * 2 * 8 * 128 * 80 * 2
    # DeepSeek-R1, MLA: latent 512 + rope 64 per layer, 61 layers, 1 byte (fp8)
    assert prompt_kv_bytes(CAT.model("deepseek-r1"), 1000, "fp8") == 1000 * (512 + 64) * 61


def test_links() -> None:
    h100, mi300 = CAT.accelerator("h100-sxm"), CAT.accelerator("mi300x")
    up = link_between(h100, h100, same_domain=True)
    out = link_between(h100, mi300)
    assert up.gb_per_s_per_chip == h100.scaleup_gbps / 2
    assert out.gb_per_s_per_chip == min(h100.scaleout_gbps, mi300.scaleout_gbps) / 2
    with pytest.raises(TokenfleetError):
        link_between(h100, mi300, same_domain=True)
    one = transfer_s(1e9, out, 1)
    assert transfer_s(1e9, out, 4) - out.latency_s == pytest.approx((one - out.latency_s) / 4)
    with pytest.raises(TokenfleetError):
        custom_link(0.0)


def test_pool_balance() -> None:
    p = prefill_requests_per_s(4, 0.5)  # 8 req/s
    d = decode_requests_per_s(64, 0.02, 1.0, 400)  # 8 req/s
    assert p == pytest.approx(8.0) and d == pytest.approx(8.0)
    assert pd_ratio(p, 2 * d) == pytest.approx(2.0)
    assert balanced_pools(20.0, p, d / 2) == (3, 5)
