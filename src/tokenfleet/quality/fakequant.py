"""Fake-quantize a PyTorch / Hugging Face model in place, for the duration of a ``with``.

What gets quantized, and why:

* weights of every linear layer (``nn.Linear`` and GPT-2 style ``Conv1D``) except the
  output head — the matmuls that FP8/FP4 tensor cores run. Embedding tables, norms and
  biases stay in full precision, and so does the LM head, as FP8/FP4 serving stacks
  (vLLM, TensorRT Model Optimizer) leave it by default;
* optionally the *inputs* of those same layers (activations), dynamically per forward
  pass — what a W8A8 / W4A4 kernel does to them;
* optionally the keys and values each attention layer stores in its KV cache, after
  RoPE, on their way into attention (a registered attention function wraps SDPA).

Everything is restored on exit, so one loaded model serves every format in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.quantize import Quantizer, TensorFn

KV_ATTENTION = "tokenfleet_kv_quant"
"""Name under which the KV-quantizing attention function is registered in transformers."""

_KV_ATTR = "_tokenfleet_kv_quantizer"

Tensor = torch.Tensor


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D is a linear layer with a transposed ``[in, out]`` weight."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear layers whose weights (and inputs) a format applies to, by qualified name.

    The output head (``model.get_output_embeddings()``) is left out; see the module doc.
    """
    get_head = getattr(model, "get_output_embeddings", None)  # transformers models only
    head = get_head() if callable(get_head) else None
    found = []
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, nn.Linear) or _is_conv1d(module):
            found.append((name, module))
    return found


def _quantize_weight(module: nn.Module, fn: TensorFn) -> Tensor:
    """``fn`` applied with blocks along the reduction axis (``in_features``)."""
    w = module.get_parameter("weight").detach()
    if _is_conv1d(module):  # [in, out]: transpose so the reduction axis is last
        return fn(w.t()).t()
    return fn(w)


def _kv_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):
    """SDPA attention that first fake-quantizes K and V when the layer carries a quantizer.

    Layers of other models (no quantizer attached) pass straight through, so registering
    this function globally changes nothing for them.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fn = getattr(module, _KV_ATTR, None)
    if fn is not None:
        key, value = fn(key), fn(value)
    return sdpa_attention_forward(module, query, key, value, *args, **kwargs)


def _register_kv_attention() -> None:
    """Make ``KV_ATTENTION`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(KV_ATTENTION, _kv_attention)
    # The mask builder is keyed by the same name; SDPA's mask format is what we call into.
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that call the attention interface: they hold ``k_proj``/``v_proj`` (or
    fused ``qkv``) projections and a ``layer_idx``, as every transformers decoder does."""
    return [
        m
        for m in model.modules()
        if hasattr(m, "layer_idx") and any(hasattr(m, p) for p in ("k_proj", "qkv_proj", "c_attn"))
    ]


@contextmanager
def fake_quantized(
    model: nn.Module,
    quantizer: Quantizer,
    *,
    weights: bool = True,
    activations: bool = False,
    kv_cache: bool = False,
) -> Iterator[int]:
    """Run ``model`` with ``quantizer`` applied; yields the number of linear layers touched.

    Raises TokenfleetError when ``kv_cache`` is asked of a model without attention layers
    that go through the transformers attention interface.
    """
    linears = quantizable_linears(model)
    saved: list[tuple[nn.Module, Tensor]] = []
    hooks = []
    kv_modules: list[nn.Module] = []
    config = getattr(model, "config", None)
    attn_before = getattr(config, "_attn_implementation", None)
    set_attention = getattr(model, "set_attn_implementation", None)  # transformers only
    try:
        with torch.no_grad():
            if weights:
                for _, module in linears:
                    weight = module.get_parameter("weight")
                    original = weight.detach().clone()
                    weight.copy_(_quantize_weight(module, quantizer.weight))
                    saved.append((module, original))
            if activations:
                act = quantizer.activation

                def quantize_input(_module: nn.Module, args: tuple) -> tuple:
                    return (act(args[0]), *args[1:])

                for _, module in linears:
                    hooks.append(module.register_forward_pre_hook(quantize_input))
        if kv_cache:
            kv_modules = _attention_modules(model)
            if not kv_modules or config is None or not callable(set_attention):
                raise TokenfleetError(
                    "--kv-cache needs a transformers causal LM whose attention layers use the "
                    "attention interface (k_proj/v_proj); this model has none"
                )
            _register_kv_attention()
            for module in kv_modules:
                setattr(module, _KV_ATTR, quantizer.kv)
            set_attention(KV_ATTENTION)
        yield len(linears)
    finally:
        for handle in hooks:
            handle.remove()
        with torch.no_grad():
            for module, original in saved:
                module.get_parameter("weight").copy_(original)
        for module in kv_modules:
            if hasattr(module, _KV_ATTR):
                delattr(module, _KV_ATTR)
        if kv_modules and callable(set_attention) and attn_before not in (None, KV_ATTENTION):
            set_attention(attn_before)
