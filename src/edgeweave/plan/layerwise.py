"""Layer-wise strategies: planners that place whole nodes on devices (local, offload, single and
DAG cuts, even, PipeDream, the exact pipeline optimiser), by name.

Kept apart from plan/strategies.py so that the band planners, which always weigh the best
layer-wise plan as a candidate, can use them without importing the strategy table back.
"""

from __future__ import annotations

from collections.abc import Callable

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.plan.baselines import BASELINES
from edgeweave.plan.build import Placement, build_plan, stages_to_placement
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import Plan
from edgeweave.plan.pipeline import plan_pipeline

Planner = Callable[[Profile, PipelineModel, str], Placement]


def _pipeline(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    solution = plan_pipeline(pm, objective)
    return stages_to_placement(solution.stages)


def layerwise_planners() -> dict[str, Planner]:
    return {**BASELINES, "pipeline": _pipeline}


def layerwise_plan(
    profile: Profile, cluster: Cluster, strategy: str, objective: str, time_budget_s: float | None = None
) -> Plan:
    """The plan of one layer-wise strategy (a name of `layerwise_planners()`).

    `pipeline` may be given a time budget: past it, the best plan found, with how far it is
    proven (`cost_model["search"]`: optimal, lower_bound_s, gap)."""
    pm = PipelineModel.build(profile, cluster)
    if strategy != "pipeline":
        placement = layerwise_planners()[strategy](profile, pm, objective)
        return build_plan(profile, cluster, pm, placement, strategy, objective)
    solution = plan_pipeline(pm, objective, time_budget=time_budget_s)
    plan = build_plan(profile, cluster, pm, stages_to_placement(solution.stages), strategy, objective)
    stats = solution.stats
    plan.cost_model["search"] = {
        "optimal": bool(stats.get("optimal", True)),
        "lower_bound_s": float(stats.get("lower_bound_s", 0.0)),
        "gap": float(stats.get("gap", 0.0)),
        "time_budget_s": time_budget_s,
    }
    if not plan.cost_model["search"]["optimal"]:
        plan.notes.append(
            f"not proven optimal ({stats.get('stopped', 'stopped early')}): the {objective} objective is within "
            f"{stats['gap']:.1%} of the best possible (lower bound {stats['lower_bound_s'] * 1e3:.2f} ms)"
        )
    return plan
