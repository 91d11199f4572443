"""The hybrid planner (`--strategy hybrid`): split local operators across devices by output band.

A hybrid plan is: a layer-wise prefix on the source (where the input is), one *segment* of local
operators split into bands across several devices (each gets exactly the input band it needs,
halo included, streamed in chunks so it computes while rows still arrive, and computes its own
band of the segment's outputs), a gather of the bands on the device that runs the layer-wise
suffix (global pooling, heads, attention), and the result back to the source.

Shares are chosen on an exact joint schedule of every chunk, computed the way the simulator
schedules the tasks the plan emits (so the plan's simulated latency equals the planner's): for
two devices every split row is tried (coarse, then fine); for more, a balance of arrival times
seeds a local search. The best layer-wise plan is always a candidate, so hybrid is never worse
than it under the cost model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.cost.region_overhead import DEFAULT_REGION_COSTS
from edgeweave.errors import UserError
from edgeweave.graph.band_program import step_geometry
from edgeweave.graph.execute import last_uses
from edgeweave.graph.locality import Interval
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import (
    Segment,
    input_axis,
    input_bands,
    local_runs,
    make_segment,
    needs,
    own_bands,
    split_bands,
)
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
    schedules: list  # BandSchedule per device (None for a device with an empty band)


MESSAGE_OVERHEAD_S = 0.7e-3
"""Software cost of one runtime message beyond latency + bytes/bandwidth (serialise, queue, decode,
wake the receiver): measured 0.6-0.95 ms per band transfer on this machine (benchmarks/hybrid_sweep
--real, per-task timelines). Band plans send many small messages, so the planner counts it and puts
it on every transfer it emits (`TransferTask.overhead_s`), where the simulator adds it too."""


def region_costs(profile: Profile, axis: str) -> tuple[float, float]:
    """(slowdown, seconds per node per band task at the reference speed) of band work along
    `axis`, as the profiler measured them (cost/region_overhead.py), or the defaults."""
    measured = ((profile.model_extra or {}).get("region_costs") or {}).get(axis)
    costs = measured or DEFAULT_REGION_COSTS[axis]
    return float(costs["slowdown"]), float(costs["overhead_s"])


class _SegmentCost:
    """Fast per-band cost of one segment: compute seconds (at speed 1) and bytes in and out.

    A band task costs its proportional share of every node it runs (halo rows included) times the
    measured slowdown of band work along its axis, plus a measured price per node: small bands,
    column bands and many chunks are less efficient than the proportional model says."""

    def __init__(self, segment: Segment, profile: Profile):
        self.segment = segment
        self.slowdown, self.node_overhead = region_costs(profile, segment.axis_name)
        self.times = {profile.nodes[i].name: profile.nodes[i].time_s for i in segment.nodes}
        self.out_bytes = {profile.nodes[i].name: profile.nodes[i].out_bytes for i in segment.nodes}
        self.value_bytes = profile.value_bytes
        self._cache: dict[tuple, tuple[float, int, int]] = {}
        self._inputs: dict[tuple, dict[str, Interval]] = {}
        self._needs: dict[tuple, dict[str, Interval]] = {}
        self.geometry: dict[tuple, _Chunks] = {}

    def input_bands(self, own: dict) -> dict[str, Interval]:
        key = tuple(sorted(own.items()))
        if key not in self._inputs:
            self._inputs[key] = input_bands(self.segment, own)
        return self._inputs[key]

    def needs(self, own: dict) -> dict[str, Interval]:
        key = tuple(sorted(own.items()))
        if key not in self._needs:
            self._needs[key] = needs(self.segment, own)
        return self._needs[key]

    def band(self, own: dict) -> tuple[float, int, int]:
        """(compute seconds at speed 1, input bytes it must receive, output bytes it produces)."""
        key = tuple(sorted(own.items()))
        if key not in self._cache:  # balancing asks for the same band sizes again and again
            self._cache[key] = self._band(own)
        return self._cache[key]

    def _band(self, own: dict) -> tuple[float, int, int]:
        seg = self.segment
        need = self.needs(own)
        work = sum(self.times[v] * (b - a) / seg.loc.shapes[v][seg.axis(v)] for v, (a, b) in need.items())
        work = self.slowdown * work + self.node_overhead * len(need)
        bytes_in = 0
        for v, (a, b) in self.input_bands(own).items():
            full = self.value_bytes(v)
            axis_len = _axis_extent(seg, v)
            bytes_in += full * (b - a) // axis_len if axis_len else full
        bytes_out = sum(self.out_bytes[v] * (b - a) // seg.extent(v) for v, (a, b) in own.items())
        return work, bytes_in, bytes_out


def _axis_extent(seg: Segment, value: str) -> int:
    """Extent of the axis along which a value entering the segment is cut into bands."""
    return seg.loc.shapes[value][input_axis(seg, value)]


def _transfer(pm: PipelineModel, a: int, b: int, nbytes: int) -> float:
    """A lone message's time from leaving `a` to arriving at `b` (latency + bytes + software cost)."""
    if a == b or nbytes == 0:
        return 0.0
    return float(pm.latency[a, b] + nbytes / pm.bandwidth[a, b]) + MESSAGE_OVERHEAD_S


