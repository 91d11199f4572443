"""The hybrid planner (`--strategy hybrid`): split local operators across devices by output band.

A hybrid plan is: a layer-wise prefix on the source (where the input is), one *segment* of local
operators split into bands across several devices (each gets exactly the input band it needs,
halo included, and computes its own band of the segment's outputs), a gather of the bands on the
device that runs the layer-wise suffix (global pooling, heads, attention), and the result back
to the source. Shares are chosen so every device finishes its band at the same time (binary
search on that time; the halo makes a band's cost non-linear but monotone in its size).

The best layer-wise plan is always a candidate, so hybrid is never worse than it under the
cost model; the final choice is made on the simulator's latency of the actual task graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import Segment, input_axis, input_bands, local_runs, make_segment, needs, own_bands
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import ComputeTask, Plan, TransferTask


@dataclass
class SplitChoice:
    first: int
    last: int
    axis: str
    devices: list[int]  # device indices, the source first
    ratios: list[float]
    suffix_device: int
    latency_s: float


class _SegmentCost:
    """Fast per-band cost of one segment: compute seconds (at speed 1) and bytes in and out."""

    def __init__(self, segment: Segment, profile: Profile):
        self.segment = segment
        self.times = {profile.nodes[i].name: profile.nodes[i].time_s for i in segment.nodes}
        self.out_bytes = {profile.nodes[i].name: profile.nodes[i].out_bytes for i in segment.nodes}
        self.value_bytes = profile.value_bytes
        self._cache: dict[tuple, tuple[float, int, int]] = {}

    def band(self, own: dict) -> tuple[float, int, int]:
        """(compute seconds at speed 1, input bytes it must receive, output bytes it produces)."""
        key = tuple(sorted(own.items()))
        if key not in self._cache:  # balancing asks for the same band sizes again and again
            self._cache[key] = self._band(own)
        return self._cache[key]

    def _band(self, own: dict) -> tuple[float, int, int]:
        seg = self.segment
        need = needs(seg, own)
        work = sum(self.times[v] * (b - a) / seg.loc.shapes[v][seg.axis(v)] for v, (a, b) in need.items())
        bytes_in = 0
        for v, (a, b) in input_bands(seg, own).items():
            full = self.value_bytes(v)
            axis_len = _axis_extent(seg, v)
            bytes_in += full * (b - a) // axis_len if axis_len else full
        bytes_out = sum(self.out_bytes[v] * (b - a) // seg.extent(v) for v, (a, b) in own.items())
        return work, bytes_in, bytes_out


def _axis_extent(seg: Segment, value: str) -> int:
    """Extent of the axis along which a value entering the segment is cut into bands."""
    return seg.loc.shapes[value][input_axis(seg, value)]


def _transfer(pm: PipelineModel, a: int, b: int, nbytes: int) -> float:
    return 0.0 if a == b or nbytes == 0 else float(pm.latency[a, b] + nbytes / pm.bandwidth[a, b])


def _balance(
    cost: _SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    start_time: float,
) -> tuple[list[float], list[float | None]]:
    """Shares so that all devices finish their bands together (no streaming: receive, then compute).

    For a finish time T, each device can take the largest band it completes by T; T is the
    smallest time at which the bands cover the whole output. Bands are whole rows, so the search
    is over integers per device.
    """
    seg = cost.segment
    anchor = seg.outputs[-1]
    extent = seg.extent(anchor)

    def finish(dev: int, rows: int) -> float:
        if rows == 0:
            return 0.0
        ratios = [rows, extent - rows] if rows < extent else [1.0]
        own = own_bands(seg, ratios)[0] if rows < extent else {v: (0, seg.extent(v)) for v in seg.outputs}
        work, b_in, _ = cost.band(own)
        t_in = _transfer(pm, pm.source, dev, b_in)
        return start_time + t_in + work / float(pm.speed[dev])

    def rows_by(dev: int, T: float) -> int:
        lo, hi = 0, extent
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if finish(dev, mid) <= T:
                lo = mid
            else:
                hi = mid - 1
        return lo

    lo_t = start_time
    hi_t = min(finish(d, extent) for d in devices)
    for _ in range(40):
        mid = (lo_t + hi_t) / 2
        if sum(rows_by(d, mid) for d in devices) >= extent:
            hi_t = mid
        else:
            lo_t = mid
    rows = [rows_by(d, hi_t) for d in devices]
    excess = sum(rows) - extent
    for k in range(len(rows) - 1, -1, -1):  # trim the surplus from the last devices
        cut = min(excess, rows[k])
        rows[k] -= cut
        excess -= cut
    ratios = [r / extent for r in rows]
    owns = own_bands(seg, ratios)
    finishes = []
    for dev, own in zip(devices, owns, strict=True):  # the exact finish of the bands actually chosen
        if any(b > a for a, b in own.values()):
            work, b_in, _ = cost.band(own)
            finishes.append(start_time + _transfer(pm, pm.source, dev, b_in) + work / float(pm.speed[dev]))
        else:
            finishes.append(None)
    return ratios, finishes


def candidate_segments(graph: OpGraph, max_per_run: int = 24) -> list[tuple[int, int, str]]:
    """Segments worth trying: each local run, ended where only one value leaves it (block ends)."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for ref in node.inputs:
            last_use[ref] = i
    index = graph.index()
    out = []
    for axis in ("rows", "cols"):
        for first, last in local_runs(graph, axis):
            ends, live = [], 0
            for i in range(first, last + 1):  # values produced in [first, i] still read after i
                live += 1 if last_use.get(graph.nodes[i].name, len(graph.nodes)) > i else 0
                live -= sum(1 for r in set(graph.nodes[i].inputs) if last_use.get(r) == i and index.get(r, -1) >= first)
                if live == 1:
                    ends.append(i)
            step = max(1, len(ends) // max_per_run)
            for end in [*ends[::step], last]:
                out.append((first, end, axis))
    return sorted(set(out))


def plan_hybrid(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """The best hybrid plan under the cost model (latency), or the best layer-wise plan if that is better."""
    from edgeweave.plan.strategies import make_plan
    from edgeweave.sim.simulator import simulate

    pm = PipelineModel.build(profile, cluster)
    best_plan, best_latency = None, math.inf
    for strategy in ("local", "offload", "neurosurgeon", "dads"):
        try:
            candidate = make_plan(profile, cluster, strategy, "latency")
        except Exception:  # noqa: BLE001 - a baseline without an answer (e.g. nothing fits) is skipped
            continue
        lat = simulate(candidate, requests=1).single_latency_s
        if lat < best_latency:
            best_plan, best_latency = candidate, lat
    best_split = None
    others = [d for d in range(pm.num_devices) if d != pm.source]
    for first, last, axis in candidate_segments(graph):
        seg = make_segment(graph, first, last, axis)
        if seg is None or any(profile.nodes[i].name != graph.nodes[i].name for i in (first, last)):
            continue
        cost = _SegmentCost(seg, profile)
        prefix = float(pm.times[:first].sum()) / float(pm.speed[pm.source])
        for helpers in ([d] for d in others):
            devices = [pm.source, *helpers]
            ratios, finishes = _balance(cost, pm, devices, prefix)
            for suffix in devices:
                lat = _split_latency(profile, pm, cost, devices, ratios, finishes, last, suffix)
                if lat < best_latency * 0.999 and (best_split is None or lat < best_split.latency_s):
                    best_split = SplitChoice(first, last, axis, devices, ratios, suffix, lat)
    if best_split is None:
        best_plan.notes.append(f"hybrid: no band split beats the best layer-wise plan here; using {best_plan.strategy}")
        best_plan.strategy = "hybrid"
        return best_plan
    return build_hybrid_plan(profile, graph, cluster, pm, best_split, objective)


def _split_latency(profile, pm, cost, devices, ratios, finishes, last, suffix) -> float:
    """Every device sends its bands to the suffix device as soon as it is done with them."""
    seg = cost.segment
    ready = 0.0
    for dev, own, done in zip(devices, own_bands(seg, ratios), finishes, strict=True):
        if done is not None:
            ready = max(ready, done + (_transfer(pm, dev, suffix, cost.band(own)[2]) if dev != suffix else 0.0))
    tail = float(pm.times[last + 1 :].sum()) / float(pm.speed[suffix])
    back = _transfer(pm, suffix, pm.source, profile.output_bytes)
    return ready + tail + back


def build_hybrid_plan(
    profile: Profile, graph: OpGraph, cluster: Cluster, pm: PipelineModel, choice: SplitChoice, objective: str
) -> Plan:
    """The task graph of one request for a split choice (bands as regions on tasks and transfers)."""
    seg = make_segment(graph, choice.first, choice.last, choice.axis)
    cost = _SegmentCost(seg, profile)
    names = pm.devices
    src = names[pm.source]
    tasks: list[ComputeTask | TransferTask] = []
    after_prefix: list[str] = []
    if choice.first > 0:
        nodes = list(range(0, choice.first))
        tasks.append(
            ComputeTask(
                id="pre",
                device=src,
                nodes=nodes,
                after=[],
                time_s=float(pm.times[nodes].sum()) / float(pm.speed[pm.source]),
            )
        )
        after_prefix = ["pre"]
    owns = own_bands(seg, choice.ratios)
    region = {"axis": choice.axis, "segment": [seg.first, seg.last]}
    inputs_sent: dict[int, str] = {}
    for k, (dev, own) in enumerate(zip(choice.devices, owns, strict=True)):
        if dev == pm.source or not any(b > a for a, b in own.values()):
            continue
        bands_in = input_bands(seg, own)
        tid = f"in{k}"  # sent before the source starts its own band, so the helper starts early
        tasks.append(
            TransferTask(
                id=tid,
                src=src,
                dst=names[dev],
                values=sorted(bands_in),
                bytes=cost.band(own)[1],
                after=list(after_prefix),
                region={**region, "bands": {v: list(iv) for v, iv in bands_in.items()}},
            )
        )
        inputs_sent[k] = tid
    band_tasks = {}
    for k, (dev, own) in enumerate(zip(choice.devices, owns, strict=True)):
        if not any(b > a for a, b in own.values()):
            continue
        work = cost.band(own)[0]
        tid = f"band{k}"
        tasks.append(
            ComputeTask(
                id=tid,
                device=names[dev],
                nodes=list(seg.nodes),
                after=[inputs_sent[k]] if k in inputs_sent else list(after_prefix),
                time_s=work / float(pm.speed[dev]),
                region={**region, "own": {v: list(iv) for v, iv in own.items()}},
            )
        )
        band_tasks[k] = tid
    gathers = []
    suffix_name = names[choice.suffix_device]
    for k, (dev, own) in enumerate(zip(choice.devices, owns, strict=True)):
        if k not in band_tasks:
            continue
        if dev == choice.suffix_device:
            gathers.append(band_tasks[k])
            continue
        tid = f"out{k}"
        tasks.append(
            TransferTask(
                id=tid,
                src=names[dev],
                dst=suffix_name,
                values=list(seg.outputs),
                bytes=cost.band(own)[2],
                after=[band_tasks[k]],
                region={**region, "bands": {v: list(iv) for v, iv in own.items()}},
            )
        )
        gathers.append(tid)
    last_task = gathers
    if choice.last + 1 < len(profile.nodes):
        nodes = list(range(choice.last + 1, len(profile.nodes)))
        tasks.append(
            ComputeTask(
                id="post",
                device=suffix_name,
                nodes=nodes,
                after=gathers,
                time_s=float(pm.times[nodes].sum()) / float(pm.speed[choice.suffix_device]),
            )
        )
        last_task = ["post"]
    if suffix_name != src:
        tasks.append(
            TransferTask(
                id="xout",
                src=suffix_name,
                dst=src,
                values=[profile.nodes[-1].name],
                bytes=profile.output_bytes,
                after=last_task,
            )
        )
    plan = Plan(
        strategy="hybrid",
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
            "fits": True,
        },
        notes=[
            f"split nodes {seg.first}-{seg.last} by {choice.axis} across "
            + ", ".join(f"{names[d]} {100 * r:.0f}%" for d, r in zip(choice.devices, choice.ratios, strict=True))
        ],
    )
    return plan
