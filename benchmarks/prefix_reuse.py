"""Prefix-cache reuse of a trace with block hashes (Mooncake): the exact LRU count.

    PYTHONPATH=src python benchmarks/prefix_reuse.py [TRACE ...]

Prints, per trace: requests, prompt blocks, the fraction of block references that
repeat an earlier block, the hit rate (prompt tokens served from cache) of an
unbounded cache, the hit-rate-vs-size curve of an LRU block cache, and how long the
one-pass count took (after Numba compiled it once).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tokenfleet.workload.prefix import prefix_reuse
from tokenfleet.workload.readers import read_trace

DEFAULT = [Path("/work/shared/data/traces/mooncake_fast25_conversation_trace.jsonl.xz"),
           Path("/work/shared/data/traces/mooncake_fast25_synthetic_trace.jsonl.xz")]
SIZES_BLOCKS = (1_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def main(paths: list[Path]) -> None:
    for p in paths:
        tr = read_trace(p)
        prefix_reuse(tr.slice(0.0, 1.0) if len(tr) > 1 else tr)  # compile outside the timing
        t0 = time.perf_counter()
        r = prefix_reuse(tr)
        dt = time.perf_counter() - t0
        print(f"{p.name}: {len(tr):,} requests, {int(r.offsets[-1]):,} prompt blocks "
              f"({r.block_tokens} tokens), {r.distinct_blocks:,} distinct; count {dt:.3f} s")
        print(f"  repeated blocks {r.repeated_block_fraction():.1%}; "
              f"unbounded-cache hit rate {r.unbounded_hit_rate():.1%} of prompt tokens")
        curve = r.curve(np.asarray(SIZES_BLOCKS))
        print("  LRU cache: " + ", ".join(
            f"{c:,} blocks ({c * r.block_tokens / 1e6:.1f}M tok) {h:.1%}"
            for c, h in zip(SIZES_BLOCKS, curve, strict=True)))


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or DEFAULT)
