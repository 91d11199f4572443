"""Band tasks of hybrid plans on a worker: receive input bands, compute a band, gather bands.

Kept apart from the worker's threading: these are plain functions over a request's state, so
the worker only decides *when* they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import Band, Segment, input_axis, make_segment, run_bands


class BandContext:
    """Segments of one deployment, rebuilt from the (weightless) graph the coordinator ships."""

    def __init__(self, graph: OpGraph):
        self.graph = graph
        self.index = graph.index()  # built once: `assemble` runs before every ordinary task
        self.segments: dict[tuple[int, int, str], Segment] = {}

    def segment(self, region: Mapping[str, Any]) -> Segment:
        first, last = region["segment"]
        key = (int(first), int(last), str(region["axis"]))
        if key not in self.segments:
            seg = make_segment(self.graph, *key)
            if seg is None:
                raise ValueError(f"nodes {first}-{last} are not a local segment along {region['axis']}")
            self.segments[key] = seg
        return self.segments[key]

    def inputs_of(self, region: Mapping[str, Any]) -> list[str]:
        return self.segment(region).inputs


def outgoing(
    env: Mapping[str, torch.Tensor], bands: Mapping[str, list[Band]], ctx: BandContext, task: Mapping[str, Any]
) -> list[torch.Tensor]:
    """The tensors a region transfer carries: slices of whole values, or this device's own bands."""
    region = task["region"]
    seg = ctx.segment(region)
    out = []
    for v in task["values"]:
        lo, hi = region["bands"][v]
        if v in env:  # a whole value held here (a segment input on the source)
            axis = input_axis(seg, v)
            out.append(env[v].narrow(axis, lo, hi - lo).contiguous())
        else:  # a band this device computed
            band = next(b for b in bands[v] if b.start <= lo and b.start + b.tensor.shape[seg.axis(v)] >= hi)
            out.append(band.tensor.narrow(seg.axis(v), lo - band.start, hi - lo).contiguous())
    return out


def receive(bands: dict[str, list[Band]], task: Mapping[str, Any], values: Mapping[str, torch.Tensor]) -> None:
    """Keep received bands as bands (with their start), to be read relative to it or gathered."""
    for v, t in values.items():
        lo, _ = task["region"]["bands"][v]
        bands.setdefault(v, []).append(Band(t, int(lo)))


def compute(
    env: Mapping[str, torch.Tensor],
    bands: dict[str, list[Band]],
    ctx: BandContext,
    weights: Mapping[str, torch.Tensor],
    task: Mapping[str, Any],
) -> None:
    """Run a band task: its own bands of the segment outputs join `bands`."""
    region = task["region"]
    seg = ctx.segment(region)
    inputs: dict[str, Any] = {}
    for v in seg.inputs:
        if v in env:
            inputs[v] = env[v]
        elif v in bands:
            inputs[v] = merged(bands[v], input_axis(seg, v))
    own = {v: (int(a), int(b)) for v, (a, b) in region["own"].items()}
    with torch.no_grad():
        for v, band in run_bands(seg, weights, inputs, own).items():
            bands.setdefault(v, []).append(band)


def merged(pieces: list[Band], axis: int) -> Band:
    """One band from pieces streamed in order (each chunk brings the rows after the previous one).

    Overlapping rows are taken once; the band stops at the first gap, so it never claims rows it lacks.
    """
    if len(pieces) == 1:
        return pieces[0]
    ordered = sorted(pieces, key=lambda b: b.start)
    tensors, end = [], ordered[0].start
    for piece in ordered:
        size = piece.tensor.shape[axis]
        if piece.start > end:
            break
        if piece.start + size <= end:
            continue
        skip = end - piece.start
        tensors.append(piece.tensor.narrow(axis, skip, size - skip) if skip > 0 else piece.tensor)
        end = piece.start + size
    return Band(torch.cat(tensors, dim=axis), ordered[0].start)


def assemble(env: dict[str, torch.Tensor], bands: dict[str, list[Band]], ctx: BandContext) -> None:
    """Concatenate every gathered value from its bands, in order along its split axis."""
    for v in list(bands):
        if v in env or v not in ctx.index:
            continue
        axis = _value_axis(ctx, v)
        if axis is None:
            continue
        whole = merged(bands[v], axis)
        if whole.start == 0 and whole.tensor.shape[axis] == ctx.graph.nodes[ctx.index[v]].out_shape[axis]:
            env[v] = whole.tensor


def _value_axis(ctx: BandContext, value: str) -> int | None:
    for seg in ctx.segments.values():
        if value in seg.outputs:
            return seg.axis(value)
    return None
