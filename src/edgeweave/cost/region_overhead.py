"""What computing a partial region really costs, measured: a slowdown and a price per node per task.

A device that computes a band of a segment does not take `band/extent` of the whole segment's
time. A thin band is a less efficient convolution than a whole map, a column band is strided
(every row a separate stretch of memory), and every call of every streamed step pays dispatch
that does not shrink with the band.

So the planner prices a band task as `slowdown[axis] * proportional work + overhead_s[axis] *
nodes it runs`. The profiler measures both per axis, once per model, by least squares over band
sizes and chunk counts run exactly as the runtime runs them (compiled band programs fed by input
chunks), never below DEFAULT_REGION_COSTS, and stores them in the profile JSON as the
extra field `region_costs`; profiles without it use the defaults.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch

from edgeweave.graph.band_program import BandProgram, StepGeometry, step_geometry
from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import INPUT, OpGraph
from edgeweave.graph.regions import local_runs, make_segment, own_bands

# Defaults, and floors for what the profiler reports: compiled band programs (graph/band_program.py)
# measured in one process, one thread (benchmarks/band_engine.py): a row band of resnet18's backbone
# took 1.06x the unsplit time in one step, and each further call ~10 us (mobilenet_v2: ~30 us);
# column bands are strided (every row a separate stretch of memory).
DEFAULT_REGION_COSTS = {
    "rows": {"slowdown": 1.05, "overhead_s": 20e-6},
    "cols": {"slowdown": 1.5, "overhead_s": 30e-6},
}
CONFIGS = ((0.25, 1), (0.25, 2), (1.0, 1), (1.0, 4))  # (share of the output, chunks)
MAX_NODES = 40  # a segment long enough to average over op kinds, short enough to measure quickly
MAX_SEGMENT_S = 0.03  # ... and at most this much profiled time (VGG's first conv alone is ~50 ms)


def _median_time(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def streamed_work(segment, node_times: Mapping[str, float], geometry: StepGeometry) -> tuple[float, int]:
    """(proportional work, node calls) of a band computed in input-driven steps: every node
    computes each of its rows once (the geometry the planner prices and the program runs)."""
    work, calls = 0.0, 0
    for computed in geometry.computed:
        work += sum(node_times[v] * (hi - lo) / segment.extent(v) for v, (lo, hi) in computed.items())
        calls += len(computed)
    return work, calls


def _segment(graph: OpGraph, axis: str, node_times: list[float]):
    runs = [(a, b) for a, b in local_runs(graph, axis) if b > a]
    if not runs:
        return None
    first, last = max(runs, key=lambda r: r[1] - r[0])
    last = min(last, first + MAX_NODES - 1)
    spent = 0.0
    for i in range(first, last + 1):
        spent += node_times[i]
        if spent > MAX_SEGMENT_S and i > first + 1:
            last = i - 1
            break
    seg = None
    while last >= first and seg is None:  # the cut may leave several values live: shorten until valid
        seg = make_segment(graph, first, last, axis)
        last -= 0 if seg is not None else 1
    return seg if seg is not None and seg.last - seg.first >= 3 else None


@torch.no_grad()
def measure_region_costs(
    graph: OpGraph, weights: Mapping[str, torch.Tensor], x: torch.Tensor, node_times: list[float], repeats: int = 5
) -> dict[str, dict[str, float]] | None:
    """Per split axis, `slowdown` and `overhead_s` (see the module docstring), or None when the
    model has no splittable segment. The segment is the longest local run at the model's start,
    cut to MAX_NODES nodes and MAX_SEGMENT_S."""
    out = {}
    for axis in ("rows", "cols"):
        seg = _segment(graph, axis, node_times)
        fit = None if seg is None else _measure_axis(seg, weights, x, node_times, repeats)
        if fit is not None:  # a fit may raise the defaults, not lower them: on a shared host it errs low
            floor = DEFAULT_REGION_COSTS[axis]
            out[axis] = {"slowdown": max(fit[0], floor["slowdown"]), "overhead_s": max(fit[1], floor["overhead_s"])}
    return out or None


def _measure_axis(seg, weights: Mapping[str, torch.Tensor], x: torch.Tensor, node_times: list[float], repeats: int):
    """Fit one axis. Each configuration is timed alternately with the whole segment, and its time
    is taken relative to it (median of the ratios) times the segment's profiled time: a machine
    that is busier now than when it was profiled, or busier for a moment, does not pass for band
    overhead."""
    graph = seg.graph
    runner = GraphRunner(graph, weights, range(seg.last + 1))
    env = runner.run_nodes(range(seg.first), {INPUT: x}, keep=set(seg.inputs)) if seg.first else {INPUT: x}
    whole = {v: env[v] for v in seg.inputs}
    times = {graph.nodes[i].name: node_times[i] for i in seg.nodes}
    profiled = sum(times.values())
    extent = seg.extent(seg.outputs[-1])

    def plain() -> None:
        runner.run_nodes(seg.nodes, dict(whole), keep=set(times))

    points = []
    for share, chunks in CONFIGS:
        rows = max(1, round(extent * share))
        if rows < extent:
            own = own_bands(seg, [rows / extent, 1 - rows / extent])[0]
        else:
            own = {v: (0, seg.extent(v)) for v in seg.outputs}

        geometry = step_geometry(seg, own, chunks)
        program = BandProgram(seg, weights, geometry)

        def streamed(program=program, geometry=geometry) -> None:
            for j in range(geometry.steps):
                for v, (a, b) in geometry.received[j].items():
                    program.feed(v, whole[v].narrow(program.buffers[v].axis, a, b - a), a)
                program.step(j)

        streamed()
        ratios = [_median_time(streamed, 1) / _median_time(plain, 1) for _ in range(repeats)]
        work, tasks = streamed_work(seg, times, geometry)
        points.append((work, tasks, statistics.median(ratios) * profiled))
    return _fit(points)


def _fit(points: list[tuple[float, int, float]]) -> tuple[float, float] | None:
    """Least squares of measured = slowdown * work + overhead * tasks, clamped to sane ranges
    (slowdown 1-4, overhead 0-2 ms): a noisy measurement must not make splitting look free."""
    if len(points) < 2:
        return None
    pp = sum(p * p for p, _, _ in points)
    pn = sum(p * n for p, n, _ in points)
    nn = sum(n * n for _, n, _ in points)
    pm = sum(p * m for p, _, m in points)
    nm = sum(n * m for _, n, m in points)
    det = pp * nn - pn * pn
    if abs(det) < 1e-18:
        return None
    slowdown = (pm * nn - pn * nm) / det
    overhead = (pp * nm - pn * pm) / det
    return min(4.0, max(1.0, slowdown)), min(2e-3, max(0.0, overhead))
