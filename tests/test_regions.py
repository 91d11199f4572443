"""Exact region execution: bands computed on 2-4 devices concatenate to the unsplit result.

Property-tested with random split ratios, device counts, split axes and sub-ranges of every
local run, on every zoo CNN, on vit_b_16 (split along tokens) and on the dense models
(segmentation, with and without --labels, and keypoints) at a small input.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.graph import GraphRunner
from edgeweave.graph.locality import Window
from edgeweave.graph.opgraph import INPUT
from edgeweave.graph.regions import (
    Band,
    chunk_bands,
    input_bands,
    local_runs,
    make_segment,
    own_bands,
    run_bands,
    split_bands,
)
from edgeweave.zoo import list_models

MODELS = [m["name"] for m in list_models() if m["family"] == "cnn"] + ["vit_b_16"]
DENSE_FAMILIES = ("segmentation", "keypoints")
DENSE = [m["name"] for m in list_models() if m["family"] in DENSE_FAMILIES]
SMALL_FRAME = (1, 3, 64, 96)  # every dense model takes it; 1/16 of it is still 4x6
# (name, --labels): every dense model as it is, and the segmentation ones ending in labels
DENSE_CASES = [(n, False) for n in DENSE] + [(n, True) for n in DENSE if not n.startswith("keypoints")]
# Relative to the largest magnitude: convolutions on a band may pick another kernel and sum in a
# different order than on the whole tensor (seen: ~2e-6); anything wrong is off by O(1).
RTOL = 2e-5


@pytest.fixture(scope="module")
def every_value(zoo_graph):
    cache = {}

    def get(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            spec, graph, weights = zoo_graph(name, **options)
            runner = GraphRunner(graph, weights)
            env = {INPUT: spec.example_input}
            with torch.no_grad():
                for i, node in enumerate(graph.nodes):
                    env[node.name] = runner.compiled[i](env)
            cache.clear()  # keep one model's activations at a time
            cache[key] = (graph, weights, env)
        return cache[key]

    return get


def check_split(graph, weights, env, first: int, last: int, axis: str, ratios: list[float]) -> int:
    segment = make_segment(graph, first, last, axis)
    assert segment is not None
    with torch.no_grad():
        parts = [run_bands(segment, weights, env, own) for own in own_bands(segment, ratios)]
        own = own_bands(segment, ratios)[0]
        streamed = wavefront_bands(segment, weights, env, own, chunks=3)  # the first band, as a wavefront
    for v, band in parts[0].items():
        assert band.start == streamed[v].start and band.tensor.shape == streamed[v].tensor.shape, v
        assert close(band.tensor, streamed[v].tensor), v
    for v in segment.outputs:
        pieces = [p[v].tensor for p in parts if v in p]
        joined = torch.cat(pieces, dim=segment.axis(v))
        assert joined.shape == env[v].shape and joined.dtype == env[v].dtype
        assert close(joined, env[v]), (v, first, last, axis, ratios)
    return len(segment.outputs)


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Floats within RTOL of the largest magnitude; integers (labels, indices) identical."""
    if not want.is_floating_point():
        return torch.equal(got, want)
    scale = want.abs().max().clamp_min(1e-6)
    return float((got - want).abs().max() / scale) <= RTOL


def wavefront_bands(segment, weights, env, own, chunks: int) -> dict:
    """`own` computed in `chunks` consecutive pieces sharing one wavefront state, joined again."""
    state: dict = {}
    pieces: dict[str, list] = {}
    for sub in chunk_bands(own, chunks):
        for v, band in run_bands(segment, weights, env, sub, state).items():
            pieces.setdefault(v, []).append(band)
    return {v: Band(torch.cat([p.tensor for p in ps], dim=segment.axis(v)), ps[0].start) for v, ps in pieces.items()}


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bands_concatenate_to_the_unsplit_result(every_value, name: str, data) -> None:
    graph, weights, env = every_value(name)
    axes = ["rows"] if name.startswith("vit") else ["rows", "cols"]
    axis = data.draw(st.sampled_from(axes))
    runs = local_runs(graph, axis)
    assert runs, f"{name} has no local run"
    first, last = data.draw(st.sampled_from(runs))
    if data.draw(st.booleans()):  # any valid sub-range is a segment too
        while True:
            a = data.draw(st.integers(first, last))
            b = data.draw(st.integers(a, last))
            if make_segment(graph, a, b, axis) is not None:
                first, last = a, b
                break
    devices = data.draw(st.integers(2, 4))
    ratios = data.draw(st.lists(st.floats(0.02, 1.0), min_size=devices, max_size=devices))
    assert check_split(graph, weights, env, first, last, axis, ratios) >= 1


