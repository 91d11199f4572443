"""Execute an `OpGraph` node by node.

The same executor runs a whole model (to check capture), one node at a time (to profile) and a
contiguous range of nodes (a pipeline stage on a worker). Values live in an environment keyed by
node name; "input" holds the model input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from edgeweave.errors import UserError
from edgeweave.graph.kernels import packed_conv2d
from edgeweave.graph.opgraph import INPUT, OpGraph, OpNode, decode_const

Env = dict[str, torch.Tensor]


# The graph is functional (no op writes into its inputs), so whether a result aliases its input
# never matters, while a value that crossed the wire arrives contiguous, with other strides than it
# had where it was made: `view` would then fail where the same values reshape fine.
_STRIDE_FREE = {"aten.view.default": "aten.reshape.default", "aten._unsafe_view.default": "aten.reshape.default"}


def resolve_op(op: str) -> Callable[..., Any]:
    """'aten.conv2d.default' -> torch.ops.aten.conv2d.default (names only: nothing is evaluated)."""
    if op == "getitem":
        return operator.getitem
    op = _STRIDE_FREE.get(op, op)
    parts = op.split(".")
    if len(parts) != 3 or any(p.startswith("__") for p in parts):
        raise UserError(f"{op!r} is not an operator name")
    namespace, name, overload = parts
    try:
        fn = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError) as exc:
        raise UserError(f"operator {op} is not available in this torch build") from exc
    if not isinstance(fn, torch._ops.OpOverload):  # never anything else reachable from torch.ops
        raise UserError(f"{op!r} is not an operator")
    return fn


def _bind(template: Any, weights: Mapping[str, torch.Tensor]) -> Callable[[Env], Any]:
    """Pre-resolve constants and weights so that each call only looks up node values."""
    if isinstance(template, list):
        parts = [_bind(t, weights) for t in template]
        if all(getattr(p, "constant", False) for p in parts):
            value = [p(None) for p in parts]
            return _const(value)
        return lambda env: [p(env) for p in parts]
    if isinstance(template, dict):
        if "ref" in template:
            key = template["ref"]
            return lambda env: env[key]
        if "w" in template:
            try:
                return _const(weights[template["w"]])
            except KeyError:
                raise UserError(f"weight {template['w']!r} is missing") from None
    return _const(decode_const(template))


def _const(value: Any) -> Callable[[Env], Any]:
    def get(env: Env | None) -> Any:
        return value

    get.constant = True  # type: ignore[attr-defined]
    return get


class CompiledNode:
    """One node ready to run: its op and argument getters resolved once. A convolution with
    constant weights runs with its weights packed (graph/kernels.py), packed on its first call
    for the shape it is called with (a stage's graph does not know the shapes of values made on
    other devices)."""

    def __init__(self, node: OpNode, weights: Mapping[str, torch.Tensor]):
        self.name = node.name
        self.fn = resolve_op(node.op)
        self.args = _bind(node.args, weights)
        kw = {k: _bind(v, weights) for k, v in node.kwargs.items()}
        self.kwargs = lambda env: {k: g(env) for k, g in kw.items()}
        self.out_index = node.out_index
        self.conv = _conv_spec(node, weights)
        self._packed: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, env: Env) -> Any:
        if self.conv is not None:
            x = self.args(env)[0]
            fn = self._packed.get(tuple(x.shape))
            if fn is None:
                fn = self._packed.setdefault(tuple(x.shape), packed_conv2d(*self.conv, input_shape=list(x.shape)))
            return fn(x)
        out = self.fn(*self.args(env), **self.kwargs(env))
        return out if self.out_index is None else out[self.out_index]


def _conv_spec(node: OpNode, weights: Mapping[str, torch.Tensor]) -> tuple | None:
    """(weight, bias, stride, padding, dilation, groups) of an `aten.conv2d` with constant weight
    and bias, else None."""
    if node.op != "aten.conv2d.default" or node.kwargs:
        return None
    args = list(node.args) + [None] * (7 - len(node.args))
    w, b = args[1], args[2]
    if not (isinstance(w, dict) and "w" in w) or not (b is None or (isinstance(b, dict) and "w" in b)):
        return None
    if not isinstance(args[0], dict) or "ref" not in args[0]:
        return None
    bias = None if b is None else weights[b["w"]]
    return weights[w["w"]], bias, args[3] or [1, 1], args[4] or [0, 0], args[5] or [1, 1], args[6] or 1


class GraphRunner:
    """Runs all or part of a graph with the weights it needs (a stage only needs its own)."""

    def __init__(self, graph: OpGraph, weights: Mapping[str, torch.Tensor], indices: Iterable[int] | None = None):
        self.graph = graph
        chosen = range(len(graph.nodes)) if indices is None else indices
        self.compiled: dict[int, CompiledNode] = {i: CompiledNode(graph.nodes[i], weights) for i in chosen}
        self.last_use = last_uses(graph)

    @torch.no_grad()
    def run_nodes(self, indices: Iterable[int], env: Env, keep: set[str] | None = None) -> Env:
        """Run `indices` in order; drop values no later node needs unless they are in `keep`."""
        keep = keep or set()
        for i in indices:
            env[self.graph.nodes[i].name] = self.compiled[i](env)
            for ref in self.graph.nodes[i].inputs:
                if self.last_use.get(ref, -1) <= i and ref not in keep:
                    env.pop(ref, None)
        return env

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        out_name = self.graph.nodes[-1].name
        env = self.run_nodes(range(len(self.graph.nodes)), {INPUT: x}, keep={out_name})
        return env[out_name]


def last_uses(graph: OpGraph) -> dict[str, int]:
    """For each value, the index of the last node that reads it (the output is read "after" the end)."""
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for ref in node.inputs:
            last[ref] = i
    last[graph.nodes[-1].name] = len(graph.nodes)
    return last
