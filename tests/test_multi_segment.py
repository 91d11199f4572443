"""Multi-segment splits: split, exchange halos, split again (plan/band/multi.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.graph import GraphRunner, capture
from edgeweave.plan.band import HybridOptions, SegmentGeometry, hybrid_splits
from edgeweave.plan.band.multi import MultiSplit, build_multi_plan, cut_candidates, multi_segment_split
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.hybrid import plan_hybrid
from edgeweave.plan.ir import Plan
from edgeweave.runtime.dryrun import dry_run
from edgeweave.runtime.measure import RunConfig, run_plan
from edgeweave.sim.simulator import simulate


def cluster(bandwidth: str, speeds: dict[str, float], latency: str = "2ms") -> Cluster:
    return Cluster.from_dict(
        {
            "source": next(iter(speeds)),
            "devices": {d: {"speed": s, "memory": "8GiB"} for d, s in speeds.items()},
            "links": {"default": {"bandwidth": bandwidth, "latency": latency}},
        }
    )


def pinned(profile, graph, flops_per_s: float = 20e9):
    """The profile with each node's time from its FLOPs: planner tests must not depend on how
    loaded the machine was while profiling."""
    nodes = [
        n.model_copy(update={"time_s": g.flops / flops_per_s + 5e-6})
        for n, g in zip(profile.nodes, graph.nodes, strict=True)
    ]
    cheap = {"slowdown": 1.0, "overhead_s": 20e-6}  # a pinned band cost model, not this run's measurement
    return profile.model_copy(update={"nodes": nodes, "region_costs": {"rows": cheap, "cols": cheap}})


ROBOT_SERVER = {"robot": 0.25, "server": 1.0}
THREE = {"robot": 0.5, "server": 1.0, "jetson": 0.5}


@pytest.fixture(scope="module")
def models(zoo_graph):
    cache = {}

    def get(name: str, input_shape=None):
        key = (name, input_shape)
        if key not in cache:
            spec, graph, weights = zoo_graph(name, input_shape=input_shape)
            profile = profile_graph(graph, weights, spec.example_input, warmup=0, repeats=1)
            cache[key] = (spec, graph, weights, profile)
        return cache[key]

    return get


def forced_plan(profile, graph, cl: Cluster, joints: int, ratios: tuple[float, ...]) -> Plan:
    """The plan of the longest split at the frame with `joints` evenly spread joints, gathered on
    the last device (whatever it costs)."""
    pm = PipelineModel.build(profile, cl)
    geometry = SegmentGeometry(profile, graph)
    first, last = max(
        ((c.segment.first, c.segment.last) for c in geometry.costs() if c.segment.first == 0),
        key=lambda fl: fl[1],
    )
    cands = cut_candidates(geometry.multi, first, last, "rows")
    assert len(cands) >= joints
    cuts = tuple(cands[(k + 1) * len(cands) // (joints + 1)] for k in range(joints))
    split = MultiSplit(first, last, "rows", cuts, tuple(range(pm.num_devices)), ratios, pm.num_devices - 1, 4)
    return build_multi_plan(profile, graph, cl, pm, split, "latency", geometry.multi)


@pytest.mark.parametrize(
    ("name", "input_shape", "joints", "speeds", "ratios"),
    [
        ("resnet18", None, 2, ROBOT_SERVER, (0.4, 0.6)),
        ("keypoints_resnet18_fpn", (1, 3, 96, 128), 3, ROBOT_SERVER, (0.45, 0.55)),
        ("keypoints_resnet18_fpn", (1, 3, 96, 128), 2, THREE, (0.3, 0.4, 0.3)),
        ("mobilenet_v2", None, 3, THREE, (0.2, 0.5, 0.3)),
    ],
)
def test_multi_segment_plans_compute_exactly(models, name, input_shape, joints, speeds, ratios) -> None:
    """Every device computes its band of each sub-segment from its own rows of the previous one
    plus the halo rows its neighbours send: the result is single-device execution's."""
    spec, graph, weights, profile = models(name, input_shape)
    cl = cluster("100Mbps", speeds)
    plan = forced_plan(profile, graph, cl, joints, ratios)
    halos = [t for t in plan.transfer_tasks if t.id.startswith("halo")]
    assert len(halos) >= 2 * joints, [t.id for t in plan.tasks]  # each joint: both neighbours send rows
    assert all(t.region.bands for t in halos)
    expected = GraphRunner(graph, weights).run(spec.example_input)
    got = dry_run(plan, graph, weights, spec.example_input)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 2e-5


