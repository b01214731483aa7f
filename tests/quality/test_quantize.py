"""Quantize-dequantize of tensors against the format definitions and PyTorch's own casts."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tokenfleet.errors import TokenfleetError  # noqa: E402
from tokenfleet.quality.formats import BF16, E2M1, E4M3, E5M2, FORMAT_NAMES, FP16  # noqa: E402
from tokenfleet.quality.quantize import (  # noqa: E402
    encode_minifloat,
    get_quantizer,
    mx_scale_exponent,
    quantize_int,
    quantize_mx,
    quantize_nvfp4,
    quantize_per_tensor,
    round_minifloat,
    round_to_int_grid,
)

from .oracle import mx_block, nearest  # noqa: E402

# (format, PyTorch dtype, conversion mode PyTorch implements): PyTorch 2.13 saturates
# when casting to float8_e4m3fn (Inf -> 448) and overflows to Inf for float8_e5m2.
TORCH_FP8 = [(E4M3, torch.float8_e4m3fn, True), (E5M2, torch.float8_e5m2, False)]


def _f32(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _torch_codes(x: torch.Tensor, dtype: torch.dtype) -> list[int]:
    return x.to(dtype).view(torch.uint8).tolist()


def _all_values(fmt) -> list[float]:
    pos = fmt.finite_magnitudes()
    return pos + [-v for v in pos]


# ---------------------------------------------------------------- FP8 vs PyTorch


@pytest.mark.parametrize(("fmt", "dtype", "_sat"), TORCH_FP8)
def test_decode_table_matches_pytorch_for_all_256_codes(fmt, dtype, _sat) -> None:
    theirs = torch.arange(256, dtype=torch.uint8).view(dtype).float().tolist()
    ours = [fmt.decode(c) for c in range(256)]
    for code, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert (math.isnan(a) and math.isnan(b)) or a == b, hex(code)


@pytest.mark.parametrize(("fmt", "dtype", "sat"), TORCH_FP8)
def test_every_representable_value_bit_identical_to_pytorch(fmt, dtype, sat) -> None:
    x = _f32(_all_values(fmt))
    assert encode_minifloat(x, fmt, saturate=sat).tolist() == _torch_codes(x, dtype)
    # and each value is a fixed point of the rounding
    assert torch.equal(round_minifloat(x, fmt, saturate=sat), x)


@pytest.mark.parametrize(("fmt", "dtype", "sat"), TORCH_FP8)
def test_ties_and_their_neighbours_bit_identical_to_pytorch(fmt, dtype, sat) -> None:
    values = sorted(set(_all_values(fmt)))
    mids = _f32([(a + b) / 2 for a, b in zip(values, values[1:], strict=False)])
    inf = torch.full_like(mids, math.inf)
    above, below = torch.nextafter(mids, inf), torch.nextafter(mids, -inf)
    # past the top: half an ulp above max, the next "virtual" value, and far beyond
    top = fmt.max_normal
    ulp_top = top - fmt.finite_magnitudes()[-2]
    beyond = _f32([top + ulp_top / 2, top + ulp_top, 2 * top, 1e30, 3e38])
    x = torch.cat([mids, above, below, beyond, -beyond])
    assert encode_minifloat(x, fmt, saturate=sat).tolist() == _torch_codes(x, dtype)


@pytest.mark.parametrize(("fmt", "dtype", "sat"), TORCH_FP8)
def test_random_float32_bit_patterns_bit_identical_to_pytorch(fmt, dtype, sat) -> None:
    # Uniform random 32-bit patterns: every exponent, subnormals, Inf and NaN payloads.
    gen = torch.Generator().manual_seed(7)
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), generator=gen, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    # plus values concentrated in the format's own range, where rounding matters most
    y = (torch.randn(200_000, generator=gen) * 2.0 ** torch.randint(-18, 18, (200_000,))).float()
    for t in (x, y):
        assert encode_minifloat(t, fmt, saturate=sat).tolist() == _torch_codes(t, dtype)


@pytest.mark.parametrize(("fmt", "dtype"), [(BF16, torch.bfloat16), (FP16, torch.float16)])
def test_half_precision_casts_bit_identical_to_pytorch(fmt, dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    bits = torch.randint(-(2**31), 2**31 - 1, (300_000,), generator=gen, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    ours = round_minifloat(x, fmt, saturate=False)
    theirs = x.to(dtype).float()
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan)
    assert torch.equal(ours[~nan].view(torch.int32), theirs[~nan].view(torch.int32))


# ---------------------------------------------------------------- definitions


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1, FP16, BF16])
def test_max_min_subnormal_and_zero(fmt) -> None:
    x = _f32([fmt.max_normal, -fmt.max_normal, fmt.min_subnormal, fmt.min_normal, 0.0, -0.0])
    out = round_minifloat(x, fmt)
    assert torch.equal(out, x)
    assert torch.signbit(out[-1])  # -0 stays -0
    # half the smallest subnormal is a tie between 0 (even) and min_subnormal (odd): 0
    half = round_minifloat(_f32([fmt.min_subnormal / 2, fmt.min_subnormal * 0.75]), fmt)
    assert half.tolist() == [0.0, fmt.min_subnormal]


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1])
def test_saturating_conversion_clamps_overflow_and_inf(fmt) -> None:
    x = _f32([fmt.max_normal * 1.01, fmt.max_normal * 4, math.inf, -math.inf])
    out = round_minifloat(x, fmt, saturate=True)
    assert out.tolist() == [fmt.max_normal, fmt.max_normal, fmt.max_normal, -fmt.max_normal]


def test_non_saturating_overflow_follows_each_format() -> None:
    big = _f32([500.0, math.inf, -1e6])
    assert torch.isnan(round_minifloat(big, E4M3, saturate=False)).all()  # E4M3 has no Inf
    e5 = round_minifloat(_f32([61440.0, math.inf, -1e6, 61439.0]), E5M2, saturate=False)
    # 61440 is the tie between max (odd mantissa) and 2^16 (even): rounds up, overflows
    assert e5.tolist() == [math.inf, math.inf, -math.inf, 57344.0]


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1, BF16])
def test_nan_stays_nan(fmt) -> None:
    out = round_minifloat(_f32([math.nan, -math.nan, 1.0]), fmt)
    assert torch.isnan(out[:2]).all() and out[2] == 1.0


def test_e2m1_rounding_ties_go_to_even_mantissa() -> None:
    x = _f32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -2.5, 0.3, 5.1])
    # 0.25: 0|0.5 -> 0; 0.75: 0.5|1 -> 1; 1.25: 1|1.5 -> 1; 1.75: 1.5|2 -> 2; 2.5: 2|3 -> 2;
    # 3.5: 3|4 -> 4; 5: 4|6 -> 4 (4 = 1.0 x 2^2, even)
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -2.0, 0.5, 6.0]
    assert round_minifloat(x, E2M1).tolist() == expected
    with pytest.raises(ValueError, match="no NaN"):
        encode_minifloat(_f32([math.nan]), E2M1)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1000, max_value=1000, width=32))
def test_e4m3_equals_brute_force_nearest_even(x: float) -> None:
    assert round_minifloat(_f32([x]), E4M3).item() == nearest(x, E4M3)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e5, max_value=1e5, width=32))
def test_e5m2_equals_brute_force_nearest_even(x: float) -> None:
    assert round_minifloat(_f32([x]), E5M2).item() == nearest(x, E5M2)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-10, max_value=10, width=32))
def test_e2m1_equals_brute_force_nearest_even(x: float) -> None:
    assert round_minifloat(_f32([x]), E2M1).item() == nearest(x, E2M1)


# ---------------------------------------------------------------- MX block scaling

block_values = st.lists(
    st.floats(min_value=-1e4, max_value=1e4, width=32), min_size=64, max_size=64
)


@settings(max_examples=150, deadline=None)
@given(block_values)
def test_mxfp4_equals_spec_algorithm(values: list[float]) -> None:
    out = quantize_mx(_f32(values), E2M1, 32).tolist()
    assert out == mx_block(values[:32], E2M1) + mx_block(values[32:], E2M1)


@settings(max_examples=100, deadline=None)
@given(block_values)
def test_mxfp8_equals_spec_algorithm(values: list[float]) -> None:
    out = quantize_mx(_f32(values), E4M3, 32).tolist()
    assert out == mx_block(values[:32], E4M3) + mx_block(values[32:], E4M3)


def test_mx_scale_is_floor_log2_amax_minus_emax() -> None:
    amax = torch.tensor([6.0, 7.99, 8.0, 0.75, 1e-45], dtype=torch.float64)
    assert mx_scale_exponent(amax, E2M1).tolist() == [0, 0, 1, -3, -127]
    # amax 7 -> scale 1 -> 7 saturates to 6 (the spec's known clipping of the top binade)
    block = _f32([7.0] + [0.0] * 31)
    assert quantize_mx(block, E2M1)[0].item() == 6.0


def test_mx_blocks_are_independent_and_nan_poisons_only_its_block() -> None:
    x = torch.linspace(-3, 3, 64)
    base = quantize_mx(x, E2M1)
    y = x.clone()
    y[40] = 1000.0
    changed = quantize_mx(y, E2M1)
    assert torch.equal(changed[:32], base[:32])
    y[40] = math.nan
    poisoned = quantize_mx(y, E2M1)
    assert torch.isnan(poisoned[32:]).all() and torch.equal(poisoned[:32], base[:32])


def test_mx_pads_a_ragged_last_block_without_changing_scales() -> None:
    x = torch.randn(3, 40)
    out = quantize_mx(x, E2M1)
    assert out.shape == x.shape
    assert torch.equal(out[:, :32], quantize_mx(x[:, :32].contiguous(), E2M1))
    assert torch.equal(out[:, 32:], quantize_mx(x[:, 32:].contiguous(), E2M1))


# ---------------------------------------------------------------- NVFP4


def test_nvfp4_hand_worked_block() -> None:
    x = torch.arange(1, 17, dtype=torch.float32)  # one block, amax 16
    g = torch.tensor(16.0 / (448 * 6), dtype=torch.float32).item()  # per-tensor FP32 scale
    eff = 448 * g  # block scale 16/6/g = 448 exactly, representable in E4M3
    # x / eff = 0.375, 0.75, 1.125, ..., 6 -> E2M1 (ties to even: 0.75 -> 1, 4.5 -> 4)
    codes = [0.5, 1, 1, 1.5, 2, 2, 3, 3, 3, 4, 4, 4, 4, 6, 6, 6]
    expected = torch.tensor([c * eff for c in codes], dtype=torch.float32)
    torch.testing.assert_close(quantize_nvfp4(x), expected, rtol=1e-6, atol=0)


def test_nvfp4_block_scales_are_e4m3_values_and_elements_e2m1() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 64, generator=gen) * torch.logspace(-2, 2, 64)
    out = quantize_nvfp4(x).double()
    g = x.abs().max().double() / (448 * 6)
    grid = torch.tensor(E2M1.finite_magnitudes(), dtype=torch.float64)
    for block in out.reshape(-1, 16):
        if not block.abs().max() > 0:
            continue
        # the block's scale s*g: every element is (E2M1 value) * s * g, s an E4M3 value
        e4m3 = torch.tensor(E4M3.finite_magnitudes(), dtype=torch.float64)
        ok = False
        for s in e4m3[1:]:
            ratio = block.abs() / (s * g)
            if torch.allclose(
                ratio, grid[(ratio.unsqueeze(-1) - grid).abs().argmin(-1)], rtol=1e-5, atol=1e-9
            ):
                ok = True
                break
        assert ok


def test_nvfp4_tiny_block_underflows_to_zero() -> None:
    x = torch.zeros(32)
    x[0] = 1e6  # tensor amax in block 1
    x[16:] = 1e-6  # block 2's scale (1e-6 / 6 / g) underflows E4M3 -> whole block 0
    out = quantize_nvfp4(x)
    assert out[0].item() == pytest.approx(1e6, rel=1e-6)
    assert (out[16:] == 0).all()


def test_per_tensor_fp8_maps_amax_to_max_normal() -> None:
    x = torch.tensor([0.001, -0.5, 3.0, 1.0])
    out = quantize_per_tensor(x, E4M3)
    assert out[2] == pytest.approx(3.0, rel=1e-7)  # amax survives exactly (up to FP32 scale)
    scale = 3.0 / 448
    assert out[1].item() == pytest.approx(nearest(-0.5 / scale, E4M3) * scale, rel=1e-6)
    assert torch.equal(quantize_per_tensor(torch.zeros(4), E4M3), torch.zeros(4))


# ---------------------------------------------------------------- INT


def test_int8_per_channel_ties_to_even_and_row_scales() -> None:
    x = torch.tensor([[127.0, 2.5, -2.5, 3.5, 0.49], [1.0, 0.5, -0.25, 0.0, 0.0]])
    out = quantize_int(x, 8)
    assert out[0].tolist() == [127.0, 2.0, -2.0, 4.0, 0.0]  # row scale exactly 1
    assert out[1, 0].item() == 1.0  # each row has its own scale
    assert out[1, 1].item() == pytest.approx(round(0.5 * 127) / 127, rel=1e-6)


def test_int_grid_saturates_at_format_limits() -> None:
    x = torch.tensor([200.0, -200.0, 126.6, -128.4])
    assert round_to_int_grid(x, 8, 1.0).tolist() == [127.0, -128.0, 127.0, -128.0]
    assert round_to_int_grid(x, 4, 1.0).tolist() == [7.0, -8.0, 7.0, -8.0]


def test_int4_groups_have_their_own_scales_and_nan_poisons_group() -> None:
    x = torch.cat([torch.full((128,), 0.5), torch.full((128,), 70.0)])
    x[0], x[128] = 7.0, 7.0
    out = quantize_int(x, 4, 128)
    assert out[1].item() == 0.0  # 0.5 with scale 1 is a tie -> 0 (even)
    assert out[129].item() == 70.0  # second group: scale 10
    x[5] = math.nan
    out = quantize_int(x, 4, 128)
    assert torch.isnan(out[:128]).all() and not torch.isnan(out[128:]).any()


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_format_keeps_shape_dtype_and_is_close(name: str) -> None:
    q = get_quantizer(name, group_size=32)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 100, generator=gen)  # ragged last dim on purpose
    act = torch.randn(2, 5, 100, generator=gen)
    kv = torch.randn(2, 2, 5, 16, generator=gen)
    for fn, t in ((q.weight, w), (q.activation, act), (q.kv, kv)):
        out = fn(t)
        assert out.shape == t.shape and out.dtype == t.dtype
        rel = (out - t).norm() / t.norm()
        assert 0 <= rel < 0.2, f"{name}: relative error {rel:.3f}"
    assert q.scheme


def test_unknown_format_and_bad_group_size() -> None:
    with pytest.raises(TokenfleetError, match="allowed"):
        get_quantizer("fp6")
    with pytest.raises(TokenfleetError, match="group-size"):
        get_quantizer("int4", group_size=0)
