"""Load the bundled catalogs, merge user overrides, and look things up by name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.errors import TokenfleetError
from tokenfleet.yamlio import read_yaml, validate

_DATA = "tokenfleet.catalog.data"


def _norm(name: str) -> str:
    """Names match ignoring case, spaces, dots-vs-dashes and underscores."""
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


T = TypeVar("T", Accelerator, ModelSpec)


class _Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.items: dict[str, T] = {}
        self._idx: dict[str, str] = {}  # normalized id/alias -> id

    def add(self, item: T) -> None:
        self.items[item.id] = item
        for name in (item.id, *item.aliases):
            self._idx[_norm(name)] = item.id

    def get(self, name: str) -> T:
        idx = self._idx
        key = _norm(name)
        if key in idx:
            return self.items[idx[key]]
        close = difflib.get_close_matches(key, list(idx), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(dict.fromkeys(idx[c] for c in close))}?" if close else ""
        raise TokenfleetError(
            f"unknown {self.kind} '{name}'.{hint} "
            f"Known: {', '.join(sorted(self.items))}. "
            f"(`tokenfleet catalog list {self.kind}s`)"
        )

    def __iter__(self):
        return iter(self.items.values())

    def __len__(self) -> int:
        return len(self.items)


class _CatalogFile(BaseModel):
    schema_version: int = 1
    accelerators: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []


@dataclass
class Catalog:
    """Accelerators and models, looked up by id or alias (case-insensitive)."""

    accelerators: _Registry[Accelerator] = field(default_factory=lambda: _Registry("accelerator"))
    models: _Registry[ModelSpec] = field(default_factory=lambda: _Registry("model"))
    files: list[str] = field(default_factory=list)

    def accelerator(self, name: str) -> Accelerator:
        return self.accelerators.get(name)

    def model(self, name: str) -> ModelSpec:
        """A catalog model, or a Hugging Face ``config.json`` (file or directory) path."""
        # Only strings that look like paths touch the filesystem (this is a hot path).
        looks_like_path = name.endswith(".json") or "/" in name or name.startswith(".")
        path = Path(name)
        if looks_like_path and (name.endswith(".json") or (path / "config.json").exists()):
            from tokenfleet.catalog.hf_config import model_from_hf_config

            return model_from_hf_config(path)
        return self.models.get(name)

    def merge_file(self, path: Path, *, bundled: bool = False) -> None:
        """Add or override records from a catalog YAML file.

        A user record whose id (or alias) names an existing record overrides only the
        fields it gives; a new id must give every required field.
        """
        data, node = read_yaml(path)
        src = str(path)
        if data is None:
            raise TokenfleetError(f"{src}: empty catalog file")
        if not isinstance(data, dict):
            raise TokenfleetError(
                f"{src}: a catalog file is a mapping with 'accelerators:' and/or 'models:' lists"
            )
        parsed = validate(_CatalogFile, data, src, node)
        for kind, registry, schema in (
            ("accelerators", self.accelerators, Accelerator),
            ("models", self.models, ModelSpec),
        ):
            for i, raw in enumerate(getattr(parsed, kind)):
                base: dict[str, Any] = {}
                if not bundled and isinstance(raw.get("id"), str):
                    try:
                        existing = registry.get(raw["id"])
                        base = existing.model_dump()
                        raw = {**raw, "id": existing.id}
                    except TokenfleetError:
                        base = {}
                record: Any = validate(schema, {**base, **raw}, src, node, prefix=(kind, i))
                registry.add(record)  # an Accelerator or a ModelSpec, as the registry holds
        self.files.append(src)


def _bundled_paths() -> Iterable[Path]:
    root = resources.files(_DATA)
    for name in ("accelerators.yaml", "models.yaml"):
        yield Path(str(root.joinpath(name)))


@lru_cache(maxsize=8)
def _load_cached(extra: tuple[str, ...]) -> Catalog:
    cat = Catalog()
    for p in _bundled_paths():
        cat.merge_file(p, bundled=True)
    for extra_path in extra:
        cat.merge_file(Path(extra_path))
    return cat


def load_catalog(extra_files: Iterable[str | Path] = ()) -> Catalog:
    """The bundled catalog, with ``extra_files`` (user YAML) merged on top, in order."""
    return _load_cached(tuple(str(p) for p in extra_files))
