"""Number-format definitions against the OCP FP8 / MX specs and IEEE 754 (no PyTorch)."""

from __future__ import annotations

import math

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.formats import (
    BF16,
    E2M1,
    E4M3,
    E5M2,
    FORMAT_NAMES,
    FORMATS,
    FP16,
    PLANNER_FORMATS,
    PLANNER_PRECISIONS,
    e8m0_decode,
    get_format,
    parse_formats,
)


def test_e4m3_limits_match_ocp_table() -> None:
    # OCP OFP8 rev 1.0, table 1: E4M3 max 448, min normal 2^-6, min subnormal 2^-9.
    assert E4M3.max_normal == 448.0
    assert E4M3.min_normal == 2.0**-6
    assert E4M3.min_subnormal == 2.0**-9
    assert not E4M3.has_inf and E4M3.has_nan
    assert E4M3.decode(0x7E) == 448.0
    assert E4M3.decode(0x01) == 2.0**-9
    assert E4M3.decode(0x08) == 2.0**-6  # first normal: exponent field 1, mantissa 0


def test_e4m3_only_all_ones_patterns_are_nan() -> None:
    nan_codes = [c for c in range(256) if math.isnan(E4M3.decode(c))]
    assert nan_codes == [0x7F, 0xFF]
    assert all(math.isfinite(E4M3.decode(c)) for c in range(256) if c not in nan_codes)


def test_e5m2_limits_and_ieee_specials() -> None:
    assert E5M2.max_normal == 57344.0
    assert E5M2.min_normal == 2.0**-14
    assert E5M2.min_subnormal == 2.0**-16
    assert E5M2.decode(0x7C) == math.inf and E5M2.decode(0xFC) == -math.inf
    assert [c for c in range(128) if math.isnan(E5M2.decode(c))] == [0x7D, 0x7E, 0x7F]
    assert E5M2.decode(0x7B) == 57344.0


def test_e2m1_has_exactly_the_mx_spec_values() -> None:
    # OCP MX v1.0 section 5.3.3: FP4 E2M1 magnitudes.
    assert E2M1.finite_magnitudes() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert E2M1.max_normal == 6.0 and E2M1.min_subnormal == 0.5 and E2M1.min_normal == 1.0
    assert E2M1.emax == 2  # used by the MX scale: floor(log2 amax) - 2
    assert [E2M1.decode(c) for c in range(8, 16)] == [-0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert not E2M1.has_nan and not E2M1.has_inf


def test_half_precision_limits() -> None:
    assert FP16.max_normal == 65504.0
    assert FP16.min_subnormal == 2.0**-24
    assert BF16.max_normal == (2 - 2**-7) * 2.0**127
    assert BF16.min_subnormal == 2.0**-133


def test_codes_are_monotonic_so_index_is_code() -> None:
    for fmt in (E4M3, E5M2, E2M1):
        values = fmt.finite_magnitudes()
        assert values == sorted(values) and len(set(values)) == len(values)
        assert all(fmt.decode(i) == v for i, v in enumerate(values))
    assert len(E4M3.finite_magnitudes()) == 127  # 0x00..0x7E
    assert len(E5M2.finite_magnitudes()) == 124  # 0x00..0x7B


def test_e8m0_scale_values() -> None:
    assert e8m0_decode(127) == 1.0
    assert e8m0_decode(0) == 2.0**-127
    assert e8m0_decode(254) == 2.0**127
    assert math.isnan(e8m0_decode(255))


def test_bits_per_value_counts_block_scales() -> None:
    assert FORMATS["mxfp4"].bits_per_value == 4 + 8 / 32
    assert FORMATS["nvfp4"].bits_per_value == 4 + 8 / 16
    assert FORMATS["fp8-e4m3"].bits_per_value == 8


def test_parse_formats_and_errors_list_allowed_names() -> None:
    assert parse_formats(" BF16, nvfp4,bf16 ") == ["bf16", "nvfp4"]
    assert parse_formats("all") == list(FORMAT_NAMES)
    with pytest.raises(TokenfleetError) as e:
        parse_formats("bf16,fp6")
    assert "fp6" in str(e.value)
    for name in ("bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "mxfp4", "nvfp4", "int8", "int4"):
        assert name in str(e.value)
    with pytest.raises(TokenfleetError):
        get_format("")


def test_every_planner_precision_maps_to_known_formats() -> None:
    assert set(PLANNER_FORMATS) == set(PLANNER_PRECISIONS)
    for precision, names in PLANNER_FORMATS.items():
        assert names and all(n in FORMATS for n in names)
        assert FORMATS[names[0]].planner_precision == precision
    assert PLANNER_FORMATS["fp8"][0] == "fp8-e4m3"
    assert set(PLANNER_FORMATS["fp4"]) == {"nvfp4", "mxfp4"}
