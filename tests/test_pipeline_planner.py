"""The pipeline planner must return the true optimum of the design notes' cost model.

Checked against exhaustive enumeration of every contiguous partition and every injective device
assignment, on random instances with heterogeneous speeds, binding memory, asymmetric pairwise
links, identical devices (classes) and uniform links (the fast path).

The enumeration prices each plan with its own transcription of the design notes' model
(`design_costs`), not with `PipelineModel.evaluate`, so a planner and cost model that agreed on
a wrong model would still be caught: a link's time in the bottleneck is its occupancy
cut_bytes / bandwidth, while one request's latency pays latency + cut_bytes / bandwidth.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeweave.errors import UserError
from edgeweave.plan.costmodel import PipelineModel, Stage
from edgeweave.plan.pipeline import plan_pipeline
from edgeweave.plan.pipeline_latency import device_classes


def random_model(rng: np.random.Generator, L: int, N: int, kind: str) -> PipelineModel:
    speed = rng.uniform(0.2, 2.0, N)
    memory = rng.integers(30, 120, N) * 10
    bw = rng.uniform(5, 100, (N, N))
    lat = rng.uniform(0.0, 0.2, (N, N))
    if kind in ("uniform", "classes-uniform"):
        bw[:] = bw[0, 1] if N > 1 else 1.0
        lat[:] = lat[0, 1] if N > 1 else 0.0
    if kind.startswith("classes") and N >= 3:
        # devices 1..N-1 identical: same speed, memory and symmetric equal links
        speed[1:] = speed[1]
        memory[1:] = memory[1]
        bw[1:, :] = bw[1, 0]
        bw[:, 1:] = bw[0, 1]
        lat[1:, :] = lat[1, 0]
        lat[:, 1:] = lat[0, 1]
    np.fill_diagonal(bw, np.inf)
    np.fill_diagonal(lat, 0.0)
    times = rng.uniform(0.1, 3.0, L)
    device_times = None
    if kind == "profiles":  # each device measured on its own: times not proportional to one speed
        device_times = times[None, :] * rng.uniform(0.2, 4.0, (N, L))
        if N >= 3:  # two devices of one kind (one profile): still a class of the planner
            device_times[2] = device_times[1]
            speed[2], memory[2] = speed[1], memory[1]
    return PipelineModel(
        model="random",
        times=times,
        params=rng.integers(0, 400, L),
        out_bytes=rng.integers(1, 100, L),
        cut_bytes=rng.integers(1, 300, L + 1),
        devices=[f"d{i}" for i in range(N)],
        speed=speed,
        memory=memory,
        source=int(rng.integers(0, N)),
        bandwidth=bw,
        latency=lat,
        device_times=device_times,
    )


def node_times(pm: PipelineModel, device: int, start: int, end: int) -> float:
    """Compute time of nodes [start, end) on a device: its own profile's times where it has one
    (cluster `profile:`), else the reference times / speed (design notes, cluster YAML)."""
    if pm.device_times is not None:
        return float(pm.device_times[device, start:end].sum())
    return float(pm.times[start:end].sum()) / float(pm.speed[device])


def design_costs(pm: PipelineModel, stages: list[Stage]) -> tuple[float, float, bool]:
    """(bottleneck, latency, fits) of a stage list, written out from the design notes' model."""
    times: list[float] = []  # what one request waits for, summed
    busy: list[float] = []  # what one resource is held for per request, maxed
    fits = True
    prev = pm.source
    for s in stages:
        compute = node_times(pm, s.device, s.start, s.end)
        times.append(compute)
        busy.append(compute)
        if prev != s.device:
            occupancy = float(pm.cut_bytes[s.start]) / float(pm.bandwidth[prev, s.device])
            times.append(float(pm.latency[prev, s.device]) + occupancy)
            busy.append(occupancy)  # latency does not occupy the link
        memory = int(pm.params[s.start : s.end].sum()) + int(pm.out_bytes[s.start : s.end].max())
        fits &= memory <= int(pm.memory[s.device])
        prev = s.device
    if prev != pm.source:
        occupancy = float(pm.cut_bytes[pm.num_nodes]) / float(pm.bandwidth[prev, pm.source])
        times.append(float(pm.latency[prev, pm.source]) + occupancy)
        busy.append(occupancy)
    return max(busy), sum(times), fits


