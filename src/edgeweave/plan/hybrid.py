"""The hybrid planner (`--strategy hybrid`): split local operators across devices by output band.

A hybrid plan is: a layer-wise prefix on the source (where the input is), one *segment* of local
operators split into bands across several devices (each gets exactly the input band it needs,
halo included, streamed in chunks so it computes while rows still arrive, and computes its own
band of the segment's outputs), a gather of the bands on the device that runs the layer-wise
suffix (global pooling, heads, attention), and the result back to the source.

Shares are chosen on an exact joint schedule of every chunk, computed the way the simulator
schedules the tasks the plan emits (so the plan's simulated latency equals the planner's): for
two devices every split row is tried (coarse, then fine); for more, a balance of arrival times
seeds a local search. The best layer-wise plan is always a candidate, so hybrid is never worse
than it under the cost model.
"""


from __future__ import annotations

import math

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import make_segment, own_bands
from edgeweave.plan.band import (
    SPLIT_MARGIN,
    HybridOptions,
    SegmentCost,
    SegmentGeometry,
    SplitChoice,
    build_hybrid_plan,
    candidate_segments,
    hybrid_splits,
    joint_latency,
    ratio_index,
    split_latency,
    with_message_overhead,
)
from edgeweave.plan.band.multi import MultiSplit, build_multi_plan, multi_segment_split
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.ir import Plan
from edgeweave.plan.layerwise import layerwise_plan
from edgeweave.sim.simulator import simulate


def plan_hybrid(
    profile: Profile,
    graph: OpGraph,
    cluster: Cluster,
    objective: str = "latency",
    geometry: SegmentGeometry | None = None,
    options: HybridOptions | None = None,
) -> Plan:
    """The best hybrid plan under the cost model (latency), or the best layer-wise plan if that is better.

    Pass the same `geometry` again to re-plan the same model for new link rates in milliseconds.
    With choices fixed in `options`, the best split that obeys them (no layer-wise fallback)."""
    pm = PipelineModel.build(profile, cluster)
    options = options or HybridOptions()
    options.check(pm)
    geometry = geometry or SegmentGeometry(profile, graph)
    best_plan, best_latency = None, math.inf
    for strategy in () if options.fixed else ("local", "offload", "neurosurgeon", "dads"):
        try:
            candidate = with_message_overhead(layerwise_plan(profile, cluster, strategy, "latency"))
        except Exception:  # noqa: BLE001 - a baseline without an answer (e.g. nothing fits) is skipped
            continue
        lat = simulate(candidate, requests=1).single_latency_s
        if lat < best_latency:
            best_plan, best_latency = candidate, lat
    best_split = None

    def cutoff() -> float:
        return min(best_latency * (1 - SPLIT_MARGIN), best_split.latency_s if best_split else math.inf)

    for choice in hybrid_splits(profile, graph, pm, geometry, cutoff, options):
        if choice.latency_s < cutoff():
            best_split = choice
    if best_split is not None and not options.fixed:
        multi = best_multi_segment(profile, graph, cluster, pm, best_split, geometry)
        if multi is not None and multi[1] < cutoff():
            return build_multi_plan(profile, graph, cluster, pm, multi[0], objective, geometry.multi, multi[1])
    if best_split is not None:
        plan = build_hybrid_plan(profile, graph, cluster, pm, best_split, objective)
        if not any(t.id == "xskip" for t in plan.tasks):
            return plan
        # values that skip the segment reach the suffix device after the band messages on their
        # link, which the split's schedule does not count: price the plan as the simulator runs it
        latency = simulate(plan, requests=1).single_latency_s
        plan.cost_model["latency_s"] = latency
        if options.fixed or best_plan is None or latency < best_latency * (1 - SPLIT_MARGIN):
            return plan
    if options.fixed:
        along = f" along {options.axis}" if options.axis else ""
        raise UserError(f"{profile.model} has no segment of local operators that can be split{along}")
    if best_plan is None:
        raise UserError(f"no plan for {profile.model} here: no layer-wise plan fits and nothing can be split")
    why = (
        f"{profile.model} has no segment of local operators to split (every operator is a barrier)"
        if not geometry.costs()
        else "no band split beats the best layer-wise plan here"
    )
    best_plan.notes.append(f"hybrid: {why}; using {best_plan.strategy}")
    best_plan.strategy = "hybrid"
    return best_plan


