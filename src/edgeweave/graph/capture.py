"""Capture an nn.Module into an `OpGraph` with torch.export.

Why torch.export: it traces torchvision, timm and transformers models alike (fx.symbolic_trace
fails on transformers), keeps high-level ATen ops (conv2d, linear, layer_norm,
scaled_dot_product_attention) that locality analysis and FLOP counting understand, and its
functional form (`run_decompositions({})`) has no in-place ops, so nodes can run in any process.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from edgeweave.errors import UserError
from edgeweave.graph.flops import count_flops
from edgeweave.graph.fold import fold_batch_norms, rename_refs
from edgeweave.graph.opgraph import INPUT, OpGraph, OpNode, dtype_name, encode_arg

_WEIGHT_KINDS = {InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR}


def export_model(module: torch.nn.Module, example_input: torch.Tensor, name: str = "model") -> ExportedProgram:
    """torch.export the model in eval mode, translating failures into one actionable line."""
    module = module.eval()
    try:
        # torch.export warns about its own internals (pytree deprecations): not the user's concern.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(module, (example_input,), strict=False)
            return program.run_decompositions({})
    except UserError:  # the model's own one-line refusal (e.g. --labels on a classifier): keep it
        raise
    except Exception as exc:  # torch raises many exception types; all mean "cannot capture"
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(
            f"torch.export cannot capture {name}: {type(exc).__name__}: {first[:300]} -- make forward() free of "
            "data-dependent Python control flow and side effects (use torch.where/torch.cond), "
            "and give it one tensor input and one tensor output"
        ) from exc


def _shape_dtype(val: Any) -> tuple[Any, Any, int]:
    """Shape(s), dtype name(s) and total bytes of an fx meta value (a tensor or a tuple of them)."""
    if isinstance(val, torch.Tensor):
        return list(val.shape), dtype_name(val.dtype), val.numel() * val.element_size()
    if isinstance(val, (tuple, list)):
        parts = [_shape_dtype(v) for v in val]
        return [p[0] for p in parts], [p[1] for p in parts], sum(p[2] for p in parts)
    if val is None:
        return [], "none", 0
    raise UserError(f"captured graph produces a non-tensor value {type(val).__name__}; edgeweave needs tensors")


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    raise UserError(f"captured graph calls {target!r}, which is not an ATen operator; edgeweave cannot run it")


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "")


class _Builder:
    """Turns the exported fx graph into OpNodes, resolving placeholders into "input" or weights."""

    def __init__(self, program: ExportedProgram):
        self.program = program
        self.weight_of: dict[str, str] = {}
        self.input_node: str | None = None
        for spec in program.graph_signature.input_specs:
            if spec.kind in _WEIGHT_KINDS:
                self.weight_of[spec.arg.name] = spec.target
            elif spec.kind == InputKind.USER_INPUT:
                if self.input_node is not None:
                    raise UserError("the model takes more than one input; edgeweave needs exactly one tensor input")
                self.input_node = spec.arg.name
            else:
                raise UserError(f"captured graph has an unsupported input of kind {spec.kind.name}")
        if self.input_node is None:
            raise UserError("the model takes no tensor input; edgeweave needs exactly one")

    def encode(self, value: Any, refs: list[str], weights: list[str], shapes: list[Any]) -> Any:
        if isinstance(value, torch.fx.Node):
            val = value.meta.get("val")
            shapes.append(list(val.shape) if isinstance(val, torch.Tensor) else None)
            if value.name == self.input_node:
                refs.append(INPUT)
                return {"ref": INPUT}
            if value.name in self.weight_of:
                key = self.weight_of[value.name]
                weights.append(key)
                return {"w": key}
            refs.append(value.name)
            return {"ref": value.name}
        if isinstance(value, (list, tuple)):
            return [self.encode(v, refs, weights, []) for v in value]
        shapes.append(None)
        return encode_arg(value)

    def node(self, fx_node: torch.fx.Node) -> OpNode:
        refs: list[str] = []
        weights: list[str] = []
        shapes: list[Any] = []
        args = [self.encode(a, refs, weights, shapes) for a in fx_node.args]
        kwargs = {k: self.encode(v, refs, weights, []) for k, v in fx_node.kwargs.items()}
        out_shape, out_dtype, out_bytes = _shape_dtype(fx_node.meta.get("val"))
        op = _op_name(fx_node.target)
        flops = count_flops(op, list(fx_node.args), shapes, out_shape if isinstance(out_dtype, str) else [])
        return OpNode(
            name=fx_node.name,
            op=op,
            args=args,
            kwargs=kwargs,
            inputs=list(dict.fromkeys(refs)),
            weights=list(dict.fromkeys(weights)),
            out_shape=out_shape,
            out_dtype=out_dtype,
            out_bytes=out_bytes,
            param_bytes=0,
            flops=flops,
            module=_module_path(fx_node),
        )


def _fold_getitems(nodes: list[OpNode]) -> tuple[list[OpNode], dict[str, str]]:
    """Merge `getitem(t, k)` into its producer when only element k of a tuple is used.

    batch_norm and similar ops return tuples of which inference reads one element; folding keeps
    every graph node single-output, which is what cut sizes and region splits reason about.
    Returns the nodes and the renames (folded getitem -> producer), which the model's output
    follows too (a model may end in one, e.g. `x.max(dim=1).values`).
    """
    by_name = {n.name: n for n in nodes}
    used: dict[str, set[int]] = {}
    for n in nodes:
        if n.op == "getitem":
            used.setdefault(n.args[0]["ref"], set()).add(int(n.args[1]))
    consumers: dict[str, set[str]] = {}
    for n in nodes:
        for ref in n.inputs:
            consumers.setdefault(ref, set()).add(n.name)
    rename: dict[str, str] = {}
    kept: list[OpNode] = []
    for n in nodes:
        if n.op == "getitem":
            producer = by_name[n.args[0]["ref"]]
            only_getitems = all(by_name[c].op == "getitem" for c in consumers.get(producer.name, ()))
            if len(used[producer.name]) == 1 and only_getitems:
                k = int(n.args[1])
                producer.out_index = k
                producer.out_shape = producer.out_shape[k]
                producer.out_dtype = producer.out_dtype[k]
                producer.out_bytes = n.out_bytes
                rename[n.name] = producer.name
                continue
        kept.append(n)
    for n in kept:
        n.inputs = list(dict.fromkeys(rename.get(r, r) for r in n.inputs))
        n.args = rename_refs(n.args, rename)
        n.kwargs = rename_refs(n.kwargs, rename)
    return kept, rename


def _prune_to_output(nodes: list[OpNode], output: str) -> list[OpNode]:
    """Keep only the ancestors of the output, so the output is the last node in order."""
    by_name = {n.name: n for n in nodes}
    needed = {output}
    for n in reversed(nodes):
        if n.name in needed:
            needed.update(r for r in n.inputs if r in by_name)
    return [n for n in nodes if n.name in needed]


def capture(
    module: torch.nn.Module, example_input: torch.Tensor, name: str = "model"
) -> tuple[OpGraph, dict[str, torch.Tensor]]:
    """Capture `module` at the shape of `example_input`.

    Returns the graph and the weights it names (parameters, buffers and lifted constants by
    their state-dict key). Running the graph on `example_input` reproduces `module(example_input)`.
    """
    program = export_model(module, example_input, name)
    builder = _Builder(program)
    output_args = [a for a in program.graph.output_node().args[0]]
    if len(output_args) != 1 or not isinstance(output_args[0], torch.fx.Node):
        raise UserError(f"{name} returns {len(output_args)} outputs; edgeweave needs one tensor (wrap the model)")
    output = output_args[0]
    if output.op != "call_function":
        raise UserError(f"{name} returns an input or a weight unchanged; there is nothing to run")
    nodes = [builder.node(n) for n in program.graph.nodes if n.op == "call_function"]
    nodes, renamed = _fold_getitems(nodes)
    tensors = {**program.state_dict, **program.constants}
    nodes, folded, norms = fold_batch_norms(nodes, tensors)
    tensors.update(folded)
    out_name = renamed.get(output.name, output.name)
    nodes = _prune_to_output(nodes, norms.get(out_name, out_name))
    if nodes[-1].is_tuple:
        raise UserError(f"{name} returns a tuple; edgeweave needs one tensor output")

    weights: dict[str, torch.Tensor] = {}
    for n in nodes:
        for key in n.weights:
            if key not in weights:
                weights[key] = tensors[key].detach()
                n.param_bytes += weights[key].numel() * weights[key].element_size()
    if INPUT in {n.name for n in nodes}:
        raise UserError("a graph node is called 'input', which clashes with the model input's name")

    graph = OpGraph(
        model=name,
        input_shape=list(example_input.shape),
        input_dtype=dtype_name(example_input.dtype),
        nodes=nodes,
        weight_shapes={k: list(v.shape) for k, v in weights.items()},
        weight_dtypes={k: dtype_name(v.dtype) for k, v in weights.items()},
    )
    assert graph.input_bytes == math.prod(example_input.shape) * example_input.element_size()
    return graph, weights
