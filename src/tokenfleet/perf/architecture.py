"""Parameter, FLOP and KV-cache arithmetic of a transformer, straight from its config.

All functions are pure. Counts are in parameters / elements (not bytes) unless the
name says ``bytes``. Norms, biases and rotary tables are left out: they are well under
0.1% of any model in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tokenfleet.catalog.schema import ModelSpec


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model, split the way parallelism splits them."""

    embedding: int  # input embedding + LM head (once if tied)
    attention: int  # all layers' attention projections
    dense_mlp: int  # FFNs of non-MoE layers
    experts: int  # routed experts of all MoE layers (all resident in memory)
    experts_active: int  # routed experts one token passes through
    shared: int  # shared experts + routers of MoE layers (every token uses them)
    tied_embeddings: bool = False

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.dense_mlp + self.experts + self.shared

    @property
    def active(self) -> int:
        """Parameters one token multiplies with (embedding lookup excluded, LM head kept)."""
        lm_head = self.embedding if self.tied_embeddings else self.embedding // 2
        return lm_head + self.attention + self.dense_mlp + self.experts_active + self.shared

    @property
    def non_expert(self) -> int:
        return self.total - self.experts


def attention_params(m: ModelSpec) -> int:
    """Attention projection parameters of one layer."""
    h = m.hidden_size
    if m.is_mla:
        assert m.qk_rope_head_dim and m.qk_nope_head_dim and m.v_head_dim and m.kv_lora_rank
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            q = h * m.q_lora_rank + m.q_lora_rank * m.num_attention_heads * qk
        else:
            q = h * m.num_attention_heads * qk
        kv_down = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        kv_up = m.kv_lora_rank * m.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)
        o = m.num_attention_heads * m.v_head_dim * h
        return q + kv_down + kv_up + o
    q = h * m.num_attention_heads * m.head_dim
    kv = 2 * h * m.num_kv_heads * m.head_dim
    o = m.num_attention_heads * m.head_dim * h
    return q + kv + o


def mlp_params(hidden: int, intermediate: int, gated: bool) -> int:
    return (3 if gated else 2) * hidden * intermediate


@lru_cache(maxsize=512)
def param_counts(m: ModelSpec) -> ParamCounts:
    # Cached: ModelSpec is frozen with tuple fields, so hashable; the perf model calls
    # this for every layout it evaluates.
    h = m.hidden_size
    embedding = m.vocab_size * h * (1 if m.tie_word_embeddings else 2)
    attention = m.num_layers * attention_params(m)
    dense = experts = experts_active = shared = 0
    for layer in range(m.num_layers):
        if m.layer_is_moe(layer):
            assert m.moe_intermediate_size
            one = mlp_params(h, m.moe_intermediate_size, m.gated_mlp)
            experts += m.num_experts * one
            experts_active += m.experts_per_token * one
            shared_width = m.shared_expert_intermediate_size or m.moe_intermediate_size
            shared += m.num_shared_experts * mlp_params(h, shared_width, m.gated_mlp)
            shared += h * m.num_experts  # router
        else:
            dense += mlp_params(h, m.intermediate_size, m.gated_mlp)
    return ParamCounts(
        embedding=embedding,
        attention=attention,
        dense_mlp=dense,
        experts=experts,
        experts_active=experts_active,
        shared=shared,
        tied_embeddings=m.tie_word_embeddings,
    )


def kv_elements_per_token_layer(m: ModelSpec) -> int:
    """KV-cache elements one token adds to one attention layer.

    GQA/MHA: a key and a value vector per KV head. MLA: one compressed latent
    (kv_lora_rank) plus the shared decoupled RoPE key (qk_rope_head_dim); the
    up-projections are recomputed (or absorbed), never cached.
    """
    if m.is_mla:
        assert m.kv_lora_rank is not None and m.qk_rope_head_dim is not None
        return m.kv_lora_rank + m.qk_rope_head_dim
    return 2 * m.num_kv_heads * m.head_dim


def kv_elements(m: ModelSpec, seq_len: int) -> int:
    """KV-cache elements of one sequence of ``seq_len`` tokens, over all layers.

    Sliding-window (and chunked) layers hold at most ``sliding_window`` tokens.
    """
    per = kv_elements_per_token_layer(m)
    total = 0
    for layer in range(m.num_layers):
        if m.layer_attention(layer) == "sliding":
            assert m.sliding_window
            total += per * min(seq_len, m.sliding_window)
        else:
            total += per * seq_len
    return total


@lru_cache(maxsize=512)
def moe_layer_count(m: ModelSpec) -> int:
    return sum(1 for i in range(m.num_layers) if m.layer_is_moe(i))


@lru_cache(maxsize=512)
def attention_layer_counts(m: ModelSpec) -> tuple[int, int]:
    """(full-attention layers, sliding-window layers)."""
    full = sum(1 for i in range(m.num_layers) if m.layer_attention(i) == "full")
    return full, m.num_layers - full


def attended_tokens(m: ModelSpec, context: float) -> float:
    """Sum over layers of how many cached tokens one new token attends to at ``context``.

    Equals the token-layers of KV cache a sequence of ``context`` tokens occupies."""
    full, sliding = attention_layer_counts(m)
    window = m.sliding_window or context
    return full * context + sliding * min(context, window)


def attention_dims(m: ModelSpec) -> tuple[int, int]:
    """(query-key dot length, value length) per head as decode kernels compute them.

    MLA in absorbed form (as inference engines run decode: FlashMLA, TRT-LLM's MLA
    generation kernel) attends in the latent space: q·k over kv_lora_rank + rope dims,
    values over kv_lora_rank.
    """
    if m.is_mla:
        assert m.kv_lora_rank and m.qk_rope_head_dim
        return m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank
    return m.head_dim, m.head_dim


def attention_flops_per_token(m: ModelSpec, context: float) -> float:
    """Score and weighted-sum FLOPs of one new token attending to ``context`` cached tokens."""
    dk, dv = attention_dims(m)
    return 2.0 * m.num_attention_heads * (dk + dv) * attended_tokens(m, context)


def prefill_attention_dims(m: ModelSpec) -> tuple[int, int]:
    """(query-key, value) per head as prefill kernels compute them.

    Engines run MLA prefill in the MHA form (the latent is up-projected once per prompt
    token, then ordinary flash attention): q·k over qk_nope + qk_rope (128 + 64 = 192
    for DeepSeek-V3/R1), values over v_head_dim (128) — 3.4x fewer FLOPs than the
    absorbed form (576 + 512). Other attention kinds are the same in both phases.
    """
    if m.is_mla:
        assert m.qk_nope_head_dim and m.qk_rope_head_dim and m.v_head_dim
        return m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
    return m.head_dim, m.head_dim


def prefill_attention_flops(m: ModelSpec, prompt: int) -> float:
    """Causal attention FLOPs of a whole prompt: token t attends to t tokens (sum ≈ L²/2),
    as causal flash-attention kernels skip the masked half."""
    dk, dv = prefill_attention_dims(m)
    full, sliding = attention_layer_counts(m)
    pairs_full = prompt * (prompt + 1) / 2.0
    if sliding and m.sliding_window and prompt > m.sliding_window:
        w = m.sliding_window
        pairs_sliding = w * (w + 1) / 2.0 + (prompt - w) * w
    else:
        pairs_sliding = pairs_full
    return 2.0 * m.num_attention_heads * (dk + dv) * (full * pairs_full + sliding * pairs_sliding)
