"""Energy per inference: the arithmetic, power-model errors, energy-aware planning, sensors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeweave.cli import app, main
from edgeweave.cost.cluster import Cluster, PowerModel
from edgeweave.cost.energy import power_models, timeline_energy
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.plan.energy import candidates, score_plan
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.power import PowerMeter, find_sensors, measured_energy, probe
from edgeweave.sim.energy import predict_energy, single_energy
from edgeweave.trace import TimelineEvent

runner = CliRunner()
ROBOT = {"idle_w": 5.0, "busy_w": 14.0, "radio_w_per_mbps": 0.283, "radio_base_w": 0.133}
SERVER = {"idle_w": 60.0, "busy_w": 250.0, "radio_w_per_mbps": 0.0, "radio_base_w": 0.0}


def cluster(mbps: float = 8.0, robot: dict | None = None, server: dict | None = None) -> Cluster:
    return Cluster.from_dict(
        {
            "source": "robot",
            "devices": {
                "robot": {"speed": 1.0, "memory": "1GiB", "power": ROBOT if robot is None else robot},
                "server": {"speed": 4.0, "memory": "1GiB", "power": SERVER if server is None else server},
            },
            "links": {"robot-server": {"bandwidth": f"{mbps}Mbps", "latency": "0ms"}},
        }
    )


def chain(times: list[float], out: list[int], input_bytes: int = 1_000_000) -> Profile:
    nodes = [
        {"name": f"n{i}", "time_s": t, "out_bytes": o, "param_bytes": 1000, "inputs": [f"n{i - 1}" if i else "input"]}
        for i, (t, o) in enumerate(zip(times, out, strict=True))
    ]
    return Profile.model_validate({"model": "toy", "input_bytes": input_bytes, "nodes": nodes})


# A model whose middle activation is tiny: cutting there saves the robot radio energy.
PROFILE = chain([0.2, 0.3, 0.4, 0.1], [2_000_000, 50_000, 800_000, 1000])


# --------------------------------------------------------------------------- arithmetic


def test_timeline_energy_on_a_hand_made_timeline() -> None:
    power = {
        "a": PowerModel(idle_w=2.0, busy_w=10.0, radio_w_per_mbps=0.5, radio_base_w=0.1),
        "b": PowerModel(idle_w=1.0, busy_w=5.0, radio_w_per_mbps=0.0, radio_base_w=0.0, radio_rx_w_per_mbps=0.2),
    }
    events = [
        TimelineEvent("dev:a", 0, "c0", 0.0, 1.0, "compute"),
        TimelineEvent("dev:a", 0, "c0b", 0.5, 1.0, "compute"),  # overlaps: counted once
        TimelineEvent("link:a->b", 0, "x1", 1.0, 2.0, "transfer", 1_000_000),  # 8 Mbit
        TimelineEvent("dev:b", 0, "c1", 2.0, 3.0, "compute"),
        TimelineEvent("link:b->a", 0, "xout", 3.0, 3.5, "transfer", 125_000),  # 1 Mbit
    ]
    report = timeline_energy(events, power, "a", 0.0, 4.0)
    a, b = report.devices["a"], report.devices["b"]
    # a: idle 2 W x 4 s + (10 - 2) W x 1 s busy + 0.1 W x 1.5 s radio on + 0.5 W/Mbps x 9 Mbit
    assert a.idle_j == pytest.approx(8.0) and a.compute_j == pytest.approx(8.0)
    assert a.radio_j == pytest.approx(0.15 + 4.5) and a.energy_j == pytest.approx(20.65)
    # b: idle 1 W x 4 s + 4 W x 1 s + receives 8 Mbit at 0.2 W/Mbps, sends 1 Mbit at 0 W/Mbps
    assert b.energy_j == pytest.approx(4.0 + 4.0 + 1.6)
    assert (a.busy_s, a.radio_s, a.megabits) == pytest.approx((1.0, 1.5, 9.0))
    assert report.source_j == pytest.approx(20.65) and report.total_j == pytest.approx(30.25)
    # A window that cuts the first transfer in half charges half its megabits.
    half = timeline_energy(events, power, "a", 0.0, 1.5).devices["a"]
    assert half.energy_j == pytest.approx(2.0 * 1.5 + 8.0 + 0.1 * 0.5 + 0.5 * 4.0)


def test_predicted_energy_of_an_offload_plan_matches_hand_computation() -> None:
    c = cluster()
    plan = make_plan(PROFILE, c, "offload", "latency")
    report = single_energy(plan, c)
    # 8 Mbit input at 8 Mbps = 1 s, server computes 1.0 / 4 = 0.25 s, 8 kbit output = 0.001 s.
    latency = 1.0 + 0.25 + 0.001
    robot = 5.0 * latency + 0.133 * (1.0 + 0.001) + 0.283 * (8.0 + 0.008)
    server = 60.0 * latency + 190.0 * 0.25
    assert report.window_s == pytest.approx(latency)
    assert report.source_j == pytest.approx(robot) and report.total_j == pytest.approx(robot + server)
    fields = predict_energy(plan, c).fields()
    assert fields["source_energy_j"] == pytest.approx(robot)
    assert fields["energy_per_device_j"]["server"] == pytest.approx(server)


def far_cluster() -> Cluster:
    """`cluster()` with 100 ms of latency each way."""
    return Cluster.from_dict(
        {**cluster().to_dict(), "links": {"robot-server": {"bandwidth": "8Mbps", "latency": "100ms"}}}
    )


def test_the_radio_is_on_while_transmitting_not_during_the_latency() -> None:
    """With 100 ms of latency each way the request takes 0.2 s longer (idle power over the window),
    but the radio is active only while the 8 Mbit go out and the 8 kbit come back."""
    c = far_cluster()
    plan = make_plan(PROFILE, c, "offload", "latency")
    report = single_energy(plan, c)
    latency = 0.1 + 1.0 + 0.25 + 0.1 + 0.001
    robot = report.devices["robot"]
    assert report.window_s == pytest.approx(latency)
    assert robot.radio_s == pytest.approx(1.0 + 0.001)
    assert robot.energy_j == pytest.approx(5.0 * latency + 0.133 * (1.0 + 0.001) + 0.283 * (8.0 + 0.008))


def test_measured_transfers_end_one_link_latency_before_arrival() -> None:
    """The runtime's receivers time a transfer to its arrival; the session moves that to `arrival`
    and ends the event when the link was free again, as the simulator's events do."""
    from types import SimpleNamespace

    from edgeweave.runtime.session import Session

    c = far_cluster()
    seen = {"resource": "link:robot->server", "request": 0, "task": "x0", "start": 10.0, "end": 11.1}
    seen |= {"kind": "transfer", "bytes": 1_000_000}
    span = Session._sending_span(SimpleNamespace(cluster=c), seen)
    assert (span["start"], span["end"], span["arrival"]) == pytest.approx((10.0, 11.0, 11.1))
    assert Session._sending_span(SimpleNamespace(cluster=c), span) == span  # already converted
    compute = {"resource": "dev:robot", "request": 0, "task": "c0", "start": 1.0, "end": 2.0, "kind": "compute"}
    assert Session._sending_span(SimpleNamespace(cluster=c), compute) == compute
    power = power_models(c, ["robot", "server"])
    robot = timeline_energy([span], power, "robot", 10.0, 11.1).devices["robot"]
    assert robot.radio_s == pytest.approx(1.0) and robot.megabits == pytest.approx(8.0)


