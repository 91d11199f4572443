"""Floating-point operation counts per ATen operator (a multiply-add counts as 2).

Counts drive display and sanity checks of profiles; the planner uses measured times. Ops not
listed cost one operation per output element (element-wise) or nothing (views and copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Shape = Sequence[int]

# Ops that only rearrange or alias memory: no arithmetic.
_FREE = {
    "view",
    "reshape",
    "_unsafe_view",
    "permute",
    "transpose",
    "t",
    "expand",
    "contiguous",
    "clone",
    "unsqueeze",
    "squeeze",
    "flatten",
    "unflatten",
    "select",
    "slice",
    "cat",
    "stack",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "getitem",
    "dropout",
    "detach",
    "alias",
    "to",
    "_to_copy",
    "embedding",
    "index_select",
    "zeros",
    "ones",
    "full",
    "arange",
    "new_zeros",
    "new_ones",
    "lift_fresh_copy",
    "narrow",
    "pad",
    "constant_pad_nd",
    "masked_fill",
    "type_as",
    "repeat",
}


def _numel(shape: Shape | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _conv(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    weight = shapes[1]
    # weight: [C_out, C_in / groups, *kernel]; each output element is a dot product of that size.
    return 2 * _numel(out) * math.prod(weight[1:])


def _conv_transpose(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    # weight: [C_in, C_out / groups, *kernel]; each input element is scattered into that many outputs.
    return 2 * _numel(shapes[0]) * math.prod(shapes[1][1:])


def _linear(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    return 2 * _numel(out) * shapes[0][-1]


def _matmul(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    a = shapes[0]
    return 2 * _numel(out) * a[-1]


def _addmm(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    return 2 * _numel(out) * shapes[1][-1]


def _sdpa(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    q, k, v = shapes[0], shapes[1], shapes[2]
    batch = math.prod(q[:-2])
    lq, e, lk, ev = q[-2], q[-1], k[-2], v[-1]
    # Q @ K^T, softmax (~5 per score), scores @ V.
    return batch * (2 * lq * lk * e + 5 * lq * lk + 2 * lq * lk * ev)


def _pool(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    kernel = args[1] if len(args) > 1 else [1]
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel, kernel]
    if len(kernel) == 1:
        kernel = kernel * 2
    return _numel(out) * math.prod(kernel)


def _adaptive_pool(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    return _numel(shapes[0])


def _norm(args: list[Any], shapes: list[Shape | None], out: Shape) -> int:
    return 5 * _numel(shapes[0])


_RULES: dict[str, Callable[[list[Any], list[Shape | None], Shape], int]] = {
    "conv2d": _conv,
    "conv1d": _conv,
    "conv3d": _conv,
    "convolution": _conv,
    "conv_transpose1d": _conv_transpose,
    "conv_transpose2d": _conv_transpose,
    "conv_transpose3d": _conv_transpose,
    "linear": _linear,
    "matmul": _matmul,
    "mm": _matmul,
    "bmm": _matmul,
    "addmm": _addmm,
    "baddbmm": _addmm,
    "scaled_dot_product_attention": _sdpa,
    "max_pool2d": _pool,
    "avg_pool2d": _pool,
    "max_pool2d_with_indices": _pool,
    "adaptive_avg_pool2d": _adaptive_pool,
    "adaptive_max_pool2d": _adaptive_pool,
    "mean": _adaptive_pool,
    "batch_norm": _norm,
    "_native_batch_norm_legit_no_training": _norm,
    "layer_norm": _norm,
    "native_layer_norm": _norm,
    "group_norm": _norm,
    "softmax": _norm,
    "_softmax": _norm,
    "log_softmax": _norm,
    "_log_softmax": _norm,
    # reductions read every input element once (argmax over classes: one compare per score)
    "argmax": _adaptive_pool,
    "argmin": _adaptive_pool,
    "amax": _adaptive_pool,
    "amin": _adaptive_pool,
    "sum": _adaptive_pool,
}


def op_base_name(op: str) -> str:
    """'aten.conv2d.default' -> 'conv2d'."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "aten" else parts[-1]


def count_flops(op: str, args: list[Any], arg_shapes: list[Shape | None], out_shape: Shape) -> int:
    """FLOPs of one call; `arg_shapes[i]` is the shape of positional tensor argument i (else None)."""
    base = op_base_name(op).rstrip("_")
    rule = _RULES.get(base)
    if rule is not None:
        return int(rule(args, arg_shapes, out_shape))
    if base in _FREE:
        return 0
    return _numel(out_shape)
