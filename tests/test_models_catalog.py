"""The bundled model catalog (models.yaml) and the Hugging Face config.json parser.

Every expected number here is computed by hand from the published config, with the
arithmetic written out, so a wrong catalog record or a wrong formula fails.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tokenfleet.catalog.hf_config import model_from_hf_config
from tokenfleet.catalog.loader import Catalog, _norm, load_catalog
from tokenfleet.catalog.schema import ModelSpec
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.architecture import (
    kv_elements,
    kv_elements_per_token_layer,
    param_counts,
)

MODELS_YAML = Path(str(resources.files("tokenfleet.catalog.data").joinpath("models.yaml")))
FIXTURES = Path(__file__).parent / "data" / "hf_configs"
CALIBRATION_CSV = Path("/work/shared/calibration/published_measurements.csv")

REQUIRED_IDS = [
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b",
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.3-70b", "llama-3.1-405b",
    "llama-4-scout", "llama-4-maverick", "mistral-7b", "mistral-7b-instruct-v0.2",
    "mixtral-8x7b", "gemma-7b", "gpt-j-6b", "qwen3-32b", "qwen3-30b-a3b",
    "qwen3-235b-a22b", "qwen3-coder-480b-a35b", "deepseek-r1", "gpt-oss-20b",
    "gpt-oss-120b", "codellama-13b", "llama-3.2-1b",
]  # fmt: skip

# Every name in the calibration CSV's `model` column, and the catalog id it must reach.
CALIBRATION_NAMES = {
    "Llama-3-8B": "llama-3-8b",
    "Llama 4 Scout": "llama-4-scout",
    "Llama-2-70b": "llama-2-70b",
    "Llama 3.1 405B": "llama-3.1-405b",
    "CodeLlama-13b-hf": "codellama-13b",
    "Llama 3.3 70B": "llama-3.3-70b",
    "Llama 4 Maverick": "llama-4-maverick",
    "llama2-70b-99": "llama-2-70b",
    "Llama 3.1 8B": "llama-3.1-8b",
    "Llama-3-70B": "llama-3-70b",
    "Llama-2-7b": "llama-2-7b",
    "Llama-2-13b": "llama-2-13b",
    "Qwen3-30B-A3B": "qwen3-30b-a3b",
    "Qwen3-235B-A22B": "qwen3-235b-a22b",
    "Llama-3.3-70B-Instruct": "llama-3.3-70b",
    "Mistral-7B-Instruct-v0.2": "mistral-7b-instruct-v0.2",
    "gptj-99": "gpt-j-6b",
    "Llama-2-7B": "llama-2-7b",
    "Gemma-7B": "gemma-7b",
}

# Publishers that count the input-embedding table in their "active" figure. The Qwen3
# MoE cards give a separate non-embedding count, so their headline numbers include it
# (Qwen3-30B-A3B: 3.3B activated; without the 0.31B input embedding the network has
# 3.04B). Meta's "17B active" for Llama 4 is 16.1B without it, 17.2B with it. DeepSeek
# says its 37B (36.6B) includes the output head only; OpenAI's 5.1B/3.6B likewise.
ACTIVE_COUNTS_INPUT_EMBEDDING = {
    "qwen3-30b-a3b", "qwen3-235b-a22b", "qwen3-coder-480b-a35b",
    "llama-4-scout", "llama-4-maverick",
}  # fmt: skip


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """models.yaml on its own, so these tests do not depend on accelerators.yaml."""
    cat = Catalog()
    cat.merge_file(MODELS_YAML, bundled=True)
    return cat


def _all_models() -> list[ModelSpec]:
    cat = Catalog()
    cat.merge_file(MODELS_YAML, bundled=True)
    return list(cat.models)


# ----------------------------------------------------------------------------- catalog


@pytest.mark.parametrize("model_id", REQUIRED_IDS)
def test_required_model_loads(catalog: Catalog, model_id: str) -> None:
    m = catalog.model(model_id)
    assert m.id == model_id
    assert m.source.startswith("https://huggingface.co/")
    assert m.source.endswith("/blob/main/config.json")


def test_catalog_has_no_extra_or_missing_ids(catalog: Catalog) -> None:
    assert sorted(m.id for m in catalog.models) == sorted(REQUIRED_IDS)


def test_names_and_aliases_are_unambiguous(catalog: Catalog) -> None:
    """The registry maps each normalized name to one id; a clash would silently win."""
    owner: dict[str, str] = {}
    for m in catalog.models:
        for name in (m.id, *m.aliases):
            key = _norm(name)
            assert owner.setdefault(key, m.id) == m.id, f"{name!r}: {owner[key]} and {m.id}"


@pytest.mark.parametrize(("name", "model_id"), sorted(CALIBRATION_NAMES.items()))
def test_calibration_name_resolves(catalog: Catalog, name: str, model_id: str) -> None:
    assert catalog.model(name).id == model_id


def test_calibration_csv_names_are_all_mapped() -> None:
    if not CALIBRATION_CSV.exists():
        pytest.skip(f"{CALIBRATION_CSV} not present")
    with CALIBRATION_CSV.open(newline="") as f:
        names = {row["model"] for row in csv.DictReader(f)}
    assert names, "no model names read from the calibration CSV"
    assert names <= set(CALIBRATION_NAMES), sorted(names - set(CALIBRATION_NAMES))


def test_mistral_variants_differ_in_sliding_window(catalog: Catalog) -> None:
    v01 = catalog.model("mistralai/Mistral-7B-v0.1")
    v02 = catalog.model("Mistral-7B-Instruct-v0.2")
    assert (v01.id, v01.sliding_window, v01.attention_pattern) == (
        "mistral-7b",
        4096,
        ("sliding",),
    )
    assert (v02.id, v02.sliding_window, v02.attention_pattern) == (
        "mistral-7b-instruct-v0.2",
        None,
        ("full",),
    )


def test_load_catalog_includes_models() -> None:
    try:
        cat = load_catalog()
    except TokenfleetError as e:  # bundled accelerators.yaml not written yet
        pytest.skip(f"bundled catalog not loadable yet: {e}")
    assert cat.model("llama-3.1-70b").num_layers == 80
    assert cat.model("meta-llama/Llama-3.1-70B-Instruct").id == "llama-3.1-70b"


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("m", [m for m in _all_models() if m.params_total_b], ids=lambda m: m.id)
def test_total_params_match_publisher(m: ModelSpec) -> None:
    assert m.params_total_b is not None
    total_b = param_counts(m).total / 1e9
    assert total_b == pytest.approx(m.params_total_b, rel=0.03), (
        f"{m.id}: computed {total_b:.2f}B vs published {m.params_total_b}B"
    )


@pytest.mark.parametrize("m", [m for m in _all_models() if m.is_moe], ids=lambda m: m.id)
def test_active_params_match_publisher(m: ModelSpec) -> None:
    assert m.params_active_b is not None, f"{m.id}: MoE model without a published active count"
    active = param_counts(m).active
    if m.id in ACTIVE_COUNTS_INPUT_EMBEDDING:
        active += m.vocab_size * m.hidden_size
    assert active / 1e9 == pytest.approx(m.params_active_b, rel=0.05), (
        f"{m.id}: computed {active / 1e9:.2f}B vs published {m.params_active_b}B"
    )


def test_moe_hand_counts(catalog: Catalog) -> None:
    """Two MoE layouts by hand: Mixtral (all layers MoE) and Maverick (every other)."""
    mix = param_counts(catalog.model("mixtral-8x7b"))
    expert = 3 * 4096 * 14336  # gate, up, down of one expert
    assert mix.experts == 32 * 8 * expert
    assert mix.experts_active == 32 * 2 * expert
    assert mix.dense_mlp == 0
    assert mix.shared == 32 * 4096 * 8  # routers only
    attn = 4096 * 4096 + 2 * 4096 * 8 * 128 + 4096 * 4096  # q, k+v, o
    assert mix.attention == 32 * attn

    mav = param_counts(catalog.model("llama-4-maverick"))
    expert = 3 * 5120 * 8192
    assert mav.experts == 24 * 128 * expert  # layers 1, 3, ..., 47
    assert mav.shared == 24 * (expert + 5120 * 128)  # one shared expert + router
    assert mav.dense_mlp == 24 * 3 * 5120 * 16384  # layers 0, 2, ..., 46 (intermediate_size_mlp)


def test_deepseek_mla_hand_count(catalog: Catalog) -> None:
    pc = param_counts(catalog.model("deepseek-r1"))
    h, heads = 7168, 128
    q = h * 1536 + 1536 * heads * (128 + 64)  # q_a (down) + q_b (up to nope+rope)
    kv = h * (512 + 64) + 512 * heads * (128 + 128)  # kv_a (+rope key) + kv_b (k_nope, v)
    o = heads * 128 * h
    assert pc.attention == 61 * (q + kv + o)
    assert pc.dense_mlp == 3 * 3 * h * 18432  # first_k_dense_replace 3
    assert pc.experts == 58 * 256 * 3 * h * 2048
    assert pc.shared == 58 * (3 * h * 2048 + h * 256)  # 1 shared expert + router


# -------------------------------------------------------------- KV cache, by hand


def test_kv_mha_llama2_7b(catalog: Catalog) -> None:
    m = catalog.model("llama-2-7b")
    # MHA: K and V, 32 KV heads x 128 dims, per layer.
    assert kv_elements_per_token_layer(m) == 2 * 32 * 128 == 8192
    assert kv_elements(m, 1) == 2 * 32 * 128 * 32 == 262_144
    assert kv_elements(m, 4096) == 262_144 * 4096


def test_kv_gqa_llama31_70b(catalog: Catalog) -> None:
    m = catalog.model("llama-3.1-70b")
    # GQA: only the 8 KV heads are cached (not the 64 query heads).
    assert kv_elements_per_token_layer(m) == 2 * 8 * 128 == 2048
    assert kv_elements(m, 1) == 2048 * 80 == 163_840
    assert kv_elements(m, 10_000) == 163_840 * 10_000


def test_kv_mla_deepseek_r1(catalog: Catalog) -> None:
    m = catalog.model("deepseek-r1")
    # MLA: one 512-wide latent + the 64-wide shared RoPE key per token and layer,
    # not 2 x 128 heads x 128 dims (= 32768, 57x more).
    assert kv_elements_per_token_layer(m) == 512 + 64 == 576
    assert kv_elements(m, 1) == (512 + 64) * 61 == 35_136
    assert kv_elements(m, 8192) == 35_136 * 8192


@pytest.mark.parametrize(
    ("seq", "expected"),
    [
        # 36 layers, 18 sliding (window 128) + 18 full; 2 * 8 KV heads * 64 = 1024 per layer.
        (100, 18 * 100 * 1024 + 18 * 100 * 1024),  # below the window: all 36 hold 100
        (10_000, 18 * 10_000 * 1024 + 18 * 128 * 1024),  # sliding layers capped at 128
    ],
)
def test_kv_hybrid_gpt_oss_120b(catalog: Catalog, seq: int, expected: int) -> None:
    m = catalog.model("gpt-oss-120b")
    assert kv_elements_per_token_layer(m) == 2 * 8 * 64 == 1024
    assert [m.layer_attention(i) for i in range(4)] == ["sliding", "full", "sliding", "full"]
    assert kv_elements(m, seq) == expected
    assert kv_elements(m, 100) == 3_686_400
    assert kv_elements(m, 10_000) == 186_679_296


def test_kv_sliding_mistral_7b(catalog: Catalog) -> None:
    v01 = catalog.model("mistral-7b")
    # v0.1: every one of the 32 layers keeps the last 4096 tokens; 2 * 8 * 128 = 2048.
    assert kv_elements(v01, 8192) == 32 * 4096 * 2048 == 268_435_456
    assert kv_elements(v01, 1000) == 32 * 1000 * 2048
    # v0.2 has no window: twice as much at 8192.
    v02 = catalog.model("mistral-7b-instruct-v0.2")
    assert kv_elements(v02, 8192) == 32 * 8192 * 2048 == 536_870_912


def test_kv_gqa_moe_mixtral(catalog: Catalog) -> None:
    m = catalog.model("mixtral-8x7b")
    # Experts do not change the cache: 32 layers x 2 x 8 KV heads x 128.
    assert kv_elements_per_token_layer(m) == 2 * 8 * 128
    assert kv_elements(m, 1000) == 32 * 2 * 8 * 128 * 1000 == 65_536_000


def test_kv_chunked_llama4_scout(catalog: Catalog) -> None:
    m = catalog.model("llama-4-scout")
    # 48 layers: 36 chunked (cap 8192) + 12 global; 2 * 8 * 128 = 2048 per layer.
    assert kv_elements(m, 10_000) == 12 * 10_000 * 2048 + 36 * 8192 * 2048
    assert kv_elements(m, 4000) == 48 * 4000 * 2048


# ------------------------------------------------------- Hugging Face config.json parser

# fixture file -> catalog id whose architecture it must reproduce.
FIXTURE_TO_ID = {
    "llama-3.1-8b.json": "llama-3.1-8b",
    "mixtral-8x7b.json": "mixtral-8x7b",
    "qwen3-30b-a3b.json": "qwen3-30b-a3b",
    "deepseek-r1.json": "deepseek-r1",
    "gpt-oss-20b.json": "gpt-oss-20b",
    "llama-4-scout.json": "llama-4-scout",
    "llama-4-maverick.json": "llama-4-maverick",
    "mistral-7b-v0.1.json": "mistral-7b",
    "gemma-7b.json": "gemma-7b",
    "gpt-j-6b.json": "gpt-j-6b",
}
# Fields that describe the network (not naming, provenance or published counts).
ARCH_FIELDS = [
    "num_layers", "hidden_size", "vocab_size", "tie_word_embeddings",
    "num_attention_heads", "num_kv_heads", "head_dim", "intermediate_size", "gated_mlp",
    "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
    "sliding_window", "attention_pattern", "num_experts", "experts_per_token",
    "moe_intermediate_size", "num_shared_experts", "first_dense_layers", "moe_every",
]  # fmt: skip
# The Scout fixture is the base model (max 262144); the catalog is the Instruct (10M).
MAX_CONTEXT_DIFFERS = {"llama-4-scout.json"}


def test_every_fixture_is_checked() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(FIXTURE_TO_ID)


@pytest.mark.parametrize(("fixture", "model_id"), sorted(FIXTURE_TO_ID.items()))
def test_hf_config_matches_catalog(catalog: Catalog, fixture: str, model_id: str) -> None:
    parsed = model_from_hf_config(FIXTURES / fixture)
    entry = catalog.model(model_id)
    for field in ARCH_FIELDS:
        assert getattr(parsed, field) == getattr(entry, field), field
    if fixture not in MAX_CONTEXT_DIFFERS:
        assert parsed.max_context == entry.max_context
    assert param_counts(parsed) == param_counts(entry)
    for seq in (1, 100, 5000, 100_000):
        assert kv_elements(parsed, seq) == kv_elements(entry, seq)
    assert parsed.source == str(FIXTURES / fixture)
    assert parsed.params_total_b is None


def test_hf_llama4_per_layer_layout() -> None:
    scout = model_from_hf_config(FIXTURES / "llama-4-scout.json")
    # no_rope_layers [1, 1, 1, 0] * 12: RoPE layers are chunked, every 4th is global.
    assert [scout.layer_attention(i) for i in range(8)] == ["sliding"] * 3 + ["full"] + [
        "sliding"
    ] * 3 + ["full"]
    assert all(scout.layer_is_moe(i) for i in range(48))
    mav = model_from_hf_config(FIXTURES / "llama-4-maverick.json")
    # interleave_moe_layer_step 2 -> transformers' moe_layers = range(1, 48, 2).
    assert [i for i in range(48) if mav.layer_is_moe(i)] == list(range(1, 48, 2))


def test_hf_ids_and_directory_input(tmp_path: Path) -> None:
    d = tmp_path / "My-Local-Llama"
    d.mkdir()
    (d / "config.json").write_text((FIXTURES / "llama-3.1-8b.json").read_text())
    m = model_from_hf_config(d)
    assert m.id == "my-local-llama"
    assert m.source == str(d / "config.json")
    # A hub name in _name_or_path wins over the directory name.
    data = json.loads((FIXTURES / "llama-3.1-8b.json").read_text())
    data["_name_or_path"] = "meta-llama/Llama-3.1-8B"
    (d / "config.json").write_text(json.dumps(data))
    m = model_from_hf_config(d / "config.json")
    assert m.id == "llama-3.1-8b"
    assert "meta-llama/Llama-3.1-8B" in m.aliases


def test_catalog_model_accepts_config_path(catalog: Catalog) -> None:
    m = catalog.model(str(FIXTURES / "qwen3-30b-a3b.json"))
    assert m.num_experts == 128
    assert m.source.endswith("qwen3-30b-a3b.json")


def _write(tmp_path: Path, data: dict[str, Any], name: str = "config.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


BASE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


def test_hf_defaults_head_dim_and_kv_heads(tmp_path: Path, catalog: Catalog) -> None:
    """Llama-2-7b's own config has neither head_dim nor (in early copies) KV heads."""
    m = model_from_hf_config(_write(tmp_path, BASE))
    assert m.head_dim == 4096 // 32 == 128
    assert m.num_kv_heads == 32
    assert not m.tie_word_embeddings
    assert param_counts(m) == param_counts(catalog.model("llama-2-7b"))


