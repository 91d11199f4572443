"""Baseline strategies: the published or naive placements edgeweave is compared against.

Every baseline is a pure function `(profile, pm, objective) -> Placement` (see `build.py`); the
caller costs the result with `evaluate_placement` on the real cluster, so a baseline that plans
under a simplified model (PipeDream's identical devices) is judged by the same numbers as the
exact planner. A baseline with no valid answer raises a one-line `UserError`.

Device order for the "k-th device" baselines (`even`, `pipedream`) is the source first, then
the other devices in `pm.devices` order: the input is produced on the source, so the first
stage sits there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeweave.cost.profile import INPUT, Profile
from edgeweave.errors import UserError
from edgeweave.plan.build import Placement, PlacementCosts, evaluate_placement
from edgeweave.plan.costmodel import PipelineModel

OBJECTIVES = ("throughput", "latency")

Baseline = Callable[[Profile, PipelineModel, str], Placement]


# --------------------------------------------------------------------------- helpers
def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r} (use throughput or latency)")


def _score(costs: PlacementCosts, objective: str) -> float:
    return costs.bottleneck_s if objective == "throughput" else costs.latency_s


def source_first(pm: PipelineModel) -> list[int]:
    """Device indices with the source first, then the others in `pm.devices` order."""
    return [pm.source, *(d for d in range(pm.num_devices) if d != pm.source)]


def _remotes(pm: PipelineModel) -> list[int]:
    return [d for d in range(pm.num_devices) if d != pm.source]


def _all_nodes(pm: PipelineModel) -> list[int]:
    return list(range(pm.num_nodes))


def _two_parts(pm: PipelineModel, remote: int, local_nodes: list[int], remote_nodes: list[int]) -> Placement:
    """[(source, local nodes), (remote, remote nodes)] without empty parts."""
    parts = [(pm.source, local_nodes), (remote, remote_nodes)]
    return [(d, nodes) for d, nodes in parts if nodes]


def _internal_cuts_ok(pm: PipelineModel) -> np.ndarray:
    """ok[p] for p = 0..L: cut p may start or end a stage (0 and L always may)."""
    ok = pm.allowed.astype(bool).copy()
    ok[0] = ok[pm.num_nodes] = True
    return ok


# --------------------------------------------------------------------------- local / offload / even
def local(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """Every node on the source. Ignores the objective; memory is not checked (the plan notes it)."""
    return [(pm.source, _all_nodes(pm))]


def offload(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """Every node on the one remote device that is best for the objective and has the memory.

    The input is shipped from the source and the output back, as `evaluate_placement` charges.
    """
    _check_objective(objective)
    remotes = _remotes(pm)
    if not remotes:
        raise UserError("offload needs a device other than the source, and the cluster has only the source")
    best, best_score = None, np.inf
    for d in remotes:
        placement = [(d, _all_nodes(pm))]
        costs = evaluate_placement(profile, pm, placement)
        if costs.fits and _score(costs, objective) < best_score:
            best, best_score = placement, _score(costs, objective)
    if best is None:
        raise UserError(f"offload: {pm.model} fits on no single device other than the source")
    return best


def even(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """Equal contiguous node counts on every device, source first (the naive split).

    Ignores the objective, memory and `pm.allowed`: it is the strawman. With fewer nodes than
    devices, the last devices get nothing.
    """
    order = source_first(pm)
    placement, start = [], 0
    for d, n in zip(order, _even_counts(pm.num_nodes, len(order)), strict=True):
        if n:
            placement.append((d, list(range(start, start + n))))
            start += n
    return placement


def _even_counts(num_nodes: int, parts: int) -> list[int]:
    """Sizes as equal as possible, the larger ones first (like numpy.array_split)."""
    base, extra = divmod(num_nodes, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


# --------------------------------------------------------------------------- pipedream
def _stage_memory_matrix(pm: PipelineModel) -> np.ndarray:
    """mem[p, q] = stage memory of nodes [p, q) for q > p (the costmodel's contract); q <= p is junk."""
    L = pm.num_nodes
    peak = np.zeros((L + 1, L + 1), dtype=np.int64)
    out = pm.out_bytes.astype(np.int64)
    for p in range(L):
        peak[p, p + 1 :] = np.maximum.accumulate(out[p:])
    return pm.prefix_params[None, :] - pm.prefix_params[:, None] + peak


def _stage_cost_matrix(pm: PipelineModel, device: int, memory: float) -> np.ndarray:
    """comp[p, q]: compute time of stage [p, q) on `device` (its own profile, if it has one);
    inf where invalid.

    Invalid: empty or backwards ranges, stages over `memory`, boundaries not in `pm.allowed`.
    """
    L = pm.num_nodes
    comp = pm.stage_times(device)
    idx = np.arange(L + 1)
    ok = _internal_cuts_ok(pm)
    valid = (idx[None, :] > idx[:, None]) & ok[:, None] & ok[None, :]
    valid &= _stage_memory_matrix(pm) <= memory
    return np.where(valid, comp, np.inf)


def pipedream(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """PipeDream's DP: the best contiguous partition if every device were the source's twin.

    PipeDream profiles on one machine type and assumes the cluster is homogeneous. Here every
    device gets the speed and memory of the first device (the source) and every link the
    bandwidth and latency of the link from the first to the second device. The DP picks the
    number of stages (at most the number of devices) and the cuts minimising the bottleneck
    (throughput) or the summed time (latency) under that assumption, including the output's
    trip back to the source; stage k then goes to the k-th device (source first). As in the
    cost model, a cut's link time is bytes / bandwidth in the bottleneck (latency does not
    occupy a link) and latency + bytes / bandwidth in the sum. The caller costs the result on
    the real, heterogeneous cluster. O(L^2 * N), one numpy matrix per k.
    """
    _check_objective(objective)
    order = source_first(pm)
    ref = order[0]
    link_lat = float(pm.latency[ref, order[1]]) if len(order) > 1 else 0.0
    link_bw = float(pm.bandwidth[ref, order[1]]) if len(order) > 1 else np.inf
    comp = _stage_cost_matrix(pm, ref, float(pm.memory[ref]))
    trans = pm.cut_bytes / link_bw  # into a stage starting at cut p: the link's occupancy
    if objective == "latency":
        trans = trans + link_lat  # one request also waits for the latency
    stages = _pipedream_dp(comp, trans, len(order), objective)
    if stages is None:
        raise UserError(
            f"pipedream: {pm.model} fits on no {len(order)} copies of {pm.devices[ref]} "
            f"({pm.memory[ref] / 2**20:.0f} MiB each)"
        )
    return [(order[k], list(range(p, q))) for k, (p, q) in enumerate(stages)]


def _pipedream_dp(comp: np.ndarray, trans: np.ndarray, max_stages: int, objective: str) -> list[tuple[int, int]] | None:
    """Best [(start, end)] stage list under homogeneous costs, or None when nothing fits.

    f[q] = best cost of covering nodes [0, q) with k stages; stage k >= 2 starting at cut p
    pays trans[p] (in), and a plan of >= 2 stages pays trans[L] for the output back.
    """
    L = comp.shape[0] - 1
    combine = np.maximum if objective == "throughput" else np.add
    f = comp[0].copy()
    step = combine(trans[:, None], comp)  # stage [p, q) with its incoming transfer
    parents: list[np.ndarray] = []
    best, best_k = f[L], 1
    for k in range(2, min(max_stages, L) + 1):
        tot = combine(f[:, None], step)
        arg = np.argmin(tot, axis=0)
        f = tot[arg, np.arange(L + 1)]
        parents.append(arg)
        if not np.isfinite(f).any():
            break
        value = combine(f[L], trans[L])
        if value < best:
            best, best_k = value, k
    if not np.isfinite(best):
        return None
    stages, q = [], L
    for k in range(best_k, 1, -1):
        p = int(parents[k - 2][q])
        stages.append((p, q))
        q = p
    stages.append((0, q))
    return stages[::-1]


# --------------------------------------------------------------------------- neurosurgeon
def _prefix_memory(pm: PipelineModel) -> np.ndarray:
    """mem[p] of nodes [0, p) (0 for p = 0)."""
    peak = np.concatenate([[0], np.maximum.accumulate(pm.out_bytes.astype(np.int64))])
    return pm.prefix_params + peak


def _suffix_memory(pm: PipelineModel) -> np.ndarray:
    """mem[p] of nodes [p, L) (0 for p = L)."""
    peak = np.concatenate([np.maximum.accumulate(pm.out_bytes.astype(np.int64)[::-1])[::-1], [0]])
    return pm.prefix_params[-1] - pm.prefix_params + peak


def neurosurgeon_latencies(pm: PipelineModel, remote: int) -> np.ndarray:
    """Latency of every single cut p = 0..L between the source and `remote`; inf where invalid.

    Nodes [0, p) run on the source, [p, L) on `remote`; p = L is all local (no transfers).
    Invalid: a part over its device's memory, or a cut outside `pm.allowed`.
    """
    L, src = pm.num_nodes, pm.source
    lat = pm.head_tail_times(src, remote)
    lat += pm.latency[src, remote] + pm.cut_bytes / pm.bandwidth[src, remote]
    lat += pm.latency[remote, src] + pm.cut_bytes[L] / pm.bandwidth[remote, src]
    lat[L] = pm.compute(0, L, src)
    ok = _internal_cuts_ok(pm) & (_prefix_memory(pm) <= pm.memory[src]) & (_suffix_memory(pm) <= pm.memory[remote])
    return np.where(ok, lat, np.inf)


def neurosurgeon(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """Neurosurgeon: the best single cut between the source and one other device.

    Always minimises latency (Neurosurgeon is a latency method); the objective is ignored. All
    local (p = L) and full offload (p = 0) are among the candidates; memory is respected.
    """
    L = pm.num_nodes
    best, best_val = None, np.inf
    if _prefix_memory(pm)[L] <= pm.memory[pm.source]:
        best, best_val = (pm.source, L), pm.compute(0, L, pm.source)
    for e in _remotes(pm):
        lat = neurosurgeon_latencies(pm, e)
        p = int(np.argmin(lat))
        if lat[p] < best_val:
            best, best_val = (e, p), float(lat[p])
    if best is None:
        raise UserError(f"neurosurgeon: no single cut of {pm.model} between the source and one device fits in memory")
    e, p = best
    return _two_parts(pm, e, list(range(p)), list(range(p, L)))


# --------------------------------------------------------------------------- dads
_S, _T, _ANY_REMOTE = "s", "t", "remote-used"


def _dads_edges(profile: Profile, pm: PipelineModel, remote: int) -> list[tuple[object, object, float | None]]:
    """The flow graph of DADS for one remote device as (u, v, capacity); None is infinite.

    A node on the s side runs on the source, on the t side on `remote`. The min-cut value of a
    partition equals `evaluate_placement` of [(source, s side), (remote, t side)]:
    - s -> v (cut when v is remote): v's time on remote; v -> t: v's time on the source;
    - value x produced by u (s for the model input) and read by r1..rk: u -> aux(x) costs
      bytes / bandwidth, aux(x) -> ri infinite, so x is paid ONCE when any reader is remote;
    - r -> u infinite for every read: the remote side is closed under successors (no value
      flows back);
    - evaluate_placement sends all crossing values as one message and charges the link latency
      once, even with no bytes, plus the output's trip back, whenever the remote part is not
      empty. An indicator node carries exactly that: s -> indicator costs both latencies plus
      the output bytes, indicator -> v is infinite for every v, so it is on the t side (paid)
      as soon as any node is remote. No per-value latency, no approximation.
    """
    src = pm.source
    bw_out, bw_back = float(pm.bandwidth[src, remote]), float(pm.bandwidth[remote, src])
    edges: list[tuple[object, object, float | None]] = []
    readers: dict[str, list[int]] = {}
    index = {n.name: i for i, n in enumerate(profile.nodes)}
    for i, node in enumerate(profile.nodes):
        edges.append((_S, i, float(pm.node_time[remote, i])))
        edges.append((i, _T, float(pm.node_time[src, i])))
        edges.append((_ANY_REMOTE, i, None))
        for ref in dict.fromkeys(node.inputs):
            readers.setdefault(ref, []).append(i)
            if ref != INPUT:
                edges.append((i, index[ref], None))
    for value, rs in readers.items():
        producer = _S if value == INPUT else index[value]
        size = profile.input_bytes if value == INPUT else int(pm.out_bytes[index[value]])
        aux = ("value", value)
        edges.append((producer, aux, size / bw_out))
        edges.extend((aux, r, None) for r in rs)
    fixed = float(pm.latency[src, remote] + pm.latency[remote, src]) + profile.output_bytes / bw_back
    edges.append((_S, _ANY_REMOTE, fixed))
    return edges


def _min_cut_side(edges: list[tuple[object, object, float | None]]) -> set:
    """The s side of a minimum cut. Capacities are scaled to integers: networkx's flow
    algorithms are exact only on integers (floats can mis-round). Rounding moves the optimum by
    at most half a unit per edge, 1e-15 of the total."""
    total = sum(c for _, _, c in edges if c is not None) or 1.0
    scale = 1e15 / total
    import networkx as nx  # ~0.1 s to import: only DADS pays it, not every plan from a profile

    graph = nx.DiGraph()
    graph.add_nodes_from([_S, _T])
    for u, v, cap in edges:
        if graph.has_edge(u, v):  # parallel edges: infinite wins, finite ones add
            old = graph[u][v].get("capacity")
            if old is None or cap is None:
                graph[u][v].pop("capacity", None)
            else:
                graph[u][v]["capacity"] = old + round(cap * scale)
        elif cap is None:
            graph.add_edge(u, v)
        else:
            graph.add_edge(u, v, capacity=round(cap * scale))
    _, (s_side, _) = nx.minimum_cut(graph, _S, _T)
    return set(s_side)


def dads_cut(profile: Profile, pm: PipelineModel, remote: int) -> tuple[float, list[int], list[int]]:
    """(cut value in seconds, source nodes, remote nodes) of the DADS minimum cut for `remote`.

    The value is recomputed in floating point from the partition, so it can be compared with
    `evaluate_placement(...).latency_s` (they are equal by construction of the graph).
    """
    edges = _dads_edges(profile, pm, remote)
    s_side = _min_cut_side(edges)
    value = sum(c if c is not None else np.inf for u, v, c in edges if u in s_side and v not in s_side)
    local_nodes = sorted(i for i in range(pm.num_nodes) if i in s_side)
    remote_nodes = sorted(i for i in range(pm.num_nodes) if i not in s_side)
    return float(value), local_nodes, remote_nodes


def _link_key(pm: PipelineModel, e: int) -> tuple:
    """Remote devices with equal keys have the same DADS cut (memory is checked afterwards)."""
    s = pm.source
    return (pm.node_time[e].tobytes(), pm.bandwidth[s, e], pm.bandwidth[e, s], pm.latency[s, e], pm.latency[e, s])


def dads(profile: Profile, pm: PipelineModel, objective: str) -> Placement:
    """DADS: the minimum s-t cut of the operator DAG between the source and one remote device.

    Always minimises latency (DADS's light-load objective); the objective is ignored. The cut
    may use any node set whose remote side is closed under successors, so it is never worse
    than Neurosurgeon's best contiguous cut (with enough memory). Like DADS, the cut ignores
    memory; among the devices, a placement that fits is preferred, and if none fits the best
    one is returned anyway (the plan then carries a note). Cost: one networkx max-flow per
    distinct remote (same node times and links share a cut), about 0.3 s for 900 nodes.
    """
    candidates: list[Placement] = [local(profile, pm, objective)]
    cuts: dict[tuple, tuple[list[int], list[int]]] = {}
    for e in _remotes(pm):
        key = _link_key(pm, e)
        if key not in cuts:
            cuts[key] = dads_cut(profile, pm, e)[1:]
        candidates.append(_two_parts(pm, e, *cuts[key]))
    scored = [(evaluate_placement(profile, pm, p), p) for p in candidates]
    pool = [(c, p) for c, p in scored if c.fits] or scored
    best = min(range(len(pool)), key=lambda k: pool[k][0].latency_s)
    return pool[best][1]


# --------------------------------------------------------------------------- registry
BASELINES: dict[str, Baseline] = {
    "local": local,
    "offload": offload,
    "even": even,
    "pipedream": pipedream,
    "neurosurgeon": neurosurgeon,
    "dads": dads,
}
