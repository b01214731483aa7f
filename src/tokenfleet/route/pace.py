"""Emulated serving engine: continuous batching paced by the performance model.

Each replica runs an engine loop like vLLM's scheduler: every iteration admits
waiting requests up to the batch limit (their whole prompts ride in that step, as
with chunked prefill), runs one step, and gives every running sequence one token.
The step's duration comes from :meth:`tokenfleet.perf.unit.UnitModel.step_s` — the
same cost the simulator charges — so a live run and a simulated run of the same plan
are comparable. Alternatively :class:`FixedPacing` gives a fixed TTFT and TPOT, for
benchmarks that need a backend of known, tiny latency.

A unit that decodes speculatively (``TechniqueUnit`` with a speculation, a plan unit's
``speculative``) steps as ``TechniqueUnit`` prices it — the target's step with ``k``
verify positions per decoding sequence plus the drafter's — and gives every running
sequence ``E`` tokens per step on average (the expected tokens per step, kept as a
per-sequence fraction: deterministic, no random acceptance), as the simulator does.

Units: seconds, tokens. Times are on the event loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.techniques import TechniqueUnit
from tokenfleet.perf.unit import UnitModel


class Overloaded(Exception):
    """The engine's waiting queue is full."""


class Pacing(Protocol):
    """Duration of one engine iteration of a replica."""

    def iteration_s(self, decode: int, context: float, prefill_tokens: int,
                    prompt_len: float) -> float:
        """Seconds for one iteration that advances ``decode`` running sequences (mean
        context ``context`` tokens) and prefills ``prefill_tokens`` prompt tokens of
        prompts ``prompt_len`` tokens long."""


class ModelPacing:
    """Iteration time from the roofline model of one serving unit.

    With pipeline parallelism an iteration is ``pp`` stage steps, each carrying
    ``1/pp`` of the batch (micro-batches), as in :meth:`UnitModel.continuous`.
    """

    def __init__(self, unit: UnitModel) -> None:
        self.unit = unit
        self.pp = unit.layout.pp
        spec = unit.tech.speculation if isinstance(unit, TechniqueUnit) else None
        self.verify = spec.k if spec is not None else 0
        # output tokens a running sequence gains per step (speculative decoding: E)
        self.tokens_per_step = spec.tokens_per_step if spec is not None else 1.0

    def iteration_s(self, decode: int, context: float, prefill_tokens: int,
                    prompt_len: float) -> float:
        pp = self.pp
        # Micro-batches of 1/pp of the batch, at least one token when anything decodes
        # (as UnitModel.continuous and the simulator's step cost do).
        dec = np.asarray([max(decode / pp, 1.0) if decode else 0.0])
        ctx = max(context, 1.0)
        plen = max(int(round(prompt_len)), 1)
        if not self.verify:
            t = self.unit.step_s(dec, ctx, prefill_tokens / pp, plen)
            return float(t[0]) * pp
        # Speculative: the verify positions ride as prompt tokens at the sequences'
        # context, then the drafter's steps (UnitModel.steady_state's pricing).
        v = dec * self.verify
        mixed = self.unit._mixed_len(prefill_tokens / pp, v, plen, ctx)
        step_s = float(self.unit.step_s(dec, ctx, prefill_tokens / pp + v, mixed)[0]) * pp
        if not decode:  # nothing to propose: the drafter only takes the prompts in
            return step_s + self.unit.drafter_prefill_s(float(prefill_tokens), plen)
        draft = self.unit.drafter_s(np.asarray([float(decode)]), dec, ctx,
                                    np.asarray([float(prefill_tokens)]), plen)
        return step_s + float(draft[0])


@dataclass(frozen=True)
class FixedPacing:
    """Known latency: the first token ``ttft_s`` after arrival, then one every
    ``tpot_s``, whatever else is running. For measuring what sits in front of the
    engine (the gateway benchmark); used by :class:`FixedLatencyEngine`."""

    ttft_s: float
    tpot_s: float

    def __post_init__(self) -> None:
        if not (self.ttft_s >= 0 and self.tpot_s >= 0):
            raise TokenfleetError("fixed pacing: ttft_s and tpot_s must be >= 0 seconds")


class Sequence:
    """One request inside the engine; ``generated`` grows as steps complete."""

    __slots__ = ("prompt_tokens", "max_tokens", "generated", "finished", "cancelled",
                 "replica", "t_submit", "t_first", "remote_kv", "credit")

    def __init__(self, prompt_tokens: int, max_tokens: int, t_submit: float,
                 remote_kv: bool = False) -> None:
        self.prompt_tokens = prompt_tokens
        # The prompt's KV cache came from a prefill pool (disaggregated serving): the
        # sequence joins the batch as a decoding one, with no prompt to compute.
        self.remote_kv = remote_kv
        self.max_tokens = max_tokens
        self.generated = 0
        self.finished = False
        self.cancelled = False
        self.replica: _Replica | None = None
        self.t_submit = t_submit
        self.t_first: float | None = None
        self.credit = 0.0  # fraction of a token gained (speculative steps give E each)


