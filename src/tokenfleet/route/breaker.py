"""Circuit breaker for one backend: stop sending to a backend that keeps failing,
then let a single trial request through after a cool-down.

States: *closed* (normal), *open* (no traffic until ``cooldown_s`` has passed),
*half-open* (one trial request in flight; success closes, failure re-opens).
Times are seconds on a monotonic clock supplied by the caller, so tests can drive
it without sleeping.
"""

from __future__ import annotations

from enum import Enum


class BreakerState(str, Enum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; ``failures`` of them open the circuit."""

    __slots__ = ("failures_to_open", "cooldown_s", "state", "consecutive_failures",
                 "_open_until", "_trial_in_flight", "opened_count")

    def __init__(self, failures_to_open: int = 3, cooldown_s: float = 5.0) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be >= 1")
        if cooldown_s <= 0:
            raise ValueError("cooldown_s must be > 0 seconds")
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.state = BreakerState.closed
        self.consecutive_failures = 0
        self._open_until = 0.0
        self._trial_in_flight = False
        self.opened_count = 0  # how many times it opened (for metrics and tests)

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (does not reserve the trial slot)."""
        if self.state is BreakerState.closed:
            return True
        if self.state is BreakerState.open:
            return now >= self._open_until
        return not self._trial_in_flight

    def on_dispatch(self, now: float) -> None:
        """Call when a request is sent: past the cool-down, it becomes the trial."""
        if self.state is BreakerState.open and now >= self._open_until:
            self.state = BreakerState.half_open
            self._trial_in_flight = True
        elif self.state is BreakerState.half_open:
            self._trial_in_flight = True

    def on_success(self) -> None:
        self.state = BreakerState.closed
        self.consecutive_failures = 0
        self._trial_in_flight = False

    def on_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        if (self.state is BreakerState.half_open
                or self.consecutive_failures >= self.failures_to_open):
            if self.state is not BreakerState.open:
                self.opened_count += 1
            self.state = BreakerState.open
            self._open_until = now + self.cooldown_s
            self._trial_in_flight = False

    def on_release(self) -> None:
        """A request ended with no verdict on the backend (client cancelled, or a 4xx
        caused by the request itself): free the trial slot without a judgement."""
        self._trial_in_flight = False
