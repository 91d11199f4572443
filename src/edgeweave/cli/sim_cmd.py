"""`edgeweave simulate PLAN.json`: predict latency, throughput and busy time for a request stream."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeweave import sim
from edgeweave.cli.common import JsonOpt, console, print_json, print_table
from edgeweave.cost.cluster import Cluster
from edgeweave.cost.units import format_bytes, format_duration
from edgeweave.errors import UserError
from edgeweave.plan.ir import Plan
from edgeweave.sim.energy import predict_energy
from edgeweave.trace import task_labels


def simulate(
    plan: Annotated[Path, typer.Argument(help="Plan JSON written by `edgeweave plan`.", show_default=False)],
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests to stream through the plan.")] = 50,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Arrivals per second (default: all ready at 0).", show_default=False)
    ] = None,
    max_inflight: Annotated[
        int | None,
        typer.Option(
            "--max-inflight",
            help="Most requests in the system at once (default: number of tasks + 1).",
            show_default=False,
        ),
    ] = None,
    overhead_s: Annotated[float, typer.Option("--overhead-s", help="Extra seconds added to every transfer.")] = 0.0,
    cluster: Annotated[
        Path | None,
        typer.Option("--cluster", help="Replay on this cluster's links instead of the plan's own.", show_default=False),
    ] = None,
    timeline: Annotated[
        Path | None, typer.Option("--timeline", help="Write a Gantt chart PNG here.", show_default=False)
    ] = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Write a Chrome/Perfetto trace JSON here.", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Simulate a stream of requests through PLAN: each device computes and each link direction sends one task at a
    time, first come first served."""
    if requests < 1:
        raise UserError(f"--requests must be >= 1, got {requests}")
    loaded = Plan.load(plan)
    other = Cluster.load(cluster) if cluster is not None else None
    result = sim.simulate(
        loaded, requests, cluster=other, rate_per_s=rate, max_inflight=max_inflight, overhead_s=overhead_s
    )
    title = f"{loaded.model}: {loaded.strategy} plan, {requests} requests"
    written: dict[str, str] = {}
    if timeline is not None:
        written["timeline"] = str(_write(lambda: sim.draw_timeline(result, timeline, title=title), timeline))
    if trace is not None:
        written["trace"] = str(
            _write(lambda: sim.write_trace(result, trace, name=title, labels=task_labels(loaded)), trace)
        )
    if json_out:
        print_json(
            {
                "plan": str(plan),
                "strategy": loaded.strategy,
                "objective": loaded.objective,
                "predicted": _predicted(loaded),
                "profile": getattr(loaded, "profile_source", None),
                **result.to_dict(events=False),
                **predict_energy(loaded, other, stream=result).fields(),
                **written,
            }
        )
        return
    _print_tables(result, _predicted(loaded), title)
    energy = predict_energy(loaded, other, stream=result)
    if energy.single is not None and energy.stream is not None:
        console.print(
            f"energy per inference: {energy.single.source_j:.3f} J on {loaded.source} (source), "
            f"{energy.single.total_j:.3f} J on all devices; in this stream {energy.stream.source_j:.3f} / "
            f"{energy.stream.total_j:.3f} J per request"
        )
    else:
        console.print(f"energy: unknown ({energy.why_not})")
    for what, where in written.items():
        console.print(f"{what} written to {where}")
    source = getattr(loaded, "profile_source", None)
    if source:  # plans written by `edgeweave plan` say which profile they were made from
        from edgeweave.cost.store import ProfileSource

        console.print(f"plan made from {ProfileSource(**source).describe()}", markup=False)


def _write(action: Callable[[], Path], path: Path) -> Path:
    try:
        return action()
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def _predicted(plan: Plan) -> dict[str, Any]:
    """The planner's own prediction (cost model), to compare with the simulation."""
    source = plan.predicted or plan.cost_model
    return {k: source[k] for k in ("latency_s", "throughput_per_s", "energy_j", "source_energy_j") if k in source}


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if not math.isfinite(value) else f"{value:.3f} /s"


def _duration(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def _print_tables(result: sim.SimResult, predicted: dict[str, Any], title: str) -> None:
    summary = Table(title=f"Simulation: {title}")
    summary.add_column("metric")
    summary.add_column("simulated", justify="right")
    summary.add_column("cost model", justify="right")
    summary.add_row("latency p50 (incl. queueing)", format_duration(result.latency_s), "")
    summary.add_row("latency p95 (incl. queueing)", format_duration(result.latency_p95_s), "")
    summary.add_row("latency p50 after admission", format_duration(result.service_latency_s), "")
    summary.add_row(
        "single-request latency", format_duration(result.single_latency_s), _duration(predicted.get("latency_s"))
    )
    summary.add_row(
        "throughput (steady state)", _rate(result.throughput_per_s), _rate(predicted.get("throughput_per_s"))
    )
    summary.add_row("makespan", format_duration(result.makespan_s), "")
    summary.add_row("max in flight", str(result.max_inflight), "")
    print_table(summary)

    devices = Table(title="Devices")
    for col in ("device", "tasks", "busy", "utilisation", "idle"):
        devices.add_column(col, justify="left" if col == "device" else "right")
    for name, use in result.devices.items():
        devices.add_row(
            name, str(use.tasks), format_duration(use.busy_s), f"{use.utilisation:.1%}", format_duration(use.idle_s)
        )
    print_table(devices)

    if result.links:
        links = Table(title="Links (one row per direction)")
        for col in ("link", "transfers", "bytes", "busy", "utilisation"):
            links.add_column(col, justify="left" if col == "link" else "right")
        for name, use in result.links.items():
            links.add_row(
                name, str(use.transfers), format_bytes(use.bytes), format_duration(use.busy_s), f"{use.utilisation:.1%}"
            )
        print_table(links)


def register(app: typer.Typer) -> None:
    app.command()(simulate)
