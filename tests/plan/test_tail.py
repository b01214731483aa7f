"""The tail model: capacity at an SLO percentile from the occupancy of a replica."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import poisson

from tokenfleet.plan.scenario import Slo
from tokenfleet.plan.tail import binding_percentile, occupancy_quantile, tail_rate_factor


@settings(max_examples=60, deadline=None)
@given(c=st.floats(1, 2000), pct=st.sampled_from([50.0, 90.0, 99.0]))
def test_factor_keeps_the_percentile_of_occupancy_within_the_batch(c, pct):
    f = tail_rate_factor(c, pct)
    assert 0 < f <= 1
    if f > 0.05:  # not clamped: the defining property holds, and barely
        assert poisson.ppf(pct / 100, f * c) <= c
        assert poisson.ppf(pct / 100, min(f * 1.02, 1.0) * c) >= c * 0.98 or f == 1.0


@settings(max_examples=40, deadline=None)
@given(c=st.floats(2, 2000))
def test_higher_percentiles_and_smaller_batches_cost_more_capacity(c):
    assert tail_rate_factor(c, 99) <= tail_rate_factor(c, 90) <= tail_rate_factor(c, 50)
    assert tail_rate_factor(c, 99) <= tail_rate_factor(c * 4, 99) + 1e-9


def _bisected(c: float, pct: float, burst: float) -> float:
    """Reference: bisection on the occupancy quantile (the definition)."""
    lo, hi = 0.0, c
    if occupancy_quantile(hi, pct, burst) <= c:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if occupancy_quantile(mid, pct, burst) <= c else (lo, mid)
    return max(lo / c, 0.05)


@settings(max_examples=80, deadline=None)
@given(c=st.floats(0.5, 5000), pct=st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]),
       burst=st.sampled_from([1.0, 1.5, 4.0]))
def test_closed_form_matches_the_bisection_reference(c, pct, burst):
    assert tail_rate_factor(c, pct, burst) == pytest.approx(_bisected(c, pct, burst),
                                                            rel=1e-6, abs=1e-9)


def test_known_values():
    # a steady batch of 100: p90 of Poisson(L) <= 100 at L ~ 87.6
    assert tail_rate_factor(100, 90) == pytest.approx(0.876, abs=0.01)
    assert tail_rate_factor(1000, 99) > 0.92  # big batches: the tail costs little
    assert occupancy_quantile(50, 90, burst=4) > occupancy_quantile(50, 90)  # bursts widen


def test_binding_percentile_follows_the_bound_that_limits_the_batch():
    # TPOT at its bound: decode speed limits the batch -> TPOT's percentile
    assert binding_percentile(0.1, 0.049, 1.0, 0.05, 99, 90) == 90
    # TPOT far below: memory or the sequence cap limits it; excess waits -> TTFT's
    assert binding_percentile(0.1, 0.02, 1.0, 0.05, 99, 90) == 99


def test_slo_percentiles_default_and_validate():
    s = Slo(ttft_s=1, tpot_s=0.05)
    assert (s.ttft_percentile, s.tpot_percentile) == (99, 90)
    assert Slo(ttft_s=1, percentile=90).ttft_percentile == 90
    with pytest.raises(ValueError, match="50, 90, 99"):
        Slo(ttft_s=1, ttft_percentile=95)


def test_confidence_is_the_lower_quantile_of_the_held_out_error():
    from tokenfleet.plan.risk import confidence_factor, shortfall_odds

    # a band is the p90 absolute error: at 95 % one-sided confidence the plan counts
    # on exactly the low end of the band, at 50 % on the point estimate
    assert confidence_factor(0.3, 0.95) == pytest.approx(0.7)
    assert confidence_factor(0.3, 0.5) == pytest.approx(1.0)
    assert confidence_factor(0.3, 0.9) > confidence_factor(0.3, 0.99)
    # a pool loaded to the capacity it is sure of with probability q falls short 1 - q
    p, per = shortfall_odds({"a": confidence_factor(0.3, 0.9)}, {"a": 0.3}, {"a": "f"},
                            samples=40_000)
    assert per["a"] == pytest.approx(0.10, abs=0.01) and p == pytest.approx(0.90, abs=0.01)
    # two pools of one family fail together; of two families, either may
    same, _ = shortfall_odds({"a": 0.8, "b": 0.8}, {"a": 0.3, "b": 0.3},
                             {"a": "f", "b": "f"}, samples=40_000)
    apart, _ = shortfall_odds({"a": 0.8, "b": 0.8}, {"a": 0.3, "b": 0.3},
                              {"a": "f", "b": "g"}, samples=40_000)
    assert apart < same


def test_confidence_and_derate_are_exclusive():
    from tokenfleet.plan.scenario import Scenario

    base = {"name": "x", "tiers": [{"name": "t", "model": "llama-3.1-8b",
                                    "traffic": {"rate_per_s": 1, "mix": [
                                        {"input_len": 10, "output_len": 10, "share": 1}]},
                                    "slo": {"tpot_s": 0.05}}],
            "supply": [{"accelerator": "h100-sxm", "cloud": "a", "region": "r",
                        "max_chips": 8}]}
    with pytest.raises(ValueError, match="not both"):
        Scenario.model_validate({**base, "derate": 1.0, "confidence": 0.9})
    assert Scenario.model_validate({**base, "confidence": 0.9}).confidence == 0.9
