"""Locality analysis: which operators compute an output band from a bounded band of their input.

Every value inside a run of local operators carries a *split axis*: the axis along which devices
divide it (rows H or columns W of a feature map, tokens of a sequence). Per operator, a rule says
whether it is local for the split axes of its inputs, which axis its output is split on, and
which input band an output band needs (`window`): affine for convolutions and pooling (kernel,
stride, padding, dilation), its inverse for transposed convolutions, ATen's own index arithmetic
for resizing (nearest, bilinear), identity for element-wise and per-position ops (reductions and
softmax over channels included). Anything else (global pooling, flatten across the axis,
attention, classifier heads) is a barrier: its inputs must be whole. Attention is a barrier by
choice: splitting queries would need every device to hold all keys and values, i.e. an
all-gather per layer, which costs more than it saves on slow links.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from edgeweave.graph.opgraph import INPUT, OpGraph, OpNode
from edgeweave.graph.resample import LINEAR, NEAREST, NEAREST_EXACT, ScaleWindow

Interval = tuple[int, int]

UNARY = {
    "relu",
    "hardswish",
    "hardsigmoid",
    "silu",
    "sigmoid",
    "gelu",
    "tanh",
    "hardtanh",
    "dropout",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "neg",
    "exp",
    "sqrt",
    "rsqrt",
    "_to_copy",
    "leaky_relu",
    "elu",
    "mish",
    "softplus",
    "lift_fresh_copy",
    "abs",
}
BINARY = {"add", "mul", "sub", "div", "maximum", "minimum", "where", "pow"}
NORM_CHANNEL = {"_native_batch_norm_legit_no_training", "batch_norm"}
# resizing ops: name -> interpolation mode (bicubic and anti-aliased modes stay barriers)
RESIZE = {"upsample_nearest2d": NEAREST, "_upsample_nearest_exact2d": NEAREST_EXACT, "upsample_bilinear2d": LINEAR}
# per-position reductions and normalisations over named dims: (dim argument index, keepdim index or None)
REDUCE = {
    "argmax": (1, 2),
    "argmin": (1, 2),
    "amax": (1, 2),
    "amin": (1, 2),
    "max": (1, 2),
    "min": (1, 2),
    "sum": (1, 2),
    "mean": (1, 2),
    "softmax": (1, None),
    "_softmax": (1, None),
    "log_softmax": (1, None),
    "_log_softmax": (1, None),
}


def base(op: str) -> tuple[str, str]:
    """'aten.add.Tensor' -> ('add', 'Tensor')."""
    parts = op.split(".")
    return (parts[1], parts[2]) if len(parts) == 3 else (op, "")


class BandWindow(Protocol):
    """Which input band (along a rule's `in_axis`) an output band reads.

    The one source of truth for halos: planners, `regions.needs` and band execution all ask it.
    `needs((a, b)) -> (lo, hi)`, with lo and hi non-decreasing in a and b, may reach past the
    tensor's borders (an affine window's padding); callers clip.
    """

    def needs(self, out: Interval) -> Interval: ...


@dataclass(frozen=True)
class Window:
    """Affine (convolution, pooling): output index i reads input indices [i*stride - pad, i*stride - pad + span)."""

    stride: int
    pad: int
    span: int

    def needs(self, out: Interval) -> Interval:
        a, b = out
        return a * self.stride - self.pad, (b - 1) * self.stride - self.pad + self.span


@dataclass(frozen=True)
class TransposedWindow:
    """Transposed convolution: input index i feeds outputs [i*stride - pad, i*stride - pad + span).

    So output band [a, b) reads every input whose footprint meets it: the inverse of `Window`.
    """

    stride: int
    pad: int
    span: int

    def needs(self, out: Interval) -> Interval:
        a, b = out
        return -((self.span - 1 - a - self.pad) // self.stride), (b - 1 + self.pad) // self.stride + 1


@dataclass
class NodeRule:
    """How a local node maps regions. `window` applies to arg 0 along `in_axis` (None: identity).

    `Window` (affine) is what `regions._pad_window` pads and re-pads; any other window comes with
    its own band kernel in `regions` (transposed convolution, resizing).
    """

    out_axis: int
    in_axis: int
    window: BandWindow | None = None
    pad_value: float = 0.0
    shape_arg: int | None = None  # index of a shape argument whose entry at out_axis is the band length


def _ints(value: Any, n: int = 2) -> list[int]:
    if isinstance(value, (list, tuple)):
        vals = [int(v) for v in value]
        return vals * n if len(vals) == 1 else vals
    return [int(value)] * n


def _arg(node: OpNode, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _windowed(node: OpNode, a: int, shape: list[int], shapes: dict[str, list[int]]) -> NodeRule | None:
    """conv2d and 2-D pooling along H (axis 2) or W (axis 3) of an NCHW input."""
    name, _ = base(node.op)
    if len(shape) != 4 or a not in (2, 3):
        return None
    d = a - 2
    if name == "conv2d":
        weight = node.args[1]
        if not (isinstance(weight, dict) and "w" in weight) or isinstance(_arg(node, 4, "padding", 0), str):
            return None
        kernel = shapes[f"w:{weight['w']}"][2:]
        stride, pad, dil = (
            _ints(_arg(node, 3, "stride", 1)),
            _ints(_arg(node, 4, "padding", 0)),
            _ints(_arg(node, 5, "dilation", 1)),
        )
        return NodeRule(a, a, Window(stride[d], pad[d], dil[d] * (kernel[d] - 1) + 1))
    if name in ("max_pool2d", "avg_pool2d"):
        kernel = _ints(_arg(node, 1, "kernel_size", 1))
        stride = _ints(_arg(node, 2, "stride", kernel) or kernel)
        pad = _ints(_arg(node, 3, "padding", 0))
        if name == "max_pool2d":
            dil = _ints(_arg(node, 4, "dilation", 1))
            if _arg(node, 5, "ceil_mode", False):
                return None
            return NodeRule(a, a, Window(stride[d], pad[d], dil[d] * (kernel[d] - 1) + 1), pad_value=-math.inf)
        if _arg(node, 4, "ceil_mode", False) or _arg(node, 6, "divisor_override", None) is not None:
            return None
        if any(pad) and not _arg(node, 5, "count_include_pad", True):
            return None
        return NodeRule(a, a, Window(stride[d], pad[d], kernel[d]))
    return None


def _transposed(node: OpNode, a: int, shape: list[int], shapes: dict[str, list[int]]) -> NodeRule | None:
    """conv_transpose2d along H or W: output band [a, b) reads the inputs whose footprints meet it."""
    weight = node.args[1] if len(node.args) > 1 else None
    if len(shape) != 4 or a not in (2, 3) or not (isinstance(weight, dict) and "w" in weight):
        return None
    d = a - 2
    kernel = shapes[f"w:{weight['w']}"][2:]
    stride, pad, dil = (
        _ints(_arg(node, 3, "stride", 1)),
        _ints(_arg(node, 4, "padding", 0)),
        _ints(_arg(node, 7, "dilation", 1)),
    )
    return NodeRule(a, a, TransposedWindow(stride[d], pad[d], dil[d] * (kernel[d] - 1) + 1))


def resize_windows(node: OpNode, in_shape: list[int]) -> tuple[ScaleWindow, ScaleWindow] | None:
    """The (height, width) windows of a 2-D resizing op of an NCHW map, or None if not one we reproduce.

    Reads both overloads: `.vec` (output size or scale factors) and `.default` (output size and
    optional per-axis scales); the scales matter because ATen then uses 1/scale, not in/out.
    """
    name, overload = base(node.op)
    mode = RESIZE.get(name)
    out_shape = node.out_shape
    if mode is None or node.is_tuple or len(in_shape) != 4 or len(out_shape) != 4:
        return None
    corners = bool(_arg(node, 2, "align_corners", False)) if mode == LINEAR else False
    k = 3 if mode == LINEAR else 2  # index of the scale arguments
    if overload == "vec":
        factors = _arg(node, k, "scale_factors", None)
        scales = [None, None] if factors is None else [float(f) for f in _ints_or_floats(factors)]
    else:
        scales = [_arg(node, k, "scales_h", None), _arg(node, k + 1, "scales_w", None)]
        scales = [None if v is None else float(v) for v in scales]
    return (
        ScaleWindow(mode, in_shape[2], out_shape[2], corners, scales[0]),
        ScaleWindow(mode, in_shape[3], out_shape[3], corners, scales[1]),
    )


def _ints_or_floats(value: Any) -> list[Any]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * 2 if len(values) == 1 else values


def _reduction(node: OpNode, a: int, nd: int) -> NodeRule | None:
    """Reductions and softmax over dims other than the split axis: every position stays where it was."""
    name, overload = base(node.op)
    dim_index, keep_index = REDUCE[name]
    if name in ("max", "min") and overload != "dim":  # max.default reduces everything
        return None
    dims = _arg(node, dim_index, "dim", None)
    if dims is None or dims == []:  # no dim, or an empty list: every dim is reduced
        return None
    dims = {int(d) % nd for d in (dims if isinstance(dims, list) else [dims])}
    if a in dims:
        return None
    keep = keep_index is None or bool(_arg(node, keep_index, "keepdim", False))
    return NodeRule(a if keep else a - sum(1 for d in dims if d < a), a)


def _same_axis_map(a: int, in_shape: list[int], out_shape: list[int]) -> int | None:
    """For view/reshape: the output axis that is the input's axis `a` unchanged, if there is one."""
    before = math.prod(in_shape[:a])
    size = in_shape[a]
    acc = 1
    for b, s in enumerate(out_shape):
        if acc == before and s == size:
            # the dims after must also only regroup what came after the axis
            return b
        acc *= s
        if acc > before:
            break
    return None