# --------------------------------------------------------------------------- bad power models


def test_missing_power_gives_none_for_plan_but_errors_when_energy_is_asked() -> None:
    c = cluster(server={"idle_w": 60.0})
    plan = make_plan(PROFILE, c, "offload", "latency")
    fields = predict_energy(plan, c).fields()
    assert fields["energy_j"] is None and "'server'" in fields["energy_note"]
    assert "power.busy_w is missing" in fields["energy_note"]
    with pytest.raises(UserError, match=r"device 'server': power\.busy_w is missing"):
        make_plan(PROFILE, c, "neurosurgeon", "energy")
    with pytest.raises(UserError, match=r"device 'server': power\.busy_w is missing"):
        make_plan(PROFILE, c, "pipeline", "latency", energy_budget_j=5.0)
    with pytest.raises(UserError, match=r"device 'server': power\.busy_w is missing"):
        predict_energy(plan, c, required=True)


def test_negative_power_names_device_and_field() -> None:
    with pytest.raises(UserError, match=r"devices\.robot\.power\.idle_w: must be >= 0, got -1"):
        cluster(robot={**ROBOT, "idle_w": -1.0})
    with pytest.raises(UserError, match=r"devices\.server\.power\.radio_rx_w_per_mbps: must be >= 0"):
        cluster(server={**SERVER, "radio_rx_w_per_mbps": -0.1})


# --------------------------------------------------------------------------- energy-aware planning


@pytest.mark.parametrize("strategy", ["neurosurgeon", "pipeline", "offload", "dads", "local"])
@pytest.mark.parametrize("scope", ["source", "total"])
def test_energy_objective_picks_the_least_energy_candidate(strategy: str, scope: str) -> None:
    c = cluster()
    power = power_models(c, c.device_names)
    scored = [score_plan(p, c, power, "energy") for p in candidates(PROFILE, c, strategy, None)]
    key = (lambda s: s.source_energy_j) if scope == "source" else (lambda s: s.energy_j)
    plan = make_plan(PROFILE, c, strategy, "energy", energy_scope=scope)
    got = single_energy(plan, c)
    assert (got.source_j if scope == "source" else got.total_j) == pytest.approx(min(key(s) for s in scored))
    assert plan.strategy == strategy and plan.objective == "energy"