@pytest.mark.parametrize(
    ("name", "labels"), DENSE_CASES, ids=[f"{n}{'+labels' if lb else ''}" for n, lb in DENSE_CASES]
)
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_dense_model_bands_concatenate_to_the_unsplit_result(every_value, name: str, labels: bool, data) -> None:
    """The same property on camera-style models: resizing, dilated and transposed convolutions,
    FPN's nearest top-down path and the uint8 label map all split exactly."""
    graph, weights, env = every_value(name, input_shape=SMALL_FRAME, labels=labels)
    axis = data.draw(st.sampled_from(["rows", "cols"]))
    runs = local_runs(graph, axis)
    first, last = data.draw(st.sampled_from(runs))
    if data.draw(st.booleans()):
        a = data.draw(st.integers(first, last))
        if make_segment(graph, a, last, axis) is not None:  # a tail of a run: where a split restarts
            first = a
    devices = data.draw(st.integers(2, 4))
    ratios = data.draw(st.lists(st.floats(0.02, 1.0), min_size=devices, max_size=devices))
    assert check_split(graph, weights, env, first, last, axis, ratios) >= 1


@pytest.mark.parametrize("name", DENSE)
def test_dense_models_split_up_to_their_global_pools(zoo_graph, name: str) -> None:
    """Only global-pool branches (squeeze-excitation, ASPP image pooling, LR-ASPP attention) are
    barriers; the label map's argmax and uint8 cast join the last segment."""
    _, graph, _ = zoo_graph(name, input_shape=SMALL_FRAME, labels=not name.startswith("keypoints"))
    runs = local_runs(graph, "rows")
    covered = {i for a, b in runs for i in range(a, b + 1)}
    assert runs[-1][1] == len(graph) - 1  # the model's output is computed in bands
    pools = [i for i, n in enumerate(graph.nodes) if "adaptive_avg_pool2d" in n.op]
    for i, node in enumerate(graph.nodes):
        if i not in covered:  # a barrier: a global pool, or computed from one on a 1x1 map
            assert "adaptive_avg_pool2d" in node.op or node.out_shape[2:] == [1, 1], (name, node.name, node.op)
    if name in ("fcn_resnet50", "keypoints_resnet18_fpn"):
        assert not pools and runs == [(0, len(graph) - 1)]


def test_cnn_backbones_are_one_local_run(zoo_graph) -> None:
    for name in ("resnet50", "vgg16", "densenet121", "convnext_tiny", "mobilenet_v2"):
        _, graph, _ = zoo_graph(name)
        pool = next(i for i, n in enumerate(graph.nodes) if "adaptive_avg_pool2d" in n.op)
        assert (0, pool - 1) in local_runs(graph, "rows"), name  # everything before global pooling


def test_attention_and_global_pooling_are_barriers(zoo_graph) -> None:
    _, graph, _ = zoo_graph("vit_b_16")
    runs = local_runs(graph, "rows")
    covered = {i for a, b in runs for i in range(a, b + 1)}
    for i, node in enumerate(graph.nodes):
        if "scaled_dot_product_attention" in node.op:
            assert i not in covered
    assert len(runs) >= 12  # at least one run between every pair of attention layers
    _, cnn, _ = zoo_graph("resnet18")
    pool = next(i for i, n in enumerate(cnn.nodes) if "adaptive_avg_pool2d" in n.op)
    assert all(not (a <= pool <= b) for a, b in local_runs(cnn, "rows"))


def test_halo_is_exact_for_stacked_convolutions() -> None:
    from edgeweave.graph import capture

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.MaxPool2d(2)
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    graph, weights = capture(model, x, "toy")
    segment = make_segment(graph, 0, len(graph) - 1, "rows")
    bottom = {segment.outputs[0]: (4, 8)}  # pooled rows 4..7 <- conv rows 8..15 <- input rows 6..16
    assert input_bands(segment, bottom) == {INPUT: (6, 16)}
    top = {segment.outputs[0]: (0, 4)}  # pooled rows 0..3 <- conv rows 0..7 <- input rows 0..9 (pad at the top)
    assert input_bands(segment, top) == {INPUT: (0, 10)}
    assert Window(stride=2, pad=0, span=2).needs((4, 8)) == (8, 16)


def test_split_bands_cover_exactly() -> None:
    assert split_bands(10, [1, 1]) == [(0, 5), (5, 10)]
    assert split_bands(7, [0.5, 0.25, 0.25]) == [(0, 4), (4, 5), (5, 7)]  # round(3.5)=4, round(5.25)=5
    bands = split_bands(56, [0.3, 0.01, 0.69])
    assert bands[0][0] == 0 and bands[-1][1] == 56 and all(a <= b for a, b in bands)
