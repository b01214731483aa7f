"""Small sample traces shipped with the package (see ``data/README.md``).

Each is the first 500 requests of a real public trace, except ``burstgpt``,
which is synthetic data in BurstGPT's format. Full traces are read by path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tokenfleet.errors import TokenfleetError

SAMPLES: dict[str, str] = {
    "azure_code": "azure_2023_code_head500.csv.gz",
    "azure_conv": "azure_2023_conv_head500.csv.gz",
    "mooncake_conversation": "mooncake_conversation_head500.jsonl.gz",
    "mooncake_synthetic": "mooncake_synthetic_head500.jsonl.gz",
    "burstgpt": "burstgpt_synthetic.csv.gz",
}


def sample_path(name: str) -> Path:
    """Filesystem path of the bundled sample ``name`` (a key of ``SAMPLES``)."""
    if name not in SAMPLES:
        raise TokenfleetError(f"unknown sample trace '{name}'; known: {', '.join(SAMPLES)}")
    # The package is installed as plain files (not zipped), so this is a real path.
    return Path(str(resources.files("tokenfleet.workload") / "data" / SAMPLES[name]))
