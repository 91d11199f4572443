"""Entry point: builds the typer app and turns user mistakes into one line and exit status 2.

Ctrl-C ends any command with status 130. By the time the interrupt reaches here, the session has
stopped its workers (its `close()` runs on the way out); what is left is the interpreter's own
shutdown, which after a run spends seconds collecting torch's garbage. An interrupted command
has nothing left to save, so it exits at once (and any worker still alive dies with it: each
asks the kernel to kill it when its parent dies).
"""

from __future__ import annotations

import os
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


INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="edgeweave")
    except UserError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into SystemExit(130))
        _interrupted()
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            _interrupted()
        raise


def _interrupted() -> None:
    err_console.print("interrupted")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)
