"""The exact heterogeneous pipeline planner (`--strategy pipeline`).

Link model (design notes, `cost/linkmodel.py`): a cut holds its link for bytes / bandwidth (its
*occupancy*) and costs one request latency + bytes / bandwidth (its *transfer time*); latency is
propagation, which messages in flight overlap, so it counts in the latency objective only.

Throughput objective: the optimal bottleneck T* is one of finitely many values (a stage's
compute time or a cut's link occupancy), so we binary-search the sorted candidates between a
lower bound (total work over total speed, the slowest node on its best device) and a greedy
plan's bottleneck, with the exact feasibility test of `plan/pipeline_dp.py`: a sweep over how many
devices of each group are used, where devices are grouped by what they can do *at that T*
(so per-pair links that all pass at T cost nothing), and unrestricted cuts dominate. Per-pair
links enlarge the state only where they bind. When a test cannot be decided (a time budget, or a
state space past memory), the search stops with the best plan found and a proven lower bound:
T* is at least the smallest candidate not yet shown infeasible.

Latency objective: a shortest path over (devices used, last class, cut) with compute and
transfer times summed, done as min-plus products over whole cut vectors and pruned by an upper
bound. The throughput plan is then refined with the same search: among plans with bottleneck T*
(every compute time and link occupancy <= T*), the lowest latency.

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
from edgeweave.plan.costmodel import PipelineModel, Stage, StageCosts

_REL = dp.REL  # tolerance for comparing times computed along different arithmetic paths


@dataclass
class Solution:
    stages: list[Stage]
    costs: StageCosts
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- device classes
def device_classes(pm: PipelineModel) -> list[list[int]]:
    """Group interchangeable devices (same per-node times, memory and links).

    The source is always alone (its transfers to itself are free)."""
    n = pm.num_devices
    classes: list[list[int]] = []
    for d in range(n):
        if d == pm.source:
            classes.append([d])
            continue
        for members in classes:
            r = members[0]
            if r != pm.source and _interchangeable(pm, r, d, members):
                members.append(d)
                break
        else:
            classes.append([d])
    return classes


def _interchangeable(pm: PipelineModel, a: int, b: int, members: list[int]) -> bool:
    if pm.memory[a] != pm.memory[b] or not np.array_equal(pm.prefix_dev[a], pm.prefix_dev[b]):
        return False
    for x in range(pm.num_devices):
        if x in (a, b):
            continue
        if (pm.bandwidth[a, x], pm.latency[a, x]) != (pm.bandwidth[b, x], pm.latency[b, x]):
            return False
        if (pm.bandwidth[x, a], pm.latency[x, a]) != (pm.bandwidth[x, b], pm.latency[x, b]):
            return False
    if (pm.bandwidth[a, b], pm.latency[a, b]) != (pm.bandwidth[b, a], pm.latency[b, a]):
        return False
    return all(
        (pm.bandwidth[a, b], pm.latency[a, b]) == (pm.bandwidth[a, m], pm.latency[a, m]) for m in members if m != a
    )


def memory_reach(pm: PipelineModel, capacity: int) -> np.ndarray:
    """qmem[p]: the largest end q with stage [p, q) fitting in `capacity` (q = p: nothing fits).

    Stage memory (params + largest activation) only grows with the stage, so a binary search per
    start over a sparse table of range maxima finds every end at once."""
    L = pm.num_nodes
    out = pm.out_bytes
    levels = [out]
    while (1 << len(levels)) <= L:
        prev, half = levels[-1], 1 << (len(levels) - 1)
        levels.append(np.maximum(prev[:-half], prev[half:]))
    p = np.arange(L + 1)
    lo, hi = p.copy(), np.full(L + 1, L)

    def fits(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        length = np.maximum(end - start, 1)
        k = np.floor(np.log2(length)).astype(np.int64)
        s = np.minimum(start, L - 1)
        peak = np.zeros(len(start), dtype=np.int64)
        for lvl in np.unique(k):
            sel = k == lvl
            table = levels[lvl]
            peak[sel] = np.maximum(table[s[sel]], table[np.maximum(end[sel] - (1 << lvl), 0)])
        need = pm.prefix_params[end] - pm.prefix_params[start] + peak
        return (end <= start) | (need <= capacity)

    while np.any(lo < hi):
        mid = (lo + hi + 1) // 2
        ok = fits(p, mid)
        lo = np.where(ok & (lo < hi), mid, lo)
        hi = np.where(~ok & (lo < hi), mid - 1, hi)
    return lo


def _internal(pm: PipelineModel) -> np.ndarray:
    internal = pm.allowed.copy()
    internal[0] = internal[pm.num_nodes] = False
    return internal


def search_arrays(pm: PipelineModel) -> dp.Arrays:
    """The T-independent arrays of the throughput feasibility test."""
    by_memory: dict[int, np.ndarray] = {}
    qmem = np.stack([by_memory.setdefault(int(m), memory_reach(pm, int(m))) for m in pm.memory])
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
        internal=_internal(pm),
    )


# --------------------------------------------------------------------------- latency problem arrays
class _Problem:
    """Device classes and per-class arrays of the latency search (independent of any bound)."""

    def __init__(self, pm: PipelineModel):
        self.pm = pm
        self.L = pm.num_nodes
        self.classes = device_classes(pm)
        self.C = len(self.classes)
        self.rep = [m[0] for m in self.classes]
        self.size = np.array([len(m) for m in self.classes], dtype=np.int64)
        self.speed = pm.bound_speed[self.rep]  # capacity bound per class (speed when times are proportional)
        self.prefix = pm.prefix_dev[self.rep]
        self.src_class = next(i for i, m in enumerate(self.classes) if pm.source in m)
        # mixed-radix state: how many of each class are used. Python ints (64 distinct devices
        # have 2^64 states); the search visits few of them, so nothing is tabulated per state.
        self.stride = [1]
        for k in self.size[:-1]:
            self.stride.append(self.stride[-1] * (int(k) + 1))
        self.num_states = self.stride[-1] * (int(self.size[-1]) + 1)
        self.internal = _internal(pm)
        self.qmem = np.stack([memory_reach(pm, int(pm.memory[r])) for r in self.rep])
        # class-to-class times per cut: [from_class, to_class, cut]; inf where no such pair exists.
        # trans: latency + bytes / bandwidth (summed by the latency objective); occ: bytes /
        # bandwidth, the link's occupancy (bounded by the bottleneck T).
        self.trans = np.stack([np.stack([self._class_transfer(a, b) for b in range(self.C)]) for a in range(self.C)])
        self.occ = np.stack(
            [np.stack([self._class_transfer(a, b, latency=False) for b in range(self.C)]) for a in range(self.C)]
        )
        self.remaining = pm.prefix_time[-1] - pm.prefix_time

    def counts(self, state: int) -> list[int]:
        return [(state // st) % (int(sz) + 1) for st, sz in zip(self.stride, self.size, strict=True)]

    def _class_transfer(self, a: int, b: int, latency: bool = True) -> np.ndarray:
        """Transfer time (or, without `latency`, link occupancy) of every cut from a device of
        class a to a (different) device of class b."""
        pm = self.pm
        da = self.classes[a][0]
        if a == b:
            if len(self.classes[a]) < 2:
                return np.full(self.L + 1, np.inf)
            db = self.classes[a][1]
        else:
            db = self.classes[b][0]
        occupancy = pm.cut_bytes / pm.bandwidth[da, db]
        return pm.latency[da, db] + occupancy if latency else occupancy


def _uniform(pm: PipelineModel) -> bool:
    off = ~np.eye(pm.num_devices, dtype=bool)
    if pm.num_devices < 2:
        return True
    return bool(np.all(pm.bandwidth[off] == pm.bandwidth[off][0]) and np.all(pm.latency[off] == pm.latency[off][0]))


# --------------------------------------------------------------------------- throughput search
def _greedy(arr: dp.Arrays, T: float) -> list[tuple[int, int, int]] | None:
    """Fastest devices first, each to its farthest cut: a quick plan to bracket T* from above."""
    qmax = dp.reach(arr, T)
    last_cut = np.maximum.accumulate(np.where(arr.internal, np.arange(arr.L + 1), -1))
    stages, p = [], 0
    for d in np.argsort(-arr.bound_speed, kind="stable"):
        q = int(qmax[d, p])
        if q >= arr.L:
            stages.append((p, arr.L, int(d)))
            return stages
        q = int(last_cut[q])
        if q > p:
            stages.append((p, q, int(d)))
            p = q
    return None


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


def _throughput(pm: PipelineModel, arr: dp.Arrays, deadline: float, engine: str) -> tuple[list[tuple], dict]:
    """Best plan for the bottleneck, and how far it is proven: (stages, stats)."""
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
        if _greedy(arr, float(cands_all[mid])) is None:
            left = mid + 1
        else:
            right = mid - 1
    if left < len(cands_all):
        best = _greedy(arr, float(cands_all[left]))
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
    # Cheap brackets: a beam search lowers the upper end, a relaxed sweep that merges groups of
    # similar speed (pipeline_dp.coarsen) raises the lower end.
    left = int(np.searchsorted(cands, lo * (1 - _REL), side="left"))
    right = int(np.searchsorted(cands, hi * (1 - _REL), side="left")) - 1
    while left <= right:
        mid = (left + right) // 2
        found = dp.beam(arr, float(cands[mid]))
        if found is None:
            left = mid + 1
        else:
            best, hi = found, min(hi, _bottleneck(pm, found))
            right = min(mid, int(np.searchsorted(cands, hi * (1 - _REL), side="left"))) - 1
    left = int(np.searchsorted(cands, lo * (1 - _REL), side="left"))
    right = int(np.searchsorted(cands, hi * (1 - _REL), side="left")) - 1
    while left <= right:
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
    left = int(np.searchsorted(cands, lo * (1 - _REL), side="left"))
    right = int(np.searchsorted(cands, hi * (1 - _REL), side="left")) - 1
    bracket = [lo, hi, right - left + 1]
    tests, stopped, galloping = 0, None, True  # galloping: first probe
    while left <= right:
        # The beam is often exact, so the first probe is just below its plan: one infeasible
        # answer proves it optimal. Then bisect.
        mid = right if galloping else (left + right) // 2
        galloping = False
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
            right = min(mid, int(np.searchsorted(cands, _bottleneck(pm, best) * (1 - _REL), side="left"))) - 1
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


# --------------------------------------------------------------------------- latency search
_ANY = -2  # with uniform links the last device does not change any later cost: states merge


@dataclass
class _LatencyResult:
    latency: float | None  # None: no plan found
    stages: list[tuple]
    complete: bool  # False: stopped early (expansions or deadline); `lower` bounds the optimum
    lower: float


def _latency_search(
    pb: _Problem,
    uniform: bool,
    cap: float = np.inf,
    upper: float = np.inf,
    max_expansions: int = 10**9,
    deadline: float = np.inf,
) -> _LatencyResult:
    """Minimum-latency plan with every compute time and link occupancy <= cap.

    Layered over the number of devices used; each (state, last class) keeps a vector of best
    costs per cut and expands to the next class with one min-plus product. A state is pruned
    where cost + remaining work / fastest unused device cannot beat the best plan found. Stopped
    early, every unfinished plan still passes through an unexpanded state, so the least of their
    bounds (and the best found) is a lower bound on the optimum.
    """
    L = pb.L
    capt = cap * (1 + _REL) if np.isfinite(cap) else np.inf
    idx = np.arange(L + 1)
    valid_end = pb.internal.copy()
    valid_end[L] = True
    comp = []
    for c in range(pb.C):
        pre = pb.prefix[c]
        m = pre[None, :] - pre[:, None]
        bad = (idx[None, :] <= idx[:, None]) | (idx[None, :] > pb.qmem[c][:, None]) | ~valid_end[None, :] | (m > capt)
        comp.append(np.where(bad, np.inf, m))
    trans = np.where(pb.occ <= capt, pb.trans, np.inf)  # cap the occupancy, sum the transfer time

    def free_classes(state: int) -> list[bool]:
        return [n < int(sz) for n, sz in zip(pb.counts(state), pb.size, strict=True)]

    def fastest_free(state: int) -> float:
        return max((float(v) for v, f in zip(pb.speed, free_classes(state), strict=True) if f), default=0.0)

    best = upper * (1 + _REL) if np.isfinite(upper) else np.inf
    best_key = None
    start = np.full(L + 1, np.inf)
    start[0] = 0.0
    frontier = {(0, -1): start}
    parents: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    expansions = 0
    bound_any = pb.remaining / pb.speed.max()
    while frontier:
        nxt: dict[tuple[int, int], np.ndarray] = {}
        pending = list(frontier.items())
        for i, ((state, tag), g) in enumerate(pending):
            if expansions > max_expansions or time.perf_counter() > deadline:
                rest = [v for _, v in pending[i:]] + list(nxt.values())
                lower = min([best, *(float(np.min(v + bound_any)) for v in rest)])
                found = None if best_key is None else _latency_stages(pb, parents, best_key)
                return _LatencyResult(best if found else None, found or [], False, lower)
            free = free_classes(state)
            for c in range(pb.C):
                if not free[c]:
                    continue
                if tag == -1:
                    tin = np.zeros(L + 1) if c == pb.src_class else trans[pb.src_class, c]
                elif tag == _ANY:
                    tin = trans[pb.src_class if c != pb.src_class else _other(pb), c]
                else:
                    tin = trans[tag, c]
                h = g + tin
                new_state = state + int(pb.stride[c])
                rows = np.flatnonzero(np.isfinite(h) & (h + bound_any < best))
                if rows.size == 0:
                    continue
                expansions += 1
                tot = h[rows][:, None] + comp[c][rows]
                arg = np.argmin(tot, axis=0)
                val = tot[arg, idx]
                out = 0.0 if c == pb.src_class else trans[c, pb.src_class, L]
                if val[L] + out < best:
                    best, best_key = val[L] + out, (state, tag, c, int(rows[arg[L]]))
                val[L] = np.inf
                speed_left = fastest_free(new_state)
                lb = pb.remaining / speed_left if speed_left > 0 else np.where(pb.remaining > 0, np.inf, 0.0)
                val = np.where(val + lb < best, val, np.inf)
                if not np.isfinite(val).any():
                    continue
                key = (new_state, _ANY if uniform else c)
                from_pos, from_cls, from_tag = rows[arg], np.full(L + 1, c), np.full(L + 1, tag)
                if key in nxt:
                    better = val < nxt[key]
                    nxt[key] = np.where(better, val, nxt[key])
                    op, oc, ot = parents[key]
                    parents[key] = (
                        np.where(better, from_pos, op),
                        np.where(better, from_cls, oc),
                        np.where(better, from_tag, ot),
                    )
                else:
                    nxt[key] = val
                    parents[key] = (from_pos, from_cls, from_tag)
        frontier = nxt
    if best_key is None:
        return _LatencyResult(None, [], True, np.inf)
    return _LatencyResult(best, _latency_stages(pb, parents, best_key), True, best)


def _latency_stages(pb: _Problem, parents: dict, best_key: tuple) -> list[tuple]:
    """Walk the parent pointers back from the best final stage: [(start, end, class)]."""
    state, tag, c, p = best_key
    stages = [(p, pb.L, c)]
    while tag != -1:
        ppos, pcls, ptag = parents[(state, tag)]
        q = p
        p, c, tag = int(ppos[q]), int(pcls[q]), int(ptag[q])
        stages.append((p, q, c))
        state -= int(pb.stride[c])
    return stages[::-1]


def _other(pb: _Problem) -> int:
    """Any class other than the source's (with uniform links they all cost the same)."""
    return next(c for c in range(pb.C) if c != pb.src_class)


