from __future__ import annotations

import pytest

from tokenfleet.route.breaker import BreakerState, CircuitBreaker


def test_opens_after_consecutive_failures_only():
    b = CircuitBreaker(failures_to_open=3, cooldown_s=5.0)
    b.on_failure(0.0)
    b.on_failure(0.0)
    b.on_success()  # a success in between resets the count
    b.on_failure(0.0)
    b.on_failure(0.0)
    assert b.state is BreakerState.closed and b.allows(0.0)
    b.on_failure(1.0)
    assert b.state is BreakerState.open
    assert not b.allows(5.9)
    assert b.allows(6.0)


def test_half_open_lets_one_trial_through():
    b = CircuitBreaker(failures_to_open=1, cooldown_s=1.0)
    b.on_failure(0.0)
    assert b.allows(1.5)
    b.on_dispatch(1.5)
    assert b.state is BreakerState.half_open
    assert not b.allows(1.6)  # second request waits for the trial's verdict
    b.on_failure(1.7)  # trial failed: open again for a full cool-down
    assert b.state is BreakerState.open and not b.allows(2.6) and b.allows(2.7)
    b.on_dispatch(2.7)
    b.on_success()
    assert b.state is BreakerState.closed and b.allows(2.8)


def test_release_frees_trial_without_verdict():
    b = CircuitBreaker(failures_to_open=1, cooldown_s=1.0)
    b.on_failure(0.0)
    b.on_dispatch(2.0)
    b.on_release()
    assert b.allows(2.0)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)
