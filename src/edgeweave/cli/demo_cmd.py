"""`edgeweave demo`: every strategy run for real on the embedded robot + server (50 Mbps WiFi).

The demo is `bench` with every strategy and resnet18 by default: the same option groups and
the same defaults (cli/options.py), then the cluster first and a closing summary last.
"""

from __future__ import annotations

import time

import typer

from edgeweave.cli.common import JsonOpt, console, print_json
from edgeweave.cli.options import ExecutionOptions, ModelOptions, PlanningOptions, grouped
from edgeweave.cli.report import print_comparison, print_summary
from edgeweave.cli.run_cmd import run_strategies

DEMO_MODEL = "resnet18"
DEMO_STRATEGIES = ["local", "offload", "neurosurgeon", "dads", "pipeline", "stream-offload", "hybrid"]


@grouped
def demo(m: ModelOptions, p: PlanningOptions, e: ExecutionOptions, json_out: JsonOpt = False) -> None:
    """Run MODEL (default: resnet18) for real with every strategy on the cluster and compare.

    Each device is a worker process on this machine; the robot is slowed to its speed and the
    WiFi link is shaped to its bandwidth and latency. Outputs are checked against one-device runs.
    """
    started = time.perf_counter()
    choice = m.choice(default=DEMO_MODEL)
    if not json_out:
        from edgeweave.cli.cluster_cmd import print_cluster
        from edgeweave.cli.inputs import load_cluster

        print_cluster(load_cluster(p.cluster), console)  # a bad file fails here, before capture
    rows = run_strategies(choice, p, e, DEMO_STRATEGIES, quiet=json_out)
    if json_out:
        print_json(rows)
        return
    name = rows[0]["model"]
    print_comparison(rows, title=f"{name}: every strategy run for real ({e.requests} requests each, {p.objective})")
    print_summary(rows)
    console.print(
        f"measured timelines and Perfetto traces: {e.out}/   (demo took {time.perf_counter() - started:.0f} s)",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
