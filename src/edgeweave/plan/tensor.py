"""The `tensor` baseline: every splittable layer split across devices, gathered after each layer.

This is classic intra-layer (tensor / spatial) parallelism as in MoDNN, DeepThings and CoEdge,
kept as a baseline for `hybrid`: it shows what splitting costs when every layer's result must be
reassembled before the next one starts.

- A *layer* is one heavy local operator (convolution, pooling, linear, layer norm) together with
  the cheap per-position operators that follow it (batch norm, activations, residual adds,
  reshapes) for as long as the run stays a valid segment (`make_segment`). Fusing them is what
  every tensor-parallel runtime does; splitting a lone ReLU and gathering it again would only add
  transfers. A layer is split along rows of the feature map (tokens of a sequence), else columns.
- Everything else (barriers: global pooling, flatten, attention, heads, and local operators that
  do not follow a heavy one) runs whole on the source.
- The source is the gathering device: for each layer it sends every helper the input band it
  needs (halo included), computes its own band, and receives the helpers' output bands. The
  next layer starts only when the whole output is back on the source. No streaming in chunks:
  that is what `hybrid` adds.
- Shares are chosen per layer to minimise that layer's time under the cost model (the
  simulator's rules: each link direction and each device serves one task at a time), not just
  in proportion to speed: on a slow link a helper whose band costs more to ship than to compute
  locally gets no rows. Two devices: every split row is tried; more: the shares that make every
  device's band arrive at the same time, then a local search on the exact layer time.
- Memory: a helper takes part only if it holds the weights of every split layer (plus the
  largest activation); the source computes everything else, so its fit is only reported
  (`cost_model.fits`), like the `local` baseline.
- The objective is ignored: with a gather after every layer there is nothing to pipeline, so
  the plan always minimises each layer's latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.graph.locality import base
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import Segment, make_segment, own_bands
from edgeweave.plan.band import (
    BandSchedule,
    SegmentCost,
    balanced_rows,
    band_compute,
    band_input,
    band_output,
    joint_latency,
    local_search,
)
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import ComputeTask, Plan, TransferTask

HEAVY = {"conv2d", "max_pool2d", "avg_pool2d", "linear", "layer_norm"}


@dataclass
class Layer:
    """A split layer: its segment, how many rows each device owns, and its time under the cost model."""

    segment: Segment
    axis: str
    rows: list[int]  # per device of `devices`, in band order (the source first)
    latency_s: float
    schedules: list[BandSchedule | None]


def find_layers(graph: OpGraph) -> list[tuple[int, int, str]]:
    """(first, last, axis) of every layer: a heavy local node plus the local nodes it can absorb."""
    layers, i, n = [], 0, len(graph.nodes)
    while i < n:
        axis = next((a for a in ("rows", "cols") if make_segment(graph, i, i, a) is not None), None)
        if axis is None or base(graph.nodes[i].op)[0] not in HEAVY:
            i += 1
            continue
        last = i
        while (
            last + 1 < n
            and base(graph.nodes[last + 1].op)[0] not in HEAVY
            and make_segment(graph, i, last + 1, axis) is not None
        ):
            last += 1
        layers.append((i, last, axis))
        i = last + 1
    return layers


def _helpers(pm: PipelineModel, profile: Profile, layers: list[tuple[int, int, str]]) -> list[int]:
    """Devices other than the source that hold the weights of every split layer (and its largest activation)."""
    nodes = [i for first, last, _ in layers for i in range(first, last + 1)]
    need = int(sum(pm.params[i] for i in nodes)) + int(max((pm.out_bytes[i] for i in nodes), default=0))
    return [d for d in range(pm.num_devices) if d != pm.source and need <= int(pm.memory[d])]


def split_layer(cost: SegmentCost, pm: PipelineModel, devices: list[int]) -> tuple[float, list[int], list]:
    """Rows per device minimising the layer's time (bands sent, computed, gathered on the source)."""
    seg = cost.segment
    extent = seg.extent(seg.outputs[-1])
    memo: dict[tuple[int, ...], tuple[float, list]] = {}

    def evaluate(rows: tuple[int, ...]) -> tuple[float, list]:
        if rows not in memo:
            owns = own_bands(seg, [r / extent for r in rows])
            memo[rows] = joint_latency(cost, pm, devices, owns, [1] * len(devices), 0.0, pm.source)
        return memo[rows]

    whole = pm.compute(seg.first, seg.last + 1, pm.source)  # the source runs the layer as plain nodes
    if len(devices) == 1:
        return whole, [extent], [None]
    if len(devices) == 2:
        best = min(((r, extent - r) for r in range(extent)), key=lambda rows: evaluate(rows)[0])
    else:
        best = local_search(evaluate, _balanced(cost, pm, devices, extent))
    lat, scheds = evaluate(best)
    if lat >= whole:  # band tasks cost more per node than a plain run: keep the layer whole
        return whole, [extent] + [0] * (len(devices) - 1), [None] * len(devices)
    return lat, list(best), scheds


