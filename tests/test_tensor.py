"""The `tensor` baseline: every layer split across devices and gathered on the source after each.

Profiles here are deterministic (time from FLOPs) so the planner's choices are fixed values; the
models are reduced to 64x64 inputs to stay fast.
"""

from __future__ import annotations

import pytest

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.graph import GraphRunner
from edgeweave.graph.locality import base
from edgeweave.plan.strategies import make_plan
from edgeweave.plan.tensor import HEAVY, find_layers
from edgeweave.runtime.dryrun import dry_run
from edgeweave.runtime.measure import RunConfig, run_plan
from edgeweave.sim.simulator import simulate

SMALL = {"input_shape": (1, 3, 64, 64)}


def flops_profile(graph) -> Profile:
    """Times proportional to FLOPs (2 GFLOP/s at speed 1) and fixed band costs (no slowdown, 90 us
    per node per band task): the same profile on every run."""
    nodes = [
        {
            "name": n.name,
            "time_s": 1e-6 + n.flops / 2e9,
            "out_bytes": n.out_bytes,
            "param_bytes": n.param_bytes,
            "inputs": n.inputs,
        }
        for n in graph.nodes
    ]
    band = {"slowdown": 1.0, "overhead_s": 90e-6}
    return Profile.model_validate(
        {
            "model": graph.model,
            "input_bytes": graph.input_bytes,
            "nodes": nodes,
            "region_costs": {"rows": band, "cols": band},
        }
    )


def boards(n: int, bandwidth: str, latency: str = "1ms") -> Cluster:
    """n equal slow boards (speed 0.1); d0 is the source."""
    devices = {f"d{k}": {"speed": 0.1, "memory": "1GiB"} for k in range(n)}
    return Cluster.from_dict(
        {"source": "d0", "devices": devices, "links": {"default": {"bandwidth": bandwidth, "latency": latency}}}
    )


def test_a_layer_is_a_heavy_op_with_its_trailing_elementwise_ops(zoo_graph) -> None:
    _, graph, _ = zoo_graph("resnet18", **SMALL)
    layers = find_layers(graph)
    assert len(layers) == 21
    assert layers[:4] == [(0, 1, "rows"), (2, 2, "rows"), (3, 4, "rows"), (5, 7, "rows")]  # conv+relu, pool, ...
    ops = [[base(graph.nodes[i].op)[0] for i in range(a, b + 1)] for a, b, _ in layers]
    assert ops[0] == ["conv2d", "relu"]  # batch norms are folded into their convolutions at capture
    assert ops[3] == ["conv2d", "add", "relu"]  # the residual add fused
    assert all(o[0] in HEAVY and not set(o[1:]) & HEAVY for o in ops)


def test_two_equal_devices_on_a_fast_link_halve_every_split_layer(zoo_graph) -> None:
    _, graph, _ = zoo_graph("resnet18", **SMALL)
    profile = flops_profile(graph)
    cluster = boards(2, "100Gbps", "0ms")
    plan = make_plan(profile, cluster, "tensor", "latency", graph)
    rows = [tuple(layer["rows"].values()) for layer in plan.cost_model["layers"]]
    split = [r for r in rows if r[1] > 0]
    assert len(split) == 17 and all(a == b for a, b in split)  # 16/16, 8/8, ..., 1/1
    assert all(r[1] == 0 for r in rows if r not in split)  # the rest (max pool, 1x1 downsample) stays whole
    latency = simulate(plan, requests=1).single_latency_s
    assert latency == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    local = simulate(make_plan(profile, cluster, "local", "latency"), requests=1).single_latency_s
    assert latency == pytest.approx(0.797634, rel=1e-4) and local == pytest.approx(1.488065, rel=1e-4)


def test_a_slow_link_keeps_every_layer_on_the_source(zoo_graph) -> None:
    _, graph, _ = zoo_graph("resnet18", **SMALL)
    profile = flops_profile(graph)
    cluster = boards(3, "1Mbps")
    plan = make_plan(profile, cluster, "tensor", "latency", graph)
    assert plan.devices == ["d0"] and not plan.transfer_tasks and len(plan.tasks) == 1
    local = make_plan(profile, cluster, "local", "latency")
    assert simulate(plan, requests=1).single_latency_s == pytest.approx(simulate(local, requests=1).single_latency_s)


@pytest.mark.parametrize("name,splits", [("resnet18", 17), ("mobilenet_v2", 15)])
def test_tensor_plans_simulate_and_compute_exactly(zoo_graph, name: str, splits: int) -> None:
    spec, graph, weights = zoo_graph(name, **SMALL)
    profile = flops_profile(graph)
    plan = make_plan(profile, boards(3, "1Gbps"), "tensor", "latency", graph)
    split = [layer for layer in plan.cost_model["layers"] if layer["rows"]["d0"] < sum(layer["rows"].values())]
    assert len(split) == splits and plan.devices == ["d0", "d1", "d2"]
    assert any(all(r > 0 for r in layer["rows"].values()) for layer in split)  # some layer uses all three
    assert simulate(plan, requests=1).single_latency_s == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    assert simulate(plan, requests=5).requests == 5  # a stream replays without deadlock
    expected = GraphRunner(graph, weights).run(spec.example_input)
    got = dry_run(plan, graph, weights, spec.example_input)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 2e-5


def test_tensor_plan_runs_exactly_across_processes(zoo_graph) -> None:
    """Many split segments in one plan: bands of one value from several layers meet on a device."""
    _, graph, weights = zoo_graph("resnet18", **SMALL)
    cluster = boards(3, "1Gbps")
    plan = make_plan(flops_profile(graph), cluster, "tensor", "latency", graph)
    result = run_plan(plan, cluster, graph, weights, RunConfig(requests=2, warmup=1, single=1))
    assert result["correct"] and result["max_abs_err"] <= 1e-5
    assert {d for d, use in result["devices"].items() if use["tasks"]} == {"d0", "d1", "d2"}
