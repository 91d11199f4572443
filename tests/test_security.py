"""Only members join: CURVE keys, refused strangers, private key files, no plaintext off loopback."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import zmq
from typer.testing import CliRunner

from edgeweave.cli import app
from edgeweave.errors import UserError
from edgeweave.graph import GraphRunner
from edgeweave.runtime.measure import RunConfig, make_inputs, run_plan
from edgeweave.runtime.protocol import deploy_frames
from edgeweave.runtime.security import (
    check_listen,
    create_keys,
    curve_client,
    is_loopback,
    load_keyring,
    stop_authenticator,
)
from edgeweave.runtime.session import DeviceFailure, Session, SessionOptions
from edgeweave.runtime.wire import pack, unpack
from edgeweave.runtime.worker import Worker

CLI = [sys.executable, "-c", "from edgeweave.cli import main; main()"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    create_keys(folder, ["coordinator", "a", "b"])
    return folder


class LiveWorker:
    """An in-process worker serving in a background thread, with its own zmq context."""

    def __init__(self, name: str, keyring=None, endpoint: str = "tcp://127.0.0.1:*"):
        self.ctx = zmq.Context()
        self.worker = Worker(name, endpoint, self.ctx, keyring=keyring, persistent=True)
        self.worker.start_background()

    def close(self) -> None:
        self.worker.stop()
        stop_authenticator(self.ctx)
        self.ctx.destroy(0)


def ask(sock: zmq.Socket, header: dict, timeout_ms: int = 1000, kind: str | None = None) -> dict | None:
    """Send a message and return the reply header (of type `kind`, when given), or None when
    nothing answers in time. A deploy header travels as a deploy message (envelope and chunks)."""
    sock.send_multipart(deploy_frames(header, b"") if header.get("type") == "deploy" else pack(header))
    deadline = time.monotonic() + timeout_ms / 1000
    while sock.poll(max(0, int(1000 * (deadline - time.monotonic())))):
        reply = unpack(sock.recv_multipart())[0]
        if kind is None or reply["type"] == kind:
            return reply
    return None


# -- key files -------------------------------------------------------------------------------
def test_keys_command_creates_private_pairs_and_keeps_existing_ones(tmp_path: Path) -> None:
    folder = tmp_path / "cluster-keys"
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "--out", str(folder), "--devices", "robot,server", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)["keys"]
    assert [k["name"] for k in made] == ["coordinator", "robot", "server"] and all(k["created"] for k in made)
    assert mode(folder) == 0o700
    for entry in made:
        secret, public = Path(entry["secret"]), Path(entry["public"])
        assert "secret" in secret.name and mode(secret) == 0o600
        assert public.exists() and "secret-key" not in public.read_text()
    before = (folder / "robot.key_secret").read_text()
    again = json.loads(runner.invoke(app, ["keys", "--out", str(folder), "--devices", "robot", "--json"]).stdout)
    assert [k["created"] for k in again["keys"]] == [False, False]
    assert (folder / "robot.key_secret").read_text() == before
    ring = load_keyring(folder, "server")
    assert sorted(ring.members.values()) == ["coordinator", "robot", "server"]


def test_keys_for_the_devices_of_a_cluster_file(tmp_path: Path) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        "source: r\ndevices:\n  r: {speed: 1, memory: 1GiB}\n  s: {speed: 1, memory: 1GiB}\n"
        "links:\n  default: {bandwidth: 1Gbps, latency: 1ms}\n"
    )
    result = CliRunner().invoke(app, ["keys", "--out", str(tmp_path / "k"), "--cluster", str(cluster), "--json"])
    assert result.exit_code == 0, result.output
    assert [k["name"] for k in json.loads(result.stdout)["keys"]] == ["coordinator", "r", "s"]


def test_a_loosened_secret_key_is_refused_naming_the_file(keys: Path) -> None:
    secret = keys / "b.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(UserError, match=rf"{secret}: refusing keys with loose permissions \(mode 0644"):
        load_keyring(keys, "b")
    proc = subprocess.run(
        [*CLI, "worker", "--name", "b", "--keys", str(keys), "--listen", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "loose permissions" in proc.stderr and "b.key_secret" in proc.stderr


def test_missing_and_malformed_keys_are_one_line_errors_naming_the_file(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such keys folder"):
        load_keyring(tmp_path / "nowhere", "b")
    with pytest.raises(UserError, match=r"c\.key_secret: missing secret key"):
        load_keyring(keys, "c")
    (keys / "x.key").write_text('curve\n    public-key = "not-a-key"\n')
    with pytest.raises(UserError, match=r"x\.key: malformed key file"):
        load_keyring(keys, "b")
    (keys / "x.key").unlink()
    (keys / "y.key").mkdir()  # a folder where a key file should be: unreadable
    with pytest.raises(UserError, match=r"y\.key: (cannot read|malformed)"):
        load_keyring(keys, "b")
    (keys / "y.key").rmdir()
    other = create_keys(tmp_path / "other", ["b"])[0]
    shutil.copy(other["public"], keys / "b.key")  # public key of another pair
    with pytest.raises(UserError, match=r"b\.key: missing or not b's public key"):
        load_keyring(keys, "b")


# -- where plaintext is allowed --------------------------------------------------------------
def test_plaintext_only_on_loopback() -> None:
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1") and is_loopback("tcp://[::1]:1")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://10.0.0.2:5555")
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://eth0:5555")
    check_listen("tcp://127.0.0.1:5555", None, insecure=False)
    check_listen("tcp://127.0.0.1:5555", None, insecure=True)
    check_listen("tcp://0.0.0.0:5555", Path("k"), insecure=False)
    with pytest.raises(UserError, match="refusing to listen on tcp://0.0.0.0:5555 without --keys"):
        check_listen("tcp://0.0.0.0:5555", None, insecure=False)
    with pytest.raises(UserError, match="--insecure is only allowed on loopback"):
        check_listen("tcp://10.0.0.2:5555", None, insecure=True)


def test_worker_command_refuses_insecure_on_a_network_address() -> None:
    proc = subprocess.run(
        [*CLI, "worker", "--name", "b", "--insecure", "--listen", "tcp://0.0.0.0:5555"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--insecure is only allowed on loopback" in proc.stderr


def test_a_session_refuses_a_network_device_without_keys(tiny) -> None:
    cluster = tiny.cluster(b={"address": "tcp://10.1.2.3:5555"})
    start = time.monotonic()
    with pytest.raises(UserError, match=r"device b is reached at tcp://10\.1\.2\.3:5555.*`edgeweave keys"):
        Session(cluster, tiny.plan, tiny.graph, tiny.weights)
    assert time.monotonic() - start < 5


# -- who may talk to a secured worker --------------------------------------------------------
def test_plaintext_and_unknown_keys_get_no_answer_but_members_do(keys: Path, tmp_path: Path) -> None:
    live = LiveWorker("b", load_keyring(keys, "b"))
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)
        plain.connect(live.worker.endpoint)
        assert ask(plain, {"type": "hello"}) is None

        stranger_keys = tmp_path / "stranger"
        create_keys(stranger_keys, ["coordinator"])
        shutil.copy(keys / "b.key", stranger_keys / "b.key")  # it knows b's public key, b does not know it
        stranger = ctx.socket(zmq.DEALER)
        curve_client(stranger, load_keyring(stranger_keys, "coordinator"), "b")
        stranger.connect(live.worker.endpoint)
        assert ask(stranger, {"type": "hello"}) is None

        member = ctx.socket(zmq.DEALER)
        curve_client(member, load_keyring(keys, "a"), "b")
        member.connect(live.worker.endpoint)
        assert ask(member, {"type": "hello"}, 5000)["device"] == "b"
        # A member that is not the coordinator cannot stop (or deploy to) the worker.
        member.send_multipart(pack({"type": "shutdown"}))
        pong = ask(member, {"type": "ping"}, 5000)
        assert pong["dropped"] == 1 and pong["drops"] == {"not coordinator": 1}
        assert not live.worker.stopping.is_set()
        for sock in (plain, stranger, member):
            sock.close(0)
    finally:
        ctx.destroy(0)
        live.close()


def test_without_keys_the_first_hello_owns_the_worker_until_it_releases_it() -> None:
    live = LiveWorker("b")
    ctx = zmq.Context()
    try:
        owner, other = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for sock in (owner, other):
            sock.connect(live.worker.endpoint)
        assert ask(owner, {"type": "hello"}, 5000)["type"] == "hello"
        busy = ask(other, {"type": "hello"}, 5000)
        assert busy["type"] == "busy" and "serving another session" in busy["error"]
        other.send_multipart(pack({"type": "shutdown"}))
        other.send_multipart(pack({"type": "collect"}))
        pong = ask(other, {"type": "ping"}, 5000)
        assert pong["dropped"] == 2 and pong["yours"] is False
        assert ask(owner, {"type": "ping"}, 5000)["yours"] is True
        # a hand-started (persistent) worker: shutdown releases the session, it does not exit
        assert ask(owner, {"type": "shutdown"}, 5000, kind="bye")["type"] == "bye"
        assert not live.worker.stopping.is_set()
        assert ask(other, {"type": "hello"}, 5000, kind="hello")["device"] == "b"  # free for the next one
        assert ask(owner, {"type": "ping"}, 5000, kind="pong")["yours"] is False
        for sock in (owner, other):
            sock.close(0)
    finally:
        ctx.destroy(0)
        live.close()


def test_a_worker_refuses_a_coordinator_with_an_unknown_key(tiny, keys: Path, tmp_path: Path) -> None:
    live = LiveWorker("b", load_keyring(keys, "b"))
    impostor = tmp_path / "impostor"
    shutil.copytree(keys, impostor)
    for f in impostor.glob("coordinator.*"):
        f.unlink()
    create_keys(impostor, ["coordinator"])  # a coordinator key that worker b has never seen
    try:
        cluster = tiny.cluster(b={"address": live.worker.endpoint})
        start = time.monotonic()
        with pytest.raises(DeviceFailure, match=r"device b: the worker at .* refused this coordinator's key"):
            Session(cluster, tiny.plan, tiny.graph, tiny.weights, SessionOptions(connect_timeout_s=3, keys=impostor))
        assert time.monotonic() - start < 3 + 2
        # A plaintext coordinator gets nowhere either: no answer within the connect timeout.
        with pytest.raises(DeviceFailure, match=r"device b: no worker answered at .* within 1 s"):
            Session(cluster, tiny.plan, tiny.graph, tiny.weights, SessionOptions(connect_timeout_s=1, insecure=True))
        assert live.worker.deployment is None
    finally:
        live.close()


def test_a_fully_secured_run_is_exact(tiny, keys: Path) -> None:
    """Keys for every member; b is started by hand with `edgeweave worker --keys`, the source runs here."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "worker", "--name", "b", "--keys", str(keys), "--listen", f"tcp://127.0.0.1:{port}"],
        stderr=subprocess.PIPE,
    )
    try:
        cluster = tiny.cluster(b={"address": f"tcp://127.0.0.1:{port}"})
        options = SessionOptions(connect_timeout_s=30, keys=keys)
        config = RunConfig(requests=6, warmup=1, options=options)
        result = run_plan(tiny.plan, cluster, tiny.graph, tiny.weights, config)
        assert result["correct"] and result["max_abs_err"] == 0.0
        assert result["links"]["a->b"]["transfers"] == 6 and result["links"]["b->a"]["transfers"] == 6
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_secured_run_with_local_workers_is_exact(zoo_graph, tmp_path: Path) -> None:
    """Local worker processes get --keys: three devices, every connection CURVE, outputs exact."""
    from edgeweave.cost.cluster import Cluster
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.plan.strategies import make_plan

    folder = tmp_path / "keys"
    create_keys(folder, ["coordinator", "a", "b", "c"])
    devices = {d: {"speed": 1.0, "memory": "8GiB"} for d in ("a", "b", "c")}
    cluster = Cluster.from_dict(
        {"source": "a", "devices": devices, "links": {"default": {"bandwidth": "100Gbps", "latency": "0ms"}}}
    )
    spec, graph, weights = zoo_graph("resnet18")
    profile = profile_graph(graph, weights, spec.example_input, warmup=0, repeats=1)
    plan = make_plan(profile, cluster, "pipeline", "throughput")
    assert len(plan.stages) == 3
    frames = make_inputs(graph, 3, seed=5)
    reference = GraphRunner(graph, weights)
    with Session(cluster, plan, graph, weights, SessionOptions(keys=folder)) as session:
        assert all(r.local is not None for r in session.remotes.values())
        outs = session.infer_many(frames)
    for x, y in zip(frames, outs, strict=True):
        assert torch.equal(y, reference.run(x))


