"""Strategy names -> planners, and the one function that makes a Plan from a profile and a cluster."""

from __future__ import annotations

from collections.abc import Callable

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph
from edgeweave.plan.build import Placement, build_plan, stages_to_placement
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import Plan
from edgeweave.plan.pipeline import plan_pipeline

OBJECTIVES = ("throughput", "latency")


def _pipeline(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    solution = plan_pipeline(pm, objective)
    return stages_to_placement(solution.stages)


def strategies() -> dict[str, Callable[[Profile, PipelineModel, str], Placement]]:
    from edgeweave.plan.baselines import BASELINES

    return {**BASELINES, "pipeline": _pipeline}


GRAPH_STRATEGIES = ("hybrid", "hybrid-grid")  # need the operator graph (locality analysis), not only the profile


def make_plan(
    profile: Profile, cluster: Cluster, strategy: str, objective: str = "throughput", graph: OpGraph | None = None
) -> Plan:
    """Plan `profile` on `cluster` with `strategy`: a pure function of its inputs."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    table = strategies()
    if strategy not in table and strategy not in GRAPH_STRATEGIES:
        names = sorted([*table, *GRAPH_STRATEGIES])
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(names)}")
    if strategy in GRAPH_STRATEGIES:
        from edgeweave.plan.hybrid import plan_hybrid, plan_hybrid_grid

        if graph is None:
            raise UserError(
                f"--strategy {strategy} needs the model itself (it analyses which operators can be "
                "split): give MODEL, not only --profile"
            )
        return (plan_hybrid if strategy == "hybrid" else plan_hybrid_grid)(profile, graph, cluster, objective)
    pm = PipelineModel.build(profile, cluster)
    placement = table[strategy](profile, pm, objective)
    return build_plan(profile, cluster, pm, placement, strategy, objective)
