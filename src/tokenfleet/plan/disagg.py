"""Disaggregated prefill/decode pairs as planner candidates.

A pair is a prefill pool (chip A) plus a decode pool (chip B); A and B may be different
chips, vendors and clouds. Each half is an ordinary :class:`Candidate` with its own
replica count, so every existing constraint (supply, power, contracts, vendor share,
N-1) sees it, and the MILP picks the P:D ratio by sizing the two counts. A link row in
the MILP routes the same requests through both halves (``plan/milp.py``).

How a pair is priced (``perf/techniques.py``, roles ``prefill`` and ``decode``):

* the prefill pool runs prompts only and hands each prompt's KV cache to the decode pool
  over the link between them (``perf/disagg.py``: scale-up when both halves are the same
  chip kind in one cloud/region and fit one scale-up domain, else the scale-out network
  at the slower side's rate). The handover time is in its TTFT and its bandwidth can cap
  its prompt rate;
* the decode pool's iterations carry no prompt chunks, so its TPOT is not stretched by
  long prefills sharing the batch — why disaggregation wins for long prompts and not for
  short ones (where the aggregated unit's TPOT is hardly hit and a second pool, with its
  own rounding and per-step overhead, is pure cost);
* the TTFT SLO is split: the decode pool's join gets two TPOT-bound steps
  (:func:`decode_ttft_s`), the prefill pool (its queueing, compute and the handover) the
  rest; the TPOT SLO is the decode pool's alone. The bucket's long-prompt tail must
  prefill within the prefill share too, as for aggregated units.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenfleet.catalog.schema import Accelerator
from tokenfleet.perf.disagg import pair_link
from tokenfleet.perf.estimate import Estimate, Query
from tokenfleet.plan.scenario import Supply, Tier

# The decode pool's share of a tier's TTFT SLO: joining the running batch and one step,
# which the TPOT bound caps at two of its steps (``DECODE_JOIN_STEPS``); without a TPOT
# bound, ``DECODE_TTFT_SHARE`` of the TTFT SLO. The prefill pool (queue, prompt compute,
# KV handover) gets the rest, and at least half.
DECODE_JOIN_STEPS = 2.0
DECODE_TTFT_SHARE = 0.1


def decode_ttft_s(slo_ttft_s: float, slo_tpot_s: float | None) -> float:
    """The decode pool's TTFT budget within a tier's TTFT SLO (see above)."""
    join = DECODE_JOIN_STEPS * slo_tpot_s if slo_tpot_s else DECODE_TTFT_SHARE * slo_ttft_s
    return min(join, 0.5 * slo_ttft_s)
# Halves kept per tier and role (cheapest for the tier's demand mix): pairs are their
# cross product, so the MILP grows by at most TOP_PER_ROLE**2 pairs per tier.
TOP_PER_ROLE = 3
# The link a prefill half is priced on, per chip one direction (GB/s): the bandwidths
# of the catalog; prefill capacity is re-estimated per distinct link of its pairs.


@dataclass
class Half:
    """One role's pool option before pairing: capacities per bucket at a given link."""

    tier: str
    role: str
    supply_index: int
    supply: Supply
    accelerator: Accelerator
    precision: str
    count: int
    usd_per_chip_hour: float
    price_kind: str
    score_usd_per_s: float  # $/h to serve the tier's demand alone (ranking)
    capacity: dict[str, float] = field(default_factory=dict)
    estimates: dict[str, Estimate] = field(default_factory=dict)
    uncertainty: float = 0.0
    speculative: str | None = None  # a decode half's speculative decoding (Tier.speculative)


