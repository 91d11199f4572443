"""Kernel-shaped links: namespaces come and go with the run, and htb delivers the configured rate.

Everything but `require_root`'s refusal needs root and working `ip netns`; those tests are
skipped elsewhere. Throughput is measured with plain TCP sockets in subprocesses started with
`exec_prefix`, the way the runtime starts device workers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from edgeweave.errors import UserError
from edgeweave.runtime import netns
from edgeweave.runtime.netns import NetnsCluster, cleanup_stale, require_root

PREFIX = "ewt"  # tests never touch a real run's ("ew") namespaces


def _netns_works() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(not _netns_works(), reason="needs root and Linux network namespaces")

# Receiver: accept one connection, skip a warm-up, count payload bytes for a window, print bits/s.
RECEIVER = """
import json, socket, sys, time
host, port, warm, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
srv = socket.create_server((host, port))
print("ready", flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20)
first = t0 = None
n = 0
while True:
    k = conn.recv_into(buf)
    now = time.monotonic()
    if not k:
        break
    first = first or now
    if t0 is None:
        if now - first >= warm:
            t0 = now
        continue
    n += k
    if now - t0 >= window:
        break
print(json.dumps({"bps": n * 8 / (now - t0)}), flush=True)
"""

# Sender: push bytes as fast as the socket takes them until the receiver hangs up.
SENDER = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
data = bytes(1 << 18)
try:
    while True:
        sock.sendall(data)
except OSError:
    pass
"""


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {entry["name"] for entry in json.loads(out or "[]")}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {entry["ifname"] for entry in json.loads(out)}


def _ours(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith(PREFIX)}


def _start_flow(cluster: NetnsCluster, src: str, dst: str, port: int, warm: float = 0.4, window: float = 2.0):
    """Start receiver (as dst) and sender (as src); returns both processes."""
    receiver = subprocess.Popen(
        [*cluster.exec_prefix(dst), sys.executable, "-c", RECEIVER, cluster.address(dst), str(port), str(warm),
         str(window)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert receiver.stdout.readline().strip() == "ready"
    sender = subprocess.Popen(
        [*cluster.exec_prefix(src), sys.executable, "-c", SENDER, cluster.address(dst), str(port)]
    )
    return receiver, sender


def _finish_flow(receiver: subprocess.Popen, sender: subprocess.Popen) -> float:
    try:
        out, _ = receiver.communicate(timeout=10)
        sender.wait(timeout=5)
    finally:
        for proc in (receiver, sender):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return json.loads(out.strip().splitlines()[-1])["bps"]


def _can_connect(cluster: NetnsCluster, device: str, host: str, port: int, timeout_s: float = 0.5) -> bool:
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout={timeout_s}).close()"
    done = subprocess.run([*cluster.exec_prefix(device), sys.executable, "-c", code], capture_output=True)
    return done.returncode == 0


def test_require_root_refuses_in_one_line(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(UserError, match="--links netns needs root") as info:
        require_root()
    assert "in-process shaper" in str(info.value)
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(UserError, match="tc not found"):
        require_root()


def test_bad_arguments_are_refused_before_touching_the_system():
    with pytest.raises(ValueError, match="prefix"):
        NetnsCluster(["a", "b"], "a", {}, prefix="Bad-Prefix")
    with pytest.raises(ValueError, match="source"):
        NetnsCluster(["a", "b"], "c", {})
    with pytest.raises(ValueError, match="pair"):
        NetnsCluster(["a", "b"], "a", {("a", "a"): 1e6})


@needs_netns
def test_namespaces_exist_during_the_run_and_are_gone_after():
    before = _ours(_namespaces()), _ours(_links())
    with NetnsCluster(["robot", "server", "jetson"], "robot", {("robot", "server"): 50e6}, prefix=PREFIX) as c:
        spaces = {c.namespace("server"), c.namespace("jetson")}
        assert spaces <= _namespaces()
        assert c.namespace("robot") is None and c.exec_prefix("robot") == []
        assert c.exec_prefix("server") == ["ip", "netns", "exec", c.namespace("server")]
        assert len({c.address(d) for d in ("robot", "server", "jetson")} | {c.control_address}) == 4
        assert all(len(name) <= 15 for name in _ours(_links()))
    assert not spaces & _namespaces()
    assert (_ours(_namespaces()), _ours(_links())) == before
    c.close()  # idempotent


@needs_netns
def test_everything_is_removed_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with NetnsCluster(["robot", "server"], "robot", {}, prefix=PREFIX) as c:
            space = c.namespace("server")
            assert space in _namespaces()
            raise RuntimeError("boom")
    assert space not in _namespaces()
    assert not _ours(_links())


@needs_netns
def test_cleanup_stale_removes_a_dead_runs_leftovers_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, bridge = f"{PREFIX}-{dead.pid}-0", f"{PREFIX}999br"  # what a crashed run leaves (no real subnet 999)
    with NetnsCluster(["robot", "server"], "robot", {}, prefix=PREFIX) as live:
        try:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "link", "set", "dev", bridge, "alias", f"{PREFIX}-{dead.pid}"], check=True)
            assert sorted(cleanup_stale(PREFIX)) == sorted([ns, bridge])
            assert live.namespace("server") in _namespaces()  # the live run (this process) is left alone
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    assert ns not in _namespaces() and bridge not in _links()


@needs_netns
def test_a_device_reaches_the_source_and_link_down_cuts_it_off():
    with NetnsCluster(["robot", "server"], "robot", {}, prefix=PREFIX) as c:
        listener = socket.create_server((c.address("robot"), 0))
        port = listener.getsockname()[1]
        try:
            assert _can_connect(c, "server", c.address("robot"), port)
            c.link_down("server")
            assert not _can_connect(c, "server", c.address("robot"), port)
            c.link_up("server")
            assert _can_connect(c, "server", c.address("robot"), port, timeout_s=3.0)  # a TCP retry may be needed
        finally:
            listener.close()
        with pytest.raises(ValueError, match="source"):
            c.link_down("robot")


@needs_netns
def test_htb_delivers_the_configured_rate_per_directed_pair():
    rates = {("robot", "server"): 50e6, ("server", "robot"): 50e6, ("jetson", "server"): 20e6}
    began = time.monotonic()
    with NetnsCluster(["robot", "server", "jetson"], "robot", rates, prefix=PREFIX) as c:
        # Three flows at once: source -> device (bridge egress), device -> source and device ->
        # device (namespace egress), each through its own class.
        flows = {pair: _start_flow(c, *pair, 5201 + i) for i, pair in enumerate(rates)}
        achieved = {pair: _finish_flow(*procs) for pair, procs in flows.items()}
        for i, (pair, bps) in enumerate(achieved.items()):
            if not 0.93 <= bps / rates[pair] <= 1.01:
                # Other sessions share this 2-core machine; a flow starved of CPU once (68%) in
                # dozens of runs. Measure a pair that missed once more, alone, before failing.
                achieved[pair] = _finish_flow(*_start_flow(c, *pair, 5211 + i))
        c.set_rate("server", "robot", 20e6)
        shown = subprocess.run([*c.exec_prefix("server"), "tc", "class", "show", "dev", "eth0"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "rate 20Mbit ceil 20Mbit" in shown
    print({f"{a}->{b}": f"{bps / 1e6:.2f} Mbit/s ({bps / rates[(a, b)]:.1%})" for (a, b), bps in achieved.items()})
    for pair, bps in achieved.items():
        ratio = bps / rates[pair]
        assert 0.93 <= ratio <= 1.01, (pair, bps, ratio)
    assert time.monotonic() - began < 15
