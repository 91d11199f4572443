"""edgeweave: one network's inference across several devices on slow links.

import edgeweave
session = edgeweave.connect("cluster.yaml", "plan.json", "resnet18")
session = edgeweave.connect("cluster.yaml", None, "mypkg.nets:encoder",
                            input_shape=(1, 128), input_dtype="int64", strategy="pipeline")
y = session.infer(x)
ys = session.infer_many(frames)
session.close()

The API takes what the command line takes (the same names: input_shape, input_dtype,
input_range, input, labels, strategy, objective) and fails the same way: a one-line
`edgeweave.errors.UserError` for anything the caller can fix.
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
    plan: Plan | str | Path | None,
    model: Any,
    *,
    input_shape: tuple[int, ...] | str | None = None,
    input_dtype: str | torch.dtype | None = None,
    input_range: tuple[float, float] | None = None,
    input: str = "float",  # the command line's --input: "float" or "uint8-image"
    labels: bool = False,
    strategy: str = "pipeline",
    objective: str = "latency",
    example_input: torch.Tensor | None = None,
    checkpoint: str | Path | None = None,
    options: SessionOptions | None = None,
    recover: bool = True,
) -> Session:
    """Deploy `plan` on `cluster` and return a session that runs `model`.

    With `recover` (the default) a device lost during a call is planned around and the requests
    it held are replayed (runtime/resilient.py), so a call returns every output; the plan's own
    strategy and objective make the new plan, from the profile measured here (when `plan` was
    given, measured at the first loss). `recover=False` fails the call at the first loss instead.

    `model` is a zoo name, a `package.module:factory` spec (give `input_shape`, and
    `input_dtype`/`input_range` for token ids), or an `nn.Module` (then give `example_input`,
    whose shape and dtype every request must have). `plan=None` plans here with `strategy` and
    `objective` (the command line's defaults), from a profile measured now. Devices with an
    `address` in the cluster are reached there; the others are started as local worker processes.
    """
    import torch

    from edgeweave.cost.cluster import Cluster
    from edgeweave.errors import UserError
    from edgeweave.plan.ir import Plan
    from edgeweave.plan.strategies import make_plan
    from edgeweave.runtime.session import Session
    from edgeweave.zoo import capture_model, check_input_dtype, parse_input_shape

    the_cluster = cluster if isinstance(cluster, Cluster) else Cluster.load(cluster)
    the_plan = None if plan is None else plan if isinstance(plan, Plan) else Plan.load(plan)
    if plan is None:  # cheap checks first: a wrong name must not cost a model build
        from edgeweave.plan.strategies import check_strategy

        check_strategy(strategy, objective)
    if isinstance(model, torch.nn.Module):
        if example_input is None:
            raise UserError("connect() with an nn.Module needs example_input")
        from edgeweave.zoo import ModelSpec

        shape = tuple(example_input.shape)
        spec = ModelSpec(type(model).__name__, model.eval(), example_input, shape, example_input.dtype, input_range)
    else:
        from edgeweave.zoo import load_model

        shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
        dtype = input_dtype if isinstance(input_dtype, torch.dtype) else check_input_dtype(input_dtype)
        spec = load_model(
            str(model),
            input_shape=shape,
            checkpoint=checkpoint,
            input_kind=input,
            labels=labels,
            input_dtype=dtype,
            input_range=input_range,
        )
    graph, weights = capture_model(spec)
    profiles: list[Any] = []  # measured once, when first needed
    if the_plan is None:
        profiles.append(_profile_here(spec, graph, weights))
        the_plan = make_plan(profiles[0], the_cluster, strategy, objective, graph)
    elif the_plan.num_nodes != len(graph.nodes):
        where = plan if isinstance(plan, str | Path) else "the plan"
        raise UserError(
            f"{where} was made for {the_plan.model} ({the_plan.num_nodes} nodes), not for {spec.name} "
            f"({len(graph.nodes)} nodes): plan this model, or pass plan=None to plan it here"
        )
    missing = [d for d in the_plan.devices if d not in the_cluster.devices]
    if missing or the_plan.source != the_cluster.source:
        where = plan if isinstance(plan, str | Path) else "the plan"
        raise UserError(
            f"{where} was made for another cluster: it uses {', '.join(missing) or the_plan.source + ' as source'}, "
            f"which {the_cluster.name or 'this cluster'} does not have (devices: {', '.join(the_cluster.devices)}, "
            f"source {the_cluster.source}); plan for this cluster, or pass plan=None"
        )
    if not recover:
        return Session(the_cluster, the_plan, graph, weights, options)
    from edgeweave.runtime.resilient import ResilientSession

    first = the_plan

    def replan(survivors: Cluster) -> Plan:
        if not profiles:
            profiles.append(_profile_here(spec, graph, weights))
        return make_plan(profiles[0], survivors, first.strategy, first.objective, graph)

    return ResilientSession(the_cluster, the_plan, graph, weights, replan, options)  # type: ignore[return-value]


def _profile_here(spec: Any, graph: Any, weights: Any) -> Any:
    """Profile `spec` on this machine (one thread, as workers compute)."""
    from edgeweave.cost.profiler import profile_graph

    return profile_graph(graph, weights, spec.example_input, module=spec.module, warmup=1, repeats=3)
