"""Load YAML into pydantic models with errors that name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tokenfleet.errors import TokenfleetError

M = TypeVar("M", bound=BaseModel)

# libyaml when PyYAML was built with it: the pure-Python parser alone took ~0.9 s of
# the example plan's 5 s budget (two catalogs and a scenario).
_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LazyNode:
    """The node tree of a YAML text, composed only when an error needs line numbers."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._node: yaml.Node | None = None
        self._done = False

    def get(self) -> yaml.Node | None:
        if not self._done:
            self._node, self._done = yaml.compose(self._text, Loader=_Loader), True
        return self._node


def read_yaml(path: Path) -> tuple[Any, LazyNode | None]:
    """Parse ``path``; return the data and its (lazily built) node tree, for line numbers."""
    from tokenfleet.fileio import read_text

    text = read_text(path, "YAML file")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
        node = LazyNode(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = (getattr(e, "problem", None) or str(e)).strip().splitlines()[0]
        raise TokenfleetError(f"{where}: malformed YAML: {problem}") from None
    return data, node


def line_of(node: yaml.Node | LazyNode | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the value at ``loc`` (a pydantic error location) in a node tree."""
    tree = node.get() if isinstance(node, LazyNode) else node
    return _line_in(tree, loc)


def _line_in(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(key):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x01``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_validation_error(
    err: ValidationError, source: str, node: yaml.Node | LazyNode | None = None,
    prefix: tuple = ()
) -> str:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        # Escaped: a key with a line break in it must not split the message.
        field = _printable(".".join(str(p) for p in loc)) or "(top level)"
        ln = line_of(node, loc)
        where = f"{source}:{ln}" if ln else source
        msg = _printable(e["msg"])
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "literal_error":
            msg = f"{msg}"
        lines.append(f"{where}: field '{field}': {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, source: str, node: yaml.Node | LazyNode | None = None,
             prefix: tuple = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise TokenfleetError(format_validation_error(e, source, node, prefix)) from None
