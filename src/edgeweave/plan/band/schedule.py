"""The joint schedule of a split: every input chunk, band step and output transfer timed the way
the simulator times the tasks the plan emits (one task at a time per device and link direction),
so the planner's latency is the simulated latency."""

from __future__ import annotations

from edgeweave.cost.profile import Profile
from edgeweave.graph.locality import Interval
from edgeweave.plan.band.cost import link_latency, occupancy, transfer_s
from edgeweave.plan.band.geometry import BandSchedule, SegmentCost, step_costs
from edgeweave.plan.costmodel import PipelineModel


def schedule(
    cost: SegmentCost, pm: PipelineModel, dev: int, own: dict[str, Interval], chunks: int, start: float, gather_at: int
) -> BandSchedule:
    """Stream a band on its own: step j's input rows cross the link (each message arrives `latency`
    after it leaves), the step runs when they and step j-1 are done, its finished rows go on to
    `gather_at`. Exactly what the simulator does with the tasks `build_hybrid_plan` emits for it."""
    remote = dev != pm.source
    geo = step_costs(cost, own, chunks, remote)
    speed = pm.span_speed(cost.segment.first, cost.segment.last, dev)
    t_link = t_dev = t_out_link = start
    t_out = start
    for j, work in enumerate(geo.work_s):
        arrive = start
        if remote and geo.sends[j]:
            t_link += occupancy(pm, pm.source, dev, geo.send_bytes[j])
            arrive = t_link + link_latency(pm, pm.source, dev)
        t_dev = max(t_dev, arrive) + work / speed
        if dev != gather_at and geo.out_bytes[j]:
            t_out_link = max(t_out_link, t_dev) + occupancy(pm, dev, gather_at, geo.out_bytes[j])
            t_out = t_out_link + link_latency(pm, dev, gather_at)
    return geo.schedule(max(t_out, t_dev))


def joint_latency(
    cost: SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    owns: list[dict[str, Interval]],
    chunks: list[int],
    start: float,
    suffix: int,
) -> tuple[float, list[BandSchedule | None]]:
    """When the last band reaches `suffix`, scheduling every task the way the simulator does: in plan
    order (all input chunks first), one task at a time per device and per link direction; a link
    is held for a message's bytes and software cost, and the message arrives `latency` later."""
    geos = [
        step_costs(cost, own, c, d != pm.source) if any(b > a for a, b in own.values()) else None
        for d, own, c in zip(devices, owns, chunks, strict=True)
    ]
    src = pm.source
    link: dict[tuple[int, int], float] = {}
    arrive: dict[tuple[int, int], float] = {}
    for k, (d, geo) in enumerate(zip(devices, geos, strict=True)):  # input chunks, in order, per link
        if geo is None or d == src:
            continue
        t_link = link.get((src, d), start)
        for j, nbytes in enumerate(geo.send_bytes):
            if geo.sends[j]:
                t_link += occupancy(pm, src, d, nbytes)
                arrive[k, j] = t_link + link_latency(pm, src, d)
        link[src, d] = t_link
    ready = start
    scheds: list[BandSchedule | None] = []
    for k, (d, geo) in enumerate(zip(devices, geos, strict=True)):
        if geo is None:
            scheds.append(None)
            continue
        speed = pm.span_speed(cost.segment.first, cost.segment.last, d)
        t_dev = t_done = start
        for j, work in enumerate(geo.work_s):
            t_dev = max(t_dev, arrive.get((k, j), start)) + work / speed
            if d == suffix:
                t_done = t_dev
                continue
            if geo.out_bytes[j]:
                t_link = max(link.get((d, suffix), start), t_dev) + occupancy(pm, d, suffix, geo.out_bytes[j])
                link[d, suffix] = t_link
                t_done = max(t_done, t_link + link_latency(pm, d, suffix))
        ready = max(ready, t_done)
        scheds.append(geo.schedule(t_done))
    return ready, scheds



def split_latency(profile: Profile, pm: PipelineModel, ready: float, last: int, suffix: int) -> float:
    tail = pm.nodes_time(slice(last + 1, None), suffix)
    return ready + tail + transfer_s(pm, suffix, pm.source, profile.output_bytes)