# -- the request window and the deploy message -----------------------------------------------
def test_the_request_window_refuses_replays_duplicates_far_ids_and_greedy_peers() -> None:
    from edgeweave.runtime.admission import Admission, Refused

    window = Admission(max_inflight=2, source=False)  # slack 8, at most 4 requests held per peer
    window.admit(0, "x1", "a")
    window.finish(0)
    with pytest.raises(Refused, match="already completed"):
        window.admit(0, "x1", "a")
    with pytest.raises(Refused, match="far beyond"):
        window.admit(9, "x1", "a")
    for request in (1, 2, 3, 4):
        window.admit(request, "x1", "a")
    with pytest.raises(Refused, match="already arrived"):
        window.admit(4, "x1", "a")
    with pytest.raises(Refused, match="a already has 4 requests held"):
        window.admit(5, "x1", "a")
    window.admit(5, "x2", "c")  # another upstream device has its own allowance
    window.finish(1)
    window.admit(6, "x1", "a")
    assert window.holding() == 5
    source = Admission(max_inflight=2, source=True)
    with pytest.raises(Refused, match="not started"):
        source.admit(0, "xout", "b")
    source.start(0)
    source.admit(0, "xout", "b")


def test_a_deploy_message_cannot_name_anything_but_an_operator(tiny) -> None:
    from edgeweave.runtime.deploy import split_plan, weights_blob
    from edgeweave.runtime.worker import Deployment

    part = split_plan(tiny.plan, tiny.graph)["b"]
    extra = {"peers": {"a": "tcp://127.0.0.1:1"}, "links": {"a": {"bandwidth_bps": 1e9}}, "max_inflight": 2}
    msg = part.message(tiny.graph, tiny.plan, extra)
    assert Deployment(msg, weights_blob(tiny.weights, part.weight_keys)).expect["x1"].nbytes == 4 * 8 * 32 * 32
    for op in ("load_library.__call__.__call__", "import_module.x.y", "os.system", "aten.conv2d.default;rm"):
        bad = json.loads(json.dumps(msg))
        next(iter(bad["nodes"].values()))["op"] = op
        with pytest.raises((ValueError, UserError)):
            Deployment(bad, b"")
    bad = json.loads(json.dumps(msg))
    bad["receives"] = {}
    with pytest.raises(ValueError, match="does not describe the values"):
        Deployment(bad, b"")