def test_hf_qwen2_sliding_window_is_off_unless_enabled(tmp_path: Path) -> None:
    cfg = {
        **BASE,
        "model_type": "qwen2",
        "num_key_value_heads": 8,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "use_sliding_window": False,
    }
    off = model_from_hf_config(_write(tmp_path, cfg))
    assert (off.sliding_window, off.attention_pattern) == (None, ("full",))
    on = model_from_hf_config(_write(tmp_path, {**cfg, "use_sliding_window": True}))
    # Layers >= max_window_layers (28..31) slide; layers 0..27 attend to everything.
    assert on.sliding_window == 4096
    assert [on.layer_attention(i) for i in range(32)] == ["full"] * 28 + ["sliding"] * 4
    assert kv_elements(on, 8192) == (28 * 8192 + 4 * 4096) * 2 * 8 * 128


def test_hf_moe_layer_spacing_rules(tmp_path: Path) -> None:
    layers = 8
    moe = {"num_experts_per_tok": 2, "moe_intermediate_size": 1024, "num_hidden_layers": layers}

    def parse(**extra: Any) -> ModelSpec:
        return model_from_hf_config(_write(tmp_path, {**BASE, **moe, **extra}))

    # DeepSeek: MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0.
    ds = parse(n_routed_experts=4, first_k_dense_replace=1, moe_layer_freq=2)
    assert [i for i in range(layers) if ds.layer_is_moe(i)] == [2, 4, 6]
    # Qwen-MoE: MoE when (i + 1) % decoder_sparse_step == 0 and i not in mlp_only_layers.
    qw = parse(num_experts=4, decoder_sparse_step=2)
    assert [i for i in range(layers) if qw.layer_is_moe(i)] == [1, 3, 5, 7]
    qw2 = parse(num_experts=4, mlp_only_layers=[0, 1])
    assert [i for i in range(layers) if qw2.layer_is_moe(i)] == [2, 3, 4, 5, 6, 7]
    # A Qwen-MoE shared expert of its own width.
    sh = parse(num_experts=4, shared_expert_intermediate_size=5632)
    assert (sh.num_shared_experts, sh.shared_expert_intermediate_size) == (1, 5632)


