"""Strategy names -> planners, and the one function that makes a Plan from a profile and a cluster.

The band planners (hybrid, stream-offload, hybrid-grid, tensor) and energy planning are imported
when asked for: they reach torch through the graph package, and planning layer-wise from a
profile file must not pay 1-2 s of torch import (a test checks `sys.modules`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.plan.ir import Plan
from edgeweave.plan.layerwise import Planner, layerwise_plan, layerwise_planners

if TYPE_CHECKING:
    from edgeweave.graph.opgraph import OpGraph
    from edgeweave.plan.band import HybridOptions, SegmentGeometry

OBJECTIVES = ("throughput", "latency", "energy")  # energy: see plan/energy.py


def strategies() -> dict[str, Planner]:
    """The layer-wise strategies by name (the band strategies are GRAPH_STRATEGIES)."""
    return layerwise_planners()


# need the operator graph (locality analysis), not only the profile
GRAPH_STRATEGIES = ("hybrid", "hybrid-grid", "tensor", "stream-offload")


def strategy_names() -> list[str]:
    """Every strategy name `make_plan` accepts, sorted."""
    return sorted([*strategies(), *GRAPH_STRATEGIES])


def check_strategy(strategy: str, objective: str | None = None) -> None:
    """One-line errors for an unknown strategy or objective, before anything expensive runs."""
    if strategy not in strategy_names():
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(strategy_names())}")
    if objective is not None and objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def make_plan(
    profile: Profile,
    cluster: Cluster,
    strategy: str,
    objective: str = "throughput",
    graph: OpGraph | None = None,
    *,
    energy_scope: str = "source",
    energy_budget_j: float | None = None,
    deadline_s: float | None = None,
    hybrid: HybridOptions | None = None,
    geometry: SegmentGeometry | None = None,
    time_budget_s: float | None = None,
) -> Plan:
    """Plan `profile` on `cluster` with `strategy`: a pure function of its inputs.

    `objective="energy"`, an energy budget or a deadline choose among the strategy's candidate
    plans by simulated energy (plan/energy.py); `energy_scope` is "source" or "total".
    `hybrid` fixes split choices by hand (ratios, chunks, axis) for `--strategy hybrid` only;
    `geometry` (kept by a caller that re-plans one model often) makes hybrid re-plans fast.
    `time_budget_s` bounds the exact pipeline search (`--strategy pipeline`; the plan then says
    how far from optimal it is proven to be).
    """
    if hybrid is not None and hybrid.fixed and strategy != "hybrid":
        raise UserError(f"--split-ratios, --chunks and --split-axis apply to --strategy hybrid, not {strategy}")
    check_strategy(strategy, objective)
    if objective == "energy" or energy_budget_j is not None or deadline_s is not None:  # plan/energy.wants_energy
        from edgeweave.plan.energy import plan_for_energy

        if hybrid is not None and hybrid.fixed:
            raise UserError("hand-given split choices cannot be combined with energy objectives or constraints")
        return plan_for_energy(profile, cluster, strategy, objective, graph, energy_scope, energy_budget_j, deadline_s)
    if strategy in GRAPH_STRATEGIES:
        if graph is None:
            raise UserError(
                f"--strategy {strategy} needs the model itself (it analyses which operators can be "
                "split): give MODEL, not only --profile"
            )
        from edgeweave.plan.hybrid import plan_hybrid, plan_hybrid_grid, plan_stream_offload
        from edgeweave.plan.tensor import plan_tensor

        if strategy == "hybrid":
            return plan_hybrid(profile, graph, cluster, objective, geometry=geometry, options=hybrid)
        planner = {"hybrid-grid": plan_hybrid_grid, "tensor": plan_tensor, "stream-offload": plan_stream_offload}[
            strategy
        ]
        return planner(profile, graph, cluster, objective)
    return layerwise_plan(profile, cluster, strategy, objective, time_budget_s)
