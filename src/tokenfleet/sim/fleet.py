"""The simulated fleet: every pool of a :class:`~tokenfleet.plan.schema.Plan` turned into
engine parameters (step-time coefficients, KV capacity, batch limits, price, power).

A plan replica is ``tp * pp * dp`` chips. With ``dp > 1`` it holds ``dp`` engine
instances that batch independently (``UnitModel.continuous`` divides the concurrency by
``dp`` for the same reason), so the simulator runs ``dp`` *lanes* per plan replica.
Failures and costs are counted in plan replicas; batching happens per lane.

Units: seconds, tokens, USD, watts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.perf.unit import UnitModel
from tokenfleet.plan.prefix import KV_PAGE_TOKENS, lane_kv_tokens
from tokenfleet.plan.schema import Plan, PlanUnit
from tokenfleet.plan.units import plan_unit_model
from tokenfleet.sim.stepcost import PoolSpeculation, StageCoefficients, pool_speculation

# vLLM's and TensorRT-LLM's default KV-cache page size, tokens per block.
BLOCK_TOKENS = KV_PAGE_TOKENS


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler limits of every engine lane (``None`` = the perf model's defaults).

    * ``max_num_seqs`` — sequences one lane runs at once (default: the pool's engine's
      cap in ``perf.engines``, the cap the estimate assumes);
    * ``max_batched_tokens`` — token budget of one iteration: decode tokens plus prefill
      chunk (default: the engine's budget, the one the memory model reserves workspace
      for);
    * ``kv_watermark`` — fraction of KV blocks kept free when admitting new requests
      (vLLM's default 0.01) so running sequences can grow before anyone is preempted.
    """

    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    kv_watermark: float = 0.01

    def __post_init__(self) -> None:
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise TokenfleetError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_batched_tokens is not None and self.max_batched_tokens < 1:
            raise TokenfleetError(
                f"max_batched_tokens must be >= 1, got {self.max_batched_tokens}")
        if not 0.0 <= self.kv_watermark < 0.5:
            raise TokenfleetError(f"kv_watermark must be in [0, 0.5), got {self.kv_watermark}")


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """What a run's results need to know about one pool: its plan unit (where it is, its
    size and price; what shock selectors match on) and what the simulator made of it.
    Small and picklable, so records of pools simulated on different workers merge."""

    unit: PlanUnit
    lanes_per_replica: int
    watts_per_replica: float
    kv_tokens_per_lane: int


@dataclass
class SimPool:
    """One pool as the simulator runs it."""

    index: int
    unit: PlanUnit
    model: UnitModel
    coeffs: StageCoefficients
    lanes_per_replica: int
    kv_tokens: int  # KV capacity of one lane, tokens (whole blocks)
    max_num_seqs: int
    max_batched_tokens: int
    headroom_concurrency: dict[str, float]  # bucket -> planned sequences per plan replica
    usd_per_replica_hour: float
    watts_per_replica: float
    first_lane: int = 0  # index of the pool's first lane in the fleet arrays
    calibration_group: str | None = None
    notes: list[str] = field(default_factory=list)
    # speculative decoding (PlanUnit.speculative): verify positions, tokens per
    # iteration and the drafter's step coefficients; plain by default
    speculation: PoolSpeculation = field(default_factory=PoolSpeculation)

    @property
    def id(self) -> str:
        return self.unit.pool

    @property
    def replicas(self) -> int:
        return self.unit.replicas

    @property
    def lanes(self) -> int:
        return self.unit.replicas * self.lanes_per_replica

    @property
    def lane_slice(self) -> slice:
        return slice(self.first_lane, self.first_lane + self.lanes)

    def info(self) -> PoolInfo:
        return PoolInfo(self.unit, self.lanes_per_replica, self.watts_per_replica,
                        self.kv_tokens)


def _field(plan_name: str, i: int, name: str) -> str:
    return f"{plan_name}: units[{i}].{name}"


