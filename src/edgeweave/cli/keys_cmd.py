"""`edgeweave keys`: the cluster's CURVE key pairs, one for the coordinator and one per device."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeweave.cli.common import JsonOpt, console, print_json
from edgeweave.cli.inputs import load_cluster
from edgeweave.cli.options import ClusterOpt
from edgeweave.errors import UserError


def keys(
    out: Annotated[Path, typer.Option("--out", "-o", help="Keys folder to create (made private: 0700).")],
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices", help="Comma-separated device names (default: the cluster's devices).", show_default=False
        ),
    ] = None,
    cluster: ClusterOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the cluster's key pairs: `coordinator` and one per device (existing pairs are kept).

    Give every device the folder's public keys (*.key) and its own secret key (NAME.key_secret);
    keep coordinator.key_secret and the source device's secret key where `edgeweave run` runs.
    Then start workers with `edgeweave worker --name NAME --keys DIR` and run with `--keys DIR`.
    """
    from edgeweave.runtime.security import COORDINATOR, create_keys

    if devices is not None:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if not names:
            raise UserError("--devices names no device")
    else:
        names = list(load_cluster(cluster).devices)
    if COORDINATOR in names:
        raise UserError(f"a device cannot be called {COORDINATOR!r}: that name is the coordinator's key")
    made = create_keys(out, [COORDINATOR, *names])
    if json_out:
        print_json({"folder": str(out), "keys": made})
        return
    for entry in made:
        state = "created" if entry["created"] else "kept"
        console.print(f"{entry['name']:>12}: {state} {entry['public']} and {entry['secret']} (0600)")


def register(app: typer.Typer) -> None:
    app.command()(keys)
