"""The exact heterogeneous pipeline planner (`--strategy pipeline`).

Link model (design notes, `cost/linkmodel.py`): a cut holds its link for bytes / bandwidth (its
*occupancy*) and costs one request latency + bytes / bandwidth (its *transfer time*); latency is
propagation, which messages in flight overlap, so it counts in the latency objective only.

Throughput objective: the optimal bottleneck T* is one of finitely many values (a stage's
compute time or a cut's link occupancy), so we binary-search the sorted candidates between a
lower bound (total work over total speed, the slowest node on its best device, then relaxations)
and the best plan a greedy pass and a beam search find (`plan/pipeline_bounds.py`), with the
exact feasibility test of `plan/pipeline_dp.py`: a sweep over how many
devices of each group are used, where devices are grouped by what they can do *at that T*
(so per-pair links that all pass at T cost nothing), and unrestricted cuts dominate. Per-pair
links enlarge the state only where they bind. When a test cannot be decided (a time budget, or a
state space past memory), the search stops with the best plan found and a proven lower bound:
T* is at least the smallest candidate not yet shown infeasible.

Latency objective: a shortest path over (devices used, last class, cut) with compute and
transfer times summed (`plan/pipeline_latency.py`). The throughput plan is then refined with the
same search: among plans with bottleneck T* (every compute time and link occupancy <= T*), the
lowest latency.

Per-device profiles (`PipelineModel.device_times`) enter through `prefix_dev`: every compute
time is a difference of a device's own prefix sums, so non-proportional times stay exact.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from edgeweave.errors import UserError
from edgeweave.plan import pipeline_dp as dp
from edgeweave.plan.costmodel import PipelineModel, Stage, StageCosts, internal_cuts, memory_reach
from edgeweave.plan.pipeline_bounds import beam, greedy
from edgeweave.plan.pipeline_latency import (
    LatencyProblem,
    latency_search,
    single_device_latency,
    to_stages,
)

_REL = dp.REL  # tolerance for comparing times computed along different arithmetic paths


@dataclass
class Solution:
    stages: list[Stage]
    costs: StageCosts
    stats: dict = field(default_factory=dict)


def search_arrays(pm: PipelineModel) -> dp.Arrays:
    """The T-independent arrays of the throughput feasibility test."""
    by_memory = {int(m): memory_reach(pm, int(m)) for m in np.unique(pm.memory)}
    qmem = np.stack([by_memory[int(m)] for m in pm.memory])
    with np.errstate(divide="ignore"):
        occ = pm.cut_bytes[None, None, :] / pm.bandwidth[:, :, None]
    idx = np.arange(pm.num_devices)
    occ[idx, idx, :] = np.inf  # a device never sends to itself: consecutive stages are on distinct devices
    return dp.Arrays(
        L=pm.num_nodes,
        source=pm.source,
        prefix=pm.prefix_dev,
        bound_speed=pm.bound_speed,
        ref_prefix=pm.prefix_time,
        qmem=qmem,
        occ=occ,
        internal=internal_cuts(pm),
    )


def _uniform(pm: PipelineModel) -> bool:
    off = ~np.eye(pm.num_devices, dtype=bool)
    if pm.num_devices < 2:
        return True
    return bool(np.all(pm.bandwidth[off] == pm.bandwidth[off][0]) and np.all(pm.latency[off] == pm.latency[off][0]))


# --------------------------------------------------------------------------- throughput search
def _candidates(pm: PipelineModel, arr: dp.Arrays, lo: float, hi: float) -> np.ndarray:
    """Every compute time or link occupancy in [lo, hi]: T* is one of them."""
    L = arr.L
    starts = np.flatnonzero(pm.allowed[:L])
    ends = np.flatnonzero(pm.allowed[1:]) + 1
    lo_t, hi_t = lo * (1 - _REL), hi * (1 + _REL)
    vals = []
    for row in np.unique(arr.prefix, axis=0):
        work = row[ends][None, :] - row[starts][:, None]
        vals.append(work[(work >= lo_t) & (work <= hi_t)])
    occ = arr.occ[:, :, pm.allowed]
    vals.append(occ[(occ >= lo_t) & (occ <= hi_t)])
    vals.append(np.array([hi]))
    return np.unique(np.concatenate(vals))


def _span(cands: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    """Indices of the candidates in [lo, hi) (hi itself is the best plan's value, already known)."""
    return int(np.searchsorted(cands, lo * (1 - _REL))), int(np.searchsorted(cands, hi * (1 - _REL))) - 1


def _throughput(pm: PipelineModel, arr: dp.Arrays, deadline: float, engine: str) -> tuple[list[tuple], dict]:
    """Best plan for the bottleneck, and how far it is proven: (stages, stats).

    Four passes over the sorted candidates, each a binary search: the greedy plan (an upper
    bracket), the beam (a tighter one), the relaxed sweep (a lower bracket; exact when it merged
    nothing) and the exact sweep, whose first probe sits just below the best plan so far.
    """
    L = arr.L
    # lower bound: all work at the capacity bound of every device, and each node on its best device
    lo = max(
        float(pm.prefix_time[L] / max(float(arr.bound_speed.sum()), 1e-300)),
        float(pm.node_time.min(axis=0).max(initial=0.0)),
    )
    best = None
    cands_all = _candidates(pm, arr, 0.0, np.inf)
    left, right = 0, len(cands_all) - 1
    while left <= right:  # greedy bracket: cheap, monotone enough to land near T*
        mid = (left + right) // 2
        if greedy(arr, float(cands_all[mid])) is None:
            left = mid + 1
        else:
            right = mid - 1
    if left < len(cands_all):
        best = greedy(arr, float(cands_all[left]))
    if best is None:
        try:
            hit = dp.feasible(arr, np.inf, deadline, engine)
        except dp.Unknown as exc:
            raise UserError(f"no pipeline plan found for {pm.model} within the limits ({exc})") from None
        if hit is None:
            raise _no_plan_error(pm)
        best = hit.stages
    hi = _bottleneck(pm, best)
    cands = _candidates(pm, arr, lo, hi)
    left, right = _span(cands, lo, hi)
    while left <= right and time.perf_counter() < deadline:  # the beam lowers the upper end
        mid = (left + right) // 2
        found = beam(arr, float(cands[mid]))
        if found is None:
            left = mid + 1
        else:
            best, hi = found, min(hi, _bottleneck(pm, found))
            right = min(mid, _span(cands, lo, hi)[1] + 1) - 1
    left, right = _span(cands, lo, hi)
    while left <= right:  # the relaxed sweep (pipeline_dp.coarsen) raises the lower end
        mid = (left + right) // 2
        try:
            hit = dp.feasible(arr, float(cands[mid]), deadline, engine, relaxed=True)
        except dp.Unknown:
            break
        if hit is None:
            left = mid + 1
            lo = float(cands[min(mid + 1, len(cands) - 1)])
        else:
            right = mid - 1
            if hit.exact:  # nothing was merged: the relaxation is the problem itself, its plan is real
                best, hi = hit.stages, min(hi, _bottleneck(pm, hit.stages))
    left, right = _span(cands, lo, hi)
    bracket = [lo, hi, right - left + 1]
    tests, stopped = 0, None
    while left <= right:
        # The beam is often exact, so the first probe is just below its plan: one infeasible
        # answer proves it optimal. Then bisect.
        mid = right if tests == 0 else (left + right) // 2
        try:
            hit = dp.feasible(arr, float(cands[mid]), deadline, engine)
        except dp.Unknown as exc:
            stopped = str(exc)
            break
        tests += 1
        if hit is None:
            left = mid + 1
        else:
            best = hit.stages
            right = min(mid, _span(cands, lo, _bottleneck(pm, best))[1] + 1) - 1
    value = _bottleneck(pm, best)
    lower = value if stopped is None else max(lo, float(cands[left]) if left < len(cands) else value)
    stats = {
        "candidates": len(cands),
        "bracket": bracket,  # [lower, upper, candidates between] before the exact tests
        "tests": tests,
        "optimal": stopped is None,
        "lower_bound_s": lower,
        "gap": (value - lower) / value if value > 0 else 0.0,
    }
    if stopped is not None:
        stats["stopped"] = stopped
    return best, stats


def _bottleneck(pm: PipelineModel, raw: list[tuple]) -> float:
    return pm.evaluate([Stage(*t) for t in raw]).bottleneck_s


# --------------------------------------------------------------------------- public API
def _fits_somewhere(pm: PipelineModel) -> bool:
    try:
        return dp.feasible(search_arrays(pm), np.inf) is not None
    except dp.Unknown:
        return True  # too large to decide: do not claim it cannot fit


def _no_plan_error(pm: PipelineModel) -> UserError:
    """Explain infeasibility: the smallest extra memory per device that would make a plan exist."""
    total = int(pm.params.sum())
    lo, hi = 0, total + int(pm.out_bytes.max()) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        trial = dataclasses.replace(pm, memory=pm.memory + mid, allowed=pm.allowed.copy())
        lo, hi = (lo, mid) if _fits_somewhere(trial) else (mid + 1, hi)
    from edgeweave.cost.units import format_bytes

    return UserError(
        f"{pm.model} fits on no combination of the {pm.num_devices} devices: parameters "
        f"{format_bytes(total)} in all, and every device would need {format_bytes(lo)} more memory"
    )


def plan_pipeline(
    pm: PipelineModel,
    objective: str = "throughput",
    refine: bool = True,
    time_budget: float | None = None,
    engine: str = "auto",
) -> Solution:
    """Exactly optimal pipeline for the design notes' cost model.

    With `time_budget` (seconds), the search stops when it runs out and returns the best plan
    found; `stats` then says whether it is proven optimal (`optimal`), a proven lower bound on the
    objective (`lower_bound_s`) and the relative `gap` between them. `engine` ("auto", "python",
    "numba") picks how the throughput sweep runs; the answer does not depend on it.
    """
    started = time.perf_counter()
    deadline = started + time_budget if time_budget is not None else np.inf
    uniform = _uniform(pm)
    if objective == "latency":
        pb = LatencyProblem(pm)
        found = latency_search(pb, uniform, upper=single_device_latency(pm), deadline=deadline)
        if found.latency is not None:
            stages = to_stages(pb, found.stages)
        elif found.complete:
            raise _no_plan_error(pm)
        else:  # out of time before any plan: the best one-device plan, if one fits (the search's upper bound)
            fits = [d for d in range(pm.num_devices) if pm.stage_memory(0, pm.num_nodes) <= pm.memory[d]]
            if not fits:
                raise UserError(f"no pipeline plan for {pm.model} found within the time budget of {time_budget:g} s")
            one = [[Stage(0, pm.num_nodes, d)] for d in fits]
            stages = min(one, key=lambda st: pm.evaluate(st).latency_s)
        costs = pm.evaluate(stages)
        lower = costs.latency_s if found.complete else min(found.lower, costs.latency_s)
        gap = (costs.latency_s - lower) / costs.latency_s if costs.latency_s > 0 else 0.0
        stats = _stats(pm, started, uniform, objective, classes=pb.C)
        stats.update(optimal=found.complete, lower_bound_s=lower, gap=gap)
        return Solution(stages, costs, stats)
    if objective != "throughput":
        raise UserError(f"unknown objective {objective!r} (use throughput or latency)")

    arr = search_arrays(pm)
    raw, search = _throughput(pm, arr, deadline, engine)
    stages = [Stage(*t) for t in raw]
    costs = pm.evaluate(stages)
    stats = _stats(pm, started, uniform, objective, **search)
    if refine:
        pb = LatencyProblem(pm)
        found = latency_search(
            pb, uniform, cap=costs.bottleneck_s, upper=costs.latency_s, max_expansions=2_000, deadline=deadline
        )
        if found.latency is not None:
            refined = to_stages(pb, found.stages)
            rc = pm.evaluate(refined)
            if rc.bottleneck_s <= costs.bottleneck_s * (1 + _REL) and rc.latency_s < costs.latency_s:
                stages, costs = refined, rc
        stats["refined"] = found.complete
    stats["time_s"] = time.perf_counter() - started
    return Solution(stages, costs, stats)


def _stats(pm: PipelineModel, started: float, uniform: bool, objective: str, **extra) -> dict:
    return {
        "time_s": time.perf_counter() - started,
        "devices": pm.num_devices,
        "uniform_links": uniform,
        "objective": objective,
        **extra,
    }
