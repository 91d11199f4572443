"""Baseline strategies: shapes, and optimality against brute force within each baseline's own search space."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.plan.baselines import (
    BASELINES,
    dads,
    dads_cut,
    even,
    local,
    neurosurgeon,
    offload,
    pipedream,
)
from edgeweave.plan.build import evaluate_placement
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.pipeline import plan_pipeline

REL = 1e-9


# --------------------------------------------------------------------------- builders
def make_profile(nodes: list[tuple[str, float, int, int, list[str]]], input_bytes: int = 600_000) -> Profile:
    """nodes: (name, time_s, out_bytes, param_bytes, inputs)."""
    return Profile.model_validate(
        {
            "model": "toy",
            "input_bytes": input_bytes,
            "nodes": [
                {"name": n, "time_s": t, "out_bytes": o, "param_bytes": p, "inputs": i} for n, t, o, p, i in nodes
            ],
        }
    )


def chain(times: list[float], out: list[int], params: list[int] | None = None, input_bytes: int = 600_000) -> Profile:
    params = params or [1000] * len(times)
    return make_profile(
        [
            (f"n{i}", t, o, p, [f"n{i - 1}" if i else "input"])
            for i, (t, o, p) in enumerate(zip(times, out, params, strict=True))
        ],
        input_bytes,
    )


def residual() -> Profile:
    """stem -> a -> b -> add(stem, b) -> c -> add(c, add) -> head."""
    return make_profile(
        [
            ("stem", 0.02, 800_000, 10_000, ["input"]),
            ("a", 0.05, 400_000, 50_000, ["stem"]),
            ("b", 0.05, 800_000, 50_000, ["a"]),
            ("add1", 0.001, 800_000, 0, ["stem", "b"]),
            ("c", 0.08, 200_000, 90_000, ["add1"]),
            ("add2", 0.001, 800_000, 0, ["c", "add1"]),
            ("head", 0.01, 4_000, 20_000, ["add2"]),
        ]
    )


def diamond() -> Profile:
    """A diamond over a big input: both cheap readers of the input should stay home, the heavy
    branch between them in topological order should not (no contiguous cut does that)."""
    return make_profile(
        [
            ("x", 0.01, 10_000, 1000, ["input"]),
            ("big", 0.30, 10_000, 1000, ["x"]),
            ("small", 0.001, 10_000, 1000, ["input"]),
            ("join", 0.01, 1_000, 1000, ["big", "small"]),
        ],
        input_bytes=3_000_000,
    )


def random_dag(rng: np.random.Generator, n: int) -> Profile:
    nodes = []
    for i in range(n):
        earlier = ["input"] + [f"v{j}" for j in range(i)]
        k = int(rng.integers(1, min(3, len(earlier)) + 1))
        picks = [earlier[-1]] + list(rng.choice(earlier, size=k - 1, replace=False))
        nodes.append(
            (
                f"v{i}",
                float(rng.uniform(0.001, 0.2)),
                log_uniform(rng, 1_000, 3_000_000),
                int(rng.integers(0, 100_000)),
                list(dict.fromkeys(picks)),
            )
        )
    return make_profile(nodes, log_uniform(rng, 10_000, 3_000_000))


def shrinking_dag(rng: np.random.Generator, n: int) -> Profile:
    """A big input and tensors that shrink with depth (like a CNN), some skip connections: the
    regime where a cut inside the network beats both all-local and full offload."""
    nodes = []
    for i in range(n):
        earlier = ["input"] + [f"v{j}" for j in range(i)]
        picks = [earlier[-1]]
        if i > 0 and rng.random() < 0.4:
            picks.append(str(rng.choice(earlier[:-1])))
        nodes.append(
            (
                f"v{i}",
                float(rng.uniform(0.01, 0.2)),
                log_uniform(rng, 1_000, 4_000_000 * (1 - i / n) + 2_000),
                int(rng.integers(0, 100_000)),
                picks,
            )
        )
    return make_profile(nodes, 4_000_000)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> int:
    """Tensor sizes spread over orders of magnitude, so that some cuts are cheap and some are not."""
    return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def make_cluster(devices: dict[str, tuple[float, str]], links: dict[str, tuple[str, str]], source: str) -> Cluster:
    """devices: name -> (speed, memory); links: key -> (bandwidth, latency)."""
    return Cluster.from_dict(
        {
            "source": source,
            "devices": {d: {"speed": s, "memory": m} for d, (s, m) in devices.items()},
            "links": {k: {"bandwidth": b, "latency": lat} for k, (b, lat) in links.items()},
        }
    )


def random_cluster(rng: np.random.Generator, n: int, memory_kib: tuple[int, int] = (4 << 20, 4 << 20 + 1)) -> Cluster:
    """A slow source (where the input is) and faster remotes, on asymmetric pairwise links."""
    source = int(rng.integers(0, n))
    devices = {
        f"d{i}": (
            float(rng.uniform(0.2, 0.5) if i == source else rng.uniform(0.5, 4.0)),
            f"{int(rng.integers(*memory_kib))}KiB",
        )
        for i in range(n)
    }
    links = {"default": (f"{int(rng.integers(20, 300))}Mbps", f"{float(rng.uniform(0, 5)):.2f}ms")}
    for a, b in itertools.permutations(devices, 2):
        if rng.random() < 0.5:
            links[f"{a}->{b}"] = (f"{int(rng.integers(20, 300))}Mbps", f"{float(rng.uniform(0, 5)):.2f}ms")
    return make_cluster(devices, links, source=f"d{source}")


ROBOT_SERVER = {
    "devices": {"robot": (0.25, "4GiB"), "server": (1.0, "16GiB")},
    "links": {"robot-server": ("50Mbps", "2ms")},
    "source": "robot",
}


def pm_of(profile: Profile, cluster: Cluster) -> PipelineModel:
    return PipelineModel.build(profile, cluster)


def latency(profile: Profile, pm: PipelineModel, placement) -> float:
    return evaluate_placement(profile, pm, placement).latency_s


# --------------------------------------------------------------------------- registry, local, offload, even
def test_registry_has_every_baseline() -> None:
    assert set(BASELINES) == {"local", "offload", "even", "pipedream", "neurosurgeon", "dads"}
    profile = residual()
    pm = pm_of(profile, make_cluster(**ROBOT_SERVER))
    for name, fn in BASELINES.items():
        for objective in ("throughput", "latency"):
            placement = fn(profile, pm, objective)
            assert sorted(i for _, nodes in placement for i in nodes) == list(range(len(profile.nodes))), name
            evaluate_placement(profile, pm, placement)  # valid order, no value flowing backwards


def test_local_puts_everything_on_the_source() -> None:
    profile = chain([0.1] * 5, [1000] * 5)
    cluster = make_cluster(
        {"a": (1.0, "1GiB"), "b": (2.0, "1GiB"), "c": (1.0, "1GiB")}, {"default": ("100Mbps", "1ms")}, source="b"
    )
    pm = pm_of(profile, cluster)
    assert local(profile, pm, "latency") == [(pm.devices.index("b"), [0, 1, 2, 3, 4])]
    assert evaluate_placement(profile, pm, local(profile, pm, "latency")).latency_s == pytest.approx(0.25)


def test_offload_picks_the_best_remote_for_each_objective() -> None:
    profile = chain([1.0], [1_000_000], input_bytes=1_000_000)
    cluster = make_cluster(
        {"src": (0.1, "1GiB"), "steady": (1.0, "1GiB"), "quick": (5.0, "1GiB"), "huge": (50.0, "1KiB")},
        {"default": ("10Mbps", "0ms"), "src-steady": ("10Mbps", "0ms"), "src-quick": ("7Mbps", "0ms")},
        source="src",
    )
    pm = pm_of(profile, cluster)
    steady, quick = pm.devices.index("steady"), pm.devices.index("quick")
    # steady: compute 1.0, transfers 0.8 + 0.8 -> bottleneck 1.0, latency 2.6
    # quick: compute 0.2, transfers 1.143 each -> bottleneck 1.143, latency 2.486; huge does not fit
    assert offload(profile, pm, "throughput") == [(steady, [0])]
    assert offload(profile, pm, "latency") == [(quick, [0])]
    for objective, attr in (("throughput", "bottleneck_s"), ("latency", "latency_s")):
        chosen = getattr(evaluate_placement(profile, pm, offload(profile, pm, objective)), attr)
        fitting = [
            getattr(c, attr)
            for d in range(pm.num_devices)
            if d != pm.source
            for c in [evaluate_placement(profile, pm, [(d, [0])])]
            if c.fits
        ]
        assert chosen == pytest.approx(min(fitting), rel=REL)


def test_offload_errors_without_a_usable_remote() -> None:
    profile = chain([0.1, 0.1], [1000, 1000], params=[10**9, 10**9])
    alone = make_cluster({"a": (1.0, "1GiB")}, {"default": ("1Gbps", "1ms")}, source="a")
    with pytest.raises(UserError, match="other than the source"):
        offload(profile, pm_of(profile, alone), "latency")
    small = make_cluster({"a": (1.0, "8GiB"), "b": (2.0, "1GiB")}, {"default": ("1Gbps", "1ms")}, source="a")
    with pytest.raises(UserError, match="fits on no single device"):
        offload(profile, pm_of(profile, small), "throughput")
    with pytest.raises(UserError, match="unknown objective"):
        offload(profile, pm_of(profile, small), "energy")


@pytest.mark.parametrize(("n_nodes", "sizes"), [(10, [4, 3, 3]), (9, [3, 3, 3]), (2, [1, 1]), (1, [1])])
def test_even_splits_contiguously_source_first(n_nodes: int, sizes: list[int]) -> None:
    profile = chain([0.1] * n_nodes, [1000] * n_nodes)
    cluster = make_cluster(
        {"a": (1.0, "1GiB"), "b": (2.0, "1GiB"), "c": (1.0, "1GiB")}, {"default": ("100Mbps", "1ms")}, source="b"
    )
    pm = pm_of(profile, cluster)
    placement = even(profile, pm, "throughput")
    order = [pm.devices.index(d) for d in ("b", "a", "c")]
    assert [d for d, _ in placement] == order[: len(sizes)]
    assert [len(nodes) for _, nodes in placement] == sizes
    assert [i for _, nodes in placement for i in nodes] == list(range(n_nodes))


def test_even_returns_a_split_that_does_not_fit() -> None:
    profile = chain([0.1] * 4, [1000] * 4, params=[2**30] * 4)
    cluster = make_cluster({"a": (1.0, "1GiB"), "b": (1.0, "1GiB")}, {"default": ("100Mbps", "1ms")}, source="a")
    pm = pm_of(profile, cluster)
    placement = even(profile, pm, "latency")
    assert [len(n) for _, n in placement] == [2, 2]
    assert not evaluate_placement(profile, pm, placement).fits


# --------------------------------------------------------------------------- neurosurgeon
def brute_force_single_cut(profile: Profile, pm: PipelineModel) -> float:
    L, best = len(profile.nodes), np.inf
    candidates = [[(pm.source, list(range(L)))]]
    for e in range(pm.num_devices):
        if e == pm.source:
            continue
        for p in range(L):
            candidates.append([part for part in [(pm.source, list(range(p))), (e, list(range(p, L)))] if part[1]])
    for placement in candidates:
        costs = evaluate_placement(profile, pm, placement)
        if costs.fits:
            best = min(best, costs.latency_s)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_neurosurgeon_is_the_best_single_cut(seed: int) -> None:
    rng = np.random.default_rng(seed)
    profile = random_dag(rng, int(rng.integers(2, 12)))
    # tight memory on some devices so that some cuts are refused
    cluster = random_cluster(rng, int(rng.integers(2, 5)), memory_kib=(1000, 6000))
    pm = pm_of(profile, cluster)
    expected = brute_force_single_cut(profile, pm)
    if not np.isfinite(expected):
        with pytest.raises(UserError, match="neurosurgeon"):
            neurosurgeon(profile, pm, "throughput")
        return
    placement = neurosurgeon(profile, pm, "throughput")
    costs = evaluate_placement(profile, pm, placement)
    assert costs.fits
    assert costs.latency_s == pytest.approx(expected, rel=REL)


def test_neurosurgeon_cuts_where_the_tensor_is_small() -> None:
    # The slow robot should run the stem, send the 10 kB bottleneck, and let the server do the rest.
    profile = chain([0.01, 0.01, 0.5, 0.5], [4_000_000, 10_000, 4_000_000, 1_000], input_bytes=4_000_000)
    pm = pm_of(profile, make_cluster(**ROBOT_SERVER))
    robot, server = pm.devices.index("robot"), pm.devices.index("server")
    assert neurosurgeon(profile, pm, "latency") == [(robot, [0, 1]), (server, [2, 3])]


def test_single_device_cuts_fall_back_to_local() -> None:
    profile = residual()
    pm = pm_of(profile, make_cluster({"a": (1.0, "1GiB")}, {"default": ("1Gbps", "1ms")}, source="a"))
    assert neurosurgeon(profile, pm, "latency") == [(0, list(range(7)))]
    assert dads(profile, pm, "latency") == [(0, list(range(7)))]


# --------------------------------------------------------------------------- dads
def closed_cuts(profile: Profile) -> list[list[int]]:
    """Every source-side node set closed under predecessors (remote side closed under successors)."""
    index = {n.name: i for i, n in enumerate(profile.nodes)}
    preds = [[index[r] for r in n.inputs if r != "input"] for n in profile.nodes]
    out = []
    for mask in range(1 << len(profile.nodes)):
        if all(not (mask >> i) & 1 or all((mask >> j) & 1 for j in preds[i]) for i in range(len(preds))):
            out.append([i for i in range(len(preds)) if (mask >> i) & 1])
    return out


def brute_force_dag_cut(profile: Profile, pm: PipelineModel) -> float:
    L, best = len(profile.nodes), np.inf
    for e in range(pm.num_devices):
        if e == pm.source:
            continue
        for s_side in closed_cuts(profile):
            t_side = [i for i in range(L) if i not in s_side]
            placement = [part for part in [(pm.source, s_side), (e, t_side)] if part[1]]
            best = min(best, latency(profile, pm, placement))
    return best


def dags_and_clusters() -> list[tuple[Profile, Cluster]]:
    cases = [(residual(), make_cluster(**ROBOT_SERVER)), (diamond(), make_cluster(**ROBOT_SERVER))]
    rng = np.random.default_rng(7)
    for _ in range(6):
        cases.append((random_dag(rng, int(rng.integers(2, 11))), random_cluster(rng, int(rng.integers(2, 4)))))
    for _ in range(16):
        n = int(rng.integers(2, 4))
        devices = {f"d{i}": (0.5 if i == 0 else float(rng.uniform(0.8, 1.5)), "4GiB") for i in range(n)}
        link = (f"{int(rng.integers(30, 150))}Mbps", f"{float(rng.uniform(0, 5)):.2f}ms")
        cases.append((shrinking_dag(rng, int(rng.integers(3, 11))), make_cluster(devices, {"default": link}, "d0")))
    return cases


def test_the_dag_cases_exercise_real_cuts() -> None:
    """Guard the brute-force comparison against only ever seeing all-local or full offload."""
    split = 0
    for profile, cluster in dags_and_clusters():
        split += len(dads(profile, pm_of(profile, cluster), "latency")) == 2
    assert split >= 6


@pytest.mark.parametrize(("profile", "cluster"), dags_and_clusters())
def test_dads_is_the_exact_minimum_dag_cut(profile: Profile, cluster: Cluster) -> None:
    pm = pm_of(profile, cluster)
    placement = dads(profile, pm, "throughput")
    got = latency(profile, pm, placement)
    assert got == pytest.approx(brute_force_dag_cut(profile, pm), rel=REL)
    # never worse than the best contiguous cut (memory is ample here)
    assert got <= latency(profile, pm, neurosurgeon(profile, pm, "latency")) * (1 + REL)


@pytest.mark.parametrize(("profile", "cluster"), dags_and_clusters())
def test_dads_cut_value_equals_the_cost_model(profile: Profile, cluster: Cluster) -> None:
    """The min-cut value (link latency charged once, output once) is evaluate_placement's latency."""
    pm = pm_of(profile, cluster)
    for e in range(pm.num_devices):
        if e == pm.source:
            continue
        value, s_side, t_side = dads_cut(profile, pm, e)
        placement = [part for part in [(pm.source, s_side), (e, t_side)] if part[1]]
        assert value == pytest.approx(latency(profile, pm, placement), rel=REL)


