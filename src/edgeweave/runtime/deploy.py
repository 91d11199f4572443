"""What each device needs of a plan: its tasks, the graph nodes they run, and only those weights.

Shipping a device only its own part is the point: a MinnowBoard holding stage 3 of ViT-Huge
never receives the other stages' 2 GB of weights. A part also says what the device must receive
(dtype and shape of every incoming value) and how large a frame may be, so that a worker can
refuse anything else before reading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeweave.graph.opgraph import INPUT, OpGraph
from edgeweave.plan.ir import Plan
from edgeweave.runtime.protocol import DEPLOY_CHUNK, value_spec
from edgeweave.runtime.weights import load_weights_blob, weights_blob

__all__ = ["FRAME_OVERHEAD", "DevicePart", "load_weights_blob", "split_plan", "weights_blob"]


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
            "receives": self.receives(graph),
            # band tasks rebuild their segment from the whole (weightless) graph
            "graph": graph.to_dict() if any(t.get("region") for t in self.tasks) else None,
            **extra,
        }

    def receives(self, graph: OpGraph) -> dict[str, list[dict[str, Any]]]:
        """For each transfer into this device, the dtype and shape of every value it carries
        (for a region transfer of a hybrid plan: of the band it carries)."""
        bands = None
        out = {}
        for t in self.tasks:
            if t["kind"] != "transfer" or t["dst"] != self.device:
                continue
            metas = [{"name": v, **_value_meta(graph, v)} for v in t["values"]]
            if t.get("region") is not None:
                from edgeweave.runtime.bands import BandContext

                bands = bands or BandContext(graph)
                _narrow_to_bands(metas, t["region"], bands)
            out[t["id"]] = metas
        return out

    def largest_incoming(self, graph: OpGraph) -> int:
        """Bytes of the largest tensor this device receives."""
        return max((value_spec(**spec).nbytes for specs in self.receives(graph).values() for spec in specs), default=0)

    def frame_limit(self, graph: OpGraph) -> int:
        """The largest frame this device should ever accept (libzmq's MAXMSGSIZE for its socket):
        its largest incoming tensor, or a deploy chunk (weights and deploy headers travel in
        DEPLOY_CHUNK frames), whichever is larger, plus CURVE's per-frame overhead (libzmq checks
        the encrypted frame). Tight on purpose: a peer's frames larger than anything the deployment
        sends are cut at the first one, before they are held."""
        return max(self.largest_incoming(graph), DEPLOY_CHUNK) + FRAME_OVERHEAD


FRAME_OVERHEAD = 4096  # CURVE's box and command header around a frame's bytes, with room to spare


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


def _value_meta(graph: OpGraph, name: str) -> dict[str, Any]:
    if name == INPUT:
        return {"dtype": graph.input_dtype, "shape": list(graph.input_shape)}
    node = graph.nodes[graph.index()[name]]
    if node.is_tuple:
        raise ValueError(f"value {name!r} is a tuple of tensors and cannot be transferred")
    return {"dtype": node.out_dtype, "shape": list(node.out_shape)}


def _narrow_to_bands(metas: list[dict[str, Any]], region: dict[str, Any], bands: Any) -> None:
    """A region transfer carries band [lo, hi) of each value along its split axis (see `bands.outgoing`)."""
    from edgeweave.graph.regions import input_axis

    seg = bands.segment(region)
    for meta in metas:
        name = meta["name"]
        axis = input_axis(seg, name) if name in seg.inputs else seg.axis(name)
        lo, hi = region["bands"][name]
        meta["shape"][axis] = int(hi) - int(lo)


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
