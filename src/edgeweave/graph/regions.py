"""Exact region execution: a device computes its band of a segment's outputs from the input band
it needs, with padding applied only at the tensor's true borders.

A segment is a contiguous range of graph nodes that are all local. Values produced before it are
whole on every device; values it produces and anything after it reads are its outputs, of which
each device owns one band. Needed bands are propagated backwards through the segment's DAG (a
value read by several nodes needs the hull of their needs), so residual branches, concatenations
and downsampling paths all come out exact. Concatenating the devices' bands gives exactly the
unsplit result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgeweave.graph.execute import resolve_op
from edgeweave.graph.locality import BINARY, RESIZE, Interval, Locality, NodeRule, analyze, base, resize_windows
from edgeweave.graph.opgraph import OpGraph, OpNode, decode_const
from edgeweave.graph.resample import resize_band

# A 4-D feature map splits on rows (2) or columns (3); a 3-D sequence on tokens (1).
SEED_AXES = {"rows": {4: 2, 3: 1}, "cols": {4: 3, 3: 1}}


@dataclass
class Segment:
    graph: OpGraph
    first: int
    last: int
    loc: Locality
    outputs: list[str]
    inputs: list[str]
    axis_name: str = "rows"  # what the segment was split along: "rows" or "cols" (tokens split as either)

    @property
    def nodes(self) -> range:
        return range(self.first, self.last + 1)

    def rule(self, i: int) -> NodeRule:
        return self.loc.rules[i - self.first]

    def axis(self, value: str) -> int:
        return self.loc.axes[value]

    def extent(self, value: str) -> int:
        return self.loc.shapes[value][self.axis(value)]


def make_segment(graph: OpGraph, first: int, last: int, axis: str = "rows") -> Segment | None:
    """The segment of nodes [first, last] split along `axis`, or None if a node there is a barrier."""
    loc = analyze(graph, first, last, SEED_AXES[axis])
    if any(r is None for r in loc.rules):
        return None
    inside = {graph.nodes[i].name for i in range(first, last + 1)}
    read_after = {r for n in graph.nodes[last + 1 :] for r in n.inputs}
    outputs = [
        graph.nodes[i].name
        for i in range(first, last + 1)
        if graph.nodes[i].name in read_after or i == len(graph.nodes) - 1
    ]
    inputs = sorted({r for i in range(first, last + 1) for r in graph.nodes[i].inputs if r not in inside})
    return Segment(graph, first, last, loc, outputs, inputs, axis)


def local_runs(graph: OpGraph, axis: str = "rows", min_nodes: int = 1) -> list[tuple[int, int]]:
    """Maximal ranges of consecutive local nodes (each a valid segment)."""
    runs, i, n = [], 0, len(graph.nodes)
    while i < n:
        if make_segment(graph, i, i, axis) is None:
            i += 1
            continue
        lo, hi = i, n - 1
        while lo < hi:  # the longest valid range starting at i (validity is monotone in the end)
            mid = (lo + hi + 1) // 2
            if make_segment(graph, i, mid, axis) is None:
                hi = mid - 1
            else:
                lo = mid
        if lo - i + 1 >= min_nodes:
            runs.append((i, lo))
        i = lo + 1
    return runs


def split_bands(extent: int, ratios: list[float]) -> list[Interval]:
    """Cut [0, extent) into consecutive bands proportional to `ratios` (empty bands allowed)."""
    total = sum(ratios)
    cuts, acc = [0], 0.0
    for r in ratios[:-1]:
        acc += r
        cuts.append(min(extent, max(cuts[-1], round(extent * acc / total))))
    cuts.append(extent)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def own_bands(segment: Segment, ratios: list[float]) -> list[dict[str, Interval]]:
    """Each device's band of every segment output, in the same proportions for all outputs."""
    per_output = {v: split_bands(segment.extent(v), ratios) for v in segment.outputs}
    return [{v: bands[k] for v, bands in per_output.items()} for k in range(len(ratios))]


def _hull(a: Interval | None, b: Interval) -> Interval:
    if a is None or a[0] >= a[1]:
        return b
    if b[0] >= b[1]:
        return a
    return min(a[0], b[0]), max(a[1], b[1])


def input_need(segment: Segment, i: int, ref: str, out: Interval) -> Interval:
    """The band of `ref` (an input of node i) that node i's output band `out` reads, clipped to the tensor."""
    rule = segment.rule(i)
    node = segment.graph.nodes[i]
    first_ref = node.args[0].get("ref") if node.args and isinstance(node.args[0], dict) else None
    lo, hi = rule.window.needs(out) if (rule.window is not None and ref == first_ref) else out
    extent = segment.loc.shapes[ref][_axis_of(segment, i, ref)]
    return max(lo, 0), min(hi, extent)


