"""What band work and band messages cost: the measured band slowdown and price per call, the
per-message software cost, and a link's occupancy and delay (design.md's link model)."""

from __future__ import annotations

from edgeweave.cost.profile import Profile
from edgeweave.cost.region_overhead import DEFAULT_REGION_COSTS
from edgeweave.plan.costmodel import PipelineModel

MESSAGE_OVERHEAD_S = 0.3e-3
"""Software cost of one runtime message beyond latency + bytes/bandwidth (serialise, queue, decode,
wake the receiver): benchmarks/message_cost.py measured 0.19 ms for a 256-byte message, 0.25 ms
for 64 KiB and ~0.46 ms for 1 MiB end to end on loopback (median over 600); band chunks are tens
to hundreds of KiB. Band plans send many messages, so the planner counts it and puts it on every
transfer it emits (`TransferTask.overhead_s`), where the simulator adds it too."""


def region_costs(profile: Profile, axis: str) -> tuple[float, float]:
    """(slowdown, seconds per node per band task at the reference speed) of band work along
    `axis`, as the profiler measured them (cost/region_overhead.py), or the defaults."""
    measured = ((profile.model_extra or {}).get("region_costs") or {}).get(axis)
    costs = measured or DEFAULT_REGION_COSTS[axis]
    return float(costs["slowdown"]), float(costs["overhead_s"])


def transfer_s(pm: PipelineModel, a: int, b: int, nbytes: int) -> float:
    """A lone message's time from leaving `a` to arriving at `b` (latency + bytes + software cost)."""
    if a == b or nbytes == 0:
        return 0.0
    return float(pm.latency[a, b] + nbytes / pm.bandwidth[a, b]) + MESSAGE_OVERHEAD_S



def occupancy(pm: PipelineModel, a: int, b: int, nbytes: int) -> float:
    """How long a message holds the link (a, b): its bytes at the link's rate plus the software
    cost of a message; its latency does not hold the link (design.md, the link model)."""
    if a == b or nbytes == 0:
        return 0.0
    return float(nbytes / pm.bandwidth[a, b]) + MESSAGE_OVERHEAD_S


def link_latency(pm: PipelineModel, a: int, b: int) -> float:
    return 0.0 if a == b else float(pm.latency[a, b])
