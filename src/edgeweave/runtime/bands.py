"""Band tasks of hybrid plans on a worker: receive input bands, compute a band, gather bands.

Kept apart from the worker's threading: these are plain functions over a request's state, so
the worker only decides *when* they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from edgeweave.graph.band_program import ProgramPool
from edgeweave.graph.opgraph import INPUT, OpGraph
from edgeweave.graph.regions import Band, Segment, input_axis, make_segment


class BandContext:
    """Segments of one deployment, rebuilt from the (weightless) graph the coordinator ships.

    `regions` (those of the deployment's tasks) are built up front: a device that only receives
    bands of a segment (a gathering device with no rows of it) must still know their axis.
    """

    def __init__(
        self,
        graph: OpGraph,
        regions: list[Mapping[str, Any]] = (),
        weights: Mapping[str, torch.Tensor] | None = None,
    ):
        self.graph = graph
        self.index = graph.index()  # built once: `assemble` runs before every ordinary task
        self.segments: dict[tuple[int, int, str], Segment] = {}
        self.programs = ProgramPool(weights or {})
        for region in regions:
            seg = self.segment(region)
            if region.get("own") is not None and region.get("step") is None:
                raise ValueError("a band compute task names no step (a plan from an older version?): plan again")
            if weights is not None and region.get("step") == 0:
                self.programs.prepare(seg, _own(region), int(region["chunks"]))  # compiled at deploy time

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

    def shape(self, value: str) -> list[int]:
        return list(self.graph.input_shape) if value == INPUT else list(self.graph.nodes[self.index[value]].out_shape)


def outgoing(
    env: Mapping[str, torch.Tensor], bands: Mapping[str, list[Band]], ctx: BandContext, task: Mapping[str, Any]
) -> list[torch.Tensor]:
    """The tensors a region transfer carries: slices of whole values, or this device's own bands."""
    region = task["region"]
    seg = ctx.segment(region)
    out = []
    for v in task["values"]:
        lo, hi = region["bands"][v]
        axis = input_axis(seg, v) if v in seg.inputs else seg.axis(v)
        if v in env:  # a whole value held here (a segment input on the source)
            out.append(env[v].narrow(axis, lo, hi - lo))  # made contiguous in wire order by `pack`
            continue
        # a band this device computed, or (several split layers) one gathered here from bands
        band = covering(bands.get(v, []), axis, ctx.shape(v), lo, hi)
        if band is None:
            raise ValueError(f"task {task['id']}: rows {lo}-{hi} of {v} are not held here")
        out.append(band.tensor.narrow(axis, lo - band.start, hi - lo))
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
    task: Mapping[str, Any],
    programs: dict[tuple, Any],
) -> None:
    """Run step `region.step` of a band task: the rows of the segment outputs it finishes join
    `bands`. `programs` (per request) holds the compiled program of each band the request is in
    the middle of (see `_run_step`)."""
    region = task["region"]
    _run_step(env, bands, ctx, ctx.segment(region), region, programs)


def _own(region: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    return {v: (int(a), int(b)) for v, (a, b) in region["own"].items()}


def _run_step(
    env: Mapping[str, torch.Tensor],
    bands: dict[str, list[Band]],
    ctx: BandContext,
    seg: Segment,
    region: Mapping[str, Any],
    state: dict[tuple, Any],
) -> None:
    """Step j of a band as a compiled program (graph/band_program.py): feed the input rows that
    arrived (or, at step 0 on a device that holds them whole, all of them), run the step, keep
    the output rows it finished as bands. The program instance belongs to the request from its
    first step to its last, then goes back to the pool."""
    own, chunks, j = _own(region), int(region["chunks"]), int(region["step"])
    pool = ctx.programs
    key = ("program", *pool.key(seg, own, chunks))
    if j == 0 or key not in state:
        state[key] = (pool.take(seg, own, chunks), {})
    program, fed = state[key]
    geometry = program.geometry
    for v in geometry.inputs:
        if v in env:
            if j == 0:
                program.feed(v, env[v], 0)
            continue
        pieces = bands.get(v, [])
        for piece in pieces[fed.get(v, 0) :]:  # pieces arrive in order: feed each one once
            program.feed(v, piece.tensor, piece.start)
        fed[v] = len(pieces)
    with torch.no_grad():
        for v, band in program.step(j).items():
            bands.setdefault(v, []).append(band)
    if j == geometry.steps - 1:
        pool.give(seg, own, chunks, program)
        del state[key]


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


def covering(pieces: list[Band], axis: int, shape: list[int], lo: int, hi: int) -> Band | None:
    """One band holding rows [lo, hi) of a value along `axis`, merged from the pieces held, or None.

    With several split layers a device holds pieces of one value from different tasks (bands it
    computed, halos it was sent, possibly along another axis): only pieces that are whole on every
    other axis are bands along `axis`, and the merged run that contains [lo, hi) is the answer.
    """
    for p in pieces:  # most often one piece holds the rows asked for (a streamed step's output)
        if p.start <= lo and p.start + p.tensor.shape[axis] >= hi and p.tensor.dim() == len(shape):
            if all(p.tensor.shape[d] == n for d, n in enumerate(shape) if d != axis):
                return p
    fits = [
        p
        for p in pieces
        if all(p.tensor.shape[d] == n for d, n in enumerate(shape) if d != axis) and p.tensor.dim() == len(shape)
    ]
    runs: list[list[Band]] = []
    end = None  # where the current run stops
    for piece in sorted(fits, key=lambda b: b.start):
        if end is not None and piece.start <= end:
            runs[-1].append(piece)
        else:
            runs.append([piece])
            end = piece.start
        end = max(end, piece.start + piece.tensor.shape[axis])
    for run in runs:
        band = merged(run, axis)
        if band.start <= lo and band.start + band.tensor.shape[axis] >= hi:
            return band
    return None


def assemble(env: dict[str, torch.Tensor], bands: dict[str, list[Band]], ctx: BandContext) -> None:
    """Concatenate every gathered value from its bands, in order along its split axis."""
    for v in list(bands):
        if v in env or v not in ctx.index:
            continue
        axis = _value_axis(ctx, v)
        if axis is None:
            continue
        shape = ctx.shape(v)
        whole = covering(bands[v], axis, shape, 0, shape[axis])
        if whole is not None:  # from now on the whole value serves every reader (kept while one is left)
            env[v] = whole.tensor
            del bands[v]


def _value_axis(ctx: BandContext, value: str) -> int | None:
    for seg in ctx.segments.values():
        if value in seg.outputs:
            return seg.axis(value)
    return None