def _axis_of(segment: Segment, i: int, ref: str) -> int:
    """The split axis of `ref` as node i sees it (seeded for values from before the segment)."""
    axis = segment.loc.axes.get(ref)
    if axis is not None:
        return axis
    rule = segment.rule(i)
    node = segment.graph.nodes[i]
    nd_out = len(node.out_shape)
    return rule.out_axis - (nd_out - len(segment.loc.shapes[ref])) if base(node.op)[0] in BINARY else rule.in_axis


def needs(segment: Segment, own: Mapping[str, Interval]) -> dict[str, Interval]:
    """Band of every value (inside the segment) a device must compute to produce `own`."""
    need: dict[str, Interval] = {v: iv for v, iv in own.items() if iv[0] < iv[1]}
    inside = {segment.graph.nodes[i].name for i in segment.nodes}
    for i in reversed(segment.nodes):
        node = segment.graph.nodes[i]
        out = need.get(node.name)
        if out is None:
            continue
        for ref in node.inputs:
            if ref in inside and _is_split_operand(segment, i, ref):
                need[ref] = _hull(need.get(ref), input_need(segment, i, ref, out))
    return need


def _is_split_operand(segment: Segment, i: int, ref: str) -> bool:
    """Does node i read `ref` band-wise (True) or whole, as a broadcast operand (False)?"""
    node = segment.graph.nodes[i]
    if base(node.op)[0] not in BINARY:
        return True
    rule = segment.rule(i)
    shape = segment.loc.shapes[ref]
    aligned = rule.out_axis - (len(node.out_shape) - len(shape))
    return aligned >= 0 and shape[aligned] == node.out_shape[rule.out_axis] and shape[aligned] > 1


@dataclass
class Band:
    tensor: torch.Tensor
    start: int  # global index of the first element along the value's split axis


def run_bands(
    segment: Segment,
    weights: Mapping[str, torch.Tensor],
    whole: Mapping[str, torch.Tensor],
    own: Mapping[str, Interval],
    wavefront: dict[str, Band] | None = None,
) -> dict[str, Band]:
    """Compute this device's `own` bands of the segment outputs from its inputs.

    `whole` maps every value produced before the segment to the whole tensor or to a `Band`
    covering at least what `input_bands` names (what a helper device is sent).

    With `wavefront` (one dict per device, segment and request, kept between the chunks of a
    streamed band), every node computes only the rows it has not computed for an earlier chunk
    and keeps them for the next: a chunk costs its new rows, never a recomputed halo.
    """
    need = needs(segment, own)
    bands: dict[str, Band] = {}
    for i in segment.nodes:
        node = segment.graph.nodes[i]
        if node.name not in need:
            continue
        lo, hi = need[node.name]
        prev = wavefront.get(node.name) if wavefront is not None else None
        axis = segment.axis(node.name)
        held = None if prev is None else (prev.start, prev.start + prev.tensor.shape[axis])
        start = wavefront_start(held, lo)
        if prev is None or start == lo:
            band = Band(_run_node(segment, i, (lo, hi), bands, whole, weights), lo)
        else:  # rows [lo, start) were computed for the previous chunk: keep them, add the new ones
            kept = prev.tensor.narrow(axis, lo - prev.start, start - lo)
            fresh = [_run_node(segment, i, (start, hi), bands, whole, weights)] if hi > start else []
            band = Band(torch.cat([kept, *fresh], dim=axis) if fresh else kept, lo)
        bands[node.name] = band
        if wavefront is not None:
            wavefront[node.name] = band
    out = {}
    for v, (a, b) in own.items():
        if a >= b:
            continue
        band = bands[v]
        out[v] = Band(band.tensor.narrow(segment.axis(v), a - band.start, b - a), a)
    return out


def chunk_bands(own: Mapping[str, Interval], chunks: int) -> list[dict[str, Interval]]:
    """`own` cut into `chunks` consecutive sub-bands (of every output alike); empty ones dropped."""
    cuts = {v: [(a + x, a + y) for x, y in split_bands(b - a, [1.0] * chunks)] for v, (a, b) in own.items()}
    subs = [{v: c[j] for v, c in cuts.items()} for j in range(chunks)]
    return [sub for sub in subs if any(b > a for a, b in sub.values())]


def wavefront_start(done: Interval | None, lo: int) -> int:
    """First row a node must still compute for a chunk that needs rows from `lo`, given the rows
    `done` it computed for earlier chunks of the same band (kept: a wavefront never recomputes)."""
    if done is None or done[1] < lo or done[0] > lo:
        return lo
    return done[1]


