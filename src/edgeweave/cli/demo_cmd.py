"""`edgeweave demo`: the main job on the embedded default (a robot and a server on 50 Mbps WiFi)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeweave.cli.common import InputKindOpt, JsonOpt, ModelChoice, console, print_json
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, load_cluster, prepare
from edgeweave.cli.plan_cmd import attach_prediction
from edgeweave.cli.run_cmd import execute
from edgeweave.cost.cluster import print_cluster

DEMO_STRATEGIES = ["local", "offload", "neurosurgeon", "dads", "pipeline", "hybrid"]


def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model to demonstrate.")] = "resnet18",
    cluster: ClusterOpt = None,
    input_kind: InputKindOpt = "float",
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests per strategy.")] = 12,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the timeline pictures.")] = Path("out/demo"),
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run MODEL for real with every strategy on the embedded robot + server cluster and compare.

    Each device is a worker process on this machine; the robot is slowed to its speed and the
    WiFi link is shaped to its bandwidth and latency. Outputs are checked against one-device runs.
    """
    from edgeweave.plan.strategies import make_plan

    started = time.perf_counter()
    the_cluster = load_cluster(cluster)
    if not json_out:
        print_cluster(the_cluster, console)
    _, graph, weights, profile = prepare(ModelChoice(model, input_kind=input_kind), None, cache_dir, no_cache)
    rows = []
    for strategy in DEMO_STRATEGIES:
        plan = attach_prediction(make_plan(profile, the_cluster, strategy, "latency", graph), requests)
        rows.append(
            execute(
                plan,
                the_cluster,
                graph,
                weights,
                requests=requests,
                links="shaper",
                out=out,
                max_inflight=None,
                connect_timeout=5.0,
                show_progress=not json_out,
            )
        )
    if json_out:
        print_json(rows)
        return
    best = min(r["single_latency_s"] for r in rows if r["strategy"] in ("local", "offload"))
    table = Table(
        title=f"{model} on {the_cluster.name or 'the cluster'}: every strategy run for real "
        f"({requests} requests each, latency objective)"
    )
    for col in (
        "strategy",
        "latency pred",
        "latency meas",
        "vs best of local/offload",
        "throughput pred",
        "throughput meas",
        "exact?",
    ):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        p = r["predicted"]
        table.add_row(
            r["strategy"],
            f"{p['latency_s'] * 1e3:.1f} ms",
            f"{r['single_latency_s'] * 1e3:.1f} ms",
            f"{best / r['single_latency_s']:.2f}x",
            f"{p['throughput_per_s']:.2f}/s",
            f"{r['throughput_per_s']:.2f}/s",
            "yes" if r["correct"] else "NO",
        )
    console.print(table)
    console.print(f"measured timelines and Perfetto traces: {out}/   (demo took {time.perf_counter() - started:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