def test_energy_objective_differs_from_latency_when_robot_compute_is_costly() -> None:
    # Cutting after n0 is fastest (1.401 s vs offload 1.626 s) but makes the robot compute 0.5 s at
    # 14 W: 12.47 J against offload's 10.53 J (it idles at 5 W while the server works).
    profile = chain([0.5, 2.0], [400_000, 1000])
    c = cluster()
    fast = make_plan(profile, c, "neurosurgeon", "latency")
    frugal = make_plan(profile, c, "neurosurgeon", "energy")
    assert [(s.device, s.first, s.last) for s in fast.stages] == [("robot", 0, 0), ("server", 1, 1)]
    assert [(s.device, s.first, s.last) for s in frugal.stages] == [("server", 0, 1)]
    e_fast, e_frugal = single_energy(fast, c), single_energy(frugal, c)
    assert e_fast.source_j == pytest.approx(5 * 1.401 + 9 * 0.5 + 0.133 * 0.401 + 0.283 * 3.208)
    assert e_frugal.source_j == pytest.approx(5 * 1.626 + 0.133 * 1.001 + 0.283 * 8.008)
    assert e_frugal.window_s == pytest.approx(1.626)


def test_deadline_and_budget_are_respected_or_refused() -> None:
    c = cluster()
    power = power_models(c, c.device_names)
    scored = [score_plan(p, c, power, "energy") for p in candidates(PROFILE, c, "neurosurgeon", None)]
    fastest = min(s.latency_s for s in scored)
    deadline = sorted(s.latency_s for s in scored)[1]  # admits at least two candidates
    plan = make_plan(PROFILE, c, "neurosurgeon", "energy", deadline_s=deadline)
    meets = [s for s in scored if s.latency_s <= deadline * (1 + 1e-9)]
    got = single_energy(plan, c)
    assert got.window_s <= deadline * (1 + 1e-9)
    assert got.source_j == pytest.approx(min(s.source_energy_j for s in meets))
    with pytest.raises(UserError, match=r"no neurosurgeon plan meets the deadline of 0\.01 s"):
        make_plan(PROFILE, c, "neurosurgeon", "energy", deadline_s=0.01)

    budget = sorted(s.source_energy_j for s in scored)[2]
    plan = make_plan(PROFILE, c, "neurosurgeon", "latency", energy_budget_j=budget)
    within = [s for s in scored if s.source_energy_j <= budget * (1 + 1e-9)]
    got = single_energy(plan, c)
    assert got.source_j <= budget * (1 + 1e-9)
    assert got.window_s == pytest.approx(min(s.latency_s for s in within))
    assert fastest <= got.window_s
    with pytest.raises(UserError, match=r"energy budget of 0\.001 J \(source\): the most frugal"):
        make_plan(PROFILE, c, "neurosurgeon", "latency", energy_budget_j=0.001)
    with pytest.raises(UserError, match="--deadline goes with --objective energy"):
        make_plan(PROFILE, c, "pipeline", "latency", deadline_s=1.0)
    with pytest.raises(UserError, match="unknown energy scope"):
        make_plan(PROFILE, c, "pipeline", "energy", energy_scope="robot")


def test_hybrid_energy_is_never_worse_than_its_layerwise_candidates(tiny) -> None:
    import torch

    from edgeweave.cost.profiler import profile_graph
    from edgeweave.plan.band import with_message_overhead

    c = Cluster.from_dict(
        {
            "source": "a",
            "devices": {
                "a": {"speed": 0.25, "memory": "1GiB", "power": {"idle_w": 5, "busy_w": 14}},
                "b": {"speed": 1.0, "memory": "1GiB", "power": {"idle_w": 60, "busy_w": 250}},
            },
            "links": {"default": {"bandwidth": "20Mbps", "latency": "1ms"}},
        }
    )
    measured = profile_graph(tiny.graph, tiny.weights, torch.randn(1, 3, 32, 32), warmup=0, repeats=1).model_dump()
    for node in measured["nodes"]:  # fixed times: the test must not depend on this machine's load
        node["time_s"] = 2e-3
    profile = Profile.model_validate(measured)
    plan = make_plan(profile, c, "hybrid", "energy", tiny.graph)
    hybrid = single_energy(plan, c).source_j
    for name in ("local", "offload", "neurosurgeon", "dads"):  # under the same per-message cost
        layerwise = with_message_overhead(make_plan(profile, c, name, "energy"))
        assert hybrid <= single_energy(layerwise, c).source_j + 1e-12
    assert "hybrid candidates" in plan.notes[-1]


