"""Rebuild the bundled sample traces in ``src/tokenfleet/workload/data/``.

Run from the repository root: ``python tests/workload/make_samples.py``.
Real traces: the first 500 requests of each file in ``../shared/data/traces``,
bytes unchanged, gzip-compressed. BurstGPT: synthetic rows in BurstGPT's
format (the real CSVs are not in ../shared), drawn with a fixed seed.
"""

from __future__ import annotations

import gzip
import io
import lzma
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT.parent / "shared" / "data" / "traces"
OUT = ROOT / "src" / "tokenfleet" / "workload" / "data"
ROWS = 500

REAL = {
    "azure_llm_2023_code.csv.gz": "azure_2023_code_head500.csv.gz",
    "azure_llm_2023_conv.csv.gz": "azure_2023_conv_head500.csv.gz",
    "mooncake_fast25_conversation_trace.jsonl.xz": "mooncake_conversation_head500.jsonl.gz",
    "mooncake_fast25_synthetic_trace.jsonl.xz": "mooncake_synthetic_head500.jsonl.gz",
}


def _head(src: Path, header: bool) -> bytes:
    opener = gzip.open if src.suffix == ".gz" else lzma.open
    with opener(src, "rb") as fh:
        lines = [fh.readline() for _ in range(ROWS + int(header))]
    return b"".join(lines)


def _burstgpt() -> bytes:
    rng = np.random.default_rng(20240601)
    n = ROWS
    # Bursty arrivals (gamma gaps, CV ~2) at ~0.3 req/s, whole seconds like BurstGPT.
    gaps = rng.gamma(0.25, 1 / (0.3 * 0.25), size=n)
    ts = np.floor(np.cumsum(gaps)).astype(np.int64)
    model = np.where(rng.random(n) < 0.8, "ChatGPT", "GPT-4")
    req = np.clip(np.rint(np.exp(rng.normal(np.log(600), 1.1, n))), 1, 30000).astype(np.int64)
    resp = np.clip(np.rint(np.exp(rng.normal(np.log(250), 0.9, n))), 1, 4000).astype(np.int64)
    resp[rng.random(n) < 0.05] = 0  # failed requests are logged with 0 response tokens
    log = np.where(rng.random(n) < 0.7, "Conversation log", "API log")
    df = pl.DataFrame(
        {
            "Timestamp": ts,
            "Model": model,
            "Request tokens": req,
            "Response tokens": resp,
            "Total tokens": req + resp,
            "Log Type": log,
        }
    )
    buf = io.BytesIO()
    df.write_csv(buf)
    return buf.getvalue()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for src, dst in REAL.items():
        data = _head(TRACES / src, header=src.endswith(".csv.gz"))
        (OUT / dst).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    (OUT / "burstgpt_synthetic.csv.gz").write_bytes(
        gzip.compress(_burstgpt(), compresslevel=9, mtime=0)
    )


if __name__ == "__main__":
    main()
