"""Number formats for reduced-precision inference: their definitions, without tensor math.

Two layers live here, both pure Python so that the planner and the CLI can use them
without PyTorch:

* :class:`MiniFloat` — a small IEEE-754-style binary float (sign, exponent, mantissa,
  bias) and its special-value convention. It decodes any bit pattern to its value, so
  tests can enumerate every representable number. The element formats used by
  inference hardware are instances: OCP FP8 E4M3 and E5M2, OCP FP4 E2M1, and BF16/FP16.
* :class:`FormatInfo` — a *deployment* format by its CLI name (``fp8-e4m3``, ``nvfp4``,
  ...): which element format, how values are scaled (per tensor, per block, per
  channel), and which planner precision it stands for.

Sources: OCP "8-bit Floating Point Specification (OFP8)" rev. 1.0 (2023) for E4M3/E5M2;
OCP "Microscaling Formats (MX) Specification" v1.0 (2023) for E2M1, E8M0 and MX block
scaling; NVIDIA's NVFP4 description (Blackwell, 16-element blocks, E4M3 block scales and
one FP32 per-tensor scale).

The tensor arithmetic (quantize-dequantize with round-to-nearest-even) is in
:mod:`tokenfleet.quality.quantize`, which needs PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tokenfleet.errors import TokenfleetError


class Specials(str, Enum):
    """Which bit patterns of a small float are not ordinary finite numbers."""

    IEEE = "ieee"
    """Exponent all ones: Inf when the mantissa is zero, NaN otherwise (E5M2, FP16, BF16)."""
    FN = "fn"
    """Finite + NaN only: just S.1111.111 is NaN, no Inf (OCP E4M3, PyTorch's 'fn')."""
    NONE = "none"
    """Every pattern is a finite number (OCP E2M1)."""


@dataclass(frozen=True)
class MiniFloat:
    """A binary floating-point format with 1 sign bit, ``exponent_bits`` and ``mantissa_bits``.

    A pattern with exponent field ``E`` and mantissa field ``M`` is worth
    ``(-1)^S * 2^(E - bias) * (1 + M / 2^m)`` when ``E > 0`` (normal) and
    ``(-1)^S * 2^(1 - bias) * (M / 2^m)`` when ``E == 0`` (subnormal), except for the
    patterns that :attr:`specials` reserves.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    specials: Specials

    @property
    def total_bits(self) -> int:
        """Storage size of one value (bits)."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (unbiased)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number (unbiased)."""
        top = 2**self.exponent_bits - 1
        # IEEE-style formats give the all-ones exponent to Inf/NaN; FN and NONE keep it.
        return (top - 1 if self.specials is Specials.IEEE else top) - self.bias

    @property
    def max_normal(self) -> float:
        """Largest finite magnitude."""
        m = self.mantissa_bits
        # FN reserves the all-ones mantissa at the top exponent for NaN: one step less.
        top_mantissa = 2**m - (2 if self.specials is Specials.FN else 1)
        return (1 + top_mantissa / 2**m) * 2.0**self.emax

    @property
    def min_normal(self) -> float:
        """Smallest positive normal magnitude."""
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        """Smallest positive magnitude (one mantissa step below the normal range)."""
        return 2.0 ** (self.emin - self.mantissa_bits)

    @property
    def has_inf(self) -> bool:
        """Whether the format can hold +-Inf."""
        return self.specials is Specials.IEEE

    @property
    def has_nan(self) -> bool:
        """Whether the format can hold NaN."""
        return self.specials is not Specials.NONE

    def decode(self, code: int) -> float:
        """The value of bit pattern ``code`` (0 <= code < 2**total_bits), per the definition."""
        if not 0 <= code < 2**self.total_bits:
            raise ValueError(f"{self.name}: code {code} out of range")
        m = self.mantissa_bits
        sign = -1.0 if code >> (self.total_bits - 1) else 1.0
        exponent = (code >> m) & (2**self.exponent_bits - 1)
        mantissa = code & (2**m - 1)
        top = 2**self.exponent_bits - 1
        if self.specials is Specials.IEEE and exponent == top:
            return sign * float("inf") if mantissa == 0 else float("nan")
        if self.specials is Specials.FN and exponent == top and mantissa == 2**m - 1:
            return float("nan")
        if exponent == 0:
            return sign * 2.0**self.emin * (mantissa / 2**m)
        return sign * 2.0 ** (exponent - self.bias) * (1 + mantissa / 2**m)

    def finite_magnitudes(self) -> list[float]:
        """All non-negative finite values, ascending; index ``i`` is the value of code ``i``.

        Positive codes of these formats increase monotonically with their value, which is
        what makes the index a code.
        """
        values = []
        for code in range(2 ** (self.total_bits - 1)):
            v = self.decode(code)
            if v != v or v == float("inf"):  # NaN or Inf: the finite run has ended
                break
            values.append(v)
        return values


E4M3 = MiniFloat("E4M3", 4, 3, 7, Specials.FN)
E5M2 = MiniFloat("E5M2", 5, 2, 15, Specials.IEEE)
E2M1 = MiniFloat("E2M1", 2, 1, 1, Specials.NONE)
BF16 = MiniFloat("BF16", 8, 7, 127, Specials.IEEE)
FP16 = MiniFloat("FP16", 5, 10, 15, Specials.IEEE)

E8M0_BIAS = 127
"""OCP MX shared scale: 8-bit unsigned exponent, value 2^(code - 127); code 255 is NaN."""
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127


def e8m0_decode(code: int) -> float:
    """Value of an E8M0 scale byte (OCP MX v1.0, section 5.4): a power of two, or NaN."""
    if not 0 <= code <= 255:
        raise ValueError(f"E8M0: code {code} out of range")
    return float("nan") if code == 255 else 2.0 ** (code - E8M0_BIAS)


PLANNER_PRECISIONS: tuple[str, ...] = ("bf16", "fp8", "fp4", "int8")
"""Precisions the planner knows (see ``tokenfleet.perf.precision``)."""


@dataclass(frozen=True)
class FormatInfo:
    """A deployment number format, by the name users type on the command line."""

    name: str
    element: str
    """Element encoding: a MiniFloat name ('E4M3', 'E2M1', ...) or 'INT8' / 'INT4'."""
    element_bits: int
    block_size: int | None
    """Elements sharing one scale along the reduction axis; None = per tensor or channel."""
    scale_bits: int
    """Bits of one block or channel scale (0 for plain casts)."""
    planner_precision: str | None
    """The planner precision this format can stand for, if any."""
    doc: str

    @property
    def bits_per_value(self) -> float:
        """Average storage per weight including block scales (bits); per-tensor scales
        and per-channel scales are amortised to ~0 over a large tensor."""
        if self.block_size is None:
            return float(self.element_bits)
        return self.element_bits + self.scale_bits / self.block_size


INT4_DEFAULT_GROUP = 128
"""INT4 group size along the reduction axis unless ``--group-size`` says otherwise."""


# name, element, element bits, block, scale bits, planner precision, description
FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        FormatInfo("bf16", "BF16", 16, None, 0, "bf16", "BF16 cast, round-to-nearest-even"),
        FormatInfo("fp16", "FP16", 16, None, 0, None, "FP16 cast, round-to-nearest-even"),
        FormatInfo("fp8-e4m3", "E4M3", 8, None, 32, "fp8", "OCP FP8 E4M3, FP32 scale per tensor"),
        FormatInfo("fp8-e5m2", "E5M2", 8, None, 32, None, "OCP FP8 E5M2, FP32 scale per tensor"),
        FormatInfo("mxfp8", "E4M3", 8, 32, 8, None, "OCP MXFP8: E4M3, E8M0 scale per 32"),
        FormatInfo("mxfp4", "E2M1", 4, 32, 8, "fp4", "OCP MXFP4: E2M1, E8M0 scale per 32"),
        FormatInfo(
            "nvfp4",
            "E2M1",
            4,
            16,
            8,
            "fp4",
            "NVFP4: E2M1, E4M3 scale per 16, FP32 scale per tensor",
        ),
        FormatInfo("int8", "INT8", 8, None, 32, "int8", "INT8, scale per channel / per token"),
        FormatInfo("int4", "INT4", 4, INT4_DEFAULT_GROUP, 16, None, "INT4, scale per group"),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)

PLANNER_FORMATS: dict[str, tuple[str, ...]] = {
    "bf16": ("bf16",),
    "fp8": ("fp8-e4m3", "mxfp8"),
    "fp4": ("nvfp4", "mxfp4"),
    "int8": ("int8",),
}
"""Which measured formats may stand for a planner precision; the first is the default."""


def get_format(name: str) -> FormatInfo:
    """Look a format up by name; unknown names raise with the list of allowed ones."""
    key = name.strip().lower()
    if key not in FORMATS:
        raise TokenfleetError(f"unknown number format '{name}'; allowed: {', '.join(FORMAT_NAMES)}")
    return FORMATS[key]


def parse_formats(text: str) -> list[str]:
    """Parse a comma-separated format list (``"bf16,fp8-e4m3"``, or ``"all"``).

    Duplicates are dropped, order kept. Raises TokenfleetError naming the allowed formats.
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return list(FORMAT_NAMES)
    if not names:
        raise TokenfleetError(f"no number format given; allowed: {', '.join(FORMAT_NAMES)}")
    return list(dict.fromkeys(get_format(n).name for n in names))
