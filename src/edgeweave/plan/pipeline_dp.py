"""The throughput planner's feasibility test: is there a plan whose every stage compute time and
link occupancy is <= T? (`plan/pipeline.py` binary-searches T over the finitely many values the
optimum can take.)

Why it is shaped so. A plan is a path through configurations (devices used, last device, cut).
Three facts make the state space small enough to sweep exactly:

* **Grouping at T.** Two devices are interchangeable *for this T* when their farthest reach from
  every cut is the same (`qmax`, which folds speed, per-node times and memory together), their
  input/output links to the source pass or fail alike, and their links to every other device pass
  or fail alike at every cut. Identical boards always group; so do devices whose links all differ
  but all pass at T, which is the usual case near the optimum (per-pair WiFi links rarely bind a
  pipeline whose stages take seconds). The state counts how many of each group are used.
* **Unrestricted cuts dominate.** Call a cut *unrestricted* when every link passes there. If a
  plan prefix reaches an unrestricted cut c2, it dominates every prefix with the same devices
  ending at an earlier cut c1, whatever the last device: any continuation from c1 becomes one from
  c2 by dropping the stages that end at or before c2 and shortening the first one past c2 (less
  work, less memory, and its incoming link passes because c2 is unrestricted). So a state keeps
  one number for unrestricted cuts (the farthest) and a bitset per last group only for the
  restricted cuts beyond it.
* **Pruning by relaxations.** A configuration is expanded only if its unused devices could
  still finish from it: the remaining work within T times their speed bound, and the cut at or
  past where a relaxation (groups of similar speed merged, each as good as its best member,
  `coarsen`) can finish with them (`finish_table`, swept backwards once per T). Before any sweep,
  a second relaxation that keeps every link but lets devices come back (`walk_feasible`)
  rejects T outright where links, not compute, decide.

The sweep visits states in increasing mixed-radix index (adding a device only increases it), so a
state is final when visited. It runs in chunks so a time budget can stop it between chunks. The
kernel is plain Python compiled by numba when numba is installed and the sweep is large; small
sweeps (the brute-force tests, two-device clusters) run as Python, so planning small instances
does not pay numba's import.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

REL = 1e-9  # tolerance for comparing times computed along different arithmetic paths
MAX_STATES = 1 << 27  # int16 farthest-cut table of 256 MiB
MAX_BITSET_BYTES = 1 << 29  # restricted-cut bitsets (past it, the test is Unknown; 24 distinct devices
# with links binding at most cuts need ~1.1 GB to be proven, see the closing note of issue 14)
JIT_THRESHOLD = 50_000  # states x groups below which Python beats importing numba and loading its cache (~0.5 s)
CHUNK = 1 << 21  # states per kernel call between time-budget checks
BLOCK_SHIFT = 8  # the sweep skips blocks of 2^8 states that nothing reached
COARSE_STATES = 1 << 18  # states of the coarse (relaxed) sweeps and backward tables


class Unknown(Exception):
    """The test could not be decided: too many states, or the deadline passed."""


@dataclass(frozen=True)
class Arrays:
    """Everything the test needs that does not depend on T (built once per planning call)."""

    L: int
    source: int
    prefix: np.ndarray  # [N, L + 1] cumulative compute time of each device
    bound_speed: np.ndarray  # [N] reference work a device does per second, at most (capacity bound)
    ref_prefix: np.ndarray  # [L + 1] cumulative reference work (what bound_speed is measured in)
    qmem: np.ndarray  # [N, L + 1] farthest end of a stage from each start within memory
    occ: np.ndarray  # [N, N, L + 1] link occupancy of each cut between two devices (inf on the diagonal)
    internal: np.ndarray  # [L + 1] bool: cuts a stage may end at other than L


@dataclass
class Grouping:
    """Devices grouped as interchangeable at one T, and the per-group arrays of the sweep."""

    classes: list[list[int]]
    qmax: np.ndarray  # [C, L + 1]
    ok_in: np.ndarray  # [C] the input (cut 0) from the source passes
    ok_out: np.ndarray  # [C] the output (cut L) back to the source passes
    rpos: np.ndarray  # [R] positions of restricted cuts, increasing
    okr: np.ndarray  # [C, C, R] link from a device of one group to another (distinct) passes at each restricted cut
    parts: list[list[int]] | None = None  # coarse groupings: which finer groups each one merges


def reach(arr: Arrays, T: float) -> np.ndarray:
    """qmax[d, p]: the farthest end of a stage starting at cut p on device d within T and memory."""
    Tt = T * (1 + REL)
    ends = np.stack([np.searchsorted(row, row + Tt, side="right") - 1 for row in arr.prefix])
    return np.minimum(ends, arr.qmem)


def group(arr: Arrays, T: float) -> Grouping:
    """Split devices into groups interchangeable for the feasibility test at T (module docstring)."""
    Tt = T * (1 + REL)
    n, L, src = arr.prefix.shape[0], arr.L, arr.source
    qmax = reach(arr, T)
    ok = arr.occ <= Tt
    idx = np.arange(n)
    ok_in = (idx == src) | ok[src, :, 0]
    ok_out = (idx == src) | ok[:, src, L]
    off = ~np.eye(n, dtype=bool)
    bad_cut = ~np.all(ok | ~off[:, :, None], axis=(0, 1)) & arr.internal
    rpos = np.flatnonzero(bad_cut)
    okc = ok[:, :, rpos]  # [N, N, R]
    classes: list[list[int]] = []
    for d in range(n):
        for members in classes:
            if _interchangeable(members, d, qmax, ok_in, ok_out, okc):
                members.append(d)
                break
        else:
            classes.append([d])
    rep = [m[0] for m in classes]
    C = len(classes)
    okr = np.zeros((C, C, len(rpos)), dtype=bool)
    for a in range(C):
        for b in range(C):
            if a != b:
                okr[a, b] = okc[rep[a], rep[b]]
            elif len(classes[a]) > 1:
                okr[a, b] = okc[classes[a][0], classes[a][1]]
    return Grouping(classes, qmax[rep], ok_in[rep], ok_out[rep], rpos, okr)


def _interchangeable(members: list[int], d: int, qmax, ok_in, ok_out, okc) -> bool:
    """Swapping d with the group's first member (and so any two members) preserves every test."""
    r = members[0]
    if ok_in[r] != ok_in[d] or ok_out[r] != ok_out[d] or not np.array_equal(qmax[r], qmax[d]):
        return False
    if okc.shape[2] == 0:
        return True
    others = np.ones(okc.shape[0], dtype=bool)
    others[[r, d]] = False
    if not (np.array_equal(okc[r, others], okc[d, others]) and np.array_equal(okc[others, r], okc[others, d])):
        return False
    if not np.array_equal(okc[r, d], okc[d, r]):
        return False
    return all(np.array_equal(okc[r, d], okc[r, m]) and np.array_equal(okc[d, r], okc[m, r]) for m in members[1:])