def role_query(t: Tier, accel: str, count: int, precision: str, input_len: int,
               output_len: int, role: str, link_gbps: float | None = None,
               ttft_only: bool = False, speculative: str | None = None) -> Query:
    """The estimate query of one half (the SLO split of the module docstring); a decode
    half may decode with ``speculative``."""
    ttft = t.slo.ttft_s
    if ttft is not None:
        join = decode_ttft_s(ttft, t.slo.tpot_s)
        ttft = ttft - join if role == "prefill" else join
    return Query.model_construct(
        model=t.model, accelerator=accel, count=count, precision=precision, engine=t.engine,
        input_len=input_len, output_len=output_len, slo_ttft=ttft,
        slo_tpot=None if (role == "prefill" or ttft_only) else t.slo.tpot_s,
        usd_per_hour=1.0, role=role, kv_link_gbps=link_gbps,  # type: ignore[arg-type]
        speculative=speculative if role == "decode" else None)


def pair_link_gbps(p: Accelerator, p_supply: Supply, p_count: int, d: Accelerator,
                   d_supply: Supply, d_count: int) -> tuple[float, str]:
    """(GB/s per chip one direction, basis) of the KV link between two halves."""
    link = pair_link(p, (p_supply.cloud, p_supply.region), p_count,
                     d, (d_supply.cloud, d_supply.region), d_count)
    return link.gb_per_s_per_chip, link.basis


PairKey = tuple[int, str, int, int, str, int]  # (P supply, P prec, P n, D supply, D prec, D n)


@dataclass
class PairOption:
    """A prefill half and a decode half, the prefill half priced on their link."""

    prefill: Half
    decode: Half
    link_gbps: float
    link_basis: str

    @property
    def key(self) -> PairKey:
        p, d = self.prefill, self.decode
        return (p.supply_index, p.precision, p.count, d.supply_index, d.precision, d.count)


EstimateFn = Callable[[Query], Estimate]


def half_capacity(est: EstimateFn, t: Tier, h: Half, demands: list, link_gbps: float | None,
                  cap_of: Callable[[Estimate], float]) -> tuple[dict[str, float],
                                                                dict[str, Estimate], float]:
    """Derated requests/s per replica and bucket of one half (``cap_of`` applies the
    tier's percentile and the model-error margin), the estimates and the widest band."""
    caps: dict[str, float] = {}
    ests: dict[str, Estimate] = {}
    band = 0.0
    for d in demands:
        q = role_query(t, h.accelerator.id, h.count, h.precision, d.input_len, d.output_len,
                       h.role, link_gbps, speculative=h.speculative)
        e = est(q)
        if not (e.fits and e.requests_per_s):
            continue
        if h.role == "prefill" and d.input_len_tail > d.input_len:
            tail = est(role_query(t, h.accelerator.id, h.count, h.precision, d.input_len_tail,
                                  d.output_len, h.role, link_gbps, ttft_only=True))
            if not tail.fits:
                continue
        caps[d.bucket] = cap_of(e)
        ests[d.bucket] = e
        band = max(band, e.uncertainty.relative if e.uncertainty else 0.0)
    return caps, ests, band


def rank_halves(halves: list[Half], demand: dict[str, float]) -> list[Half]:
    """Per role: the ``TOP_PER_ROLE`` halves that serve most of the tier's buckets at the
    least cost, one per (supply entry, precision) so pairs span the choices."""
    def score(h: Half) -> tuple[int, float]:
        missing = sum(1 for b in demand if b not in h.capacity)
        usd = sum(r / h.capacity[b] for b, r in demand.items() if b in h.capacity)
        return missing, usd * h.usd_per_chip_hour * h.count

    best: dict[tuple[int, str], Half] = {}
    for h in halves:
        k = (h.supply_index, h.precision)
        if h.capacity and (k not in best or score(h) < score(best[k])):
            best[k] = h
    ranked = sorted(best.values(), key=score)
    for h in ranked:
        h.score_usd_per_s = score(h)[1]
    return ranked[:TOP_PER_ROLE]


def demand_by_bucket(demands: list, tier: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for d in demands:
        if d.tier == tier:
            out[d.bucket] += d.rate_per_s
    return dict(out)