# -- operators: a deployment may name only pure tensor computation (issue 13, finding 3) ------
def _crafted_deploy(tiny, nodes: dict) -> dict:
    """b's real deploy message with its three graph nodes replaced by `nodes` (same names, so the
    compute task, its keep sets and the output transfer still line up)."""
    from edgeweave.runtime.deploy import split_plan

    part = split_plan(tiny.plan, tiny.graph)["b"]
    extra = {"peers": {"a": "tcp://127.0.0.1:1"}, "links": {"a": {"bandwidth_bps": 1e9}}, "max_inflight": 2}
    msg = json.loads(json.dumps(part.message(tiny.graph, tiny.plan, extra)))
    msg["nodes"] = nodes
    return msg


def _node(name: str, op: str, args: list, inputs: list) -> dict:
    return {"name": name, "op": op, "args": args, "kwargs": {}, "inputs": inputs, "weights": [], "out_index": None}


def test_a_deployment_cannot_read_or_write_files_on_the_workers_host(tiny, tmp_path: Path) -> None:
    """The attack of the issue: from_file with a shared mapping, then fill_, overwrites a file;
    computed as soon as data arrives. The deploy is refused naming the operator; nothing is touched."""
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"A" * 64)
    nodes = {
        "4": _node("adaptive_avg_pool2d", "aten.from_file.default", [str(victim), True, 16], ["relu_1"]),
        "5": _node("view", "aten.fill_.Scalar", [{"ref": "adaptive_avg_pool2d"}, 1.0], ["adaptive_avg_pool2d"]),
        "6": _node("linear", "aten.clone.default", [{"ref": "view"}], ["view"]),
    }
    live = LiveWorker("b")
    ctx = zmq.Context()
    try:
        coordinator = ctx.socket(zmq.DEALER)
        coordinator.connect(live.worker.endpoint)
        assert ask(coordinator, {"type": "hello"}, 5000)["device"] == "b"
        reply = ask(coordinator, _crafted_deploy(tiny, nodes), 5000)
        assert reply["type"] == "deployed"
        assert "operator aten.from_file.default is not allowed on a worker" in reply["error"]
        assert live.worker.deployment is None
        # the data that would have triggered the compute: dropped, the file is as it was
        x = torch.zeros(1, 8, 32, 32)
        data = {"type": "data", "request": 0, "task": "x1", "values": ["relu_1"], "src": "a"}
        coordinator.send_multipart(pack({**data, "t_start": time.time(), "bytes": x.numel() * 4}, [x]))
        time.sleep(0.5)
        assert victim.read_bytes() == b"A" * 64
        for op, args in (
            ("aten.fill_.Scalar", [{"ref": "relu_1"}, 1.0]),  # writing into a received value
            ("aten._local_scalar_dense.default", [{"ref": "relu_1"}]),
            ("aten.set_.source_Storage", [{"ref": "relu_1"}, None]),
            ("evil.system.default", [{"ref": "relu_1"}]),
        ):
            bad = {**nodes, "4": _node("adaptive_avg_pool2d", op, args, ["relu_1"])}
            reply = ask(coordinator, _crafted_deploy(tiny, bad), 5000)
            assert f"operator {op} is not allowed on a worker" in reply["error"], reply
            assert live.worker.deployment is None
        coordinator.close(0)
    finally:
        ctx.destroy(0)
        live.close()


