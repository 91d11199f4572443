"""Which operators a worker will run: pure tensor computation, nothing else.

A deployment names its operators as strings, and `torch.ops` holds far more than tensor math:
`aten.from_file` reads and maps files, `set_` swaps a tensor's storage, `empty` hands out
uninitialised memory (whatever the process held there before), random ops touch the generator,
`_local_scalar_dense` leaves tensor land. Any of them on a worker is a file read, a file write
or a memory leak on the worker's host for whoever may deploy there. So a worker runs only the
operators that capture produces for pure tensor computation (the zoo's, the locality rule
tables', and their close relatives), and refuses anything else when a deployment arrives, with
one line naming the operator, before anything of that deployment is built.

Two layers, so that widening the list later cannot let a dangerous op in by accident:
  ALLOWED    base names (`aten.<name>.<overload>`, any non-mutating overload) of pure ops;
  structure  whatever the list says, an op is refused when its schema mutates an argument
             (in-place and `out=` overloads), takes a Storage or a Generator, is tagged as
             random or data-dependent, or its name says files, storages, memory maps,
             uninitialised memory or strided aliasing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from edgeweave.graph.locality import BINARY, NORM_CHANNEL, REDUCE, RESIZE, UNARY

_EXTRA = {
    # convolutions, pooling
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
    "adaptive_max_pool1d", "adaptive_max_pool2d",
    # linear algebra and attention
    "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "addmv", "mv", "einsum",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
    # normalisation
    "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "instance_norm",
    "rms_norm", "native_batch_norm",
    # activations and element-wise math
    "relu6", "prelu", "glu", "log_sigmoid", "clamp", "clamp_min", "clamp_max", "erf", "log",
    "log2", "log1p", "expm1", "reciprocal", "square", "sin", "cos", "rsub", "floor", "ceil",
    "round", "trunc", "sign", "floor_divide", "remainder", "fmod", "masked_fill",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "isnan",
    "bitwise_and", "bitwise_or", "bitwise_not", "nan_to_num",
    # reductions
    "var", "std", "var_mean", "prod", "norm", "linalg_vector_norm", "cumsum", "any", "all",
    "topk", "sort", "argsort",
    # views, reshapes, copies, indexing
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "expand_as",
    "squeeze", "unsqueeze", "flatten", "unflatten", "slice", "select", "narrow", "split",
    "split_with_sizes", "chunk", "unbind", "cat", "stack", "repeat", "tile", "roll", "flip",
    "to", "type_as", "index_select", "gather", "embedding", "index", "constant_pad_nd", "pad",
    "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
    "pixel_shuffle", "pixel_unshuffle",
    # resizing beyond the locality table's band-exact ones
    "upsample_bilinear2d", "upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_bicubic2d",
    "_upsample_bilinear2d_aa", "upsample_linear1d", "upsample_nearest1d",
    # constants made from sizes (initialised: never `empty`)
    "arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "scalar_tensor",
}  # fmt: skip

ALLOWED: frozenset[str] = frozenset(UNARY | BINARY | NORM_CHANNEL | set(RESIZE) | set(REDUCE) | _EXTRA)

# Refused whatever ALLOWED says: substrings of base names with effects outside tensor values.
DENIED_PARTS = ("file", "storage", "save", "load", "mmap", "shared", "pin_memory", "empty", "as_strided", "set_")
DENIED_NAMES = frozenset({"_copy_from", "_copy_from_and_resize", "copy_", "_local_scalar_dense", "item", "resize_"})
_DENIED_TAGS = ("nondeterministic_seeded", "data_dependent_output", "inplace", "inplace_view", "out")
# Random only through one argument: dropout in training, attention with dropout_p > 0. Captured
# for inference they are deterministic, and only then allowed: (argument index, name, required value).
_RANDOM_UNLESS = {"dropout": (2, "train", False), "scaled_dot_product_attention": (4, "dropout_p", 0.0)}


class OpRefused(ValueError):
    """An operator a worker does not run; the message is one line that names it."""


def refusal(op: str) -> str | None:
    """Why `op` (an 'aten.name.overload' string, or 'getitem') may not run on a worker, or None."""
    if op == "getitem":
        return None
    parts = op.split(".")
    if len(parts) != 3:
        return "not an operator name"
    namespace, name, overload = parts
    if namespace != "aten":
        return f"namespace {namespace!r} is not allowed (only aten)"
    if name in DENIED_NAMES or any(p in name for p in DENIED_PARTS) or name.endswith("_"):
        return "it reaches outside tensor values (files, storages, raw memory, scalars or in-place writes)"
    if name not in ALLOWED:
        return "not a pure tensor operator that capture produces"
    fn = _lookup(namespace, name, overload)
    if fn is None:
        return "not available in this torch build"
    schema = fn._schema
    if schema.is_mutable or any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
        return "it writes into an argument"
    for arg in schema.arguments:
        kind = str(arg.type)
        if "Storage" in kind or "Generator" in kind:
            return f"it takes a {kind} argument"
    tags = {t.name for t in fn.tags}
    bad = [t for t in _DENIED_TAGS if t in tags and not (t == "nondeterministic_seeded" and name in _RANDOM_UNLESS)]
    if bad:
        return f"it is tagged {bad[0]}"
    return None


def _lookup(namespace: str, name: str, overload: str) -> Any:
    try:
        fn = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        return None
    return fn if isinstance(fn, torch._ops.OpOverload) else None


def check_node(op: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise OpRefused (one line naming the operator) unless `op` may run on a worker with these
    constant arguments (dropout and attention only without dropout: then they draw nothing)."""
    why = refusal(op)
    name = op.split(".")[1] if op.count(".") == 2 else ""
    if why is None and name in _RANDOM_UNLESS:
        at, key, required = _RANDOM_UNLESS[name]
        default = None if name == "dropout" else required
        value = kwargs.get(key, args[at] if len(args) > at else default)
        if type(value) is not type(required) or value != required:
            why = f"{key}={value!r} draws random numbers"
    if why is not None:
        raise OpRefused(f"operator {op} is not allowed on a worker: {why}")
