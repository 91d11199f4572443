"""The pipeline planner must return the true optimum of the design notes' cost model.

Checked against exhaustive enumeration of every contiguous partition and every injective device
assignment, on random instances with heterogeneous speeds, binding memory, asymmetric pairwise
links, identical devices (classes) and uniform links (the fast path).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeweave.errors import UserError
from edgeweave.plan.costmodel import PipelineModel, Stage
from edgeweave.plan.pipeline import device_classes, plan_pipeline


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
    return PipelineModel(
        model="random",
        times=rng.uniform(0.1, 3.0, L),
        params=rng.integers(0, 400, L),
        out_bytes=rng.integers(1, 100, L),
        cut_bytes=rng.integers(1, 300, L + 1),
        devices=[f"d{i}" for i in range(N)],
        speed=speed,
        memory=memory,
        source=int(rng.integers(0, N)),
        bandwidth=bw,
        latency=lat,
    )


def brute_force(pm: PipelineModel, objective: str) -> float | None:
    L, N = pm.num_nodes, pm.num_devices
    best = None
    for k in range(1, min(L, N) + 1):
        for cuts in itertools.combinations(range(1, L), k - 1):
            bounds = [0, *cuts, L]
            for devs in itertools.permutations(range(N), k):
                stages = [Stage(bounds[i], bounds[i + 1], devs[i]) for i in range(k)]
                c = pm.evaluate(stages)
                if not c.fits:
                    continue
                value = c.bottleneck_s if objective == "throughput" else c.latency_s
                best = value if best is None else min(best, value)
    return best


KINDS = ["general", "uniform", "classes", "classes-uniform"]


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
        got = sol.costs.bottleneck_s if objective == "throughput" else sol.costs.latency_s
        assert sol.costs.fits
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
        for k in range(1, min(pm.num_nodes, pm.num_devices) + 1):
            for cuts in itertools.combinations(range(1, pm.num_nodes), k - 1):
                bounds = [0, *cuts, pm.num_nodes]
                for devs in itertools.permutations(range(pm.num_devices), k):
                    c = pm.evaluate([Stage(bounds[i], bounds[i + 1], devs[i]) for i in range(k)])
                    if c.fits and c.bottleneck_s <= sol.costs.bottleneck_s * (1 + 1e-9):
                        best_latency = c.latency_s if best_latency is None else min(best_latency, c.latency_s)
        assert sol.costs.latency_s == pytest.approx(best_latency, rel=1e-9)


def test_identical_devices_form_classes() -> None:
    rng = np.random.default_rng(1)
    pm = random_model(rng, 5, 4, "classes")
    classes = device_classes(pm)
    assert sorted(len(c) for c in classes) in ([1, 3], [1, 1, 2])
    assert [pm.source] in classes
