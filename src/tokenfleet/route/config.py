"""``backends.yaml``: which real servers stand behind each pool of the plan, and how
the gateway treats them (timeouts, retries, health checks, circuit breaking, limits).

Example (see ``examples/backends.yaml``)::

    gateway:
      policy: plan
      max_attempts: 3
    pools:
      chat/maia-200/azure/eastus/fp8:
        model: meta-llama/Llama-3.1-8B-Instruct   # name the backends serve
        max_in_flight: 64                          # per backend
        backends: [http://10.0.0.5:8000, {url: http://10.0.0.6:8000, max_in_flight: 32}]

Units: seconds (``*_s``), bytes (``*_bytes``), requests (``max_in_flight``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.routing.policies import POLICIES
from tokenfleet.yamlio import read_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthSettings(_Strict):
    """Active health checks: ``GET <backend><path>`` every ``interval_s``."""

    interval_s: float = Field(2.0, gt=0, description="seconds between checks of one backend")
    timeout_s: float = Field(2.0, gt=0, description="a check slower than this fails")
    path: str | None = Field("/health", description="null disables active checks")
    # Two, so one slow answer under load does not take a busy backend out; a backend
    # that refuses connections is marked down at once by the request that saw it.
    unhealthy_after: int = Field(2, ge=1, description="consecutive failed checks to mark down")
    healthy_after: int = Field(1, ge=1, description="consecutive good checks to mark up")


class BreakerSettings(_Strict):
    """Circuit breaker per backend, fed by real requests."""

    failures: int = Field(3, ge=1, description="consecutive failures that open the circuit")
    cooldown_s: float = Field(5.0, gt=0, description="open time before one trial request")


class OutlierSettings(_Strict):
    """Gray-failure detection per backend (see ``route/outlier.py``)."""

    enabled: bool = True
    ewma_alpha: float = Field(0.3, gt=0, le=1, description="weight of a new latency sample")
    slow_factor: float = Field(3.0, gt=1, description="slower than its peers' median by this "
                                                      "factor: an outlier")
    min_samples: int = Field(5, ge=1, description="samples on each side before judging")
    min_difference_s: float = Field(0.01, ge=0, description="ignore smaller gaps (noise)")
    base_ejection_s: float = Field(10.0, gt=0, description="first cool-down; x times ejected")
    max_ejection_s: float = Field(300.0, gt=0)
    max_ejection_percent: float = Field(50.0, ge=0, le=100,
                                        description="of a pool at once (at least one)")


class Limits(_Strict):
    """Token buckets and a concurrency cap; beyond them: HTTP 429 + Retry-After."""

    requests_per_s: float | None = Field(None, gt=0, description="sustained request rate")
    burst_requests: float | None = Field(None, gt=0, description="bucket size; default: "
                                                                 "one second of rate, >= 1")
    tokens_per_min: float | None = Field(None, gt=0, description="prompt + max_tokens")
    max_in_flight: int | None = Field(None, ge=1, description="concurrent requests")


class TierSettings(_Strict):
    resume_streams: bool | None = Field(None, description="override gateway.resume_streams")
    max_context_tokens: int | None = Field(None, ge=1, description="prompt + max_tokens "
                                           "limit; default: the catalog model's")
    limits: Limits = Limits()


class GatewaySettings(_Strict):
    policy: str = Field("plan", description=f"routing policy: {', '.join(POLICIES)}")
    max_attempts: int = Field(3, ge=1, le=10,
                              description="tries per request over different backends")
    connect_timeout_s: float = Field(2.0, gt=0)
    first_byte_timeout_s: float = Field(120.0, gt=0,
                                        description="upstream silence allowed between bytes")
    request_timeout_s: float = Field(600.0, gt=0, description="whole request, all attempts")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(20000, ge=1, description="whole gateway; beyond it: HTTP 429")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")
    default_max_in_flight: int = Field(256, ge=1,
                                       description="per backend when its pool gives none")
    health: HealthSettings = HealthSettings()
    breaker: BreakerSettings = BreakerSettings()
    outlier: OutlierSettings = OutlierSettings()
    resume_streams: bool = Field(True, description="continue a stream on another backend "
                                                   "when its backend fails mid-way")
    max_resumes: int = Field(3, ge=0, le=10, description="resumptions per stream")
    drain_accept_s: float = Field(5.0, ge=0, description="after SIGTERM, keep accepting new "
                                                         "requests this long")
    drain_timeout_s: float = Field(30.0, gt=0, description="after SIGTERM, wait this long for "
                                                           "requests in flight")
    per_key: Limits = Field(Limits(), description="limits of each API key")
    prefix_cache_tokens: int = Field(
        2_097_152, ge=512, description="prefix-affinity policy: prompt tokens of prefix cache "
        "the gateway assumes per backend (an LRU of what it sent there)")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICIES:
            raise ValueError(f"unknown routing policy '{v}'; allowed: {', '.join(POLICIES)}")
        return v


class BackendSpec(_Strict):
    url: str
    max_in_flight: int | None = Field(None, ge=1, description="requests at once; default: pool's")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got '{v}'")
        return v.rstrip("/")


class PoolBackends(_Strict):
    model: str | None = Field(None, description="model name the backends serve; "
                                                "default: the plan's model id")
    max_in_flight: int | None = Field(None, ge=1, description="per backend")
    api_key_env: str | None = Field(None, description="environment variable holding the "
                                                      "key sent to these backends")
    health_path: str | None = Field(None, description="override gateway.health.path")
    backends: list[BackendSpec] = Field(min_length=1)

    @field_validator("backends", mode="before")
    @classmethod
    def _strings_are_urls(cls, v: object) -> object:
        if isinstance(v, list):
            return [{"url": b} if isinstance(b, str) else b for b in v]
        return v


class BackendsFile(_Strict):
    gateway: GatewaySettings = GatewaySettings()
    tiers: dict[str, TierSettings] = Field(default_factory=dict,
                                           description="per tier: limits, resume_streams")
    pools: dict[str, PoolBackends] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_urls(self) -> BackendsFile:
        seen: dict[str, str] = {}
        for pool, spec in self.pools.items():
            for b in spec.backends:
                if b.url in seen:
                    raise ValueError(f"backend {b.url} is listed under both '{seen[b.url]}' "
                                     f"and '{pool}'; a backend serves one pool")
                seen[b.url] = pool
        return self


def load_backends(path: str | Path) -> BackendsFile:
    """Read ``backends.yaml``; errors name the file, line and field."""
    p = Path(path)
    data, node = read_yaml(p)
    if not isinstance(data, dict):
        raise TokenfleetError(f"{p}: a backends file is a mapping with 'pools:' "
                              f"(and optionally 'gateway:')")
    return validate(BackendsFile, data, str(p), node)


def check_against_plan(backends: BackendsFile, plan: Plan, source: str = "backends.yaml"
                       ) -> list[str]:
    """Raise when the backends file names pools the plan lacks, or leaves a tier with
    no backend at all; return warnings (plan pools without backends, missing keys)."""
    known = {u.pool: u for u in plan.units}
    tiers = {t.name for t in plan.tiers}
    bad_tiers = [t for t in backends.tiers if t not in tiers]
    if bad_tiers:
        raise TokenfleetError(
            f"{source}: tier(s) {', '.join(repr(t) for t in bad_tiers)} under 'tiers:' are not "
            f"in the plan; plan tiers: {', '.join(sorted(tiers))}")
    unknown = [p for p in backends.pools if p not in known]
    if unknown:
        raise TokenfleetError(
            f"{source}: pool(s) {', '.join(repr(p) for p in unknown)} are not in the plan; "
            f"plan pools: {', '.join(known) or 'none'}")
    # A pair's prefill pool serves no request alone: a tier needs a routable pool.
    missing_tiers = [t.name for t in plan.tiers
                     if not any(u.pool in backends.pools and u.role != "prefill"
                                for u in plan.pools_for(t.name))]
    if missing_tiers:
        raise TokenfleetError(
            f"{source}: tier(s) {', '.join(missing_tiers)} have no backend; add at least one "
            f"pool of each tier under 'pools:'")
    warnings = [f"plan pool '{u.pool}' has no backends: its share of traffic goes to the "
                f"tier's other pools" for u in plan.units
                if u.pool not in backends.pools and u.role != "prefill"]
    decode_of = {u.pair: u.pool for u in plan.units if u.role == "decode" and u.pair}
    warnings += [f"prefill pool '{u.pool}' has no backends: its pair's decode pool "
                 f"'{decode_of.get(u.pair or '', '?')}' prefills the prompts itself"
                 for u in plan.units if u.role == "prefill" and u.pool not in backends.pools]
    for pool, spec in backends.pools.items():
        if spec.api_key_env and spec.api_key_env not in os.environ:
            warnings.append(f"pool '{pool}': environment variable {spec.api_key_env} is not "
                            f"set; requests go without a key")
    return warnings