# -- forged results and hangs (issue 13, findings 1 and 2) -----------------------------------
def _forge(sock: zmq.Socket, task: str, request: int, name: str, value: torch.Tensor, src: str) -> None:
    """A data message as a peer would send it, with whatever `src` the forger likes."""
    header = {"type": "data", "request": request, "task": task, "values": [name], "src": src}
    frames = pack({**header, "t_start": time.time(), "bytes": value.numel() * value.element_size()}, [value])
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:  # nothing would take it (no handshake completed): the forger cannot even send
        pass


def test_by_default_a_local_process_cannot_forge_results(tiny) -> None:
    """The issue's attack: another process on the host sends the source 'b's result' with the
    right src for every request as soon as it starts. Default options: every connection is
    authenticated with this session's ephemeral keys, so the forgeries never arrive."""
    frames = make_inputs(tiny.graph, 8, seed=3)
    reference = GraphRunner(tiny.graph, tiny.weights)
    ctx = zmq.Context()
    try:
        with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights) as session:
            assert session.keys is not None and session.ephemeral  # no files: keys made for this session
            plain = ctx.socket(zmq.DEALER)
            plain.connect(session.source.endpoint)
            stranger = ctx.socket(zmq.DEALER)  # a CURVE client with a key of its own and the real server key
            stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
            stranger.curve_serverkey = session.ephemeral["a"].public
            stranger.connect(session.source.endpoint)
            real_submit = session.source.submit

            def submit_then_forge(request: int, x: torch.Tensor) -> None:
                real_submit(request, x)
                for sock in (plain, stranger):
                    _forge(sock, "xout", request, "linear", torch.full((1, 10), 666.0), "b")

            session.source.submit = submit_then_forge
            outs = session.infer_many(frames)
            assert session.source.dropped == 0  # nothing of theirs even reached the decoder
            for sock in (plain, stranger):
                sock.close(0)
        for x, y in zip(frames, outs, strict=True):
            assert torch.equal(y, reference.run(x))
    finally:
        ctx.destroy(0)


