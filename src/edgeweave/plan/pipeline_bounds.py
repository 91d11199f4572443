"""Plans found fast for the throughput search's upper bracket: a greedy pass and a beam search.

Neither proves anything when it fails; a plan either returns is valid at T (every stage within
its device's reach, every link it uses passing), so its real bottleneck bounds T* from above.
They exist because the exact sweep (`pipeline_dp.feasible`) costs about as much far from T* as
near it: every candidate the binary search does not have to probe is a sweep saved.
"""

from __future__ import annotations

import numpy as np

from edgeweave.plan.pipeline_dp import REL, Arrays, group, link_matrix, reach


def greedy(arr: Arrays, T: float) -> list[tuple[int, int, int]] | None:
    """Fastest devices first, each to its farthest cut: a quick plan to bracket T* from above."""
    qmax = reach(arr, T)
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


def beam(arr: Arrays, T: float, width: int = 256) -> list[tuple[int, int, int]] | None:
    """A plan within T found by a beam search over the sweep's states (devices used per group,
    last group, cut). Keeps, per number of stages, the `width` states with the most capacity to
    spare. Knowing the last group, a stage may end at a cut where some links bind: the next
    stage then only goes to a group whose link from it passes there.
    """
    g = group(arr, T)
    C, L = len(g.classes), arr.L
    size = np.array([len(m) for m in g.classes], dtype=np.int64)
    speed_k = np.array([arr.bound_speed[m].max() for m in g.classes], dtype=np.float64)
    ok = link_matrix(g, L, arr.internal)
    unres = arr.internal.copy()
    unres[g.rpos] = False
    last_unres = np.maximum.accumulate(np.where(unres, np.arange(L + 1), -1))
    last_cut = np.maximum.accumulate(np.where(arr.internal, np.arange(L + 1), -1))
    remain = arr.ref_prefix[L] - arr.ref_prefix
    Tt = min(T * (1 + REL), 1e300)
    counts = np.zeros((1, C), dtype=np.int64)
    pos = np.zeros(1, dtype=np.int64)
    last = np.full(1, -1, dtype=np.int64)
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per layer: parent row, class, start cut
    while len(pos):
        free = counts < size[None, :]
        first = last < 0
        link = np.where(
            first[:, None], g.ok_in[None, :], ok[np.maximum(last, 0)[:, None], np.arange(C)[None, :], pos[:, None]]
        )
        rows, ks = np.nonzero(free & link)
        starts = pos[rows]
        q = g.qmax[ks, starts]
        done = np.flatnonzero((q >= L) & g.ok_out[ks])
        if done.size:
            i = int(done[0])
            raw = [(int(starts[i]), L, int(ks[i]))]
            row = int(rows[i])
            for parent, cls, start in reversed(history):
                raw.append((int(start[row]), int(raw[-1][0]), int(cls[row])))
                row = int(parent[row])
            raw.reverse()
            used = [0] * C
            stages = []
            for a, b, k in raw:
                stages.append((a, b, g.classes[k][used[k]]))
                used[k] += 1
            return stages
        qi = np.minimum(q, L - 1)
        # end at the farthest cut, or at the farthest one where no link binds
        ends = np.concatenate([last_cut[qi], last_unres[qi]])
        rows, ks, starts = np.tile(rows, 2), np.tile(ks, 2), np.tile(starts, 2)
        keep = ends > starts
        rows, ks, starts, ends = rows[keep], ks[keep], starts[keep], ends[keep]
        if not len(rows):
            return None
        child = counts[rows].copy()
        child[np.arange(len(rows)), ks] += 1
        spare = Tt * ((size[None, :] - child) * speed_k[None, :]).sum(axis=1) - remain[ends]
        alive = spare >= -abs(Tt) * REL
        rows, ks, starts, ends, child, spare = (x[alive] for x in (rows, ks, starts, ends, child, spare))
        # one entry per (count vector, last group, end kind), the farthest end; then the most spare capacity
        kind = unres[ends]
        order = np.lexsort((-ends, kind, ks, *child.T[::-1]))
        child, rows, ks, starts, ends, spare, kind = (x[order] for x in (child, rows, ks, starts, ends, spare, kind))
        uniq = np.ones(len(child), dtype=bool)
        uniq[1:] = np.any(child[1:] != child[:-1], axis=1) | (ks[1:] != ks[:-1]) | (kind[1:] != kind[:-1])
        child, rows, ks, starts, ends, spare = (x[uniq] for x in (child, rows, ks, starts, ends, spare))
        top = np.argsort(-spare, kind="stable")[:width]
        history.append((rows[top], ks[top], starts[top]))
        counts, pos, last = child[top], ends[top], ks[top]
    return None
