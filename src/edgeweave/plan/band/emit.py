"""Emission: a split choice becomes the task graph of one request (band steps as compute tasks
with a typed Region, input chunks and finished output rows as transfers), the one Plan IR that
the simulator and the runtime both read."""

from __future__ import annotations

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import Segment, make_segment
from edgeweave.plan.band.cost import MESSAGE_OVERHEAD_S
from edgeweave.plan.band.geometry import BandSchedule
from edgeweave.plan.band.search import SplitChoice
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import ComputeTask, Plan, TransferTask


def with_message_overhead(plan: Plan) -> Plan:
    """The same plan with MESSAGE_OVERHEAD_S on every transfer, so that layer-wise candidates and
    band splits are compared (and simulated) under the same per-message cost."""
    for task in plan.tasks:
        if task.kind == "transfer":
            task.overhead_s = MESSAGE_OVERHEAD_S
    return plan



def skipped_values(graph: OpGraph, first: int, last: int) -> list[str]:
    """Values made before node `first` (or the input) that a node after `last` reads: they skip
    the split segment, so the device that runs the suffix needs them from the source."""
    index = graph.index()
    skipped: dict[str, None] = {}
    for node in graph.nodes[last + 1 :]:
        for ref in node.inputs:
            if index.get(ref, -1) < first:
                skipped[ref] = None
    return list(skipped)


def skip_transfer(
    profile: Profile, graph: OpGraph, src: str, dst: str, first: int, last: int, after: list[str]
) -> TransferTask | None:
    """The transfer of `skipped_values` from the source to the suffix device, if there are any."""
    values = skipped_values(graph, first, last) if src != dst else []
    if not values:
        return None
    return TransferTask(
        id="xskip",
        src=src,
        dst=dst,
        values=values,
        bytes=sum(profile.value_bytes(v) for v in values),
        after=list(after),
        overhead_s=MESSAGE_OVERHEAD_S,
    )


def prefix_task(pm: PipelineModel, first: int) -> list[ComputeTask]:
    """The layer-wise prefix before a split, on the source (none when the split starts at the input)."""
    if first == 0:
        return []
    nodes = list(range(first))
    return [ComputeTask(id="pre", device=pm.devices[pm.source], nodes=nodes, time_s=pm.nodes_time(nodes, pm.source))]


def finish_split(
    profile: Profile,
    graph: OpGraph,
    pm: PipelineModel,
    tasks: list[ComputeTask | TransferTask],
    gathers: list[str],
    first: int,
    last: int,
    suffix_device: int,
) -> None:
    """The tail every split plan shares, appended to `tasks`: values that skip the split go to the
    suffix device (after every band message on their link: the suffix needs them last), the
    layer-wise suffix runs there once the bands are gathered, and the result returns to the source."""
    src, suffix_name = pm.devices[pm.source], pm.devices[suffix_device]
    after_prefix = ["pre"] if first > 0 else []
    skip = skip_transfer(profile, graph, src, suffix_name, first, last, after_prefix)
    if skip is not None:
        tasks.append(skip)
        gathers = [*gathers, skip.id]
    last_task = gathers
    if last + 1 < len(profile.nodes):
        nodes = list(range(last + 1, len(profile.nodes)))
        time_s = pm.nodes_time(nodes, suffix_device)
        post = ComputeTask(id="post", device=suffix_name, nodes=nodes, after=gathers, time_s=time_s)
        tasks.append(post)
        last_task = [post.id]
    if suffix_name != src:
        tasks.append(
            TransferTask(
                id="xout",
                src=suffix_name,
                dst=src,
                values=[profile.nodes[-1].name],
                bytes=profile.output_bytes,
                after=last_task,
                overhead_s=MESSAGE_OVERHEAD_S,
            )
        )


def band_input(
    task_id: str, src: str, dst: str, sched: BandSchedule, j: int, after: list[str], region: dict
) -> TransferTask:
    """The new input rows chunk j of a band needs, from the device holding them to `dst`."""
    return TransferTask(
        id=task_id,
        src=src,
        dst=dst,
        values=sorted(sched.sends[j]),
        bytes=sched.send_bytes[j],
        after=list(after),
        region={**region, "bands": {v: list(iv) for v, iv in sched.sends[j].items()}},
        overhead_s=MESSAGE_OVERHEAD_S,  # counted by joint_latency, so the simulator adds it too
    )


