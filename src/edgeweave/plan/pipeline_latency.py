"""The pipeline planner's latency objective: the fastest single request (`plan_pipeline(...,
"latency")`), also used to refine a throughput-optimal plan to the lowest latency among those
with the same bottleneck.

Why a shortest path and not the throughput sweep: latency sums compute and transfer times, so
nothing dominates by reach alone. The search is layered over the number of devices used; each
(devices used, last class) keeps a vector of best costs per cut and extends by one class with a
min-plus product, pruned by an upper bound (the best plan so far) and a lower bound (remaining
work on the fastest unused device). Interchangeable devices (same per-node times, memory and
links) form classes, so a state counts devices per class. Stopped early (expansions or a
deadline), it still reports a proven lower bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgeweave.plan.costmodel import PipelineModel, Stage, internal_cuts, memory_reach
from edgeweave.plan.pipeline_dp import REL as _REL


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


class LatencyProblem:
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
        self.internal = internal_cuts(pm)
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


_ANY = -2  # with uniform links the last device does not change any later cost: states merge


@dataclass
class LatencyResult:
    latency: float | None  # None: no plan found
    stages: list[tuple]
    complete: bool  # False: stopped early (expansions or deadline); `lower` bounds the optimum
    lower: float


def latency_search(
    pb: LatencyProblem,
    uniform: bool,
    cap: float = np.inf,
    upper: float = np.inf,
    max_expansions: int = 10**9,
    deadline: float = np.inf,
) -> LatencyResult:
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
                return LatencyResult(best if found else None, found or [], False, lower)
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
        return LatencyResult(None, [], True, np.inf)
    return LatencyResult(best, _latency_stages(pb, parents, best_key), True, best)


def _latency_stages(pb: LatencyProblem, parents: dict, best_key: tuple) -> list[tuple]:
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


def _other(pb: LatencyProblem) -> int:
    """Any class other than the source's (with uniform links they all cost the same)."""
    return next(c for c in range(pb.C) if c != pb.src_class)


def to_stages(pb: LatencyProblem, raw: list[tuple]) -> list[Stage]:
    used = {c: 0 for c in range(pb.C)}
    stages = []
    for start, end, c in raw:
        stages.append(Stage(start, end, pb.classes[c][used[c]]))
        used[c] += 1
    return stages


def single_device_latency(pm: PipelineModel) -> float:
    """Best plan on one device: a cheap upper bound that lets the latency search prune early."""
    best = np.inf
    for d in range(pm.num_devices):
        if pm.stage_memory(0, pm.num_nodes) <= pm.memory[d]:
            c = pm.evaluate([Stage(0, pm.num_nodes, d)])
            best = min(best, c.latency_s)
    return best
