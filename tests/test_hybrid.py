"""Hybrid plans: band splits chosen by the planner, costed by the simulator, and exact when executed."""

from __future__ import annotations

import pytest
import torch

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.cost.region_overhead import DEFAULT_REGION_COSTS, _fit
from edgeweave.errors import UserError
from edgeweave.graph import GraphRunner
from edgeweave.plan.band import HybridOptions, SegmentGeometry, region_costs
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


@pytest.mark.parametrize("bandwidth", ["100Mbps", "200Mbps"])
def test_hybrid_splits_and_beats_every_layerwise_plan(profiled, bandwidth: str) -> None:
    _, graph, _, measured = profiled("resnet18")
    cheap = {"slowdown": 1.0, "overhead_s": 90e-6}  # a pinned band cost model, not this run's measurement
    profile = measured.model_copy(update={"region_costs": {"rows": cheap, "cols": cheap}})
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
        assert {t.region.axis for t in split} == {"cols"}  # width only
        assert grid.cost_model["ratios"][0] in (0.0, 0.5, 0.6, 0.7, 1.0)
        assert not any(t.id.endswith(".1") for t in split)  # no streaming chunks
    ours = simulate(make_plan(profile, cluster, "hybrid", "latency", graph), requests=1).single_latency_s
    assert ours <= simulate(grid, requests=1).single_latency_s * 1.0001


# -- hand-given choices, re-planning, and the real cost of small bands ---------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (HybridOptions(ratios=(0.3,)), "1 split ratios given for 2 devices; give one per device in this order: robot"),
        (HybridOptions(ratios=(0.5, 0.6)), "split ratios must add up to 1"),
        (HybridOptions(ratios=(-0.5, 1.5)), "split ratios must be finite and >= 0"),
        (HybridOptions(ratios=(1.0, 0.0)), "everything to one device"),
        (HybridOptions(chunks=0), "chunk count 0 must be between 1 and 64"),
        (HybridOptions(axis="depth"), "split axis 'depth' is not one of rows, cols"),
    ],
)
def test_hand_given_choices_that_cannot_work_are_one_line_errors(profiled, options, message: str) -> None:
    _, graph, _, profile = profiled("resnet18")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_hybrid(profile, graph, robot_server("50Mbps"), options=options)


def test_hand_given_ratios_chunks_and_axis_are_obeyed(profiled) -> None:
    spec, graph, weights, profile = profiled("resnet18")
    plan = plan_hybrid(profile, graph, robot_server("50Mbps"), options=HybridOptions((0.3, 0.7), 4, "rows"))
    assert plan.cost_model["axis"] == "rows" and plan.cost_model["chunks"] == 4
    assert plan.cost_model["ratios"] == pytest.approx([0.3, 0.7], abs=0.05)  # whole rows of the segment output
    assert simulate(plan, requests=1).single_latency_s == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    got = dry_run(plan, graph, weights, spec.example_input)
    assert torch.allclose(got, GraphRunner(graph, weights).run(spec.example_input), rtol=1e-4, atol=1e-4)


def test_a_model_without_local_operators_falls_back_and_says_why(profiled) -> None:
    _, graph, _, profile = profiled("resnet18")
    empty = SegmentGeometry(profile, graph)
    empty._costs = []  # as for a model whose every operator is a barrier
    plan = plan_hybrid(profile, graph, robot_server("50Mbps"), geometry=empty)
    assert "no segment of local operators to split" in plan.notes[-1] and not any(t.region for t in plan.tasks)
    with pytest.raises(UserError, match="no segment of local operators that can be split along rows"):
        plan_hybrid(profile, graph, robot_server("50Mbps"), geometry=empty, options=HybridOptions(axis="rows"))


def test_replanning_with_kept_geometry_gives_the_same_plans(profiled) -> None:
    _, graph, _, profile = profiled("resnet18")
    geometry = SegmentGeometry(profile, graph)
    for bandwidth in ("10Mbps", "50Mbps", "200Mbps", "50Mbps"):
        cluster = robot_server(bandwidth)
        again = plan_hybrid(profile, graph, cluster, geometry=geometry)
        fresh = plan_hybrid(profile, graph, cluster)
        assert again.model_dump() == fresh.model_dump()


def test_band_tasks_cost_a_measured_slowdown_and_price_per_node(profiled) -> None:
    _, graph, _, profile = profiled("resnet18")
    measured = profile.model_extra["region_costs"]
    for axis in ("rows", "cols"):
        slowdown, overhead = region_costs(profile, axis)
        assert (slowdown, overhead) == (measured[axis]["slowdown"], measured[axis]["overhead_s"])
        floor = DEFAULT_REGION_COSTS[axis]
        assert floor["slowdown"] <= slowdown <= 4.0 and floor["overhead_s"] <= overhead <= 2e-3
    # the fit recovers both from exact points
    points = [(w, n, 1.3 * w + 5e-5 * n) for w, n in [(0.002, 10), (0.004, 12), (0.01, 20), (0.02, 30)]]
    assert _fit(points) == pytest.approx((1.3, 5e-5), rel=1e-6)
    free = {"rows": {"slowdown": 1.0, "overhead_s": 0.0}, "cols": {"slowdown": 1.0, "overhead_s": 0.0}}
    cheap = profile.model_copy(update={"region_costs": free})
    options = HybridOptions((0.5, 0.5), 2, "rows")
    plan0 = plan_hybrid(cheap, graph, robot_server("50Mbps"), options=options)
    plan1 = plan_hybrid(profile, graph, robot_server("50Mbps"), options=options)
    if plan0.cost_model["segment"] == plan1.cost_model["segment"]:
        band0 = {t.id: t.time_s for t in plan0.compute_tasks if t.region}
        band1 = {t.id: t.time_s for t in plan1.compute_tasks if t.region}
        assert all(band1[k] >= band0[k] for k in band0)


def test_a_device_with_its_own_profile_is_priced_at_its_own_pace(profiled, tmp_path) -> None:
    """A robot that carries a profile measured on it (here: every node 4x the reference) gets the
    same band plans as a robot declared at speed 0.25, in every band planner."""
    _, graph, _, profile = profiled("resnet18")
    slow = profile.model_copy(update={"nodes": [n.model_copy(update={"time_s": 4 * n.time_s}) for n in profile.nodes]})
    slow.save(tmp_path / "robot.json")
    declared = robot_server("100Mbps")
    spec = {
        "source": "robot",
        "devices": {
            "robot": {"speed": 1.0, "memory": "4GiB", "profile": str(tmp_path / "robot.json")},
            "server": {"speed": 1.0, "memory": "16GiB"},
        },
        "links": {"default": {"bandwidth": "100Mbps", "latency": "2ms"}},
    }
    profiled_cluster = Cluster.from_dict(spec)
    for strategy in ("hybrid", "stream-offload", "tensor"):
        a = make_plan(profile, declared, strategy, "latency", graph)
        b = make_plan(profile, profiled_cluster, strategy, "latency", graph)
        assert [(t.id, t.device if t.kind == "compute" else t.dst) for t in a.tasks] == [
            (t.id, t.device if t.kind == "compute" else t.dst) for t in b.tasks
        ], strategy
        for ta, tb in zip(a.compute_tasks, b.compute_tasks, strict=True):
            assert ta.time_s == pytest.approx(tb.time_s, rel=1e-9), (strategy, ta.id)
