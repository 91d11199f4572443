"""Frame streams (`--rate`): frames arrive at a fixed rate; latency counts from each frame's arrival."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeweave.cli import app, main
from edgeweave.cli.plan_cmd import attach_prediction
from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.measure import RunConfig, run_plan
from edgeweave.sim.simulator import simulate
from edgeweave.sim.stream import check_rate, predict_stream

runner = CliRunner()


@pytest.fixture(scope="module")
def two_stage():
    """Four 10 ms nodes on two equal devices: two 20 ms stages, so capacity is 50 frames/s."""
    nodes = [
        {
            "name": f"n{i}",
            "time_s": 0.01,
            "out_bytes": 1000,
            "param_bytes": 0,
            "inputs": [f"n{i - 1}" if i else "input"],
        }
        for i in range(4)
    ]
    profile = Profile.model_validate({"model": "toy", "input_bytes": 1000, "nodes": nodes})
    cluster = Cluster.from_dict(
        {
            "source": "a",
            "devices": {"a": {"speed": 1.0, "memory": "1GiB"}, "b": {"speed": 1.0, "memory": "1GiB"}},
            "links": {"default": {"bandwidth": "1Gbps", "latency": "0ms"}},
        }
    )
    plan = attach_prediction(make_plan(profile, cluster, "even", "throughput"), requests=50)
    assert [(s.first, s.last) for s in plan.stages] == [(0, 1), (2, 3)]
    return plan


def test_below_capacity_every_frame_sees_the_single_request_latency(two_stage) -> None:
    single = simulate(two_stage, requests=1).single_latency_s
    assert single == pytest.approx(0.040016, rel=1e-9)  # 2 x 20 ms + 1000 bytes each way at 1 Gbps
    stream = predict_stream(two_stage, 10.0, requests=50)
    assert stream["latency_p50_s"] == pytest.approx(single, rel=1e-9)
    assert stream["latency_p95_s"] == pytest.approx(single, rel=1e-9)
    assert stream["throughput_per_s"] == pytest.approx(10.0, rel=1e-9)
    assert stream["capacity_per_s"] == pytest.approx(50.0, rel=1e-9)


def test_above_capacity_frames_queue_and_latency_grows(two_stage) -> None:
    single = simulate(two_stage, requests=1).single_latency_s
    stream = predict_stream(two_stage, 100.0, requests=50)
    assert stream["throughput_per_s"] == pytest.approx(50.0, rel=1e-9)  # the stream runs at capacity
    # frame k waits k x (20 ms - 10 ms) for the bottleneck stage: p50 of k = 0..49 is 24.5 x 10 ms
    assert stream["latency_p50_s"] == pytest.approx(single + 0.245, rel=1e-6)
    assert stream["latency_p95_s"] > stream["latency_p50_s"] + 0.2
    per_frame = [r.latency_s for r in simulate(two_stage, requests=50, rate_per_s=100.0).per_request]
    assert all(b > a for a, b in zip(per_frame, per_frame[1:], strict=False))


def test_a_real_run_at_a_rate_reports_it_and_stays_exact(tiny) -> None:
    cluster = tiny.cluster()
    plan = attach_prediction(tiny.plan, requests=6, rate_per_s=20.0)
    assert plan.predicted["stream"]["rate_per_s"] == 20.0
    result = run_plan(plan, cluster, tiny.graph, tiny.weights, RunConfig(requests=6, warmup=1, single=1, rate_per_s=20))
    assert result["rate_per_s"] == 20 and result["correct"]
    assert result["makespan_s"] >= 5 / 20  # the last frame arrives 250 ms after the first
    assert 10 < result["throughput_per_s"] < 40  # paced by the camera, not by the devices
    assert result["latency_s"]["p50"] < 0.2  # counted from each frame's arrival, not from the stream's start
    assert result["predicted"]["stream"]["throughput_per_s"] == pytest.approx(20.0, rel=1e-6)


def test_rate_must_be_positive() -> None:
    assert check_rate(None) is None and check_rate(2.5) == 2.5
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--rate must be > 0"):
            check_rate(bad)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the command line as `edgeweave` does; it must exit 2 with one line on stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", ["plan", "run", "bench", "demo"])
def test_invalid_rate_is_a_one_line_error_with_exit_2(capsys, command: str) -> None:
    args = [command] if command == "demo" else [command, "resnet18"]
    assert "--rate must be > 0 frames per second, got 0" in one_line_error(capsys, [*args, "--rate", "0", "--json"])


def test_simulate_reports_the_stream_at_a_rate(capsys, two_stage, tmp_path) -> None:
    path = tmp_path / "plan.json"
    two_stage.save(path)
    result = runner.invoke(app, ["simulate", str(path), "--rate", "10", "--requests", "20", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["rate_per_s"] == 10.0 and out["latency_s"]["p50"] == pytest.approx(0.040016, rel=1e-9)
    assert "rate must be > 0" in one_line_error(capsys, ["simulate", str(path), "--rate", "-2", "--json"])
