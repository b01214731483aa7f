"""Isolation between clients and tiers: token buckets (requests/s, tokens/min) and a
concurrency cap per API key and per tier, answered with HTTP 429 + ``Retry-After``.

A :class:`Bucket` is one scope's limits (one key, or one tier). ``admit`` takes a
request's cost from every bucket of its scopes or from none (a request refused by its
tier does not use up its key's rate). Times are seconds on a monotonic clock given by
the caller, so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _TokenBucket:
    rate_per_s: float
    size: float
    level: float
    t: float

    def refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.size, self.level + (now - self.t) * self.rate_per_s)
            self.t = now

    def wait_s(self, cost: float) -> float:
        """Seconds until ``cost`` is available (0: now). A cost beyond the bucket's
        size is charged as a full bucket (else it could never pass)."""
        need = min(cost, self.size) - self.level
        return 0.0 if need <= 0 else need / self.rate_per_s


class Bucket:
    """Limits of one scope: ``name`` is for messages and metric labels."""

    __slots__ = ("name", "requests", "tokens", "max_in_flight", "in_flight")

    def __init__(self, name: str, requests_per_s: float | None = None,
                 burst_requests: float | None = None, tokens_per_min: float | None = None,
                 max_in_flight: int | None = None, now: float = 0.0) -> None:
        self.name = name
        self.requests: _TokenBucket | None = None
        self.tokens: _TokenBucket | None = None
        if requests_per_s:
            size = burst_requests or max(requests_per_s, 1.0)
            self.requests = _TokenBucket(requests_per_s, size, size, now)
        if tokens_per_min:
            # A minute's worth: a client may use its minute in one burst, as OpenAI's
            # per-minute limits allow.
            self.tokens = _TokenBucket(tokens_per_min / 60.0, tokens_per_min,
                                       tokens_per_min, now)
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    @property
    def limited(self) -> bool:
        return (self.requests is not None or self.tokens is not None
                or self.max_in_flight is not None)


@dataclass(frozen=True, slots=True)
class Refusal:
    scope: str  # bucket name
    what: str  # "requests_per_s", "tokens_per_min" or "max_in_flight"
    retry_after_s: int


def admit(buckets: Sequence[Bucket], tokens: int, now: float) -> Refusal | None:
    """Take one request of ``tokens`` from every bucket, or refuse (taking nothing)."""
    for b in buckets:
        if b.max_in_flight is not None and b.in_flight >= b.max_in_flight:
            return Refusal(b.name, "max_in_flight", 1)
        for tb, cost, what in ((b.requests, 1.0, "requests_per_s"),
                               (b.tokens, float(tokens), "tokens_per_min")):
            if tb is None:
                continue
            tb.refill(now)
            w = tb.wait_s(cost)
            if w > 0:
                return Refusal(b.name, what, max(1, math.ceil(w)))
    for b in buckets:
        if b.requests is not None:
            b.requests.level -= 1.0
        if b.tokens is not None:
            b.tokens.level -= min(float(tokens), b.tokens.size)
        b.in_flight += 1
    return None


def release(buckets: Sequence[Bucket]) -> None:
    """The request ended: give back its concurrency slot."""
    for b in buckets:
        b.in_flight -= 1