CHUNK_CHOICES = (1, 2, 4, 8)
SPLIT_MARGIN = 0.08
"""A band split must beat the best layer-wise plan by this fraction under the cost model to be
chosen: band tasks run 10-50% over their prediction on a loaded 2-core host (measured: per-task
timelines of resnet18 at 25 Mbps), layer-wise tasks ~10%, so a smaller predicted gain is as likely
to be a loss. Hand-given split choices bypass it."""
AXES = ("rows", "cols")


@dataclass(frozen=True)
class HybridOptions:
    """Choices a user may fix by hand (`--split-ratios`, `--chunks`, `--split-axis`); the planner
    searches everything left open. Fixing any of them means "split like this": the planner then
    returns the best split that obeys them, never a layer-wise fallback."""

    ratios: tuple[float, ...] | None = None  # one share per device of the cluster, the source first
    chunks: int | None = None  # chunks every helper's input band is streamed in
    axis: str | None = None  # "rows" or "cols" (a sequence's tokens split along either)

    @property
    def fixed(self) -> bool:
        return self.ratios is not None or self.chunks is not None or self.axis is not None

    def check(self, pm: PipelineModel) -> None:
        """One-line errors for choices that cannot work on this cluster."""
        if self.axis is not None and self.axis not in AXES:
            raise UserError(f"split axis {self.axis!r} is not one of {', '.join(AXES)}")
        if self.chunks is not None and not 1 <= self.chunks <= 64:
            raise UserError(f"chunk count {self.chunks} must be between 1 and 64")
        if self.ratios is not None:
            order = [pm.devices[pm.source], *(n for k, n in enumerate(pm.devices) if k != pm.source)]
            if len(self.ratios) != len(order):
                raise UserError(
                    f"{len(self.ratios)} split ratios given for {len(order)} devices; give one per device "
                    f"in this order: {', '.join(order)}"
                )
            if any(not math.isfinite(r) or r < 0 for r in self.ratios):
                raise UserError(f"split ratios must be finite and >= 0, got {list(self.ratios)}")
            if abs(sum(self.ratios) - 1.0) > 1e-6:
                raise UserError(f"split ratios must add up to 1, got {list(self.ratios)} (sum {sum(self.ratios):g})")
            if sum(1 for r in self.ratios if r > 0) < 2:
                raise UserError("split ratios give everything to one device: not a split (use local or offload)")


@dataclass
class BandSchedule:
    """One device's part of a split: the input-driven steps of its band (graph/band_program.py),
    what each receives, computes and sends on, and when it is done."""

    own: dict[str, Interval]  # the device's whole band of every segment output
    chunks: list[dict[str, Interval]]  # own output rows each step finishes (sent on after it)
    sends: list[dict[str, Interval]]  # input rows that arrive for each step (new rows only)
    send_bytes: list[int]
    out_bytes: list[int]
    work_s: list[float]
    ready: float  # when the last output band has reached the gathering device
    chunk_count: int = 1  # input chunks the steps were cut from (the runtime rebuilds the steps from it)