def _balanced(cost: SegmentCost, pm: PipelineModel, devices: list[int], extent: int) -> tuple[int, ...]:
    """Rows such that every device's band reaches the source at about the same time (a seed for the
    search). Links to different helpers are separate resources, so a layer's time is the latest
    device's arrival."""
    seg = cost.segment
    memo: dict[tuple[int, int], float] = {}

    def ready(dev: int, rows: int) -> float:
        if rows == 0:
            return 0.0
        if (dev, rows) not in memo:
            own = own_bands(seg, [rows, extent - rows])[0]
            lat, _ = joint_latency(cost, pm, [dev], [own], [1], 0.0, pm.source)
            memo[dev, rows] = lat
        return memo[dev, rows]

    return tuple(balanced_rows(devices, extent, ready, 0.0))


def plan_tensor(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """Split every layer across the source and the helpers that fit; gather on the source after each."""
    if len(profile.nodes) != len(graph.nodes) or any(
        p.name != g.name for p, g in zip(profile.nodes, graph.nodes, strict=True)
    ):
        raise UserError("--strategy tensor: the profile's nodes are not the model's graph nodes; profile this model")
    pm = PipelineModel.build(profile, cluster)
    spans = find_layers(graph)
    devices = [pm.source, *_helpers(pm, profile, spans)]
    layers = []
    for first, last, axis in spans:
        seg = make_segment(graph, first, last, axis)
        lat, rows, scheds = split_layer(SegmentCost(seg, profile), pm, devices)
        layers.append(Layer(seg, axis, rows, lat, scheds))
    return _build(profile, cluster, pm, devices, layers, objective)


def _build(
    profile: Profile, cluster: Cluster, pm: PipelineModel, devices: list[int], layers: list[Layer], objective: str
) -> Plan:
    """The task graph: whole runs on the source; per split layer, sends, band computes and gathers."""
    names, src = pm.devices, pm.devices[pm.source]
    tasks: list[ComputeTask | TransferTask] = []
    frontier: list[str] = []  # tasks after which everything computed so far is whole on the source
    pending: list[int] = []  # nodes to run whole on the source, not yet emitted
    used = {pm.source}
    latency = 0.0

    def flush() -> None:
        nonlocal frontier, latency
        if pending:
            tid = f"w{pending[0]}"
            time_s = pm.nodes_time(pending, pm.source)
            tasks.append(ComputeTask(id=tid, device=src, nodes=list(pending), after=frontier, time_s=time_s))
            frontier, latency = [tid], latency + time_s
            pending.clear()

    cursor = 0
    for layer in layers:
        seg = layer.segment
        pending.extend(range(cursor, seg.first))
        cursor = seg.last + 1
        if layer.rows[0] == sum(layer.rows):  # nothing worth sending: the source keeps the layer
            pending.extend(seg.nodes)
            continue
        flush()
        region = {"axis": layer.axis, "segment": [seg.first, seg.last]}
        sends, computes, gathers, done = [], [], [], []
        for k, (dev, sched) in enumerate(zip(devices, layer.schedules, strict=True)):
            if sched is None:
                continue
            used.add(dev)
            deps = list(frontier)
            if dev != pm.source:
                sends.append(band_input(f"L{seg.first}.in{k}", src, names[dev], sched, 0, frontier, region))
                deps = [sends[-1].id]
            speed = pm.span_speed(seg.first, seg.last, dev)
            compute = band_compute(f"L{seg.first}.band{k}", names[dev], seg, sched, 0, speed, deps, region)
            computes.append(compute)
            if dev == pm.source:
                done.append(compute.id)
                continue
            gathers.append(band_output(f"L{seg.first}.out{k}", names[dev], src, seg, sched, 0, compute.id, region))
            done.append(gathers[-1].id)
        tasks.extend([*sends, *computes, *gathers])  # every send queued before the source computes its band
        frontier, latency = done, latency + layer.latency_s
    pending.extend(range(cursor, len(profile.nodes)))
    flush()
    split = [layer for layer in layers if layer.rows[0] != sum(layer.rows)]
    params = int(pm.params.sum()) + int(pm.out_bytes.max())
    return Plan(
        strategy="tensor",
        objective=objective,
        model=profile.model,
        source=src,
        devices=[names[d] for d in devices if d in used],
        num_nodes=len(profile.nodes),
        input_bytes=profile.input_bytes,
        output_bytes=profile.output_bytes,
        tasks=tasks,
        cluster=cluster.to_dict(),
        cost_model={
            "latency_s": latency,
            "fits": params <= int(pm.memory[pm.source]),
            "layers": [
                {
                    "segment": [layer.segment.first, layer.segment.last],
                    "axis": layer.axis,
                    "rows": {names[d]: r for d, r in zip(devices, layer.rows, strict=True)},
                    "latency_s": layer.latency_s,
                }
                for layer in layers
            ],
        },
        notes=[
            f"tensor: {len(split)} of {len(layers)} layers split across "
            + ", ".join(names[d] for d in devices)
            + f"; gathered on {src} after each (objective ignored: a gather per layer leaves nothing to pipeline)"
        ],
    )
