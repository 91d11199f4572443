"""What computing a partial region really costs: a fixed price per node per band task.

A device that computes a band of a segment does not take `band/extent` of the whole segment's
time: every node of every band task pays a fixed cost (operator dispatch, slicing the operand,
padding the window at true borders, merging streamed chunks) that does not shrink with the band.
Small bands and many chunks are therefore less efficient than the proportional model says
(measured on this machine: ~80-120 us per node per band task, so a 30-node ResNet stem split
into 1-row chunks costs about twice its proportional share).

The hybrid planner adds `region_overhead_s` (at the profile's reference speed) per node for
every band task it schedules; the profiler measures it once per model and stores it in the
profile JSON as an extra field (profiles without it fall back to DEFAULT_REGION_OVERHEAD_S).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch

from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import INPUT, OpGraph
from edgeweave.graph.regions import local_runs, make_segment, needs, own_bands, run_bands

DEFAULT_REGION_OVERHEAD_S = 90e-6  # per node per band task, measured here on resnet18/mobilenet_v2
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
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


@torch.no_grad()
def measure_region_overhead(
    graph: OpGraph, weights: Mapping[str, torch.Tensor], x: torch.Tensor, node_times: list[float], repeats: int = 5
) -> float | None:
    """Seconds per node per band task beyond the proportional share of the profiled node times.

    Runs bands of 1/16 to all of the longest local run (cut to MAX_NODES nodes and
    MAX_SEGMENT_S) and fits measured = scale * proportional + overhead * nodes by least squares.
    The proportional prediction comes from `node_times` (halo rows included); `scale` absorbs
    a machine that runs faster or slower now than when the profile was taken (a shared VM), so
    only the per-node intercept is kept. None when the model has no splittable segment.
    """
    runs = [(a, b) for a, b in local_runs(graph, "rows") if b > a]
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
        seg = make_segment(graph, first, last, "rows")
        last -= 0 if seg is not None else 1
    if seg is None or last - first < 3:  # too few nodes to tell a per-node cost from noise
        return None
    runner = GraphRunner(graph, weights, range(first))
    env = runner.run_nodes(range(first), {INPUT: x}, keep=set(seg.inputs)) if first else {INPUT: x}
    whole = {v: env[v] for v in seg.inputs}
    extent = seg.extent(seg.outputs[-1])
    points: list[tuple[float, int, float]] = []  # (proportional prediction, nodes run, measured)
    for frac in FRACTIONS:
        rows = max(1, round(extent * frac))
        if rows < extent:
            own = own_bands(seg, [rows / extent, 1 - rows / extent])[0]
        else:
            own = {v: (0, seg.extent(v)) for v in seg.outputs}
        need = needs(seg, own)
        predicted = sum(
            node_times[i] * (b - a) / seg.extent(graph.nodes[i].name)
            for i in seg.nodes
            if (iv := need.get(graph.nodes[i].name)) is not None
            for a, b in [iv]
        )
        measured = _median_time(lambda own=own: run_bands(seg, weights, whole, own), repeats)
        points.append((predicted, len(need), measured))
    return _fit_intercept(points)


def _fit_intercept(points: list[tuple[float, int, float]]) -> float | None:
    """Least squares of measured = a * predicted + c * nodes; returns c clamped to [0, 1 ms]."""
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
    c = (pp * nm - pn * pm) / det
    return min(1e-3, max(0.0, c))
