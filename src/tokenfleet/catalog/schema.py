"""Typed catalog records: accelerators (with prices) and model architectures.

Every number that comes from the outside world carries its source next to it
(``sources`` on the record, ``source`` on each price). A figure that no public
source gives (a Maia 200 price, a TPU's TDP) is an *assumption*: it is listed in
``assumptions`` with the reason, so reports can flag it and users can override it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PriceKind = Literal["on_demand", "reserved", "spot"]
AttentionKind = Literal["full", "sliding"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a group of figures was read."""

    url: str
    covers: str = ""


class Price(_Strict):
    """Price of one accelerator-hour (USD) in one cloud under one contract kind."""

    cloud: str
    usd_per_hour: float = Field(gt=0, description="USD per accelerator-hour")
    kind: PriceKind = "on_demand"
    date: str = Field(description="when the price was observed or stated")
    source: str = Field(description="URL or document the price comes from, or 'assumption: ...'")
    assumption: bool = Field(False, description="true when no public price exists")


class Accelerator(_Strict):
    """One accelerator as a scheduler sees it (one GPU, one TPU chip, one Trainium chip).

    FLOP figures are *peak dense* (no 2:4 sparsity), in TFLOP/s per accelerator.
    Bandwidths: ``hbm_tbps`` in TB/s; link figures in GB/s, bidirectional.
    """

    id: str
    aliases: list[str] = []
    vendor: str
    family: str = Field(description="calibration family: chips that share efficiency factors")
    name: str
    bf16_tflops: float | None = None
    fp8_tflops: float | None = None
    fp4_tflops: float | None = None
    int8_tops: float | None = None
    hbm_gb: float = Field(gt=0)
    hbm_tbps: float = Field(gt=0)
    sram_mb: float | None = None
    scaleup: str = ""
    scaleup_gbps: float = Field(gt=0, description="per-chip scale-up bandwidth, GB/s bidirectional")
    scaleup_domain: int = Field(ge=1, description="chips in one scale-up domain")
    scaleout_gbps: float = Field(
        gt=0, description="per-chip scale-out bandwidth, GB/s bidirectional (between domains)"
    )
    tdp_w: float = Field(gt=0, description="board / module power, watts")
    prices: list[Price] = []
    sources: list[Source] = Field(min_length=1)
    assumptions: dict[str, str] = Field(
        default_factory=dict, description="field name -> why the figure is assumed"
    )
    notes: str = ""

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, v: str) -> str:
        if not v or v != v.lower() or " " in v:
            raise ValueError("id must be a lowercase slug without spaces, e.g. 'h100-sxm'")
        return v

    def peak_tflops(self, compute_dtype: str) -> float | None:
        """Peak dense TFLOP/s for a compute dtype ('bf16', 'fp8', 'fp4', 'int8'), or None."""
        return {
            "bf16": self.bf16_tflops,
            "fp8": self.fp8_tflops,
            "fp4": self.fp4_tflops,
            "int8": self.int8_tops,
        }[compute_dtype]

    def price(self, cloud: str | None = None, kind: PriceKind = "on_demand") -> Price | None:
        """The first price of ``kind`` (in ``cloud`` if given); None when unknown."""
        for p in self.prices:
            if p.kind == kind and (cloud is None or p.cloud == cloud):
                return p
        return None


class ModelSpec(_Strict):
    """Transformer architecture numbers, as in the model's Hugging Face ``config.json``.

    Covers dense and MoE feed-forward, MHA/GQA and multi-latent (MLA) attention, and
    sliding-window (or chunked) attention layers mixed with full ones.
    """

    id: str
    aliases: tuple[str, ...] = ()
    name: str = ""
    source: str = Field(description="URL of the config.json the numbers were read from")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="FFN width of dense layers")
    gated_mlp: bool = Field(True, description="SwiGLU/GeGLU (3 matrices) vs plain MLP (2)")
    max_context: int = Field(gt=0, description="max position embeddings, tokens")
    max_context_tokens: int | None = Field(
        None, gt=0, description="longest prompt + output served by default, tokens (vLLM's "
                                "default max_model_len); default: max_context")

    # Multi-latent attention (DeepSeek-V2/V3/R1). When kv_lora_rank is set the KV cache
    # holds one compressed latent plus the decoupled RoPE key per token and layer.
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None

    # Sliding-window / chunked attention: ``attention_pattern`` repeats over the layers
    # (e.g. ['sliding', 'full'] for gpt-oss); 'sliding' layers keep at most
    # ``sliding_window`` tokens of KV.
    sliding_window: int | None = None
    attention_pattern: tuple[AttentionKind, ...] = ("full",)

    # Mixture of experts. A layer i is MoE when i >= first_dense_layers and
    # (i - first_dense_layers) % moe_every == moe_every - 1.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int | None = None
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int | None = None
    first_dense_layers: int = 0
    moe_every: int = 1

    mtp_modules: int = Field(0, ge=0, description="multi-token-prediction modules shipped "
                             "with the weights (config.json num_nextn_predict_layers); "
                             "'mtp' speculative decoding needs at least one")
    params_total_b: float | None = Field(None, description="published total parameters, 1e9")
    params_active_b: float | None = Field(None, description="published active parameters, 1e9")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @model_validator(mode="before")
    @classmethod
    def _default_context(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_context_tokens") is None \
                and "max_context" in data:
            data = {**data, "max_context_tokens": data["max_context"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_kv_heads")
        if self.is_moe and (self.experts_per_token <= 0 or not self.moe_intermediate_size):
            raise ValueError("MoE models need experts_per_token > 0 and moe_intermediate_size")
        if self.is_mla and None in (self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim):
            raise ValueError("MLA models need qk_rope_head_dim, qk_nope_head_dim and v_head_dim")
        if "sliding" in self.attention_pattern and not self.sliding_window:
            raise ValueError("a 'sliding' attention_pattern needs sliding_window")
        return self

    def layer_attention(self, layer: int) -> AttentionKind:
        return self.attention_pattern[layer % len(self.attention_pattern)]

    def layer_is_moe(self, layer: int) -> bool:
        if not self.is_moe or layer < self.first_dense_layers:
            return False
        return (layer - self.first_dense_layers) % self.moe_every == self.moe_every - 1
