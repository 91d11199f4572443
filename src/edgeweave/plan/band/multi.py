"""Multi-segment splits: split, exchange halos, split again (issue 12, item 6).

A single split segment recomputes every halo from the frame. Deep in a network with a large
receptive field a band needs almost every input row, so a helper's band costs nearly the whole
frame on the link, and the source recomputes rows the helper computes too. Cutting the segment
into sub-segments, each split by the same shares, and sending each device only the boundary
rows its next band needs from its neighbours (a halo exchange), keeps every device's input to
its own share plus a thin halo. The price: one exchange (latency + message cost) per joint, and
a later sub-segment runs as one step once its whole input band is there (only the first one is
streamed as the frame arrives).

The planner prices a multi-segment split by simulating the task graph it emits, with the same
simulator every other plan is priced with, and adds joints greedily while they pay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.graph.locality import Interval
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import own_bands
from edgeweave.plan.band.cost import MESSAGE_OVERHEAD_S
from edgeweave.plan.band.emit import band_compute, band_input, finish_split, prefix_task
from edgeweave.plan.band.geometry import MultiGeometry, SegmentCost, axis_extent, live_counts, step_costs
from edgeweave.plan.band.search import SplitChoice
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import ComputeTask, Plan, Region, TransferTask

MAX_JOINTS = 3
MAX_CUT_CANDIDATES = 16
MAX_LIVE_AT_JOINT = 4  # values crossing a joint: each is a halo in every exchange message


@dataclass(frozen=True)
class MultiSplit:
    """Nodes first..last split by `axis` into sub-segments that end at `cuts` (and at `last`),
    every sub-segment cut by the same shares; the first streamed to helpers in `chunks`."""

    first: int
    last: int
    axis: str
    cuts: tuple[int, ...]  # the last node of every sub-segment but the last, ascending
    devices: tuple[int, ...]  # device indices, the source first
    ratios: tuple[float, ...]
    suffix_device: int
    chunks: int

    def bounds(self) -> list[tuple[int, int]]:
        starts = [self.first, *(c + 1 for c in self.cuts)]
        return list(zip(starts, [*self.cuts, self.last], strict=True))


def _nonempty(own: dict[str, Interval]) -> bool:
    return any(b > a for a, b in own.values())


def _finishing_step(steps: list[tuple[str, dict[str, Interval]]], value: str, hi: int) -> str:
    """The first step whose finished rows of `value` reach row `hi` (steps finish rows in order)."""
    for task_id, finished in steps:
        a, b = finished.get(value, (0, 0))
        if b > a and b >= hi:
            return task_id
    return steps[-1][0]


def build_multi_plan(
    profile: Profile,
    graph: OpGraph,
    cluster: Cluster,
    pm: PipelineModel,
    split: MultiSplit,
    objective: str,
    geometry: MultiGeometry | None = None,
    latency_s: float | None = None,
) -> Plan:
    """The task graph of one request for a multi-segment split.

    Per sub-segment every device computes its band as one step (the first sub-segment: in the
    input-driven steps of its streamed chunks); before it, each neighbour sends the rows of the
    earlier sub-segments' outputs that this band reads and the device did not compute itself.
    The bands of the values read after the split are gathered on `suffix_device`."""
    geometry = geometry or MultiGeometry(profile, graph)
    bounds = split.bounds()
    costs = [geometry.cost(a, b, split.axis) for a, b in bounds]
    if any(c is None for c in costs):
        raise ValueError(f"sub-segments {bounds} are not all local segments along {split.axis}")
    names = pm.devices
    src = names[pm.source]
    members = [(d, r) for d, r in zip(split.devices, split.ratios, strict=True) if r > 0]
    devices = [d for d, _ in members]
    ratios = [r for _, r in members]
    owns = [own_bands(c.segment, ratios) for c in costs]  # owns[k][p]: device p's band of sub-segment k
    regions = [{"axis": split.axis, "segment": [a, b]} for a, b in bounds]
    producer = {v: k for k, c in enumerate(costs) for v in c.segment.outputs}

    tasks: list[ComputeTask | TransferTask] = list(prefix_task(pm, split.first))
    after_prefix = [t.id for t in tasks]

    # steps[k, p]: (task id, own rows it finished) per step of device p's band of sub-segment k
    steps: dict[tuple[int, int], list[tuple[str, dict[str, Interval]]]] = {}
    last_compute: dict[int, list[str]] = {p: list(after_prefix) for p in range(len(devices))}
    sends: list[TransferTask] = []
    computes: list[ComputeTask] = []
    for p, d in enumerate(devices):  # sub-segment 0: streamed as the frame arrives
        if not _nonempty(owns[0][p]):
            continue
        remote = d != pm.source
        sched = step_costs(costs[0], owns[0][p], split.chunks if remote else 1, remote).schedule(0.0)
        prev = list(after_prefix)
        steps[0, p] = []
        for j in range(len(sched.work_s)):
            deps = list(prev)
            if sched.sends[j]:
                sends.append(band_input(f"in{p}.{j}", src, names[d], sched, j, after_prefix, regions[0]))
                deps.append(sends[-1].id)
            task = band_compute(
                f"band0.{p}.{j}", names[d], costs[0].segment, sched, j, pm.span_speed(*bounds[0], d), deps, regions[0]
            )
            computes.append(task)
            prev = [task.id]
            steps[0, p].append((task.id, sched.chunks[j]))
        last_compute[p] = prev
    tasks += sends + computes

    for k in range(1, len(costs)):
        seg = costs[k].segment
        for p, d in enumerate(devices):
            own = owns[k][p]
            if not _nonempty(own):
                continue
            need = costs[k].input_bands(own)
            incoming: dict[tuple[int, int], dict[str, Interval]] = {}  # (sender position or -1, sub-segment)
            for v, (lo, hi) in need.items():
                if hi <= lo:
                    continue
                kp = producer.get(v)
                if kp is None or kp >= k:  # from before the split: the source holds it whole
                    if d != pm.source:
                        incoming.setdefault((-1, k), {})[v] = (lo, hi)
                    continue
                for q in range(len(devices)):  # own bands partition the rows: the rest is a neighbour's
                    qa, qb = owns[kp][q].get(v, (0, 0))
                    x, y = max(lo, qa), min(hi, qb)
                    if q != p and y > x:
                        incoming.setdefault((q, kp), {})[v] = (x, y)
            deps = list(last_compute[p])
            for (q, kp), bands in incoming.items():
                sender = src if q < 0 else names[devices[q]]
                after = (
                    list(after_prefix)
                    if q < 0
                    else sorted({_finishing_step(steps[kp, q], v, hi) for v, (_, hi) in bands.items()})
                )
                cost = costs[kp if q >= 0 else k]
                nbytes = sum(cost.value_bytes(v) * (b - a) // (seg_extent(cost, v)) for v, (a, b) in bands.items())
                tasks.append(
                    TransferTask(
                        id=f"halo{k}.{p}.{'s' if q < 0 else q}.{kp}",
                        src=sender,
                        dst=names[d],
                        values=sorted(bands),
                        bytes=nbytes,
                        after=after,
                        region=Region(**regions[kp if q >= 0 else k], bands={v: list(iv) for v, iv in bands.items()}),
                        overhead_s=MESSAGE_OVERHEAD_S,
                    )
                )
                deps.append(tasks[-1].id)
            geo = step_costs(costs[k], own, 1, False)
            task = ComputeTask(
                id=f"band{k}.{p}",
                device=names[d],
                nodes=list(seg.nodes),
                after=deps,
                time_s=geo.work_s[0] / pm.span_speed(*bounds[k], d),
                region=Region(**regions[k], own={v: list(iv) for v, iv in own.items()}, chunks=1, step=0),
            )
            tasks.append(task)
            steps[k, p] = [(task.id, geo.chunks[0])]
            last_compute[p] = [task.id]

    # the bands of every value read after the split (or the model's output) gather on the suffix device
    nodes = graph.nodes
    outs = [
        nodes[i].name
        for i in range(split.first, split.last + 1)
        if geometry.last_use.get(nodes[i].name, len(nodes)) > split.last  # the output's last use is "after the end"
    ]
    suffix_name = names[split.suffix_device]
    suffix_pos = devices.index(split.suffix_device) if split.suffix_device in devices else -1
    gathers = list(last_compute[suffix_pos]) if suffix_pos >= 0 else []
    outgoing: dict[tuple[int, int], dict[str, Interval]] = {}
    for v in outs:
        kp = producer[v]
        for q in range(len(devices)):
            a, b = owns[kp][q].get(v, (0, 0))
            if q != suffix_pos and b > a:
                outgoing.setdefault((q, kp), {})[v] = (a, b)
    for (q, kp), bands in outgoing.items():
        cost = costs[kp]
        tasks.append(
            TransferTask(
                id=f"out{q}.{kp}",
                src=names[devices[q]],
                dst=suffix_name,
                values=sorted(bands),
                bytes=sum(cost.out_bytes[v] * (b - a) // cost.segment.extent(v) for v, (a, b) in bands.items()),
                after=sorted({_finishing_step(steps[kp, q], v, hi) for v, (_, hi) in bands.items()}),
                region=Region(**regions[kp], bands={v: list(iv) for v, iv in bands.items()}),
                overhead_s=MESSAGE_OVERHEAD_S,
            )
        )
        gathers.append(tasks[-1].id)
    finish_split(profile, graph, pm, tasks, gathers, split.first, split.last, split.suffix_device)
    shares = ", ".join(f"{names[d]} {100 * r:.0f}%" for d, r in zip(devices, ratios, strict=True))
    joints = ", ".join(str(c) for c in split.cuts)
    return Plan(
        strategy="hybrid",
        objective=objective,
        model=profile.model,
        source=src,
        devices=list(dict.fromkeys([src, *(names[d] for d in devices), suffix_name])),
        num_nodes=len(profile.nodes),
        input_bytes=profile.input_bytes,
        output_bytes=profile.output_bytes,
        tasks=tasks,
        cluster=cluster.to_dict(),
        cost_model={
            "latency_s": latency_s,
            "segment": [split.first, split.last],
            "axis": split.axis,
            "ratios": ratios,
            "chunks": split.chunks,
            "joints": list(split.cuts),
            "fits": True,
        },
        notes=[
            f"split nodes {split.first}-{split.last} by {split.axis} across {shares} in {len(bounds)} sub-segments, "
            f"halos exchanged after node{'s' if len(split.cuts) > 1 else ''} {joints}; "
            f"helpers' input streamed in {split.chunks} chunks"
        ],
    )


def seg_extent(cost: SegmentCost, value: str) -> int:
    """The split-axis extent of a value as a segment sees it (an input, or one of its own values)."""
    seg = cost.segment
    return axis_extent(seg, value) if value in seg.inputs else seg.extent(value)


def cut_candidates(geometry: MultiGeometry, first: int, last: int, axis: str) -> list[int]:
    """Joints worth trying inside [first, last]: where few values cross (each one is a halo in
    every exchange) and both sides are local segments, spread evenly over the split's work."""
    times = [geometry.profile.nodes[i].time_s for i in range(first, last + 1)]
    total = sum(times) or 1.0
    live = live_counts(geometry.graph, first, last, geometry.last_use)
    ok: list[tuple[float, int]] = []
    acc = 0.0
    for i in range(first, last):
        acc += times[i - first]
        if not 0.05 < acc / total < 0.95 or live[i - first] > MAX_LIVE_AT_JOINT:
            continue
        if geometry.cost(first, i, axis) is None or geometry.cost(i + 1, last, axis) is None:
            continue
        ok.append((acc / total, i))
    if len(ok) <= MAX_CUT_CANDIDATES:
        return [i for _, i in ok]
    picked: list[int] = []
    for n in range(MAX_CUT_CANDIDATES):  # the candidate nearest each of evenly spaced work fractions
        target = (n + 0.5) / MAX_CUT_CANDIDATES
        i = min(ok, key=lambda fi: abs(fi[0] - target))[1]
        if i not in picked:
            picked.append(i)
    return sorted(picked)


