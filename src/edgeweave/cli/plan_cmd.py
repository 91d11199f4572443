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
    LabelsOpt,
    ModelArg,
    ModelOpt,
    console,
    model_choice,
    print_json,
)
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, ProfileOpt, load_cluster, prepare
from edgeweave.cli.rate import RateOpt
from edgeweave.cli.split_options import ChunksOpt, SplitAxisOpt, SplitRatiosOpt, hybrid_options
from edgeweave.cost.profile import Profile
from edgeweave.cost.units import format_bytes
from edgeweave.plan.ir import Plan

StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help="local, offload, neurosurgeon, dads, even, pipedream, pipeline (the exact heterogeneous optimiser), "
        "tensor (every layer split, gathered after each), hybrid-grid, stream-offload (the frame streamed in "
        "chunks to the best helper, computed as it arrives) or hybrid.",
    ),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        "-O",
        help="throughput (minimise the bottleneck), latency (one request) or energy (joules per inference).",
    ),
]
EnergyScopeOpt = Annotated[
    str,
    typer.Option("--energy-scope", help="Energy to minimise or budget: source (the source device's battery) or total."),
]
EnergyBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--energy-budget",
        help="With --objective latency/throughput: the best plan using at most this many joules per inference.",
        show_default=False,
    ),
]
DeadlineOpt = Annotated[
    float | None,
    typer.Option(
        "--deadline",
        help="With --objective energy: the most frugal plan whose one-request latency is at most this many seconds.",
        show_default=False,
    ),
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


def attach_prediction(
    plan: Plan, requests: int = 50, max_inflight: int | None = None, rate_per_s: float | None = None
) -> Plan:
    """Fill `plan.predicted` from the simulator: one request alone, and a stream of `requests`
    admitted through the same window the runtime uses (stream latency counts from admission);
    with `rate_per_s`, also `stream`: frames arriving at that rate (latency from arrival)."""
    from edgeweave.sim.energy import predict_energy
    from edgeweave.sim.simulator import simulate

    result = simulate(plan, requests=requests, max_inflight=max_inflight)
    plan.predicted = {
        "latency_s": result.single_latency_s,
        "throughput_per_s": result.throughput_per_s,
        "stream_p50_latency_s": result.service_latency_s,
        # energy per inference (one request alone; stream_* per request of the stream), None with
        # energy_note when a device of the plan has no complete power model
        **predict_energy(plan, stream=result).fields(),
    }
    if rate_per_s is not None:
        from edgeweave.sim.stream import predict_stream

        plan.predicted["stream"] = predict_stream(plan, rate_per_s, requests, max_inflight)
    return plan


def plan(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    input_shape: InputShapeOpt = None,
    checkpoint: CheckpointOpt = None,
    input_kind: InputKindOpt = "float",
    labels: LabelsOpt = False,
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategy: StrategyOpt = "pipeline",
    objective: ObjectiveOpt = "throughput",
    energy_scope: EnergyScopeOpt = "source",
    energy_budget: EnergyBudgetOpt = None,
    deadline: DeadlineOpt = None,
    rate: RateOpt = None,
    split_ratios: SplitRatiosOpt = None,
    chunks: ChunksOpt = None,
    split_axis: SplitAxisOpt = None,
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
    from edgeweave.sim.stream import check_rate

    check_rate(rate)
    split = hybrid_options(split_ratios, chunks, split_axis)
    choice = model_choice(
        model, model_opt, input_shape, checkpoint, required=profile is None, input_kind=input_kind, labels=labels
    )
    the_cluster = load_cluster(cluster)
    graph = None
    if choice is not None:
        _, graph, _, prof = prepare(choice, profile, cache_dir, no_cache)
    else:
        prof = Profile.load(profile)
    started = time.perf_counter()
    the_plan = make_plan(
        prof,
        the_cluster,
        strategy,
        objective,
        graph,
        energy_scope=energy_scope,
        energy_budget_j=energy_budget,
        deadline_s=deadline,
        hybrid=split,
    )
    plan_time = time.perf_counter() - started
    attach_prediction(the_plan, rate_per_s=rate)
    if out is not None:
        the_plan.save(out)
    if json_out:
        print_json({**plan_summary(the_plan, plan_time), "plan_file": str(out) if out else None})
        return
    print_plan(the_plan, prof, plan_time)
    if "stream" in the_plan.predicted:
        st = the_plan.predicted["stream"]
        console.print(
            f"at {st['rate_per_s']:g} frames/s: latency p50 {st['latency_p50_s'] * 1e3:.1f} ms, "
            f"p95 {st['latency_p95_s'] * 1e3:.1f} ms, throughput {st['throughput_per_s']:.2f}/s"
        )
    if out is not None:
        console.print(f"plan written to {out}")


def print_plan(the_plan: Plan, prof: Profile, plan_time: float) -> None:
    cm = the_plan.cost_model
    table = Table(
        title=f"{the_plan.model}: {the_plan.strategy} plan ({the_plan.objective}) on {len(the_plan.devices)} devices"
    )
    for col in ("#", "device", "nodes", "compute", "transfer in", "bytes in", "memory"):
        table.add_column(col, justify="left" if col in ("device", "nodes") else "right")
    # Band-split plans (hybrid) carry no per-stage cost model: the simulator's bottleneck stands in.
    bottleneck = cm.get("bottleneck_s") or 1.0 / max(the_plan.predicted.get("throughput_per_s") or 1e-12, 1e-12)
    computes = [t for t in the_plan.tasks if t.kind == "compute"]
    mem_cap = {d: v.get("memory") for d, v in the_plan.cluster.get("devices", {}).items()}
    for k, task in enumerate(computes):
        t_in = cm["transfer_in_s"][k] if "transfer_in_s" in cm else None
        # the bottleneck is the link's occupancy (bytes / bandwidth), not its latency + occupancy
        link_in = cm["link_in_s"][k] if "link_in_s" in cm else t_in
        xfer = next((t for t in the_plan.tasks if t.kind == "transfer" and t.id == f"x{k}"), None)
        first, last = task.nodes[0], task.nodes[-1]
        span = f"{first}-{last} ({prof.nodes[first].name} .. {prof.nodes[last].name})"
        if len(task.nodes) != last - first + 1:
            span = f"{len(task.nodes)} nodes in {first}-{last}"
        table.add_row(
            str(k),
            task.device,
            span,
            _mark(cm["compute_s"][k] if "compute_s" in cm else task.time_s, bottleneck),
            _mark(t_in, bottleneck, link_in) if t_in is not None else "-",
            format_bytes(xfer.bytes) if xfer else "-",
            f"{format_bytes(task.memory_bytes)} / {mem_cap.get(task.device, '?')}",
        )
    console.print(table)
    if cm.get("output_s", 0) > 0:
        console.print(f"output back to {the_plan.source}: {cm['output_s'] * 1e3:.2f} ms")
    p = the_plan.predicted
    console.print(
        f"predicted: latency {p['latency_s'] * 1e3:.1f} ms, throughput {p['throughput_per_s']:.2f}/s "
        f"(bottleneck {bottleneck * 1e3:.2f} ms, marked *)   planned in {plan_time * 1e3:.0f} ms"
    )
    if p.get("energy_j") is not None:
        console.print(
            f"predicted energy per inference: {p['source_energy_j']:.3f} J on {the_plan.source} (source), "
            f"{p['energy_j']:.3f} J on all {len(the_plan.devices)} devices of the plan"
        )
    elif p.get("energy_note"):
        console.print(f"predicted energy: unknown ({p['energy_note']})")
    for note in the_plan.notes:
        console.print(f"[yellow]note:[/] {note}")


def _mark(value: float, bottleneck: float, busy: float | None = None) -> str:
    """A time in ms, highlighted when it is the plan's bottleneck. `busy` is what the resource is
    held for when that differs from `value` (a transfer: its link occupancy, without latency)."""
    text = f"{value * 1e3:.2f} ms"
    held = value if busy is None else busy
    return f"[bold red]{text}*[/]" if abs(held - bottleneck) <= 1e-12 * max(1.0, bottleneck) else text


def register(app: typer.Typer) -> None:
    app.command()(plan)
