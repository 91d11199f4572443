"""A device with its own profile (cluster `profile:`) runs for real at that profile's times.

The planners and the simulator read per-device times from the plan (tests/test_sim.py,
tests/test_pipeline_planner.py); this checks the last consumer, the runtime's emulation: a worker
standing in for a profiled device takes as long per task as the plan says, even at speed 1.
"""

from __future__ import annotations

import json

import pytest
import torch


def test_a_profiled_device_is_emulated_at_its_own_times(tiny, tmp_path) -> None:
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.plan.strategies import make_plan
    from edgeweave.runtime.measure import RunConfig, run_plan

    profile = profile_graph(tiny.graph, tiny.weights, torch.randn(1, 3, 32, 32), warmup=0, repeats=1)
    own = profile.model_dump()
    for node in own["nodes"]:
        node["time_s"] = 0.01  # a board far slower than this machine at these ops
    (tmp_path / "b.json").write_text(json.dumps(own))
    cluster = tiny.cluster(b={"profile": str(tmp_path / "b.json")})
    plan = make_plan(profile, cluster, "even", "throughput")
    on_b = [t for t in plan.compute_tasks if t.device == "b"]
    planned = sum(t.time_s for t in on_b)
    assert planned == pytest.approx(0.01 * sum(len(t.nodes) for t in on_b))
    result = run_plan(plan, cluster, tiny.graph, tiny.weights, RunConfig(requests=4, warmup=0, single=1))
    assert result["correct"]
    b = result["devices"]["b"]
    assert b["busy_s"] >= 0.9 * b["tasks"] * planned  # every task took the profile's time
    assert b["compute_s"] < 0.5 * b["busy_s"]  # though computing it took far less here
