"""Entry point: builds the typer app and turns user mistakes into one line and exit status 2."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from edgeweave.cli import cluster_cmd, demo_cmd, keys_cmd, model_cmd, plan_cmd, run_cmd, sim_cmd
from edgeweave.cli.common import err_console
from edgeweave.errors import UserError

app = typer.Typer(
    name="edgeweave",
    help="Run one neural network across several devices on slow links: capture, profile, plan, "
    "simulate and run pipeline and hybrid region-split plans.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
model_cmd.register(app)
plan_cmd.register(app)
sim_cmd.register(app)
run_cmd.register(app)
keys_cmd.register(app)
demo_cmd.register(app)
app.add_typer(cluster_cmd.app, name="cluster")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="edgeweave")
    except UserError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
