"""Shared test setup: one torch thread (what workers use, and deterministic), models captured once."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def zoo_graph():
    """`zoo_graph(name, input_shape=None, labels=False, **overrides) -> (ModelSpec, OpGraph, weights)`,
    captured once per session (dense models are tested at small input shapes)."""
    from edgeweave.graph import capture
    from edgeweave.zoo import load_model

    cache: dict = {}

    def get(name: str, input_shape=None, labels: bool = False, **overrides):
        key = (name, input_shape, labels, tuple(sorted(overrides.items())))
        if key not in cache:
            spec = load_model(name, input_shape=input_shape, labels=labels, **overrides)
            graph, weights = capture(spec.module, spec.example_input, spec.name)
            cache[key] = (spec, graph, weights)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny():
    """A small CNN split over devices a (source) and b: `.plan`, `.graph`, `.weights`, and
    `.cluster(b={"address": ...})` for the two devices with extra fields.

    b receives one activation from a and returns the output: a real two-stage pipeline that
    deploys in a fraction of a second (the security and fuzz tests need a live worker, not a big model).
    """
    from types import SimpleNamespace

    from torch import nn

    from edgeweave.cost.cluster import Cluster
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.graph import capture
    from edgeweave.plan.strategies import make_plan

    def cluster(**extra) -> Cluster:
        devices = {d: {"speed": 1.0, "memory": "1GiB"} for d in ("a", "b")}
        for name, fields in extra.items():
            devices[name].update(fields)
        return Cluster.from_dict(
            {"source": "a", "devices": devices, "links": {"default": {"bandwidth": "10Gbps", "latency": "0ms"}}}
        )

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    graph, weights = capture(module, x, "tiny")
    profile = profile_graph(graph, weights, x, warmup=0, repeats=1)
    plan = make_plan(profile, cluster(), "even", "throughput")
    assert [s.device for s in plan.stages] == ["a", "b"]
    return SimpleNamespace(cluster=cluster, plan=plan, graph=graph, weights=weights)
