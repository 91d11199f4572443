"""`edgeweave plan`: choose who computes what, and predict latency and throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeweave.cli.common import (
    CheckpointOpt,
    InputKindOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    ModelOpt,
    console,
    model_choice,
    print_json,
)
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, ProfileOpt, load_cluster, prepare
from edgeweave.cost.profile import Profile
from edgeweave.cost.units import format_bytes
from edgeweave.plan.ir import Plan

StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help="local, offload, neurosurgeon, dads, even, pipedream or pipeline (the exact heterogeneous optimiser).",
    ),
]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", "-O", help="throughput (minimise the bottleneck) or latency (one request).")
]


def plan_summary(plan: Plan, plan_time_s: float | None = None) -> dict[str, Any]:
    """The JSON of `plan --json` (design notes' contract) for an already built plan."""
    out: dict[str, Any] = {
        "strategy": plan.strategy,
        "objective": plan.objective,
        "model": plan.model,
        "source": plan.source,
        "predicted": plan.predicted,
        "cost_model": plan.cost_model,
        "devices": plan.devices,
        "tasks": len(plan.tasks),
        "notes": plan.notes,
    }
    if plan.stages is not None:
        out["stages"] = [s.model_dump() for s in plan.stages]
    if plan_time_s is not None:
        out["plan_time_s"] = plan_time_s
    return out


def attach_prediction(plan: Plan, requests: int = 50, max_inflight: int | None = None) -> Plan:
    """Fill `plan.predicted` from the simulator: one request alone, and a stream of `requests`
    admitted through the same window the runtime uses (stream latency counts from admission)."""
    from edgeweave.sim.simulator import simulate

    result = simulate(plan, requests=requests, max_inflight=max_inflight)
    plan.predicted = {
        "latency_s": result.single_latency_s,
        "throughput_per_s": result.throughput_per_s,
        "stream_p50_latency_s": result.service_latency_s,
    }
    return plan


def plan(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    input_shape: InputShapeOpt = None,
    checkpoint: CheckpointOpt = None,
    input_kind: InputKindOpt = "float",
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategy: StrategyOpt = "pipeline",
    objective: ObjectiveOpt = "throughput",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the Plan JSON here (for simulate/run).", show_default=False),
    ] = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Plan MODEL (or a --profile) on a cluster with one strategy and predict its latency and throughput."""
    from edgeweave.plan.strategies import make_plan

    choice = model_choice(model, model_opt, input_shape, checkpoint, required=profile is None, input_kind=input_kind)
    the_cluster = load_cluster(cluster)
    graph = None
    if choice is not None:
        _, graph, _, prof = prepare(choice, profile, cache_dir, no_cache)
    else:
        prof = Profile.load(profile)
    started = time.perf_counter()
    the_plan = make_plan(prof, the_cluster, strategy, objective, graph)
    plan_time = time.perf_counter() - started
    attach_prediction(the_plan)
    if out is not None:
        the_plan.save(out)
    if json_out:
        print_json({**plan_summary(the_plan, plan_time), "plan_file": str(out) if out else None})
        return
    print_plan(the_plan, prof, plan_time)
    if out is not None:
        console.print(f"plan written to {out}")


def print_plan(the_plan: Plan, prof: Profile, plan_time: float) -> None:
    cm = the_plan.cost_model
    table = Table(
        title=f"{the_plan.model}: {the_plan.strategy} plan ({the_plan.objective}) on {len(the_plan.devices)} devices"
    )
    for col in ("#", "device", "nodes", "compute", "transfer in", "bytes in", "memory"):
        table.add_column(col, justify="left" if col in ("device", "nodes") else "right")
    bottleneck = cm["bottleneck_s"]
    computes = [t for t in the_plan.tasks if t.kind == "compute"]
    mem_cap = {d: v.get("memory") for d, v in the_plan.cluster.get("devices", {}).items()}
    for k, task in enumerate(computes):
        t_in = cm["transfer_in_s"][k]
        xfer = next((t for t in the_plan.tasks if t.kind == "transfer" and t.id == f"x{k}"), None)
        first, last = task.nodes[0], task.nodes[-1]
        span = f"{first}-{last} ({prof.nodes[first].name} .. {prof.nodes[last].name})"
        if len(task.nodes) != last - first + 1:
            span = f"{len(task.nodes)} nodes in {first}-{last}"
        table.add_row(
            str(k),
            task.device,
            span,
            _mark(cm["compute_s"][k], bottleneck),
            _mark(t_in, bottleneck),
            format_bytes(xfer.bytes) if xfer else "-",
            f"{format_bytes(task.memory_bytes)} / {mem_cap.get(task.device, '?')}",
        )
    console.print(table)
    if cm["output_s"] > 0:
        console.print(f"output back to {the_plan.source}: {cm['output_s'] * 1e3:.2f} ms")
    p = the_plan.predicted
    console.print(
        f"predicted: latency {p['latency_s'] * 1e3:.1f} ms, throughput {p['throughput_per_s']:.2f}/s "
        f"(bottleneck {bottleneck * 1e3:.2f} ms, marked *)   planned in {plan_time * 1e3:.0f} ms"
    )
    for note in the_plan.notes:
        console.print(f"[yellow]note:[/] {note}")


def _mark(value: float, bottleneck: float) -> str:
    """A time in ms, highlighted when it is the plan's bottleneck."""
    text = f"{value * 1e3:.2f} ms"
    return f"[bold red]{text}*[/]" if abs(value - bottleneck) <= 1e-12 * max(1.0, bottleneck) else text


def register(app: typer.Typer) -> None:
    app.command()(plan)
