"""Run a plan for real and measure it the way the simulator predicts it.

The same quantities on both sides: one request alone (latency), a saturating stream through
the same admission window (throughput), per-device busy time and per-link bytes, so measured
and predicted numbers sit side by side. Every output is checked against single-device execution.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import torch_threads
from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import OpGraph, dtype_from_name
from edgeweave.plan.ir import Plan
from edgeweave.runtime.power import PowerMeter, find_sensors, measured_energy, probe
from edgeweave.runtime.session import Session, SessionOptions
from edgeweave.sim.simulator import steady_throughput

# fp32 tolerance: with equal thread counts split execution is bit-exact; a source device that
# computes with more threads than the reference sums in another order (differences ~1e-5).
RTOL = ATOL = 1e-4


@dataclass
class RunConfig:
    requests: int = 20
    warmup: int = 2
    single: int = 3
    seed: int = 0
    options: SessionOptions | None = None
    trace: Path | None = None
    timeline: Path | None = None
    rate_per_s: float | None = None  # a camera stream: frames arrive at this rate (None: all at once)
    # re-planning on failures (and on measured bandwidth, see ResilienceOptions.adapt): the
    # caller's planner, `replan(cluster) -> Plan`; None runs the plan as it is
    replan: Any = None
    resilience: Any = None  # runtime.resilient.ResilienceOptions
    # where generated requests are drawn from, [low, high) (the model's --input-range); None: standard
    # normal floats, all uint8 values, token ids below 30522
    input_range: tuple[float, float] | None = None


def no_recovery() -> dict[str, Any]:
    """The run JSON's `recovery` block of a run without a planner to re-plan with (the block is
    always present, so that tools reading runs need no special case)."""
    return {
        "enabled": False,
        "failures": [],
        "replans": [],
        "replayed": 0,
        "recovery_s": [],
        "plan_cache": {"hits": 0, "misses": 0},
        "estimates": {},
        "no_plan": None,
        "marks": [],
    }


def make_inputs(
    graph: OpGraph, count: int, seed: int, vocab: int = 30522, value_range: tuple[float, float] | None = None
) -> list[torch.Tensor]:
    """Deterministic inputs of the graph's shape and dtype (token ids for integer inputs), drawn
    from [low, high) of `value_range` when given (a model's ids must stay below its vocabulary)."""
    dtype = dtype_from_name(graph.input_dtype)
    out = []
    for k in range(count):
        gen = torch.Generator().manual_seed(seed * 100_003 + k)
        if value_range is not None:
            low, high = value_range
            if dtype.is_floating_point:
                out.append(torch.rand(graph.input_shape, generator=gen).mul_(high - low).add_(low).to(dtype))
            elif dtype == torch.bool:
                out.append(torch.randint(0, 2, graph.input_shape, generator=gen).bool())
            else:
                out.append(torch.randint(int(low), int(high), graph.input_shape, generator=gen, dtype=dtype))
        elif dtype.is_floating_point:
            out.append(torch.randn(graph.input_shape, generator=gen, dtype=dtype))
        elif dtype == torch.uint8:  # camera pixels
            out.append(torch.randint(0, 256, graph.input_shape, generator=gen, dtype=dtype))
        else:
            out.append(torch.randint(0, vocab, graph.input_shape, generator=gen, dtype=dtype))
    return out


def run_plan(
    plan: Plan,
    cluster: Cluster,
    graph: OpGraph,
    weights: dict[str, torch.Tensor],
    config: RunConfig,
    netns: Any = None,
    progress=None,
) -> dict[str, Any]:
    """Deploy, warm up, time single requests, stream `config.requests`, verify; returns the run JSON.

    The source device runs in this process; like every worker it computes with one torch thread.
    """
    with torch_threads(1):
        return _run_plan(plan, cluster, graph, weights, config, netns, progress)


def _run_plan(plan, cluster, graph, weights, config, netns, progress) -> dict[str, Any]:
    inputs = make_inputs(
        graph, config.warmup + config.single + config.requests, config.seed, value_range=config.input_range
    )
    warm, single, stream = (
        inputs[: config.warmup],
        inputs[config.warmup : config.warmup + config.single],
        inputs[config.warmup + config.single :],
    )
    started = time.perf_counter()
    with _open_session(plan, cluster, graph, weights, config, netns) as session:
        startup_s = time.perf_counter() - started
        session.infer_many(warm)
        session.collect_events()
        single_lat = []
        outputs = []
        first_single = session.next_request
        for x in single:
            t0 = time.perf_counter()
            outputs.append(session.infer(x))
            single_lat.append(time.perf_counter() - t0)
        single_events = session.collect_events()  # priced request by request (energy per inference)
        single_windows = [
            (r, session.submitted[r], session.results[r][1])
            for r in range(first_single, session.next_request)
            if r in session.results
        ]
        first_id = session.next_request
        t_stream = time.time()
        meter = PowerMeter(find_sensors())  # the host's real energy, where it has a sensor
        with meter:
            outputs += session.infer_many(stream, progress=progress, rate_per_s=config.rate_per_s)
        events = session.collect_events()
        lat = session.latencies()
        stream_ids = [r for r in range(first_id, session.next_request) if r in session.results]  # replays: new ids
        finish = sorted(session.results[r][1] for r in stream_ids)
        recovery = session.report() if config.replan is not None else no_recovery()
    errors, close = _errors(graph, weights, single + stream, outputs)
    stream_lat = sorted(lat[r] for r in stream_ids)
    makespan = finish[-1] - t_stream if finish else 0.0
    result = {
        "strategy": plan.strategy,
        "objective": plan.objective,
        "model": plan.model,
        "requests": len(stream),
        "rate_per_s": config.rate_per_s,
        "correct": close,
        "max_abs_err": max(errors),
        "latency_s": {"p50": _pct(stream_lat, 50), "p95": _pct(stream_lat, 95)},
        "single_latency_s": statistics.median(single_lat),
        "throughput_per_s": steady_throughput([f - t_stream for f in finish], makespan),
        "predicted": plan.predicted,
        "startup_s": startup_s,
        "makespan_s": makespan,
        **usage(events, plan, t_stream, makespan),
    }
    stream_events = [e for e in events if e["start"] >= t_stream - 1e-3]
    result.update(
        measured_energy(
            cluster,
            plan.devices,
            plan.source,
            single_windows,
            single_events,
            stream_events,
            (t_stream, t_stream + makespan),
            len(stream),
        )
    )
    result["measured_power"] = {**probe(), "host_energy_j": meter.joules, "seconds": meter.seconds}
    result["recovery"] = recovery
    if config.trace or config.timeline:
        from edgeweave.trace import draw_timeline, task_labels, write_trace

        shifted = [
            {**e, "start": e["start"] - t_stream, "end": e["end"] - t_stream}
            | ({"arrival": e["arrival"] - t_stream} if e.get("arrival") is not None else {})
            for e in stream_events
        ]  # every time relative to the stream's start, arrivals too (else the PNG spans decades)
        if config.trace:
            config.trace.parent.mkdir(parents=True, exist_ok=True)
            write_trace(
                shifted, config.trace, name=f"{plan.model} {plan.strategy} (measured)", labels=task_labels(plan)
            )
            if recovery["marks"]:
                from edgeweave.runtime.resilient import add_marks

                add_marks(config.trace, recovery["marks"], t_stream)
            result["trace"] = str(config.trace)
        if config.timeline:
            config.timeline.parent.mkdir(parents=True, exist_ok=True)
            draw_timeline(
                shifted, config.timeline, title=f"{plan.model} {plan.strategy}: measured, {len(stream)} requests"
            )
            result["timeline"] = str(config.timeline)
    return result


def _open_session(plan, cluster, graph, weights, config: RunConfig, netns):
    """A plain Session, or with `config.replan` one that re-plans on failures and bandwidth."""
    if config.replan is None:
        return Session(cluster, plan, graph, weights, config.options, netns=netns)
    from edgeweave.runtime.resilient import ResilientSession

    return ResilientSession(cluster, plan, graph, weights, config.replan, config.options, config.resilience, netns)


def _errors(graph: OpGraph, weights, inputs, outputs) -> tuple[list[float], bool]:
    """Max abs error of each output against single-device execution, and whether all are within fp32 tolerance."""
    runner = GraphRunner(graph, weights)
    refs = [runner.run(x) for x in inputs]
    # in float64: integer outputs (a uint8 label map) would wrap around when subtracted as they are
    pairs = [(y.to(torch.float64), r.to(torch.float64)) for y, r in zip(outputs, refs, strict=True)]
    errors = [float((y - r).abs().max()) if y.numel() else 0.0 for y, r in pairs]
    close = all(torch.allclose(y, r, rtol=RTOL, atol=ATOL) for y, r in pairs)
    return errors, close


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def usage(events: list[dict[str, Any]], plan: Plan, t0: float, makespan: float) -> dict[str, Any]:
    """Per-device compute/idle and per-link bytes over the stream, from the measured timeline."""
    devices = {d: {"busy_s": 0.0, "compute_s": 0.0, "tasks": 0} for d in plan.devices}
    links: dict[str, dict[str, float]] = defaultdict(lambda: {"bytes": 0, "transfers": 0, "busy_s": 0.0})
    for e in events:
        if e["start"] < t0 - 1e-3:
            continue
        name = e["resource"].split(":", 1)[1]
        if e["kind"] == "compute":
            d = devices.setdefault(name, {"busy_s": 0.0, "compute_s": 0.0, "tasks": 0})
            d["busy_s"] += e["end"] - e["start"]
            d["compute_s"] += e.get("compute_s", e["end"] - e["start"])
            d["tasks"] += 1
            planned = e.get("planned_s")
            if planned and e["end"] - e["start"] > 1.05 * planned + 1e-3:
                d["overruns"] = d.get("overruns", 0) + 1  # the host was too busy to emulate this device
        else:
            link = links[name]
            link["bytes"] += e["bytes"]
            link["transfers"] += 1
            link["busy_s"] += e["end"] - e["start"]
    for d in devices.values():
        d["idle_s"] = max(0.0, makespan - d["busy_s"])
        d["utilisation"] = d["busy_s"] / makespan if makespan > 0 else 0.0
    return {"devices": devices, "links": dict(links)}
