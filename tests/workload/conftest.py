"""Shared fixtures for the workload tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer


@pytest.fixture
def write(tmp_path: Path):
    """Write text to a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


@pytest.fixture(scope="session")
def cli_app() -> typer.Typer:
    """The real CLI app; a fresh app with only our group if the full CLI cannot be
    imported yet (other areas are still being written in this checkout)."""
    try:
        from tokenfleet.cli import app
    except ImportError:
        from tokenfleet.cli.trace import register

        app = typer.Typer()
        register(app)
    return app
