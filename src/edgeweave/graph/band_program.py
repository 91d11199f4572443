"""Compiled band programs: one device's band of a segment, streamed by *input* chunks.

A helper receives the input band it needs in chunks, top to bottom. When a chunk arrives it
computes, for every node of the segment, every row that has just become computable and that it
needs (`StepGeometry`): a convolution's output row is computable once the input rows of its
window are there. Each node writes its rows into a preallocated buffer of its whole needed band,
so nothing is concatenated and nothing is recomputed; the last chunk finishes the tail. The
source, which holds its whole input, runs the same steps to hand its output rows on early.

`step_geometry` is pure (rows per node per step, rows received, rows finished): the planner
prices exactly this schedule from it. `BandProgram` executes it: built once per deployment from
the geometry, with every slice, padding and buffer worked out up front, so a step is a list of
bound ATen calls on views of those buffers:

- buffers cover a value's needed band plus the rows of zero (or -inf) padding its windowed
  readers need at the tensor's true borders, filled once; a convolution then reads a view with
  the split axis' padding set to 0, and no per-call `F.pad` copy is made;
- received chunks are copied straight into the input buffer;
- 4-D buffers are channels_last (a row band is then one contiguous stretch of memory, and
  oneDNN convolutions on thin bands cost 1.5x their share instead of 4-7x in NCHW).

Nodes the program does not specialise (windows other than convolution and pooling) run through
`regions._run_node` on band views of the same buffers: same geometry, generic execution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edgeweave.graph.execute import resolve_op
from edgeweave.graph.kernels import ShapedConv2d
from edgeweave.graph.locality import Interval, Window, base
from edgeweave.graph.regions import (
    Band,
    Segment,
    _axis_of,
    _is_split_operand,
    _run_node,
    band_args,
    band_weight,
    input_axis,
    input_bands,
    input_need,
    needs,
    split_bands,
    with_band_shape,
    zero_axis_padding,
)

WINDOWED = ("conv2d", "max_pool2d", "avg_pool2d")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class StepGeometry:
    """How one device's band of a segment is computed in input-driven steps.

    `received[j]`: rows of each segment input that arrive for step j (new rows only);
    `computed[j]`: rows each node newly computes in step j (inside its needed band);
    `finished[j]`: rows of each segment output of the device's own band that step j completes.
    `needed` / `inputs` are the whole needed bands (buffers are allocated for them).
    """

    own: dict[str, Interval]
    needed: dict[str, Interval]
    inputs: dict[str, Interval]
    received: list[dict[str, Interval]]
    computed: list[dict[str, Interval]]
    finished: list[dict[str, Interval]]

    @property
    def steps(self) -> int:
        return len(self.computed)


def input_cuts(inputs: Mapping[str, Interval], chunks: int) -> list[dict[str, int]]:
    """Where each chunk of every input band ends: the bands cut into `chunks` near-equal row ranges."""
    ends = {v: [lo + b for _, b in split_bands(hi - lo, [1.0] * chunks)] for v, (lo, hi) in inputs.items()}
    return [{v: e[k] for v, e in ends.items()} for k in range(chunks)]


def _computable(segment: Segment, i: int, lo: int, start: int, hi: int, avail: Mapping[str, int]) -> int:
    """The end of the longest run [lo, end) of node i's rows, end in [start, hi], whose operand rows
    are all available (`avail[ref]`: rows of ref are present up to there). Closed form for
    identity and affine windows; a bisection (needs are monotone) for any other window."""
    node = segment.graph.nodes[i]
    rule = segment.rule(i)
    first_ref = node.args[0].get("ref") if node.args and isinstance(node.args[0], dict) else None
    end = hi
    for r in dict.fromkeys(node.inputs):
        if r not in avail or not _is_split_operand(segment, i, r):
            continue
        got = avail[r]
        if got >= segment.loc.shapes[r][_axis_of(segment, i, r)]:
            continue  # all rows of r are there (a need clipped at the bottom border is met)
        window = rule.window if r == first_ref else None
        if window is None:
            end = min(end, got)
        elif isinstance(window, Window):
            end = min(end, (got + window.pad - window.span) // window.stride + 1)
        else:
            end = min(end, _bisect(lambda e, r=r, got=got: input_need(segment, i, r, (lo, e))[1] <= got, start, hi))
    return max(end, start)


def _bisect(ok: Callable[[int], bool], start: int, hi: int) -> int:
    """The largest e in [start, hi] with ok(e), ok monotone (true up to some point) and ok(start) true."""
    if ok(hi):
        return hi
    a, b = start, hi
    while b - a > 1:
        mid = (a + b) // 2
        if ok(mid):
            a = mid
        else:
            b = mid
    return a


MIN_ROWS = 2
"""Before the last step, a node computes only once at least this many new rows are computable
(or its band is complete): a call costs ~15-25 us whatever its size, and a deep layer would
otherwise compute one row per chunk (measured: mobilenet_v2 in 8 chunks, 812 calls with 1, 665
with 2, 492 with 4). Deferring rows lengthens the tail after the last chunk, though: resnet18
streamed at 27 Mbps is predicted 63.5 / 63.6 / 64.4 ms with 1 / 2 / 4."""


def step_geometry(
    segment: Segment,
    own: Mapping[str, Interval],
    chunks: int,
    min_rows: int = MIN_ROWS,
    need: Mapping[str, Interval] | None = None,
    inputs: Mapping[str, Interval] | None = None,
) -> StepGeometry:
    """The input-driven schedule of computing `own` when the input band arrives in `chunks` chunks.

    Steps in which no node can compute anything new are merged into the next (their input rows
    travel with it), so every step computes something and the last one finishes the band."""
    own = {v: (int(a), int(b)) for v, (a, b) in own.items() if b > a}
    need = dict(needs(segment, own) if need is None else need)
    inputs = dict(input_bands(segment, own) if inputs is None else inputs)
    order = [i for i in segment.nodes if segment.graph.nodes[i].name in need]
    done = {segment.graph.nodes[i].name: need[segment.graph.nodes[i].name][0] for i in order}
    # an input some node reads whole (a broadcast operand, e.g. a squeeze-excitation scale) comes
    # entirely with the first step; the others are cut into chunks
    whole = {
        ref
        for i in order
        for ref in segment.graph.nodes[i].inputs
        if ref in inputs and not _is_split_operand(segment, i, ref)
    }
    got = {v: lo for v, (lo, _) in inputs.items() if v not in whole}
    received: list[dict[str, Interval]] = []
    computed: list[dict[str, Interval]] = []
    finished: list[dict[str, Interval]] = []
    pending: dict[str, Interval] = {v: inputs[v] for v in whole}
    cuts = input_cuts({v: iv for v, iv in inputs.items() if v not in whole}, max(1, chunks))
    for k, cut in enumerate(cuts):
        for v, end in cut.items():
            if end > got[v]:
                a = pending.get(v, (got[v], got[v]))[0]
                pending[v] = (a, end)
                got[v] = end
        avail: dict[str, int] = dict(got)
        for v in whole:
            avail[v] = inputs[v][1]
        new: dict[str, Interval] = {}
        for i in order:
            name = segment.graph.nodes[i].name
            lo, hi = need[name]
            end = _computable(segment, i, lo, done[name], hi, {**avail, **done})
            if end < hi and end - done[name] < min_rows and k < len(cuts) - 1:
                continue  # too few rows for a call of its own: they wait for the next step
            if end > done[name]:
                new[name] = (done[name], end)
                done[name] = end
        if not new and k < len(cuts) - 1:
            continue  # nothing computable yet: this chunk's rows travel with the next one
        fin: dict[str, Interval] = {}
        for v, (a, b) in own.items():
            if v in new:
                lo, hi = max(a, new[v][0]), min(b, new[v][1])
                if hi > lo:
                    fin[v] = (lo, hi)
        received.append(pending)
        computed.append(new)
        finished.append(fin)
        pending = {}
    missing = [v for v, (lo, hi) in need.items() if done[v] < hi]
    if missing:  # cannot happen for a valid segment: every needed row is computable from the whole input
        raise ValueError(f"rows of {missing[0]} never became computable")
    return StepGeometry(own, need, inputs, received, computed, finished)


# --------------------------------------------------------------------------- execution


def _memory_format(shape: list[int], channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass
class _Buffer:
    tensor: torch.Tensor
    axis: int
    start: int  # global row of the buffer's first row (negative: padding above the true border)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.tensor.narrow(self.axis, lo - self.start, hi - lo)


class BandProgram:
    """One device's band of one segment, compiled: buffers allocated, every step's calls bound.

    Not thread-safe and not re-entrant: a worker keeps one per request in flight (`ProgramPool`).
    """

    def __init__(
        self,
        segment: Segment,
        weights: Mapping[str, torch.Tensor],
        geometry: StepGeometry,
        channels_last: bool = True,
        kernels: dict | None = None,
    ):
        self.segment = segment
        self._kernels = {} if kernels is None else kernels
        self.geometry = geometry
        self.channels_last = channels_last
        self._weights = weights
        self._prepared: dict[str, torch.Tensor] = {}
        shapes = segment.loc.shapes
        graph = segment.graph
        self.index = {graph.nodes[i].name: i for i in segment.nodes}
        pads = self._border_pads()
        self.direct = self._direct_values()
        self._slots = {v: _Slot() for v in self.direct}
        self.buffers: dict[str, _Buffer] = {}
        for v, (lo, hi) in {**geometry.inputs, **geometry.needed}.items():
            if v in self.direct:
                continue
            axis = input_axis(segment, v) if v in geometry.inputs else segment.axis(v)
            extent = shapes[v][axis]
            top, bottom, fill = pads.get(v, (0, 0, None))
            start, stop = min(lo, -top) if top else lo, max(hi, extent + bottom) if bottom else hi
            shape = list(shapes[v])
            shape[axis] = stop - start
            dtype = _dtype(self._value_dtype(v))
            t = torch.empty(shape, dtype=dtype).contiguous(memory_format=_memory_format(shape, channels_last))
            if fill is not None:
                t.fill_(fill)
            self.buffers[v] = _Buffer(t, axis, start)
        self._padded = {v for v, p in pads.items() if p[2] is not None}
        self.steps: list[list[Callable[[], None]]] = [
            [self._compile(self.index[v], iv) for v, iv in self._in_order(rows)] for rows in geometry.computed
        ]

    # ------------------------------------------------------------------ build

    def _value_dtype(self, value: str) -> str:
        graph = self.segment.graph
        if value in self.index:
            return str(graph.nodes[self.index[value]].out_dtype)
        if value == "input":
            return graph.input_dtype
        return str(graph.nodes[graph.index()[value]].out_dtype)

    def _direct_values(self) -> set[str]:
        """Values handed straight from their producer to their one reader within each step, with no
        buffer and no copy: read by exactly one node, element-wise (same rows), computed in the
        same steps as it, and not a segment output (conv -> batch norm -> relu chains)."""
        seg, geo = self.segment, self.geometry
        readers: dict[str, list[int]] = {}
        for v in geo.needed:
            i = self.index[v]
            for ref in dict.fromkeys(seg.graph.nodes[i].inputs):
                readers.setdefault(ref, []).append(i)
        direct = set()
        for v in geo.needed:
            if v in geo.own or len(readers.get(v, [])) != 1:
                continue
            c = readers[v][0]
            reader = seg.graph.nodes[c]
            if seg.rule(c).window not in (None, IDENTITY) or not _is_split_operand(seg, c, v):
                continue
            if any(rows.get(v) != rows.get(reader.name) for rows in geo.computed):
                continue
            direct.add(v)
        return direct

    def _in_order(self, rows: Mapping[str, Interval]) -> list[tuple[str, Interval]]:
        return sorted(rows.items(), key=lambda kv: self.index[kv[0]])

    def _border_pads(self) -> dict[str, tuple[int, int, float | None]]:
        """Rows of padding above and below the true borders each value's buffer carries for its
        windowed readers (convolution, pooling), with the fill value; a value whose readers want
        different fills gets none (those readers fall back to a padded copy)."""
        seg, geo = self.segment, self.geometry
        pads: dict[str, tuple[int, int, float | None]] = {}
        conflicts: set[str] = set()
        for v, (lo, hi) in geo.needed.items():
            i = self.index[v]
            node = seg.graph.nodes[i]
            rule = seg.rule(i)
            if base(node.op)[0] not in WINDOWED or not isinstance(rule.window, Window):
                continue
            src = node.args[0]["ref"]
            raw_lo, raw_hi = rule.window.needs((lo, hi))
            extent = seg.loc.shapes[src][rule.in_axis]
            top, bottom = max(0, -raw_lo), max(0, raw_hi - extent)
            if not (top or bottom):
                continue
            prev = pads.get(src)
            fill = rule.pad_value
            if prev is not None and prev[2] != fill:
                conflicts.add(src)
            t0, b0 = (prev[0], prev[1]) if prev else (0, 0)
            pads[src] = (max(t0, top), max(b0, bottom), fill)
        for v in conflicts:
            pads[v] = (0, 0, None)
        return pads

    def _weight(self, key: str, conv: bool) -> torch.Tensor:
        cache_key = f"{key}:{conv}"
        if cache_key not in self._prepared:
            w = self._weights[key]
            if conv and self.channels_last and w.dim() == 4:
                w = w.contiguous(memory_format=torch.channels_last)
            self._prepared[cache_key] = w
        return self._prepared[cache_key]

    def _compile(self, i: int, out: Interval) -> Callable[[], None]:
        seg = self.segment
        node = seg.graph.nodes[i]
        name = base(node.op)[0]
        rule = seg.rule(i)
        slot = self._slots.get(node.name)
        target = None if slot is not None else self.buffers[node.name].rows(*out)
        first_ref = node.args[0].get("ref") if node.args and isinstance(node.args[0], dict) else None
        windowed = name in WINDOWED and isinstance(rule.window, Window)
        if windowed and (first_ref not in self._padded and self._touches_border(i, out)):
            return self._generic(i, out, target)
        if not windowed and rule.window is not None:
            return self._generic(i, out, target)

        def operand(ref: str) -> Any:
            if ref in self._slots:
                return self._slots[ref]
            buf = self.buffers.get(ref)
            if buf is None:
                raise KeyError(f"{node.name} reads {ref}, which this band does not hold")
            if not _is_split_operand(seg, i, ref):
                return buf.tensor
            if windowed and ref == first_ref:
                return buf.rows(*rule.window.needs(out))  # raw rows: border padding is in the buffer
            return buf.rows(*input_need(seg, i, ref, out))

        def weight(key: str) -> torch.Tensor:
            return band_weight(rule, node, self._weight(key, conv=name == "conv2d"), out)

        args, kwargs = band_args(node, operand, weight)
        if windowed:
            args = zero_axis_padding(args, name, rule.in_axis - 2)
        args = with_band_shape(rule, node, args, out)
        fn = resolve_op(node.op)
        if name == "conv2d" and isinstance(node.args[1], dict) and "w" in node.args[1]:
            conv = self._conv(node, args, out)
            fn, args, kwargs = (lambda x: conv(x)), args[:1], {}
        index = node.out_index
        fill = _resolver(args)
        out_fn = _out_variant(node.op) if slot is None and index is None else None
        if out_fn is not None:  # an element-wise op writes straight into its buffer
            if fill is None:
                return lambda: out_fn(*args, **kwargs, out=target)
            return lambda: out_fn(*fill(), **kwargs, out=target)
        store = (lambda r: target.copy_(r)) if slot is None else slot.set

        if fill is None:
            if index is None:
                return lambda: store(fn(*args, **kwargs))
            return lambda: store(fn(*args, **kwargs)[index])
        if index is None:
            return lambda: store(fn(*fill(), **kwargs))
        return lambda: store(fn(*fill(), **kwargs)[index])

    def _conv(self, node: Any, args: list[Any], out: Interval) -> Callable[[torch.Tensor], torch.Tensor]:
        """The node's convolution with packed weights for this step's input shape (packings shared by
        every step and program instance, graph/kernels.py)."""
        stride, padding, dilation, groups = (args + [None] * 7)[3:7]
        stride, dilation, groups = stride or [1, 1], dilation or [1, 1], groups or 1
        key = (node.name, tuple(padding))
        if key not in self._kernels:
            shape = list(self.segment.loc.shapes[node.args[0]["ref"]])
            shape[self.segment.rule(self.index[node.name]).in_axis] += sum(self._border_rows(node))
            self._kernels[key] = ShapedConv2d(args[1], args[2], stride, padding, dilation, groups, shape)
        like = args[0]
        if isinstance(like, _Slot):  # a 1x1 convolution fed directly: its input has this step's rows
            rule = self.segment.rule(self.index[node.name])
            shape = list(self.segment.loc.shapes[node.args[0]["ref"]])
            shape[rule.in_axis] = out[1] - out[0]
            like = torch.empty(shape, dtype=torch.float32)
        return self._kernels[key].for_shape(like)

    def _border_rows(self, node: Any) -> tuple[int, int]:
        """Rows of border padding moved from the convolution into its input buffer (top, bottom)."""
        buf = self.buffers.get(node.args[0]["ref"])
        if buf is None:
            return 0, 0
        extent = self.segment.loc.shapes[node.args[0]["ref"]][buf.axis]
        return max(0, -buf.start), max(0, buf.start + buf.tensor.shape[buf.axis] - extent)

    def _touches_border(self, i: int, out: Interval) -> bool:
        seg = self.segment
        node = seg.graph.nodes[i]
        rule = seg.rule(i)
        lo, hi = rule.window.needs(out)
        return lo < 0 or hi > seg.loc.shapes[node.args[0]["ref"]][rule.in_axis]

    def _generic(self, i: int, out: Interval, target: torch.Tensor) -> Callable[[], None]:
        """Nodes without a specialised call: `regions._run_node` over band views of the buffers."""
        seg = self.segment
        node = seg.graph.nodes[i]
        views: dict[str, Band] = {}
        for ref in dict.fromkeys(node.inputs):
            buf = self.buffers.get(ref)
            if buf is None:
                continue
            lo, hi = self.geometry.needed.get(ref) or self.geometry.inputs[ref]
            extent = seg.loc.shapes[ref][buf.axis]
            lo, hi = max(lo, 0), min(hi, extent)
            views[ref] = Band(buf.rows(lo, hi), lo)
        whole = {r: b for r, b in views.items() if r not in self.index}
        bands = {r: b for r, b in views.items() if r in self.index}
        weights = self._weights

        slot = self._slots.get(node.name)

        def run() -> None:
            result = _run_node(seg, i, out, bands, whole, weights)
            if slot is None:
                target.copy_(result)
            else:
                slot.set(result)

        return run

    # ------------------------------------------------------------------ run

    def feed(self, value: str, tensor: torch.Tensor, start: int) -> None:
        """Rows [start, start + len) of a segment input (a received chunk, or the whole value on the
        source) into its buffer; only the rows the band needs are copied."""
        buf = self.buffers[value]
        lo, hi = self.geometry.inputs[value]
        n = tensor.shape[buf.axis]
        a, b = max(lo, start), min(hi, start + n)
        if b > a:
            buf.rows(a, b).copy_(tensor.narrow(buf.axis, a - start, b - a))

    @torch.no_grad()
    def step(self, j: int) -> dict[str, Band]:
        """Run step j (its input rows must have been fed); the own output rows it finished, as copies
        (the buffers are reused by the next request)."""
        for call in self.steps[j]:
            call()
        return {v: Band(self.buffers[v].rows(a, b).clone(), a) for v, (a, b) in self.geometry.finished[j].items()}



IDENTITY = Window(1, 0, 1)  # a 1x1 convolution's window: output row i reads input row i

# element-wise ops with a native `out=` kernel (overload -> its out overload)
_OUT = {
    "relu": {"default": "out"},
    "hardtanh": {"default": "out"},
    "hardswish": {"default": "out"},
    "hardsigmoid": {"default": "out"},
    "sigmoid": {"default": "out"},
    "silu": {"default": "out"},
    "gelu": {"default": "out"},
    "leaky_relu": {"default": "out"},
    "clamp_min": {"default": "out"},
    "add": {"Tensor": "out", "Scalar": "Scalar_out"},
    "sub": {"Tensor": "out", "Scalar": "Scalar_out"},
    "mul": {"Tensor": "out", "Scalar": "Scalar_out"},
    "div": {"Tensor": "out", "Scalar": "Scalar_out"},
}


def _out_variant(op: str) -> Callable[..., torch.Tensor] | None:
    """The `out=` overload of an element-wise ATen op, or None."""
    name, overload = base(op)
    out = _OUT.get(name, {}).get(overload)
    return None if out is None or not op.startswith("aten.") else resolve_op(f"aten.{name}.{out}")


class _Slot:
    """Where a direct value waits for its reader within a step."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def set(self, value: torch.Tensor) -> None:
        self.value = value


