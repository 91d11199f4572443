"""The exact heterogeneous pipeline planner (`--strategy pipeline`).

Link model (design notes, `cost/linkmodel.py`): a cut holds its link for bytes / bandwidth (its
*occupancy*) and costs one request latency + bytes / bandwidth (its *transfer time*); latency is
propagation, which messages in flight overlap, so it counts in the latency objective only.

Throughput objective: the optimal bottleneck T* is one of finitely many values (a stage's
compute time or a cut's link occupancy), so we binary-search the sorted candidates with an exact
feasibility test "is there a plan whose every compute time and link occupancy is <= T?".

The test is a dynamic programme over which devices are already used. Devices that are
interchangeable (same speed, memory and links) form a class and the state only counts how many
of each class are used ("device-type grouping": 16 boards of two kinds give 2 x 8 x 9 states,
not 2^16). With uniform links, the state keeps one number: the farthest cut reachable. That is
exact because from a farther cut every continuation of a nearer one is still possible (a stage
that starts later but ends at the same cut does less work and needs less memory, and transfer
feasibility depends only on the cut). With pairwise links the transfer depends on which devices
meet at a cut, so the state keeps the last class and the *set* of reachable cuts.

Latency objective: a shortest path over (devices used, last class, cut) with compute and
transfer times summed, done as min-plus products over whole cut vectors and pruned by an upper
bound. The throughput plan is then refined with the same search: among plans with bottleneck T*
(every compute time and link occupancy <= T*), the lowest latency.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from edgeweave.errors import UserError
from edgeweave.plan.costmodel import PipelineModel, Stage, StageCosts

_REL = 1e-9  # tolerance for comparing times computed along different arithmetic paths


@dataclass
class Solution:
    stages: list[Stage]
    costs: StageCosts
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- device classes
def device_classes(pm: PipelineModel) -> list[list[int]]:
    """Group interchangeable devices. The source is always alone (its transfers to itself are free)."""
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
    if pm.speed[a] != pm.speed[b] or pm.memory[a] != pm.memory[b]:
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


# --------------------------------------------------------------------------- problem arrays
class _Problem:
    """Everything that does not depend on the bottleneck value T."""

    def __init__(self, pm: PipelineModel):
        self.pm = pm
        self.L = pm.num_nodes
        self.classes = device_classes(pm)
        self.C = len(self.classes)
        self.rep = [m[0] for m in self.classes]
        self.size = np.array([len(m) for m in self.classes], dtype=np.int64)
        self.speed = pm.speed[self.rep]
        self.src_class = next(i for i, m in enumerate(self.classes) if pm.source in m)
        self.stride = np.cumprod(np.concatenate([[1], self.size[:-1] + 1])).astype(np.int64)
        self.num_states = int(np.prod(self.size + 1))
        states = np.arange(self.num_states, dtype=np.int64)
        self.counts = (states[:, None] // self.stride[None, :]) % (self.size[None, :] + 1)
        self.layer = self.counts.sum(axis=1)
        self.cap_speed = ((self.size[None, :] - self.counts) * self.speed[None, :]).sum(axis=1)
        self.internal = pm.allowed.copy()
        self.internal[0] = self.internal[self.L] = False
        self.qmem = np.stack([self._memory_reach(int(pm.memory[r])) for r in self.rep])
        # class-to-class times per cut: [from_class, to_class, cut]; inf where no such pair exists.
        # trans: latency + bytes / bandwidth (summed by the latency objective); occ: bytes /
        # bandwidth, the link's occupancy (bounded by the bottleneck T).
        self.trans = np.stack([np.stack([self._class_transfer(a, b) for b in range(self.C)]) for a in range(self.C)])
        self.occ = np.stack(
            [np.stack([self._class_transfer(a, b, latency=False) for b in range(self.C)]) for a in range(self.C)]
        )
        self.remaining = pm.prefix_time[-1] - pm.prefix_time

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

    def _memory_reach(self, capacity: int) -> np.ndarray:
        """qmem[p]: the largest end q with stage [p, q) fitting in `capacity` (q = p: nothing fits)."""
        pm, L = self.pm, self.L
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

    # -- per-T reach -------------------------------------------------------------------------
    def reach(self, T: float) -> tuple[np.ndarray, np.ndarray]:
        """qmax[c, p]: farthest end of a stage starting at p on class c within T and memory."""
        Tt = T * (1 + _REL)
        pt = self.pm.prefix_time
        ends = np.stack([np.searchsorted(pt, pt + Tt * s, side="right") - 1 for s in self.speed])
        qmax = np.minimum(ends, self.qmem)
        return qmax, Tt

    def candidates(self, lo: float, hi: float) -> np.ndarray:
        """Every compute time or link occupancy in [lo, hi]: T* is one of them."""
        pt = self.pm.prefix_time
        starts = np.flatnonzero(self.pm.allowed[: self.L])
        ends = np.flatnonzero(self.pm.allowed[1:]) + 1
        work = pt[ends][None, :] - pt[starts][:, None]
        work = work[work > 0]
        vals = [self.occ[np.isfinite(self.occ)].ravel()]
        for s in np.unique(self.speed):
            v = work / s
            vals.append(v[(v >= lo * (1 - _REL)) & (v <= hi * (1 + _REL))])
        allv = np.concatenate(vals)
        allv = allv[(allv >= lo * (1 - _REL)) & (allv <= hi * (1 + _REL))]
        return np.unique(allv)


# --------------------------------------------------------------------------- feasibility
def _budget(Tt: float, cap_speed):
    """Work the unused devices can still do within Tt each (inf * 0 counts as 0)."""
    return np.where(cap_speed > 0, Tt * np.maximum(cap_speed, 1e-300), 0.0)


def _uniform(pb: _Problem) -> bool:
    pm = pb.pm
    off = ~np.eye(pm.num_devices, dtype=bool)
    if pm.num_devices < 2:
        return True
    return bool(np.all(pm.bandwidth[off] == pm.bandwidth[off][0]) and np.all(pm.latency[off] == pm.latency[off][0]))


def _feasible_uniform(pb: _Problem, T: float):
    """Farthest-cut DP. Returns (end_state, last_class, f, reach) or None."""
    L = pb.L
    qmax, Tt = pb.reach(T)
    other = next((c for c in range(pb.C) if c != pb.src_class), None)
    tr = pb.occ[pb.src_class, other] if other is not None else np.full(L + 1, np.inf)
    cut_ok = pb.internal & (tr <= Tt)
    last_ok = np.maximum.accumulate(np.where(cut_ok, np.arange(L + 1), -1))
    reach = last_ok[np.minimum(qmax, L - 1)]
    reach = np.where(reach > np.arange(L + 1)[None, :], reach, -1)
    fin = qmax >= L
    in_ok = np.ones(pb.C, dtype=bool)
    for c in range(pb.C):
        if c != pb.src_class:
            fin[c] &= tr[L] <= Tt
            in_ok[c] = tr[0] <= Tt
    reach[~in_ok, 0] = -1
    fin[~in_ok, 0] = False

    f = np.full(pb.num_states, -1, dtype=np.int64)
    f[0] = 0
    for k in range(int(pb.size.sum())):
        idx = np.flatnonzero((pb.layer == k) & (f >= 0))
        if idx.size == 0:
            return None
        pos = f[idx]
        useful = pb.remaining[pos] <= _budget(Tt, pb.cap_speed[idx])
        idx, pos = idx[useful], pos[useful]
        for c in range(pb.C):
            sel = pb.counts[idx, c] < pb.size[c]
            s_idx, s_pos = idx[sel], pos[sel]
            done = fin[c, s_pos]
            if done.any():
                return int(s_idx[np.argmax(done)]), c, f, reach
            q = reach[c, s_pos]
            m = q > 0
            np.maximum.at(f, s_idx[m] + pb.stride[c], q[m])
    return None


def _reconstruct_uniform(pb: _Problem, state: int, last: int, f: np.ndarray, reach: np.ndarray) -> list[tuple]:
    stages = [(int(f[state]), pb.L, last)]
    while state != 0:
        for c in range(pb.C):
            if pb.counts[state, c] == 0:
                continue
            prev = state - int(pb.stride[c])
            if f[prev] >= 0 and reach[c, f[prev]] == f[state]:
                stages.append((int(f[prev]), int(f[state]), c))
                state = prev
                break
        else:  # pragma: no cover - the forward pass guarantees a predecessor
            raise AssertionError("no predecessor in reconstruction")
    return stages[::-1]


def _feasible_general(pb: _Problem, T: float):
    """Cut-set DP keyed by (used-count state, last class). Returns a stage list or None."""
    L = pb.L
    qmax, Tt = pb.reach(T)
    ok = pb.occ <= Tt  # [from, to, cut]: the link's occupancy within the bottleneck
    positions = np.arange(L + 1)
    frontier: dict[tuple[int, int], np.ndarray] = {}
    history: dict[tuple[int, int], np.ndarray] = {}
    start = np.zeros(L + 1, dtype=bool)
    start[0] = True

    def expand(state: int, prev: int | None, pos: np.ndarray):
        for c in range(pb.C):
            if pb.counts[state, c] >= pb.size[c]:
                continue
            if prev is None:
                gate = np.zeros(L + 1, dtype=bool)
                gate[0] = c == pb.src_class or ok[pb.src_class, c, 0]
            else:
                gate = ok[prev, c]
            starts = np.flatnonzero(pos & gate)
            if starts.size == 0:
                continue
            ends = qmax[c, starts]
            done = (ends >= L) & (c == pb.src_class or ok[c, pb.src_class, L])
            if done.any():
                return ("done", state, prev, c, int(starts[np.argmax(done)]))
            hi = np.minimum(ends, L - 1)
            m = hi > starts
            if not m.any():
                continue
            diff = np.zeros(L + 2, dtype=np.int64)
            np.add.at(diff, starts[m] + 1, 1)
            np.add.at(diff, hi[m] + 1, -1)
            new = (np.cumsum(diff)[: L + 1] > 0) & pb.internal
            new &= pb.remaining <= _budget(Tt, pb.cap_speed[state + pb.stride[c]])
            if new.any():
                key = (state + int(pb.stride[c]), c)
                frontier[key] = frontier[key] | new if key in frontier else new
        return None

    hit = expand(0, None, start)
    while hit is None and frontier:
        layer, frontier = frontier, {}
        history.update(layer)
        for (state, prev), pos in sorted(layer.items()):
            hit = expand(state, prev, pos)
            if hit is not None:
                break
    if hit is None:
        return None
    _, state, prev, c, p = hit
    stages = [(p, L, c)]
    while prev is not None:
        cand_prev_state = state - int(pb.stride[prev])
        found = None
        for pp in [None] if cand_prev_state == 0 else range(pb.C):
            if pp is None:
                if p == 0 or not (prev == pb.src_class or ok[pb.src_class, prev, 0]):
                    continue
                if 0 < p <= qmax[prev, 0]:
                    found = (None, 0)
                    break
                continue
            pos = history.get((cand_prev_state, pp))
            if pos is None:
                continue
            good = pos & ok[pp, prev] & (positions < p) & (qmax[prev] >= p)
            if good.any():
                found = (pp, int(np.flatnonzero(good)[-1]))
                break
        assert found is not None, "no predecessor in reconstruction"
        stages.append((found[1], p, prev))
        state, prev, p = cand_prev_state, found[0], found[1]
    del positions
    return stages[::-1]


# --------------------------------------------------------------------------- latency search
_ANY = -2  # with uniform links the last device does not change any later cost: states merge


def _latency_search(
    pb: _Problem, uniform: bool, cap: float = np.inf, upper: float = np.inf, max_expansions: int = 10**9
):
    """Minimum-latency plan with every compute time and link occupancy <= cap. Returns (latency, stages) or None.

    Layered over the number of devices used; each (state, last class) keeps a vector of best
    costs per cut and expands to the next class with one min-plus product. A state is pruned
    where cost + remaining work / fastest unused device cannot beat the best plan found.
    """
    L, pm = pb.L, pb.pm
    capt = cap * (1 + _REL) if np.isfinite(cap) else np.inf
    pt = pm.prefix_time
    idx = np.arange(L + 1)
    valid_end = pb.internal.copy()
    valid_end[L] = True
    comp = []
    for c in range(pb.C):
        m = (pt[None, :] - pt[:, None]) / pb.speed[c]
        bad = (idx[None, :] <= idx[:, None]) | (idx[None, :] > pb.qmem[c][:, None]) | ~valid_end[None, :] | (m > capt)
        comp.append(np.where(bad, np.inf, m))
    trans = np.where(pb.occ <= capt, pb.trans, np.inf)  # cap the occupancy, sum the transfer time
    free = pb.counts < pb.size[None, :]
    fastest_free = np.where(free, pb.speed[None, :], 0.0).max(axis=1)
    best = upper * (1 + _REL) if np.isfinite(upper) else np.inf
    best_key = None
    start = np.full(L + 1, np.inf)
    start[0] = 0.0
    frontier = {(0, -1): start}
    parents: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    expansions = 0
    while frontier:
        nxt: dict[tuple[int, int], np.ndarray] = {}
        for (state, tag), g in frontier.items():
            for c in range(pb.C):
                if not free[state, c]:
                    continue
                if tag == -1:
                    tin = np.zeros(L + 1) if c == pb.src_class else trans[pb.src_class, c]
                elif tag == _ANY:
                    tin = trans[pb.src_class if c != pb.src_class else _other(pb), c]
                else:
                    tin = trans[tag, c]
                h = g + tin
                new_state = state + int(pb.stride[c])
                rows = np.flatnonzero(np.isfinite(h) & (h + pb.remaining / pb.speed.max() < best))
                if rows.size == 0:
                    continue
                expansions += 1
                if expansions > max_expansions:
                    return None
                tot = h[rows][:, None] + comp[c][rows]
                arg = np.argmin(tot, axis=0)
                val = tot[arg, idx]
                out = 0.0 if c == pb.src_class else trans[c, pb.src_class, L]
                if val[L] + out < best:
                    best, best_key = val[L] + out, (state, tag, c, int(rows[arg[L]]))
                val[L] = np.inf
                speed_left = fastest_free[new_state]
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
        return None
    state, tag, c, p = best_key
    stages = [(p, L, c)]
    while tag != -1:
        ppos, pcls, ptag = parents[(state, tag)]
        q = p
        p, c, tag = int(ppos[q]), int(pcls[q]), int(ptag[q])
        stages.append((p, q, c))
        state -= int(pb.stride[c])
    return best, stages[::-1]


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


def _no_plan_error(pb: _Problem) -> UserError:
    """Explain infeasibility: the smallest extra memory per device that would make a plan exist."""
    pm = pb.pm
    total = int(pm.params.sum())
    lo, hi = 0, total + int(pm.out_bytes.max()) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        trial = _Problem(dataclasses.replace(pm, memory=pm.memory + mid, allowed=pm.allowed.copy()))
        ok = (_feasible_uniform(trial, np.inf) if _uniform(trial) else _feasible_general(trial, np.inf)) is not None
        lo, hi = (lo, mid) if ok else (mid + 1, hi)
    from edgeweave.cost.units import format_bytes

    return UserError(
        f"{pm.model} fits on no combination of the {pm.num_devices} devices: parameters "
        f"{format_bytes(total)} in all, and every device would need {format_bytes(lo)} more memory"
    )


def plan_pipeline(pm: PipelineModel, objective: str = "throughput", refine: bool = True) -> Solution:
    """Exactly optimal pipeline for the design notes' cost model."""
    started = time.perf_counter()
    pb = _Problem(pm)
    uniform = _uniform(pb)
    if objective == "latency":
        found = _latency_search(pb, uniform, upper=_single_device_latency(pb))
        if found is None:
            raise _no_plan_error(pb)
        stages = _to_stages(pb, found[1])
        return Solution(stages, pm.evaluate(stages), _stats(pb, started, uniform, objective))
    if objective != "throughput":
        raise UserError(f"unknown objective {objective!r} (use throughput or latency)")

    feasible = _feasible_uniform if uniform else _feasible_general
    top = feasible(pb, np.inf)
    if top is None:
        raise _no_plan_error(pb)
    # Bracket T*: below it by counting total work against total speed, above by a known plan.
    lo = max(pb.remaining[0] / float((pb.size * pb.speed).sum()), 0.0)
    hi_stages = _reconstruct(pb, top, uniform)
    hi = pm.evaluate(_to_stages(pb, hi_stages)).bottleneck_s
    cands = pb.candidates(lo, hi)
    left, right, best = 0, len(cands) - 1, hi_stages
    while left <= right:
        mid = (left + right) // 2
        hit = feasible(pb, float(cands[mid]))
        if hit is None:
            left = mid + 1
        else:
            best = _reconstruct(pb, hit, uniform)
            right = mid - 1
    stages = _to_stages(pb, best)
    costs = pm.evaluate(stages)
    stats = _stats(pb, started, uniform, objective, candidates=len(cands))
    if refine:
        found = _latency_search(pb, uniform, cap=costs.bottleneck_s, upper=costs.latency_s, max_expansions=2_000)
        if found is not None:
            refined = _to_stages(pb, found[1])
            rc = pm.evaluate(refined)
            if rc.bottleneck_s <= costs.bottleneck_s * (1 + _REL) and rc.latency_s < costs.latency_s:
                stages, costs = refined, rc
        stats["refined"] = found is not None
    stats["time_s"] = time.perf_counter() - started
    return Solution(stages, costs, stats)


def _single_device_latency(pb: _Problem) -> float:
    """Best plan on one device: a cheap upper bound that lets the latency search prune early."""
    pm, best = pb.pm, np.inf
    for d in range(pm.num_devices):
        if pm.stage_memory(0, pb.L) <= pm.memory[d]:
            c = pm.evaluate([Stage(0, pb.L, d)])
            best = min(best, c.latency_s)
    return best


def _reconstruct(pb: _Problem, hit, uniform: bool) -> list[tuple]:
    return _reconstruct_uniform(pb, *hit) if uniform else hit


def _stats(pb: _Problem, started: float, uniform: bool, objective: str, **extra) -> dict:
    return {
        "time_s": time.perf_counter() - started,
        "classes": pb.C,
        "states": pb.num_states,
        "uniform_links": uniform,
        "objective": objective,
        **extra,
    }
