"""The profile contract: validation, cut sizes with skip connections, loading errors, the profiler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeweave.cost.profile import Profile
from edgeweave.cost.profiler import profile_graph
from edgeweave.errors import UserError
from edgeweave.graph import capture


def toy(nodes: list[tuple[str, int, list[str]]], input_bytes: int = 10) -> Profile:
    return Profile.model_validate(
        {
            "model": "toy",
            "input_bytes": input_bytes,
            "nodes": [
                {"name": n, "time_s": 0.1, "out_bytes": b, "param_bytes": 0, "inputs": ins} for n, b, ins in nodes
            ],
        }
    )


def test_cut_bytes_count_every_live_tensor_across_a_cut() -> None:
    # a -> b -> c(add a, b) -> d ; the input is also read by c (a skip from the input)
    prof = toy([("a", 100, ["input"]), ("b", 200, ["a"]), ("c", 300, ["a", "b", "input"]), ("d", 7, ["c"])])
    # cut 0: input; cut 1: a + input; cut 2: a + b + input; cut 3: c; cut 4: the output (d)
    assert prof.cut_bytes.tolist() == [10, 110, 310, 300, 7]
    assert prof.cut_values(2) == ["input", "a", "b"]
    assert prof.cut_values(3) == ["c"] and prof.cut_values(4) == ["d"]


def test_profile_rejects_non_topological_and_duplicate_nodes() -> None:
    with pytest.raises(UserError, match=r"nodes\[0\]\.inputs: 'b' is not the model input or an earlier node"):
        Profile.from_data(
            {
                "model": "m",
                "input_bytes": 1,
                "nodes": [
                    {"name": "a", "time_s": 1, "out_bytes": 1, "param_bytes": 0, "inputs": ["b"]},
                    {"name": "b", "time_s": 1, "out_bytes": 1, "param_bytes": 0, "inputs": ["input"]},
                ],
            }
        )
    with pytest.raises(UserError, match="appears twice"):
        Profile.from_data(
            {
                "model": "m",
                "input_bytes": 1,
                "nodes": [
                    {"name": "a", "time_s": 1, "out_bytes": 1, "param_bytes": 0, "inputs": ["input"]},
                    {"name": "a", "time_s": 1, "out_bytes": 1, "param_bytes": 0, "inputs": ["a"]},
                ],
            }
        )
    with pytest.raises(UserError, match="time_s"):
        Profile.from_data(
            {
                "model": "m",
                "input_bytes": 1,
                "nodes": [{"name": "a", "time_s": -1, "out_bytes": 1, "param_bytes": 0, "inputs": ["input"]}],
            }
        )


def test_profile_load_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        Profile.load(bad)
    with pytest.raises(UserError, match="cannot read profile"):
        Profile.load(tmp_path / "missing.json")
    bad.write_text(json.dumps({"model": "m", "nodes": []}))
    with pytest.raises(UserError) as info:
        Profile.load(bad)
    assert "\n" not in str(info.value)


def test_profiler_writes_the_design_contract(tmp_path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 16 * 16, 10)
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    graph, weights = capture(model, x, "tiny")
    prof = profile_graph(graph, weights, x, module=model, warmup=1, repeats=3)
    path = tmp_path / "p.json"
    prof.save(path)
    data = json.loads(path.read_text())
    assert data["model"] == "tiny" and data["input_bytes"] == 3 * 16 * 16 * 4
    assert [n["name"] for n in data["nodes"]] == [n.name for n in graph.nodes]
    for node in data["nodes"]:
        assert set(node) >= {"name", "time_s", "out_bytes", "param_bytes", "inputs"} and node["time_s"] > 0
    assert data["nodes"][0]["inputs"] == ["input"] and data["nodes"][0]["param_bytes"] == (8 * 3 * 9 + 8) * 4
    assert data["nodes"][-1]["out_bytes"] == 40
    assert data["forward_time_s"] > 0
    again = Profile.load(path)
    assert np.array_equal(again.cut_bytes, prof.cut_bytes)