def all_plans(pm: PipelineModel):
    L, N = pm.num_nodes, pm.num_devices
    for k in range(1, min(L, N) + 1):
        for cuts in itertools.combinations(range(1, L), k - 1):
            bounds = [0, *cuts, L]
            for devs in itertools.permutations(range(N), k):
                yield [Stage(bounds[i], bounds[i + 1], devs[i]) for i in range(k)]


def brute_force(pm: PipelineModel, objective: str) -> float | None:
    best = None
    for stages in all_plans(pm):
        bottleneck, latency, fits = design_costs(pm, stages)
        if not fits:
            continue
        value = bottleneck if objective == "throughput" else latency
        best = value if best is None else min(best, value)
    return best


KINDS = ["general", "uniform", "classes", "classes-uniform", "profiles"]


@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("kind", KINDS)
def test_planner_matches_exhaustive_search(objective: str, kind: str) -> None:
    rng = np.random.default_rng(hash((objective, kind)) % 2**32)
    checked = infeasible = 0
    for _ in range(60):
        L, N = int(rng.integers(2, 8)), int(rng.integers(1, 5))
        pm = random_model(rng, L, N, kind)
        expected = brute_force(pm, objective)
        if expected is None:
            with pytest.raises(UserError, match="fits on no combination"):
                plan_pipeline(pm, objective)
            infeasible += 1
            continue
        sol = plan_pipeline(pm, objective)
        bottleneck, latency, fits = design_costs(pm, sol.stages)
        assert fits and sol.costs.fits
        # the planner's own figures are the design model's
        assert (sol.costs.bottleneck_s, sol.costs.latency_s) == pytest.approx((bottleneck, latency), rel=1e-12)
        got = bottleneck if objective == "throughput" else latency
        assert got == pytest.approx(expected, rel=1e-9), (L, N, sol.stages)
        checked += 1
    assert checked >= 30 and infeasible >= 1


def test_throughput_plan_is_refined_to_lowest_latency_among_optimal() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        pm = random_model(rng, int(rng.integers(3, 7)), int(rng.integers(2, 5)), "general")
        if brute_force(pm, "throughput") is None:
            continue
        sol = plan_pipeline(pm, "throughput")
        best_latency = None
        for stages in all_plans(pm):
            bottleneck, latency, fits = design_costs(pm, stages)
            if fits and bottleneck <= sol.costs.bottleneck_s * (1 + 1e-9):
                best_latency = latency if best_latency is None else min(best_latency, latency)
        assert sol.costs.latency_s == pytest.approx(best_latency, rel=1e-9)


def two_devices(latency_s: float) -> PipelineModel:
    """A slow source and a 4x faster helper on a fast link with `latency_s` of propagation delay."""
    return PipelineModel(
        model="toy",
        times=np.array([1.0, 1.0, 1.0, 1.0]),
        params=np.zeros(4, dtype=np.int64),
        out_bytes=np.full(4, 10),
        cut_bytes=np.full(5, 10),
        devices=["robot", "server"],
        speed=np.array([1.0, 4.0]),
        memory=np.array([10**6, 10**6]),
        source=0,
        bandwidth=np.array([[np.inf, 1000.0], [1000.0, np.inf]]),  # 10 bytes: 0.01 s on the link
        latency=np.array([[0.0, latency_s], [latency_s, 0.0]]),
    )