def rule_for(node: OpNode, in_axes: dict[str, int | None], shapes: dict[str, list[int]]) -> NodeRule | None:
    """The locality rule of `node` given the split axes of its inputs, or None for a barrier."""
    name, overload = base(node.op)
    refs = [r for r in node.inputs]
    split = [r for r in refs if in_axes.get(r) is not None]
    if not split:
        return None  # nothing split flows in: the node belongs to no region
    first = node.args[0] if node.args else None
    if not (isinstance(first, dict) and "ref" in first) and name not in ("cat", *BINARY):
        return None
    out_shape = node.out_shape if not node.is_tuple else None
    if out_shape is None:
        return None
    if name in ("conv2d", "max_pool2d", "avg_pool2d", "conv_transpose2d") or name in RESIZE:
        src = first["ref"]
        if len(split) != 1 or split[0] != src:
            return None
        a = in_axes[src]
        if name in RESIZE:
            windows = resize_windows(node, shapes[src]) if a in (2, 3) else None
            return NodeRule(a, a, windows[a - 2]) if windows else None
        if name == "conv_transpose2d":
            return _transposed(node, a, shapes[src], shapes)
        return _windowed(node, a, shapes[src], shapes)
    if name in UNARY or name in NORM_CHANNEL:
        src = first["ref"]
        a = in_axes.get(src)
        if a is None or len(split) != 1 or (name in NORM_CHANNEL and a == 1):
            return None
        return NodeRule(a, a)
    if name in BINARY:
        return _binary(node, in_axes, shapes, out_shape)
    if name == "cat":
        tensors, dim = node.args[0], int(_arg(node, 1, "dim", 0))
        axes = {in_axes.get(t["ref"]) for t in tensors if isinstance(t, dict) and "ref" in t}
        if len(axes) != 1 or None in axes:
            return None
        a = axes.pop()
        nd = len(out_shape)
        return NodeRule(a, a) if dim % nd != a else None
    src = first["ref"]
    a = in_axes.get(src)
    if a is None or len(split) != 1:
        return None
    in_shape = shapes[src]
    nd = len(in_shape)
    if name in REDUCE:
        return _reduction(node, a, nd)
    if name == "layer_norm":
        return NodeRule(a, a) if a < nd - len(node.args[1]) else None
    if name == "linear":
        return NodeRule(a, a) if a < nd - 1 else None
    if name == "permute":
        dims = [int(d) % nd for d in node.args[1]]
        return NodeRule(dims.index(a), a)
    if name == "transpose":
        d0, d1 = int(node.args[1]) % nd, int(node.args[2]) % nd
        return NodeRule(d1 if a == d0 else d0 if a == d1 else a, a)
    if name in ("view", "reshape", "_unsafe_view"):
        b = _same_axis_map(a, in_shape, out_shape)
        return NodeRule(b, a, shape_arg=1) if b is not None else None
    if name == "unsqueeze":
        d = int(node.args[1]) % (nd + 1)
        return NodeRule(a + 1 if d <= a else a, a)
    if name == "squeeze" and overload in ("dim", "dims"):
        dims = node.args[1] if isinstance(node.args[1], list) else [node.args[1]]
        dims = [int(d) % nd for d in dims if in_shape[int(d) % nd] == 1]
        if a in dims:
            return None
        return NodeRule(a - sum(1 for d in dims if d < a), a)
    if name == "flatten":
        start, end = int(_arg(node, 1, "start_dim", 0)) % nd, int(_arg(node, 2, "end_dim", -1)) % nd
        if a < start:
            return NodeRule(a, a)
        if a > end:
            return NodeRule(a - (end - start), a)
        return None
    if name == "unflatten":
        d = int(node.args[1]) % nd
        if a < d:
            return NodeRule(a, a)
        if a > d:
            return NodeRule(a + len(node.args[2]) - 1, a)
        return None
    if name in ("select", "slice"):
        d = int(node.args[1]) % nd
        if d == a:
            return None
        return NodeRule(a - 1 if (name == "select" and d < a) else a, a)
    if name == "expand":
        sizes = node.args[1]
        off = len(sizes) - nd
        if int(sizes[a + off]) not in (-1, in_shape[a]):
            return None
        return NodeRule(a + off, a, shape_arg=1)
    return None


