"""Brute-force reference rounding, straight from the format definitions (pure Python).

Independent of the vectorised implementation under test: it enumerates every finite
value of a format (from ``MiniFloat.decode``) and picks the nearest, ties to the even
code — which is what round-to-nearest-even means for a binary float.
"""

from __future__ import annotations

import math

from tokenfleet.quality.formats import MiniFloat


def nearest(x: float, fmt: MiniFloat) -> float:
    """Saturating round-to-nearest-even of a finite ``x`` into ``fmt``."""
    values = fmt.finite_magnitudes()  # index == code of the positive value
    a = abs(x)
    if a >= fmt.max_normal:
        best = fmt.max_normal
    else:
        best_code = min(range(len(values)), key=lambda c: (abs(values[c] - a), c % 2))
        best = values[best_code]
    return math.copysign(best, x)


def mx_block(block: list[float], elem: MiniFloat) -> list[float]:
    """OCP MX v1.0 section 6.3 for one block: shared power-of-two scale, then elements."""
    amax = max(abs(v) for v in block)
    if amax == 0:
        return [0.0 for _ in block]
    shared = math.floor(math.log2(amax)) - elem.emax
    # math.log2 can be off by one ulp next to a power of two: correct it exactly.
    while 2.0 ** (shared + elem.emax) > amax:
        shared -= 1
    while 2.0 ** (shared + elem.emax + 1) <= amax:
        shared += 1
    shared = max(-127, min(127, shared))
    scale = 2.0**shared
    return [nearest(v / scale, elem) * scale for v in block]