def test_future_request_ids_fail_the_run_at_its_deadline_instead_of_hanging(tiny) -> None:
    """The issue's hang: data with future request ids makes b compute them early and refuse the
    real ones. In the explicit insecure mode the forger gets through, but the run now fails at
    the request's deadline with the drop counters, instead of waiting for ever."""
    import threading

    ctx = zmq.Context()
    outcome: dict = {}
    try:
        with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights, SessionOptions(insecure=True)) as session:
            forger = ctx.socket(zmq.DEALER)
            forger.connect(session.remotes["b"].endpoint)
            for request in range(10):
                _forge(forger, "x1", request, "relu_1", torch.zeros(1, 8, 32, 32), "a")
            time.sleep(0.5)
            frames = make_inputs(tiny.graph, 4, seed=4)

            def run() -> None:
                try:
                    outcome["outs"] = session.infer_many(frames)
                except Exception as exc:  # what the caller sees
                    outcome["error"] = exc

            start = time.monotonic()
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(session.request_deadline_s + 10)
            assert not thread.is_alive(), "the run hung past its request deadline"
            assert isinstance(outcome.get("error"), DeviceFailure), outcome
            assert re.search(
                r"request 0 did not finish within its deadline of [0-9.]+ s; messages dropped", str(outcome["error"])
            )
            assert time.monotonic() - start < session.request_deadline_s + 5
            forger.close(0)
    finally:
        ctx.destroy(0)


