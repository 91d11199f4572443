"""Devices fail and links change: the resilient coordinator loses nothing and keeps order.

Runtime tests use a small CNN (a few ms a request) on local worker processes; the estimator
and hysteresis are unit-tested on synthetic samples.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.errors import UserError
from edgeweave.graph import GraphRunner, capture
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.estimator import Hysteresis, LinkEstimator, PlanCache, quantise
from edgeweave.runtime.measure import make_inputs
from edgeweave.runtime.resilient import Fault, RequestFailed, ResilienceOptions, ResilientSession
from edgeweave.runtime.session import DeviceFailure, SessionOptions


def _cluster(names=("a", "b", "c"), bandwidth="10Gbps") -> Cluster:
    devices = {d: {"speed": 1.0, "memory": "1GiB"} for d in names}
    return Cluster.from_dict(
        {"source": "a", "devices": devices, "links": {"default": {"bandwidth": bandwidth, "latency": "0ms"}}}
    )


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    layers = []
    for cin, cout in ((3, 8), (8, 8), (8, 8), (8, 8), (8, 8)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    graph, weights = capture(module, x, "small")
    profile = profile_graph(graph, weights, x, warmup=0, repeats=1)
    return graph, weights, profile


def _replan(profile, graph, strategy="even"):
    return lambda cluster: make_plan(profile, cluster, strategy, "throughput", graph)


def test_sigkill_mid_stream_loses_nothing_and_keeps_order(small) -> None:
    graph, weights, profile = small
    cluster = _cluster()
    replan = _replan(profile, graph)
    plan = replan(cluster)
    assert sorted(plan.devices) == ["a", "b", "c"]
    frames = make_inputs(graph, 200, seed=5)
    reference = GraphRunner(graph, weights)
    opts = ResilienceOptions(faults=[Fault("c", after=60)])
    with ResilientSession(cluster, plan, graph, weights, replan, SessionOptions(), opts) as rs:
        outputs = rs.infer_many(frames)
        report = rs.report()
        first = rs.replans[0]
        assert first["reason"] == "failure" and first["devices"] == ["a", "b"]  # planned over the survivors
        assert all(r["reason"] == "rejoin" for r in rs.replans[1:])  # c relaunched, used again
    assert len(outputs) == 200
    for x, y in zip(frames, outputs, strict=True):
        assert torch.equal(y, reference.run(x))
    assert [f["device"] for f in report["failures"]] == ["c"]
    assert report["failures"][0]["detect_s"] < 1.0  # an exited process is seen at the next heartbeat
    assert report["replans"][0]["reason"] == "failure" and report["replans"][0]["devices"] == ["a", "b"]
    assert 1 <= report["replayed"] <= 200 - 60
    (recovery,) = report["recovery_s"]
    assert recovery < 3.0, f"kill -> next completed request took {recovery:.2f} s"


def test_no_plan_after_loss_fails_those_requests_then_recovers(small) -> None:
    """When only devices that cannot hold the model remain, the affected requests fail clearly
    (no hang), and the coordinator serves again once capacity returns (b relaunched)."""
    graph, weights, profile = small
    cluster = _cluster(("a", "b"))
    real = _replan(profile, graph)

    def replan(c: Cluster):
        if "b" not in c.devices:
            raise UserError("the model fits no remaining device")
        return real(c)

    plan = real(cluster)
    frames = make_inputs(graph, 40, seed=2)
    reference = GraphRunner(graph, weights)
    opts = ResilienceOptions(faults=[Fault("b", after=10)])
    with ResilientSession(cluster, plan, graph, weights, replan, SessionOptions(), opts) as rs:
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="fits no remaining device") as info:
            rs.infer_many(frames)
        assert time.monotonic() - started < 10
        failed = info.value.failed
        assert failed and min(failed) >= 10 - 4  # only requests not completed before the kill
        done = [i for i in range(40) if i not in failed]
        for i in done:
            assert torch.equal(info.value.outputs[i], reference.run(frames[i]))
        # b is relaunched in the background; once it is back, requests run again on a and b
        deadline = time.monotonic() + 30
        while rs.no_plan and time.monotonic() < deadline:
            time.sleep(0.3)
            rs._retry_plan()
        assert rs.no_plan is None and sorted(rs.plan.devices) == ["a", "b"]
        again = rs.infer_many(frames[:5])
        for x, y in zip(frames[:5], again, strict=True):
            assert torch.equal(y, reference.run(x))


def test_a_stalled_request_is_replayed_on_a_fresh_deployment(small) -> None:
    """Finding 2 in the resilient loop: forged future request ids (the explicit insecure mode
    lets a local process through) make b refuse the real ones. With every device answering, the
    request misses its deadline and is replayed under new ids, which the forgeries cannot reach."""
    import zmq

    from edgeweave.runtime.deploy import split_plan
    from edgeweave.runtime.wire import pack

    graph, weights, profile = small
    cluster = _cluster(("a", "b"))
    replan = _replan(profile, graph)
    plan = replan(cluster)
    ((task, (spec, *_)),) = split_plan(plan, graph)["b"].receives(graph).items()
    value = torch.zeros(spec["shape"])
    frames = make_inputs(graph, 6, seed=9)
    reference = GraphRunner(graph, weights)
    options = SessionOptions(insecure=True, request_timeout_s=1.0)
    ctx = zmq.Context()
    try:
        with ResilientSession(cluster, plan, graph, weights, replan, options) as rs:
            forger = ctx.socket(zmq.DEALER)
            forger.connect(rs.remotes["b"].endpoint)
            for request in range(8):
                header = {"type": "data", "request": request, "task": task, "values": [spec["name"]], "src": "a"}
                forger.send_multipart(pack({**header, "t_start": time.time(), "bytes": value.numel() * 4}, [value]))
            time.sleep(0.5)
            start = time.monotonic()
            outputs = rs.infer_many(frames)
            took = time.monotonic() - start
            report = rs.report()
            forger.close(0)
    finally:
        ctx.destroy(0)
    for x, y in zip(frames, outputs, strict=True):
        assert torch.equal(y, reference.run(x))
    assert report["failures"][0]["device"] is None and "deadline" in report["failures"][0]["reason"]
    assert report["replayed"] >= 1 and took < 5.0


def test_a_restarted_hand_started_worker_is_greeted_again_and_used(small, tmp_path) -> None:
    """Finding 6: a worker restarted behind its address was never greeted again (a 120 s stall,
    then a source-only plan). Its new nonce shows the restart; it is greeted and used again."""
    import zmq

    from edgeweave.runtime.security import create_keys, load_keyring, stop_authenticator
    from edgeweave.runtime.worker import Worker

    graph, weights, profile = small
    keys = tmp_path / "keys"
    create_keys(keys, ["coordinator", "a", "b"])

    def start_b(endpoint: str) -> tuple[zmq.Context, Worker]:
        ctx = zmq.Context()
        worker = Worker("b", endpoint, ctx, keyring=load_keyring(keys, "b"), persistent=True)
        worker.start_background()
        return ctx, worker

    def stop_b(ctx: zmq.Context, worker: Worker) -> None:
        worker.stop()
        stop_authenticator(ctx)
        ctx.destroy(0)

    ctx, worker = start_b("tcp://127.0.0.1:*")
    endpoint = worker.endpoint
    devices = {"a": {"speed": 1.0, "memory": "1GiB"}, "b": {"speed": 1.0, "memory": "1GiB", "address": endpoint}}
    cluster = Cluster.from_dict(
        {"source": "a", "devices": devices, "links": {"default": {"bandwidth": "10Gbps", "latency": "0ms"}}}
    )
    replan = _replan(profile, graph)
    plan = replan(cluster)
    frames = make_inputs(graph, 40, seed=4)
    reference = GraphRunner(graph, weights)
    try:
        with ResilientSession(cluster, plan, graph, weights, replan, SessionOptions(keys=keys)) as rs:
            first = rs.infer_many(frames[:10])
            stop_b(ctx, worker)
            ctx, worker = start_b(endpoint)  # restarted within milliseconds, same address
            rest = rs.infer_many(frames[10:])
            deadline = time.monotonic() + 10
            while sorted(rs.plan.devices) != ["a", "b"] and time.monotonic() < deadline:
                rs.infer_many(frames[:2])
            assert sorted(rs.plan.devices) == ["a", "b"] and worker.deployment is not None
            failures = rs.report()["failures"]
    finally:
        stop_b(ctx, worker)
    for x, y in zip(frames, first + rest, strict=True):
        assert torch.equal(y, reference.run(x))
    assert failures and failures[0]["device"] == "b"


# -- estimator and hysteresis ------------------------------------------------------------------


def test_estimator_recovers_rate_and_latency_from_mixed_sizes() -> None:
    est = LinkEstimator(alpha=0.5)
    bw, lat = 20e6, 0.004
    for nbytes in (10_000, 50_000, 200_000, 30_000, 120_000, 80_000) * 3:
        est.add("a", "b", nbytes, lat + 8 * nbytes / bw)
    e = est.links[("a", "b")]
    assert e.latency_s == pytest.approx(lat, rel=1e-6)
    assert est.bandwidth("a", "b") == pytest.approx(bw, rel=1e-3)  # early samples predate the fit
    assert est.bandwidth("b", "a") is None


def test_estimator_smooths_a_step_and_reads_pongs() -> None:
    est = LinkEstimator(alpha=0.3)
    for _ in range(10):
        est.add_pong("b", {"links": [["a", 125_000, 0.01]]})  # 100 Mbps
    assert est.bandwidth("a", "b") == pytest.approx(100e6)
    est.add_pong("b", {"links": [["a", 125_000, 0.1]]})  # one sample at 10 Mbps moves it by alpha
    assert est.bandwidth("a", "b") == pytest.approx(0.7 * 100e6 + 0.3 * 10e6)
    est.add_pong("b", {"links": [["a", "junk"], None, ["a", 1, -1]]})  # ignored, never trusted
    assert est.links[("a", "b")].samples == 11


def test_hysteresis_does_not_flap_inside_the_band_and_switches_outside() -> None:
    h = Hysteresis(low=0.5, high=2.0, confirm=3, hold_s=1.0)
    h.switched({("a", "b"): 100e6}, now=0.0)
    link = ("a", "b")
    # noise within [50, 200] Mbps, even touching both edges: never a switch
    assert not any(h.update(link, bps, 5.0 + k) for k, bps in enumerate([60e6, 190e6, 51e6, 199e6, 80e6] * 4))
    # two samples outside then one inside resets the count
    assert not h.update(link, 10e6, 30.0) and not h.update(link, 10e6, 30.1)
    assert not h.update(link, 90e6, 30.2)
    assert not h.update(link, 10e6, 30.3) and not h.update(link, 10e6, 30.4)
    assert h.update(link, 10e6, 30.5)  # three in a row outside: switch
    h.switched({link: 10e6}, now=31.0)
    assert not any(h.update(link, 300e6, 31.1 + 0.1 * k) for k in range(5))  # hold time not over
    assert h.update(link, 300e6, 32.5)
    assert not h.update(("x", "y"), 1.0, 40.0)  # a link the plan does not use never triggers


def test_plan_cache_shares_plans_for_nearby_conditions() -> None:
    made = []
    cache = PlanCache(lambda cond, devices: made.append((cond, devices)) or len(made))
    p1, q1 = cache.get({("a", "b"): 100e6}, ("a", "b"))
    p2, _ = cache.get({("a", "b"): 103e6}, ("a", "b"))
    p3, _ = cache.get({("a", "b"): 10e6}, ("a", "b"))
    p4, _ = cache.get({("a", "b"): 100e6}, ("a",))
    assert p1 == p2 != p3 and p4 not in (p1, p3)
    assert (cache.hits, cache.misses) == (1, 3)
    assert q1[("a", "b")] == quantise(100e6) and 0.84 < quantise(100e6) / 100e6 < 1.19


# -- a link dropped for 5 s (network namespaces, root only) ---------------------------------------


def _netns_works() -> bool:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _netns_works(), reason="needs root and Linux network namespaces")
def test_link_down_for_5s_falls_back_to_local_then_uses_the_device_again(small) -> None:
    from edgeweave.runtime.netns import NetnsCluster

    graph, weights, profile = small
    cluster = _cluster(("a", "b"), bandwidth="1Gbps")
    replan = _replan(profile, graph)
    plan = replan(cluster)
    frames = make_inputs(graph, 200, seed=7)
    reference = GraphRunner(graph, weights)
    opts = ResilienceOptions(faults=[Fault("b", after=30, kind="link", duration_s=5.0)])
    with NetnsCluster(["a", "b"], "a", {("a", "b"): 1e9, ("b", "a"): 1e9}, prefix="ewr") as net:
        with ResilientSession(cluster, plan, graph, weights, replan, SessionOptions(links="netns"), opts, net) as rs:
            outputs = rs.infer_many(frames, rate_per_s=20)  # 10 s of frames
            report = rs.report()
            failures, replans = rs.failures, rs.replans
            assert sorted(rs.plan.devices) == ["a", "b"]  # b is used again after it returned
    for x, y in zip(frames, outputs, strict=True):
        assert torch.equal(y, reference.run(x))
    assert [f["device"] for f in failures] == ["b"]
    assert failures[0]["detect_s"] < 2.6  # declared dead within the 2 s heartbeat limit (+ one beat)
    local, back = replans[0], replans[-1]
    assert local["reason"] == "failure" and local["devices"] == ["a"]
    assert local["at"] + local["switch_s"] - failures[0]["at"] < 1.0  # local fallback within 1 s of detection
    assert back["reason"] == "rejoin" and back["devices"] == ["a", "b"]
    assert back["at"] - failures[0]["at"] > 2.0  # only once the link was back
    assert report["replayed"] >= 0 and report["recovery_s"][0] < 4.0


# -- the command line ----------------------------------------------------------------------------


def small_cnn() -> nn.Module:
    """A factory for the CLI test (`test_resilience:small_cnn`)."""
    layers = []
    for cin, cout in ((3, 8), (8, 8), (8, 8), (8, 8)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_cli_run_with_a_fault_reports_recovery(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "source: a\ndevices:\n"
        + "".join(f"  {d}: {{speed: 1.0, memory: 1GiB}}\n" for d in "abc")
        + "links:\n  default: {bandwidth: 10Gbps, latency: 0ms}\n"
    )
    args = ["run", "test_resilience:small_cnn", "--input-shape", "1,3,16,16", "--cluster", str(cluster)]
    args += ["--strategy", "even", "--requests", "60", "--fault", "c@20", "--no-cache", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-c", "from edgeweave.cli import main; main()", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(done.stdout)
    assert run["correct"] and run["requests"] == 60
    rec = run["recovery"]
    assert [f["device"] for f in rec["failures"]] == ["c"] and rec["failures"][0]["recovery_s"] < 3.0
    assert rec["replans"][0]["devices"] == ["a", "b"] and len(rec["recovery_s"]) == 1
    marks = [e["name"] for e in json.loads(Path(run["trace"]).read_text())["traceEvents"] if e.get("ph") == "i"]
    assert "failure c" in marks and "recovered" in marks


def test_plan_cache_reuses_the_nearest_plan_within_a_step() -> None:
    cache = PlanCache(lambda cond, devices: dict(cond))
    both = {("a", "b"): 47e6, ("b", "a"): 47e6}
    made, _ = cache.get(both, ("a", "b"))
    plan, planned = cache.get({("a", "b"): 47e6, ("b", "a"): 67e6}, ("a", "b"))  # b->a half an octave up
    assert plan is made and planned == dict(cache.key(both)[1])
    far, _ = cache.get({("a", "b"): 47e6, ("b", "a"): 200e6}, ("a", "b"))
    assert far is not made and (cache.hits, cache.misses) == (1, 2)


def _worker_pids(parent: int, device: str) -> list[int]:
    """Local worker processes for `device` that `parent` started (`python -m edgeweave.runtime DEVICE ...`)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"edgeweave.runtime" in argv and device.encode() in argv:
            found.append(int(entry))
    return found


