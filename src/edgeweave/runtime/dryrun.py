"""Execute a plan's task graph in one process, device by device, as the workers would.

Each device has its own environment; a transfer hands values (or bands of them) from one
device's environment to another's. No sockets, no threads: this is the reference the runtime
is checked against, and a quick way to prove a new kind of plan computes the right thing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import torch

from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import INPUT, OpGraph
from edgeweave.plan.ir import Plan
from edgeweave.runtime import bands as band_ops


@torch.no_grad()
def dry_run(plan: Plan, graph: OpGraph, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    runner = GraphRunner(graph, weights)
    ctx = band_ops.BandContext(graph, [t.region.model_dump() for t in plan.tasks if t.region is not None], weights)
    env: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    held: dict[str, dict[str, list]] = defaultdict(dict)
    programs: dict[str, dict] = defaultdict(dict)
    env[plan.source][INPUT] = x
    for task in plan.tasks:
        t = task.model_dump()
        if task.kind == "compute":
            dev = task.device
            if task.region is not None:
                band_ops.compute(env[dev], held[dev], ctx, t, programs[dev])
            else:
                band_ops.assemble(env[dev], held[dev], ctx)
                runner.run_nodes(task.nodes, env[dev], keep=set(env[dev]) | {graph.nodes[-1].name})
        elif task.region is not None:
            tensors = band_ops.outgoing(env[task.src], held[task.src], ctx, t)
            band_ops.receive(held[task.dst], t, dict(zip(task.values, tensors, strict=True)))
        else:
            band_ops.assemble(env[task.src], held[task.src], ctx)
            for v in task.values:
                env[task.dst][v] = env[task.src][v]
    band_ops.assemble(env[plan.source], held[plan.source], ctx)
    return env[plan.source][graph.nodes[-1].name]
