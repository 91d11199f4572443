"""Locality rules of the ops dense models need, each checked against unsplit execution.

For every rule: every 1-row band on its own (borders included), and random cuts into 2-4 bands,
along rows and along columns. A device gets only the input band `input_bands` names, so a halo
that is too small fails here instead of reading a neighbour's rows. Resizing and argmax must be
bit-identical (labels computed from bands must never flip); the rest agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgeweave.graph import GraphRunner, capture
from edgeweave.graph.locality import TransposedWindow, Window
from edgeweave.graph.opgraph import INPUT
from edgeweave.graph.regions import Band, input_bands, make_segment, run_bands
from edgeweave.graph.resample import LINEAR, NEAREST, NEAREST_EXACT, ScaleWindow, vector_lanes

AXES = {"rows": 2, "cols": 3}
RTOL = 2e-5  # as in test_regions: a convolution on a band may sum in another order


class Fn(nn.Module):
    """A module around one function, so each case captures to the op under test."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _resize(**kw) -> Fn:
    return Fn(lambda x: F.interpolate(x, **kw))


# name -> (module, input shape, must be bit-identical)
CASES: dict[str, tuple[nn.Module, tuple[int, ...], bool]] = {
    "bilinear-size": (_resize(size=(17, 23), mode="bilinear", align_corners=False), (1, 4, 7, 9), True),
    "bilinear-size-corners": (_resize(size=(17, 23), mode="bilinear", align_corners=True), (1, 4, 7, 9), True),
    "bilinear-x8-generic-kernel": (_resize(size=(64, 96), mode="bilinear"), (1, 5, 8, 12), True),
    "bilinear-scale": (_resize(scale_factor=2.5, mode="bilinear", align_corners=False), (1, 3, 7, 9), True),
    "bilinear-scale-corners": (
        _resize(scale_factor=(2.0, 3.0), mode="bilinear", align_corners=True),
        (1, 12, 5, 6),
        True,
    ),
    "bilinear-down": (_resize(scale_factor=0.6, mode="bilinear"), (1, 4, 13, 11), True),
    "bilinear-from-one-pixel": (_resize(size=(9, 14), mode="bilinear"), (1, 16, 1, 1), True),
    "bilinear-default-overload": (_resize(size=(15, 20), mode="bilinear"), (1, 4, 7, 9), True),
    "nearest-size": (_resize(size=(17, 23), mode="nearest"), (1, 4, 7, 9), True),
    "nearest-x2": (_resize(scale_factor=2, mode="nearest"), (1, 4, 7, 9), True),
    "nearest-scale": (_resize(scale_factor=1.7, mode="nearest"), (1, 4, 7, 9), True),
    "nearest-exact": (_resize(scale_factor=1.7, mode="nearest-exact"), (1, 4, 7, 9), True),
    "nearest-default-overload": (_resize(size=(11, 30), mode="nearest"), (1, 4, 7, 9), True),
    "conv-transpose": (nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), (1, 4, 6, 7), False),
    "conv-transpose-output-padding": (
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        (1, 4, 6, 7),
        False,
    ),
    "conv-transpose-gaps": (nn.ConvTranspose2d(4, 3, 1, stride=3, bias=False), (1, 4, 5, 6), False),
    "conv-transpose-dilated-groups": (
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (1, 4, 6, 7),
        False,
    ),
    "conv-dilated": (nn.Conv2d(4, 3, 3, padding=2, dilation=2), (1, 4, 9, 11), False),
    "conv-dilated-past-the-map": (nn.Conv2d(4, 3, 3, padding=12, dilation=12), (1, 4, 5, 6), False),
    "conv-dilated-strided": (nn.Conv2d(4, 3, 3, stride=2, padding=3, dilation=3), (1, 4, 11, 12), False),
    "argmax-labels": (Fn(lambda x: x.argmax(1).to(torch.uint8)), (1, 21, 6, 7), True),
    "argmax-keepdim": (Fn(lambda x: x.argmax(1, keepdim=True)), (1, 5, 6, 7), True),
    "argmin": (Fn(lambda x: x.argmin(dim=1)), (1, 5, 6, 7), True),
    "softmax": (Fn(lambda x: x.softmax(1)), (1, 5, 6, 7), False),
    "log-softmax": (Fn(lambda x: F.log_softmax(x, dim=1)), (1, 5, 6, 7), False),
    "amax": (Fn(lambda x: x.amax(1, keepdim=True)), (1, 5, 6, 7), True),
    "max-values": (Fn(lambda x: x.max(dim=1).values), (1, 5, 6, 7), True),
    "sum": (Fn(lambda x: x.sum(1)), (1, 5, 6, 7), False),
    "mean-keepdim": (Fn(lambda x: x.mean(1, keepdim=True)), (1, 5, 6, 7), False),
    "segmentation-tail": (
        Fn(lambda x: F.interpolate(x, scale_factor=4, mode="bilinear").softmax(1).argmax(1).to(torch.uint8)),
        (1, 6, 5, 7),
        True,
    ),
}


