"""Frame streams: a robot's camera produces frames at a fixed rate, and latency and throughput
are judged for that stream rather than for one request alone or a saturating burst.

Frame k arrives at k / rate_per_s; its latency is finish - arrival (queueing included). Below
the plan's capacity (1 / bottleneck) every frame sees about the single-request latency and the
throughput equals the rate; above it frames queue and latency grows with every frame.
"""

from __future__ import annotations

import math
from typing import Any

from edgeweave.errors import UserError
from edgeweave.plan.ir import Plan


def check_rate(rate_per_s: float | None) -> float | None:
    """The frame rate, or a one-line error when it is not a positive finite number (None: no stream)."""
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise UserError(f"--rate must be > 0 frames per second, got {rate_per_s:g}")
    return rate_per_s


def predict_stream(
    plan: Plan, rate_per_s: float, requests: int = 50, max_inflight: int | None = None
) -> dict[str, Any]:
    """What the simulator predicts for `requests` frames arriving at `rate_per_s` (the runtime's window)."""
    from edgeweave.sim.simulator import simulate

    result = simulate(plan, requests=requests, rate_per_s=check_rate(rate_per_s), max_inflight=max_inflight)
    return {
        "rate_per_s": rate_per_s,
        "requests": requests,
        "latency_p50_s": result.latency_s,
        "latency_p95_s": result.latency_p95_s,
        "throughput_per_s": result.throughput_per_s,
        "capacity_per_s": plan.predicted.get("throughput_per_s"),
    }
