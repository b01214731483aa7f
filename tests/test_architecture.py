"""The layering holds (docs/ARCHITECTURE.md): presentation (``cli/``, ``report/``) sits on
top of a library that never imports it, ``sim`` and ``route`` stand beside each other on
``routing`` and ``plan``, and no two packages import each other round a cycle.

Imports are read from the source with :mod:`ast` (every ``import`` anywhere in a module,
including ones inside functions), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG_ROOT = Path(__file__).resolve().parents[1] / "src" / "tokenfleet"
PRESENTATION = {"cli", "report"}
FORBIDDEN_IN_LIBRARY = ("typer", "rich", "tokenfleet.cli", "tokenfleet.report")


def _package_of(path: Path, root: Path = PKG_ROOT) -> str:
    """Top-level package of a module under ``src/tokenfleet`` (a top-level module is its
    own package, e.g. ``errors``)."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def _absolute(module: str | None, level: int, path: Path, root: Path) -> str:
    """The dotted name a (possibly relative) ``from ... import`` refers to."""
    if not level:
        return module or ""
    parts = ["tokenfleet", *path.relative_to(root).with_suffix("").parts]
    base = parts[:-level]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, root: Path = PKG_ROOT) -> set[str]:
    """Every module name ``path`` imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(_absolute(node.module, node.level, path, root))
    return out


def _modules() -> dict[Path, set[str]]:
    return {p: imports_of(p) for p in sorted(PKG_ROOT.rglob("*.py"))}


def package_edges(modules: dict[Path, set[str]], root: Path = PKG_ROOT
                  ) -> dict[str, set[str]]:
    """Package -> the other tokenfleet packages it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path, mods in modules.items():
        src = _package_of(path, root)
        for m in mods:
            parts = m.split(".")
            if parts[0] == "tokenfleet" and len(parts) > 1 and parts[1] != src:
                edges[src].add(parts[1])
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each back edge of a depth-first walk, as the cycle it closes."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v):], v])
            elif v not in state:
                walk(v, stack)
        stack.pop()
        state[u] = 2

    for u in sorted(edges):
        if u not in state:
            walk(u, [])
    return cycles


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_IN_LIBRARY)


def test_library_never_imports_presentation() -> None:
    bad = [f"{p.relative_to(PKG_ROOT)} imports {m}"
           for p, mods in _modules().items() if _package_of(p) not in PRESENTATION
           for m in sorted(mods) if _forbidden(m)]
    assert not bad, "\n".join(bad)


def test_sim_and_route_do_not_import_each_other() -> None:
    edges = package_edges(_modules())
    assert "route" not in edges["sim"], "sim imports route"
    assert "sim" not in edges["route"], "route imports sim"


def test_no_import_cycle_between_packages() -> None:
    cycles = find_cycles(package_edges(_modules()))
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


# ---- the checks themselves can fail -------------------------------------------------


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}}) == []


def test_import_reader_resolves_relative_and_lazy_imports(tmp_path: Path) -> None:
    root = tmp_path / "tokenfleet"
    (root / "sim").mkdir(parents=True)
    mod = root / "sim" / "x.py"
    mod.write_text("from ..route import gateway\n\ndef f():\n    import rich\n")
    got = imports_of(mod, root)
    assert got == {"tokenfleet.route", "rich"}
    assert package_edges({mod: got}, root) == {"sim": {"route"}}
    assert _forbidden("rich") and _forbidden("tokenfleet.report.sim_html")
    assert not _forbidden("richer")
