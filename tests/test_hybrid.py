"""Hybrid plans: band splits chosen by the planner, costed by the simulator, and exact when executed."""

from __future__ import annotations

import pytest

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.graph import GraphRunner
from edgeweave.plan.hybrid import plan_hybrid
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.dryrun import dry_run
from edgeweave.sim.simulator import simulate


def robot_server(bandwidth: str, helpers: int = 1) -> Cluster:
    devices = {"robot": {"speed": 0.25, "memory": "4GiB"}}
    for k in range(helpers):
        devices[f"server{k}" if helpers > 1 else "server"] = {"speed": 1.0 / (k + 1), "memory": "16GiB"}
    return Cluster.from_dict(
        {"source": "robot", "devices": devices, "links": {"default": {"bandwidth": bandwidth, "latency": "2ms"}}}
    )


@pytest.fixture(scope="module")
def profiled(zoo_graph):
    cache = {}

    def get(name: str):
        if name not in cache:
            spec, graph, weights = zoo_graph(name)
            cache[name] = (spec, graph, weights, profile_graph(graph, weights, spec.example_input, warmup=1, repeats=2))
        return cache[name]

    return get


@pytest.mark.parametrize("bandwidth", ["25Mbps", "50Mbps", "100Mbps"])
def test_hybrid_splits_and_beats_every_layerwise_plan(profiled, bandwidth: str) -> None:
    _, graph, _, profile = profiled("resnet18")
    cluster = robot_server(bandwidth)
    plan = plan_hybrid(profile, graph, cluster)
    assert plan.strategy == "hybrid" and any(t.region for t in plan.tasks), plan.notes
    hybrid = simulate(plan, requests=1).single_latency_s
    assert hybrid == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    for strategy in ("local", "offload", "neurosurgeon", "dads"):
        other = simulate(make_plan(profile, cluster, strategy, "latency"), requests=1).single_latency_s
        assert hybrid < other, (strategy, hybrid, other)


def test_hybrid_falls_back_to_layerwise_when_splitting_does_not_pay(profiled) -> None:
    _, graph, _, profile = profiled("resnet18")
    plan = plan_hybrid(profile, graph, robot_server("2Mbps"))
    assert plan.strategy == "hybrid" and not any(t.region for t in plan.tasks)
    assert "no band split beats" in plan.notes[-1]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "convnext_tiny"])
@pytest.mark.parametrize("helpers", [1, 2])
def test_hybrid_plans_compute_exactly(profiled, name: str, helpers: int) -> None:
    spec, graph, weights, profile = profiled(name)
    plan = plan_hybrid(profile, graph, robot_server("100Mbps", helpers))
    expected = GraphRunner(graph, weights).run(spec.example_input)
    got = dry_run(plan, graph, weights, spec.example_input)
    scale = expected.abs().max()
    assert float((got - expected).abs().max() / scale) <= 2e-5


def test_hybrid_grid_is_the_published_restricted_search(profiled) -> None:
    _, graph, _, profile = profiled("resnet18")
    cluster = robot_server("50Mbps")
    grid = make_plan(profile, cluster, "hybrid-grid", "latency", graph)
    assert grid.strategy == "hybrid-grid"
    split = [t for t in grid.tasks if t.region is not None]
    if split:
        assert {t.region["axis"] for t in split} == {"cols"}  # width only
        assert grid.cost_model["ratios"][0] in (0.0, 0.5, 0.6, 0.7, 1.0)
        assert not any(t.id.endswith(".1") for t in split)  # no streaming chunks
    ours = simulate(make_plan(profile, cluster, "hybrid", "latency", graph), requests=1).single_latency_s
    assert ours <= simulate(grid, requests=1).single_latency_s * 1.0001