def _binary(node: OpNode, in_axes, shapes, out_shape) -> NodeRule | None:
    """Element-wise binary ops: split operands agree on the axis; others broadcast or are sliced.

    An operand of extent 1 on its axis (a squeeze-excitation scale, [N, C, 1, 1], that comes whole
    from before the segment) broadcasts along the split: every device reads it whole, so the
    op stays local and the segment restarts right after the global pool's branch.
    """
    nd = len(out_shape)
    axis = None
    for arg in node.args:
        if isinstance(arg, dict) and "ref" in arg and in_axes.get(arg["ref"]) is not None:
            ref = arg["ref"]
            a = in_axes[ref] + nd - len(shapes[ref])
            if shapes[ref][in_axes[ref]] == 1 and a >= 0 and out_shape[a] > 1:
                continue
            if axis is not None and a != axis:
                return None
            if shapes[ref][in_axes[ref]] != out_shape[a]:
                return None
            axis = a
    if axis is None:
        return None
    return NodeRule(axis, axis)


@dataclass
class Locality:
    """Per node: its rule if local (for the chosen seed axes), else None (a barrier)."""

    rules: list[NodeRule | None]
    axes: dict[str, int | None]
    shapes: dict[str, list[int]]


def value_shapes(graph: OpGraph) -> dict[str, list[int]]:
    shapes = {INPUT: list(graph.input_shape)}
    for n in graph.nodes:
        shapes[n.name] = n.out_shape if not n.is_tuple else []
    return shapes


