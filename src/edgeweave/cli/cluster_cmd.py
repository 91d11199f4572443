"""`edgeweave cluster show`: validate a cluster file and print its devices and links.

Printing lives here, not in cost/cluster.py: the cost layer describes clusters, the command line
shows them (and the cost layer then needs no rich).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgeweave.cli.common import JsonOpt, console, print_json, print_table
from edgeweave.cost.cluster import Cluster, Link, PowerModel, cluster_summary
from edgeweave.cost.units import format_bandwidth, format_bytes, format_duration

app = typer.Typer(help="Inspect cluster descriptions.", no_args_is_help=True)


@app.command()
def show(
    path: Annotated[
        Path | None, typer.Argument(help="Cluster YAML (default: the embedded robot-server).", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate a cluster YAML and print its devices and the bandwidth/latency between every pair."""
    from edgeweave.cli.inputs import load_cluster

    cluster = load_cluster(path)
    if json_out:
        print_json(cluster_summary(cluster))
    else:
        print_cluster(cluster, console)


def _power_cell(power: PowerModel | None) -> str:
    if power is None:
        return "-"
    idle = "?" if power.idle_w is None else f"{power.idle_w:g}"
    busy = "?" if power.busy_w is None else f"{power.busy_w:g}"
    return f"{idle} / {busy} W"


def _link_cell(link: Link, lines: bool = False) -> str:
    return f"{format_bandwidth(link.bandwidth_bps)}{chr(10) if lines else ' / '}{format_duration(link.latency_s)}"


def print_cluster(cluster: Cluster, to: Console | None = None) -> None:
    """A device table (the source marked) and a from/to matrix of bandwidth / latency."""
    out: Any = to or console
    title = f"Cluster {cluster.name}" if cluster.name else "Cluster"
    devices = Table(title=title)
    for column in ("device", "speed", "memory", "power idle / busy", "address"):
        devices.add_column(column, justify="right" if column in ("speed", "memory") else "left")
    for name, device in cluster.devices.items():
        label = f"{name} (source)" if name == cluster.source else name
        devices.add_row(
            label,
            f"{device.speed:g}",
            format_bytes(device.memory_bytes),
            _power_cell(device.power),
            device.address or "-",
        )
    print_table(devices, out)

    names = cluster.device_names
    pairs = [(a, b) for a in names for b in names if a != b]
    if out.is_terminal and 12 + 11 * len(names) > out.width:  # a matrix this wide would be cut: group pairs
        groups: dict[str, list[tuple[str, str]]] = {}
        for a, b in pairs:
            groups.setdefault(_link_cell(cluster.link(a, b)), []).append((a, b))
        ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
        out.print("Links: bandwidth / latency")
        common, rest = ranked[0], ranked[1:]
        others = " (every pair not listed below)" if rest else ""
        out.print(f"  {common[0]}: {len(common[1])} of {len(pairs)} ordered pairs{others}")
        for cell, members in rest:
            for a, b in members:
                out.print(f"  {a} -> {b}: {cell}")
        return
    matrix = Table(title="Links: bandwidth / latency (rows send to columns)")
    matrix.add_column("from \\ to", no_wrap=True)
    for name in names:
        matrix.add_column(name, no_wrap=True)
    for a in names:
        matrix.add_row(a, *("-" if a == b else _link_cell(cluster.link(a, b), lines=out.is_terminal) for b in names))
    print_table(matrix, out)