class _Replica:
    """One engine loop: a running batch and a FIFO of waiting sequences."""

    def __init__(self, index: int, max_batch: int) -> None:
        self.index = index
        self.max_batch = max_batch
        self.running: list[Sequence] = []
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.wake = asyncio.Event()
        # Replaced after every step; waiters hold the old one, which is then set.
        self.tick = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.steps = 0

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)


class Engine:
    """``replicas`` independent engine loops behind one endpoint.

    ``max_batch``: sequences one replica runs at once (the concurrency limit);
    ``max_queue``: sequences waiting over all replicas before :class:`Overloaded`.
    ``slowdown`` (>= 1 slows) scales every step: an injectable fault.
    """

    def __init__(self, pacing: Pacing, replicas: int = 1, max_batch: int = 256,
                 max_queue: int = 1024) -> None:
        if replicas < 1 or max_batch < 1 or max_queue < 0:
            raise TokenfleetError("engine: replicas and max_batch must be >= 1, "
                                  "max_queue >= 0")
        self.pacing = pacing
        self.tokens_per_step = float(getattr(pacing, "tokens_per_step", 1.0))
        self.max_queue = max_queue
        self.slowdown = 1.0
        self._replicas = [_Replica(i, max_batch) for i in range(replicas)]
        self._stopped = False
        self.completed = 0
        self.cancelled = 0

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for r in self._replicas:
            if r.task is None:
                r.task = asyncio.create_task(self._run(r))

    async def stop(self) -> None:
        """Stop the loops; every sequence still inside is marked cancelled."""
        self._stopped = True
        for r in self._replicas:
            if r.task is not None:
                r.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await r.task
                r.task = None
            for s in [*r.running, *r.waiting]:
                s.cancelled = True
            r.running.clear()
            r.waiting.clear()
            r.tick.set()

    # ---- requests -------------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        """Sequences one replica runs at once."""
        return self._replicas[0].max_batch

    @property
    def running(self) -> int:
        return sum(len(r.running) for r in self._replicas)

    @property
    def waiting(self) -> int:
        return sum(len(r.waiting) for r in self._replicas)

    def submit(self, prompt_tokens: int, max_tokens: int, remote_kv: bool = False) -> Sequence:
        """Queue a request on the least-loaded replica; raises :class:`Overloaded`.
        ``remote_kv``: its prompt's KV cache is already computed (by a prefill pool)."""
        if self._stopped:
            raise Overloaded("engine stopped")
        if max_tokens < 1:
            raise TokenfleetError("max_tokens must be >= 1")
        r = min(self._replicas, key=lambda x: x.load)
        # Full when every batch slot is taken (or promised to a waiting request) and
        # the queue beyond the slots is full too.
        if self.running + self.waiting >= self.max_batch * len(self._replicas) + self.max_queue:
            raise Overloaded(f"{self.running} running, {self.waiting} waiting")
        s = Sequence(max(prompt_tokens, 1), max_tokens, asyncio.get_running_loop().time(),
                     remote_kv)
        s.replica = r
        r.waiting.append(s)
        r.wake.set()
        return s

    def cancel(self, s: Sequence) -> None:
        """The client left: the sequence stops using batch slots from the next step."""
        if not s.finished and not s.cancelled:
            s.cancelled = True
            self.cancelled += 1
            r = s.replica
            if r is not None:
                with contextlib.suppress(ValueError):
                    r.waiting.remove(s)

    async def progress(self, s: Sequence, seen: int) -> int:
        """Wait until ``s`` has more than ``seen`` tokens (or ended); return its count."""
        r = s.replica
        assert r is not None
        while s.generated <= seen and not s.finished and not s.cancelled:
            await r.tick.wait()
        return s.generated

    # ---- the loop -------------------------------------------------------------------

    async def _run(self, r: _Replica) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            if not r.running and not r.waiting:
                r.wake.clear()
                await r.wake.wait()
                next_t = loop.time()
            new: list[Sequence] = []
            while r.waiting and len(r.running) + len(new) < r.max_batch:
                s = r.waiting.popleft()
                if not s.cancelled:
                    new.append(s)
            # A sequence whose KV came from a prefill pool decodes in its first step
            # (its prompt costs attention context, not compute); the others prefill.
            joined = [s for s in new if s.remote_kv]
            fresh = [s for s in new if not s.remote_kv]
            decode = r.running
            stepping = decode + joined
            prefill = sum(s.prompt_tokens for s in fresh)
            ctx = (sum(s.prompt_tokens + s.generated for s in stepping) / len(stepping)
                   if stepping else 0.0)
            plen = prefill / len(fresh) if fresh else 1.0
            dt = self.pacing.iteration_s(len(stepping), ctx, prefill, plen) * self.slowdown
            # Absolute deadlines keep the pace when the event loop wakes a little late;
            # after a long stall (more than one step behind) do not rush to catch up.
            next_t += dt
            now = loop.time()
            if next_t < now - dt:
                next_t = now
            if next_t > now:
                await asyncio.sleep(next_t - now)
            else:
                await asyncio.sleep(0)
            r.steps += 1
            t = loop.time()
            still: list[Sequence] = []
            gain = self.tokens_per_step
            for s in decode:
                if s.cancelled:
                    continue
                if gain == 1.0:
                    s.generated += 1
                else:  # speculative: E tokens per step on average, whole ones streamed
                    s.credit += gain
                    whole = math.floor(s.credit)
                    s.credit -= whole
                    s.generated = min(s.generated + whole, s.max_tokens)
                if s.generated >= s.max_tokens:
                    s.finished = True
                    self.completed += 1
                else:
                    still.append(s)
            for s in new:
                if s.cancelled:
                    continue
                s.generated = 1
                s.t_first = t
                if s.max_tokens <= 1:
                    s.finished = True
                    self.completed += 1
                else:
                    still.append(s)
            r.running = still
            tick, r.tick = r.tick, asyncio.Event()
            tick.set()


