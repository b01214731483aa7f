"""`tokenfleet estimate` / `compare` flags for serving techniques, and their bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tokenfleet.cli import app
from tokenfleet.errors import TokenfleetError

RUN = CliRunner()
BASE = ["estimate", "-m", "llama-3.1-70b", "-a", "h100-sxm", "--count", "4", "--precision",
        "fp8", "--input-len", "4000", "--output-len", "300", "--json"]


def _est(*extra: str) -> dict:
    r = RUN.invoke(app, BASE + list(extra))
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_help_names_the_techniques() -> None:
    out = RUN.invoke(app, ["estimate", "--help"]).output
    for flag in ("--prefix-hit-rate", "--speculative", "--role", "--kv-link-gbps", "--tp"):
        assert flag in out
    assert "mtp" in out and "draft" in out


def test_flags_reach_the_estimate() -> None:
    plain = _est()
    assert plain["role"] == "both" and plain["speculative"] is None
    cached = _est("--prefix-hit-rate", "0.4")
    assert cached["prefix_hit_rate"] == 0.4
    assert cached["output_tokens_per_s"] > plain["output_tokens_per_s"]
    spec = _est("--concurrency", "2", "--tp", "4", "--speculative",
                "draft:llama-3.2-1b:3:0.7")
    assert spec["layout"] == {"tp": 4, "pp": 1, "ep": 1, "dp": 1}
    assert spec["speculative"] == "draft:llama-3.2-1b:3:0.7"
    assert abs(spec["tokens_per_step"] - (1 + 0.7 + 0.49 + 0.343)) < 1e-9
    pre = _est("--role", "prefill", "--kv-link-gbps", "25")
    assert pre["tpot_s"] is None and pre["kv_transfer_s"] > 0 and pre["prompt_tokens_per_s"] > 0
    dec = _est("--role", "decode")
    assert dec["role"] == "decode" and dec["tpot_s"] > 0


def test_table_shows_the_techniques() -> None:
    r = RUN.invoke(app, BASE[:-1] + ["--speculative", "draft:llama-3.2-1b"])
    assert r.exit_code == 0 and "techniques" in r.output and "tokens/step" in r.output


def test_bad_input_is_one_clear_line() -> None:
    for extra, needle in ((["--tp", "x"], "--tp"),
                          (["--speculative", "eagle:3"], "speculative"),
                          (["--speculative", "draft:no-such-model"], "no-such-model"),
                          (["--prefix-hit-rate", "1.0"], "prefix_hit_rate"),
                          (["--role", "verify"], "role")):
        r = RUN.invoke(app, BASE + extra)
        assert r.exit_code != 0
        # the app's entry point prints a TokenfleetError as one line (no traceback)
        said = r.output + (str(r.exception) if isinstance(r.exception, TokenfleetError) else "")
        assert needle in said and "Traceback" not in r.output, (extra, said)


def test_compare_takes_a_prefix_hit_rate() -> None:
    args = ["compare", "-m", "llama-3.1-8b", "--input-len", "4000", "--output-len", "200",
            "--accelerators", "h100-sxm,mi300x", "--json"]
    plain = json.loads(RUN.invoke(app, args).output)
    cached = json.loads(RUN.invoke(app, args + ["--prefix-hit-rate", "0.5"]).output)
    assert all(c["prefix_hit_rate"] == 0.5 for c in cached)
    best = {e["accelerator"]: e["usd_per_million_output_tokens"] for e in plain}
    for e in cached:
        assert e["usd_per_million_output_tokens"] <= best[e["accelerator"]] * (1 + 1e-9)
