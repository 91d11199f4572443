"""`edgeweave demo`: the main job on the embedded default (a robot and a server on 50 Mbps WiFi)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeweave.cli.common import JsonOpt, ModelChoice, console, print_json
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, load_cluster, resolve_profile
from edgeweave.cli.plan_cmd import attach_prediction, plan_summary
from edgeweave.cost.cluster import print_cluster

DEMO_STRATEGIES = ["local", "offload", "neurosurgeon", "dads", "pipeline"]


def demo(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model to demonstrate.")] = "resnet18",
    cluster: ClusterOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the timeline pictures.")] = Path("out/demo"),
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Plan MODEL with every strategy on the embedded robot + server cluster and compare them."""
    from edgeweave.plan.strategies import make_plan
    from edgeweave.sim.simulator import simulate
    from edgeweave.sim.timeline import draw_timeline

    the_cluster = load_cluster(cluster)
    if not json_out:
        print_cluster(the_cluster, console)
    profile = resolve_profile(ModelChoice(model), None, cache_dir, no_cache)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for strategy in DEMO_STRATEGIES:
        plan = attach_prediction(make_plan(profile, the_cluster, strategy, "latency"))
        picture = out / f"{model}-{strategy}.png"
        draw_timeline(simulate(plan, requests=8), picture, title=f"{model} {strategy} (simulated, 8 requests)")
        rows.append({**plan_summary(plan), "timeline": str(picture)})
    if json_out:
        print_json(rows)
        return
    best_single = min(min(r["predicted"]["latency_s"] for r in rows if r["strategy"] in ("local", "offload")), 1e9)
    table = Table(title=f"{model} on {the_cluster.name or 'cluster'}: predicted per strategy (latency objective)")
    for col in ("strategy", "devices used", "latency", "throughput", "vs best of local/offload"):
        table.add_column(col, justify="left" if col in ("strategy", "devices used") else "right")
    for r in rows:
        used = ", ".join(dict.fromkeys(s["device"] for s in r.get("stages") or [])) or "-"
        lat = r["predicted"]["latency_s"]
        table.add_row(
            r["strategy"],
            used,
            f"{lat * 1e3:.1f} ms",
            f"{r['predicted']['throughput_per_s']:.2f}/s",
            f"{best_single / lat:.2f}x",
        )
    console.print(table)
    console.print(f"timelines: {out}/")


def register(app: typer.Typer) -> None:
    app.command()(demo)