@dataclass
class _Chunks:
    """The geometry of streaming one band in input chunks: independent of link rates and device
    speeds, so it is computed once per (segment, band, chunk count) and reused by every re-plan."""

    own: dict[str, Interval]
    chunks: list[dict[str, Interval]]
    sends: list[dict[str, Interval]]
    send_bytes: list[int]
    out_bytes: list[int]
    work_s: list[float]
    chunk_count: int

    def schedule(self, ready: float) -> BandSchedule:
        return BandSchedule(
            self.own, self.chunks, self.sends, self.send_bytes, self.out_bytes, self.work_s, ready, self.chunk_count
        )


def _chunk_geometry(cost: _SegmentCost, own: dict[str, Interval], chunks: int, remote: bool) -> _Chunks:
    """Step j's new input rows, the output rows it finishes and its work, exactly as the band
    program executes them (`step_geometry`): every node computes the rows that the input received
    so far makes computable, once; the work of a step is its rows' proportional share of each
    node's time, times the measured slowdown, plus the measured price of each call."""
    key = (tuple(sorted(own.items())), chunks, remote)
    if key not in cost.geometry:
        seg = cost.segment
        steps = step_geometry(seg, own, chunks, need=cost.needs(own), inputs=cost.input_bands(own))
        geo = _Chunks(dict(steps.own), list(steps.finished), [], [], [], [], chunks)
        for j in range(steps.steps):
            sends = steps.received[j] if remote else {}
            geo.sends.append(dict(sends))
            geo.send_bytes.append(
                sum(cost.value_bytes(v) * (b - a) // _axis_extent(seg, v) for v, (a, b) in sends.items())
            )
            geo.out_bytes.append(
                sum(cost.out_bytes[v] * (b - a) // seg.extent(v) for v, (a, b) in steps.finished[j].items())
            )
            work = sum(cost.times[v] * (b - a) / seg.extent(v) for v, (a, b) in steps.computed[j].items())
            geo.work_s.append(cost.slowdown * work + cost.node_overhead * len(steps.computed[j]))
        cost.geometry[key] = geo
    return cost.geometry[key]


def _occupancy(pm: PipelineModel, a: int, b: int, nbytes: int) -> float:
    """How long a message holds the link (a, b): its bytes at the link's rate plus the software
    cost of a message; its latency does not hold the link (design.md, the link model)."""
    if a == b or nbytes == 0:
        return 0.0
    return float(nbytes / pm.bandwidth[a, b]) + MESSAGE_OVERHEAD_S


def _latency(pm: PipelineModel, a: int, b: int) -> float:
    return 0.0 if a == b else float(pm.latency[a, b])


def schedule(
    cost: _SegmentCost, pm: PipelineModel, dev: int, own: dict[str, Interval], chunks: int, start: float, gather_at: int
) -> BandSchedule:
    """Stream a band on its own: step j's input rows cross the link (each message arrives `latency`
    after it leaves), the step runs when they and step j-1 are done, its finished rows go on to
    `gather_at`. Exactly what the simulator does with the tasks `build_hybrid_plan` emits for it."""
    remote = dev != pm.source
    geo = _chunk_geometry(cost, own, chunks, remote)
    speed = float(pm.speed[dev])
    t_link = t_dev = t_out_link = start
    t_out = start
    for j, work in enumerate(geo.work_s):
        arrive = start
        if remote and geo.sends[j]:
            t_link += _occupancy(pm, pm.source, dev, geo.send_bytes[j])
            arrive = t_link + _latency(pm, pm.source, dev)
        t_dev = max(t_dev, arrive) + work / speed
        if dev != gather_at and geo.out_bytes[j]:
            t_out_link = max(t_out_link, t_dev) + _occupancy(pm, dev, gather_at, geo.out_bytes[j])
            t_out = t_out_link + _latency(pm, dev, gather_at)
    return geo.schedule(max(t_out, t_dev))


def joint_latency(
    cost: _SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    owns: list[dict[str, Interval]],
    chunks: list[int],
    start: float,
    suffix: int,
) -> tuple[float, list[BandSchedule | None]]:
    """When the last band reaches `suffix`, scheduling every task the way the simulator does: in plan
    order (all input chunks first), one task at a time per device and per link direction; a link
    is held for a message's bytes and software cost, and the message arrives `latency` later."""
    geos = [
        _chunk_geometry(cost, own, c, d != pm.source) if any(b > a for a, b in own.values()) else None
        for d, own, c in zip(devices, owns, chunks, strict=True)
    ]
    src = pm.source
    link: dict[tuple[int, int], float] = {}
    arrive: dict[tuple[int, int], float] = {}
    for k, (d, geo) in enumerate(zip(devices, geos, strict=True)):  # input chunks, in order, per link
        if geo is None or d == src:
            continue
        t_link = link.get((src, d), start)
        for j, nbytes in enumerate(geo.send_bytes):
            if geo.sends[j]:
                t_link += _occupancy(pm, src, d, nbytes)
                arrive[k, j] = t_link + _latency(pm, src, d)
        link[src, d] = t_link
    ready = start
    scheds: list[BandSchedule | None] = []
    for k, (d, geo) in enumerate(zip(devices, geos, strict=True)):
        if geo is None:
            scheds.append(None)
            continue
        speed = float(pm.speed[d])
        t_dev = t_done = start
        for j, work in enumerate(geo.work_s):
            t_dev = max(t_dev, arrive.get((k, j), start)) + work / speed
            if d == suffix:
                t_done = t_dev
                continue
            if geo.out_bytes[j]:
                t_link = max(link.get((d, suffix), start), t_dev) + _occupancy(pm, d, suffix, geo.out_bytes[j])
                link[d, suffix] = t_link
                t_done = max(t_done, t_link + _latency(pm, d, suffix))
        ready = max(ready, t_done)
        scheds.append(geo.schedule(t_done))
    return ready, scheds


def _refine(
    cost: _SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    start: float,
    suffix: int,
    options: HybridOptions | None = None,
) -> tuple[float, list[float], list[BandSchedule | None]]:
    """The best split on the exact joint latency: every split row for two devices; beyond that, a
    local search from the shares that balance arrival times. Shares or chunking fixed in `options`
    are taken as given."""
    seg = cost.segment
    extent = seg.extent(seg.outputs[-1])
    options = options or HybridOptions()
    choices_all = CHUNK_CHOICES if options.chunks is None else (options.chunks,)
    memo: dict[tuple, tuple[float, list, list, int]] = {}

    def evaluate(rows: tuple[int, ...], choices: tuple[int, ...] = choices_all) -> tuple[float, list, list, int]:
        if (rows, choices) not in memo:
            rat = [r / extent for r in rows]
            owns = own_bands(seg, rat)
            best = None
            for c in choices:
                for own_chunks in sorted({1, c}):  # the source may stream its output bands too
                    chunks = [own_chunks if d == pm.source else c for d in devices]
                    lat, scheds = joint_latency(cost, pm, devices, owns, chunks, start, suffix)
                    if best is None or lat < best[0]:
                        best = (lat, rat, scheds, c)
            memo[rows, choices] = best
        return memo[rows, choices]

    if options.ratios is not None:  # shares given by hand: only the chunking is searched
        share = [options.ratios[_ratio_index(pm, d)] for d in devices]
        rows = [b - a for a, b in split_bands(extent, share)]
        return evaluate(tuple(rows))[:3]
    if len(devices) == 2:  # coarse scan of the split row, then every row around the best coarse one
        step = max(1, extent // 12)
        coarse = min(range(0, extent + 1, step), key=lambda r: evaluate((r, extent - r))[0])
        chunk = (evaluate((coarse, extent - coarse))[3],)  # the fine scan keeps the coarse optimum's chunking
        fine = range(max(0, coarse - step), min(extent, coarse + step) + 1)
        return min((evaluate((r, extent - r), chunk) for r in fine), key=lambda x: x[0])[:3]
    rows = [round(r * extent) for r in _balance(cost, pm, devices, start, suffix)]
    rows[-1] = extent - sum(rows[:-1])
    current = local_search(evaluate, tuple(rows))
    return evaluate(current)[:3]


def _ratio_index(pm: PipelineModel, device: int) -> int:
    """Position of a device in a hand-given ratio list: the source first, then the cluster's order."""
    order = [pm.source, *(k for k in range(pm.num_devices) if k != pm.source)]
    return order.index(device)


def _balance(
    cost: _SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    start: float,
    gather_at: int,
) -> list[float]:
    """Shares so that every device's bands reach the gathering device at the same time (each
    device streaming with its best chunk count). Bands are whole rows."""
    seg = cost.segment
    extent = seg.extent(seg.outputs[-1])
    memo: dict[tuple[int, int], float] = {}

    def ready(dev: int, rows: int) -> float:
        if rows == 0:
            return start
        if (dev, rows) not in memo:
            own = (
                own_bands(seg, [rows, extent - rows])[0]
                if rows < extent
                else {v: (0, seg.extent(v)) for v in seg.outputs}
            )
            memo[dev, rows] = min(schedule(cost, pm, dev, own, c, start, gather_at).ready for c in CHUNK_CHOICES)
        return memo[dev, rows]

    return [r / extent for r in balanced_rows(devices, extent, ready, start)]


def balanced_rows(devices: list[int], extent: int, ready: Callable[[int, int], float], start: float) -> list[int]:
    """Rows per device such that all bands are ready at about the same time: for a time T each
    device takes the most rows it can deliver by T (`ready(dev, rows)` grows with rows), and the
    smallest T at which the rows cover `extent` is bisected. Surplus rows come off the last devices."""

    def rows_by(dev: int, t: float) -> int:
        lo, hi = 0, extent
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ready(dev, mid) <= t:
                lo = mid
            else:
                hi = mid - 1
        return lo

    lo_t, hi_t = start, min(ready(d, extent) for d in devices)
    for _ in range(40):
        mid = (lo_t + hi_t) / 2
        if sum(rows_by(d, mid) for d in devices) >= extent:
            hi_t = mid
        else:
            lo_t = mid
    rows = [rows_by(d, hi_t) for d in devices]
    excess = sum(rows) - extent
    for k in range(len(rows) - 1, -1, -1):
        cut = min(excess, rows[k])
        rows[k] -= cut
        excess -= cut
    rows[0] += extent - sum(rows)  # cannot happen after bisection, but never lose a row
    return rows


def local_search(evaluate: Callable[[tuple[int, ...]], tuple], start: tuple[int, ...]) -> tuple[int, ...]:
    """Move rows between pairs of devices (steps of 4, 2, 1) while `evaluate(rows)[0]` shrinks."""
    current = start
    improved = True
    while improved:
        improved = False
        for a in range(len(current)):
            for b in range(len(current)):
                for step in (4, 2, 1):
                    if a == b or current[a] < step:
                        continue
                    trial = list(current)
                    trial[a] -= step
                    trial[b] += step
                    if evaluate(tuple(trial))[0] < evaluate(current)[0] - 1e-12:
                        current, improved = tuple(trial), True
    return current


def candidate_segments(graph: OpGraph, max_per_run: int = 24) -> list[tuple[int, int, str]]:
    """Segments worth trying: each local run, ended where only one value leaves it (block ends)."""
    last_use = last_uses(graph)
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


class SegmentGeometry:
    """The candidate segments of one model with their band geometry (needed rows, bytes, chunking),
    which does not depend on link rates or device speeds. Built lazily and kept by the caller, it
    makes a re-plan for a new measured bandwidth cost milliseconds instead of seconds."""

    def __init__(self, profile: Profile, graph: OpGraph):
        self.profile, self.graph = profile, graph
        self._costs: list[_SegmentCost] | None = None

    def costs(self) -> list[_SegmentCost]:
        if self._costs is None:
            self._costs = []
            for first, last, axis in candidate_segments(self.graph):
                seg = make_segment(self.graph, first, last, axis)
                if seg is None or any(self.profile.nodes[i].name != self.graph.nodes[i].name for i in (first, last)):
                    continue
                self._costs.append(_SegmentCost(seg, self.profile))
        return self._costs


def hybrid_splits(
    profile: Profile,
    graph: OpGraph,
    pm: PipelineModel,
    geometry: SegmentGeometry | None = None,
    cutoff: Callable[[], float] | None = None,
    options: HybridOptions | None = None,
) -> Iterator[SplitChoice]:
    """Every band split the hybrid planner considers: for each candidate segment, helper set and
    gathering device, the latency-best shares. A generator, so that `plan_hybrid` keeps the fastest
    and the energy planner (plan/energy.py) can price each one instead.

    Candidates come in order of a lower bound on their latency (the segment's work spread over all
    devices at once, each helper as fast as the slower of its compute and its input link); with
    `cutoff` (the best latency found so far) a candidate whose bound cannot beat it is skipped
    without being refined."""
    options = options or HybridOptions()
    others = [d for d in range(pm.num_devices) if d != pm.source]
    helper_sets = [[d] for d in others] + ([others] if len(others) > 1 else [])
    if options.ratios is not None:  # exactly the devices given a share take part
        helper_sets = [[d for d in others if options.ratios[_ratio_index(pm, d)] > 0]]
    src_speed = float(pm.speed[pm.source])
    candidates = []
    for cost in (geometry or SegmentGeometry(profile, graph)).costs():
        if options.axis is not None and cost.segment.axis_name != options.axis:
            continue
        first, last = cost.segment.first, cost.segment.last
        prefix = float(pm.times[:first].sum()) / src_speed
        work = float(pm.times[first : last + 1].sum())
        whole = {v: (0, cost.segment.extent(v)) for v in cost.segment.outputs}
        bytes_in = cost.band(whole)[1]
        for helpers in helper_sets:
            devices = [pm.source, *helpers]
            # each device's rate in "segments per second": a helper is limited by its compute or by
            # the link that brings it the input, whichever is slower (perfect overlap, no halo)
            rate = src_speed / work + sum(
                1.0 / max(work / float(pm.speed[d]), bytes_in / float(pm.bandwidth[pm.source, d])) for d in helpers
            )
            spread = 1.0 / rate
            for suffix in devices:
                bound = _split_latency(profile, pm, prefix + spread, last, suffix)
                candidates.append((bound, prefix, cost, devices, suffix))
    candidates.sort(key=lambda c: c[0])
    for bound, prefix, cost, devices, suffix in candidates:
        if cutoff is not None and bound >= cutoff():
            break
        ready, ratios, scheds = _refine(cost, pm, devices, prefix, suffix, options)
        lat = _split_latency(profile, pm, ready, cost.segment.last, suffix)
        seg = cost.segment
        yield SplitChoice(seg.first, seg.last, seg.axis_name, devices, ratios, suffix, lat, scheds)


def plan_hybrid(
    profile: Profile,
    graph: OpGraph,
    cluster: Cluster,
    objective: str = "latency",
    geometry: SegmentGeometry | None = None,
    options: HybridOptions | None = None,
) -> Plan:
    """The best hybrid plan under the cost model (latency), or the best layer-wise plan if that is better.

    Pass the same `geometry` again to re-plan the same model for new link rates in milliseconds.
    With choices fixed in `options`, the best split that obeys them (no layer-wise fallback)."""
    from edgeweave.plan.strategies import make_plan
    from edgeweave.sim.simulator import simulate

    pm = PipelineModel.build(profile, cluster)
    options = options or HybridOptions()
    options.check(pm)
    geometry = geometry or SegmentGeometry(profile, graph)
    best_plan, best_latency = None, math.inf
    for strategy in () if options.fixed else ("local", "offload", "neurosurgeon", "dads"):
        try:
            candidate = with_message_overhead(make_plan(profile, cluster, strategy, "latency"))
        except Exception:  # noqa: BLE001 - a baseline without an answer (e.g. nothing fits) is skipped
            continue
        lat = simulate(candidate, requests=1).single_latency_s
        if lat < best_latency:
            best_plan, best_latency = candidate, lat
    best_split = None

    def cutoff() -> float:
        return min(best_latency * (1 - SPLIT_MARGIN), best_split.latency_s if best_split else math.inf)

    for choice in hybrid_splits(profile, graph, pm, geometry, cutoff, options):
        if choice.latency_s < cutoff():
            best_split = choice
    if best_split is not None:
        return build_hybrid_plan(profile, graph, cluster, pm, best_split, objective)
    if options.fixed:
        along = f" along {options.axis}" if options.axis else ""
        raise UserError(f"{profile.model} has no segment of local operators that can be split{along}")
    if best_plan is None:
        raise UserError(f"no plan for {profile.model} here: no layer-wise plan fits and nothing can be split")
    why = (
        f"{profile.model} has no segment of local operators to split (every operator is a barrier)"
        if not geometry.costs()
        else "no band split beats the best layer-wise plan here"
    )
    best_plan.notes.append(f"hybrid: {why}; using {best_plan.strategy}")
    best_plan.strategy = "hybrid"
    return best_plan


def plan_stream_offload(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """`--strategy stream-offload`: the frame is streamed in chunks to the one helper that finishes
    first, which computes the model's first local segment as the rows arrive (input-driven steps)
    and the rest after it; the source computes nothing. It is the hybrid search restricted to a
    source share of 0 and the segment that starts at the frame, so its share of hybrid's gain
    shows on its own. Models whose first operator is a barrier are offloaded whole (stated in
    the plan's notes)."""
    from edgeweave.plan.strategies import make_plan

    pm = PipelineModel.build(profile, cluster)
    others = [d for d in range(pm.num_devices) if d != pm.source]
    geometry = SegmentGeometry(profile, graph)
    best = None
    for helper in others:
        ratios = tuple(1.0 if k == _ratio_index(pm, helper) else 0.0 for k in range(pm.num_devices))
        for choice in hybrid_splits(profile, graph, pm, geometry, None, HybridOptions(ratios=ratios)):
            if choice.first != 0 or choice.suffix_device != helper:
                continue
            if best is None or choice.latency_s < best.latency_s:
                best = choice
    if best is None:
        plan = with_message_overhead(make_plan(profile, cluster, "offload", "latency"))
        plan.notes.append("stream-offload: no local segment starts at the input (or no helper); offloaded whole")
    else:
        plan = build_hybrid_plan(profile, graph, cluster, pm, best, objective)
    plan.strategy = "stream-offload"
    return plan


GRID = (0.0, 0.5, 0.6, 0.7, 1.0)


def plan_hybrid_grid(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """The published Hybrid-Parallel planner's approach, as a baseline: two devices (the source and
    the fastest other), width splits only, the source's share from the grid {0, .5, .6, .7, 1},
    at block-end cut candidates, no streaming, costed with the configured link rates. (The
    original also computes the seam between the halves inexactly; ours is exact, which only
    flatters the baseline.)"""
    pm = PipelineModel.build(profile, cluster)
    others = [d for d in range(pm.num_devices) if d != pm.source]
    if not others:
        from edgeweave.plan.strategies import make_plan

        plan = make_plan(profile, cluster, "local", objective)
        plan.strategy = "hybrid-grid"
        return plan
    helper = max(others, key=lambda d: float(pm.speed[d]))
    devices = [pm.source, helper]
    best = None
    for first, last, axis in candidate_segments(graph):
        if axis != "cols" or first != 0:
            continue
        seg = make_segment(graph, first, last, axis)
        if seg is None:
            continue
        cost = _SegmentCost(seg, profile)
        for share in GRID:
            owns = own_bands(seg, [share, 1.0 - share])
            for suffix in devices:
                ready, scheds = joint_latency(cost, pm, devices, owns, [1, 1], 0.0, suffix)
                lat = _split_latency(profile, pm, ready, last, suffix)
                if best is None or lat < best.latency_s:
                    best = SplitChoice(first, last, axis, devices, [share, 1.0 - share], suffix, lat, scheds)
    plan = build_hybrid_plan(profile, graph, cluster, pm, best, objective)
    plan.strategy = "hybrid-grid"
    return plan


def with_message_overhead(plan: Plan) -> Plan:
    """The same plan with MESSAGE_OVERHEAD_S on every transfer, so that layer-wise candidates and
    band splits are compared (and simulated) under the same per-message cost."""
    for task in plan.tasks:
        if task.kind == "transfer":
            task.overhead_s = MESSAGE_OVERHEAD_S
    return plan


def _split_latency(profile: Profile, pm: PipelineModel, ready: float, last: int, suffix: int) -> float:
    tail = float(pm.times[last + 1 :].sum()) / float(pm.speed[suffix])
    return ready + tail + _transfer(pm, suffix, pm.source, profile.output_bytes)


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
            compute = band_compute(f"band{k}.{j}", names[dev], seg, sched, j, float(pm.speed[dev]), deps, region)
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
                overhead_s=MESSAGE_OVERHEAD_S,
            )
        )
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
