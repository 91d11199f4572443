"""Band geometry: which rows each device computes, receives and sends, per streamed step, and
what that costs at the reference speed. Independent of link rates and device speeds, so it is
computed once per model and reused by every re-plan (`SegmentGeometry`)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeweave.cost.profile import Profile
from edgeweave.graph.band_program import step_geometry
from edgeweave.graph.execute import last_uses
from edgeweave.graph.locality import Interval
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import Segment, input_axis, input_bands, local_runs, make_segment, needs
from edgeweave.plan.band.cost import region_costs


class SegmentCost:
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
        self.geometry: dict[tuple, StepCosts] = {}

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
            axis_len = axis_extent(seg, v)
            bytes_in += full * (b - a) // axis_len if axis_len else full
        bytes_out = sum(self.out_bytes[v] * (b - a) // seg.extent(v) for v, (a, b) in own.items())
        return work, bytes_in, bytes_out


def axis_extent(seg: Segment, value: str) -> int:
    """Extent of the axis along which a value entering the segment is cut into bands."""
    return seg.loc.shapes[value][input_axis(seg, value)]



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
class StepCosts:
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


def step_costs(cost: SegmentCost, own: dict[str, Interval], chunks: int, remote: bool) -> StepCosts:
    """Step j's new input rows, the output rows it finishes and its work, exactly as the band
    program executes them (`step_geometry`): every node computes the rows that the input received
    so far makes computable, once; the work of a step is its rows' proportional share of each
    node's time, times the measured slowdown, plus the measured price of each call."""
    key = (tuple(sorted(own.items())), chunks, remote)
    if key not in cost.geometry:
        seg = cost.segment
        steps = step_geometry(seg, own, chunks, need=cost.needs(own), inputs=cost.input_bands(own))
        geo = StepCosts(dict(steps.own), list(steps.finished), [], [], [], [], chunks)
        for j in range(steps.steps):
            sends = steps.received[j] if remote else {}
            geo.sends.append(dict(sends))
            geo.send_bytes.append(
                sum(cost.value_bytes(v) * (b - a) // axis_extent(seg, v) for v, (a, b) in sends.items())
            )
            geo.out_bytes.append(
                sum(cost.out_bytes[v] * (b - a) // seg.extent(v) for v, (a, b) in steps.finished[j].items())
            )
            work = sum(cost.times[v] * (b - a) / seg.extent(v) for v, (a, b) in steps.computed[j].items())
            geo.work_s.append(cost.slowdown * work + cost.node_overhead * len(steps.computed[j]))
        cost.geometry[key] = geo
    return cost.geometry[key]



def live_counts(graph: OpGraph, first: int, last: int, last_use: dict[str, int] | None = None) -> list[int]:
    """For each node i in [first, last], how many values made in [first, i] a node after i still
    reads: what would cross a cut after i (1 at a block's end)."""
    last_use = last_uses(graph) if last_use is None else last_use
    index = graph.index()
    counts, live = [], 0
    for i in range(first, last + 1):
        live += 1 if last_use.get(graph.nodes[i].name, len(graph.nodes)) > i else 0
        live -= sum(1 for r in set(graph.nodes[i].inputs) if last_use.get(r) == i and index.get(r, -1) >= first)
        counts.append(live)
    return counts


def candidate_segments(graph: OpGraph, max_per_run: int = 24) -> list[tuple[int, int, str]]:
    """Segments worth trying: each local run, ended where only one value leaves it (block ends)."""
    last_use = last_uses(graph)
    out = []
    for axis in ("rows", "cols"):
        for first, last in local_runs(graph, axis):
            counts = live_counts(graph, first, last, last_use)
            ends = [first + k for k, live in enumerate(counts) if live == 1]
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
        self._costs: list[SegmentCost] | None = None
        self._multi: MultiGeometry | None = None

    @property
    def multi(self) -> MultiGeometry:
        """The sub-segment geometry of multi-segment splits of the same model, kept alike."""
        if self._multi is None:
            self._multi = MultiGeometry(self.profile, self.graph)
        return self._multi

    def costs(self) -> list[SegmentCost]:
        if self._costs is None:
            self._costs = []
            for first, last, axis in candidate_segments(self.graph):
                seg = make_segment(self.graph, first, last, axis)
                if seg is None or any(self.profile.nodes[i].name != self.graph.nodes[i].name for i in (first, last)):
                    continue
                self._costs.append(SegmentCost(seg, self.profile))
        return self._costs


class MultiGeometry:
    """The cost geometry of every sub-segment tried, kept across evaluations and re-plans (it does
    not depend on link rates or device speeds)."""

    def __init__(self, profile: Profile, graph: OpGraph):
        self.profile, self.graph = profile, graph
        self.last_use = last_uses(graph)
        self._costs: dict[tuple[int, int, str], SegmentCost | None] = {}

    def cost(self, first: int, last: int, axis: str) -> SegmentCost | None:
        key = (first, last, axis)
        if key not in self._costs:
            seg = make_segment(self.graph, first, last, axis)
            self._costs[key] = SegmentCost(seg, self.profile) if seg is not None else None
        return self._costs[key]