def test_hf_unmappable_moe_layout_is_an_error(tmp_path: Path) -> None:
    cfg = {
        **BASE,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "mlp_only_layers": [3, 7],
    }
    with pytest.raises(TokenfleetError, match="mlp_only_layers"):
        model_from_hf_config(_write(tmp_path, cfg))


def test_hf_missing_field_names_file_and_field(tmp_path: Path) -> None:
    cfg = {k: v for k, v in BASE.items() if k != "num_hidden_layers"}
    path = _write(tmp_path, cfg)
    with pytest.raises(TokenfleetError) as e:
        model_from_hf_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "missing 'num_hidden_layers' (or n_layer" in msg


def test_hf_missing_moe_top_k(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "num_local_experts": 8})
    with pytest.raises(TokenfleetError, match="missing 'num_experts_per_tok'"):
        model_from_hf_config(path)


def test_hf_invalid_field_value(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "num_attention_heads": "32"})
    with pytest.raises(TokenfleetError, match=r"invalid 'num_attention_heads'.*'32'"):
        model_from_hf_config(path)


def test_hf_inconsistent_heads(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "num_key_value_heads": 5})
    with pytest.raises(TokenfleetError, match="multiple of num_kv_heads") as e:
        model_from_hf_config(path)
    assert str(path) in str(e.value)


def test_hf_unsupported_layer_type(tmp_path: Path) -> None:
    cfg = {**BASE, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]}
    with pytest.raises(TokenfleetError, match="unsupported 'layer_types' entry 'linear_attention'"):
        model_from_hf_config(_write(tmp_path, cfg))


def test_hf_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "hidden_size": 4096,\n  "num_hidden_layers": 32\n  "vocab_size": 1\n}\n')
    with pytest.raises(TokenfleetError) as e:
        model_from_hf_config(path)
    assert f"{path}:4:" in str(e.value)
    assert "malformed JSON" in str(e.value)


def test_hf_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenfleetError, match="no config.json"):
        model_from_hf_config(tmp_path)
    with pytest.raises(TokenfleetError, match="no such file"):
        model_from_hf_config(tmp_path / "nope.json")
