"""Quantize-dequantize ("fake quantization") of PyTorch tensors into each number format.

Every function returns a tensor of the input's dtype holding exactly the values the
format can represent (after scaling back), so a model that runs on the result computes
what a model storing those bits would compute, up to the accumulation precision.

Rounding is round-to-nearest, ties-to-even, in one step from the input value (no double
rounding): the arithmetic runs in float32 (float64 for float64 input), where dividing by a
power-of-two spacing is exact, so the only rounding step is ``torch.round``.
Scales follow the format definitions:

* per-tensor FP8: ``scale = amax / max_normal`` (FP32), elements saturate at max_normal;
* MX (OCP MX v1.0, section 6.3): per block of 32, ``X = 2^(floor(log2 amax) - emax_elem)``
  as an E8M0 power of two, elements ``quantize(V / X)`` saturating;
* NVFP4: FP32 per-tensor ``g = amax / (448 * 6)``, per block of 16 an E4M3 scale
  ``s = E4M3(amax_block / 6 / g)``, elements ``E2M1(V / (s * g))`` saturating;
* INT (symmetric): ``scale = amax / (2^(b-1) - 1)`` per channel or per group.

Non-finite inputs: NaN stays NaN. A block-scaled format poisons the whole block (every
element NaN) when the block holds a NaN or Inf, as the MX spec does with its NaN scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.formats import (
    BF16,
    E2M1,
    E4M3,
    E5M2,
    E8M0_MAX_EXP,
    E8M0_MIN_EXP,
    FORMAT_NAMES,
    FP16,
    INT4_DEFAULT_GROUP,
    MiniFloat,
    Specials,
)

Tensor = torch.Tensor


def _pow2(k: Tensor, dtype: torch.dtype) -> Tensor:
    """Exact ``2**k`` for integer ``k``, built from the bit pattern, as float32 or float64.

    ``torch.ldexp``/``exp2`` go through ``pow``, whose vectorised CPU kernels are not
    guaranteed to be exact; a power of two is just a biased exponent field (or, below
    the normal range of float32, a single mantissa bit). Valid for float64 k in
    [-1022, 1023] and float32 k in [-149, 127].
    """
    if dtype == torch.float64:
        return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    k32 = k.to(torch.int32)
    normal = ((k32.clamp(min=-126) + 127) << 23).view(torch.float32)
    subnormal = (torch.ones_like(k32) << (k32 + 149).clamp(0, 22)).view(torch.float32)
    return torch.where(k32 >= -126, normal, subnormal)


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 input, else float32: both hold every value of the formats here
    and divide exactly by powers of two, so rounding happens once, in torch.round."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _floor_log2(a: Tensor) -> Tensor:
    """``floor(log2(a))`` for positive finite ``a``, exactly (via frexp), as int32."""
    _, exponent = torch.frexp(a)  # a = m * 2**exponent with m in [0.5, 1)
    return exponent - 1


def round_minifloat(x: Tensor, fmt: MiniFloat, *, saturate: bool = True) -> Tensor:
    """Round every element of ``x`` to the nearest value of ``fmt`` (ties to even).

    Args:
        x: any floating tensor (values in its own units).
        fmt: the element format.
        saturate: True: magnitudes beyond ``fmt.max_normal`` (Inf included) become
            +-max_normal (OCP "saturating" conversion). False: they become Inf where the
            format has Inf, else NaN (OCP non-saturating conversion).

    Returns:
        A tensor of ``x.dtype``; NaN inputs stay NaN (sign kept).
    """
    work = _work_dtype(x)
    xd = x.to(work)
    a = xd.abs()
    # Below the normal range the spacing stays that of the smallest binade (subnormals).
    exponent = _floor_log2(a).clamp(min=fmt.emin)
    ulp = _pow2(exponent - fmt.mantissa_bits, work)
    # torch.round rounds half to even; a / ulp is exact (power-of-two divisor, quotient
    # below 2^(m+1)), and a carry into the next binade (1.96875 -> 2.0) lands on a
    # representable value anyway — or past max_normal, which the overflow test catches
    # (in float32 a BF16 carry past 2^127 becomes Inf, which is past max_normal too).
    q = torch.round(a / ulp) * ulp
    overflow = q > fmt.max_normal
    if saturate:
        q = torch.where(overflow, torch.full_like(q, fmt.max_normal), q)
    else:
        special = float("inf") if fmt.has_inf else float("nan")
        q = torch.where(overflow, torch.full_like(q, special), q)
    q = torch.copysign(q, xd)  # keeps -0.0 and the sign of saturated values
    q = torch.where(torch.isnan(xd), xd, q)
    return q.to(x.dtype)


def encode_minifloat(x: Tensor, fmt: MiniFloat, *, saturate: bool = True) -> Tensor:
    """The bit patterns (int64 codes) that :func:`round_minifloat` stores for ``x``.

    Used to prove bit-identity with PyTorch's own float8 casts. NaN encodes as the
    all-ones exponent-and-mantissa pattern with the input's sign (what PyTorch writes).
    Raises ValueError for NaN in a format that has no NaN (E2M1).
    """
    q = round_minifloat(x, fmt, saturate=saturate).to(torch.float64)
    table = torch.tensor(fmt.finite_magnitudes(), dtype=torch.float64)
    a = q.abs()
    finite = torch.isfinite(q)
    index = torch.searchsorted(table, torch.where(finite, a, torch.zeros_like(a)))
    index = index.clamp(max=len(table) - 1)
    if not bool((table[index] == a)[finite].all()):
        raise AssertionError("round_minifloat produced a value outside the format")
    sign = torch.signbit(q).to(torch.int64) << (fmt.total_bits - 1)
    all_ones = 2 ** (fmt.total_bits - 1) - 1
    inf_code = (2**fmt.exponent_bits - 1) << fmt.mantissa_bits
    if fmt.specials is Specials.NONE and bool(torch.isnan(q).any()):
        raise ValueError(f"{fmt.name} has no NaN encoding")
    code = torch.where(torch.isnan(q), all_ones, index)
    code = torch.where(torch.isinf(q), inf_code, code)
    return sign | code


def _blocks(x: Tensor, block: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """View the last axis of ``x`` as blocks of ``block`` elements (float32 or float64).

    A last axis that is not a multiple of ``block`` is zero-padded; zeros never raise a
    block's amax, so the padding does not change any scale. Returns the blocked tensor
    ``[..., n_blocks, block]`` and a function mapping such a tensor back to x's shape/dtype.
    """
    shape, n = x.shape, x.shape[-1]
    pad = (-n) % block
    xd = x.to(_work_dtype(x))
    if pad:
        xd = torch.nn.functional.pad(xd, (0, pad))
    blocked = xd.reshape(*shape[:-1], (n + pad) // block, block)

    def restore(y: Tensor) -> Tensor:
        return y.reshape(*shape[:-1], n + pad)[..., :n].to(x.dtype)

    return blocked, restore


def _poison_nonfinite(blocks: Tensor, q: Tensor) -> Tensor:
    """Set every element of a block that held a NaN/Inf input to NaN (MX NaN-scale rule)."""
    bad = ~torch.isfinite(blocks).all(dim=-1, keepdim=True)
    return torch.where(bad, torch.full_like(q, float("nan")), q)


def _finite_amax(x: Tensor) -> Tensor:
    """Largest finite magnitude of ``x`` as a scalar tensor (0 if none)."""
    a = x.to(_work_dtype(x)).abs()
    return torch.where(torch.isfinite(a), a, torch.zeros_like(a)).amax()


def quantize_per_tensor(x: Tensor, fmt: MiniFloat) -> Tensor:
    """Scaled float cast with one FP32 scale for the whole tensor (FP8 deployments).

    ``scale = amax / fmt.max_normal`` so the largest magnitude maps to max_normal; an
    all-zero tensor uses scale 1. Elements saturate; NaN stays NaN.
    """
    amax = _finite_amax(x)
    # The scale is stored in FP32 by real kernels: round it there before use.
    scale = torch.where(amax > 0, amax / fmt.max_normal, torch.ones_like(amax))
    scale = scale.to(torch.float32).to(scale.dtype)
    xd = x.to(scale.dtype)
    return (round_minifloat(xd / scale, fmt, saturate=True) * scale).to(x.dtype)


def mx_scale_exponent(amax: Tensor, elem: MiniFloat) -> Tensor:
    """OCP MX shared exponent per block: ``floor(log2(amax)) - emax_elem``, E8M0-clamped.

    ``amax`` is the block's largest magnitude; a zero block gets an arbitrary exponent,
    which is irrelevant since all its elements quantize to 0.
    """
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return (_floor_log2(safe) - elem.emax).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)


def quantize_mx(x: Tensor, elem: MiniFloat, block: int = 32) -> Tensor:
    """OCP MX block scaling along the last axis: E8M0 power-of-two scale per ``block``."""
    blocks, restore = _blocks(x, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = _pow2(mx_scale_exponent(amax, elem), blocks.dtype)
    q = round_minifloat(blocks / scale, elem, saturate=True) * scale
    return restore(_poison_nonfinite(blocks, q))


def quantize_nvfp4(x: Tensor, block: int = 16) -> Tensor:
    """NVFP4 along the last axis: E2M1 elements, E4M3 scale per ``block``, FP32 per tensor.

    The per-tensor scale ``g = amax / (448 * 6)`` lets every block scale ``amax_b / 6 / g``
    fall inside E4M3's range (at most 448). A block whose E4M3 scale underflows to 0
    (amax_b tiny next to the tensor's amax) quantizes to 0, as the hardware would.
    """
    amax = _finite_amax(x)
    g = torch.where(amax > 0, amax / (E4M3.max_normal * E2M1.max_normal), torch.ones_like(amax))
    blocks, restore = _blocks(x, block)
    finite = torch.where(torch.isfinite(blocks), blocks.abs(), torch.zeros_like(blocks))
    amax_b = finite.amax(dim=-1, keepdim=True)
    s = round_minifloat(amax_b / E2M1.max_normal / g, E4M3, saturate=True)
    eff = s * g
    safe = torch.where(eff > 0, eff, torch.ones_like(eff))
    q = round_minifloat(blocks / safe, E2M1, saturate=True) * safe
    q = torch.where(eff > 0, q, torch.zeros_like(q))
    return restore(_poison_nonfinite(blocks, q))


def round_to_int_grid(x: Tensor, bits: int, scale: Tensor | float) -> Tensor:
    """``clamp(round_half_even(x / scale), -2^(b-1), 2^(b-1) - 1) * scale`` (saturating)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    xd = x.to(_work_dtype(x))
    return (torch.round(xd / scale).clamp(lo, hi) * scale).to(x.dtype)


def quantize_int(x: Tensor, bits: int, group: int | None = None) -> Tensor:
    """Symmetric integer quantization along the last axis.

    ``group=None``: one scale per row of the last axis (per output channel of a
    ``[out, in]`` weight, per token of an activation). Otherwise one scale per ``group``
    consecutive elements. ``scale = amax / (2^(b-1) - 1)``; an all-zero group uses 1.
    """
    blocks, restore = _blocks(x, group if group is not None else x.shape[-1])
    finite = torch.where(torch.isfinite(blocks), blocks.abs(), torch.zeros_like(blocks))
    amax = finite.amax(dim=-1, keepdim=True)
    qmax = 2 ** (bits - 1) - 1
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    # Scales are rounded to FP32, not FP16 as many INT4 kernels store them: an FP16
    # scale underflows for tiny activation groups, and the extra rounding is ~1e-4 relative.
    scale = scale.to(torch.float32).to(blocks.dtype)
    q = round_to_int_grid(blocks, bits, scale)
    return restore(_poison_nonfinite(blocks, q))


TensorFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Quantizer:
    """How one format treats each kind of tensor (all quantize-dequantize in place of x).

    ``weight`` takes a ``[out_features, in_features]`` matrix (blocks run along
    ``in_features``, the reduction axis); ``activation`` takes ``[..., in_features]``
    inputs of a linear layer; ``kv`` takes ``[..., head_dim]`` keys or values.
    """

    name: str
    weight: TensorFn
    activation: TensorFn
    kv: TensorFn
    scheme: str


def _same(name: str, fn: TensorFn, scheme: str) -> Quantizer:
    return Quantizer(name, fn, fn, fn, scheme)


def get_quantizer(name: str, *, group_size: int = INT4_DEFAULT_GROUP) -> Quantizer:
    """The :class:`Quantizer` for a format name (see ``formats.FORMAT_NAMES``).

    ``group_size`` applies to int4 (elements per scale along the reduction axis).
    """
    if group_size < 1:
        raise TokenfleetError(f"--group-size must be >= 1, got {group_size}")
    if name == "bf16":
        # Plain casts do not saturate in hardware: an overflow shows up as Inf.
        return _same(name, lambda t: round_minifloat(t, BF16, saturate=False), "BF16 cast")
    if name == "fp16":
        return _same(name, lambda t: round_minifloat(t, FP16, saturate=False), "FP16 cast")
    if name == "fp8-e4m3":
        return _same(name, lambda t: quantize_per_tensor(t, E4M3), "E4M3, FP32 scale per tensor")
    if name == "fp8-e5m2":
        return _same(name, lambda t: quantize_per_tensor(t, E5M2), "E5M2, FP32 scale per tensor")
    if name == "mxfp8":
        return _same(name, lambda t: quantize_mx(t, E4M3, 32), "E4M3, E8M0 scale per 32")
    if name == "mxfp4":
        return _same(name, lambda t: quantize_mx(t, E2M1, 32), "E2M1, E8M0 scale per 32")
    if name == "nvfp4":
        return _same(
            name, lambda t: quantize_nvfp4(t, 16), "E2M1, E4M3 scale per 16 + FP32 per tensor"
        )
    if name == "int8":
        return Quantizer(
            name,
            weight=lambda t: quantize_int(t, 8),
            activation=lambda t: quantize_int(t, 8),
            kv=lambda t: quantize_int(t, 8),
            scheme="INT8: weights per output channel, activations per token, KV per head-vector",
        )
    if name == "int4":
        g = group_size
        return Quantizer(
            name,
            weight=lambda t: quantize_int(t, 4, g),
            activation=lambda t: quantize_int(t, 4, g),
            kv=lambda t: quantize_int(t, 4, min(g, t.shape[-1])),
            scheme=f"INT4, scale per group of {g}",
        )
    raise TokenfleetError(f"unknown number format '{name}'; allowed: {', '.join(FORMAT_NAMES)}")