def band_compute(
    task_id: str, device: str, seg: Segment, sched: BandSchedule, j: int, speed: float, after: list[str], region: dict
) -> ComputeTask:
    """Step j of a band: the rows of the segment's nodes that the input received so far makes
    computable. The region names the device's whole band and the chunk count; the worker
    rebuilds the same steps from them (`step_geometry`) and runs them as a compiled program."""
    return ComputeTask(
        id=task_id,
        device=device,
        nodes=list(seg.nodes),
        after=list(after),
        time_s=sched.work_s[j] / speed,
        region={
            **region,
            "own": {v: list(iv) for v, iv in sched.own.items()},
            "chunks": sched.chunk_count,
            "step": j,
        },
    )


def band_output(
    task_id: str, src: str, dst: str, seg: Segment, sched: BandSchedule, j: int, compute_id: str, region: dict
) -> TransferTask:
    """Chunk j's output rows, to the device that gathers the bands."""
    return TransferTask(
        id=task_id,
        src=src,
        dst=dst,
        values=list(seg.outputs),
        bytes=sched.out_bytes[j],
        after=[compute_id],
        region={**region, "bands": {v: list(iv) for v, iv in sched.chunks[j].items()}},
        overhead_s=MESSAGE_OVERHEAD_S,
    )


def build_hybrid_plan(
    profile: Profile, graph: OpGraph, cluster: Cluster, pm: PipelineModel, choice: SplitChoice, objective: str
) -> Plan:
    """The task graph of one request for a split choice (bands as regions on tasks and transfers)."""
    seg = make_segment(graph, choice.first, choice.last, choice.axis)
    names = pm.devices
    src = names[pm.source]
    tasks: list[ComputeTask | TransferTask] = list(prefix_task(pm, choice.first))
    after_prefix = [t.id for t in tasks]
    region = {"axis": choice.axis, "segment": [seg.first, seg.last]}
    suffix_name = names[choice.suffix_device]
    gathers: list[str] = []
    sends: list[TransferTask] = []  # listed first: the source queues every chunk before computing its band
    for k, (dev, sched) in enumerate(zip(choice.devices, choice.schedules, strict=True)):
        if sched is None:
            continue
        prev_compute: list[str] = list(after_prefix)
        for j in range(len(sched.chunks)):
            deps = list(prev_compute)
            if sched.sends[j]:  # the new input rows this chunk needs, streamed ahead of its compute
                sends.append(band_input(f"in{k}.{j}", src, names[dev], sched, j, after_prefix, region))
                deps.append(sends[-1].id)
            speed = pm.span_speed(seg.first, seg.last, dev)
            compute = band_compute(f"band{k}.{j}", names[dev], seg, sched, j, speed, deps, region)
            tasks.append(compute)
            prev_compute = [compute.id]
            if dev == choice.suffix_device:
                gathers.append(compute.id)
                continue
            if not sched.chunks[j]:
                continue  # this step finished no output rows: nothing to send on
            tasks.append(band_output(f"out{k}.{j}", names[dev], suffix_name, seg, sched, j, compute.id, region))
            gathers.append(tasks[-1].id)
    first_band = len(tasks) - sum(1 for t in tasks if t.id.startswith(("band", "out")))
    tasks[first_band:first_band] = sends
    finish_split(profile, graph, pm, tasks, gathers, choice.first, choice.last, choice.suffix_device)
    chunks = max(
        (
            len(sc.chunks)
            for d, sc in zip(choice.devices, choice.schedules, strict=True)
            if sc is not None and d != pm.source
        ),
        default=0,
    )
    plan = Plan(
        strategy="hybrid",  # callers that use this builder for a baseline rename it
        objective=objective,
        model=profile.model,
        source=src,
        devices=list(dict.fromkeys([src, *(names[d] for d in choice.devices)])),
        num_nodes=len(profile.nodes),
        input_bytes=profile.input_bytes,
        output_bytes=profile.output_bytes,
        tasks=tasks,
        cluster=cluster.to_dict(),
        cost_model={
            "latency_s": choice.latency_s,
            "segment": [seg.first, seg.last],
            "axis": choice.axis,
            "ratios": choice.ratios,
            "chunks": chunks,
            "fits": True,
        },
        notes=[
            f"split nodes {seg.first}-{seg.last} by {choice.axis} across "
            + ", ".join(f"{names[d]} {100 * r:.0f}%" for d, r in zip(choice.devices, choice.ratios, strict=True))
            + (f"; helpers' input streamed in {chunks} chunks" if chunks > 1 else "")
        ],
    )
    return plan
