"""Causal-LM code paths on a tiny randomly initialised Llama (and GPT-2's Conv1D)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenfleet.quality.fakequant import fake_quantized  # noqa: E402
from tokenfleet.quality.formats import E2M1  # noqa: E402
from tokenfleet.quality.metrics import CausalTotals  # noqa: E402
from tokenfleet.quality.quantize import get_quantizer  # noqa: E402
from tokenfleet.quality.validate import PrecisionValidator  # noqa: E402


@pytest.fixture(scope="module")
def validator(tiny_llama_dir, sentences) -> PrecisionValidator:
    return PrecisionValidator(tiny_llama_dir, sentences, batch_size=8, model_name="tiny")


def test_kind_detected_from_architecture(validator) -> None:
    assert validator.kind == "causal-lm"


def test_reference_perplexity_matches_unpadded_per_text_computation(
    validator, tiny_llama_dir, sentences
) -> None:
    # Batched, right-padded evaluation must give the perplexity of one text at a time.
    tok = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in sentences:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=128)["input_ids"]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    result = validator.evaluate("bf16")
    assert result.ppl_ref == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_metrics_grow_with_coarser_formats(validator) -> None:
    bf16 = validator.evaluate("bf16")
    nv = validator.evaluate("nvfp4")
    int4 = validator.evaluate("int4", group_size=32)
    assert 0 <= bf16.kl_mean < 1e-3 and bf16.top1_agreement >= 0.98
    assert nv.kl_mean > 10 * bf16.kl_mean
    assert int4.group_size == 32 and int4.kl_mean > bf16.kl_mean
    for r in (bf16, nv, int4):
        assert r.ppl_delta_pct == pytest.approx(100 * (r.ppl / r.ppl_ref - 1))
        assert 0 <= r.top1_agreement <= 1
        assert r.cosine_mean is None
        assert r.quantized_layers == 2 * 7  # q,k,v,o,gate,up,down per layer; lm_head kept


def test_totals_against_hand_computation() -> None:
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64))
    cur = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float64))
    targets = torch.tensor([1, 0])
    totals = CausalTotals()
    totals.add(ref, cur, targets)
    m = totals.metrics()
    kl_first = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert m["kl_mean"] == pytest.approx(kl_first / 2)
    assert m["top1_agreement"] == 0.5  # first row: argmax 0 (tie -> first) vs 1
    assert m["ppl_ref"] == pytest.approx(math.exp(-(math.log(0.5) + math.log(0.9)) / 2))
    assert m["ppl"] == pytest.approx(math.exp(-(math.log(0.75) + math.log(0.9)) / 2))
    same = CausalTotals()
    same.add(ref, ref, targets)
    assert same.metrics()["kl_mean"] == 0 and same.metrics()["ppl_delta_pct"] == 0


def test_kv_cache_quantization_reaches_attention_and_is_undone(validator, monkeypatch) -> None:
    import transformers.integrations.sdpa_attention as sdpa

    keys = []
    real = sdpa.sdpa_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        keys.append(key)
        return real(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    model, batch = validator.model, validator.batches[0].inputs
    with (
        torch.no_grad(),
        fake_quantized(model, get_quantizer("mxfp4"), weights=False, kv_cache=True),
    ):
        model(**batch, use_cache=False)
    assert len(keys) == 2  # one per layer, seen after RoPE, before attention
    k = keys[0].reshape(-1, 16)  # head_dim 16: one MX block (of 32) covers one vector
    k = k[k.abs().amax(-1) > 0]  # padded positions (zero pad embedding) have zero keys
    scale = 2.0 ** (torch.floor(torch.log2(k.abs().amax(-1, keepdim=True))) - 2)
    assert torch.isin((k / scale).abs(), torch.tensor(E2M1.finite_magnitudes())).all()
    assert model.config._attn_implementation == "sdpa"  # restored


def test_kv_cache_flag_changes_the_measurement(validator) -> None:
    plain = validator.evaluate("int4", group_size=16)
    with_kv = validator.evaluate("int4", group_size=16, kv_cache=True)
    assert with_kv.kv_cache and with_kv.kl_mean != plain.kl_mean


def test_uncached_reference_gives_identical_metrics(tiny_llama_dir, sentences, validator) -> None:
    cached = validator.evaluate("nvfp4", activations=True)
    uncached = PrecisionValidator(
        tiny_llama_dir, sentences, batch_size=8, reference_cache_bytes=0
    ).evaluate("nvfp4", activations=True)
    for field in ("ppl_ref", "ppl", "kl_mean", "top1_agreement"):
        assert getattr(uncached, field) == pytest.approx(getattr(cached, field), rel=1e-9)


def test_gpt2_conv1d_weights_are_blocked_along_the_input_axis() -> None:
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    wte = model.transformer.wte.weight.detach().clone()
    grid = torch.tensor(E2M1.finite_magnitudes())
    with fake_quantized(model, get_quantizer("mxfp4")) as layers:
        assert layers == 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj; tied lm_head kept
        w = model.transformer.h[0].attn.c_attn.weight.detach()  # Conv1D: [in=64, out=192]
        blocks = w.t().reshape(-1, 32)  # blocks run along the 64 inputs
        scale = 2.0 ** (torch.floor(torch.log2(blocks.abs().amax(-1, keepdim=True))) - 2)
        assert torch.isin((blocks / scale).abs(), grid).all()
        assert torch.equal(model.transformer.wte.weight, wte)