@dataclass
class Hit:
    """A feasible plan's stages as (start, end, device), and for each stage the members of the
    group it was found on (any of them could host it in the exact test; in a coarse one, a
    matching `pipeline.py` computes may or may not exist)."""

    stages: list[tuple[int, int, int]]
    options: list[list[int]]
    exact: bool = True  # a plan of the real devices within T (a relaxed sweep's plan may not be)


def coarsen(arr: Arrays, g: Grouping, max_states: int = COARSE_STATES) -> Grouping:
    """Merge groups of similar speed until the sweep has at most `max_states` states, each merged
    group doing what its best member does at each cut (reach: max; links: any pass).

    A relaxation: what it cannot do, the real devices cannot either. So its "no" proves a T
    infeasible (the lower bracket), and its backward table bounds which real states can still
    finish (`_finish`), which prunes the exact sweep.
    """
    speed = {k: float(arr.bound_speed[g.classes[k]].max()) for k in range(len(g.classes))}
    chunks = [[k] for k in sorted(speed, key=speed.get)]

    def states(ch: list[list[int]]) -> float:
        return float(np.prod([float(sum(len(g.classes[k]) for k in c) + 1) for c in ch]))

    while len(chunks) > 1 and states(chunks) > max_states:
        # merge the two neighbours (in speed) that are most alike: the relaxation loses least
        i = min(range(len(chunks) - 1), key=lambda i: speed[chunks[i + 1][-1]] / max(speed[chunks[i][0]], 1e-300))
        chunks[i : i + 2] = [chunks[i] + chunks[i + 1]]
    classes = [[d for k in ch for d in g.classes[k]] for ch in chunks]
    qmax = np.stack([np.max(g.qmax[ch], axis=0) for ch in chunks])
    ok_in = np.array([np.any(g.ok_in[ch]) for ch in chunks])
    ok_out = np.array([np.any(g.ok_out[ch]) for ch in chunks])
    R = len(g.rpos)
    okr = np.ones((len(chunks), len(chunks), R), dtype=bool)
    for i, a_ch in enumerate(chunks):
        for j, b_ch in enumerate(chunks):
            pairs = [g.okr[a, b] for a in a_ch for b in b_ch if a != b or len(g.classes[a]) > 1]
            if pairs:
                okr[i, j] = np.any(np.stack(pairs), axis=0)
    return Grouping(classes, qmax, ok_in, ok_out, g.rpos, okr, parts=chunks)


