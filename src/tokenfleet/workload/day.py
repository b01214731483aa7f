"""Traffic over a day: per-period rate multipliers relative to the peak hour.

A :class:`DayProfile` is one number per period (hourly or finer: 24, 48, 72 or 96
periods), scaled so the busiest period is 1.0 - the rate the peak-hour plan is sized
for. It comes from a bundled profile (``workload/data/day_profiles.yaml``, each with
its source), a list of numbers in the scenario, or the arrival counts of a day-long
trace (``{trace: FILE}``), binned per period.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from tokenfleet.errors import TokenfleetError
from tokenfleet.workload.trace import Trace

PERIODS_PER_DAY = (24, 48, 72, 96)  # hourly, 30, 20 or 15 minutes
_DATA = Path(__file__).parent / "data" / "day_profiles.yaml"


@dataclass(frozen=True)
class DayProfile:
    """Rate multipliers per period of one day (busiest period = 1.0)."""

    multipliers: tuple[float, ...]
    source: str

    @property
    def period_h(self) -> float:
        return 24.0 / len(self.multipliers)

    def label(self, i: int) -> str:
        """``HH:MM`` at the start of period ``i``."""
        minutes = int(round(i * self.period_h * 60))
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    @property
    def peak_to_trough(self) -> float:
        low = min(self.multipliers)
        return math.inf if low == 0 else 1.0 / low


def profile_from_values(values: Sequence[float], source: str, where: str = "day_profile"
                        ) -> DayProfile:
    """A profile from raw per-period values (any scale: they are normalised to the
    busiest period). Raises :class:`TokenfleetError` naming ``where`` when bad."""
    n = len(values)
    if n not in PERIODS_PER_DAY:
        raise TokenfleetError(f"{where}: {n} values; give one per hour or finer: "
                              f"{', '.join(map(str, PERIODS_PER_DAY))} values for one day")
    try:
        v = np.asarray([float(x) for x in values], dtype=float)
    except (TypeError, ValueError):
        raise TokenfleetError(f"{where}: every value must be a number (a rate multiplier)"
                              ) from None
    bad = [i for i, x in enumerate(v) if not math.isfinite(x) or x < 0]
    if bad:
        raise TokenfleetError(f"{where}: value {bad[0]} is {values[bad[0]]!r}; multipliers "
                              "must be finite numbers >= 0")
    if v.max() <= 0:
        raise TokenfleetError(f"{where}: all values are 0; the busiest period needs traffic")
    return DayProfile(tuple(float(x) for x in v / v.max()), source)


@cache
def bundled_profiles() -> dict[str, DayProfile]:
    data = yaml.safe_load(_DATA.read_text())
    return {name: profile_from_values(p["multipliers"], p["source"], f"{_DATA.name}:{name}")
            for name, p in data.items()}


def profile_from_trace(trace: Trace, periods: int = 24, where: str = "day_profile") -> DayProfile:
    """Arrivals per period over the first 24 h of a day-long trace."""
    span_h = trace.duration_s / 3600 if len(trace) else 0.0
    if span_h < 23.0:
        raise TokenfleetError(f"{where}: trace {trace.source} spans {span_h:.1f} h; a day "
                              "profile needs a trace of at least 23 h (e.g. the week-long "
                              "Azure LLM inference trace 2024)")
    period_s = 86400.0 / periods
    day = trace.arrival_s[trace.arrival_s < 86400.0]
    counts = np.bincount((day // period_s).astype(np.int64), minlength=periods)[:periods]
    return profile_from_values(counts.tolist(), f"arrivals per period of {trace.source}", where)


def resolve_profile(spec: str | Sequence[float] | dict, base: Path,
                    where: str = "day_profile") -> DayProfile:
    """A profile from a scenario's ``day_profile``: a bundled name, a list of numbers,
    or ``{trace: FILE, format: ...}`` (relative to ``base``)."""
    if isinstance(spec, str):
        known = bundled_profiles()
        if spec not in known:
            raise TokenfleetError(f"{where}: unknown profile '{spec}'; bundled: "
                                  f"{', '.join(sorted(known))}, or give 24 numbers or "
                                  "{trace: FILE}")
        return known[spec]
    if isinstance(spec, dict):
        from tokenfleet.workload.readers import read_trace

        path = Path(str(spec.get("trace", "")))
        if not spec.get("trace"):
            raise TokenfleetError(f"{where}: a mapping needs 'trace: FILE'")
        full = path if path.is_absolute() else base / path
        return profile_from_trace(read_trace(full, format=spec.get("format")),
                                  int(spec.get("periods", 24)), where)
    return profile_from_values(list(spec), "scenario", where)