def test_running_out_of_file_descriptors_fails_the_deployment_and_says_why(tiny) -> None:
    """Issue 13, finding 5: with descriptors exhausted a redeploy reported success and the sender
    thread died outside its error handling. Now the sender's socket is opened while deploying."""
    from edgeweave.runtime.deploy import split_plan, weights_blob

    class NoDescriptors:
        def __init__(self, ctx: zmq.Context):
            self.ctx = ctx

        def socket(self, kind: int) -> zmq.Socket:
            raise zmq.ZMQError(errno.EMFILE)

    live = LiveWorker("b")
    ctx = zmq.Context()
    try:
        live.worker.ctx = NoDescriptors(live.ctx)
        coordinator = ctx.socket(zmq.DEALER)
        coordinator.connect(live.worker.endpoint)
        assert ask(coordinator, {"type": "hello"}, 5000)["device"] == "b"
        part = split_plan(tiny.plan, tiny.graph)["b"]
        extra = {"peers": {"a": "tcp://127.0.0.1:1"}, "links": {"a": {"bandwidth_bps": 1e9}}, "max_inflight": 2}
        blob = weights_blob(tiny.weights, part.weight_keys)
        coordinator.send_multipart(deploy_frames(part.message(tiny.graph, tiny.plan, extra), blob))
        assert coordinator.poll(5000)
        reply = unpack(coordinator.recv_multipart())[0]
        assert reply["type"] == "deployed" and "Too many open files" in reply["error"]
        assert "Too many open files" in ask(coordinator, {"type": "ping"}, 5000)["error"]
        coordinator.close(0)
    finally:
        ctx.destroy(0)
        live.close()