def input_bands(segment: Segment, own: Mapping[str, Interval]) -> dict[str, Interval]:
    """The band of every value from before the segment that a device needs (what must be sent to it)."""
    need = needs(segment, own)
    result: dict[str, Interval] = {}
    inside = {segment.graph.nodes[i].name for i in segment.nodes}
    for i in segment.nodes:
        node = segment.graph.nodes[i]
        if node.name not in need:
            continue
        for ref in node.inputs:
            if ref not in inside:
                iv = input_need(segment, i, ref, need[node.name]) if _is_split_operand(segment, i, ref) else None
                whole_iv = (0, segment.loc.shapes[ref][_axis_of(segment, i, ref)]) if iv is None else iv
                result[ref] = _hull(result.get(ref), whole_iv)
    return result


def input_axis(segment: Segment, value: str) -> int:
    """The axis along which a value entering the segment is cut into bands (as its readers see it)."""
    for i in segment.nodes:
        if value in segment.graph.nodes[i].inputs:
            return _axis_of(segment, i, value)
    raise KeyError(f"{value} is not read by the segment")


def _slice(t: torch.Tensor, axis: int, lo: int, hi: int) -> torch.Tensor:
    return t.narrow(axis, lo, hi - lo)


def _run_node(segment: Segment, i: int, out: Interval, bands: dict[str, Band], whole, weights) -> torch.Tensor:
    node = segment.graph.nodes[i]
    rule = segment.rule(i)
    name = base(node.op)[0]
    first_ref = node.args[0].get("ref") if node.args and isinstance(node.args[0], dict) else None

    def operand(ref: str) -> torch.Tensor:
        axis = _axis_of(segment, i, ref)
        held = bands.get(ref, whole.get(ref))
        if not _is_split_operand(segment, i, ref):
            return held.tensor if isinstance(held, Band) else held
        lo, hi = input_need(segment, i, ref, out)
        if isinstance(held, Band):  # computed here, or received as a band: index relative to its start
            return _slice(held.tensor, axis, lo - held.start, hi - held.start)
        return _slice(held, axis, lo, hi)

    args, kwargs = band_args(node, operand, lambda key: band_weight(rule, node, weights[key], out))
    if name in RESIZE or name == "conv_transpose2d":  # windows that are not affine: own band kernels
        start = input_need(segment, i, first_ref, out)[0]
        if name == "conv_transpose2d":
            return _conv_transpose_band(args, kwargs, rule, out, start)
        return _resize_band(node, args, rule, out, start, segment.loc.shapes[first_ref])
    if rule.window is not None:
        args = _pad_window(args, rule, out, segment.loc.shapes[first_ref][rule.in_axis], name)
    args = with_band_shape(rule, node, args, out)
    result = resolve_op(node.op)(*args, **kwargs)
    return result if node.out_index is None else result[node.out_index]


def band_args(
    node: Any, operand: Callable[[str], Any], weight: Callable[[str], torch.Tensor]
) -> tuple[list[Any], dict[str, Any]]:
    """A node's arguments for a band: values through `operand`, weights through `weight`,
    constants decoded (shared by the interpreted path here and compiled band programs)."""

    def build(value: Any) -> Any:
        if isinstance(value, list):
            return [build(v) for v in value]
        if isinstance(value, dict):
            if "ref" in value:
                return operand(value["ref"])
            if "w" in value:
                return weight(value["w"])
        return decode_const(value)

    return [build(a) for a in node.args], {k: build(v) for k, v in node.kwargs.items()}


def band_weight(rule: NodeRule, node: Any, w: torch.Tensor, out: Interval) -> torch.Tensor:
    """A weight an element-wise op broadcasts along the split axis is cut to the band's rows."""
    if base(node.op)[0] in BINARY:
        aligned = rule.out_axis - (len(node.out_shape) - w.dim())
        if aligned >= 0 and w.shape[aligned] == node.out_shape[rule.out_axis] and w.shape[aligned] > 1:
            return _slice(w, aligned, *out)
    return w


def with_band_shape(rule: NodeRule, node: Any, args: list[Any], out: Interval) -> list[Any]:
    """A shape argument (view, reshape, expand) names the band's length on the split axis."""
    if rule.shape_arg is None:
        return args
    args = list(args)
    shape = list(args[rule.shape_arg])
    off = len(shape) - len(node.out_shape)
    if shape[rule.out_axis + off] != -1:
        shape[rule.out_axis + off] = out[1] - out[0]
    args[rule.shape_arg] = shape
    return args