@pytest.mark.parametrize("kind", ["general", "uniform"])
def test_latency_does_not_occupy_the_link_in_the_throughput_objective(kind: str) -> None:
    """With 10 s of latency each way, offloading still pipelines at 1 request per second (the
    server's compute); only one request's latency pays the 20 s. Counting latency as occupancy
    would keep everything on the robot (bottleneck 4 s)."""
    pm = two_devices(10.0)
    if kind == "general":  # asymmetric links take the cut-set DP instead of the farthest-cut one
        pm.latency[1, 0] = 9.0
    sol = plan_pipeline(pm, "throughput")
    assert [s.device for s in sol.stages][-1] == 1
    assert sol.costs.bottleneck_s == pytest.approx(1.0)  # the server's 4 nodes at speed 4
    assert sol.costs.latency_s == pytest.approx(1.0 + 0.01 + 0.01 + pm.latency[0, 1] + pm.latency[1, 0])
    assert plan_pipeline(pm, "latency").stages == [Stage(0, 4, 0)]  # one request alone: 4 s locally


def test_identical_devices_form_classes() -> None:
    rng = np.random.default_rng(1)
    pm = random_model(rng, 5, 4, "classes")
    classes = device_classes(pm)
    assert sorted(len(c) for c in classes) in ([1, 3], [1, 1, 2])
    assert [pm.source] in classes