def test_dads_beats_neurosurgeon_on_a_diamond() -> None:
    """The heavy branch goes to the server while both cheap readers of the input stay home."""
    profile = diamond()
    pm = pm_of(profile, make_cluster(**ROBOT_SERVER))
    robot, server = pm.devices.index("robot"), pm.devices.index("server")
    placement = dads(profile, pm, "latency")
    assert placement == [(robot, [0, 2]), (server, [1, 3])]
    assert latency(profile, pm, placement) < latency(profile, pm, neurosurgeon(profile, pm, "latency")) * 0.6


def test_dads_charges_the_input_when_everything_is_offloaded() -> None:
    profile = chain([5.0, 5.0], [100, 100], input_bytes=1000)
    pm = pm_of(profile, make_cluster(**ROBOT_SERVER))
    server = pm.devices.index("server")
    assert dads(profile, pm, "latency") == [(server, [0, 1])]
    value, s_side, t_side = dads_cut(profile, pm, server)
    assert s_side == [] and t_side == [0, 1]
    assert value == pytest.approx(10.0 + 0.004 + 1000 * 8 / 50e6 + 100 * 8 / 50e6, rel=REL)


# --------------------------------------------------------------------------- pipedream
def homogeneous_cluster(rng: np.random.Generator, n: int, memory: str) -> Cluster:
    devices = {f"h{i}": (1.3, memory) for i in range(n)}
    link = (f"{int(rng.integers(50, 1000))}Mbps", f"{float(rng.uniform(0, 3)):.2f}ms")
    return make_cluster(devices, {"default": link}, source=f"h{int(rng.integers(0, n))}")