# torch.export decomposes the `.default` resize overloads (F.interpolate gives `.vec`), so those
# cases rewrite the captured node: an output size with per-axis scales, which ATen then uses
# (1 / scale, not in / out) for the source positions.
OVERLOADS = {
    "bilinear-default-overload": ("aten.upsample_bilinear2d.default", [[15, 20], False, 2.0, None]),
    "nearest-default-overload": ("aten.upsample_nearest2d.default", [[11, 30], None, 3.3]),
}


@pytest.fixture(scope="module")
def captured():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            module, shape, _ = CASES[name]
            torch.manual_seed(0)
            x = torch.randn(shape)
            graph, weights = capture(module.eval(), x, name)
            if name in OVERLOADS:
                node = graph.nodes[-1]
                node.op, node.args = OVERLOADS[name][0], [node.args[0], *OVERLOADS[name][1]]
            cache[name] = (graph, weights, x, GraphRunner(graph, weights).run(x))
        return cache[name]

    return get


def run_cut(graph, weights, x: torch.Tensor, axis: str, bands: list[tuple[int, int]]) -> torch.Tensor:
    """Each band computed from only the input rows it needs, concatenated along the output's axis."""
    segment = make_segment(graph, 0, len(graph) - 1, axis)
    assert segment is not None, f"{graph.model} is not local along {axis}"
    out = segment.outputs[0]
    pieces = []
    with torch.no_grad():
        for band in bands:
            own = {out: band}
            lo, hi = input_bands(segment, own)[INPUT]
            sent = Band(x.narrow(AXES[axis], lo, hi - lo), lo)
            pieces.append(run_bands(segment, weights, {INPUT: sent}, own)[out].tensor)
    return torch.cat(pieces, dim=segment.axis(out))


def assert_same(got: torch.Tensor, want: torch.Tensor, exact: bool, context) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, context
    if exact:
        assert torch.equal(got, want), (context, float((got.double() - want.double()).abs().max()))
    else:
        scale = want.abs().max().clamp_min(1e-6)
        assert float((got - want).abs().max() / scale) <= RTOL, context


def output_extent(graph, axis: str) -> int:
    segment = make_segment(graph, 0, len(graph) - 1, axis)
    out = segment.outputs[0]
    return segment.extent(out)


@pytest.mark.parametrize("axis", list(AXES))
@pytest.mark.parametrize("name", list(CASES))
def test_every_one_row_band_is_exact(captured, name: str, axis: str) -> None:
    graph, weights, x, want = captured(name)
    extent = output_extent(graph, axis)
    got = run_cut(graph, weights, x, axis, [(k, k + 1) for k in range(extent)])
    assert_same(got, want, CASES[name][2], (name, axis))


