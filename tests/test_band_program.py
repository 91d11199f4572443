"""Compiled band programs: input-driven steps computed into preallocated buffers are exact.

Property-tested like regions: random sub-ranges of every local run, 2-4 devices with random
shares, rows or columns, 1-8 input chunks, on every zoo CNN and the dense models at a small
frame. Each device's program is fed its input band chunk by chunk, exactly as a worker is, and
the bands it finishes must concatenate to the unsplit result. The geometry is checked on its own:
every needed row computed exactly once, every input row received once, every own row finished once.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.graph import GraphRunner
from edgeweave.graph.band_program import BandProgram, ProgramPool, step_geometry
from edgeweave.graph.opgraph import INPUT
from edgeweave.graph.regions import local_runs, make_segment, own_bands
from edgeweave.zoo import list_models

CNNS = [m["name"] for m in list_models() if m["family"] == "cnn"]
DENSE = [m["name"] for m in list_models() if m["family"] in ("segmentation", "keypoints")]
SMALL_FRAME = (1, 3, 64, 96)
RTOL = 2e-5  # relative to the largest magnitude: a band's convolution may sum in another order


@pytest.fixture(scope="module")
def values(zoo_graph):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            spec, graph, weights = zoo_graph(name, SMALL_FRAME if name in DENSE else None)
            runner = GraphRunner(graph, weights)
            env = {INPUT: spec.example_input}
            with torch.no_grad():
                for i, node in enumerate(graph.nodes):
                    env[node.name] = runner.compiled[i](env)
            cache.clear()  # one model's activations at a time
            cache[name] = (graph, weights, env)
        return cache[name]

    return get


def run_program(program: BandProgram, env: dict, source: bool) -> dict[str, list]:
    """Feed and run every step as a worker does; the finished output bands per value."""
    geo = program.geometry
    done: dict[str, list] = {}
    for j in range(geo.steps):
        for v in geo.inputs:
            if source:
                if j == 0:
                    program.feed(v, env[v], 0)
            elif v in geo.received[j]:
                a, b = geo.received[j][v]
                program.feed(v, env[v].narrow(program.buffers[v].axis, a, b - a), a)
        for v, band in program.step(j).items():
            done.setdefault(v, []).append(band)
    return done


def check_split(graph, weights, env, seg, ratios, chunks) -> None:
    pool = ProgramPool(weights)
    pieces: dict[str, list] = {}
    for k, own in enumerate(own_bands(seg, ratios)):
        if not any(b > a for a, b in own.values()):
            continue
        program = pool.take(seg, own, chunks)
        for v, bands in run_program(program, env, source=k == 0).items():
            pieces.setdefault(v, []).extend(bands)
    for v in seg.outputs:
        axis = seg.axis(v)
        ordered = sorted(pieces[v], key=lambda b: b.start)
        got = torch.cat([b.tensor for b in ordered], dim=axis)
        ref = env[v]
        assert got.shape == ref.shape, (v, got.shape, ref.shape)
        if ref.is_floating_point():
            scale = max(1.0, ref.abs().max().item())
            assert (got - ref).abs().max().item() <= RTOL * scale, v
        else:
            assert torch.equal(got, ref), v


def random_segment(graph, data, axis):
    runs = [(a, b) for a, b in local_runs(graph, axis) if b > a]
    if not runs:
        return None
    first, last = data.draw(st.sampled_from(runs))
    a = data.draw(st.integers(first, last))
    b = data.draw(st.integers(a, min(last, a + 60)))
    while b >= a:
        seg = make_segment(graph, a, b, axis)
        if seg is not None:
            return seg
        b -= 1
    return None


@pytest.mark.parametrize("name", CNNS + DENSE)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_band_programs_fed_by_input_chunks_are_exact(values, name, data) -> None:
    graph, weights, env = values(name)
    axis = data.draw(st.sampled_from(["rows", "cols"]))
    seg = random_segment(graph, data, axis)
    if seg is None:
        return
    devices = data.draw(st.integers(2, 4))
    ratios = [data.draw(st.floats(0.05, 1.0)) for _ in range(devices)]
    chunks = data.draw(st.integers(1, 8))
    check_split(graph, weights, env, seg, ratios, chunks)


def test_the_whole_resnet18_backbone_in_8_chunks_is_exact_and_buffers_are_reused(values) -> None:
    graph, weights, env = values("resnet18")
    first, last = max(local_runs(graph, "rows"), key=lambda r: r[1] - r[0])
    seg = make_segment(graph, first, last, "rows")
    assert seg is not None and last - first > 40  # the 45 nodes of the backbone (norms folded in)
    own = own_bands(seg, [0.3, 0.7])[1]
    pool = ProgramPool(weights)
    program = pool.take(seg, own, 8)
    assert program.geometry.steps > 1
    first_run = run_program(program, env, source=False)
    pool.give(seg, own, 8, program)
    again = pool.take(seg, own, 8)
    assert again is program  # reused, not rebuilt
    doubled = {v: t * 2 if v == INPUT else t for v, t in env.items()}
    other = run_program(again, doubled, source=False)  # a second request with another frame
    again_first = run_program(again, env, source=False)
    for v in seg.outputs:
        a = torch.cat([b.tensor for b in first_run[v]], dim=2)
        b = torch.cat([b.tensor for b in again_first[v]], dim=2)
        c = torch.cat([b.tensor for b in other[v]], dim=2)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        lo, hi = own[v]
        ref = env[v].narrow(2, lo, hi - lo)
        assert (a - ref).abs().max().item() <= RTOL * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_step_geometry_computes_every_needed_row_once_and_receives_every_input_row_once(values, chunks) -> None:
    graph, _, _ = values("mobilenet_v2")
    first, last = max(local_runs(graph, "rows"), key=lambda r: r[1] - r[0])
    seg = make_segment(graph, first, last, "rows")
    own = own_bands(seg, [0.25, 0.5, 0.25])[1]
    geo = step_geometry(seg, own, chunks)
    assert 1 <= geo.steps <= chunks
    for table, whole in ((geo.computed, geo.needed), (geo.received, geo.inputs), (geo.finished, geo.own)):
        for v, (lo, hi) in whole.items():
            rows = sorted(step[v] for step in table if v in step)
            assert rows[0][0] == lo and rows[-1][1] == hi, v
            assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False)), v  # no gap, no overlap
    # the first step computes something before the whole input is there (the point of streaming)
    if chunks > 1:
        assert geo.received[0] != geo.inputs
        assert geo.computed[0]