def _resolver(args: list[Any]) -> Callable[[], list[Any]] | None:
    """For arguments holding slots (at the top level or in a list, as `cat` has them), a function
    that fills in their current values; None when there are none (the arguments are fixed)."""

    def has(a: Any) -> bool:
        return isinstance(a, _Slot) or (isinstance(a, list) and any(isinstance(x, _Slot) for x in a))

    if not any(has(a) for a in args):
        return None

    def value(a: Any) -> Any:
        if isinstance(a, _Slot):
            return a.value
        if isinstance(a, list) and has(a):
            return [x.value if isinstance(x, _Slot) else x for x in a]
        return a

    return lambda: [value(a) for a in args]


class ProgramPool:
    """Compiled programs of one deployment, by (segment, own band, chunks). A request takes an
    instance at its first step and gives it back after its last, so requests in flight never
    share buffers; instances are reused, never rebuilt (one lost with a failed request is simply
    replaced by a new one)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], channels_last: bool = True):
        self.weights = weights
        self.channels_last = channels_last
        self._geometry: dict[tuple, StepGeometry] = {}
        self._free: dict[tuple, list[BandProgram]] = {}
        self._kernels: dict = {}  # packed convolution weights, shared by every program

    @staticmethod
    def key(segment: Segment, own: Mapping[str, Interval], chunks: int) -> tuple:
        return (segment.first, segment.last, segment.axis_name, tuple(sorted(own.items())), int(chunks))

    def geometry(self, segment: Segment, own: Mapping[str, Interval], chunks: int) -> StepGeometry:
        key = self.key(segment, own, chunks)
        if key not in self._geometry:
            self._geometry[key] = step_geometry(segment, own, chunks)
        return self._geometry[key]

    def prepare(self, segment: Segment, own: Mapping[str, Interval], chunks: int) -> None:
        """Build one instance ahead of the first request (deploy time)."""
        free = self._free.setdefault(self.key(segment, own, chunks), [])
        if not free:
            free.append(self._build(segment, own, chunks))

    def take(self, segment: Segment, own: Mapping[str, Interval], chunks: int) -> BandProgram:
        free = self._free.get(self.key(segment, own, chunks))
        return free.pop() if free else self._build(segment, own, chunks)

    def give(self, segment: Segment, own: Mapping[str, Interval], chunks: int, program: BandProgram) -> None:
        self._free.setdefault(self.key(segment, own, chunks), []).append(program)

    def _build(self, segment: Segment, own: Mapping[str, Interval], chunks: int) -> BandProgram:
        return BandProgram(
            segment, self.weights, self.geometry(segment, own, chunks), self.channels_last, self._kernels
        )