def build_pool(unit: PlanUnit, i: int, engine: EngineConfig, catalog: Catalog,
               cal: Calibration, plan_name: str = "plan") -> SimPool:
    """Engine parameters of one plan unit; errors name the unit and field."""
    if unit.replicas < 0:
        raise TokenfleetError(f"{_field(plan_name, i, 'replicas')} = {unit.replicas} < 0")
    where = lambda f: f"{_field(plan_name, i, f)} (pool {unit.pool})"  # noqa: E731
    um, group = plan_unit_model(unit, catalog, cal, where=where)
    if unit.role == "prefill" and unit.speculative:
        # A prefill half does not decode (its decode half speculates): plain, as the
        # performance model prices a prefill role (no drafter time or memory).
        um, group = plan_unit_model(unit.model_copy(update={"speculative": None}), catalog,
                                    cal, where=where)
    accel, prec, layout = um.accel, um.precision, um.layout
    if um.peak_flops <= 0:
        raise TokenfleetError(f"{_field(plan_name, i, 'precision')}: {accel.id} has no "
                              f"{prec.compute.upper()} peak, so pool {unit.pool} cannot run")
    # The memory budget does not depend on the lengths; only whether one sequence fits.
    mem = um.memory(1, 1)
    if not mem.fits:
        raise TokenfleetError(f"pool {unit.pool} ({_field(plan_name, i, 'layout')}): "
                              f"{mem.reason}")
    # KV is tracked in full-attention tokens: for sliding-window layers this overstates
    # what long sequences hold, which errs towards preempting too early, never too late.
    # (The planner sizes prefix caches with the same figure: plan/prefix.py.) A
    # speculative pool's drafter takes its weights and its KV per token off it.
    kv_tokens = lane_kv_tokens(um)
    # The serving engine's own caps (perf.engines), as the estimate assumes them.
    max_seqs = engine.max_num_seqs or um.engine.max_num_seqs
    budget = engine.max_batched_tokens or um.engine.max_num_batched_tokens
    headroom = {c.bucket: c.concurrency / layout.dp for c in unit.capacity}
    replicas = max(unit.replicas, 1)
    return SimPool(
        index=i, unit=unit, model=um, coeffs=StageCoefficients.of(um),
        lanes_per_replica=layout.dp, kv_tokens=kv_tokens, max_num_seqs=max_seqs,
        max_batched_tokens=budget, headroom_concurrency=headroom,
        usd_per_replica_hour=unit.usd_per_hour / replicas,
        watts_per_replica=unit.watts / replicas, calibration_group=group,
        speculation=pool_speculation(um),
    )


@dataclass
class Fleet:
    """All pools of a plan (or of an independent part of it), lanes numbered pool by pool."""

    plan: Plan
    pools: list[SimPool]
    engine: EngineConfig

    @property
    def lanes(self) -> int:
        return sum(p.lanes for p in self.pools)

    def pool(self, pool_id: str) -> SimPool:
        for p in self.pools:
            if p.id == pool_id:
                return p
        raise TokenfleetError(f"unknown pool '{pool_id}'; pools: "
                              + ", ".join(p.id for p in self.pools))


def build_fleet(plan: Plan, engine: EngineConfig | None = None,
                pool_ids: list[str] | None = None, catalog: Catalog | None = None,
                cal: Calibration | None = None, plan_name: str = "plan") -> Fleet:
    """The fleet of ``plan`` (only ``pool_ids`` when given), validated: unknown chips,
    models, precisions, inconsistent layouts and split shares naming unknown pools are
    errors naming the field."""
    engine = engine or EngineConfig()
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    if not plan.units:
        raise TokenfleetError(f"{plan_name}: the plan has no units (pools) to simulate")
    seen: set[str] = set()
    for i, u in enumerate(plan.units):
        if u.pool in seen:
            raise TokenfleetError(f"{_field(plan_name, i, 'pool')}: duplicate pool id "
                                  f"'{u.pool}'")
        seen.add(u.pool)
    tiers = {t.name for t in plan.tiers}
    for i, u in enumerate(plan.units):
        if u.tier not in tiers:
            raise TokenfleetError(f"{_field(plan_name, i, 'tier')} = '{u.tier}' is not one "
                                  f"of the plan's tiers: {', '.join(sorted(tiers))}")
    for j, s in enumerate(plan.traffic_split):
        for pid, share in s.shares.items():
            if pid not in seen:
                raise TokenfleetError(f"{plan_name}: traffic_split[{j}].shares names unknown "
                                      f"pool '{pid}'")
            if not (math.isfinite(share) and share >= 0):
                raise TokenfleetError(f"{plan_name}: traffic_split[{j}].shares['{pid}'] = "
                                      f"{share} must be >= 0")
        if s.tier not in tiers:
            raise TokenfleetError(f"{plan_name}: traffic_split[{j}].tier = '{s.tier}' is not "
                                  "a tier of the plan")
    if pool_ids is not None:
        unknown = set(pool_ids) - seen
        if unknown:
            raise TokenfleetError(f"unknown pool(s) {sorted(unknown)}")
    pools: list[SimPool] = []
    lane = 0
    for i, u in enumerate(plan.units):
        if pool_ids is not None and u.pool not in pool_ids:
            continue
        p = build_pool(u, i, engine, catalog, cal, plan_name)
        p.index = len(pools)
        p.first_lane = lane
        lane += p.lanes
        pools.append(p)
    return Fleet(plan=plan, pools=pools, engine=engine)
