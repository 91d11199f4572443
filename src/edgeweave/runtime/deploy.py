"""What each device needs of a plan: its tasks, the graph nodes they run, and only those weights.

Shipping a device only its own part is the point: a MinnowBoard holding stage 3 of ViT-Huge
never receives the other stages' 2 GB of weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

from edgeweave.graph.opgraph import OpGraph
from edgeweave.plan.ir import Plan


@dataclass
class DevicePart:
    device: str
    tasks: list[dict[str, Any]]  # plan tasks this device takes part in, plan order, deps filtered
    nodes: list[int] = field(default_factory=list)
    weight_keys: list[str] = field(default_factory=list)

    def message(self, graph: OpGraph, plan: Plan, extra: dict[str, Any]) -> dict[str, Any]:
        """The JSON part of a deploy message (weights travel beside it as safetensors bytes)."""
        return {
            "type": "deploy",
            "device": self.device,
            "tasks": self.tasks,
            "model": plan.model,
            "nodes": {str(i): _node_dict(graph, i) for i in self.nodes},
            "source": plan.source,
            "output": graph.nodes[-1].name,
            "input_shape": graph.input_shape,
            "input_dtype": graph.input_dtype,
            "graph_len": len(graph.nodes),
            **extra,
        }


def _node_dict(graph: OpGraph, i: int) -> dict[str, Any]:
    node = graph.nodes[i]
    return {
        "name": node.name,
        "op": node.op,
        "args": node.args,
        "kwargs": node.kwargs,
        "inputs": node.inputs,
        "weights": node.weights,
        "out_index": node.out_index,
    }


def split_plan(plan: Plan, graph: OpGraph) -> dict[str, DevicePart]:
    """Each device's share of the plan; devices with no task are left out."""
    if plan.num_nodes != len(graph.nodes):
        raise ValueError(f"plan has {plan.num_nodes} nodes but the model's graph has {len(graph.nodes)}")
    parts: dict[str, DevicePart] = {}
    for task in plan.tasks:
        owners = [task.device] if task.kind == "compute" else [task.src, task.dst]
        for dev in owners:
            part = parts.setdefault(dev, DevicePart(dev, []))
            part.tasks.append(task.model_dump())
            if task.kind == "compute":
                part.nodes.extend(task.nodes)
    parts.setdefault(plan.source, DevicePart(plan.source, []))
    for part in parts.values():
        known = {t["id"] for t in part.tasks}
        for t in part.tasks:
            t["after"] = [a for a in t["after"] if a in known]
        part.nodes = sorted(set(part.nodes))
        part.weight_keys = sorted({w for i in part.nodes for w in graph.nodes[i].weights})
    return parts


def weights_blob(weights: dict[str, torch.Tensor], keys: list[str]) -> bytes:
    """The named weights as safetensors bytes (a format that cannot carry code)."""
    return safetensors.torch.save({k: weights[k].detach().contiguous().clone() for k in keys}) if keys else b""


def load_weights_blob(blob: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(bytes(blob)) if blob else {}
