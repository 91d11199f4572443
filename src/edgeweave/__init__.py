"""edgeweave: one network's inference across several devices on slow links.

import edgeweave
session = edgeweave.connect("cluster.yaml", "plan.json", "resnet18")
y = session.infer(x)
ys = session.infer_many(frames)
session.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import torch

    from edgeweave.cost.cluster import Cluster
    from edgeweave.plan.ir import Plan
    from edgeweave.runtime.session import Session, SessionOptions


def connect(
    cluster: Cluster | str | Path,
    plan: Plan | str | Path,
    model: Any,
    *,
    example_input: torch.Tensor | None = None,
    checkpoint: str | None = None,
    options: SessionOptions | None = None,
) -> Session:
    """Deploy `plan` on `cluster` and return a session that runs `model`.

    `model` is a zoo name, a `package.module:factory` spec, or an `nn.Module` (then give
    `example_input`, whose shape and dtype every request must have). Devices with an `address`
    in the cluster are reached there; the others are started as local worker processes.
    """
    import torch

    from edgeweave.cost.cluster import Cluster
    from edgeweave.errors import UserError
    from edgeweave.graph import capture
    from edgeweave.plan.ir import Plan
    from edgeweave.runtime.session import Session

    the_cluster = cluster if isinstance(cluster, Cluster) else Cluster.load(cluster)
    the_plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise UserError("connect() with an nn.Module needs example_input")
        module, x, name = model, example_input, type(model).__name__
    else:
        from edgeweave.zoo import load_model

        spec = load_model(str(model), checkpoint=checkpoint)
        module, x, name = spec.module, spec.example_input, spec.name
    graph, weights = capture(module, x, name)
    return Session(the_cluster, the_plan, graph, weights, options)