def best_multi_segment(
    profile: Profile, graph: OpGraph, cluster: Cluster, pm: PipelineModel, base: SplitChoice, geometry: SegmentGeometry
) -> tuple[MultiSplit, float] | None:
    """The best split with halo exchanges grown from the best single-segment split: over the same
    nodes, and over the longest local run that starts where it starts (exchanging halos keeps deep
    bands thin, so a split may reach further than recomputing halos allows)."""
    ends = {base.last}
    ends |= {
        c.segment.last for c in geometry.costs() if c.segment.first == base.first and c.segment.axis_name == base.axis
    }
    best = None
    for last in sorted({base.last, max(ends)}):
        found = multi_segment_split(
            profile, graph, cluster, pm, base, lambda p: simulate(p, requests=1).single_latency_s, last, geometry.multi
        )
        if found is not None and (best is None or found[1] < best[1]):
            best = found
    return best


def plan_stream_offload(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """`--strategy stream-offload`: the frame is streamed in chunks to the one helper that finishes
    first, which computes the model's first local segment as the rows arrive (input-driven steps)
    and the rest after it; the source computes nothing. It is the hybrid search restricted to a
    source share of 0 and the segment that starts at the frame, so its share of hybrid's gain
    shows on its own. Models whose first operator is a barrier are offloaded whole (stated in
    the plan's notes)."""
    pm = PipelineModel.build(profile, cluster)
    others = [d for d in range(pm.num_devices) if d != pm.source]
    geometry = SegmentGeometry(profile, graph)
    best = None
    for helper in others:
        ratios = tuple(1.0 if k == ratio_index(pm, helper) else 0.0 for k in range(pm.num_devices))
        for choice in hybrid_splits(profile, graph, pm, geometry, None, HybridOptions(ratios=ratios)):
            if choice.first != 0 or choice.suffix_device != helper:
                continue
            if best is None or choice.latency_s < best.latency_s:
                best = choice
    if best is None:
        plan = with_message_overhead(layerwise_plan(profile, cluster, "offload", "latency"))
        plan.notes.append("stream-offload: no local segment starts at the input (or no helper); offloaded whole")
    else:
        plan = build_hybrid_plan(profile, graph, cluster, pm, best, objective)
    plan.strategy = "stream-offload"
    return plan


GRID = (0.0, 0.5, 0.6, 0.7, 1.0)


def plan_hybrid_grid(profile: Profile, graph: OpGraph, cluster: Cluster, objective: str = "latency") -> Plan:
    """The published Hybrid-Parallel planner's approach, as a baseline: two devices (the source and
    the fastest other), width splits only, the source's share from the grid {0, .5, .6, .7, 1},
    at block-end cut candidates, no streaming, costed with the configured link rates. (The
    original also computes the seam between the halves inexactly; ours is exact, which only
    flatters the baseline.)"""
    pm = PipelineModel.build(profile, cluster)
    others = [d for d in range(pm.num_devices) if d != pm.source]
    if not others:
        plan = layerwise_plan(profile, cluster, "local", objective)
        plan.strategy = "hybrid-grid"
        return plan
    helper = max(others, key=lambda d: float(pm.speed[d]))
    devices = [pm.source, helper]
    best = None
    for first, last, axis in candidate_segments(graph):
        if axis != "cols" or first != 0:
            continue
        seg = make_segment(graph, first, last, axis)
        if seg is None:
            continue
        cost = SegmentCost(seg, profile)
        for share in GRID:
            owns = own_bands(seg, [share, 1.0 - share])
            for suffix in devices:
                ready, scheds = joint_latency(cost, pm, devices, owns, [1, 1], 0.0, suffix)
                lat = split_latency(profile, pm, ready, last, suffix)
                if best is None or lat < best.latency_s:
                    best = SplitChoice(first, last, axis, devices, [share, 1.0 - share], suffix, lat, scheds)
    plan = build_hybrid_plan(profile, graph, cluster, pm, best, objective)
    plan.strategy = "hybrid-grid"
    return plan
