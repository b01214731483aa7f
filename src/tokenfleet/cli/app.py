"""The ``tokenfleet`` command line: one Typer app; each area registers its commands.

Each command family has its module in this package (``estimate.py``, ``plan.py``,
``simulate.py``, ...); every module exposes ``register(app)``. This file only wires
them together and turns :class:`TokenfleetError` into a clear message
and a non-zero exit code.

Command modules are imported only when their command runs (or shows its ``--help``):
``tokenfleet --help`` lists the commands from :data:`COMMANDS` without importing any,
so it answers in a fraction of a second instead of the seconds numba, scipy and polars
take to import. ``tests/test_cli_help.py`` checks that the summaries here match the
commands' own.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

try:  # recent Typer ships its own copy of click, and its classes derive from that copy
    from typer import _click as click
except ImportError:  # pragma: no cover - Typer versions that use click itself
    import click  # type: ignore[no-redef]

from tokenfleet.errors import TokenfleetError

# command -> (module in tokenfleet.cli, one-line summary shown by `tokenfleet --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": ("estimate", "What one serving unit does: throughput, latency, memory, $ "
                             "and watts."),
    "compare": ("estimate", "Rank every chip by $ per million output tokens for one model "
                            "and traffic shape."),
    "breakeven": ("estimate", "The $/chip-hour at which one chip matches another in $ per "
                              "token."),
    "calibrate": ("estimate", "Refit the model's efficiency factors to the shipped "
                              "measurements."),
    "plan": ("plan", "The cheapest multi-vendor fleet that meets every SLO and policy."),
    "export": ("export", "Write engine arguments, Kubernetes manifests and backends.yaml for "
                         "a plan's pools."),
    "simulate": ("simulate", "Replay traffic through a plan's fleet, with failures, surges "
                             "and price changes."),
    "sweep": ("simulate", "Run a grid of what-ifs (plan + simulate per point) in parallel on "
                          "Ray."),
    "serve": ("serve", "Run the OpenAI-compatible gateway that routes each request by the "
                       "plan."),
    "emulate": ("serve", "Run OpenAI-compatible servers that behave like pools of a chip "
                         "kind."),
    "loadtest": ("serve", "Replay a trace against a gateway and measure client-side TTFT, "
                          "TPOT and errors."),
    "validate-precision": ("quality", "Measure what each number format costs in quality on "
                                      "a real model, against FP32."),
    "catalog": ("catalog", "What the catalogs hold: accelerators (specs, prices, sources) "
                           "and models."),
    "trace": ("trace", "Request traces: summarise a real one (`trace stats FILE`) or "
                       "generate synthetic what-if traffic (`trace generate`). Reads the Azure "
                       "LLM, BurstGPT and Mooncake traces as published, and any "
                       "CSV/JSONL/Parquet with --map."),
}


class _Summary(TyperCommand):
    """Stands in for a command while the top-level help lists it."""


class _HelpFlag(TyperOption):
    """Typer's ``--help`` flag, read without pydantic when it is absent.

    Typer (0.29) coerces a flag that was not given (``None``) through a pydantic
    ``TypeAdapter``; a group's ``--help`` is absent whenever a subcommand's help is asked
    for (``tokenfleet plan --help`` parses the root's flags first), so that import alone
    cost ~0.1 s of every ``--help``. Absent means "no help": the callback sees ``False``
    and does nothing, as it did with the coerced ``None``.
    """

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        return super().process_value(ctx, False if value is None else value)


class FastHelpGroup(TyperGroup):
    """A Typer group whose ``--help`` flag is a :class:`_HelpFlag`; use it (``cls=``)
    for every command group so that its subcommands' ``--help`` stays fast."""

    def get_help_option(self, ctx: click.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        if option is not None and type(option) is TyperOption:
            option.__class__ = _HelpFlag  # same fields, one method overridden
        return option


class LazyGroup(FastHelpGroup):
    """A Typer group whose commands are imported on first use."""

    _listing = False
    _loaded: dict[str, click.Command] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            summary = COMMANDS[cmd_name][1]
            return _Summary(cmd_name, help=summary, short_help=summary)
        return load_command(cmd_name)

    def format_help(self, ctx: click.Context, formatter: Any) -> None:
        LazyGroup._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            LazyGroup._listing = False


def load_command(name: str) -> click.Command:
    """Import the module of ``name`` and return its click command."""
    if name not in LazyGroup._loaded:
        module = importlib.import_module(f"tokenfleet.cli.{COMMANDS[name][0]}")
        sub = typer.Typer(pretty_exceptions_enable=False)
        module.register(sub)
        group = typer.main.get_group(sub)
        for cmd_name in group.list_commands(click.Context(group)):
            cmd = group.get_command(click.Context(group), cmd_name)
            if cmd is not None:
                LazyGroup._loaded[cmd_name] = cmd
    return LazyGroup._loaded[name]


app = typer.Typer(
    name="tokenfleet",
    help=(
        "Plan, simulate and route LLM inference across NVIDIA, AMD, Google TPU, AWS "
        "Trainium/Inferentia and Microsoft Maia accelerators.\n\n"
        "Start with `tokenfleet estimate --help` (one serving unit), `tokenfleet compare "
        "--help` (rank every chip) or `tokenfleet catalog list accelerators`."
    ),
    cls=LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # A callback makes the app a group even though no command is registered up front.
    pass


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