def analyze(graph: OpGraph, first: int, last: int, seed_axis: dict[int, int]) -> Locality:
    """Rules for nodes [first, last] when values from before `first` are split on `seed_axis[ndim]`.

    Values produced before the range are whole on every device (they were gathered), so any of
    them can seed a split: a 4-D feature map on H (2) or W (3), a 3-D sequence on tokens (1).
    """
    shapes = value_shapes(graph)
    for name, shape in graph.weight_shapes.items():
        shapes[f"w:{name}"] = shape
    inside = {graph.nodes[i].name for i in range(first, last + 1)}
    axes: dict[str, int | None] = {}
    rules: list[NodeRule | None] = []
    for i in range(first, last + 1):
        node = graph.nodes[i]
        in_axes = {}
        for ref in node.inputs:
            if ref in inside:
                in_axes[ref] = axes.get(ref)
            else:
                in_axes[ref] = seed_axis.get(len(shapes[ref]))
        rule = rule_for(node, in_axes, shapes)
        if rule is not None and node.out_shape and rule.out_axis < len(node.out_shape):
            # a band needs a real extent to split
            if node.out_shape[rule.out_axis] < 2:
                rule = None
        rules.append(rule)
        axes[node.name] = rule.out_axis if rule else None
    return Locality(rules, axes, shapes)
