"""The split search: for each candidate segment, helper set and gathering device, the shares and
chunking with the lowest joint latency (every split row for two devices, a balance of arrival
times and a local search beyond), in order of a lower bound so hopeless candidates are skipped."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph
from edgeweave.graph.regions import own_bands, split_bands
from edgeweave.plan.band.geometry import BandSchedule, SegmentCost, SegmentGeometry
from edgeweave.plan.band.schedule import joint_latency, schedule, split_latency
from edgeweave.plan.costmodel import PipelineModel


@dataclass
class SplitChoice:
    first: int
    last: int
    axis: str
    devices: list[int]  # device indices, the source first
    ratios: list[float]
    suffix_device: int
    latency_s: float
    schedules: list  # BandSchedule per device (None for a device with an empty band)



CHUNK_CHOICES = (1, 2, 4, 8)
SPLIT_MARGIN = 0.03
"""A band split must beat the best layer-wise plan by this fraction under the cost model to be
chosen, so that a predicted gain smaller than the prediction's error is not taken. With compiled
band programs, hybrid and stream-offload plans measured within 5% of their prediction
(benchmarks/hybrid_sweep.py --real, resnet18/mobilenet_v2/resnet50 at 10-65 Mbps: streamed
offloads 1-5% faster than predicted, two-device splits up to 5% slower); the interpreted bands
before them ran 10-50% over, which needed 8%. Hand-given split choices bypass it."""
AXES = ("rows", "cols")


@dataclass(frozen=True)
class HybridOptions:
    """Choices a user may fix by hand (`--split-ratios`, `--chunks`, `--split-axis`); the planner
    searches everything left open. Fixing any of them means "split like this": the planner then
    returns the best split that obeys them, never a layer-wise fallback."""

    ratios: tuple[float, ...] | None = None  # one share per device of the cluster, the source first
    chunks: int | None = None  # chunks every helper's input band is streamed in
    axis: str | None = None  # "rows" or "cols" (a sequence's tokens split along either)

    @property
    def fixed(self) -> bool:
        return self.ratios is not None or self.chunks is not None or self.axis is not None

    def check(self, pm: PipelineModel) -> None:
        """One-line errors for choices that cannot work on this cluster."""
        if self.axis is not None and self.axis not in AXES:
            raise UserError(f"split axis {self.axis!r} is not one of {', '.join(AXES)}")
        if self.chunks is not None and not 1 <= self.chunks <= 64:
            raise UserError(f"chunk count {self.chunks} must be between 1 and 64")
        if self.ratios is not None:
            order = [pm.devices[pm.source], *(n for k, n in enumerate(pm.devices) if k != pm.source)]
            if len(self.ratios) != len(order):
                raise UserError(
                    f"{len(self.ratios)} split ratios given for {len(order)} devices; give one per device "
                    f"in this order: {', '.join(order)}"
                )
            if any(not math.isfinite(r) or r < 0 for r in self.ratios):
                raise UserError(f"split ratios must be finite and >= 0, got {list(self.ratios)}")
            if abs(sum(self.ratios) - 1.0) > 1e-6:
                raise UserError(f"split ratios must add up to 1, got {list(self.ratios)} (sum {sum(self.ratios):g})")
            if sum(1 for r in self.ratios if r > 0) < 2:
                raise UserError("split ratios give everything to one device: not a split (use local or offload)")



def refine(
    cost: SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    start: float,
    suffix: int,
    options: HybridOptions | None = None,
) -> tuple[float, list[float], list[BandSchedule | None]]:
    """The best split on the exact joint latency: every split row for two devices; beyond that, a
    local search from the shares that balance arrival times. Shares or chunking fixed in `options`
    are taken as given."""
    seg = cost.segment
    extent = seg.extent(seg.outputs[-1])
    options = options or HybridOptions()
    choices_all = CHUNK_CHOICES if options.chunks is None else (options.chunks,)
    memo: dict[tuple, tuple[float, list, list, int]] = {}

    def evaluate(rows: tuple[int, ...], choices: tuple[int, ...] = choices_all) -> tuple[float, list, list, int]:
        if (rows, choices) not in memo:
            rat = [r / extent for r in rows]
            owns = own_bands(seg, rat)
            best = None
            for c in choices:
                for own_chunks in sorted({1, c}):  # the source may stream its output bands too
                    chunks = [own_chunks if d == pm.source else c for d in devices]
                    lat, scheds = joint_latency(cost, pm, devices, owns, chunks, start, suffix)
                    if best is None or lat < best[0]:
                        best = (lat, rat, scheds, c)
            memo[rows, choices] = best
        return memo[rows, choices]

    if options.ratios is not None:  # shares given by hand: only the chunking is searched
        share = [options.ratios[ratio_index(pm, d)] for d in devices]
        rows = [b - a for a, b in split_bands(extent, share)]
        return evaluate(tuple(rows))[:3]
    if len(devices) == 2:  # coarse scan of the split row, then every row around the best coarse one
        step = max(1, extent // 12)
        coarse = min(range(0, extent + 1, step), key=lambda r: evaluate((r, extent - r))[0])
        chunk = (evaluate((coarse, extent - coarse))[3],)  # the fine scan keeps the coarse optimum's chunking
        fine = range(max(0, coarse - step), min(extent, coarse + step) + 1)
        return min((evaluate((r, extent - r), chunk) for r in fine), key=lambda x: x[0])[:3]
    rows = [round(r * extent) for r in balance(cost, pm, devices, start, suffix)]
    rows[-1] = extent - sum(rows[:-1])
    current = local_search(evaluate, tuple(rows))
    return evaluate(current)[:3]


def ratio_index(pm: PipelineModel, device: int) -> int:
    """Position of a device in a hand-given ratio list: the source first, then the cluster's order."""
    order = [pm.source, *(k for k in range(pm.num_devices) if k != pm.source)]
    return order.index(device)


