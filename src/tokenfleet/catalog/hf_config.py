"""Build a :class:`ModelSpec` from a Hugging Face ``config.json``.

Covers the field spellings of the decoder-only families the planner meets:

* dense: Llama, Mistral, Qwen2/Qwen3, Gemma, GPT-J (``n_embd``/``n_layer``/...),
  GPT-NeoX-like (plain, non-gated MLP);
* attention: MHA/GQA (missing ``num_key_value_heads`` -> MHA, missing ``head_dim`` ->
  hidden/heads) and multi-latent attention (``kv_lora_rank`` & co.);
* MoE: Mixtral / gpt-oss (``num_local_experts``), Qwen-MoE (``num_experts``,
  ``moe_intermediate_size``, ``decoder_sparse_step``, ``mlp_only_layers``,
  ``shared_expert_intermediate_size``), DeepSeek (``n_routed_experts``,
  ``n_shared_experts``, ``first_k_dense_replace``, ``moe_layer_freq``), Llama 4
  (``text_config``, ``interleave_moe_layer_step``, ``intermediate_size_mlp``);
* sliding / chunked attention: ``sliding_window`` (all layers, Mistral), ``layer_types``
  (gpt-oss and newer configs), ``use_sliding_window`` + ``max_window_layers`` (Qwen2,
  off by default), ``sliding_window_pattern`` (Gemma 3), Llama 4
  ``attention_chunk_size`` + ``no_rope_layers``.

Anything the parser cannot map onto a :class:`ModelSpec` exactly raises
:class:`TokenfleetError` naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from tokenfleet.catalog.schema import AttentionKind, ModelSpec
from tokenfleet.errors import TokenfleetError

# Families whose MLP is a plain up/act/down (2 matrices) instead of gate/up/down (3).
_NON_GATED = frozenset(
    {
        "gptj",
        "gpt_neox",
        "gpt_neo",
        "gpt2",
        "gpt_bigcode",
        "codegen",
        "opt",
        "bloom",
        "falcon",
        "phi",
        "starcoder2",
        "mpt",
    }
)
# transformers' defaults for ``tie_word_embeddings`` when a config omits it. Llama,
# Mistral, Mixtral, Qwen2/3, DeepSeek, gpt-oss, Llama 4 and GPT-J default to untied.
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "gpt_neo"})
# ``layer_types`` entries -> ModelSpec attention kinds (chunked attention counts as
# sliding: a chunked layer never holds more than one chunk of KV).
_LAYER_TYPE_KIND: dict[str, AttentionKind] = {
    "full_attention": "full",
    "full": "full",
    "global": "full",
    "sliding_attention": "sliding",
    "sliding": "sliding",
    "local": "sliding",
    "chunked_attention": "sliding",
}


class _Config:
    """A parsed config.json with typed, error-reporting getters."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, *keys: str) -> Any:
        for k in keys:
            if self.data.get(k) is not None:
                return self.data[k]
        return None

    def _check_int(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise TokenfleetError(
                f"{self.where}: invalid '{key}': expected an integer >= {minimum}, got {value!r}"
            )
        return value

    def opt_int(self, *keys: str, minimum: int = 0) -> int | None:
        for k in keys:
            v = self.data.get(k)
            if v is not None:
                return self._check_int(k, v, minimum)
        return None

    def req_int(self, *keys: str, minimum: int = 1) -> int:
        v = self.opt_int(*keys, minimum=minimum)
        if v is None:
            alts = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
            raise TokenfleetError(f"{self.where}: missing '{keys[0]}'{alts}")
        return v

    def opt_bool(self, key: str, default: bool) -> bool:
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise TokenfleetError(f"{self.where}: invalid '{key}': expected true/false, got {v!r}")
        return v

    def opt_list(self, key: str) -> list[Any] | None:
        v = self.data.get(key)
        if v is None:
            return None
        if not isinstance(v, list):
            raise TokenfleetError(f"{self.where}: invalid '{key}': expected a list, got {v!r}")
        return v


def _read_json(path: Path) -> dict[str, Any]:
    from tokenfleet.fileio import read_text

    text = read_text(path, "config.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenfleetError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise TokenfleetError(f"{path}: a config.json is a JSON object, got {type(data).__name__}")
    return data


def _resolve(path: Path) -> Path:
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise TokenfleetError(f"{path}: directory has no config.json")
        return cfg
    if not path.exists():
        raise TokenfleetError(f"{path}: no such file or directory")
    return path


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Llama 4, Gemma 3, ...) nest the LM under ``text_config``."""
    text = data.get("text_config")
    if not isinstance(text, dict):
        return data
    outer = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return {**outer, **text}


def _model_id(path: Path, data: dict[str, Any]) -> tuple[str, str]:
    """(id, display name): ``_name_or_path`` when it is a hub name, else the directory
    holding config.json, else the file's stem."""
    hub = data.get("_name_or_path")
    if isinstance(hub, str) and hub and not hub.startswith(("/", ".", "~")) and hub.count("/") <= 1:
        name = hub
    elif path.name == "config.json" and path.parent.name:
        name = path.parent.name
    else:
        name = path.stem
    return name.split("/")[-1].strip().lower().replace(" ", "-"), name


def _shortest_period(kinds: list[AttentionKind]) -> list[AttentionKind]:
    n = len(kinds)
    for p in range(1, n + 1):
        if all(kinds[i] == kinds[i % p] for i in range(n)):
            return kinds[:p]
    return kinds


def _chunked_attention(cfg: _Config, num_layers: int, chunk: int
                       ) -> tuple[int | None, list[AttentionKind]]:
    """Llama 4: chunked attention on RoPE layers, global NoPE layers in between."""
    flags = cfg.opt_list("no_rope_layers") or []
    if not flags:
        interval = cfg.opt_int("no_rope_layer_interval", minimum=1) or 4
        flags = [int((i + 1) % interval != 0) for i in range(num_layers)]
    if len(flags) != num_layers:
        raise TokenfleetError(
            f"{cfg.where}: invalid 'no_rope_layers': {len(flags)} entries for {num_layers} layers"
        )
    kinds: list[AttentionKind] = ["sliding" if f else "full" for f in flags]
    return (chunk if "sliding" in kinds else None), _shortest_period(kinds)


def _layer_types_attention(cfg: _Config, num_layers: int, layer_types: list[Any],
                           window: int | None, chunk: int | None
                           ) -> tuple[int | None, list[AttentionKind]]:
    """Explicit per-layer ``layer_types`` (newer transformers configs)."""
    where = cfg.where
    if len(layer_types) != num_layers:
        raise TokenfleetError(
            f"{where}: invalid 'layer_types': {len(layer_types)} entries for "
            f"{num_layers} layers"
        )
    kinds: list[AttentionKind] = []
    for t in layer_types:
        if t not in _LAYER_TYPE_KIND:
            raise TokenfleetError(
                f"{where}: unsupported 'layer_types' entry {t!r} "
                f"(supported: {', '.join(sorted(_LAYER_TYPE_KIND))})"
            )
        kinds.append(_LAYER_TYPE_KIND[t])
    if "sliding" not in kinds:
        return None, ["full"]
    if chunk is not None and "chunked_attention" in layer_types:
        window = chunk
    if window is None:
        raise TokenfleetError(
            f"{where}: 'layer_types' has sliding layers but 'sliding_window' is missing"
        )
    return window, _shortest_period(kinds)


def _qwen_attention(cfg: _Config, num_layers: int, window: int | None
                    ) -> tuple[int | None, list[AttentionKind]]:
    """Qwen2/Qwen3 style: a sliding_window value is present but only used when
    use_sliding_window is true, and then only on layers >= max_window_layers."""
    if not cfg.opt_bool("use_sliding_window", False) or window is None:
        return None, ["full"]
    first = cfg.opt_int("max_window_layers", minimum=0)
    first = num_layers if first is None else min(first, num_layers)
    kinds: list[AttentionKind] = ["full" if i < first else "sliding" for i in range(num_layers)]
    if "sliding" not in kinds:
        return None, ["full"]
    return window, _shortest_period(kinds)


def _attention(cfg: _Config, num_layers: int) -> tuple[int | None, list[AttentionKind]]:
    """(sliding_window, attention_pattern) from the config's sliding/chunked fields."""
    chunk = cfg.opt_int("attention_chunk_size", minimum=1)
    if chunk is not None and not cfg.has("layer_types"):
        return _chunked_attention(cfg, num_layers, chunk)
    window = cfg.opt_int("sliding_window", "sliding_window_size", minimum=1)
    layer_types = cfg.opt_list("layer_types")
    if layer_types is not None:
        return _layer_types_attention(cfg, num_layers, layer_types, window, chunk)
    if "use_sliding_window" in cfg.data:
        return _qwen_attention(cfg, num_layers, window)
    if window is None:
        return None, ["full"]
    # Gemma 3: (pattern - 1) sliding layers then one global layer.
    period = cfg.opt_int("sliding_window_pattern", minimum=1)
    if period is not None:
        pattern = cast(list[AttentionKind], ["sliding"] * (period - 1) + ["full"])
        return window, pattern
    # Gemma 2: even layers sliding, odd layers global (transformers' default layer_types).
    if str(cfg.raw("model_type") or "") == "gemma2":
        return window, ["sliding", "full"]
    # Mistral, Mixtral, Starcoder2, Phi-3: the window applies to every layer.
    return window, ["sliding"]


def _shared_experts(cfg: _Config, moe_width: int) -> dict[str, Any]:
    """Shared experts: DeepSeek counts them (each moe_intermediate_size wide); Qwen-MoE
    gives one shared expert's width; Llama 4 always has one, expert-wide."""
    n_shared = cfg.opt_int("n_shared_experts", "num_shared_experts", minimum=0)
    shared_width = cfg.opt_int("shared_expert_intermediate_size", minimum=0)
    if str(cfg.raw("model_type") or "").startswith("llama4"):
        n_shared, shared_width = 1, moe_width
    if shared_width and not n_shared:
        n_shared = 1
    out: dict[str, Any] = {}
    if n_shared:
        out["num_shared_experts"] = n_shared
        if shared_width:
            out["shared_expert_intermediate_size"] = shared_width
    return out


def _deepseek_moe_layers(cfg: _Config) -> tuple[int, int]:
    """DeepSeek: layer i is MoE when i >= first_k_dense_replace and i % freq == 0;
    returns (first_dense, every)."""
    k = cfg.opt_int("first_k_dense_replace", minimum=0) or 0
    if isinstance(cfg.raw("moe_layer_freq"), list):
        raise TokenfleetError(
            f"{cfg.where}: unsupported 'moe_layer_freq' list (per-layer MoE masks are not "
            "mapped); give an integer"
        )
    freq = cfg.opt_int("moe_layer_freq", minimum=1) or 1
    if freq == 1:
        return k, 1
    first_moe = -(-k // freq) * freq  # smallest multiple of freq >= k
    first_dense = first_moe - freq + 1
    if first_dense < 0:
        raise TokenfleetError(
            f"{cfg.where}: unsupported MoE layout: 'moe_layer_freq' {freq} with "
            f"'first_k_dense_replace' {k} makes layer 0 an MoE layer"
        )
    return first_dense, freq


def _qwen_moe_layers(cfg: _Config) -> tuple[int, int]:
    """Qwen-MoE: layer i is MoE when i not in mlp_only_layers and (i+1) % step == 0;
    returns (first_dense, every)."""
    every = cfg.opt_int("decoder_sparse_step", minimum=1) or 1
    only = cfg.opt_list("mlp_only_layers") or []
    if only and (every != 1 or sorted(only) != list(range(len(only)))):
        raise TokenfleetError(
            f"{cfg.where}: unsupported 'mlp_only_layers' {only}: only a leading run of "
            "dense layers (0, 1, ..., k-1) with decoder_sparse_step 1 is mapped"
        )
    return len(only), every


def _moe_layers(cfg: _Config) -> tuple[int, int]:
    """(first_dense, every): which layers are MoE, per model family."""
    if cfg.has("first_k_dense_replace") or cfg.has("moe_layer_freq"):
        return _deepseek_moe_layers(cfg)
    if cfg.has("interleave_moe_layer_step"):
        # Llama 4: MoE layers are step-1, 2*step-1, ...
        return 0, cfg.req_int("interleave_moe_layer_step")
    if cfg.has("decoder_sparse_step") or cfg.has("mlp_only_layers"):
        return _qwen_moe_layers(cfg)
    return 0, 1


def _moe(cfg: _Config, num_layers: int, ffn_width: int | None) -> dict[str, Any]:
    """MoE fields of ModelSpec (empty for a dense model). ``ffn_width`` is the config's
    ``intermediate_size``: the expert width when no ``moe_intermediate_size`` is given
    (Mixtral, gpt-oss, Llama 4)."""
    where = cfg.where
    n_experts = cfg.opt_int("num_local_experts", "n_routed_experts", "num_experts", minimum=0)
    if not n_experts:
        return {}
    top_k = cfg.req_int("num_experts_per_tok", "experts_per_token", "moe_top_k")
    moe_width = cfg.opt_int("moe_intermediate_size", minimum=1) or ffn_width
    if moe_width is None:
        raise TokenfleetError(f"{where}: missing 'moe_intermediate_size' (or intermediate_size)")
    out: dict[str, Any] = {
        "num_experts": n_experts,
        "experts_per_token": top_k,
        "moe_intermediate_size": moe_width,
        **_shared_experts(cfg, moe_width),
    }
    first_dense, every = _moe_layers(cfg)
    if first_dense >= num_layers:
        raise TokenfleetError(f"{where}: MoE config leaves no MoE layer ({num_layers} layers)")
    if first_dense:
        out["first_dense_layers"] = first_dense
    if every != 1:
        out["moe_every"] = every
    return out


def _mla(cfg: _Config) -> dict[str, Any]:
    rank = cfg.opt_int("kv_lora_rank", minimum=1)
    if rank is None:
        return {}
    return {
        "kv_lora_rank": rank,
        "q_lora_rank": cfg.opt_int("q_lora_rank", minimum=1),
        "qk_rope_head_dim": cfg.req_int("qk_rope_head_dim"),
        "qk_nope_head_dim": cfg.req_int("qk_nope_head_dim"),
        "v_head_dim": cfg.req_int("v_head_dim"),
    }


def model_from_hf_config(path: Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face ``config.json`` (the file, or its directory).

    The id is the hub name in ``_name_or_path`` when there is one, else the name of the
    directory holding config.json (else the file's stem); ``source`` is the file path.
    Published parameter counts are unknown here and left empty.
    """
    file = _resolve(Path(path))
    where = str(file)
    raw = _read_json(file)
    cfg = _Config(_flatten(raw), where)
    model_type = str(cfg.raw("model_type") or "")

    num_layers = cfg.req_int("num_hidden_layers", "n_layer", "num_layers")
    hidden = cfg.req_int("hidden_size", "n_embd", "d_model")
    heads = cfg.req_int("num_attention_heads", "n_head", "num_heads")
    kv_heads = cfg.opt_int("num_key_value_heads", "num_kv_heads", "n_head_kv", minimum=1)
    if kv_heads is None:
        kv_heads = 1 if cfg.opt_bool("multi_query", False) else heads
    head_dim = cfg.opt_int("head_dim", minimum=1)
    if head_dim is None:
        if hidden % heads:
            raise TokenfleetError(
                f"{where}: missing 'head_dim' and hidden size {hidden} is not a multiple of "
                f"{heads} heads"
            )
        head_dim = hidden // heads
    vocab = cfg.req_int("vocab_size", "padded_vocab_size")
    max_context = cfg.req_int(
        "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"
    )

    mla = _mla(cfg)
    if mla:
        # MLA arithmetic does not use head_dim; keep it the value-head width.
        head_dim = mla["v_head_dim"]

    ffn = cfg.opt_int("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", minimum=1)
    if ffn is None and model_type in ("gptj", "gpt_neo", "gpt2", "codegen"):
        ffn = 4 * hidden  # n_inner: null means 4 * n_embd
    moe = _moe(cfg, num_layers, ffn)
    dense_ffn = cfg.opt_int("intermediate_size_mlp", minimum=1) or ffn
    if dense_ffn is None:
        raise TokenfleetError(f"{where}: missing 'intermediate_size' (or n_inner)")

    window, pattern = _attention(cfg, num_layers)
    name_id, name = _model_id(file, raw)

    fields: dict[str, Any] = {
        "id": name_id,
        "aliases": [name] if name.lower() != name_id else [],
        "name": name,
        "source": where,
        "num_layers": num_layers,
        "hidden_size": hidden,
        "vocab_size": vocab,
        "tie_word_embeddings": cfg.opt_bool("tie_word_embeddings", model_type in _TIED_BY_DEFAULT),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": dense_ffn,
        "gated_mlp": model_type not in _NON_GATED,
        "max_context": max_context,
        "sliding_window": window,
        "attention_pattern": pattern,
        "mtp_modules": cfg.opt_int("num_nextn_predict_layers", minimum=0) or 0,
        **mla,
        **moe,
    }
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in e.errors()
        )
        raise TokenfleetError(f"{where}: not a valid model architecture: {problems}") from None