def link_matrix(g: Grouping, L: int, internal: np.ndarray) -> np.ndarray:
    """ok[k, k2, p]: a stage on group k ending at internal cut p may hand over to group k2."""
    C = len(g.classes)
    ok = np.broadcast_to(internal, (C, C, L + 1)).copy()
    if len(g.rpos):
        ok[:, :, g.rpos] = g.okr
    for k in range(C):
        if len(g.classes[k]) < 2:
            ok[k, k, :] = False  # a device follows itself only as another member of its group
    return ok


def walk_feasible(arr: Arrays, g: Grouping) -> bool:
    """A relaxation that keeps every link but forgets which devices were used (a device may
    come back later): can a chain of stages, each within its group's reach at T and handing over
    only where its link passes, get from the input to the output? Cheap (groups x cuts), and
    strong exactly where the counting sweeps are weak: when links, not compute, decide."""
    L, C = arr.L, len(g.classes)
    ok = link_matrix(g, L, arr.internal)
    reach = np.zeros((C, L + 1), dtype=bool)  # a stage on group k can end at cut p
    starts = np.zeros((C, L + 1), dtype=bool)
    starts[:, 0] = g.ok_in
    while True:
        new = np.zeros_like(reach)
        for k2 in range(C):
            ps = np.flatnonzero(starts[k2])
            if ps.size == 0:
                continue
            q = g.qmax[k2, ps]
            if np.any((q >= L) & g.ok_out[k2]):
                return True
            hi = np.minimum(q, L - 1)
            m = hi > ps
            diff = np.zeros(L + 2, dtype=np.int64)
            np.add.at(diff, ps[m] + 1, 1)
            np.add.at(diff, hi[m] + 1, -1)
            new[k2] = (np.cumsum(diff)[: L + 1] > 0) & arr.internal
        new &= ~reach
        if not new.any():
            return False
        reach |= new
        # from a stage on k ending at p, any k2 whose link passes there may start at p
        starts = np.einsum("kp,kjp->jp", reach.astype(np.int64), ok.astype(np.int64)) > 0
        starts[:, 0] = g.ok_in