def balance(
    cost: SegmentCost,
    pm: PipelineModel,
    devices: list[int],
    start: float,
    gather_at: int,
) -> list[float]:
    """Shares so that every device's bands reach the gathering device at the same time (each
    device streaming with its best chunk count). Bands are whole rows."""
    seg = cost.segment
    extent = seg.extent(seg.outputs[-1])
    memo: dict[tuple[int, int], float] = {}

    def ready(dev: int, rows: int) -> float:
        if rows == 0:
            return start
        if (dev, rows) not in memo:
            own = (
                own_bands(seg, [rows, extent - rows])[0]
                if rows < extent
                else {v: (0, seg.extent(v)) for v in seg.outputs}
            )
            memo[dev, rows] = min(schedule(cost, pm, dev, own, c, start, gather_at).ready for c in CHUNK_CHOICES)
        return memo[dev, rows]

    return [r / extent for r in balanced_rows(devices, extent, ready, start)]


def balanced_rows(devices: list[int], extent: int, ready: Callable[[int, int], float], start: float) -> list[int]:
    """Rows per device such that all bands are ready at about the same time: for a time T each
    device takes the most rows it can deliver by T (`ready(dev, rows)` grows with rows), and the
    smallest T at which the rows cover `extent` is bisected. Surplus rows come off the last devices."""

    def rows_by(dev: int, t: float) -> int:
        lo, hi = 0, extent
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ready(dev, mid) <= t:
                lo = mid
            else:
                hi = mid - 1
        return lo

    lo_t, hi_t = start, min(ready(d, extent) for d in devices)
    for _ in range(40):
        mid = (lo_t + hi_t) / 2
        if sum(rows_by(d, mid) for d in devices) >= extent:
            hi_t = mid
        else:
            lo_t = mid
    rows = [rows_by(d, hi_t) for d in devices]
    excess = sum(rows) - extent
    for k in range(len(rows) - 1, -1, -1):
        cut = min(excess, rows[k])
        rows[k] -= cut
        excess -= cut
    rows[0] += extent - sum(rows)  # cannot happen after bisection, but never lose a row
    return rows


def local_search(evaluate: Callable[[tuple[int, ...]], tuple], start: tuple[int, ...]) -> tuple[int, ...]:
    """Move rows between pairs of devices (steps of 4, 2, 1) while `evaluate(rows)[0]` shrinks."""
    current = start
    improved = True
    while improved:
        improved = False
        for a in range(len(current)):
            for b in range(len(current)):
                for step in (4, 2, 1):
                    if a == b or current[a] < step:
                        continue
                    trial = list(current)
                    trial[a] -= step
                    trial[b] += step
                    if evaluate(tuple(trial))[0] < evaluate(current)[0] - 1e-12:
                        current, improved = tuple(trial), True
    return current



def hybrid_splits(
    profile: Profile,
    graph: OpGraph,
    pm: PipelineModel,
    geometry: SegmentGeometry | None = None,
    cutoff: Callable[[], float] | None = None,
    options: HybridOptions | None = None,
) -> Iterator[SplitChoice]:
    """Every band split the hybrid planner considers: for each candidate segment, helper set and
    gathering device, the latency-best shares. A generator, so that `plan_hybrid` keeps the fastest
    and the energy planner (plan/energy.py) can price each one instead.

    Candidates come in order of a lower bound on their latency (the segment's work spread over all
    devices at once, each helper as fast as the slower of its compute and its input link); with
    `cutoff` (the best latency found so far) a candidate whose bound cannot beat it is skipped
    without being refined."""
    options = options or HybridOptions()
    others = [d for d in range(pm.num_devices) if d != pm.source]
    helper_sets = [[d] for d in others] + ([others] if len(others) > 1 else [])
    if options.ratios is not None:  # exactly the devices given a share take part
        helper_sets = [[d for d in others if options.ratios[ratio_index(pm, d)] > 0]]
    candidates = []
    for cost in (geometry or SegmentGeometry(profile, graph)).costs():
        if options.axis is not None and cost.segment.axis_name != options.axis:
            continue
        first, last = cost.segment.first, cost.segment.last
        prefix = pm.nodes_time(slice(0, first), pm.source)
        span = slice(first, last + 1)
        whole = {v: (0, cost.segment.extent(v)) for v in cost.segment.outputs}
        bytes_in = cost.band(whole)[1]
        for helpers in helper_sets:
            devices = [pm.source, *helpers]
            # each device's rate in "segments per second": a helper is limited by its compute or by
            # the link that brings it the input, whichever is slower (perfect overlap, no halo)
            rate = 1.0 / pm.nodes_time(span, pm.source) + sum(
                1.0 / max(pm.nodes_time(span, d), bytes_in / float(pm.bandwidth[pm.source, d])) for d in helpers
            )
            spread = 1.0 / rate
            for suffix in devices:
                bound = split_latency(profile, pm, prefix + spread, last, suffix)
                candidates.append((bound, prefix, cost, devices, suffix))
    candidates.sort(key=lambda c: c[0])
    for bound, prefix, cost, devices, suffix in candidates:
        if cutoff is not None and bound >= cutoff():
            break
        ready, ratios, scheds = refine(cost, pm, devices, prefix, suffix, options)
        lat = split_latency(profile, pm, ready, cost.segment.last, suffix)
        seg = cost.segment
        yield SplitChoice(seg.first, seg.last, seg.axis_name, devices, ratios, suffix, lat, scheds)