# -- a worker you can leave running (issue 13, item 5; findings 6, 7 and 8) -------------------
def _hand_started(keys: Path, port: int) -> subprocess.Popen:
    """`edgeweave worker --keys` for device b on `port`, as a robot's helper is started."""
    return subprocess.Popen(
        [*CLI, "worker", "--name", "b", "--keys", str(keys), "--listen", f"tcp://127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
    )


def test_a_hand_started_worker_serves_three_sessions_and_refuses_a_second_coordinator(tiny, keys: Path) -> None:
    port = free_port()
    proc = _hand_started(keys, port)
    reference = GraphRunner(tiny.graph, tiny.weights)
    cluster = tiny.cluster(b={"address": f"tcp://127.0.0.1:{port}"})
    options = SessionOptions(connect_timeout_s=30, keys=keys)
    try:
        for k in range(3):
            frames = make_inputs(tiny.graph, 3, seed=20 + k)
            with Session(cluster, tiny.plan, tiny.graph, tiny.weights, options) as session:
                assert session.remotes["b"].local is None  # the hand-started one, not a local process
                outs = session.infer_many(frames[:2])
                if k == 1:  # a second coordinator with the right key, while this session is active
                    start = time.monotonic()
                    with pytest.raises(DeviceFailure, match=r"device b .*: worker b is serving another session"):
                        Session(cluster, tiny.plan, tiny.graph, tiny.weights, replace(options, connect_timeout_s=5))
                    assert time.monotonic() - start < 5
                outs += session.infer_many(frames[2:])  # the active session is unaffected
            for x, y in zip(frames, outs, strict=True):
                assert torch.equal(y, reference.run(x))
            assert proc.poll() is None, "closing a session must not stop a hand-started worker"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_worker_restarted_behind_the_same_address_is_noticed_by_its_nonce(tiny, keys: Path) -> None:
    """Finding 6: a worker restarted on the same port within 1.4 s was never noticed (the run
    hung). Its pong now carries another nonce and says this session is not its own."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    first = LiveWorker("b", load_keyring(keys, "b"), endpoint)
    cluster = tiny.cluster(b={"address": endpoint})
    frames = make_inputs(tiny.graph, 2, seed=8)
    with Session(cluster, tiny.plan, tiny.graph, tiny.weights, SessionOptions(keys=keys)) as session:
        session.infer_many(frames)
        first.close()
        second = LiveWorker("b", load_keyring(keys, "b"), endpoint)  # a fresh process, same address
        try:
            start = time.monotonic()
            with pytest.raises(DeviceFailure, match=r"device b at .* (restarted|no longer serves this session)"):
                session.infer_many(frames)
            assert time.monotonic() - start < 3
            assert second.worker.deployment is None  # nothing ran there on the old session's word
        finally:
            second.close()


def test_deploying_to_a_frozen_device_fails_within_two_seconds(tiny) -> None:
    """Finding 7: the wait for a deploy reply checked no heartbeat (up to 120 s)."""
    with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights) as session:
        session.infer_many(make_inputs(tiny.graph, 1, seed=1))
        pid = session.remotes["b"].local.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(DeviceFailure, match=r"device b .*stopped answering while deploying"):
                session.redeploy(tiny.plan)
            took = time.monotonic() - start
            assert took < 2.5, f"took {took:.2f} s"
        finally:
            os.kill(pid, signal.SIGCONT)


def test_a_session_made_in_a_thread_that_exits_keeps_its_workers(tiny) -> None:
    """Finding 8: PR_SET_PDEATHSIG fired when the thread that started the workers exited."""
    import threading

    made: dict = {}
    thread = threading.Thread(
        target=lambda: made.setdefault("s", Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights))
    )
    thread.start()
    thread.join(60)
    session = made["s"]
    try:
        time.sleep(0.5)
        assert session.remotes["b"].local.exit_code() is None
        x = make_inputs(tiny.graph, 1, seed=2)[0]
        assert torch.equal(session.infer(x), GraphRunner(tiny.graph, tiny.weights).run(x))
    finally:
        session.close()


def test_a_meta_tensor_is_refused_and_the_session_keeps_serving(tiny) -> None:
    """Finding 8: a meta tensor given to infer() failed the source's worker for good."""
    x = make_inputs(tiny.graph, 1, seed=3)[0]
    with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights) as session:
        for bad in (torch.empty(x.shape, device="meta"), x.to_sparse()):
            with pytest.raises(UserError, match="dense CPU tensor"):
                session.infer(bad)
        assert torch.equal(session.infer(x), GraphRunner(tiny.graph, tiny.weights).run(x))


