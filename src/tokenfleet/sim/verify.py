"""Simulation in the loop: replay a plan's traffic through the simulator, re-size the
pools that miss their SLO percentile, re-solve, and record what the simulator measured.

The planner's capacities come from a model (the performance model at the SLO, the
Poisson tail of :mod:`tokenfleet.plan.tail`); real traffic has bursts, a bucket mix
that drifts away from its peak-minute shares, and routing that sees pool states a
window late. So the plan is checked the way ``tokenfleet simulate`` checks it:

1. replay the first ``window_s`` seconds of every tier's scenario traffic with every
   group up; a tier passes when the share of its *arrived* requests within each SLO
   (rejected ones are misses, :func:`tokenfleet.perf.metrics.attainment`) is at least
   the SLO's percentile;
2. with N-1 on, replay ``outage_window_s`` seconds with each group (vendor, region or
   cloud) down, shedding like the gateway (``--admission ttft``); a tier passes when
   at least ``min_fraction`` of its arrived requests finish within both SLOs (once
   every tier holds in step 1: until then the re-solve moves other tiers' pools too);
3. every pool of a missing tier whose own percentile misses (all of the tier's
   surviving pools when none does alone) has its modelled capacity scaled down, and
   the MILP re-solves under every constraint; repeat until all pass, or the rounds
   run out, or a constraint (supply, power, ...) makes the re-sized plan infeasible,
   which the notes name.

Each replay is the whole fleet as ``tokenfleet simulate`` runs it, so the commands in
``Verification.reproduce`` give the recorded figures; the replays use every core (up
to two by default): the all-up replay's independent parts (tiers, prefill/decode pairs)
and the outage replays run in worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.metrics import attainment
from tokenfleet.plan.schema import (
    NMinusOneLimit,
    Outage,
    Plan,
    TierCheck,
    TierSummary,
    Verification,
)
from tokenfleet.sim.disagg import run_plan
from tokenfleet.sim.engine import RunRecord, SimOptions, auto_sample_s
from tokenfleet.sim.metrics import count_within
from tokenfleet.sim.results import SimSummary, summarize
from tokenfleet.sim.shocks import Failure, parse_failure
from tokenfleet.sim.traffic import Workload, scenario_traffic

SHRINK_MIN = 0.5  # at most halve a pool's modelled capacity per round
SHRINK_MAX = 0.85  # and take at least 15 % off what missed


@dataclass
class VerifyOptions:
    window_s: float = 900.0
    outage_window_s: float = 120.0
    max_rounds: int = 6
    seed: int = 0
    n_minus_1: bool = True
    # stop re-sizing after this long (the plan says so); generous, as a shared machine
    # can take several times the CPU time (the example: ~25 s of CPU a round)
    deadline_s: float = 600.0
    workers: int | None = None  # processes for replays (default: up to 2 cores)
    # the scenario's --set edits: the replay is of the traffic the plan was sized for
    # (a `--set tiers.X.traffic.scale=...` plan replayed at the file's scale checks
    # nothing)
    overrides: tuple[str, ...] = ()


@dataclass
class _Replay:
    """One tier's replay: its pools (what a re-solve may change) and its check."""

    pools: dict[str, int]
    check: TierCheck
    pool_pct: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def _key(pct: float) -> str:
    return "p50" if pct <= 50 else "p90" if pct <= 90 else "p99"


def _window(plan: Plan, scenario: str, window_s: float, seed: int,
            overrides: tuple[str, ...] = ()) -> Workload:
    w = scenario_traffic(plan, scenario, window_s, seed, list(overrides))
    cut = w.subset(w.arrival_s < window_s, f"{w.source} [0, {window_s:g} s)")
    if len(cut) == 0:
        raise TokenfleetError(f"{scenario}: no requests in the first {window_s:g} s")
    return cut


class _Windows:
    """The replayed traffic, read once per window length: it depends on the plan only
    through its tiers and size buckets, which every re-solve of one scenario keeps
    (reading and scaling the traces took ~2.5 s a round on the example)."""

    def __init__(self, scenario: str, opts: VerifyOptions) -> None:
        self.scenario, self.opts = scenario, opts
        self._cache: dict[float, Workload] = {}

    def get(self, plan: Plan, window_s: float) -> Workload:
        if window_s not in self._cache:
            self._cache[window_s] = _window(plan, self.scenario, window_s, self.opts.seed,
                                            self.opts.overrides)
        return self._cache[window_s]


