"""`edgeweave demo`: the main job on the embedded default (a robot and a server on 50 Mbps WiFi)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgeweave.cli.common import InputKindOpt, JsonOpt, LabelsOpt, ModelChoice, console, print_json
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, load_cluster
from edgeweave.cli.rate import RateOpt
from edgeweave.cli.run_cmd import RunRequest, print_comparison, run_strategies
from edgeweave.cost.cluster import print_cluster

DEMO_STRATEGIES = ["local", "offload", "neurosurgeon", "dads", "pipeline", "stream-offload", "hybrid"]


def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model to demonstrate.")] = "resnet18",
    cluster: ClusterOpt = None,
    input_kind: InputKindOpt = "float",
    labels: LabelsOpt = False,
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests per strategy.")] = 12,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the timeline pictures.")] = Path("out/demo"),
    rate: RateOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run MODEL for real with every strategy on the embedded robot + server cluster and compare.

    Each device is a worker process on this machine; the robot is slowed to its speed and the
    WiFi link is shaped to its bandwidth and latency. Outputs are checked against one-device runs.
    """
    from edgeweave.sim.stream import check_rate

    started = time.perf_counter()
    check_rate(rate)
    the_cluster = load_cluster(cluster)  # fails fast, before capture and profiling
    if not json_out:
        print_cluster(the_cluster, console)
    request = RunRequest(
        ModelChoice(model, input_kind=input_kind, labels=labels),
        None,
        cluster,
        "latency",
        requests,
        "shaper",
        out,
        None,
        5.0,
        None,
        cache_dir,
        no_cache,
        rate_per_s=rate,
    )
    rows = run_strategies(request, DEMO_STRATEGIES, quiet=json_out)
    if json_out:
        print_json(rows)
        return
    name = the_cluster.name or "the cluster"
    print_comparison(
        rows, title=f"{model} on {name}: every strategy run for real ({requests} requests each, latency objective)"
    )
    console.print(f"measured timelines and Perfetto traces: {out}/   (demo took {time.perf_counter() - started:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
