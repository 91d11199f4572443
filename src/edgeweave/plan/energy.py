"""Energy-aware planning: `--objective energy`, `--energy-budget J` and `--deadline S`.

The planners are exact for time (latency, bottleneck), not for energy, whose cost depends on
who idles while whom. Rather than a second optimiser per strategy, every strategy offers a set
of CANDIDATE plans from its own family, each is priced by the same simulation + power model
that `plan --json` reports (sim/energy.py), and the best candidate that meets the constraint wins:

- `--objective energy` minimises the source's energy per inference (`--energy-scope source`,
  the robot's battery) or all the plan's devices' (`--energy-scope total`), optionally subject
  to `--deadline S` on one request's latency;
- `--objective latency|throughput --energy-budget J` is the fastest candidate within J joules.

Candidates per strategy (all pure functions of profile, graph and cluster):
- local: itself. offload: every remote device that fits. neurosurgeon: every single cut between
  the source and every remote device. dads: the DADS cut of every remote device, and local.
- pipeline: the exact optimiser's latency and throughput plans, and every neurosurgeon candidate
  (two-stage pipelines), so the pipeline family always contains the best single cut.
- hybrid: every band split the hybrid planner considers (its latency-best shares per segment,
  helper set and gathering device), the same splits with the source's share on a grid
  (`SHARE_GRID`: a slower but more frugal split often gives the source a smaller share), and
  every layer-wise candidate above (hybrid is never worse than them, as for latency).
- any other strategy: its latency and throughput plans.

So the energy chosen is optimal among the candidates, not over all possible plans; the notes
of the chosen plan say how many were priced.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.energy import check_energy_args, power_models, timeline_energy
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import own_bands
from edgeweave.plan.band import (
    CHUNK_CHOICES,
    SegmentGeometry,
    SplitChoice,
    build_hybrid_plan,
    hybrid_splits,
    joint_latency,
    split_latency,
    with_message_overhead,
)
from edgeweave.plan.baselines import _two_parts, dads_cut, neurosurgeon_latencies
from edgeweave.plan.build import Placement, build_plan
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import Plan
from edgeweave.sim.simulator import simulate

# Shares of the source in a two-device band split, tried on top of the latency-best share.
SHARE_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LAYERWISE = ("local", "offload", "neurosurgeon", "dads")


@dataclass
class Scored:
    """A candidate plan with what it costs: one request's latency and energy (scoped)."""

    plan: Plan
    latency_s: float
    energy_j: float
    source_energy_j: float
    throughput_per_s: float | None = None


def wants_energy(objective: str, budget_j: float | None, deadline_s: float | None) -> bool:
    """Whether make_plan must take the candidate route (plain latency/throughput keep their planners)."""
    return objective == "energy" or budget_j is not None or deadline_s is not None


def plan_for_energy(
    profile: Profile,
    cluster: Cluster,
    strategy: str,
    objective: str,
    graph: OpGraph | None,
    scope: str = "source",
    budget_j: float | None = None,
    deadline_s: float | None = None,
) -> Plan:
    """The best candidate of `strategy`'s family for the objective under the constraints."""
    check_energy_args(scope, budget_j, deadline_s)
    if objective != "energy" and deadline_s is not None:
        raise UserError("--deadline goes with --objective energy (with latency, the fastest plan already is the one)")
    if objective == "energy" and budget_j is not None:
        raise UserError("--energy-budget goes with --objective latency or throughput (energy is already minimised)")
    power = power_models(cluster, cluster.device_names)  # energy asked for: every device needs its numbers
    scored = [score_plan(p, cluster, power, objective) for p in candidates(profile, cluster, strategy, graph)]
    if not scored:
        raise UserError(f"{strategy}: no candidate plan fits in memory on this cluster")
    key = _energy_key(scope)
    pool = scored
    if deadline_s is not None:
        pool = [s for s in scored if s.latency_s <= deadline_s * (1 + 1e-9)]
        if not pool:
            fastest = min(s.latency_s for s in scored)
            raise UserError(
                f"no {strategy} plan meets the deadline of {deadline_s:g} s: the fastest of "
                f"{len(scored)} candidates takes {fastest:.4g} s"
            )
    if budget_j is not None:
        pool = [s for s in scored if key(s) <= budget_j * (1 + 1e-9)]
        if not pool:
            frugal = min(key(s) for s in scored)
            raise UserError(
                f"no {strategy} plan meets the energy budget of {budget_j:g} J ({scope}): the most frugal of "
                f"{len(scored)} candidates uses {frugal:.4g} J"
            )
    if objective == "energy":
        best = min(pool, key=lambda s: (round(key(s), 12), s.latency_s))
    elif objective == "throughput":
        best = max(pool, key=lambda s: (s.throughput_per_s, -s.latency_s))
    else:
        best = min(pool, key=lambda s: (s.latency_s, key(s)))
    plan = best.plan
    plan.strategy, plan.objective = strategy, objective
    plan.cost_model = {
        **plan.cost_model,
        "energy_scope": scope,
        "energy_budget_j": budget_j,
        "deadline_s": deadline_s,
        "candidates": len(scored),
        "energy_j": best.energy_j,
        "source_energy_j": best.source_energy_j,
    }
    limit = "".join(
        [f", deadline {deadline_s:g} s" if deadline_s else "", f", budget {budget_j:g} J" if budget_j else ""]
    )
    plan.notes.append(
        f"{objective} objective ({scope} energy{limit}): chosen among {len(scored)} {strategy} candidates "
        f"({len(pool)} met the constraint): {key(best):.4g} J, {best.latency_s * 1e3:.1f} ms"
    )
    return plan


