"""Turn a placement into a `Plan`, and cost any placement under the design notes' model.

A placement is an ordered list of parts `(device index, node indices)`; a pipeline's parts are
contiguous stages, a DAG cut's parts need not be. Like the pipeline cost model, the boundary
before part k carries every value produced before it (the model input included) that part k or
a later part reads: skip connections travel stage to stage.

As in the pipeline cost model, a boundary costs one request latency + bytes / bandwidth
(`transfer_in_s`, summed into `latency_s`) and holds its link bytes / bandwidth (`link_in_s`,
which the bottleneck counts): latency is propagation and does not occupy a link.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import INPUT, Profile
from edgeweave.plan.costmodel import PipelineModel, Stage
from edgeweave.plan.ir import ComputeTask, Plan, StageRef, TransferTask

Placement = list[tuple[int, list[int]]]


def stages_to_placement(stages: list[Stage]) -> Placement:
    return [(s.device, list(range(s.start, s.end))) for s in stages]


@dataclass
class PlacementCosts:
    compute_s: list[float]
    transfer_in_s: list[float]  # latency + bytes / bandwidth
    transfer_in_bytes: list[int]
    crossing: list[list[str]]
    output_s: float  # latency + bytes / bandwidth
    memory_bytes: list[int]
    fits: bool
    bottleneck_s: float  # max of compute, link_in_s and output_link_s
    latency_s: float  # sum of compute, transfer_in_s and output_s
    link_in_s: list[float]  # occupancy of each incoming link: bytes / bandwidth
    output_link_s: float  # occupancy of the output's link back to the source

    @property
    def throughput_per_s(self) -> float:
        return 1.0 / self.bottleneck_s if self.bottleneck_s > 0 else float("inf")

    def as_dict(self) -> dict:
        return {
            "latency_s": self.latency_s,
            "bottleneck_s": self.bottleneck_s,
            "throughput_per_s": self.throughput_per_s,
            "fits": self.fits,
        }


def crossing_values(profile: Profile, placement: Placement) -> list[list[str]]:
    """Values that must be on part k's device when it starts, sent by part k-1 (or the source)."""
    part_of: dict[str, int] = {INPUT: -1}
    for k, (_, nodes) in enumerate(placement):
        for i in nodes:
            part_of[profile.nodes[i].name] = k
    if len(part_of) != len(profile.nodes) + 1:
        raise ValueError("a placement must give every node to exactly one part")
    last_reader: dict[str, int] = {}
    for node in profile.nodes:
        for ref in node.inputs:
            reader = part_of[node.name]
            if part_of[ref] > reader:
                raise ValueError(f"node {node.name} runs before its input {ref}")
            last_reader[ref] = max(last_reader.get(ref, -1), reader)
    order = [INPUT] + [n.name for n in profile.nodes]
    return [[v for v in order if v in last_reader and part_of[v] < k <= last_reader[v]] for k in range(len(placement))]


def evaluate_placement(profile: Profile, pm: PipelineModel, placement: Placement) -> PlacementCosts:
    """Costs under the design notes' model; equals `pm.evaluate` for contiguous stages."""
    crossing = crossing_values(profile, placement)
    compute, t_in, occ_in, b_in, memory = [], [], [], [], []
    prev = pm.source
    for (dev, nodes), values in zip(placement, crossing, strict=True):
        compute.append(pm.nodes_time(nodes, dev))  # the device's own profile, if it has one
        nbytes = sum(profile.value_bytes(v) for v in values)
        b_in.append(nbytes if prev != dev else 0)
        occ_in.append(pm.link_time(prev, dev, nbytes))
        t_in.append(0.0 if prev == dev else float(pm.latency[prev, dev] + nbytes / pm.bandwidth[prev, dev]))
        memory.append(int(pm.params[nodes].sum() + pm.out_bytes[nodes].max()))
        prev = dev
    last = placement[-1][0]
    output = (
        0.0
        if last == pm.source
        else float(pm.latency[last, pm.source] + profile.output_bytes / pm.bandwidth[last, pm.source])
    )
    output_link = pm.link_time(last, pm.source, profile.output_bytes)
    fits = all(m <= pm.memory[d] for m, (d, _) in zip(memory, placement, strict=True))
    bottleneck = max([*compute, *occ_in, output_link])
    latency = sum([*compute, *t_in, output])
    return PlacementCosts(compute, t_in, b_in, crossing, output, memory, fits, bottleneck, latency, occ_in, output_link)


def build_plan(
    profile: Profile,
    cluster: Cluster,
    pm: PipelineModel,
    placement: Placement,
    strategy: str,
    objective: str,
    notes: list[str] | None = None,
) -> Plan:
    """The task graph of one request for a placement, with the cost model's prediction attached."""
    costs = evaluate_placement(profile, pm, placement)
    tasks: list[ComputeTask | TransferTask] = []
    prev_dev, prev_task = pm.devices[pm.source], None
    for k, ((dev, nodes), values) in enumerate(zip(placement, costs.crossing, strict=True)):
        name = pm.devices[dev]
        after = [prev_task] if prev_task else []
        if name != prev_dev and values:
            tid = f"x{k}"
            tasks.append(
                TransferTask(
                    id=tid, src=prev_dev, dst=name, values=values, bytes=costs.transfer_in_bytes[k], after=after
                )
            )
            after = [tid]
        tid = f"c{k}"
        tasks.append(
            ComputeTask(
                id=tid,
                device=name,
                nodes=sorted(nodes),
                after=after,
                time_s=costs.compute_s[k],
                memory_bytes=costs.memory_bytes[k],
            )
        )
        prev_dev, prev_task = name, tid
    if prev_dev != cluster.source:
        tasks.append(
            TransferTask(
                id="xout",
                src=prev_dev,
                dst=cluster.source,
                values=[profile.nodes[-1].name],
                bytes=profile.output_bytes,
                after=[prev_task],
            )
        )
    contiguous = all(nodes == list(range(nodes[0], nodes[-1] + 1)) for _, nodes in placement)
    stages = (
        [StageRef(device=pm.devices[d], first=nodes[0], last=nodes[-1]) for d, nodes in placement]
        if contiguous
        else None
    )
    plan_notes = list(notes or [])
    if not costs.fits:
        plan_notes.append(
            "does not fit in memory: "
            + ", ".join(
                f"{pm.devices[d]} needs {m / 2**20:.0f} MiB of {pm.memory[d] / 2**20:.0f} MiB"
                for m, (d, _) in zip(costs.memory_bytes, placement, strict=True)
                if m > pm.memory[d]
            )
        )
    return Plan(
        strategy=strategy,
        objective=objective,
        model=profile.model,
        source=cluster.source,
        devices=list(dict.fromkeys([cluster.source, *(pm.devices[d] for d, _ in placement)])),
        num_nodes=len(profile.nodes),
        input_bytes=profile.input_bytes,
        output_bytes=profile.output_bytes,
        tasks=tasks,
        stages=stages,
        cost_model={
            **costs.as_dict(),
            "compute_s": costs.compute_s,
            "transfer_in_s": costs.transfer_in_s,
            "output_s": costs.output_s,
            "link_in_s": costs.link_in_s,
            "output_link_s": costs.output_link_s,
            "memory_bytes": costs.memory_bytes,
        },
        cluster=cluster.to_dict(),
        notes=plan_notes,
    )
