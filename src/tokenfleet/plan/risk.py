"""Risk as a probability: how sure the plan is of each pool's capacity.

Every estimate carries a band ``u``: the 90th percentile of the model's held-out
absolute throughput error for its chip (calibration, leave-one-out or
leave-one-family-out; tokenfleet.perf.calibration). Read as a normal error, its standard
deviation is ``u / z(0.95)``. A plan at confidence ``q`` counts on each pool's
``q``-lower quantile, ``point * (1 - z(q) * sigma)``: the pool has at least that
capacity with probability ``q``. Errors of one chip family move together (one fit), so
the chance that a tier holds is estimated by sampling one error per family and checking
every pool of the tier against its planned load; pools that fall short in the most
samples are the ones that carry the tier's risk.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri  # the normal's ppf (scipy.stats takes ~1 s to import)

Z_BAND = float(ndtri(0.95))  # a band is the 90 % two-sided (p90 absolute) error
MIN_FACTOR = 0.05


def sigma(band: float) -> float:
    """Standard deviation of the relative throughput error behind a ± ``band``."""
    return band / Z_BAND


def confidence_factor(band: float, confidence: float) -> float:
    """Capacity a pool has with probability ``confidence``, as a fraction of the point
    estimate (1 at confidence 0.5)."""
    return max(1.0 - float(ndtri(confidence)) * sigma(band), MIN_FACTOR)


def shortfall_odds(loads: dict[str, float], bands: dict[str, float],
                   family: dict[str, str], samples: int = 4000, seed: int = 0
                   ) -> tuple[float, dict[str, float]]:
    """Probability that every pool's true capacity covers its planned load, and per pool
    the probability that it does not. ``loads`` is planned load / point capacity (0..1+)
    per pool; one normal error per chip family, shared by its pools."""
    rng = np.random.default_rng(seed)
    fams = sorted(set(family.values()))
    z = rng.standard_normal((samples, len(fams)))
    col = {f: i for i, f in enumerate(fams)}
    short_any = np.zeros(samples, bool)
    per_pool = {}
    for pid, load in loads.items():
        true = 1.0 + sigma(bands[pid]) * z[:, col[family[pid]]]
        short = true < load
        per_pool[pid] = float(short.mean())
        short_any |= short
    return float(1.0 - short_any.mean()), per_pool
