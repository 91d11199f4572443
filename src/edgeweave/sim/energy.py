"""Predicted energy of a Plan: the simulator's timeline priced by cost/energy.py.

Kept apart from the simulator itself so that `simulate` stays a pure timing model and energy
is an optional layer on top (a cluster without power numbers still simulates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.energy import EnergyReport, energy_fields, missing_power, power_models, timeline_energy
from edgeweave.plan.ir import Plan
from edgeweave.sim.simulator import SimResult, simulate


@dataclass(frozen=True)
class PlanEnergy:
    """One request alone (`single`) and per request of a stream (`stream`), or why neither exists."""

    single: EnergyReport | None
    stream: EnergyReport | None
    why_not: str | None

    def fields(self) -> dict[str, Any]:
        return energy_fields(self.single, self.stream, self.why_not)


def plan_cluster(plan: Plan, cluster: Cluster | None) -> Cluster:
    return cluster if cluster is not None else Cluster.from_dict(plan.cluster, origin="the plan's cluster")


def single_energy(plan: Plan, cluster: Cluster | None = None, required: bool = False) -> EnergyReport | None:
    """Energy of one request alone (window = its latency), None when a device has no power model.

    `required=True` raises the UserError naming the device and field instead of returning None.
    """
    cluster = plan_cluster(plan, cluster)
    if not required and missing_power(cluster, plan.devices):
        return None
    power = power_models(cluster, plan.devices)
    alone = simulate(plan, requests=1, cluster=cluster)
    return timeline_energy(alone.events, power, plan.source, 0.0, alone.single_latency_s)


def predict_energy(
    plan: Plan, cluster: Cluster | None = None, stream: SimResult | None = None, required: bool = False
) -> PlanEnergy:
    """Energy of one request alone and, given a simulated stream, per request of that stream."""
    cluster = plan_cluster(plan, cluster)
    why = missing_power(cluster, plan.devices)
    if why is not None:
        if required:
            power_models(cluster, plan.devices)  # raises the one-line error
        return PlanEnergy(None, None, why)
    single = single_energy(plan, cluster)
    per_request = None
    if stream is not None and stream.requests > 0:
        power = power_models(cluster, plan.devices)
        whole = timeline_energy(stream.events, power, plan.source, 0.0, stream.makespan_s)
        per_request = whole.scaled(1.0 / stream.requests)
    return PlanEnergy(single, per_request, None)
