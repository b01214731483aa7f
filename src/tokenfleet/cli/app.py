"""The ``tokenfleet`` command line: one Typer app; each area registers its commands.

Each command family has its module in this package (``estimate.py``, ``plan.py``,
``simulate.py``, ...); every module exposes ``register(app)``. This file only wires
them together and turns :class:`TokenfleetError` into a clear message
and a non-zero exit code.
"""

from __future__ import annotations

import sys

import typer

from tokenfleet.errors import TokenfleetError

app = typer.Typer(
    name="tokenfleet",
    help=(
        "Plan, simulate and route LLM inference across NVIDIA, AMD, Google TPU, AWS "
        "Trainium/Inferentia and Microsoft Maia accelerators.\n\n"
        "Start with `tokenfleet estimate --help` (one serving unit), `tokenfleet compare "
        "--help` (rank every chip) or `tokenfleet catalog list accelerators`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from tokenfleet.cli import catalog, estimate, export, plan, quality, serve, simulate, trace

    for module in (catalog, estimate, trace, plan, export, simulate, serve, quality):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; print TokenfleetError as one clean message, exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except TokenfleetError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        if isinstance(e, _click_errors()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise


def _click_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error base classes: recent Typer vendors its own copy of click
    (``typer._click``), whose exceptions are not ``click.ClickException``."""
    found: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


if __name__ == "__main__":
    main()
