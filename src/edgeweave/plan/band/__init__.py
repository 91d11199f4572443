"""Band planning: splitting a segment of local operators across devices by output band.

- `geometry`: rows computed, received and sent per input-driven step, and their work
- `cost`: band slowdown and price per call, per-message cost, link occupancy and delay
- `schedule`: the joint schedule of every chunk, step and transfer (what the simulator does)
- `search`: the best shares and chunking per candidate segment, helper set and gathering device
- `emit`: a split choice as the task graph of one request (the Plan IR)

The planners that use them (`hybrid`, `stream-offload`, `hybrid-grid`, `tensor`, energy) live in
plan/hybrid.py, plan/tensor.py and plan/energy.py.
"""

from edgeweave.plan.band.cost import MESSAGE_OVERHEAD_S, link_latency, occupancy, region_costs, transfer_s
from edgeweave.plan.band.emit import band_compute, band_input, band_output, build_hybrid_plan, with_message_overhead
from edgeweave.plan.band.geometry import (
    BandSchedule,
    SegmentCost,
    SegmentGeometry,
    StepCosts,
    axis_extent,
    candidate_segments,
    step_costs,
)
from edgeweave.plan.band.schedule import joint_latency, schedule, split_latency
from edgeweave.plan.band.search import (
    AXES,
    CHUNK_CHOICES,
    SPLIT_MARGIN,
    HybridOptions,
    SplitChoice,
    balance,
    balanced_rows,
    hybrid_splits,
    local_search,
    ratio_index,
    refine,
)

__all__ = [
    "AXES",
    "CHUNK_CHOICES",
    "MESSAGE_OVERHEAD_S",
    "SPLIT_MARGIN",
    "BandSchedule",
    "HybridOptions",
    "SegmentCost",
    "SegmentGeometry",
    "SplitChoice",
    "StepCosts",
    "axis_extent",
    "balance",
    "balanced_rows",
    "band_compute",
    "band_input",
    "band_output",
    "build_hybrid_plan",
    "candidate_segments",
    "hybrid_splits",
    "joint_latency",
    "link_latency",
    "local_search",
    "occupancy",
    "ratio_index",
    "refine",
    "region_costs",
    "schedule",
    "split_latency",
    "step_costs",
    "transfer_s",
    "with_message_overhead",
]