def test_halos_are_thin_rows_of_the_neighbours_band(models) -> None:
    """A halo carries only rows the receiver did not compute, from the neighbour that owns them."""
    _, graph, _, profile = models("keypoints_resnet18_fpn", (1, 3, 96, 128))
    cl = cluster("100Mbps", ROBOT_SERVER)
    plan = forced_plan(profile, graph, cl, 3, (0.5, 0.5))
    owns = {(t.device, tuple(t.region.segment)): t.region.own for t in plan.compute_tasks if t.region}
    halo_bytes = whole_bytes = 0
    for t in plan.transfer_tasks:
        if not t.id.startswith("halo"):
            continue
        sender_own = owns[t.src, tuple(t.region.segment)]
        for v, (lo, hi) in t.region.bands.items():
            a, b = sender_own[v]
            assert a <= lo < hi <= b  # rows the sender computed itself
        halo_bytes += t.bytes
        whole_bytes += sum(profile.value_bytes(v) for v in t.values)
    assert 0 < halo_bytes < 0.5 * whole_bytes  # edges of bands, not the maps


def test_multi_segment_plans_run_exactly_across_processes(models) -> None:
    spec, graph, weights, profile = models("keypoints_resnet18_fpn", (1, 3, 96, 128))
    cl = cluster("200Mbps", ROBOT_SERVER)
    plan = forced_plan(profile, graph, cl, 2, (0.4, 0.6))
    result = run_plan(plan, cl, graph, weights, RunConfig(requests=3, warmup=1, single=1))
    assert result["correct"] and result["max_abs_err"] <= 1e-5


class DeepStack(nn.Module):
    """48 3x3 convolutions at one resolution and a 1-channel head: a band's receptive field grows
    2 rows per layer, so recomputing halos from the frame costs far more than exchanging them."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
        for _ in range(47):
            layers += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(32, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def deep_stack():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 48, 64)
    graph, weights = capture(DeepStack().eval(), x, "deep_stack")
    profile = profile_graph(graph, weights, x, warmup=0, repeats=1)
    return x, graph, weights, profile


def test_the_planner_exchanges_halos_where_they_are_cheaper_than_recomputing(deep_stack) -> None:
    x, graph, weights, profile = deep_stack
    profile = pinned(profile, graph)
    cl = cluster("1Gbps", {"a": 1.0, "b": 1.0}, latency="0.1ms")
    plan = plan_hybrid(profile, graph, cl)
    assert plan.cost_model.get("joints"), plan.notes
    assert "halos exchanged" in plan.notes[-1]
    assert simulate(plan, requests=1).single_latency_s == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    pm = PipelineModel.build(profile, cl)
    single = min(c.latency_s for c in hybrid_splits(profile, graph, pm))
    assert plan.cost_model["latency_s"] < 0.97 * single  # it pays, under the cost model, against recomputing
    assert torch.allclose(dry_run(plan, graph, weights, x), GraphRunner(graph, weights).run(x), rtol=0, atol=1e-5)


def test_no_joint_where_feature_rows_cost_more_than_recomputing_from_the_frame(models) -> None:
    """On a robot's slow link a float32 feature row of a dense model (64 channels x 160 columns:
    41 KB) costs twenty uint8 frame rows: recomputing the halo from the frame wins, so no joint."""
    _, graph, _, profile = models("keypoints_resnet18_fpn", (1, 3, 96, 128))
    profile = pinned(profile, graph)
    cl = cluster("15Mbps", ROBOT_SERVER)
    pm = PipelineModel.build(profile, cl)
    base = min(hybrid_splits(profile, graph, pm), key=lambda c: c.latency_s)
    found = multi_segment_split(profile, graph, cl, pm, base, lambda p: simulate(p, requests=1).single_latency_s)
    assert found is None


def test_hand_given_choices_keep_a_single_segment(deep_stack) -> None:
    _, graph, _, profile = deep_stack
    cl = cluster("1Gbps", {"a": 1.0, "b": 1.0}, latency="0.1ms")
    plan = plan_hybrid(profile, graph, cl, options=HybridOptions(ratios=(0.5, 0.5)))
    assert not plan.cost_model.get("joints")


def test_values_that_skip_the_split_reach_the_suffix_device(models) -> None:
    """LR-ASPP's head reads an early feature map that no split segment outputs: a split whose
    suffix runs on the server must ship it there too (it did not, and the server failed)."""
    from edgeweave.plan.band import build_hybrid_plan
    from edgeweave.plan.band.emit import skipped_values

    spec, graph, weights, profile = models("lraspp_mobilenet_v3_large", (1, 3, 96, 128))
    cl = cluster("100Mbps", ROBOT_SERVER)
    pm = PipelineModel.build(profile, cl)
    choice = next(
        c
        for c in hybrid_splits(profile, graph, pm, options=HybridOptions(ratios=(0.5, 0.5)))
        if c.suffix_device != pm.source and skipped_values(graph, c.first, c.last)
    )
    plan = build_hybrid_plan(profile, graph, cl, pm, choice, "latency")
    skip = next(t for t in plan.tasks if t.id == "xskip")
    assert (
        skip.src == "robot" and skip.dst == "server" and skip.values == skipped_values(graph, choice.first, choice.last)
    )
    expected = GraphRunner(graph, weights).run(spec.example_input)
    assert torch.equal(dry_run(plan, graph, weights, spec.example_input), expected)
