"""`edgeweave cluster show`: validate a cluster file and print its devices and links."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeweave.cli.common import JsonOpt, console, print_json
from edgeweave.cli.inputs import load_cluster
from edgeweave.cost.cluster import cluster_summary, print_cluster

app = typer.Typer(help="Inspect cluster descriptions.", no_args_is_help=True)


@app.command()
def show(
    path: Annotated[
        Path | None, typer.Argument(help="Cluster YAML (default: the embedded robot-server).", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate a cluster YAML and print its devices and the bandwidth/latency between every pair."""
    cluster = load_cluster(path)
    if json_out:
        print_json(cluster_summary(cluster))
    else:
        print_cluster(cluster, console)