def _energy_key(scope: str):
    return (lambda s: s.source_energy_j) if scope == "source" else (lambda s: s.energy_j)


def score_plan(plan: Plan, cluster: Cluster, power, objective: str) -> Scored:
    alone = simulate(plan, requests=1, cluster=cluster)
    used = {d: power[d] for d in plan.devices}
    report = timeline_energy(alone.events, used, plan.source, 0.0, alone.single_latency_s)
    throughput = simulate(plan, requests=20, cluster=cluster).throughput_per_s if objective == "throughput" else None
    return Scored(plan, alone.single_latency_s, report.total_j, report.source_j, throughput)


# ---------------------------------------------------------------------------------------------
# Candidates


def candidates(profile: Profile, cluster: Cluster, strategy: str, graph: OpGraph | None) -> Iterator[Plan]:
    """Every candidate plan of `strategy`'s family (see the module docstring); all fit in memory."""
    from edgeweave.plan.strategies import GRAPH_STRATEGIES, make_plan  # the dispatcher, which imports us

    pm = PipelineModel.build(profile, cluster)
    if strategy == "hybrid":
        if graph is None:
            raise UserError("--strategy hybrid needs the model itself (not only --profile)")
        yield from _hybrid(profile, graph, cluster, pm)
        # as plan_hybrid compares them: under the same per-message cost as band transfers
        yield from (with_message_overhead(p) for p in _layerwise(profile, cluster, pm, LAYERWISE))
    elif strategy in LAYERWISE:
        yield from _layerwise(profile, cluster, pm, (strategy,))
    elif strategy == "pipeline":
        for objective in ("latency", "throughput"):
            yield make_plan(profile, cluster, "pipeline", objective)
        yield from _layerwise(profile, cluster, pm, ("neurosurgeon",))
    else:
        seen = set()
        for objective in ("latency", "throughput"):
            plan = make_plan(profile, cluster, strategy, objective, graph if strategy in GRAPH_STRATEGIES else None)
            signature = plan.model_dump_json(include={"tasks"})
            if signature not in seen:
                seen.add(signature)
                yield plan


def _fits(plan: Plan) -> bool:
    return bool(plan.cost_model.get("fits", True))


def _layerwise(profile: Profile, cluster: Cluster, pm: PipelineModel, families: tuple[str, ...]) -> Iterator[Plan]:
    L = pm.num_nodes
    remotes = [d for d in range(pm.num_devices) if d != pm.source]
    placements: dict[str, list[Placement]] = {"local": [[(pm.source, list(range(L)))]]}
    placements["offload"] = [[(d, list(range(L)))] for d in remotes]
    placements["neurosurgeon"] = [[(pm.source, list(range(L)))]] + [
        _two_parts(pm, d, list(range(p)), list(range(p, L)))
        for d in remotes
        for p in np.flatnonzero(np.isfinite(neurosurgeon_latencies(pm, d))).tolist()
        if p < L
    ]
    placements["dads"] = [[(pm.source, list(range(L)))]] + [
        _two_parts(pm, d, *dads_cut(profile, pm, d)[1:]) for d in remotes
    ]
    seen: set[str] = set()
    for family in families:
        for placement in placements[family]:
            key = repr(placement)
            if key in seen:
                continue
            seen.add(key)
            plan = build_plan(profile, cluster, pm, placement, family, "latency")
            if _fits(plan) or family == "local":  # local is the fallback even when it does not fit
                yield plan


def _hybrid(profile: Profile, graph: OpGraph, cluster: Cluster, pm: PipelineModel) -> Iterator[Plan]:
    """The hybrid planner's splits, and the same segments with the source's share on a grid."""

    geometry = SegmentGeometry(profile, graph)
    costs = {(c.segment.first, c.segment.last, c.segment.axis_name): c for c in geometry.costs()}
    gridded: set[tuple] = set()
    for choice in hybrid_splits(profile, graph, pm, geometry):
        yield build_hybrid_plan(profile, graph, cluster, pm, choice, "latency")
        if len(choice.devices) != 2:
            continue
        key = (choice.first, choice.last, choice.axis, tuple(choice.devices), choice.suffix_device)
        if key in gridded:
            continue
        gridded.add(key)
        cost = costs[choice.first, choice.last, choice.axis]
        seg = cost.segment
        prefix = pm.nodes_time(slice(0, choice.first), pm.source)
        for share in SHARE_GRID:
            if abs(share - choice.ratios[0]) < 1e-9:  # the latency-best split, already yielded
                continue
            owns = own_bands(seg, [share, 1.0 - share])
            best = None
            for c in CHUNK_CHOICES:
                chunks = [1 if d == pm.source else c for d in choice.devices]
                ready, scheds = joint_latency(cost, pm, choice.devices, owns, chunks, prefix, choice.suffix_device)
                if best is None or ready < best[0]:
                    best = (ready, scheds)
            if best is None or math.isinf(best[0]):
                continue
            lat = split_latency(profile, pm, best[0], choice.last, choice.suffix_device)
            split = SplitChoice(
                choice.first,
                choice.last,
                choice.axis,
                choice.devices,
                [share, 1.0 - share],
                choice.suffix_device,
                lat,
                best[1],
            )
            yield build_hybrid_plan(profile, graph, cluster, pm, split, "latency")
