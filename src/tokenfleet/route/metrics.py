"""Prometheus metrics of the gateway, per tier and pool.

Each gateway has its own registry (tests run several in one process). Label values
come only from the plan and the backends file — never from request content — so the
number of series is bounded however many requests pass.

Definitions (the same as ``tokenfleet.perf``): TTFT is from the gateway receiving
the request to the first streamed chunk forwarded to the client; TPOT is the mean
time between output tokens after the first. Non-streaming requests have neither:
their whole duration goes to ``tokenfleet_gateway_request_seconds``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-export)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0)
TPOT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2,
                  0.5, 1.0)
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, 120.0, 300.0, 600.0)

NO_POOL = "-"  # pool label of requests that never reached a pool (rejected, bad input)


class GatewayMetrics:
    """The gateway's counters, histograms and gauges (names in ``tokenfleet_gateway_*``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenfleet_gateway_requests", "Requests finished, by outcome "
            "(ok, client_error, upstream_error, timeout, cancelled, rejected, unavailable)",
            ["tier", "pool", "outcome"], registry=r)
        self.errors = Counter(
            "tokenfleet_gateway_errors", "Failed attempts at a backend, by kind "
            "(connect, status_5xx, status_429, mid_stream, timeout)",
            ["tier", "pool", "kind"], registry=r)
        self.retries = Counter(
            "tokenfleet_gateway_retries", "Attempts retried on another backend after a "
            "failure in this pool", ["tier", "pool"], registry=r)
        self.failovers = Counter(
            "tokenfleet_gateway_failovers", "Requests served by a pool other than the "
            "policy's first choice", ["tier", "pool"], registry=r)
        self.ttft = Histogram("tokenfleet_gateway_ttft_seconds", "Time to first token, "
                              "streaming requests", ["tier", "pool"], buckets=TTFT_BUCKETS_S,
                              registry=r)
        self.tpot = Histogram("tokenfleet_gateway_tpot_seconds", "Mean time per output token "
                              "after the first, streaming requests", ["tier", "pool"],
                              buckets=TPOT_BUCKETS_S, registry=r)
        self.duration = Histogram("tokenfleet_gateway_request_seconds", "Whole request, "
                                  "all attempts", ["tier", "pool"], buckets=DURATION_BUCKETS_S,
                                  registry=r)
        self.in_flight = Gauge("tokenfleet_gateway_in_flight", "Requests being served",
                               ["tier", "pool"], registry=r)
        self.backend_up = Gauge("tokenfleet_gateway_backend_up", "1 when health checks pass "
                                "and the circuit is not open", ["pool", "backend"], registry=r)
        self.circuit_opened = Counter("tokenfleet_gateway_circuit_opened", "Times a backend's "
                                      "circuit breaker opened", ["pool", "backend"], registry=r)
        self.limited = Counter("tokenfleet_gateway_limited", "Requests refused (429) by a "
                               "per-tier or per-key limit", ["tier", "scope", "limit"],
                               registry=r)
        self.resumes = Counter("tokenfleet_gateway_stream_resumes", "Streams continued on "
                               "another backend after theirs failed mid-stream, by outcome "
                               "(resumed, completed, failed)", ["tier", "pool", "outcome"],
                               registry=r)
        self.ejections = Counter("tokenfleet_gateway_outlier_ejections", "Backends ejected by "
                                 "outlier detection (slow or failing)", ["pool", "backend"],
                                 registry=r)
        self.prefill_hops = Counter(
            "tokenfleet_gateway_prefill_hops", "Prompts sent to a disaggregated pair's "
            "prefill pool before its decode pool, by outcome (ok, error, client_error: refused "
            "as the request's fault, which the decode pool then answers)",
            ["tier", "pool", "outcome"], registry=r)
        self.prefill_seconds = Histogram(
            "tokenfleet_gateway_prefill_seconds", "Prefill hops that succeeded: prompt "
            "sent to the prefill pool until its answer (part of the client's TTFT)",
            ["tier", "pool"], buckets=TTFT_BUCKETS_S, registry=r)
        # Resolving label children costs a dict lookup plus locking; cache them.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (label values are bounded, see above)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def render(self) -> bytes:
        """Text exposition format for ``GET /metrics``."""
        return generate_latest(self.registry)
