"""A live, deployed worker survives >= 100,000 hostile frames and still computes exactly.

The target is device b of a real two-device pipeline: a worker process started by a secured
Session (CURVE keys, the deployment-derived frame limit), mid-deployment, between legitimate
requests. The attacker is the strongest one the keys allow: a connection holding device a's key
(a compromised upstream device), so its frames pass authentication and reach the decoder.

Hypothesis draws, per example, a palette of defects and a seed; the example expands them into a
batch of frames, each carrying one to three defects applied to an otherwise valid data message
(so every frame is hostile and must be dropped, and the drop count must match exactly). After each
batch a ping on the same connection (ZeroMQ keeps order per connection) reads the worker's
`dropped` counter; the worker's RSS is read from /proc. Every few batches a legitimate request
runs through the pipeline and must equal single-device execution.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeweave.graph import GraphRunner
from edgeweave.runtime.deploy import split_plan
from edgeweave.runtime.measure import make_inputs
from edgeweave.runtime.security import create_keys, curve_client, load_keyring
from edgeweave.runtime.session import Session, SessionOptions
from edgeweave.runtime.wire import pack, unpack

BATCH = 200
EXAMPLES = 520  # x BATCH = 104,000 frames
RSS_BOUND = 32 << 20  # the worker's growth while under attack, bytes
# payload source for oversized tensor frames that are still below the frame limit (the deployment's
# largest tensor or a deploy chunk, 256 KiB, plus CURVE's overhead): frames above it are cut by libzmq
BIG = bytes(256 << 10)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Target:
    """The live worker b, the attacker's socket, and what a valid message to b looks like."""

    def __init__(self, tiny, folder: Path):
        self.tiny = tiny
        self.session = Session(tiny.cluster(), tiny.plan, tiny.graph, tiny.weights, SessionOptions(keys=folder))
        self.reference = GraphRunner(tiny.graph, tiny.weights)
        self.inputs = make_inputs(tiny.graph, 64, seed=11)
        self.used = 0
        self.legit(2)  # requests 0 and 1 complete: replays of them must be refused
        remote = self.session.remotes["b"]
        self.pid = remote.local.proc.pid
        part = split_plan(tiny.plan, tiny.graph)["b"]
        self.frame_limit = part.frame_limit(tiny.graph)
        ((self.task, specs),) = part.receives(tiny.graph).items()
        (spec,) = specs
        self.value = spec["name"]
        self.meta = {"dtype": spec["dtype"], "shape": spec["shape"], "nbytes": 4 * 8 * 32 * 32}
        self.payload = bytes(self.meta["nbytes"])
        self.slack = 4 * self.session.max_inflight
        self.ctx = zmq.Context()
        self.keyring = load_keyring(folder, "a")
        self.endpoint = remote.endpoint
        self.sock = self.attacker()
        self.dropped = self.ping()["dropped"]

    def attacker(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        curve_client(sock, self.keyring, "b")
        sock.connect(self.endpoint)
        return sock

    def ping(self) -> dict[str, Any]:
        self.sock.send_multipart(pack({"type": "ping"}))
        assert self.sock.poll(20_000), "worker b stopped answering"
        header, _ = unpack(self.sock.recv_multipart())
        assert header["type"] == "pong", header
        return header

    def legit(self, n: int) -> None:
        frames = self.inputs[self.used : self.used + n]
        self.used += n
        outs = self.session.infer_many(frames)
        for x, y in zip(frames, outs, strict=True):
            assert torch.equal(y, self.reference.run(x))

    def header(self, request: int) -> dict[str, Any]:
        return {
            "v": 1,
            "type": "data",
            "request": request,
            "task": self.task,
            "values": [self.value],
            "src": "a",
            "t_start": time.time(),
            "bytes": self.meta["nbytes"],
            "tensors": [dict(self.meta)],
        }

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.destroy(0)
        self.session.close()


# -- defects: each one alone makes a message invalid, and none undoes another ------------------
Msg = tuple[Any, list[Any]]  # (header dict, or raw header bytes once it is no longer a dict; frames)
WRONG_TYPED = {
    "request": ["0", 1.5, True, None, [], {}, -1, 2**62, 2**70, -(2**63)],
    "task": [1, None, [], {"id": "x"}, True],
    "values": ["v", {"v": 1}, [1], [None], [], ["v", "v"], None],
    "src": [0, None, [], True],
    "t_start": ["now", None, [], {}, True, float("nan"), float("inf"), float("-inf")],
    "bytes": ["32768", 32768.0, None, 32767, -1, 2**64, True],
    "tensors": [{}, "x", [[]], [None], [], None, 7],
}


def d_random_header(t: Target, r: random.Random, m: Msg) -> Msg:
    return r.randbytes(r.randint(0, 300)), m[1]


def d_truncated(t: Target, r: random.Random, m: Msg) -> Msg:
    raw = json.dumps(m[0]).encode() if isinstance(m[0], dict) else m[0]
    return raw[: r.randint(0, max(0, len(raw) - 1))], m[1]


def d_not_an_object(t: Target, r: random.Random, m: Msg) -> Msg:
    value = r.choice([[1, "data"], 3, "data", None, True, [m[0]] if isinstance(m[0], dict) else []])
    return json.dumps(value).encode(), m[1]


def d_deep(t: Target, r: random.Random, m: Msg) -> Msg:
    depth = r.randint(2000, 30000)  # below the 64 KiB header limit: the parser's recursion must not hurt
    return b"[" * depth + b"]" * depth, m[1]


def d_huge_number(t: Target, r: random.Random, m: Msg) -> Msg:
    return b'{"v":1,"type":"data","request":' + b"9" * r.randint(4400, 20000) + b"}", m[1]


def d_bad_utf8(t: Target, r: random.Random, m: Msg) -> Msg:
    return b'{"v":1,"type":"\xff\xfe' + r.randbytes(8) + b'"}', m[1]


def d_oversized_header(t: Target, r: random.Random, m: Msg) -> Msg:
    if isinstance(m[0], dict):
        return json.dumps({**m[0], "pad": "x" * r.randint(64 << 10, 200 << 10)}).encode(), m[1]
    return m[0] + b" " * (65 << 10), m[1]


def _dict_only(fn):
    def apply(t: Target, r: random.Random, m: Msg) -> Msg:
        if not isinstance(m[0], dict):
            return m
        head = dict(m[0])
        fn(t, r, head)
        return head, m[1]

    apply.__name__ = fn.__name__
    return apply


@_dict_only
def d_version(t, r, h) -> None:
    h["v"] = r.choice([0, 2, "1", 1.0, True, None, [1]])


@_dict_only
def d_type(t, r, h) -> None:
    h["type"] = r.choice(["", "DATA", "datum", 5, None, [], "x" * 1000, "pong", "deployed"])


@_dict_only
def d_wrong_type(t, r, h) -> None:
    key = r.choice(sorted(WRONG_TYPED))
    h[key] = r.choice(WRONG_TYPED[key])


@_dict_only
def d_extra_field(t, r, h) -> None:
    h[r.choice(["extra", "shape", "weights", "__class__", "pickle", "x" * 50])] = r.choice([1, "cos\nsystem", [], {}])


@_dict_only
def d_missing_field(t, r, h) -> None:
    originals = ["v", "type", "request", "task", "values", "src", "t_start", "bytes", "tensors"]
    h.pop(r.choice([k for k in originals if k in h] or ["v"]), None)


@_dict_only
def d_unknown_task(t, r, h) -> None:
    h["task"] = r.choice(["xout", "c0", "c1", "x0", "x1 ", "", "../x1", r.randbytes(6).hex()])
    if h["task"] == t.task:
        h["task"] += "?"


@_dict_only
def d_wrong_src(t, r, h) -> None:
    h["src"] = r.choice(["b", "coordinator", "c", "", "A", "a\x00"])


@_dict_only
def d_wrong_values(t, r, h) -> None:
    h["values"] = r.choice([["input"], [t.value, t.value], [t.value + "_"], ["linear"], [t.value.upper()]])


def _meta(h: dict) -> dict | None:
    metas = h.get("tensors")
    if isinstance(metas, list) and metas and isinstance(metas[0], dict):
        metas[0] = dict(metas[0])
        h["tensors"] = list(metas)
        return h["tensors"][0]
    h["tensors"] = [{"dtype": "float32", "shape": [1], "nbytes": 4}]  # still wrong: a shape b never receives
    return h["tensors"][0]


@_dict_only
def d_dtype(t, r, h) -> None:
    _meta(h)["dtype"] = r.choice(["float64", "float16", "int64", "uint8", "bool", "bogus", 5, None, "torch.float32"])


@_dict_only
def d_shape(t, r, h) -> None:
    meta = _meta(h)
    meta["shape"] = r.choice(
        [
            [1, 8, 32],
            [8, 1, 32, 32],
            [1, 8, 32, 33],
            [-1, 8, 32, 32],
            [0, 8, 32, 32],
            [2**40, 2**40],
            [2**31] * 8,
            [1.0, 8, 32, 32],
            ["1", 8, 32, 32],
            [1, 8, 32, 32, 1],
            [],
            [[1]],
            None,
            "1,8,32,32",
        ]
    )
    if r.random() < 0.5:  # and claim the enormous size that shape implies
        meta["nbytes"] = r.choice([2**62, 2**63 - 1, 2**40, 4 * 2**80])


@_dict_only
def d_nbytes(t, r, h) -> None:
    _meta(h)["nbytes"] = r.choice([32767, 32769, 0, -1, 2**63, "32768", 32768.0, None])


@_dict_only
def d_tensor_fields(t, r, h) -> None:
    meta = _meta(h)
    if r.random() < 0.5:
        meta.pop(r.choice(["dtype", "shape", "nbytes"]), None)
    else:
        meta["stride"] = [1]


@_dict_only
def d_replay(t, r, h) -> None:
    h["request"] = r.randrange(t.used)  # completed on b


@_dict_only
def d_far_ahead(t, r, h) -> None:
    # b has seen ids up to t.used - 1 and admits up to `slack` beyond
    h["request"] = r.choice([t.used + t.slack, t.used + t.slack + r.randint(1, 10**6), 2**62 - 1, 2**61])


@_dict_only
def d_control_from_member(t, r, h) -> None:
    kind = r.choice(["deploy", "shutdown", "collect"])
    h.clear()
    h.update({"v": 1, "type": kind, "tensors": []})
    if kind == "deploy" and r.random() < 0.5:
        h.update({"device": "b", "tasks": [], "nodes": {"0": {"op": "ops.load_library.__call__"}}})


@_dict_only
def d_control_malformed(t, r, h) -> None:
    kind = r.choice(["hello", "ping"])
    h.clear()
    h.update({"v": 1, "type": kind, "tensors": r.choice([[], [{"dtype": "float32"}], {}, None])})
    if h["tensors"] == []:
        h[r.choice(["device", "x", "request"])] = 1


def d_frame_length(t: Target, r: random.Random, m: Msg) -> Msg:
    n = len(t.payload)
    size = r.choice([0, 1, n - 1, n + 1, r.randint(0, n - 1), r.randint(n + 1, len(BIG))])
    return m[0], [memoryview(BIG)[:size]] + m[1][1:]


def d_frame_count(t: Target, r: random.Random, m: Msg) -> Msg:
    if r.random() < 0.4:
        return m[0], []
    return m[0], m[1] + [r.randbytes(r.randint(0, 64)) for _ in range(r.choice([1, 2, 5, 40]))]


def d_empty(t: Target, r: random.Random, m: Msg) -> Msg:
    return b"", []


DEFECTS = [
    d_random_header,
    d_truncated,
    d_not_an_object,
    d_deep,
    d_huge_number,
    d_bad_utf8,
    d_oversized_header,
    d_version,
    d_type,
    d_wrong_type,
    d_extra_field,
    d_missing_field,
    d_unknown_task,
    d_wrong_src,
    d_wrong_values,
    d_dtype,
    d_shape,
    d_nbytes,
    d_tensor_fields,
    d_replay,
    d_far_ahead,
    d_control_from_member,
    d_control_malformed,
    d_frame_length,
    d_frame_count,
    d_empty,
]
RARE = {d_deep, d_huge_number, d_oversized_header}  # costlier to send and parse: fewer of them


def hostile(t: Target, r: random.Random, palette: list) -> list[Any]:
    """One message with one to three defects from the palette."""
    fresh = t.used + r.randint(0, t.slack - 1)  # an id the window admits: the defects alone must refuse it
    msg: Msg = (t.header(fresh), [t.payload])
    for defect in r.sample(palette, min(len(palette), r.randint(1, 3))):
        if defect in RARE and r.random() < 0.9:
            defect = d_wrong_type
        msg = defect(t, r, msg)
    head, frames = msg
    raw = json.dumps(head).encode() if isinstance(head, dict) else head
    return [raw, *frames]


@pytest.fixture(scope="module")
def target(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "keys"
    create_keys(folder, ["coordinator", "a", "b"])
    t = Target(tiny, folder)
    yield t
    t.close()


def test_a_live_worker_survives_100k_hostile_frames_and_stays_exact(target: Target) -> None:
    t = target
    start, base_rss = time.monotonic(), rss(t.pid)
    stats = {"frames": 0, "batches": 0, "peak_rss": base_rss}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(
        palette=st.lists(st.sampled_from(DEFECTS), min_size=1, max_size=6, unique=True),
        seed=st.integers(0, 2**32 - 1),
    )
    def batch(palette: list, seed: int) -> None:
        r = random.Random(seed)
        t.dropped = t.ping()["dropped"]  # (a failed example may have left frames uncounted)
        for _ in range(BATCH):
            t.sock.send_multipart(hostile(t, r, palette), copy=False)
        pong = t.ping()
        assert pong["dropped"] - t.dropped == BATCH, (pong["drops"], [d.__name__ for d in palette])
        assert "internal error" not in pong["drops"] and pong["error"] is None and pong["active"] == 0
        t.dropped = pong["dropped"]
        stats["frames"] += BATCH
        stats["batches"] += 1
        stats["peak_rss"] = max(stats["peak_rss"], rss(t.pid))
        assert stats["peak_rss"] - base_rss < RSS_BOUND
        if stats["batches"] % 50 == 0:  # everyone else is still served, exactly
            t.legit(1)

    batch()
    fuzz_s = time.monotonic() - start
    drops = t.ping()["drops"]
    t.legit(8)  # afterwards: a stream of legitimate requests, exact
    assert t.session.remotes["b"].local.exit_code() is None
    assert stats["frames"] >= 100_000 and t.dropped >= stats["frames"]
    growth = stats["peak_rss"] - base_rss
    print(
        f"\nfuzz: {stats['frames']} hostile frames in {fuzz_s:.1f} s, {t.dropped} dropped and counted, "
        f"worker RSS {base_rss / 2**20:.1f} MiB -> peak {stats['peak_rss'] / 2**20:.1f} MiB "
        f"(+{growth / 2**20:.1f} MiB); drops by reason: {dict(sorted(drops.items()))}"
    )


def test_frames_beyond_the_limit_and_raw_garbage_are_cut_below_the_decoder(target: Target) -> None:
    """libzmq's MAXMSGSIZE drops the connection of a peer that sends an oversized frame, and bytes
    that are not ZMTP (or not CURVE) never reach the worker; it keeps serving everyone else."""
    t = target
    before, base_rss = t.ping()["dropped"], rss(t.pid)
    big = t.attacker()
    big.send_multipart([json.dumps(t.header(t.used)).encode(), bytes(t.frame_limit + 1)])
    time.sleep(0.5)
    big.close(0)
    host, port = t.endpoint.removeprefix("tcp://").rsplit(":", 1)
    r = random.Random(7)
    for k in range(40):
        with socket.create_connection((host, int(port)), timeout=2) as raw:
            if k % 2:  # a plaintext ZMTP 3.0 greeting (NULL mechanism) to a CURVE server
                raw.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00NULL" + bytes(16) + b"\x00" + bytes(31))
            raw.sendall(r.randbytes(r.randint(1, 1 << 16)))
    assert t.ping()["dropped"] == before  # nothing of that reached the decoder
    assert rss(t.pid) - base_rss < RSS_BOUND
    t.legit(4)


# -- whole messages and connections (issue 13, findings 4 and 5) ------------------------------
class _PeakRss:
    """A process's peak RSS, sampled every 5 ms in a thread until `stop`."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self.done = pid, rss(pid), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def test_a_members_2048_frames_of_a_mib_do_not_grow_the_worker(target: Target) -> None:
    """The issue's attack: one message of 2,048 frames of 1 MiB from a member's key grew a worker
    by 2 GB. Its frame limit is now the deployment's largest tensor or a deploy chunk (here 260
    KiB), so the first frame cuts the connection; and a message of many frames that each fit is
    cut once its connection has sent more than the deployment's budget without completing one."""
    t = target
    base = rss(t.pid)
    attacker = t.attacker()
    one_mib = bytes(1 << 20)
    with contextlib.suppress(zmq.Again):  # Again: the worker cut the connection, nothing more goes out
        for _ in range(2048):
            attacker.send(one_mib, zmq.SNDMORE | zmq.NOBLOCK, copy=False)
        attacker.send(b"", zmq.NOBLOCK)
    time.sleep(1.0)
    attacker.close(0)
    grown = rss(t.pid) - base
    assert grown < 64 << 20, f"worker grew by {grown / 2**20:.1f} MiB"
    # frames that each fit (256 KiB): libzmq assembles a message before the worker sees it, so the
    # worker watches each connection's bytes since its last complete message and cuts it past a
    # budget from the deployment (a few MiB here): 2,048 of them (512 MiB) are never all held
    peak = _PeakRss(t.pid)
    attacker = t.attacker()
    chunk = bytes(256 << 10)
    with contextlib.suppress(zmq.Again):
        attacker.send(json.dumps(t.header(t.used)).encode(), zmq.SNDMORE | zmq.NOBLOCK)
        for _ in range(2048):
            attacker.send(chunk, zmq.SNDMORE | zmq.NOBLOCK, copy=False)
        attacker.send(chunk, zmq.NOBLOCK, copy=False)
    time.sleep(3.0)
    attacker.close(0)
    held = peak.stop() - base
    after = rss(t.pid) - base
    mib = 2**20
    print(f"\n2048 x 1 MiB: +{grown / mib:.1f} MiB; 2048 x 256 KiB: peak +{held / mib:.1f}, +{after / mib:.1f} after")
    assert held < 64 << 20, f"worker held {held / 2**20:.1f} MiB of an unfinished message"
    assert after < 32 << 20
    t.legit(2)


def _closed_by_peer(conn: socket.socket) -> bool:
    """Whether the other end closed this connection (after whatever greeting it had sent)."""
    conn.setblocking(False)
    try:
        while conn.recv(4096):
            pass
        return True  # end of file
    except BlockingIOError:  # open, waiting for our greeting
        return False
    except ConnectionResetError:
        return True


def test_connections_beyond_the_per_host_limit_are_closed(target: Target) -> None:
    """1,100 half-open connections exhausted a worker's descriptors (finding 5): a host now holds
    at most MAX_CONNECTIONS_PER_HOST, the rest are shut at once, and members are still served."""
    from edgeweave.runtime.worker import MAX_CONNECTIONS_PER_HOST

    t = target
    host, port = t.endpoint.removeprefix("tcp://").rsplit(":", 1)
    conns = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3 * MAX_CONNECTIONS_PER_HOST)]
    try:
        t.ping()  # the worker's loop has run: its monitor saw every connection
        time.sleep(0.5)
        t.ping()
        closed = sum(_closed_by_peer(conn) for conn in conns)
        # the session's own connections (coordinator, source) count towards the host's limit too
        assert closed >= len(conns) - MAX_CONNECTIONS_PER_HOST, closed
        t.legit(2)
    finally:
        for conn in conns:
            conn.close()


def test_forged_probe_replies_are_dropped(target: Target) -> None:
    """Finding 8: forged `probed` replies fed the bandwidth estimate and forced re-plans to the
    source alone. Strangers cannot connect at all (CURVE); a member may report only its own
    link, with a start time in the last few seconds; anything else is dropped and counted."""
    t = target
    before = t.ping()
    filler = bytes(16 << 10)

    def probed(src: str, t_start: float) -> list:
        head = {"v": 1, "type": "probed", "tensors": [], "src": src, "t_start": t_start, "bytes": len(filler)}
        return [json.dumps(head).encode(), filler]

    t.sock.send_multipart(probed("a", time.time() - 3600.0))  # an hour "in flight": a dead-slow link
    t.sock.send_multipart(probed("a", time.time() + 60.0))  # from the future
    t.sock.send_multipart(probed("z", time.time()))  # a device a's key does not belong to
    pong = t.ping()
    assert pong["dropped"] - before["dropped"] == 3, pong["drops"]
    assert pong["drops"].get("spoofed", 0) - before["drops"].get("spoofed", 0) == 1
    assert pong["links"] == []  # nothing of it reaches an estimate (and only the coordinator reads them)
    t.legit(1)