# --------------------------------------------------------------------------- beyond brute force
def reference_dp(pm: PipelineModel, objective: str) -> float | None:
    """An independent exact optimum for sizes brute force cannot reach: a dynamic programme over
    (set of used devices, last device) holding, for every cut, the best value of a prefix ending
    there. Written from the design notes like `design_costs`, not from the planner: min-max for
    the bottleneck, min-sum for latency, every device pair and cut priced on its own."""
    L, N = pm.num_nodes, pm.num_devices
    inf = float("inf")
    stage = np.full((N, L + 1, L + 1), inf)  # compute time of nodes [a, b) on d, inf if over memory
    for d in range(N):
        for a in range(L):
            for b in range(a + 1, L + 1):
                memory = int(pm.params[a:b].sum()) + int(pm.out_bytes[a:b].max())
                if memory <= int(pm.memory[d]):
                    stage[d, a, b] = node_times(pm, d, a, b)

    def link(a: int, b: int, cut: int) -> tuple[float, float]:  # (occupancy, transfer time)
        if a == b:
            return 0.0, 0.0
        occ = float(pm.cut_bytes[cut]) / float(pm.bandwidth[a, b])
        return occ, occ + float(pm.latency[a, b])

    combine = (lambda x, y: np.maximum(x, y)) if objective == "throughput" else (lambda x, y: x + y)
    pick = 0 if objective == "throughput" else 1
    best: dict[tuple[int, int], np.ndarray] = {}
    for d in range(N):
        best[(1 << d, d)] = combine(np.full(L + 1, link(pm.source, d, 0)[pick]), stage[d, 0])
    answer = inf
    for mask in range(1, 1 << N):
        for d in range(N):
            value = best.get((mask, d))
            if value is None:
                continue
            answer = min(answer, combine(value[L], link(d, pm.source, L)[pick]))
            for e in range(N):
                if mask >> e & 1:
                    continue
                into = np.array([link(d, e, c)[pick] for c in range(L + 1)])
                start = combine(value, into)
                start[0] = start[L] = inf  # stages meet at internal cuts only
                new = np.min(combine(start[:, None], stage[e]), axis=0)
                key = (mask | 1 << e, e)
                best[key] = np.minimum(best[key], new) if key in best else new
    return None if answer == inf else answer


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_planner_matches_reference_dp_beyond_brute_force(objective: str) -> None:
    """6-7 devices and 12-18 nodes, links binding at some cuts and not at others."""
    rng = np.random.default_rng(11 if objective == "throughput" else 12)
    checked = 0
    for trial in range(8):
        L, N = int(rng.integers(12, 19)), int(rng.integers(6, 8))
        pm = random_model(rng, L, N, ("general", "classes", "profiles")[trial % 3])
        pm.memory[:] = np.maximum(pm.memory, int(pm.params.sum()) // 3)  # a plan exists, memory still binds
        expected = reference_dp(pm, objective)
        if expected is None:
            continue
        sol = plan_pipeline(pm, objective)
        got = sol.costs.bottleneck_s if objective == "throughput" else sol.costs.latency_s
        assert got == pytest.approx(expected, rel=1e-9), (L, N, sol.stages)
        assert sol.stats["optimal"] and sol.stats["gap"] == 0.0
        checked += 1
    assert checked >= 6


def test_compiled_and_python_sweeps_agree() -> None:
    """The numba kernel and the plain-Python one are the same code; both find the optimum."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    for _ in range(6):
        pm = random_model(rng, int(rng.integers(8, 14)), int(rng.integers(5, 8)), "general")
        pm.memory[:] = int(pm.params.sum()) + int(pm.out_bytes.max())
        a = plan_pipeline(pm, engine="python", refine=False)
        b = plan_pipeline(pm, engine="numba", refine=False)
        assert a.costs.bottleneck_s == pytest.approx(b.costs.bottleneck_s, rel=1e-12)


def test_time_budget_reports_a_proven_gap() -> None:
    """Out of time, the planner returns its best plan, a lower bound no plan beats, and the gap."""
    rng = np.random.default_rng(3)
    pm = random_model(rng, 14, 7, "general")
    pm.memory[:] = int(pm.params.sum()) + int(pm.out_bytes.max())
    exact = plan_pipeline(pm)
    assert exact.stats["optimal"] and exact.stats["lower_bound_s"] == exact.costs.bottleneck_s
    rushed = plan_pipeline(pm, time_budget=0.0)
    assert rushed.costs.fits
    lower, value = rushed.stats["lower_bound_s"], rushed.costs.bottleneck_s
    assert lower <= exact.costs.bottleneck_s * (1 + 1e-9) <= value * (1 + 1e-9)
    assert rushed.stats["gap"] == pytest.approx((value - lower) / value)
    assert rushed.stats["optimal"] == (rushed.stats["gap"] == 0.0) or rushed.stats["optimal"] is False


def test_latency_objective_out_of_time_still_plans_and_bounds() -> None:
    rng = np.random.default_rng(9)
    pm = random_model(rng, 12, 6, "general")
    pm.memory[:] = int(pm.params.sum()) + int(pm.out_bytes.max())
    exact = plan_pipeline(pm, "latency")
    rushed = plan_pipeline(pm, "latency", time_budget=0.0)
    assert rushed.costs.fits and not rushed.stats["optimal"]
    assert rushed.stats["lower_bound_s"] <= exact.costs.latency_s * (1 + 1e-9) <= rushed.costs.latency_s * (1 + 1e-9)


def test_plan_command_reports_the_search(tmp_path) -> None:
    """`plan --json` says whether the pipeline plan is proven optimal, and how far it may be off."""
    import json

    from typer.testing import CliRunner

    from edgeweave.cli.app import app

    nodes, prev = [], "input"
    for i in range(8):
        node = {"name": f"n{i}", "time_s": 0.01 * (i + 1), "out_bytes": 4000, "param_bytes": 100, "inputs": [prev]}
        nodes.append(node)
        prev = f"n{i}"
    (tmp_path / "p.json").write_text(json.dumps({"model": "toy", "input_bytes": 4000, "nodes": nodes}))
    (tmp_path / "c.yaml").write_text(
        "source: a\ndevices:\n  a: {speed: 1, memory: 1GiB}\n  b: {speed: 2, memory: 1GiB}\n"
        "  c: {speed: 0.5, memory: 1GiB}\n"
        "links:\n  default: {bandwidth: 100Mbps, latency: 1ms}\n  a->b: {bandwidth: 20Mbps, latency: 3ms}\n"
    )
    args = ["plan", "--profile", str(tmp_path / "p.json"), "--cluster", str(tmp_path / "c.yaml")]
    args += ["--strategy", "pipeline", "--objective", "throughput", "--time-budget", "5", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    search = json.loads(result.stdout)["search"]
    assert search == {"optimal": True, "lower_bound_s": search["lower_bound_s"], "gap": 0.0, "time_budget_s": 5.0}
    bad = CliRunner().invoke(app, [*args[:-3], "--time-budget", "0", "--json"])
    assert isinstance(bad.exception, UserError) and "--time-budget must be > 0" in str(bad.exception)
