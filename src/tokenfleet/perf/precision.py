"""Numeric precisions a serving unit can run, and what each one changes.

A precision is split into what the weights are stored in and what the math runs in
(DESIGN.md): bytes per weight, bytes per KV entry, and which peak FLOP figure the
GEMMs use. ``w4a16`` (MXFP4/INT4 weights, BF16 math: gpt-oss on Hopper as vLLM runs
it) needs only a BF16 peak; ``fp4`` (FP4 weights *and* FP4 math) needs an FP4 tensor
peak. A precision is valid only where the chip has the peak its math needs and the
engine implements it (:func:`unsupported_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfleet.errors import TokenfleetError


@dataclass(frozen=True)
class Precision:
    name: str
    weight_bytes: float  # bytes per weight, block scales included
    compute: str  # which peak the GEMMs use: 'bf16' | 'fp8' | 'fp4'
    default_kv: str  # KV-cache precision when the user names none
    doc: str
    weight_format: str = ""  # storage format of the weights, for messages


# NVFP4 carries one 8-bit scale per 16 elements (0.5 + 1/16 bytes); MXFP4 one per 32
# (0.5 + 1/32). FP4 math on Blackwell uses NVFP4; 4-bit weight-only serving (gpt-oss's
# MXFP4 checkpoints, AWQ/GPTQ INT4 with group 128 ~ the same) uses the MXFP4 figure.
NVFP4_BYTES = 0.5 + 1 / 16
MXFP4_BYTES = 0.5 + 1 / 32

PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", 2.0, "bf16", "bf16", "BF16 weights, activations and KV cache",
                      "bf16"),
    "fp8": Precision("fp8", 1.0, "fp8", "fp8", "FP8 weights and activations (E4M3), FP8 KV",
                     "fp8"),
    "fp4": Precision("fp4", NVFP4_BYTES, "fp4", "fp8",
                     "FP4 block-scaled weights and activations (NVFP4/MXFP4 math), FP8 KV",
                     "nvfp4"),
    "int8": Precision("int8", 1.0, "bf16", "bf16", "weight-only INT8 (W8A16): BF16 compute",
                      "int8"),
    "w4a16": Precision("w4a16", MXFP4_BYTES, "bf16", "bf16",
                       "4-bit weights (MXFP4/INT4), BF16 compute and KV: gpt-oss on Hopper",
                       "mxfp4"),
    "w4a8": Precision("w4a8", MXFP4_BYTES, "fp8", "fp8",
                      "4-bit weights (MXFP4/INT4), FP8 compute and KV", "mxfp4"),
}

KV_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5625}

ACTIVATION_BYTES = 2.0  # activations exchanged between chips travel in BF16

# Which precisions each engine implements (public docs of each engine's quantization
# support): vLLM/SGLang/TRT-LLM run all of them on chips with the peak; AWS Neuron
# serves BF16, FP8 and INT8 weight-only; JetStream BF16 and INT8 weight-only.
ENGINE_PRECISIONS: dict[str, frozenset[str]] = {
    "neuron": frozenset({"bf16", "fp8", "int8"}),
    "jetstream": frozenset({"bf16", "int8"}),
}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise TokenfleetError(
            f"unknown precision '{name}'; allowed: {', '.join(PRECISIONS)}"
        ) from None


def kv_bytes(name: str) -> float:
    try:
        return KV_BYTES[name.lower()]
    except KeyError:
        raise TokenfleetError(
            f"unknown KV-cache precision '{name}'; allowed: {', '.join(KV_BYTES)}"
        ) from None


def unsupported_reason(accel_id: str, peak_of: dict[str, float | None], precision: str,
                       engine: str | None) -> str | None:
    """Why ``precision`` cannot run on the chip (``peak_of``: compute dtype -> TFLOP/s)
    under ``engine``; None when it can."""
    prec = get_precision(precision)
    if not peak_of.get(prec.compute):
        have = [p for p, v in PRECISIONS.items() if peak_of.get(v.compute)]
        return (f"{accel_id} has no {prec.compute.upper()} tensor peak, so it cannot run "
                f"{precision} ({prec.doc}); it supports: {', '.join(have) or 'none'}")
    allowed = ENGINE_PRECISIONS.get(engine or "")
    if allowed is not None and precision not in allowed:
        return (f"engine {engine} does not run {precision}; it runs: "
                f"{', '.join(sorted(allowed))}")
    return None