def default_max_batch(unit: UnitModel, input_len: int = 1024, output_len: int = 256) -> int:
    """Sequences one replica can hold in KV memory at these lengths (the engine's
    concurrency limit), at least 1."""
    fit = unit.memory(input_len, output_len)
    if not fit.fits:
        raise TokenfleetError(f"the model does not fit: {fit.reason}")
    return max(1, math.floor(fit.max_concurrency / max(unit.layout.dp, 1)))


class FixedLatencyEngine:
    """Same interface as :class:`Engine`, no batching: each sequence follows its own
    clock (token k at ``t_submit + ttft_s + (k - 1) * tpot_s``), so latency does not
    depend on when a request arrives relative to other requests. ``max_in_flight``
    sequences at most, then :class:`Overloaded`. Times are ``time.perf_counter``
    (uvloop's ``loop.time()`` only has 1 ms resolution)."""

    def __init__(self, pacing: FixedPacing, max_in_flight: int = 100_000) -> None:
        self.pacing = pacing
        self.max_in_flight = max_in_flight
        self.slowdown = 1.0
        self.completed = 0
        self.cancelled = 0
        self._in_flight = 0
        self._stopped = False
        self._live: set[Sequence] = set()

    def start(self) -> None:
        self._stopped = False

    async def stop(self) -> None:
        self._stopped = True
        for s in self._live:
            s.cancelled = True
        self._live.clear()

    @property
    def running(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return 0

    def submit(self, prompt_tokens: int, max_tokens: int, remote_kv: bool = False) -> Sequence:
        """``remote_kv`` is accepted for the interface and ignored: fixed pacing has no
        prompt compute to skip."""
        if self._stopped:
            raise Overloaded("engine stopped")
        if max_tokens < 1:
            raise TokenfleetError("max_tokens must be >= 1")
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(f"{self._in_flight} requests in flight")
        s = Sequence(max(prompt_tokens, 1), max_tokens, time.perf_counter(), remote_kv)
        self._in_flight += 1
        self._live.add(s)
        return s

    def _end(self, s: Sequence) -> None:
        if s in self._live:
            self._live.discard(s)
            self._in_flight -= 1

    def cancel(self, s: Sequence) -> None:
        if not s.finished and not s.cancelled:
            s.cancelled = True
            self.cancelled += 1
        self._end(s)

    async def progress(self, s: Sequence, seen: int) -> int:
        if s.finished or s.cancelled:
            return s.generated
        p = self.pacing
        due = s.t_submit + (p.ttft_s + seen * p.tpot_s) * self.slowdown
        delay = due - time.perf_counter()
        await asyncio.sleep(max(delay, 0.0))
        if s.cancelled:
            return s.generated
        # Tokens whose time has come (more than one when the caller fell behind).
        now = time.perf_counter()
        elapsed = now - s.t_submit - p.ttft_s * self.slowdown
        tpot = p.tpot_s * self.slowdown
        n = 1 + (int(elapsed / tpot) if tpot > 0 else s.max_tokens)
        s.generated = min(max(n, seen + 1), s.max_tokens)
        if s.t_first is None:
            s.t_first = now
        if s.generated >= s.max_tokens:
            s.finished = True
            self.completed += 1
            self._end(s)
        return s.generated
