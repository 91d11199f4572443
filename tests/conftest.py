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
    """`zoo_graph(name, **overrides) -> (ModelSpec, OpGraph, weights)`, captured once per session."""
    from edgeweave.graph import capture
    from edgeweave.zoo import load_model

    cache: dict = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in cache:
            spec = load_model(name, **overrides)
            graph, weights = capture(spec.module, spec.example_input, spec.name)
            cache[key] = (spec, graph, weights)
        return cache[key]

    return get