def _radix(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Strides of the mixed-radix state (count of each group used) and the number of states."""
    stride = np.cumprod(np.concatenate([[1], sizes[:-1] + 1])).astype(np.int64)
    return stride, int(np.prod((sizes + 1).astype(np.float64)))


def finish_table(arr: Arrays, cg: Grouping, engine: str) -> np.ndarray:
    """Bk[m]: the earliest cut from which the unused devices m (counts per coarse group, as a
    mixed-radix index) can still finish the model in the relaxation; L + 1: from nowhere."""
    L = arr.L
    msize = np.array([len(m) for m in cg.classes], dtype=np.int64)
    mstride, n = _radix(msize)
    first_start = np.stack([np.searchsorted(row, np.arange(L + 1), side="left") for row in cg.qmax]).astype(np.int64)
    nxt = np.where(arr.internal, np.arange(L + 1), L + 1)
    next_internal = np.minimum.accumulate(nxt[::-1])[::-1].astype(np.int64)
    Bk = np.full(n, L + 1, dtype=np.int32)
    _compiled("finish", engine)(msize, mstride, first_start, cg.ok_out, next_internal, L, Bk)
    return Bk


def _finish(msize, mstride, first_start, ok_out, next_internal, L, Bk):
    """Backward sweep of `finish_table`: with unused devices m, finishing from p means one device
    of some group j takes [p, t) and the rest finish from t, or j takes [p, L) as the last stage."""
    M = msize.shape[0]
    digit = np.zeros(M, np.int64)
    Bk[0] = L
    for m in range(1, Bk.shape[0]):
        k = 0
        while digit[k] == msize[k]:
            digit[k] = 0
            k += 1
        digit[k] += 1
        best = L + 1
        for j in range(M):
            if digit[j] == 0:
                continue
            prev = Bk[m - mstride[j]]
            if prev < best:  # an unused device may stay unused
                best = prev
            if ok_out[j] and first_start[j, L] < best:
                best = first_start[j, L]
            if prev < L:
                t = next_internal[prev]
                if t < L and first_start[j, t] < best:
                    best = first_start[j, t]
        Bk[m] = best


def feasible(
    arr: Arrays, T: float, deadline: float = np.inf, engine: str = "auto", relaxed: bool = False
) -> Hit | None:
    """A plan with every compute time and link occupancy <= T, or None when none exists.

    With `relaxed`, the test runs on `coarsen`'s relaxation: its None proves T infeasible, its
    plan proves nothing. Raises Unknown when the state space is too large or `deadline`
    (perf_counter) passes.
    """
    g = group(arr, T)
    if not walk_feasible(arr, g):
        return None  # even with devices reusable, the links cannot carry a plan at T
    cg = coarsen(arr, g)
    exact = True
    if relaxed:
        exact = len(cg.classes) == len(g.classes)  # nothing merged: the relaxation is exact
        g, cg = cg, coarsen(arr, cg)
    C, L = len(g.classes), arr.L
    size = np.array([len(m) for m in g.classes], dtype=np.int64)
    stride, nstates = _radix(size)
    if nstates > MAX_STATES:
        raise Unknown(f"{nstates} states")
    R = len(g.rpos)
    words = max((R + 63) // 64, 1)
    # restricted-cut bitsets live in a pool, a row given to a state when first reached
    pool_rows = min(nstates, MAX_BITSET_BYTES // (C * words * 8)) if R else 1
    if R and nstates * 4 > MAX_BITSET_BYTES:
        raise Unknown(f"{nstates} states with {R} restricted cuts")
    Tt = min(T * (1 + REL), 1e300)  # finite, so that T = inf times no capacity is 0, not nan
    speed_k = np.array([arr.bound_speed[m].max() for m in g.classes], dtype=np.float64)
    # last_unres[q]: the largest unrestricted internal cut <= q (-1 if none)
    unres = arr.internal.copy()
    unres[g.rpos] = False
    unres[0] = unres[L] = False
    last_unres = np.maximum.accumulate(np.where(unres, np.arange(L + 1), -1)).astype(np.int64)
    # rfirst[x]: index of the first restricted cut at a position > x
    rfirst = np.searchsorted(g.rpos, np.arange(L + 1), side="right").astype(np.int64)
    F = np.full(nstates, -1, dtype=np.int16 if L < 32767 else np.int32)
    B = np.zeros((pool_rows, C, words), dtype=np.uint64)
    rowidx = np.full(nstates if R else 1, -1, dtype=np.int32)
    nrows = np.zeros(1, dtype=np.int64)
    remain = (arr.ref_prefix[L] - arr.ref_prefix).astype(np.float64)
    slack = (remain[0] + Tt * float((size * speed_k).sum())) * REL  # float drift of the odometer's sum
    res = np.full(4, -1, dtype=np.int64)
    if engine == "auto":
        engine = "numba" if nstates * C > JIT_THRESHOLD else "python"
    # which unused devices can still finish from where (relaxed, so a bound): prunes the sweep
    Bk = finish_table(arr, cg, engine)
    gmap = np.empty(C, dtype=np.int64)
    for j, part in enumerate(cg.parts):
        gmap[part] = j
    mstride, _ = _radix(np.array([len(m) for m in cg.classes], dtype=np.int64))
    gmstride = mstride[gmap]
    mfull = int((size * gmstride).sum())
    if Bk[mfull] > 0:
        return None  # even the relaxation cannot finish from the start
    touched = np.zeros((nstates >> BLOCK_SHIFT) + 1, dtype=np.uint8)  # blocks of states reached
    touched[0] = 1
    kernel = _compiled("sweep", engine)
    args = (
        F,
        B,
        rowidx,
        nrows,
        size,
        stride,
        speed_k,
        g.qmax.astype(np.int64),
        last_unres,
        rfirst,
        g.rpos.astype(np.int64),
        g.okr,
        g.ok_in,
        g.ok_out,
        remain,
        float(Tt),
        float(slack),
        L,
        gmstride,
        mfull,
        Bk,
        touched,
        res,
    )
    for lo in range(0, nstates, CHUNK):
        if time.perf_counter() > deadline:
            raise Unknown("time budget")
        found = kernel(lo, min(nstates, lo + CHUNK), *args)
        if res[0] == -2:
            raise Unknown(f"restricted-cut bitsets past {MAX_BITSET_BYTES >> 20} MiB")
        if found:
            raw = _reconstruct(g, F, B, rowidx, size, stride, res, L)
            used = [0] * len(g.classes)
            stages = []
            for start, end, k in raw:
                stages.append((start, end, g.classes[k][used[k]]))
                used[k] += 1
            return Hit(stages, [g.classes[k] for _, _, k in raw], exact)
    return None


def _sweep(
    lo,
    hi,
    F,
    B,
    rowidx,
    nrows,
    size,
    stride,
    speed_k,
    qmax,
    last_unres,
    rfirst,
    rpos,
    okr,
    ok_in,
    ok_out,
    remain,
    Tt,
    slack,
    L,
    gmstride,
    mfull,
    Bk,
    touched,
    res,
):
    """Visit states lo..hi-1 in order, extending every stored configuration by one stage.

    Returns True (and the final configuration in res: state, last group or -1, cut, group of
    the final stage) as soon as a stage can end at L with its output link passing. A
    configuration is expanded only if the unused devices could still finish from it: within
    the capacity bound, and from a cut at or past the relaxation's `Bk`.
    """
    C = size.shape[0]
    R = rpos.shape[0]
    W = B.shape[2]
    digit = np.zeros(C, np.int64)
    cap = 0.0
    mu = 0  # coarse index of the used devices: Bk[mfull - mu] is where the unused can finish from
    have = -2  # the state digit, cap and mu describe
    cfg_p = np.empty(1 + C * R, np.int64)
    cfg_k = np.empty(1 + C * R, np.int64)
    cfg_r = np.empty(1 + C * R, np.int64)
    s = lo
    while s < hi:
        if touched[s >> BLOCK_SHIFT] == 0:  # nothing reached this block: skip it whole
            s = ((s >> BLOCK_SHIFT) + 1) << BLOCK_SHIFT
            continue
        if have == s - 1:  # odometer: next mixed-radix state, and the unused devices' capacity
            k = 0
            while digit[k] == size[k]:
                cap += size[k] * speed_k[k]
                mu -= size[k] * gmstride[k]
                digit[k] = 0
                k += 1
            digit[k] += 1
            cap -= speed_k[k]
            mu += gmstride[k]
        else:
            cap = 0.0
            mu = 0
            for k in range(C):
                digit[k] = (s // stride[k]) % (size[k] + 1)
                cap += (size[k] - digit[k]) * speed_k[k]
                mu += digit[k] * gmstride[k]
        have = s
        budget = Tt * max(cap, 0.0) + slack
        bk = Bk[mfull - mu]
        f = F[s]
        n = 0
        if s == 0:
            cfg_p[0] = 0
            cfg_k[0] = -1
            cfg_r[0] = -1
            n = 1
        elif f > 0 and f >= bk and remain[f] <= budget:
            cfg_p[0] = f
            cfg_k[0] = -1
            cfg_r[0] = -1
            n = 1
        row = rowidx[s] if R > 0 and s > 0 else -1
        if row >= 0:
            below = rfirst[f] if f > 0 else 0  # restricted cuts at or before f are dominated by it
            for k in range(C):
                if digit[k] == 0:
                    continue
                for w in range(W):
                    word = B[row, k, w]
                    if word == 0:
                        continue
                    if w * 64 + 64 <= below:
                        B[row, k, w] = np.uint64(0)
                        continue
                    if w * 64 < below:
                        word &= ~((np.uint64(1) << np.uint64(below - w * 64)) - np.uint64(1))
                        B[row, k, w] = word
                    while word != 0:  # each set bit, lowest first
                        low = word & (~word + np.uint64(1))
                        word ^= low
                        r = w * 64 + int(np.log2(float(low)) + 0.5)
                        p = rpos[r]
                        if p >= bk and remain[p] <= budget:
                            cfg_p[n] = p
                            cfg_k[n] = k
                            cfg_r[n] = r
                            n += 1
        for i in range(n):
            p = cfg_p[i]
            k = cfg_k[i]
            r = cfg_r[i]
            for k2 in range(C):
                if digit[k2] >= size[k2]:
                    continue
                if s == 0:
                    if not ok_in[k2]:
                        continue
                elif k >= 0 and not okr[k, k2, r]:
                    continue
                q = qmax[k2, p]
                if q >= L and ok_out[k2]:
                    res[0] = s
                    res[1] = k
                    res[2] = p
                    res[3] = k2
                    return True
                if q > L - 1:
                    q = L - 1
                if q <= p:
                    continue
                ns = s + stride[k2]
                u = last_unres[q]
                if u > p and u > F[ns]:
                    F[ns] = u
                    touched[ns >> BLOCK_SHIFT] = 1
                a = rfirst[max(p, u)]
                b = rfirst[q]
                if b > a:
                    nrow = rowidx[ns]
                    if nrow < 0:
                        if nrows[0] >= B.shape[0]:
                            res[0] = -2  # out of pool: the caller gives up on this T
                            return False
                        nrow = nrows[0]
                        rowidx[ns] = nrow
                        nrows[0] += 1
                    for w in range(a >> 6, ((b - 1) >> 6) + 1):  # set bits a..b-1, a word at a time
                        lo_bit = a - w * 64 if a > w * 64 else 0
                        hi_bit = b - w * 64 if b < w * 64 + 64 else 64
                        ones = np.uint64(0xFFFFFFFFFFFFFFFF)
                        mask = ones if hi_bit == 64 else (np.uint64(1) << np.uint64(hi_bit)) - np.uint64(1)
                        mask &= ~((np.uint64(1) << np.uint64(lo_bit)) - np.uint64(1))
                        B[nrow, k2, w] |= mask
                    touched[ns >> BLOCK_SHIFT] = 1
        s += 1
    return False


@functools.lru_cache(maxsize=4)
def _compiled(name: str, engine: str):
    """A kernel ("sweep" or "finish"), compiled by numba (cached on disk) or as plain Python."""
    func = {"sweep": _sweep, "finish": _finish}[name]
    if engine == "numba":
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency; keep planning without it
            return func
        return numba.njit(cache=True, nogil=True)(func)
    return func


def _reconstruct(g: Grouping, F, B, rowidx, size, stride, res, L: int) -> list[tuple[int, int, int]]:
    """(start, end, group) of each stage of the plan the sweep found: walk back from the final
    configuration through stored ones to the start.

    Every stored configuration was produced from one stored in a smaller state, so a predecessor
    always exists; any predecessor gives a valid plan (the checks are the forward pass's).
    """
    s, k_last, p, k_fin = (int(x) for x in res)
    raw = [(p, L, k_fin)]
    R = len(g.rpos)
    rindex = {int(pos): i for i, pos in enumerate(g.rpos)}
    while s != 0:
        digits = (s // stride) % (size + 1)
        found = None
        for k in range(len(size)) if k_last < 0 else [k_last]:
            if digits[k] == 0:
                continue
            ps = s - int(stride[k])
            if ps == 0:
                if g.ok_in[k] and 0 < p <= g.qmax[k, 0]:
                    found = (ps, -1, 0, k)
                    break
                continue
            f0 = int(F[ps])
            if 0 < f0 < p <= g.qmax[k, f0]:
                found = (ps, -1, f0, k)
                break
            if R and rowidx[ps] >= 0:
                row = int(rowidx[ps])
                pdig = (ps // stride) % (size + 1)
                for k0 in range(len(size)):
                    if pdig[k0] == 0:
                        continue
                    for pos, r in rindex.items():
                        word = int(B[row, k0, r // 64])
                        if (word >> (r % 64)) & 1 and f0 < pos < p <= g.qmax[k, pos] and g.okr[k0, k, r]:
                            found = (ps, k0, pos, k)
                            break
                    if found:
                        break
            if found:
                break
        assert found is not None, "no predecessor in reconstruction"
        ps, k0, p0, k = found
        raw.append((p0, p, k))
        s, k_last, p = ps, k0, p0
    raw.reverse()
    return raw
