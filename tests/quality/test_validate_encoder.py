"""Precision validation on a real encoder: all-MiniLM-L6-v2 with its published weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokenfleet.errors import TokenfleetError  # noqa: E402
from tokenfleet.quality.assessment import FormatResult, check_precision  # noqa: E402
from tokenfleet.quality.fakequant import fake_quantized, quantizable_linears  # noqa: E402
from tokenfleet.quality.formats import E2M1  # noqa: E402
from tokenfleet.quality.quantize import get_quantizer  # noqa: E402
from tokenfleet.quality.validate import PrecisionValidator  # noqa: E402


@pytest.fixture(scope="module")
def validator(minilm_dir, sentences) -> PrecisionValidator:
    return PrecisionValidator(minilm_dir, sentences, model_name="all-minilm-l6-v2")


@pytest.fixture(scope="module")
def results(validator) -> dict[str, FormatResult]:
    out = {f: validator.evaluate(f) for f in ("bf16", "fp8-e4m3", "mxfp4", "nvfp4")}
    out["nvfp4+act"] = validator.evaluate("nvfp4", activations=True)
    return out


def test_reference_embeddings_match_sentence_transformers(validator, minilm_dir, sentences):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    theirs = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    ours = torch.nn.functional.normalize(validator.reference_embeddings, dim=-1)
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=0)


def test_quality_orders_as_the_formats_precision(results) -> None:
    bf16, fp8, mx, nv = (results[k] for k in ("bf16", "fp8-e4m3", "mxfp4", "nvfp4"))
    assert bf16.cosine_mean > 0.9999 and bf16.knn_agreement_at_10 >= 0.95
    assert 0.99 < fp8.cosine_mean < bf16.cosine_mean
    # 4-bit elements lose visibly more than 8-bit ones on real weights
    assert mx.cosine_mean < fp8.cosine_mean and nv.cosine_mean < fp8.cosine_mean
    assert mx.knn_agreement_at_10 < bf16.knn_agreement_at_10
    for r in results.values():
        assert -1 <= r.cosine_min <= r.cosine_mean <= 1
        assert 0 <= r.knn_agreement_at_10 <= 1
        assert r.quantized_layers == 37  # 6 layers x (q, k, v, o, up, down) + pooler
        assert r.ppl is None and r.kl_mean is None


def test_quantizing_activations_costs_extra(results) -> None:
    assert results["nvfp4+act"].activations and not results["nvfp4"].activations
    assert results["nvfp4+act"].cosine_mean < results["nvfp4"].cosine_mean


def test_weights_sit_on_the_mx_grid_inside_and_are_restored_after(validator) -> None:
    model = validator.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = torch.tensor(E2M1.finite_magnitudes())
    with fake_quantized(model, get_quantizer("mxfp4")) as layers:
        assert layers == len(quantizable_linears(model))
        w = model.encoder.layer[0].attention.self.query.weight.detach()
        blocks = w.reshape(-1, 32)
        amax = blocks.abs().amax(-1, keepdim=True)
        scale = 2.0 ** (torch.floor(torch.log2(amax)) - 2)
        ratio = (blocks / scale).abs()
        assert torch.isin(ratio, grid).all()
        # embeddings and LayerNorm are left alone
        emb = model.embeddings.word_embeddings.weight
        assert torch.equal(emb, before["embeddings.word_embeddings.weight"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_activation_hook_feeds_quantized_inputs(validator) -> None:
    model = validator.model
    layer = model.encoder.layer[0].intermediate.dense
    seen = []
    batch = validator.batches[0].inputs
    with torch.no_grad(), fake_quantized(model, get_quantizer("int8"), activations=True):
        handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        model(**batch)
        handle.remove()
    x = seen[0]
    scale = x.abs().amax(-1, keepdim=True) / 127  # int8 activations: one scale per token
    steps = x / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert not layer._forward_pre_hooks  # hooks removed on exit


def test_report_feeds_the_planner(validator, results) -> None:
    fp8_act = validator.evaluate("fp8-e4m3", activations=True)
    report = validator.report([results["nvfp4"], results["nvfp4+act"], fp8_act])
    assert report.kind == "encoder" and report.data.texts == 40 and report.data.tokens > 400
    ok, why = check_precision(report, "fp8", {"min_cosine": 0.99})
    assert ok, why
    ok, why = check_precision(report, "fp4", {"min_cosine": 0.999})
    assert not ok and "weights+activations" in why and f"{fp8_act.cosine_mean:.4g}" not in why


def test_encoder_input_errors(validator, minilm_dir, sentences) -> None:
    with pytest.raises(TokenfleetError, match="causal LMs"):
        validator.evaluate("fp8-e4m3", kv_cache=True)
    with pytest.raises(TokenfleetError, match="more than 10 texts"):
        PrecisionValidator(minilm_dir, sentences[:10])
    with pytest.raises(TokenfleetError, match="allowed"):
        validator.evaluate("fp3")