def _run(plan: Plan, w: Workload, failures: list[Failure], admission: str, seed: int,
         workers: int = 1) -> RunRecord:
    """One replay of the whole fleet as ``tokenfleet simulate`` runs it (default engine
    and routing window), so its figures reproduce; ``workers``: processes for its
    independent parts (the same record)."""
    opt = SimOptions(seed=seed, admission=admission,
                     sample_s=auto_sample_s(w.duration_s, SimOptions().sync_s),
                     max_time_s=w.duration_s + 7 * 86400.0)
    return run_plan(plan, w, opt, failures, [], workers=workers)


Job = tuple[list[Failure], str]  # failures, admission


def _job(args: tuple[str, Workload, Job, int]) -> RunRecord:
    plan_json, w, (failures, admission), seed = args
    return _run(Plan.model_validate_json(plan_json), w, failures, admission, seed)


class _Runner:
    """Replays on every core: the all-up replay's independent parts (tiers, pairs) in
    forked processes (:func:`~tokenfleet.sim.disagg.run_plan`), the outage replays
    each in a worker process (forked: the compiled kernels come along)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def run(self, plan: Plan, w: Workload, jobs: list[Job], seed: int) -> list[RunRecord]:
        if self.workers <= 1 or len(jobs) <= 1:
            return [_run(plan, w, f, a, seed, self.workers) for f, a in jobs]
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers,
                                            mp_context=multiprocessing.get_context("fork"))
        text = plan.model_dump_json()
        futures = [self.pool.submit(_job, (text, w, job, seed)) for job in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def tier_check(rec: RunRecord, t: TierSummary, target: float | None = None,
               summary: SimSummary | None = None) -> TierCheck:
    """Attainment of a tier in a run: each SLO at its percentile (``target`` None), or
    both SLOs together against ``target`` (an N-1 promise)."""
    g = rec.tiers
    i = g.row(t.name)
    arrived, done = int(g.arrived[i]), int(g.completed[i])
    ttft_in = (float(done) if t.slo_ttft_s is None
               else count_within(g.hist["ttft"][i], t.slo_ttft_s))
    one_token = done - int(g.counts["tpot"][i])  # no TPOT: cannot miss a TPOT SLO
    tpot_in = (float(done) if t.slo_tpot_s is None
               else one_token + count_within(g.hist["tpot"][i], t.slo_tpot_s))
    s = (summary or summarize(rec)).tiers[t.name]
    a_ttft = attainment(int(round(ttft_in)), arrived)
    a_tpot = attainment(int(round(tpot_in)), arrived)
    both = attainment(int(g.slo_met[i]), arrived)
    if target is None:
        met = ((a_ttft or 0.0) >= t.slo_ttft_percentile / 100 - 1e-9
               and (a_tpot or 0.0) >= t.slo_tpot_percentile / 100 - 1e-9)
        goal = min(t.slo_ttft_percentile, t.slo_tpot_percentile) / 100
    else:
        met, goal = (both or 0.0) >= target - 1e-9, target
    return TierCheck(
        tier=t.name, requests=arrived,
        ttft_s=getattr(s.ttft_s, _key(t.slo_ttft_percentile)),
        tpot_s=getattr(s.tpot_s, _key(t.slo_tpot_percentile)),
        ttft_attainment=a_ttft, tpot_attainment=a_tpot, attainment=both, target=goal,
        met=met)


def _pool_percentiles(s: SimSummary, t: TierSummary
                      ) -> dict[str, tuple[float | None, float | None]]:
    return {pid: (getattr(p.ttft_s, _key(t.slo_ttft_percentile)),
                  getattr(p.tpot_s, _key(t.slo_tpot_percentile)))
            for pid, p in s.pools.items() if p.tier == t.name}


def _shrink(observed: float | None, bound: float | None) -> float | None:
    """Capacity factor for a percentile ``observed`` that broke ``bound`` (None if it
    held): proportional to the miss (latency grows faster than load near saturation,
    so this errs on the safe side), within [SHRINK_MIN, SHRINK_MAX]."""
    if observed is None or bound is None or observed <= bound:
        return None
    return min(max(bound / observed, SHRINK_MIN), SHRINK_MAX)


def _resize(plan: Plan, t: TierSummary, rep: _Replay, scale: dict[str, float],
            survivors: set[str] | None = None) -> list[str]:
    """Scale down the modelled capacity of a tier that missed: every candidate of the
    tier by how far its worst percentile missed (the cause, bursts and mix drift, is
    the tier's traffic, so a pool the next solve picks instead shares it), and each
    pool whose own percentile missed by its own miss on top. With ``survivors`` (an
    outage), only those pools. Returns what was scaled."""
    chk = rep.check
    tier_f = min((x for x in (_shrink(chk.ttft_s, t.slo_ttft_s),
                              _shrink(chk.tpot_s, t.slo_tpot_s)) if x is not None),
                 default=SHRINK_MAX)
    hit = []
    if survivors is None:
        key = f"tier:{t.name}"
        scale[key] = scale.get(key, 1.0) * tier_f
        hit.append(key)
    for pid, (ttft, tpot) in rep.pool_pct.items():
        if survivors is not None and pid not in survivors:
            continue
        f = min(x for x in (_shrink(ttft, t.slo_ttft_s), _shrink(tpot, t.slo_tpot_s), 1.0)
                if x is not None)
        # all up, the tier factor already took the tier's miss off
        f = min(f / tier_f, 1.0) if survivors is None else min(f, SHRINK_MAX)
        if f < 1.0:
            scale[pid] = scale.get(pid, 1.0) * f
            hit.append(pid)
    return hit


def _replay_all_up(plan: Plan, w: Workload, seed: int, runner: _Runner
                   ) -> tuple[dict[str, _Replay], RunRecord]:
    rec = runner.run(plan, w, [([], "none")], seed)[0]
    summ = summarize(rec)
    out = {}
    for t in plan.tiers:
        if int(rec.tiers.arrived[rec.tiers.row(t.name)]):
            out[t.name] = _Replay({u.pool: u.replicas for u in plan.pools_for(t.name)},
                                  tier_check(rec, t, None, summ), _pool_percentiles(summ, t))
    return out, rec


def verify(plan: Plan, solve: Callable[[dict[str, float]], Plan], scenario: str,
           opts: VerifyOptions | None = None,
           progress: Callable[[str, int, int], None] | None = None) -> Plan:
    """Verify ``plan`` by simulation, re-solving with ``solve(scale)`` (candidate pool
    id -> capacity factor) until it holds; returns the final plan with its
    ``verification`` filled in."""
    opts = opts or VerifyOptions()
    t0 = time.perf_counter()
    n1 = plan.limits.n_minus_1 if opts.n_minus_1 else None
    runner = _Runner(opts.workers or min(os.cpu_count() or 1, 2))
    try:
        return _loop(plan, solve, scenario, opts, progress, runner, n1, t0)
    finally:
        runner.close()


def _loop(plan: Plan, solve: Callable[[dict[str, float]], Plan], scenario: str,
          opts: VerifyOptions, progress: Callable[[str, int, int], None] | None,
          runner: _Runner, n1: NMinusOneLimit | None, t0: float) -> Plan:
    scale: dict[str, float] = {}
    outages: list[Outage] = []
    notes: list[str] = []
    windows = _Windows(scenario, opts)
    rounds = 0
    met = False
    while True:
        rounds += 1
        if progress:
            progress("verifying by simulation", rounds, opts.max_rounds)
        w = windows.get(plan, opts.window_s)
        replays, up = _replay_all_up(plan, w, opts.seed, runner)
        missing = [t for t in plan.tiers if t.name in replays and not replays[t.name].check.met]
        outages = []
        missing_n1: list[tuple[TierSummary, set[str], _Replay]] = []
        if n1 and not missing:
            # (while some tier misses with every group up, the re-solve moves pools of
            # other tiers too, so outages are replayed once all hold)
            outages, missing_n1 = _outages(plan, windows.get(plan, opts.outage_window_s),
                                           opts.seed, n1, runner)
        if not missing and not missing_n1:
            met = True
            break
        if rounds >= opts.max_rounds or time.perf_counter() - t0 > opts.deadline_s:
            notes.append(_why_not(missing, missing_n1, rounds, time.perf_counter() - t0))
            break
        resized: list[str] = []
        trial = dict(scale)  # the recorded scale stays the one the returned plan used
        for t in missing:
            resized += _resize(plan, t, replays[t.name], trial)
        for t, down, rep in missing_n1:
            survivors = {u.pool for u in plan.pools_for(t.name)} - down
            resized += _resize(plan, t, rep, trial, survivors)
        try:
            plan, scale = solve(trial), trial
        except TokenfleetError as e:
            notes.append(f"re-sizing {', '.join(sorted(set(resized)))} to meet the SLOs "
                         f"the simulator measured makes the plan impossible: {e}")
            break
    return _record(plan, replays, up, outages, scale, opts, rounds,
                   time.perf_counter() - t0, met, notes, scenario)


def _why_not(missing: list[TierSummary], missing_n1: list, rounds: int,
             spent_s: float) -> str:
    bits = [f"tier {t.name} misses its SLO percentiles" for t in missing]
    bits += [f"tier {t.name} misses the N-1 promise without {', '.join(sorted(d))}"
             for t, d, _ in missing_n1]
    return (f"not verified after {rounds} rounds ({spent_s:.0f} s): " + "; ".join(bits)
            + "; raise max rounds, or relax the SLO, N-1 or supply that binds")


def _outages(plan: Plan, w: Workload, seed: int, n1: NMinusOneLimit, runner: _Runner
             ) -> tuple[list[Outage], list[tuple[TierSummary, set[str], _Replay]]]:
    """Replays with each group down (shedding as the gateway does), as ``simulate
    --fail-each`` runs them; which tiers break the N-1 promise, with the pools that
    were down."""
    by = n1.by
    groups = sorted({str(getattr(u, by)) for u in plan.units if u.replicas})
    recs = runner.run(plan, w, [([parse_failure(f"{by}={v}")], "ttft") for v in groups], seed)
    out, short = [], []
    for v, rec in zip(groups, recs, strict=True):
        down = {u.pool for u in plan.units if str(getattr(u, by)) == v}
        checks = []
        summ = summarize(rec)
        for t in plan.tiers:
            if not int(rec.tiers.arrived[rec.tiers.row(t.name)]):
                continue
            chk = tier_check(rec, t, n1.min_fraction, summ)
            checks.append(chk)
            if not chk.met:
                short.append((t, down, _Replay({}, chk, _pool_percentiles(summ, t))))
        out.append(Outage(down=f"{by}={v}", tiers=checks, usd=_bill(rec, plan)))
    return out, short


def _bill(rec: RunRecord, plan: Plan) -> float:
    """The simulated bill of the window (the plan's formula; failed pools billed)."""
    return summarize(rec, plan.limits, {u.pool for u in plan.units if u.prepaid}).cost_usd


def _record(plan: Plan, replays: dict[str, _Replay], up: RunRecord, outages: list[Outage],
            scale: dict[str, float], opts: VerifyOptions, rounds: int, seconds: float,
            met: bool, notes: list[str], scenario: str) -> Plan:
    usd = _bill(up, plan)
    by = plan.limits.n_minus_1.by if plan.limits.n_minus_1 else "vendor"
    if opts.overrides:
        notes = [*notes, "replayed the scenario with " + " ".join(
            f"--set {o}" for o in opts.overrides) + " (simulate --scenario below replays "
            "the file as written)"]
    reproduce = [f"tokenfleet simulate plan.json --scenario {scenario} --duration "
                 f"{opts.window_s:g} --seed {opts.seed} --json"]
    if outages:
        reproduce.append(f"tokenfleet simulate plan.json --scenario {scenario} --duration "
                         f"{opts.outage_window_s:g} --seed {opts.seed} --fail-each {by} "
                         "--admission ttft")
    plan.verification = Verification(
        window_s=opts.window_s, outage_window_s=opts.outage_window_s if outages else None,
        seed=opts.seed, rounds=rounds, seconds=round(seconds, 2),
        resized={k: round(v, 4) for k, v in sorted(scale.items())},
        tiers=[replays[t.name].check for t in plan.tiers if t.name in replays],
        outages=outages, usd=usd, met=met, reproduce=reproduce, notes=notes)
    return plan
