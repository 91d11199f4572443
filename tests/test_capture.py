"""Capture must be exact: running the operator graph node by node reproduces the model's output."""

from __future__ import annotations

import json

import pytest
import torch

from edgeweave.graph import GraphRunner, OpGraph, capture
from edgeweave.zoo import list_models, load_model

# Full-size models that capture in seconds; the big ViTs run at reduced depth here and at full
# size in the slow-marked test below (and in benchmarks/capture_zoo.py).
# Every zoo model at full size except the two big ViTs and the camera-resolution dense models,
# which capture here at a small frame (fcn_resnet50 at 480x640 is 325 GFLOPs per forward).
DENSE = [m["name"] for m in list_models() if m["family"] in ("segmentation", "keypoints")]
FAST = [m["name"] for m in list_models() if m["name"] not in ("vit_l_16", "vit_h_14", *DENSE)]
REDUCED = [("vit_l_16", {"num_layers": 2}), ("vit_h_14", {"num_layers": 2})]


def _check_exact(zoo_graph, name: str, **overrides) -> OpGraph:
    spec, graph, weights = zoo_graph(name, **overrides)
    with torch.no_grad():
        expected = spec.module(spec.example_input)
    got = GraphRunner(graph, weights).run(spec.example_input)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    # relative to the output's scale: the executor's packed convolutions (graph/kernels.py) sum in
    # another order than eager PyTorch; deep nets (resnet50, 152) reach ~1e-6 of the largest logit
    scale = max(1.0, float(expected.abs().max())) if expected.is_floating_point() else 1.0
    assert float((got - expected).abs().max()) <= 1e-5 * scale, (got - expected).abs().max()
    return graph


@pytest.mark.parametrize("name", FAST)
def test_zoo_model_captures_exactly(zoo_graph, name: str) -> None:
    graph = _check_exact(zoo_graph, name)
    assert len(graph) > 5
    assert all(n.out_bytes > 0 for n in graph.nodes)
    assert graph.total_flops > 0 and graph.total_param_bytes > 0


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("name", DENSE)
def test_dense_model_captures_exactly_at_a_small_frame(zoo_graph, name: str, labels: bool) -> None:
    if labels and name.startswith("keypoints"):
        pytest.skip("--labels is for segmentation")
    spec, graph, weights = zoo_graph(name, input_shape=(1, 3, 64, 96), labels=labels)
    with torch.no_grad():
        expected = spec.module(spec.example_input)
    got = GraphRunner(graph, weights).run(spec.example_input)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if labels:  # one class per pixel: identical, or a label flipped
        assert torch.equal(got, expected)
    else:  # relative: the executor's packed convolutions sum in another order than eager (~2e-6 here)
        assert float((got - expected).abs().max()) <= 2e-5 * float(expected.abs().max())
    ops = {n.op for n in graph.nodes}
    assert ops & {"aten.upsample_bilinear2d.vec", "aten.upsample_nearest2d.vec"}  # resized back to the frame
    last = graph.nodes[-1]
    if labels:  # the label map: argmax over classes, cast to uint8
        assert last.op == "aten._to_copy.default" and last.out_dtype == "uint8" and last.out_shape == [1, 64, 96]
        assert last.out_bytes == 64 * 96


@pytest.mark.parametrize("name,overrides", REDUCED)
def test_large_vit_captures_exactly_at_reduced_depth(zoo_graph, name: str, overrides: dict) -> None:
    _check_exact(zoo_graph, name, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_l_16", "vit_h_14"])
def test_large_vit_captures_exactly_at_full_size(zoo_graph, name: str) -> None:
    _check_exact(zoo_graph, name)


def test_flops_and_params_match_known_values() -> None:
    spec = load_model("resnet18")
    graph, _ = capture(spec.module, spec.example_input, spec.name)
    # resnet18 at 224x224: 1.82 GMACs, 11.69 M parameters (fp32)
    assert graph.total_flops == pytest.approx(2 * 1.82e9, rel=0.01)
    # every batch norm is folded into its convolution: its scale and shift (2 values per channel)
    # and running statistics become the convolution's bias (1 per channel)
    norm_channels = sum(m.num_features for m in spec.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert graph.total_param_bytes == (11_689_512 - 2 * norm_channels + norm_channels) * 4
    conv1 = graph.nodes[0]
    assert conv1.op == "aten.conv2d.default" and conv1.out_shape == [1, 64, 112, 112]
    assert conv1.flops == 2 * 64 * 112 * 112 * 3 * 7 * 7
    assert conv1.inputs == ["input"] and conv1.param_bytes == (64 * 3 * 7 * 7 + 64) * 4  # weights, folded bias


def test_graph_round_trips_through_json_and_runs_from_a_stage() -> None:
    spec = load_model("resnet18")
    graph, weights = capture(spec.module, spec.example_input, spec.name)
    again = OpGraph.from_dict(json.loads(json.dumps(graph.to_dict())))
    expected = GraphRunner(graph, weights).run(spec.example_input)
    # Run the first half on one runner and the rest on another that holds only its own weights.
    half = len(again) // 2
    first = GraphRunner(again, weights, range(half))
    env = first.run_nodes(range(half), {"input": spec.example_input}, keep=set())
    needed = {w for n in again.nodes[half:] for w in n.weights}
    second = GraphRunner(again, {k: weights[k] for k in needed}, range(half, len(again)))
    env = second.run_nodes(range(half, len(again)), env, keep={again.nodes[-1].name})
    assert torch.equal(env[again.nodes[-1].name], expected)


def test_no_inplace_ops_or_getitems_of_single_use_tuples() -> None:
    spec = load_model("resnet18")
    graph, _ = capture(spec.module, spec.example_input, spec.name)
    ops = {n.op for n in graph.nodes}
    assert not any(op.split(".")[1].endswith("_") for op in ops if op.startswith("aten."))
    assert "getitem" not in ops


def test_batch_norms_fold_into_their_convolutions_and_others_stay() -> None:
    """A norm after a convolution becomes its weights (one node, one call, wherever it runs);
    a norm of anything else stays a node that reads one element of its tuple."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = torch.nn.BatchNorm2d(3)
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=True)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(self.pre(x))))

    torch.manual_seed(0)
    net = Net().eval()
    for bn in (net.pre, net.bn):  # not the identity statistics of a fresh norm
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, 10, 12)
    graph, weights = capture(net, x, "net")
    assert [n.op.split(".")[1] for n in graph.nodes] == ["_native_batch_norm_legit_no_training", "conv2d", "relu"]
    assert graph.nodes[0].out_index == 0 and not graph.nodes[0].is_tuple
    assert not any("bn." in k for k in weights)  # the folded norm's tensors are not shipped
    with torch.no_grad():
        expected = net(x)
    assert torch.allclose(GraphRunner(graph, weights).run(x), expected, rtol=1e-5, atol=1e-6)


def test_uncapturable_model_gives_one_line_error() -> None:
    from edgeweave.errors import UserError

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow
                return x * 2
            return x

    with pytest.raises(UserError, match="torch.export cannot capture") as info:
        capture(DataDependent(), torch.randn(1, 3), "dd")
    assert "\n" not in str(info.value)
