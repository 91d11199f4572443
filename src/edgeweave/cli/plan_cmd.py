"""`edgeweave plan`: choose who computes what, and predict latency and throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgeweave.cli.common import JsonOpt, console, err_console, print_json, print_table
from edgeweave.cli.options import DEFAULT_STRATEGY, ModelOptions, PlanningOptions, StrategyOpt, grouped
from edgeweave.cost.profile import Profile
from edgeweave.cost.units import format_bytes
from edgeweave.plan.ir import Plan

if TYPE_CHECKING:
    from edgeweave.cost.store import ProfileSource


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
        modules = getattr(plan, "node_modules", None) or []
        out["stages"] = [
            {**s.model_dump(), **({"modules": f"{modules[s.first]} .. {modules[s.last]}"} if modules else {})}
            for s in plan.stages
        ]
    if "search" in plan.cost_model:  # the exact pipeline search: proven optimal, or its gap
        out["search"] = plan.cost_model["search"]
    source = getattr(plan, "profile_source", None)
    if source is not None:
        out["profile"] = source
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


@grouped
def plan(
    m: ModelOptions,
    p: PlanningOptions,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the Plan JSON here (for simulate/run).", show_default=False),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Plan MODEL (or a --profile) on a cluster with one strategy and predict its latency and throughput."""
    from edgeweave.plan.strategies import make_plan

    choice = m.choice(required=p.profile is None)
    checked = p.check([strategy], has_model=choice is not None)
    graph = None
    if choice is not None:
        from edgeweave.cli.inputs import prepare

        ready = prepare(choice, checked.profile, p.profile, p.cache_dir, p.no_cache)
        graph, prof, source = ready.graph, ready.profile, ready.source
    else:
        from edgeweave.cost.store import ProfileSource

        prof, source = checked.profile, ProfileSource.of(checked.profile, "file", p.profile)
    started = time.perf_counter()
    the_plan = make_plan(prof, checked.cluster, strategy, p.objective, graph, **p.plan_kwargs(strategy, checked.hybrid))
    plan_time = time.perf_counter() - started
    attach_prediction(the_plan, rate_per_s=p.rate)
    with_source(the_plan, source)
    the_plan.node_modules = node_modules(prof)
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


def with_source(the_plan: Plan, source: ProfileSource, warn: bool = True) -> Plan:
    """Record in the plan which profile it was made from, and warn (stderr) when that profile is suspect."""
    the_plan.profile_source = source.to_dict()
    for warning in source.warnings if warn else []:
        err_console.print(f"[yellow]warning:[/] {warning}")
    return the_plan


def node_modules(prof: Profile) -> list[str]:
    """Every node's module path (its node name where the capture knew none: a flatten, an add),
    carried by plans for traces and tables."""
    return [(n.model_extra or {}).get("module") or n.name for n in prof.nodes]


def node_label(prof: Profile, index: int) -> str:
    """A node as a reader knows it: its module path (layer2.0.conv1) when the profile has it, else its name."""
    node = prof.nodes[index]
    return (node.model_extra or {}).get("module") or node.name


def print_plan(the_plan: Plan, prof: Profile, plan_time: float) -> None:
    """One row per compute task: its device, its nodes (indices, then module paths), times, bytes in, memory.

    Narrow columns with no vertical rules, module spans on their own lines and numbers that never
    wrap, so the table reads at 80 columns; in a pipe it is markdown (`print_table`).
    """
    from rich import box

    from edgeweave.cost.units import parse_bytes

    cm = the_plan.cost_model
    table = Table(
        title=f"{the_plan.model}: {the_plan.strategy} plan ({the_plan.objective}) on {len(the_plan.devices)} devices",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        title_justify="left",
    )
    table.add_column("device", no_wrap=True)
    table.add_column("nodes", overflow="fold")
    for col in ("compute", "in", "bytes in", "memory"):
        table.add_column(col, justify="right", no_wrap=True)
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
        span = f"{first}-{last}\n{node_label(prof, first)} ..\n{node_label(prof, last)}"
        if len(task.nodes) != last - first + 1:
            span = f"{len(task.nodes)} nodes in {first}-{last}"
        memory = format_bytes(task.memory_bytes)
        try:
            share = task.memory_bytes / parse_bytes(mem_cap.get(task.device))
            memory += f" ({share:.0%})" if share >= 0.1 else ""
        except Exception:  # no capacity known: the bytes alone
            pass
        table.add_row(
            task.device,
            span,
            _mark(cm["compute_s"][k] if "compute_s" in cm else task.time_s, bottleneck),
            _mark(t_in, bottleneck, link_in) if t_in is not None else "-",
            format_bytes(xfer.bytes) if xfer else "-",
            memory,
        )
    print_table(table)
    if cm.get("output_s", 0) > 0:
        console.print(f"output back to {the_plan.source}: {cm['output_s'] * 1e3:.2f} ms")
    p = the_plan.predicted
    console.print(
        f"predicted: latency {p['latency_s'] * 1e3:.1f} ms (a frame alone), throughput {p['throughput_per_s']:.2f}/s "
        f"(a stream; bottleneck {bottleneck * 1e3:.2f} ms, marked *)   planned in {plan_time * 1e3:.0f} ms"
    )
    console.print("memory: each task's weights (and their share of the device's memory, from 10%)")
    if p.get("energy_j") is not None:
        console.print(
            f"predicted energy per inference: {p['source_energy_j']:.3f} J on {the_plan.source} (source), "
            f"{p['energy_j']:.3f} J on all {len(the_plan.devices)} devices of the plan"
        )
    elif p.get("energy_note"):
        console.print(f"predicted energy: unknown ({p['energy_note']})")
    for note in the_plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    source = getattr(the_plan, "profile_source", None)
    if source is not None:
        from edgeweave.cost.store import ProfileSource

        console.print(ProfileSource(**source).describe(), soft_wrap=True)


def _mark(value: float, bottleneck: float, busy: float | None = None) -> str:
    """A time in ms, highlighted when it is the plan's bottleneck. `busy` is what the resource is
    held for when that differs from `value` (a transfer: its link occupancy, without latency)."""
    text = f"{value * 1e3:.2f} ms"
    held = value if busy is None else busy
    return f"[bold red]{text}*[/]" if abs(held - bottleneck) <= 1e-12 * max(1.0, bottleneck) else text


def register(app: typer.Typer) -> None:
    app.command()(plan)
