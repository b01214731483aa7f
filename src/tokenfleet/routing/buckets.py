"""The plan's size buckets, read in one place for the simulator and the gateway.

A plan carries the bucket edges its planner used as numbers (``Plan.buckets``, a
:class:`tokenfleet.workload.SizeBuckets`); a request's bucket is found from its lengths
with those edges (lower edge inclusive). Bucket labels (``in512-2048_out0-128``) are
names only and are never read back into numbers.

A plan given by hand may carry no edges. Then a request goes to the split bucket whose
representative lengths (``input_len``, ``output_len``) are nearest in log space; with
no split at all, the default buckets name the requests (no pool is planned for any of
them, so the tier-wide shares apply).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import BucketSplit, Plan
from tokenfleet.workload.buckets import SizeBuckets


@dataclass(frozen=True)
class PlanBuckets:
    """How requests of a plan fall in its buckets: by ``edges`` when the plan has them,
    else by nearest representative lengths among ``splits``."""

    edges: SizeBuckets | None
    splits: tuple[BucketSplit, ...]
    labels: tuple[str, ...] = field(init=False)  # every label a request can get

    def __post_init__(self) -> None:
        labels = ([b.label for b in self.edges.buckets] if self.edges is not None
                  else [s.bucket for s in self.splits])
        object.__setattr__(self, "labels", tuple(dict.fromkeys(labels)))

    def label_of(self, input_tokens: int, output_tokens: int) -> str:
        """Label of one request's bucket. The edge lookup uses ``bisect`` — NumPy's
        per-call overhead (~20 µs) is too much on the gateway's per-request path."""
        if self.edges is None:
            return str(self.labels_of(np.asarray([input_tokens]), np.asarray([output_tokens])
                                      )[0])
        e = self.edges
        i = bisect.bisect_right(e.input_edges, input_tokens) - 1
        j = bisect.bisect_right(e.output_edges, output_tokens) - 1
        return self.labels[i * e.n_output + j]

    def labels_of(self, input_tokens: npt.ArrayLike, output_tokens: npt.ArrayLike,
                  tier: str | None = None) -> np.ndarray:
        """Labels (object array) of many requests' buckets; without edges, the nearest
        among ``tier``'s splits (all splits when ``tier`` is None)."""
        inp = np.asarray(input_tokens)
        out = np.asarray(output_tokens)
        if self.edges is not None:
            return np.asarray(self.labels, dtype=object)[self.edges.assign_lengths(inp, out)]
        splits = [s for s in self.splits if tier is None or s.tier == tier]
        if not splits:
            raise TokenfleetError(f"the plan splits no traffic of tier '{tier}'")
        return np.asarray([s.bucket for s in splits], dtype=object)[_nearest(splits, inp, out)]


def _nearest(splits: list[BucketSplit], inp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Index into ``splits`` of the bucket whose representative lengths are nearest in
    log space."""
    rep_in = np.log1p([s.input_len for s in splits])
    rep_out = np.log1p([s.output_len for s in splits])
    d = ((np.log1p(inp)[:, None] - rep_in[None, :]) ** 2
         + (np.log1p(out)[:, None] - rep_out[None, :]) ** 2)
    return np.argmin(d, axis=1)


def plan_buckets(plan: Plan) -> PlanBuckets:
    """The plan's buckets; a split naming a bucket its edges do not have is an error."""
    edges = plan.buckets
    if edges is None and not plan.traffic_split:
        edges = SizeBuckets()
    if edges is not None:
        known = {b.label for b in edges.buckets}
        for i, s in enumerate(plan.traffic_split):
            if s.bucket not in known:
                raise TokenfleetError(
                    f"plan traffic_split[{i}].bucket '{s.bucket}' is not one of the plan's "
                    f"buckets ({', '.join(sorted(known))})")
    return PlanBuckets(edges, tuple(plan.traffic_split))