# --------------------------------------------------------------------------- sensors and measured energy


def test_no_sensor_is_reported_and_counters_are_read(tmp_path: Path) -> None:
    empty = probe(tmp_path)
    assert empty["available"] is False and "no power sensor" in empty["why"]
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text("1000000\n")
    (zone / "max_energy_range_uj").write_text("5000000\n")
    sub = tmp_path / "sys/class/powercap/intel-rapl:0:0"  # a sub-zone: already in its package
    sub.mkdir(parents=True)
    (sub / "energy_uj").write_text("7\n")
    assert probe(tmp_path) == {"available": True, "sensors": ["powercap intel-rapl:0"], "why": None}
    meter = PowerMeter(find_sensors(tmp_path))
    with meter:
        (zone / "energy_uj").write_text("500000\n")  # wrapped: 5 J range, 4.5 J used
    assert meter.joules == pytest.approx(4.5)


def test_measured_energy_prices_the_measured_timeline() -> None:
    c = cluster()
    events = [
        {
            "resource": "link:robot->server",
            "request": 7,
            "task": "x0",
            "start": 100.0,
            "end": 101.0,
            "kind": "transfer",
            "bytes": 1_000_000,
        },
        {
            "resource": "dev:server",
            "request": 7,
            "task": "c0",
            "start": 101.0,
            "end": 101.5,
            "kind": "compute",
            "bytes": 0,
        },
        {
            "resource": "dev:robot",
            "request": 8,
            "task": "c0",
            "start": 102.0,
            "end": 103.0,
            "kind": "compute",
            "bytes": 0,
        },
    ]
    out = measured_energy(c, ["robot", "server"], "robot", [(7, 100.0, 101.6)], events, events, (100.0, 103.0), 2)
    robot = 5.0 * 1.6 + 0.133 * 1.0 + 0.283 * 8.0
    assert out["source_energy_j"] == pytest.approx(robot)
    assert out["energy_per_device_j"]["server"] == pytest.approx(60.0 * 1.6 + 190.0 * 0.5)
    stream_robot = (5.0 * 3.0 + 9.0 * 1.0 + 0.133 + 0.283 * 8.0) / 2
    assert out["stream_source_energy_j"] == pytest.approx(stream_robot)
    none = measured_energy(cluster(robot={}), ["robot"], "robot", [(7, 0.0, 1.0)], [], [], (0.0, 1.0), 1)
    assert none["energy_j"] is None and "power.idle_w is missing" in none["energy_note"]


# --------------------------------------------------------------------------- command line


def test_cli_plan_objective_energy_reports_predicted_energy(tmp_path: Path, capsys) -> None:
    prof = tmp_path / "toy.json"
    prof.write_text(PROFILE.model_dump_json())
    yml = tmp_path / "c.yaml"
    yml.write_text(yaml.safe_dump(cluster().to_dict()))
    result = runner.invoke(
        app, ["plan", "--profile", str(prof), "--cluster", str(yml), "-s", "neurosurgeon", "-O", "energy", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["objective"] == "energy" and out["strategy"] == "neurosurgeon"
    p = out["predicted"]
    expected = single_energy(make_plan(PROFILE, cluster(), "neurosurgeon", "energy"), cluster())
    assert p["source_energy_j"] == pytest.approx(expected.source_j)
    assert p["energy_j"] == pytest.approx(expected.total_j)
    assert set(p["energy_per_device_j"]) == {"robot", "server"}
    with pytest.raises(SystemExit) as stop:  # the real entry point: one line, exit status 2
        main(
            [
                "plan",
                "--profile",
                str(prof),
                "--cluster",
                str(yml),
                "-s",
                "local",
                "-O",
                "energy",
                "--deadline",
                "0.001",
            ]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "no local plan meets the deadline of 0.001 s" in err and len(err.strip().splitlines()) == 1


def test_a_real_run_reports_modelled_and_measured_energy(tiny) -> None:
    from edgeweave.runtime.measure import RunConfig, run_plan

    power = {"power": {"idle_w": 2.0, "busy_w": 6.0}}
    c = tiny.cluster(a=power, b=power)
    result = run_plan(tiny.plan, c, tiny.graph, tiny.weights, RunConfig(requests=3, warmup=0, single=2))
    assert result["correct"]
    # at least idle power over the measured latency, on both devices
    assert result["energy_j"] >= 2 * 2.0 * 0.5 * result["single_latency_s"]
    assert result["source_energy_j"] == pytest.approx(result["energy_per_device_j"]["a"])
    assert result["stream_energy_j"] > 0
    sensors = result["measured_power"]
    assert sensors["available"] is bool(find_sensors())
    if not sensors["available"]:
        assert "no power sensor" in sensors["why"] and sensors["host_energy_j"] is None
