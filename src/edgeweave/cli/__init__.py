"""The `edgeweave` command line: one typer app, one module per command group."""

from edgeweave.cli.app import app, main

__all__ = ["app", "main"]