@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("seed", range(8))
def test_pipedream_is_optimal_on_a_homogeneous_cluster(objective: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    L = int(rng.integers(2, 14))
    out = [int(rng.integers(1_000, 3_000_000)) for _ in range(L)]
    out[-1] = 1_000  # the output is no bigger than the input: the source's stage comes first in an optimum
    profile = chain(
        [float(rng.uniform(0.01, 0.5)) for _ in range(L)],
        out,
        params=[int(rng.integers(0, 400_000)) for _ in range(L)],
        input_bytes=600_000,
    )
    cluster = homogeneous_cluster(rng, int(rng.integers(1, 6)), memory=f"{int(rng.integers(2000, 8000))}KiB")
    pm = pm_of(profile, cluster)
    try:
        exact = plan_pipeline(pm, objective)
    except UserError:
        with pytest.raises(UserError, match="pipedream"):
            pipedream(profile, pm, objective)
        return
    costs = evaluate_placement(profile, pm, pipedream(profile, pm, objective))
    assert costs.fits
    attr = "bottleneck_s" if objective == "throughput" else "latency_s"
    assert getattr(costs, attr) == pytest.approx(getattr(exact.costs, attr), rel=REL)


def test_pipedream_stages_follow_the_device_order() -> None:
    profile = chain([0.1] * 6, [1000] * 6)
    cluster = make_cluster(
        {"a": (1.0, "1GiB"), "b": (1.0, "1GiB"), "c": (1.0, "1GiB")}, {"default": ("1Gbps", "0.1ms")}, source="c"
    )
    pm = pm_of(profile, cluster)
    placement = pipedream(profile, pm, "throughput")
    assert [d for d, _ in placement] == [pm.devices.index(x) for x in ("c", "a", "b")]
    assert [len(n) for _, n in placement] == [2, 2, 2]
    # latency under identical devices: more stages only add transfers
    assert pipedream(profile, pm, "latency") == [(pm.devices.index("c"), list(range(6)))]


def test_pipedream_counts_the_output_trip_back() -> None:
    """Splitting two 1 s nodes would halve the compute, but the 31 MB output then takes 2.5 s home."""
    profile = chain([1.0, 1.0], [1000, 31_250_000])
    cluster = make_cluster({"a": (1.0, "1GiB"), "b": (1.0, "1GiB")}, {"default": ("100Mbps", "0ms")}, source="a")
    pm = pm_of(profile, cluster)
    placement = pipedream(profile, pm, "throughput")
    assert placement == [(pm.devices.index("a"), [0, 1])]
    assert evaluate_placement(profile, pm, placement).bottleneck_s == pytest.approx(2.0)


def test_pipedream_loses_to_the_exact_planner_on_heterogeneous_devices() -> None:
    """Assuming every device is the slow source, PipeDream splits evenly and starves the fast one."""
    profile = chain([0.1] * 12, [10_000] * 12)
    cluster = make_cluster(
        {"slow": (0.25, "4GiB"), "fast": (4.0, "4GiB"), "mid": (1.0, "4GiB")},
        {"default": ("1Gbps", "0.5ms")},
        source="slow",
    )
    pm = pm_of(profile, cluster)
    dream = evaluate_placement(profile, pm, pipedream(profile, pm, "throughput"))
    exact = plan_pipeline(pm, "throughput").costs
    assert dream.bottleneck_s > 1.5 * exact.bottleneck_s


def test_link_latency_counts_in_latency_not_in_the_bottleneck() -> None:
    """Four 1 s nodes, two identical boards 0.5 s of latency apart on a fast link: pipelining them
    halves the bottleneck (latency does not occupy the link) and costs one request 1 s of latency
    (there and back). PipeDream and offload now see it; so does the exact planner."""
    profile = chain([1.0] * 4, [1000] * 4, input_bytes=1000)
    cluster = make_cluster({"a": (1.0, "1GiB"), "b": (1.0, "1GiB")}, {"default": ("1Gbps", "500ms")}, source="a")
    pm = pm_of(profile, cluster)
    a, b = pm.devices.index("a"), pm.devices.index("b")
    occupancy = 1000 * 8 / 1e9
    dream = pipedream(profile, pm, "throughput")
    assert dream == [(a, [0, 1]), (b, [2, 3])]
    costs = evaluate_placement(profile, pm, dream)
    assert costs.bottleneck_s == pytest.approx(2.0)
    assert costs.link_in_s == pytest.approx([0.0, occupancy]) and costs.output_link_s == pytest.approx(occupancy)
    assert costs.transfer_in_s == pytest.approx([0.0, 0.5 + occupancy])
    assert costs.latency_s == pytest.approx(4.0 + 2 * (0.5 + occupancy))
    assert pipedream(profile, pm, "latency") == [(a, [0, 1, 2, 3])]  # 4 s beats 5 s for one request
    assert evaluate_placement(profile, pm, offload(profile, pm, "throughput")).bottleneck_s == pytest.approx(4.0)
    exact = plan_pipeline(pm, "throughput").costs
    assert exact.bottleneck_s == pytest.approx(2.0) and exact.latency_s == pytest.approx(costs.latency_s)


def test_pipedream_errors_when_the_homogeneous_model_cannot_hold_the_network() -> None:
    profile = chain([0.1] * 3, [1000] * 3, params=[2**30] * 3)
    cluster = make_cluster(
        {"small": (1.0, "1GiB"), "big": (1.0, "64GiB")}, {"default": ("1Gbps", "1ms")}, source="small"
    )
    with pytest.raises(UserError, match="pipedream.*copies of small"):
        pipedream(profile, pm_of(profile, cluster), "throughput")


def test_pipedream_is_fast_on_a_large_model() -> None:
    rng = np.random.default_rng(3)
    L = 900
    profile = chain(
        list(rng.uniform(0.001, 0.01, L)),
        [int(x) for x in rng.integers(1_000, 3_000_000, L)],
        params=[int(x) for x in rng.integers(0, 2_000_000, L)],
    )
    devices = {f"d{i}": (float(rng.uniform(0.2, 2.0)), "2GiB") for i in range(16)}
    pm = pm_of(profile, make_cluster(devices, {"default": ("1Gbps", "0.1ms")}, source="d0"))
    for objective in ("throughput", "latency"):
        started = time.perf_counter()
        placement = pipedream(profile, pm, objective)
        assert time.perf_counter() - started < 1.0
        assert [i for _, nodes in placement for i in nodes] == list(range(L))