def _connections_in(pid: int) -> int:
    """Established TCP connections into the port process `pid` listens on (its peers, once deployed)."""
    import os

    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return 0
    ports = {row[1].rsplit(":", 1)[1] for row in rows if row[3] == "0A" and f"socket:[{row[9]}]" in inodes}
    return sum(1 for row in rows if row[3] == "01" and row[1].rsplit(":", 1)[1] in ports)


def test_by_default_a_run_survives_a_worker_killed_from_outside(tmp_path) -> None:
    """Issue 13, item 6: with default options (no --adapt, no --fault) a worker SIGKILLed in the
    middle of 400 requests leaves all 400 correct; `recovery` says what happened."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "source: a\ndevices:\n"
        + "".join(f"  {d}: {{speed: 1.0, memory: 1GiB}}\n" for d in "abc")
        + "links:\n  default: {bandwidth: 10Gbps, latency: 0ms}\n"
    )
    args = ["run", "test_resilience:small_cnn", "--input-shape", "1,3,16,16", "--cluster", str(cluster)]
    args += ["--strategy", "even", "--requests", "400", "--rate", "80", "--no-cache", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edgeweave.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
    )
    try:
        deadline = time.monotonic() + 60
        while not (pids := _worker_pids(proc.pid, "c")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids, "worker c never started"
        while _connections_in(pids[0]) < 2 and time.monotonic() < deadline:  # the coordinator's, then b's
            time.sleep(0.05)
        time.sleep(1.5)  # deployed, warmed up, in the stream of 400 (5 s at 80 frames/s)
        os.kill(pids[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    run = json.loads(out)
    assert run["requests"] == 400 and run["correct"], run["max_abs_err"]
    rec = run["recovery"]
    assert rec["enabled"] and [f["device"] for f in rec["failures"]] == ["c"]
    print(
        f"\nrecovery: {rec['recovery_s']} s, replayed {rec['replayed']}, detect {rec['failures'][0]['detect_s']:.2f} s"
    )


def test_cli_run_insecure_and_no_recover(tmp_path) -> None:
    """`--insecure` (loopback plaintext) and `--no-recover` reach the run; `recovery` is always in
    the JSON, saying recovery was off; `--fault` with `--no-recover` is refused."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "source: a\ndevices:\n  a: {speed: 1.0, memory: 1GiB}\n  b: {speed: 1.0, memory: 1GiB}\n"
        "links:\n  default: {bandwidth: 10Gbps, latency: 0ms}\n"
    )
    cli = [sys.executable, "-c", "from edgeweave.cli import main; main()", "run", "test_resilience:small_cnn"]
    cli += ["--input-shape", "1,3,16,16", "--cluster", str(cluster), "--strategy", "even", "--no-cache", "--json"]
    done = subprocess.run(
        [*cli, "--requests", "4", "--insecure", "--no-recover", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(done.stdout)
    assert run["correct"] and run["recovery"]["enabled"] is False and run["recovery"]["failures"] == []
    refused = subprocess.run(
        [*cli, "--requests", "4", "--no-recover", "--fault", "b@1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert refused.returncode != 0 and "--no-recover" in refused.stderr


def test_no_recover_fails_fast_and_still_reports(small) -> None:
    graph, weights, profile = small
    cluster = _cluster(("a", "b"))
    replan = _replan(profile, graph)
    frames = make_inputs(graph, 40, seed=3)
    opts = ResilienceOptions(faults=[Fault("b", after=10)], recover=False)
    with ResilientSession(cluster, replan(cluster), graph, weights, replan, SessionOptions(), opts) as rs:
        start = time.monotonic()
        with pytest.raises(DeviceFailure, match="device b"):
            rs.infer_many(frames)
        assert time.monotonic() - start < 5
        report = rs.report()
    assert report["enabled"] is False and [f["device"] for f in report["failures"]] == ["b"]
    assert report["replans"] == []


def test_connect_recovers_by_default() -> None:
    """Issue 13, item 6: the Python API re-plans and replays on a device loss by default."""
    import os
    import signal

    import edgeweave

    torch.manual_seed(1)
    module = small_cnn().eval()
    x = torch.randn(1, 3, 16, 16)
    frames = [torch.randn(1, 3, 16, 16) for _ in range(30)]
    with edgeweave.connect(_cluster(), None, module, example_input=x, strategy="even", objective="throughput") as s:
        assert sorted(s.plan.devices) == ["a", "b", "c"]
        first = s.infer_many(frames[:10])
        os.kill(s.remotes["c"].local.proc.pid, signal.SIGKILL)
        rest = s.infer_many(frames[10:])
        assert [f["device"] for f in s.report()["failures"]] == ["c"]
    reference = [module(f) for f in frames]
    for y, r in zip(first + rest, reference, strict=True):
        assert torch.allclose(y, r, rtol=1e-4, atol=1e-5)