@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_cuts_are_exact(captured, name: str, data) -> None:
    graph, weights, x, want = captured(name)
    axis = data.draw(st.sampled_from(list(AXES)))
    extent = output_extent(graph, axis)
    devices = data.draw(st.integers(2, 4))
    cuts = sorted(data.draw(st.lists(st.integers(0, extent), min_size=devices - 1, max_size=devices - 1)))
    edges = [0, *cuts, extent]
    bands = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    got = run_cut(graph, weights, x, axis, bands)
    assert_same(got, want, CASES[name][2], (name, axis, bands))


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.argmax(2),  # across the rows
        lambda x: x.mean((2, 3), keepdim=True),  # global pooling written as a mean
        lambda x: x.softmax(2),
        lambda x: x.amax(),  # everything
        lambda x: F.interpolate(x, size=(9, 9), mode="bicubic"),  # not reproduced: a barrier
    ],
)
def test_reductions_across_the_split_axis_are_barriers(fn) -> None:
    graph, _ = capture(Fn(fn).eval(), torch.randn(1, 3, 6, 7), "barrier")
    assert make_segment(graph, 0, len(graph) - 1, "rows") is None


def test_softmax_along_rows_is_local_when_split_by_columns() -> None:
    graph, weights = capture(Fn(lambda x: x.softmax(2)).eval(), torch.randn(1, 3, 6, 7), "softmax-rows")
    assert make_segment(graph, 0, len(graph) - 1, "cols") is not None


def test_squeeze_excitation_scale_broadcasts_into_the_next_segment() -> None:
    """The global pool's branch is a barrier, and the multiply that applies it starts a segment."""

    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            scale = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(y, 1)))
            return F.relu(y * scale)

    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 6)
    graph, weights = capture(SqueezeExcite().eval(), x, "se")
    ops = [n.op.split(".")[1] for n in graph.nodes]
    mul = ops.index("mul")
    assert make_segment(graph, ops.index("adaptive_avg_pool2d"), mul, "rows") is None
    segment = make_segment(graph, mul, len(graph) - 1, "rows")
    assert segment is not None
    runner = GraphRunner(graph, weights)
    env = {INPUT: x}
    for i in range(len(graph)):
        env[graph.nodes[i].name] = runner.compiled[i](env)
    out = segment.outputs[0]
    pieces = [run_bands(segment, weights, env, {out: (k, k + 1)})[out].tensor for k in range(8)]
    assert torch.equal(torch.cat(pieces, dim=2), env[out])


WINDOWS = st.one_of(
    st.builds(Window, st.integers(1, 3), st.integers(0, 4), st.integers(1, 7)),
    st.builds(TransposedWindow, st.integers(1, 4), st.integers(0, 3), st.integers(1, 9)),
    st.builds(
        ScaleWindow,
        st.sampled_from([NEAREST, NEAREST_EXACT, LINEAR]),
        st.integers(1, 40),
        st.integers(1, 90),
        st.booleans(),
        st.one_of(st.none(), st.floats(0.3, 9.0)),
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(window=WINDOWS, a=st.integers(0, 60), b=st.integers(0, 60), da=st.integers(0, 20), db=st.integers(0, 20))
def test_windows_are_monotone(window, a: int, b: int, da: int, db: int) -> None:
    """needs((a, b)) -> (lo, hi): lo and hi never decrease when a or b grows (the planner relies on it)."""
    if isinstance(window, ScaleWindow):
        b, db = min(b, window.out_size), min(db, window.out_size - min(b, window.out_size))
        a = min(a, b)
        da = min(da, b - a)
    a, b = min(a, b), max(a, b)
    lo, hi = window.needs((a, b))
    lo2, hi2 = window.needs((a + da, b + db))
    assert lo2 >= lo and hi2 >= hi
    if isinstance(window, ScaleWindow) and b > a:
        assert 0 <= lo < hi <= window.in_size


def test_vector_lanes_are_found() -> None:
    """The vectorised resize kernel's width is recognised on this build (else small resizes are
    only float-close, and the bit-identical cases above would say so)."""
    assert vector_lanes() in (4, 8, 16)


def test_transposed_convolution_flops_count_every_scattered_product() -> None:
    graph, _ = capture(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1).eval(), torch.randn(1, 8, 5, 6), "ct")
    assert graph.nodes[0].flops == 2 * (8 * 5 * 6) * 4 * 4 * 4  # each input element meets 4 x 4 x 4 weights