# --------------------------------------------------------------------------- public API
def _to_stages(pb: _Problem, raw: list[tuple]) -> list[Stage]:
    used = {c: 0 for c in range(pb.C)}
    stages = []
    for start, end, c in raw:
        stages.append(Stage(start, end, pb.classes[c][used[c]]))
        used[c] += 1
    return stages


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
        pb = _Problem(pm)
        found = _latency_search(pb, uniform, upper=_single_device_latency(pm), deadline=deadline)
        if found.latency is None:
            if found.complete:
                raise _no_plan_error(pm)
            raise UserError(f"no pipeline plan for {pm.model} found within the time budget of {time_budget:g} s")
        stages = _to_stages(pb, found.stages)
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
        pb = _Problem(pm)
        found = _latency_search(
            pb, uniform, cap=costs.bottleneck_s, upper=costs.latency_s, max_expansions=2_000, deadline=deadline
        )
        if found.latency is not None:
            refined = _to_stages(pb, found.stages)
            rc = pm.evaluate(refined)
            if rc.bottleneck_s <= costs.bottleneck_s * (1 + _REL) and rc.latency_s < costs.latency_s:
                stages, costs = refined, rc
        stats["refined"] = found.complete
    stats["time_s"] = time.perf_counter() - started
    return Solution(stages, costs, stats)


def _single_device_latency(pm: PipelineModel) -> float:
    """Best plan on one device: a cheap upper bound that lets the latency search prune early."""
    best = np.inf
    for d in range(pm.num_devices):
        if pm.stage_memory(0, pm.num_nodes) <= pm.memory[d]:
            c = pm.evaluate([Stage(0, pm.num_nodes, d)])
            best = min(best, c.latency_s)
    return best


def _stats(pm: PipelineModel, started: float, uniform: bool, objective: str, **extra) -> dict:
    return {
        "time_s": time.perf_counter() - started,
        "devices": pm.num_devices,
        "uniform_links": uniform,
        "objective": objective,
        **extra,
    }
