"""Numeric precisions a serving unit can run, and what each one changes.

Precision changes three things (DESIGN.md): bytes per weight, bytes per KV entry,
and which peak FLOP figure applies. A chip without a peak for the compute dtype
cannot run that precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfleet.errors import TokenfleetError


@dataclass(frozen=True)
class Precision:
    name: str
    weight_bytes: float  # bytes per weight, block scales included
    compute: str  # which peak applies: 'bf16' | 'fp8' | 'fp4'
    default_kv: str  # KV-cache precision when the user names none
    doc: str


# FP4 weights carry one 8-bit scale per 16-element block (NVFP4): 0.5 + 1/16 bytes.
# MXFP4 (one per 32) would be 0.53; the larger figure keeps memory estimates safe.
PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", 2.0, "bf16", "bf16", "BF16 weights, activations and KV cache"),
    "fp8": Precision("fp8", 1.0, "fp8", "fp8", "FP8 weights and activations (E4M3), FP8 KV"),
    "fp4": Precision(
        "fp4", 0.5 + 1 / 16, "fp4", "fp8", "FP4 block-scaled weights/activations, FP8 KV"
    ),
    "int8": Precision("int8", 1.0, "bf16", "bf16", "weight-only INT8 (W8A16): BF16 compute"),
}

KV_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5625}

ACTIVATION_BYTES = 2.0  # activations exchanged between chips travel in BF16


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