def multi_segment_split(
    profile: Profile,
    graph: OpGraph,
    cluster: Cluster,
    pm: PipelineModel,
    base: SplitChoice,
    price: Callable[[Plan], float],
    last: int | None = None,
    geometry: MultiGeometry | None = None,
) -> tuple[MultiSplit, float] | None:
    """The best multi-segment split grown from a single-segment choice: joints added one at a time
    (each the best of `cut_candidates` with the shares re-balanced) while the latency `price`
    gives (the simulated single-frame latency) keeps falling. `last` may extend the split past the
    base choice's end (halo exchanges keep deep bands thin). None when no joint pays."""
    geometry = geometry or MultiGeometry(profile, graph)
    last = base.last if last is None else last
    if geometry.cost(base.first, last, base.axis) is None:
        return None
    chunks = max(
        (s.chunk_count for d, s in zip(base.devices, base.schedules, strict=True) if s is not None and d != pm.source),
        default=1,
    )
    memo: dict[MultiSplit, float] = {}

    def evaluate(split: MultiSplit) -> float:
        if split not in memo:
            try:
                memo[split] = price(build_multi_plan(profile, graph, cluster, pm, split, "latency", geometry))
            except ValueError:
                memo[split] = math.inf
        return memo[split]

    helpers = {d: r for d, r in zip(base.devices, base.ratios, strict=True) if d != pm.source}
    rest = sum(helpers.values())
    # the helpers keep the base choice's proportions, or share alike where it gave them nothing
    weight = {d: (r / rest if rest > 0 else 1 / len(helpers)) for d, r in helpers.items()}

    def shares(src_share: float) -> tuple[float, ...]:
        """The source's share given, the rest divided among the helpers by `weight`."""
        return tuple(src_share if d == pm.source else (1 - src_share) * weight[d] for d in base.devices)

    def best_shares(split: MultiSplit) -> tuple[MultiSplit, float]:
        """Coarse scan of the source's share, then halving steps around the best."""
        grid = [s / 20 for s in range(1, 20)]
        best = min((replace(split, ratios=shares(s)) for s in grid), key=evaluate)
        s0 = best.ratios[list(base.devices).index(pm.source)]
        for step in (0.025, 0.0125, 0.00625):
            for s in (s0 - step, s0 + step):
                if 0 < s < 1 and evaluate(replace(split, ratios=shares(s))) < evaluate(best):
                    best = replace(split, ratios=shares(s))
            s0 = best.ratios[list(base.devices).index(pm.source)]
        return best, evaluate(best)

    start = MultiSplit(
        base.first, last, base.axis, (), tuple(base.devices), tuple(base.ratios), base.suffix_device, chunks
    )
    current, current_lat = (start, evaluate(start)) if last == base.last else best_shares(start)
    candidates = cut_candidates(geometry, base.first, last, base.axis)
    found = None
    for _ in range(MAX_JOINTS):
        trials = []
        for c in candidates:
            if c in current.cuts:
                continue
            cuts = tuple(sorted((*current.cuts, c)))
            trial = replace(current, cuts=cuts)
            if any(geometry.cost(a, b, base.axis) is None for a, b in trial.bounds()):
                continue
            trials.append(best_shares(trial))
        if not trials:
            break
        split, lat = min(trials, key=lambda t: t[1])
        if lat >= current_lat * 0.99:
            break
        current, current_lat, found = split, lat, (split, lat)
    if found is None:
        return None
    for c in (4, 8, 16):  # the chunking of the first sub-segment, with the joints found
        trial = replace(current, chunks=c)
        if evaluate(trial) < current_lat:
            current, current_lat = trial, evaluate(trial)
    return current, current_lat
