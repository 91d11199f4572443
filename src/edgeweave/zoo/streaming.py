"""A model captured without its weights, and its weights read from a checkpoint file stage by stage.

Why: a coordinator on a small device cannot hold ViT-Huge (2.5 GB of fp32 weights), yet it must
capture the model (torch.export needs the module) and ship every device its stage. Built under
`torch.device("meta")`, the module has shapes and no storage; its tensors are then made fake
tensors that say they live on the CPU, and torch.export traces it as it traces the real module
(it traces with fake tensors anyway, and never reads a value). The graph's weight keys are the
module's state-dict keys. The weights then come from a .safetensors file through
`runtime.weights.WeightFile`, which reads a tensor only when a stage is shipped, so the
coordinator holds the largest stage's blob plus what its own device runs, never the model.

The checkpoint is made where the whole model does fit (a workstation, or once, offline):
`write_checkpoint` streams it to disk tensor by tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from edgeweave.cost.profile import Profile, ProfileNode
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph, dtype_name
from edgeweave.runtime.weights import WeightFile, save_weights
from edgeweave.zoo import Shape, get_entry
from edgeweave.zoo.builders import build_model, check_shape


def capture_without_weights(name: str, input_shape: Shape | None = None, **overrides: int) -> OpGraph:
    """Capture zoo model `name` without allocating its weights: the same graph `capture` makes
    from the real module (a test checks), at no weight memory."""
    from edgeweave.graph import capture

    entry = get_entry(name)
    shape = entry.input_shape if input_shape is None else check_shape(input_shape)
    with torch.device("meta"):
        module = build_model(entry.name, input_shape=shape, **overrides)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fake_on_cpu(module, mode)
    x = FakeTensor(mode, torch.empty(shape, dtype=getattr(torch, entry.input_dtype), device="meta"), _CPU)
    graph, _ = capture(module, x, entry.name)
    return graph


_CPU = torch.device("cpu")


def _fake_on_cpu(module: nn.Module, mode: FakeTensorMode) -> None:
    """Swap every meta parameter and buffer for a fake tensor that says it lives on the CPU.

    Why not trace the meta module as it is: code that asks where its tensors live takes another
    path for "meta" (nn.MultiheadAttention skips its CPU fast path), so the graph would differ
    from the one captured with weights, and a profile measured on a device would not fit it.
    A FakeTensor is a meta tensor that reports another device: no storage, the CPU's graph.
    """
    for sub in module.modules():
        for key, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[key] = nn.Parameter(FakeTensor(mode, p.data, _CPU), requires_grad=p.requires_grad)
        for key, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[key] = FakeTensor(mode, b, _CPU)


def write_checkpoint(module: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write every parameter and buffer of `module` (state-dict keys) as .safetensors; returns bytes
    of weights written. Tensors are written one at a time from the module's own memory."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    save_weights(tensors, path)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def open_weights(graph: OpGraph, path: str | os.PathLike[str]) -> WeightFile:
    """The checkpoint as a lazily read weight mapping, checked against every weight the graph
    names (key, shape, dtype) so that a mismatch is one line before anything is deployed."""
    weights = WeightFile(path)
    missing = [k for k in graph.weight_shapes if k not in weights.entries]
    if missing:
        raise UserError(
            f"weights file {Path(path)} lacks {len(missing)} of the {len(graph.weight_shapes)} weights the graph "
            f"names (first: {', '.join(missing[:3])}); a graph that folded batch norms or lifted constants at "
            "capture names weights no state dict has: capture it with its weights instead"
        )
    for key, shape in graph.weight_shapes.items():
        e = weights.entries[key]
        if list(e.shape) != list(shape) or dtype_name(e.dtype) != graph.weight_dtypes[key]:
            raise UserError(
                f"weights file {Path(path)}: {key} is {dtype_name(e.dtype)} {list(e.shape)}, "
                f"the model's is {graph.weight_dtypes[key]} {list(shape)}"
            )
    return weights


def flops_profile(graph: OpGraph, flops_per_s: float) -> Profile:
    """A profile estimated from the graph's FLOP counts at `flops_per_s`: planning a model this
    process cannot run (it has no weights) needs times from somewhere. Memory figures are exact;
    times are an estimate (a measured profile, `--profile`, is better where one exists)."""
    if flops_per_s <= 0:
        raise ValueError("flops_per_s must be positive")
    nodes = [
        ProfileNode(
            name=n.name,
            time_s=max(n.flops, 1) / flops_per_s,
            out_bytes=n.out_bytes,
            param_bytes=n.param_bytes,
            inputs=n.inputs,
            flops=n.flops,
        )
        for n in graph.nodes
    ]
    return Profile(model=graph.model, input_bytes=graph.input_bytes, nodes=nodes)
