"""The pipeline cost model of the design notes, in arrays.

A stage covers nodes [p, q) (positions are cuts: cut p sits before node p, cut 0 carries the
model input and cut L the output back to the source). Planners search over these arrays; this
module is the single definition of what a plan costs, so planners, baselines, tests and the
simulator's cross-checks all agree.

Links follow the design notes' link model (`cost/linkmodel.py`): a transfer costs one request
latency + bytes / bandwidth (`transfer`, the latency objective), but holds its link only
bytes / bandwidth (`occupancy`, the throughput objective's link time): latency is propagation,
which messages in flight overlap. So the bottleneck is the max of compute times and link
occupancies, and the latency the sum of compute and transfer times.

Stage memory (documented contract): the parameters of its nodes plus the largest activation any
of its nodes produces. Both grow when a stage grows, which the exact planner relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile


@dataclass(frozen=True)
class Stage:
    """Nodes [start, end) on `device` (an index into `PipelineModel.devices`)."""

    start: int
    end: int
    device: int


@dataclass
class StageCosts:
    compute_s: list[float]
    transfer_in_s: list[float]  # into each stage (stage 0: the input from the source): latency + bytes/bw
    output_s: float  # last stage's output back to the source: latency + bytes/bw
    memory_bytes: list[int]
    bottleneck_s: float  # max of compute_s, link_in_s and output_link_s
    latency_s: float  # sum of compute_s, transfer_in_s and output_s
    fits: bool
    link_in_s: list[float] = field(default_factory=list)  # occupancy of each incoming link: bytes/bw
    output_link_s: float = 0.0  # occupancy of the output's link back to the source

    @property
    def throughput_per_s(self) -> float:
        return 1.0 / self.bottleneck_s if self.bottleneck_s > 0 else float("inf")


@dataclass
class PipelineModel:
    """Profile and cluster turned into the arrays every planner uses."""

    model: str
    times: np.ndarray
    params: np.ndarray
    out_bytes: np.ndarray
    cut_bytes: np.ndarray  # length L + 1
    devices: list[str]
    speed: np.ndarray
    memory: np.ndarray
    source: int
    bandwidth: np.ndarray  # bytes/s, [from, to]; inf on the diagonal
    latency: np.ndarray  # seconds, [from, to]; 0 on the diagonal
    allowed: np.ndarray = field(default=None)  # bool, length L + 1: cuts a plan may use
    node_names: list[str] = field(default_factory=list)
    # [N, L] each node's time on each device, where a device has its own profile (cluster YAML
    # `profile:`); None: time_s / speed everywhere. Non-proportional: a GPU board speeds up
    # convolutions far more than element-wise ops, so no single speed describes it.
    device_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.times)
        if self.allowed is None:
            self.allowed = np.ones(n + 1, dtype=bool)
        self.allowed[0] = self.allowed[n] = True
        self.prefix_time = np.concatenate([[0.0], np.cumsum(self.times)])
        self.prefix_params = np.concatenate([[0], np.cumsum(self.params)])
        if self.device_times is None:
            per_device = self.times[None, :] / self.speed[:, None]
        else:
            per_device = np.asarray(self.device_times, dtype=np.float64)
            if per_device.shape != (len(self.speed), n):
                raise ValueError(f"device_times must be [devices, nodes], got {per_device.shape}")
        self.node_time = per_device  # [N, L]: what compute() sums
        self.prefix_dev = np.concatenate([np.zeros((len(self.speed), 1)), np.cumsum(per_device, axis=1)], axis=1)
        # the most reference work (profile time_s) a device does per second on any node: the
        # capacity bound planners prune with (= speed when times are proportional)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(per_device > 0, self.times[None, :] / per_device, np.where(self.times > 0, np.inf, 0.0))
        self.bound_speed = ratio.max(axis=1, initial=0.0) if n else self.speed.copy()

    @classmethod
    def build(cls, profile: Profile, cluster: Cluster, devices: list[str] | None = None) -> PipelineModel:
        names = devices or cluster.device_names
        if cluster.source not in names:
            names = [cluster.source, *names]
        n = len(names)
        bw = np.full((n, n), np.inf)
        lat = np.zeros((n, n))
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i != j:
                    link = cluster.link(a, b)
                    bw[i, j] = link.bandwidth_bps / 8.0
                    lat[i, j] = link.latency_s
        devs = [cluster.devices[d] for d in names]
        own = cluster.device_times(profile, names)  # devices measured on their own (cluster `profile:`)
        device_times = None
        if own:
            rows = [own[d] if d in own else profile.times / dev.speed for d, dev in zip(names, devs, strict=True)]
            device_times = np.stack(rows)
        return cls(
            model=profile.model,
            times=profile.times,
            params=profile.param_bytes,
            out_bytes=profile.out_bytes,
            cut_bytes=profile.cut_bytes.astype(np.int64),
            devices=list(names),
            speed=np.array([d.speed for d in devs], dtype=np.float64),
            memory=np.array([d.memory_bytes for d in devs], dtype=np.int64),
            source=names.index(cluster.source),
            bandwidth=bw,
            latency=lat,
            node_names=[nd.name for nd in profile.nodes],
            device_times=device_times,
        )

    @property
    def num_nodes(self) -> int:
        return len(self.times)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def compute(self, start: int, end: int, device: int) -> float:
        if self.device_times is None:  # the same arithmetic as the design notes: sum / speed
            return float(self.prefix_time[end] - self.prefix_time[start]) / float(self.speed[device])
        return float(self.prefix_dev[device, end] - self.prefix_dev[device, start])

    def nodes_time(self, nodes, device: int) -> float:
        """Compute time of any set of nodes (indices, a mask or a slice) on `device`: the one
        place layer-wise planners read per-node times, so per-device profiles reach them all."""
        if self.device_times is None:
            return float(self.times[nodes].sum()) / float(self.speed[device])
        return float(self.node_time[device, nodes].sum())

    def span_speed(self, first: int, last: int, device: int) -> float:
        """`device`'s pace on nodes first..last relative to the reference profile: band planners
        price a band from the reference profile's per-node times (each node's share of rows), then
        divide by this, so a device with its own profile runs a band at its own pace on that span
        (per-node differences inside the span are averaged over its reference times)."""
        if self.device_times is None:
            return float(self.speed[device])
        own = self.nodes_time(slice(first, last + 1), device)
        return float(self.times[first : last + 1].sum()) / own if own > 0 else float(self.speed[device])

    def stage_times(self, device: int) -> np.ndarray:
        """[L + 1, L + 1]: compute time of stage [p, q) on `device` (negative where q < p)."""
        if self.device_times is None:
            pt = self.prefix_time
            return (pt[None, :] - pt[:, None]) / float(self.speed[device])
        pre = self.prefix_dev[device]
        return pre[None, :] - pre[:, None]

    def head_tail_times(self, head: int, tail: int) -> np.ndarray:
        """[L + 1]: nodes [0, p) on `head` plus nodes [p, L) on `tail`, for every cut p."""
        if self.device_times is None:
            pt, L = self.prefix_time, self.num_nodes
            return pt / self.speed[head] + (pt[L] - pt) / self.speed[tail]
        a, b = self.prefix_dev[head], self.prefix_dev[tail]
        return a + (b[-1] - b)

    def stage_memory(self, start: int, end: int) -> int:
        return int(self.prefix_params[end] - self.prefix_params[start] + self.out_bytes[start:end].max())

    def transfer(self, cut: int, src: int, dst: int) -> float:
        """One request's time for cut `cut` from src to dst: latency + bytes / bandwidth (0 on one device)."""
        if src == dst:
            return 0.0
        return float(self.latency[src, dst] + self.cut_bytes[cut] / self.bandwidth[src, dst])

    def occupancy(self, cut: int, src: int, dst: int) -> float:
        """How long cut `cut` holds the src -> dst link: bytes / bandwidth, no latency (0 on one device)."""
        if src == dst:
            return 0.0
        return float(self.cut_bytes[cut] / self.bandwidth[src, dst])

    def link_time(self, src: int, dst: int, nbytes: float, overhead_s: float = 0.0) -> float:
        """Occupancy of any message of `nbytes` on src -> dst: bytes / bandwidth + per-message cost.

        For planners that price their own messages (bands, chunks); the message arrives
        `latency[src, dst]` after this (`cost/linkmodel.py`). 0 on one device.
        """
        if src == dst:
            return 0.0
        return float(nbytes / self.bandwidth[src, dst]) + overhead_s

    def evaluate(self, stages: list[Stage]) -> StageCosts:
        """Costs of a stage list under the design notes' model (contiguity is checked)."""
        if not stages or stages[0].start != 0 or stages[-1].end != self.num_nodes:
            raise ValueError("stages must cover every node from the first to the last")
        for a, b in zip(stages, stages[1:], strict=False):
            if a.end != b.start or a.device == b.device:
                raise ValueError("stages must be contiguous and on distinct consecutive devices")
        if len({s.device for s in stages}) != len(stages):
            raise ValueError("a device hosts at most one stage")
        compute = [self.compute(s.start, s.end, s.device) for s in stages]
        prev = [self.source] + [s.device for s in stages[:-1]]
        transfer_in = [self.transfer(s.start, p, s.device) for s, p in zip(stages, prev, strict=True)]
        link_in = [self.occupancy(s.start, p, s.device) for s, p in zip(stages, prev, strict=True)]
        output = self.transfer(self.num_nodes, stages[-1].device, self.source)
        output_link = self.occupancy(self.num_nodes, stages[-1].device, self.source)
        memory = [self.stage_memory(s.start, s.end) for s in stages]
        fits = all(m <= self.memory[s.device] for m, s in zip(memory, stages, strict=True))
        bottleneck = max([*compute, *link_in, output_link])
        latency = sum([*compute, *transfer_in, output])
        return StageCosts(compute, transfer_in, output, memory, bottleneck, latency, fits, link_in, output_link)

    def occupancy_matrix(self, cut: int) -> np.ndarray:
        """Link occupancy (bytes / bandwidth) of cut `cut` for every (from, to) pair; 0 on the diagonal."""
        t = self.cut_bytes[cut] / self.bandwidth
        np.fill_diagonal(t, 0.0)
        return t


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


def internal_cuts(pm: PipelineModel) -> np.ndarray:
    """Cuts a stage may end at other than the last (allowed, not 0, not L)."""
    internal = pm.allowed.copy()
    internal[0] = internal[pm.num_nodes] = False
    return internal