def test_a_hand_started_worker_is_freed_when_its_coordinator_is_killed(tiny, keys: Path, tmp_path: Path) -> None:
    """Item 5: a coordinator SIGKILLed mid-session must not leave a helper busy for ever: its
    connection closes, the worker's lease check finds it gone and serves the next session."""
    port = free_port()
    proc = _hand_started(keys, port)
    script = tmp_path / "coordinator.py"
    script.write_text(
        "import sys, time, torch\n"
        "from torch import nn\n"
        "from edgeweave.cost.cluster import Cluster\n"
        "from edgeweave.plan.ir import Plan\n"
        "from edgeweave.graph import capture\n"
        "from edgeweave.runtime.session import Session, SessionOptions\n"
        f"plan = Plan.model_validate_json(open({str(tmp_path / 'plan.json')!r}).read())\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),\n"
        "                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()\n"
        "graph, weights = capture(m, torch.randn(1, 3, 32, 32), 'tiny')\n"
        f"cluster = Cluster.load({str(tmp_path / 'c.json')!r})\n"
        f"s = Session(cluster, plan, graph, weights, SessionOptions(connect_timeout_s=30, keys={str(keys)!r}))\n"
        "print('UP', flush=True)\n"
        "time.sleep(600)\n"
    )
    cluster = tiny.cluster(b={"address": f"tcp://127.0.0.1:{port}"})
    (tmp_path / "plan.json").write_text(tiny.plan.model_dump_json())
    (tmp_path / "c.json").write_text(json.dumps(cluster.to_dict()))
    coordinator = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert coordinator.stdout.readline().strip() == b"UP"
        options = SessionOptions(connect_timeout_s=5, keys=keys)
        with pytest.raises(DeviceFailure, match="serving another session"):
            Session(cluster, tiny.plan, tiny.graph, tiny.weights, options)
        coordinator.kill()
        coordinator.wait(10)
        start = time.monotonic()
        while True:
            try:
                session = Session(cluster, tiny.plan, tiny.graph, tiny.weights, options)
                break
            except DeviceFailure:
                assert time.monotonic() - start < 8, "the killed coordinator's session still holds the worker"
                time.sleep(0.3)
        with session:
            x = make_inputs(tiny.graph, 1, seed=6)[0]
            assert torch.equal(session.infer(x), GraphRunner(tiny.graph, tiny.weights).run(x))
        print(f"\nfreed {time.monotonic() - start:.2f} s after its coordinator was killed")
    finally:
        coordinator.kill()
        proc.terminate()
        proc.wait(10)


def test_concurrent_infer_calls_from_many_threads_are_exact(tiny) -> None:
    """Held up in the issue (600 concurrent infer calls): the one request loop keeps it so; one
    thread at a time beats, the others wait for their results."""
    from concurrent.futures import ThreadPoolExecutor

    frames = make_inputs(tiny.graph, 64, seed=12)
    reference = GraphRunner(tiny.graph, tiny.weights)
    with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights) as session:
        with ThreadPoolExecutor(32) as pool:
            outs = list(pool.map(session.infer, frames, timeout=60))
    for x, y in zip(frames, outs, strict=True):
        assert torch.equal(y, reference.run(x))


def test_a_long_session_keeps_bounded_bookkeeping(tiny, monkeypatch) -> None:
    """A session that runs for days must not keep every output it ever handed over: results are
    dropped once taken, and only the newest HISTORY requests' timings are kept."""
    import edgeweave.runtime.session as session_module

    monkeypatch.setattr(session_module, "HISTORY", 8)
    frames = make_inputs(tiny.graph, 40, seed=13)
    with Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights) as session:
        for k in range(0, 40, 10):
            session.infer_many(frames[k : k + 10])
        assert len(session.submitted) <= 8 and len(session.results) <= 8
        assert all(out is None for out, _ in session.results.values())
        assert len(session.latencies()) == len(session.results)
