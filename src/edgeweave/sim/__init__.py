"""Simulate a Plan for a stream of requests, and draw timelines (simulated or measured).

`simulate(plan, requests)` predicts latency, throughput and per-resource busy time; `draw_timeline`
and `write_trace` turn any list of `TimelineEvent`s (a `SimResult`, or the runtime's measurements)
into a Gantt PNG or a Chrome/Perfetto trace. matplotlib is imported only when drawing.
"""

from edgeweave.sim.simulator import DeviceUsage, LinkUsage, RequestRecord, SimResult, default_max_inflight, simulate
from edgeweave.trace import TimelineEvent, as_events, draw_timeline, write_trace

__all__ = [
    "DeviceUsage",
    "LinkUsage",
    "RequestRecord",
    "SimResult",
    "TimelineEvent",
    "as_events",
    "default_max_inflight",
    "draw_timeline",
    "simulate",
    "write_trace",
]
