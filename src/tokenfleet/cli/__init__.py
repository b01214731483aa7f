"""The application layer: the Typer app, one module per command family, console
rendering. The only package that prints or imports Typer and Rich (``report/`` renders
HTML); everything below it computes and returns typed results."""

from tokenfleet.cli.app import app, main

__all__ = ["app", "main"]
