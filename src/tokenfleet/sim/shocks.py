"""What-if shocks: failures (and recoveries), traffic surges and price changes.

Written as short strings, so the same text works on the command line and in sweep
grids. Times are seconds of simulated time from the start of the traffic.

Failures — ``SELECTOR[@t=START[..END]]``; without ``..END`` the capacity stays down:

* ``vendor=NVIDIA``, ``cloud=azure``, ``region=eastus``, ``accelerator=maia-200`` or
  ``pool=POOL_ID`` take out every replica that matches (case-insensitive);
* ``replicas=POOL_ID:N`` takes out N replicas of one pool.

``vendor=AMD@t=600..1200`` fails all AMD capacity at 600 s and brings it back at 1200 s.

Surges — ``FACTORx[@t=START[..END]]``: arrivals in the window are multiplied by
FACTOR (``2x@t=600..900``; ``0.5x`` thins traffic).

Price changes — ``TARGET=USD[@t=START]``: from START, chips of accelerator TARGET (or
the pool with id TARGET) cost USD per chip-hour (``maia-200=3.5@t=0``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan, PlanUnit

FAIL_KEYS = ("vendor", "cloud", "region", "accelerator", "pool", "replicas")

_NUM = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"
_TIME = re.compile(rf"^(?:t=)?(?P<a>{_NUM})(?:\.\.(?P<b>(?:{_NUM})?))?$")


def _num(text: str, what: str, spec: str, flag: str = "") -> float:
    try:
        x = float(text)
    except ValueError:
        raise TokenfleetError(f"{flag} {spec!r}: {what} '{text}' is not a number") from None
    if not math.isfinite(x) or x < 0:
        raise TokenfleetError(f"{flag} {spec!r}: {what} must be a finite number >= 0, "
                              f"got {text}")
    return x


def _split_time(spec: str, flag: str) -> tuple[str, float, float | None]:
    """``BODY@t=A..B`` -> (BODY, A, B); no ``@`` means the whole run."""
    body, at, when = spec.partition("@")
    if not at:
        return spec.strip(), 0.0, None
    m = _TIME.match(when.strip())
    if not m:
        raise TokenfleetError(f"{flag} {spec!r}: time must look like @t=600 or "
                              "@t=600..1200 (seconds)")
    start = _num(m.group("a"), "start time", spec, flag)
    end_text = m.group("b")
    end = _num(end_text, "end time", spec, flag) if end_text else None
    if end is not None and end <= start:
        raise TokenfleetError(f"{flag} {spec!r}: end time {end:g} s must be after start "
                              f"{start:g} s")
    return body.strip(), start, end


@dataclass(frozen=True)
class Failure:
    """Capacity that goes down at ``start`` (s) and, if ``end`` is set, comes back."""

    key: str  # one of FAIL_KEYS
    value: str  # vendor / cloud / region / accelerator / pool id
    count: int | None  # replicas=POOL:N only
    start: float
    end: float | None
    text: str

    def matches(self, unit: PlanUnit) -> bool:
        v = self.value.lower()
        if self.key in ("pool", "replicas"):
            return unit.pool == self.value
        return str(getattr(unit, self.key)).lower() == v

    def replicas_of(self, unit: PlanUnit) -> int:
        """How many replicas of ``unit`` this failure takes out."""
        if not self.matches(unit):
            return 0
        return unit.replicas if self.count is None else min(self.count, unit.replicas)


def parse_failure(spec: str) -> Failure:
    body, start, end = _split_time(spec, "--fail")
    key, eq, value = body.partition("=")
    key = key.strip().lower()
    if not eq or key not in FAIL_KEYS or not value.strip():
        raise TokenfleetError(
            f"--fail {spec!r}: expected SELECTOR[@t=START[..END]] with SELECTOR one of "
            "vendor=NAME, cloud=NAME, region=NAME, accelerator=ID, pool=ID, replicas=POOL:N "
            "(e.g. vendor=NVIDIA@t=600..1200)")
    value = value.strip()
    count = None
    if key == "replicas":
        pool, colon, n = value.rpartition(":")
        if not colon or not pool:
            raise TokenfleetError(f"--fail {spec!r}: replicas takes POOL_ID:N, e.g. "
                                  "replicas=chat/h100-sxm/aws/us-east-1/fp8:4@t=300")
        try:
            count = int(n)
        except ValueError:
            raise TokenfleetError(f"--fail {spec!r}: N = '{n}' is not a whole number") from None
        if count < 1:
            raise TokenfleetError(f"--fail {spec!r}: N must be >= 1")
        value = pool
    return Failure(key, value, count, start, end, spec)


@dataclass(frozen=True)
class Surge:
    """Arrivals in ``[start, end)`` (s) multiplied by ``factor``."""

    factor: float
    start: float
    end: float | None
    text: str


def parse_surge(spec: str) -> Surge:
    body, start, end = _split_time(spec, "--surge")
    m = re.fullmatch(r"([0-9.eE+-]+)\s*[xX]", body)
    if not m:
        raise TokenfleetError(f"--surge {spec!r}: expected FACTORx[@t=START[..END]], "
                              "e.g. 2x@t=600..900")
    factor = _num(m.group(1), "factor", spec, "--surge")
    if factor <= 0:
        raise TokenfleetError(f"--surge {spec!r}: factor must be > 0")
    return Surge(factor, start, end, spec)


@dataclass(frozen=True)
class PriceChange:
    """From ``start`` (s), chips of accelerator (or pool) ``target`` cost ``usd_per_chip_hour``."""

    target: str
    usd_per_chip_hour: float
    start: float
    text: str

    def matches(self, unit: PlanUnit) -> bool:
        return unit.pool == self.target or unit.accelerator.lower() == self.target.lower()


def parse_price(spec: str) -> PriceChange:
    body, start, end = _split_time(spec, "--price")
    target, eq, usd = body.rpartition("=")
    if not eq or not target.strip():
        raise TokenfleetError(f"--price {spec!r}: expected ACCELERATOR_OR_POOL=USD[@t=START], "
                              "e.g. maia-200=3.5@t=0 (USD per chip-hour)")
    if end is not None:
        raise TokenfleetError(f"--price {spec!r}: a price holds until the next change; give "
                              "only a start time (@t=START)")
    return PriceChange(target.strip(), _num(usd, "price", spec, "--price"), start, spec)


def check_against_plan(plan: Plan, failures: list[Failure], prices: list[PriceChange]) -> None:
    """Every shock must hit something: a selector that matches no pool is a typo."""
    for f in failures:
        if not any(f.matches(u) for u in plan.units):
            if f.key in ("pool", "replicas"):
                known = ", ".join(u.pool for u in plan.units)
            else:
                known = ", ".join(sorted({str(getattr(u, f.key)) for u in plan.units}))
            raise TokenfleetError(f"--fail {f.text!r} matches no pool of the plan; "
                                  f"{f.key if f.key != 'replicas' else 'pool'} values in the "
                                  f"plan: {known}")
    for p in prices:
        if not any(p.matches(u) for u in plan.units):
            accels = sorted({u.accelerator for u in plan.units})
            raise TokenfleetError(f"--price {p.text!r}: no pool uses accelerator (or has id) "
                                  f"'{p.target}'; accelerators in the plan: {', '.join(accels)}")