def _pad_window(args: list[Any], rule: NodeRule, out: Interval, extent: int, name: str) -> list[Any]:
    """Pad the input band only where it meets the tensor's true border; no implicit padding on the axis."""
    lo_raw, hi_raw = rule.window.needs(out)
    before, after = max(0, -lo_raw), max(0, hi_raw - extent)
    x = args[0]
    d = rule.in_axis - 2
    if before or after:
        spec = [0, 0, 0, 0]  # F.pad order: last dim first -> (W_left, W_right, H_top, H_bottom)
        spec[2 * (1 - d)], spec[2 * (1 - d) + 1] = before, after
        x = F.pad(x, spec, value=rule.pad_value)
    return zero_axis_padding([x, *args[1:]], name, d)


def zero_axis_padding(args: list[Any], name: str, d: int) -> list[Any]:
    """A window op's arguments with its padding along spatial axis `d` set to 0: the caller
    provides those rows itself (padded only at the true borders)."""
    pad_index = 4 if name == "conv2d" else 3
    args = list(args)
    while len(args) <= pad_index:  # fill defaults up to the padding argument
        args.append(_DEFAULTS[name][len(args)])
    padding = list(args[pad_index]) if isinstance(args[pad_index], (list, tuple)) else [args[pad_index]] * 2
    if len(padding) == 1:
        padding = padding * 2
    padding[d] = 0
    args[pad_index] = padding
    if name in ("max_pool2d", "avg_pool2d") and not args[2]:
        args[2] = list(args[1])  # stride defaults to the kernel: keep it explicit once we pass padding
    return args


def _resize_band(node: OpNode, args: list[Any], rule: NodeRule, out: Interval, start: int, in_shape) -> torch.Tensor:
    """Resizing: ATen's per-axis indices and weights for the band's own output indices (see `resample`)."""
    windows = resize_windows(node, in_shape)
    assert windows is not None, node.op  # the rule exists only when the windows do
    return resize_band(args[0], windows, rule.in_axis, start, out)


def _conv_transpose_band(
    args: list[Any], kwargs: dict[str, Any], rule: NodeRule, out: Interval, start: int
) -> torch.Tensor:
    """Transposed convolution of the input band without padding along the axis, then cut to `out`.

    Without padding, the band's first input row `start` lands on global output row
    start*stride - pad; rows of `out` that no input of the band reaches (at the borders, or
    where output_padding adds rows) get the bias alone, as they do in the whole op. The bias is
    added after the cut: ATen adds it after accumulating as well, so the values are the same.
    """
    full = [*args, *([None] * 8)][:8]
    for k, key in enumerate(("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")):
        if key in kwargs:
            full[k] = kwargs[key]
    x, weight, bias = full[0], full[1], full[2]
    stride, padding, out_pad, dilation = (_pair(full[k], default) for k, default in ((3, 1), (4, 0), (5, 0), (7, 1)))
    groups = 1 if full[6] is None else int(full[6])
    d, axis = rule.in_axis - 2, rule.in_axis
    padding_here, out_pad_here = list(padding), list(out_pad)
    padding_here[d] = out_pad_here[d] = 0
    if x.shape[axis] > 0:
        y = torch.ops.aten.conv_transpose2d.input(x, weight, None, stride, padding_here, out_pad_here, groups, dilation)
        first = start * stride[d] - padding[d]  # global output index of y's first row along the axis
    else:  # no input reaches the band: an empty piece at the band's start, padded to the band below
        e = 1 - d  # the other spatial axis keeps its whole (transposed-convolution) size
        other = (x.shape[2 + e] - 1) * stride[e] - 2 * padding[e] + dilation[e] * (weight.shape[2 + e] - 1)
        shape = [x.shape[0], weight.shape[1] * groups, 0, 0]
        shape[2 + e] = other + out_pad[e] + 1
        y, first = x.new_zeros(shape), out[0]
    before, after = first - out[0], out[1] - (first + y.shape[axis])
    spec = [0, 0, 0, 0]  # F.pad order: (W_left, W_right, H_top, H_bottom); negative values cut
    spec[2 * (1 - d)], spec[2 * (1 - d) + 1] = before, after
    y = F.pad(y, spec)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _pair(value: Any, default: int) -> list[int]:
    if value is None:
        return [default, default]
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return values * 2 if len(values) == 1 else values


_DEFAULTS = {
    "conv2d": [None, None, None, [1, 1], [0, 0], [1, 1], 1],
    "max_pool2d": [None, None, [], [0, 0], [1, 1], False],
    "avg_pool2d": [None, None, [], [0, 0], False, True, None],
}
