"""A worker: executes its device's part of a plan, overlapping receive, compute and send.

Threads, and why:
  receive  owns the ROUTER socket that the coordinator (control) and upstream peers (data)
           connect to; decodes frames and hands data to the compute thread.
  compute  runs ready tasks in (request, plan order): graph nodes, padded to the emulated
           device's speed; hands outgoing values to a sender.
  senders  one per outgoing link, owning a DEALER socket to that peer; paces each message
           through the link emulator (bandwidth, latency, bandwidth trace) and sends it.
So request k+1 is received while k computes and k-1 is sent. Memory stays bounded because the
coordinator admits a bounded number of requests and ZeroMQ's high-water marks block senders.

What arrives is not trusted: `protocol` checks every message in full against the deployment
before any tensor is built, `Admission` bounds the requests held per sender, libzmq's MAXMSGSIZE
cuts oversized frames, and a bad message is dropped and counted (`dropped` in the pong) while the
worker keeps serving everyone else. With keys (CURVE) only members connect, and deploy, collect
and shutdown are accepted only from the coordinator's key, and only on the connection of the
session the worker serves (see `Worker`): a second coordinator, even with the right key, is told
the worker is busy and cannot take it over. No frame is larger than the deployment's largest
tensor or a deploy chunk (MAXMSGSIZE), a connection that hands libzmq more than its deployment's
budget without completing a message is cut while libzmq is still assembling it, connections per
host are limited (`limits`), and memory of a refused large message is given back.
"""

from __future__ import annotations

import operator
import queue
import secrets
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import zmq

from edgeweave.graph.execute import GraphRunner, resolve_op
from edgeweave.graph.opgraph import INPUT, OpGraph, OpNode
from edgeweave.runtime import bands as band_ops
from edgeweave.runtime.admission import Admission
from edgeweave.runtime.deploy import load_weights_blob
from edgeweave.runtime.limits import ConnectionLimit, release_memory, source_fd
from edgeweave.runtime.links import LinkShaper, LinkSpec, wait_until
from edgeweave.runtime.protocol import (
    CONTROL,
    CONTROL_HEADER_LIMIT,
    COORDINATOR_ONLY,
    DATA_HEADER_LIMIT,
    Decoded,
    Drop,
    Incoming,
    NodeMsg,
    SpecMsg,
    check_control,
    check_probe,
    check_probed,
    decode_data,
    frame_len,
    join_deploy,
    parse_deploy,
    parse_header,
    value_spec,
)
from edgeweave.runtime.security import COORDINATOR, Keyring, curve_client, curve_server
from edgeweave.runtime.wire import pack

HWM = 16  # messages a socket queues before its sender blocks
MAX_EVENTS = 100_000  # telemetry kept between two collects
# a hand-started worker's frame limit, fixed before it knows any deployment: weights and deploy
# headers travel in DEPLOY_CHUNK frames, so only a peer's tensors may be larger than that
DEFAULT_MAX_FRAME = 64 << 20
LEASE_S = 5.0  # a session's coordinator connection silent this long (no ZMTP heartbeat) is gone
MAX_CONNECTIONS_PER_HOST = 64  # a plan needs one per peer device and coordinator; more is an attack
PROBE_MAX_AGE_S = 30.0  # a link probe that took longer than this is not a measurement
Result = Callable[[int, torch.Tensor], None]


def wall(mono: float) -> float:
    """A monotonic instant as wall-clock time (events from several processes share one clock)."""
    return time.time() - (time.monotonic() - mono)


@dataclass
class _Request:
    env: dict[str, torch.Tensor] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    bands: dict[str, list] = field(default_factory=dict)  # hybrid plans: bands held, by value
    programs: dict[tuple, Any] = field(default_factory=dict)  # band programs this request is in the middle of


class Deployment:
    """One device's part of a plan, ready to run."""

    def __init__(self, header: dict[str, Any], blob: bytes, held: dict[str, torch.Tensor] | None = None):
        msg = parse_deploy(header)  # typed: every field below is checked
        self.retired = threading.Event()  # set when a newer deployment replaces this one
        self.device: str = msg.device
        self.source: str = msg.source
        self.output: str = msg.output
        self.speed: float = float(msg.speed)
        # emulate another device: each task takes as long as the plan says it takes there
        self.emulate: bool = self.speed < 1.0 or bool(msg.emulate)
        self.tasks: list[dict[str, Any]] = msg.tasks
        self.order = {t["id"]: k for k, t in enumerate(self.tasks)}
        self.incoming = {t["id"] for t in self.tasks if t["kind"] == "transfer" and t["dst"] == self.device}
        self.expect = self._expectations(msg.receives)
        self.admission = Admission(msg.max_inflight, source=self.device == self.source, first=msg.first_request)
        self.max_frames = 1 + max((len(t.specs) for t in self.expect.values()), default=0)
        self.max_data_bytes = DATA_HEADER_LIMIT + max((t.nbytes for t in self.expect.values()), default=0)
        try:
            order = sorted(int(i) for i in msg.nodes)
        except ValueError:
            raise ValueError("node keys must be graph indices") from None
        self.local = {g: k for k, g in enumerate(order)}
        nodes = [_node(msg.nodes[str(g)]) for g in order]
        graph = OpGraph(model=msg.model, input_shape=msg.input_shape, input_dtype=msg.input_dtype, nodes=nodes)
        self.weights = load_weights_blob(blob)
        if msg.keep_weights:  # a re-plan ships only the weights this device does not hold yet
            merged = {**(held or {}), **self.weights}
            needed = {w for n in nodes for w in n.weights}
            missing = sorted(needed - merged.keys())
            if missing:
                raise ValueError(f"weights neither held nor shipped: {', '.join(missing[:3])}")
            self.weights = {k: merged[k] for k in needed}
        self.runner = GraphRunner(graph, self.weights) if nodes else None
        self.by_id = {t["id"]: t for t in self.tasks}
        self.bands = (
            band_ops.BandContext(
                OpGraph.from_dict(msg.graph.model_dump()),
                [t["region"] for t in self.tasks if t.get("region")],
                self.weights,
            )
            if msg.graph is not None
            else None
        )
        self.keep = self._keep_sets()
        # When the output reaches the source by a transfer, hand it over on arrival: the robot's
        # application must not wait for the source's compute thread to finish unrelated work.
        self.output_transfer = next(
            (
                t["id"]
                for t in self.tasks
                if t["id"] in self.incoming
                and self.output in t["values"]
                and self.device == self.source
                and t.get("region") is None  # a band of the output is gathered, not handed over
            ),
            None,
        )
        self.links = {dst: LinkSpec.from_dict(spec) for dst, spec in msg.links.items()}
        self.peers: dict[str, str] = msg.peers
        self.shape_bandwidth: bool = msg.shape_bandwidth
        self.epoch: float = msg.epoch if msg.epoch is not None else time.monotonic()
        for dst in {t["dst"] for t in self.tasks if t["kind"] == "transfer" and t["src"] == self.device}:
            if dst not in self.peers or dst not in self.links:
                raise ValueError(f"no endpoint or link given for peer {dst}")

    def _expectations(self, receives: dict[str, list[SpecMsg]]) -> dict[str, Incoming]:
        """What each incoming transfer must look like, from the deploy message's `receives`."""
        expect = {}
        for task in self.tasks:
            if task["id"] not in self.incoming:
                continue
            specs = receives.get(task["id"])
            if specs is None or [s.name for s in specs] != task["values"]:
                raise ValueError(f"deploy message does not describe the values of incoming task {task['id']}")
            values = tuple(value_spec(s.name, s.dtype, s.shape) for s in specs)
            if any(d < 0 for v in values for d in v.shape):
                raise ValueError(f"negative dimension in a value of task {task['id']}")
            expect[task["id"]] = Incoming(
                task["id"], task["src"], list(task["values"]), values, sum(v.nbytes for v in values)
            )
        return expect

    def _keep_sets(self) -> dict[str, set[str]]:
        """For each compute task, the values later tasks of this device still need."""
        keep: dict[str, set[str]] = {}
        later: set[str] = {self.output} if self.device == self.source else set()
        for task in reversed(self.tasks):
            if task["kind"] == "compute":
                keep[task["id"]] = set(later)
                if task.get("region") is not None and self.bands is not None:
                    later.update(self.bands.inputs_of(task["region"]))  # a band task reads whole inputs here
            elif task["src"] == self.device:
                later.update(task["values"])
        return keep


def _node(d: NodeMsg) -> OpNode:
    fn = resolve_op(d.op)  # a name looked up in torch.ops; nothing from the network is imported
    if fn is not operator.getitem and not isinstance(fn, torch._ops.OpOverload):
        raise ValueError(f"{d.op!r} is not an operator")
    return OpNode(
        name=d.name,
        op=d.op,
        args=d.args,
        kwargs=d.kwargs,
        inputs=d.inputs,
        weights=d.weights,
        out_shape=[],
        out_dtype="",
        out_bytes=0,
        param_bytes=0,
        flops=0,
        out_index=d.out_index,
    )


@dataclass(frozen=True)
class Message:
    """A received message once its size and header are checked: what every handler gets."""

    peer: bytes  # the ROUTER routing id of the connection it came on
    frames: list[Any]
    header: dict[str, Any]
    sender: str | None  # the CURVE-authenticated member (None without keys)
    owner: bool  # it came from the coordinator of the session this worker serves


class Worker:
    """Serves one device. In a worker process the receive loop runs in the main thread; the
    source device's worker runs inside the coordinator's process (the robot's application).

    `keyring` makes the socket a CURVE server and every outgoing connection a CURVE client;
    `max_frame_bytes` is libzmq's MAXMSGSIZE for the socket (fixed at bind, so the coordinator
    passes a limit derived from the deployment when it starts the worker); `remote_control=False`
    refuses deploy, collect and shutdown over the network (the source's worker is deployed in-process).

    One session at a time, any number in a lifetime: the coordinator connection whose hello
    finds the worker free owns it (`owner`) until it sends `release`, or until its connection is
    gone (ZMTP heartbeats close a silent connection; a lease check then finds the owner
    unreachable). Another coordinator's hello meanwhile gets `busy` and changes nothing.
    `persistent` (what `edgeweave worker` is) turns `shutdown` into `release`: a hand-started
    helper outlives its sessions. `nonce`, fresh per worker, is in every hello and pong, so a
    coordinator notices a worker that restarted behind the same address.
    """

    def __init__(
        self,
        name: str,
        endpoint: str,
        ctx: zmq.Context | None = None,
        on_result: Result | None = None,
        *,
        keyring: Keyring | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME,
        remote_control: bool = True,
        persistent: bool = False,
    ):
        self.name = name
        self.ctx = ctx or zmq.Context.instance()
        self.keyring = keyring
        self.max_frame_bytes = max_frame_bytes
        self.remote_control = remote_control
        self.persistent = persistent
        self.nonce = secrets.token_hex(8)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a peer that is gone says so
        # ZMTP heartbeats: a connection silent for HEARTBEAT_TIMEOUT (a frozen or cut-off peer or
        # coordinator) is closed by libzmq, so an owner that vanished is found by the lease check
        self.router.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(LEASE_S * 1000))
        # a connection that never completes its handshake holds a descriptor only this long
        self.router.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        if keyring is not None:
            curve_server(self.router, keyring)
        self.router.bind(endpoint)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.connections = ConnectionLimit(self.router, MAX_CONNECTIONS_PER_HOST)
        self.last_fd: int | None = None  # the connection the message being handled came on
        self.owner_fd: int | None = None  # the session coordinator's connection (may hold a deployment)
        self.on_result = on_result
        self.deployment: Deployment | None = None
        self.owner: bytes | None = None  # the active session's coordinator connection
        self.owner_seen = 0.0  # when the owner last sent anything (monotonic)
        self.sessions = 0  # sessions served in this worker's life
        self.inbox: queue.Queue = queue.Queue()
        self.senders: dict[str, tuple[threading.Thread, queue.Queue]] = {}
        self.requests: dict[int, _Request] = {}
        self.events: list[dict[str, Any]] = []
        # (src, bytes, seconds) of recent incoming transfers as this receiver saw them, for the
        # coordinator's bandwidth estimate; shipped with each pong, bounded between pongs
        self.link_samples: deque[tuple[str, int, float]] = deque(maxlen=256)
        self.error: str | None = None
        self.dropped = 0
        self.drops: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.compute_thread: threading.Thread | None = None
        self.recv_thread: threading.Thread | None = None
        # a deployment is built in a thread of its own while this one keeps answering pings;
        # the result is installed here: (peer, Deployment or the error that stopped it)
        self.builder: threading.Thread | None = None
        self.built: queue.Queue = queue.Queue()
        self.handlers: dict[str, Callable[[Message], None]] = {
            "data": self._on_data_msg,
            "probed": self._on_probed,
            "hello": self._on_hello,
            "ping": self._on_ping,
            "deploy": self._on_deploy,
            "probe": self._on_probe,
            "collect": self._on_collect,
            "release": self._on_release,
            "shutdown": self._on_shutdown,
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def start_background(self) -> None:
        self.recv_thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-recv", daemon=True)
        self.recv_thread.start()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        self.connections.start()
        while not self.stopping.is_set():
            self._install_built()
            self.connections.check()
            self.connections.check_held(self.hold_budget(), exempt=self.owner_fd)
            self._check_lease()
            # 10 ms: a connection streaming an endless message is cut about 10 ms past its budget
            if not poller.poll(10):
                continue
            frames = self.router.recv_multipart(copy=False)
            self.last_fd = source_fd(frames[-1])
            self.connections.delivered(self.last_fd)
            reason = self._serve_one(frames)
            del frames
            if reason == "too large":  # give the pages of a large refused message back
                release_memory()
        self._stop_threads()
        self.connections.stop()
        self.router.close(0)

    def _serve_one(self, frames: list[Any]) -> str | None:
        """Handle one message; the drop reason when it was dropped (counted), else None."""
        try:
            # the peer's frame popped in place, not a slice: the receive loop's list stays the only
            # holder of a deploy message's frames, which protocol.join_deploy releases as it copies
            self._handle(frames.pop(0).bytes, frames)
            return None
        except Drop as exc:
            self.dropped += 1
            self.drops[exc.reason] += 1
            return exc.reason
        except Exception:  # a bug must not take the device down for everyone: count it, say it
            self.dropped += 1
            self.drops["internal error"] += 1
            if self.drops["internal error"] <= 3:
                traceback.print_exc()
            return "internal error"

    def stop(self) -> None:
        self.stopping.set()
        if self.recv_thread is not None:
            self.recv_thread.join(timeout=5)

    # -- control -----------------------------------------------------------------------------
    def _reply(self, peer: bytes, header: dict[str, Any], tensors=()) -> bool:
        """Send to one connection; False when it is gone or not reading (the reply is dropped)."""
        try:
            self.router.send_multipart([peer, *pack(header, tensors)], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise

    def _sender(self, frames: list[Any]) -> str | None:
        """The member who sent a message, from its CURVE-authenticated ZAP User-Id (None without keys)."""
        if self.keyring is None:
            return None
        try:
            member = self.keyring.member(frames[0].get("User-Id"))
        except (zmq.ZMQError, AttributeError):
            member = None
        if member is None:  # cannot happen behind the ZAP handler; refuse rather than assume
            raise Drop("not a member", "message without an authenticated member key")
        return member

    def _may_coordinate(self, sender: str | None) -> bool:
        """Whether a connection may be a session's coordinator at all (its key, or no keys)."""
        if not self.remote_control:
            return False
        return self.keyring is None or sender == COORDINATOR

    def _handle(self, peer: bytes, frames: list[Any]) -> None:
        """Check a message's size and header (see `protocol`), then hand it to its handler;
        raises Drop to drop it."""
        if not frames:
            raise Drop("schema", "empty message")
        sender = self._sender(frames)
        owner = self.owner is not None and peer == self.owner and self._may_coordinate(sender)
        if owner:
            self.owner_seen = time.monotonic()
            self.owner_fd = self.last_fd
        dep = self.deployment
        if not owner:  # only the session's coordinator sends large or many-framed messages
            max_frames = max(2, dep.max_frames if dep else 1)
            if len(frames) > max_frames:
                raise Drop("too large", f"{len(frames)} frames")
            limit = dep.max_data_bytes if dep else DATA_HEADER_LIMIT
            if sum(frame_len(f) for f in frames) > limit:
                raise Drop("too large", "message exceeds the deployment's largest")
        header = parse_header(frames[0], CONTROL_HEADER_LIMIT if owner else DATA_HEADER_LIMIT)
        kind = header["type"]
        if kind in COORDINATOR_ONLY and not owner:
            raise Drop("not coordinator", f"{kind} from a peer that is not the coordinator")
        if kind in CONTROL:
            check_control(header, frames)
        self.handlers[kind](Message(peer, frames, header, sender, owner))

    def _on_data_msg(self, msg: Message) -> None:
        dep = self.deployment
        if dep is None:
            raise Drop("not deployed", "data before deployment")
        self._on_data(decode_data(msg.header, msg.frames, dep.expect, dep.admission, msg.sender))

    def _on_probed(self, msg: Message) -> None:
        """Filler bytes that measured a link for the coordinator's estimate: only from a peer of
        this deployment, started in the last few seconds (a t_start far in the past would make
        the link look slow and force a re-plan)."""
        src, nbytes, t_start = check_probed(msg.header, msg.frames, msg.sender)
        dep = self.deployment
        if dep is None or src == self.name or src not in dep.peers:
            raise Drop("spoofed", f"probe from {src[:40]!r}, not a peer of this deployment")
        took = time.time() - t_start
        if not 0.0 <= took <= PROBE_MAX_AGE_S:
            raise Drop("schema", "probe start time out of range")
        self.link_samples.append((src, nbytes, took))

    def _on_hello(self, msg: Message) -> None:
        if self._may_coordinate(msg.sender) and self.owner != msg.peer:
            if self.owner is not None:  # the active session is left alone
                self._reply(msg.peer, {"type": "busy", "device": self.name, "error": self._busy()})
                return
            self.owner, self.owner_seen, self.owner_fd = msg.peer, time.monotonic(), self.last_fd
            self.sessions += 1
        self._reply(
            msg.peer,
            {"type": "hello", "device": self.name, "max_frame_bytes": self.max_frame_bytes, "nonce": self.nonce},
        )

    def hold_budget(self) -> int:
        """Bytes a connection other than the coordinator's may have handed libzmq without
        completing a message: a full receive queue (HWM) of the deployment's largest messages and
        the handshake; more is a message that should never exist."""
        dep = self.deployment
        largest = (dep.max_data_bytes + 64 * dep.max_frames) if dep else DATA_HEADER_LIMIT + 64
        return (HWM + 2) * largest + (64 << 10)

    def _busy(self) -> str:
        quiet = time.monotonic() - self.owner_seen
        return (
            f"worker {self.name} is serving another session (its coordinator was last heard {quiet:.0f} s ago); "
            "it is free again when that session closes or its connection is gone"
        )

    def _on_ping(self, msg: Message) -> None:
        self._reply(
            msg.peer,
            {
                "type": "pong",
                "device": self.name,
                "nonce": self.nonce,
                "yours": msg.owner,  # False: this connection's session is not (or no longer) served here
                "deploying": self.builder is not None,
                "error": self.error,
                "dropped": self.dropped,
                "drops": dict(self.drops),
                "active": len(self.requests),
                "links": self.take_link_samples() if msg.owner else [],
            },
        )

    def _on_probe(self, msg: Message) -> None:
        check_probe(msg.header, msg.frames)
        self.probe(msg.header["dst"], msg.header["bytes"])

    def _on_collect(self, msg: Message) -> None:
        self._reply(msg.peer, {"type": "events", "device": self.name, "events": self.events, "error": self.error})
        self.events = []

    def _on_release(self, msg: Message) -> None:
        self.release()
        self._reply(msg.peer, {"type": "released", "device": self.name})

    def _on_shutdown(self, msg: Message) -> None:
        self._reply(msg.peer, {"type": "bye", "device": self.name})
        if self.persistent:  # a hand-started helper outlives its sessions
            self.release()
        else:
            self.stopping.set()

    def release(self) -> None:
        """End the current session here: its deployment stops, the worker is free for the next."""
        self._stop_threads()
        self.deployment = None
        self.requests.clear()
        self.events = []
        self.error = None
        self.dropped = 0
        self.drops = Counter()
        self.link_samples.clear()
        self.owner = None
        self.owner_fd = None

    def _check_lease(self) -> None:
        """Free the worker when its session's coordinator is gone: after a quiet second, a lease
        notice is sent to it; libzmq refuses it once the connection is closed (the coordinator
        died, or its heartbeats stopped for LEASE_S)."""
        if self.owner is None or time.monotonic() - self.owner_seen < 1.0:
            return
        try:
            self.router.send_multipart([self.owner, *pack({"type": "lease", "device": self.name})], flags=zmq.NOBLOCK)
            self.owner_seen = time.monotonic()
        except zmq.Again:  # alive but not reading: still the owner
            self.owner_seen = time.monotonic()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.release()

    def take_link_samples(self) -> list[list[Any]]:
        """Incoming-transfer samples since the last call (the coordinator's estimator reads them)."""
        out = []
        while self.link_samples:
            out.append(list(self.link_samples.popleft()))
        return out

    def _on_deploy(self, msg: Message) -> None:
        """Check the message's frames against its envelope here, then build the deployment in a
        thread of its own: pings are answered meanwhile, so the coordinator can tell a device
        that is busy loading weights from one that froze or was cut off."""
        try:
            if self.builder is not None:
                raise ValueError("a deployment is already being built here")
            header, blob = join_deploy(msg.header, msg.frames)
        except Exception as exc:
            self._reply(msg.peer, {"type": "deployed", "device": self.name, "error": f"{type(exc).__name__}: {exc}"})
            return
        held = self.deployment.weights if self.deployment is not None else None

        def build() -> None:
            try:
                self.built.put((msg.peer, self.build(header, blob, held)))
            except Exception as exc:  # reported to the coordinator by the receive thread
                self.built.put((msg.peer, exc))

        self.builder = threading.Thread(target=build, name=f"{self.name}-deploy", daemon=True)
        self.builder.start()

    def _install_built(self) -> None:
        """In the receive thread: install a deployment the builder finished, and say so."""
        if self.builder is None or self.built.empty():
            return
        peer, result = self.built.get()
        self.builder = None
        try:
            if isinstance(result, Exception):
                raise result
            if peer != self.owner:  # its session ended while it was being built
                raise ValueError("the session that sent this deployment is no longer served here")
            self.install(result)
            self._reply(peer, {"type": "deployed", "device": self.name})
        except Exception as exc:  # report, do not die: the coordinator says what went wrong
            self._reply(peer, {"type": "deployed", "device": self.name, "error": f"{type(exc).__name__}: {exc}"})

    def deploy(self, msg: dict[str, Any], blob: bytes) -> None:
        """Install a (new) deployment at once (the source's worker, in the coordinator's process)."""
        held = self.deployment.weights if self.deployment is not None else None
        self.install(self.build(msg, blob, held))

    def build(self, msg: dict[str, Any], blob: bytes, held: dict[str, torch.Tensor] | None) -> Deployment:
        """Validate and build a deployment (weights loaded, programs packed) without touching
        the one running: nothing of it is used until `install`."""
        deployment = Deployment(msg, blob, held)
        if self.keyring is not None:
            for dst in deployment.peers:
                if dst != self.name:
                    self.keyring.public_of(dst)
        return deployment

    def install(self, deployment: Deployment) -> None:
        """Stop the old deployment's threads and start the new one's."""
        self._stop_threads()
        self.deployment = deployment
        self.requests.clear()
        self.events = []
        self.error = None
        self.inbox = queue.Queue()
        try:
            for dst in {t["dst"] for t in self.deployment.tasks if t["kind"] == "transfer" and t["src"] == self.name}:
                self._start_sender(dst)
        except Exception as exc:  # e.g. out of file descriptors: this deployment cannot send, say so
            self.error = f"deployment failed: {type(exc).__name__}: {exc}"
            raise
        self.compute_thread = threading.Thread(target=self._compute_loop, name=f"{self.name}-compute", daemon=True)
        self.compute_thread.start()

    def _start_sender(self, dst: str) -> None:
        """Open the socket to `dst` here, in the caller's thread, so that running out of file
        descriptors fails the deployment (its reply says why) instead of killing a sender thread
        outside any error handling; the thread owns the socket from then on."""
        sock = self.ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, HWM)
            if self.keyring is not None:
                curve_client(sock, self.keyring, dst)
            sock.connect(self.deployment.peers[dst])
        except BaseException:
            sock.close(0)
            raise
        q: queue.Queue = queue.Queue()
        th = threading.Thread(target=self._send_loop, args=(dst, q, sock), name=f"{self.name}->{dst}", daemon=True)
        self.senders[dst] = (th, q)
        th.start()

    def probe(self, dst: str, nbytes: int) -> None:
        """Send `nbytes` of filler to `dst` through the emulated link, behind any data queued
        there: the receiver's sample measures a link that the current plan leaves idle."""
        dep = self.deployment
        if dep is None or dst == self.name or dst not in dep.peers or dst not in dep.links:
            raise Drop("schema", f"no link to probe towards {dst[:40]!r}")
        if dst not in self.senders:
            self._start_sender(dst)
        self.senders[dst][1].put((None, "probe", [], [torch.zeros(nbytes, dtype=torch.uint8)], time.monotonic()))

    def _stop_threads(self) -> None:
        if self.deployment is not None:
            self.deployment.retired.set()  # a sender blocked on a lost peer gives up
        for th, q in self.senders.values():
            q.put(None)
            th.join(timeout=5)
        self.senders = {}
        if self.compute_thread is not None:
            self.inbox.put(None)
            self.compute_thread.join(timeout=5)
            self.compute_thread = None

    # -- data path ---------------------------------------------------------------------------
    def submit(self, request: int, x: torch.Tensor) -> None:
        """Start a request on the source device (called in the coordinator's process)."""
        self.deployment.admission.start(request)
        self.inbox.put(("start", request, {INPUT: x}, None))

    def _on_data(self, data: Decoded) -> None:
        dep = self.deployment
        header, task = data.header, data.task.task
        arrived = time.time()
        self.link_samples.append((header["src"], int(header["bytes"]), arrived - float(header["t_start"])))
        if len(self.events) < MAX_EVENTS:
            self.events.append(
                {
                    "resource": f"link:{header['src']}->{self.name}",
                    "request": data.request,
                    "task": task,
                    "start": header["t_start"],
                    "end": arrived,
                    "kind": "transfer",
                    "bytes": header["bytes"],
                }
            )
        if task == dep.output_transfer and self.on_result is not None:
            self.on_result(data.request, data.values[dep.output])
        self.inbox.put(("recv", data.request, data.values, task))

    def _compute_loop(self) -> None:
        try:
            while True:
                item = self.inbox.get()
                if item is None or self.deployment.retired.is_set():
                    return
                kind, request, values, task = item
                state = self.requests.setdefault(request, _Request())
                if task is not None and self.deployment.by_id[task].get("region") is not None:
                    band_ops.receive(state.bands, self.deployment.by_id[task], values)
                else:
                    state.env.update(values)
                if task is not None:
                    state.done.add(task)
                self._advance()
        except Exception as exc:  # surfaced to the coordinator through ping/collect
            self.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()

    def _advance(self) -> None:
        """Run every ready task, oldest request first, until nothing more can run."""
        dep = self.deployment
        progress = True
        while progress:
            progress = False
            for request in sorted(self.requests):
                state = self.requests[request]
                for task in dep.tasks:
                    tid = task["id"]
                    if tid in state.done or tid in dep.incoming or not all(a in state.done for a in task["after"]):
                        continue
                    self._run(task, request, state)
                    state.done.add(tid)
                    progress = True
                if len(state.done) == len(dep.tasks):
                    self._finish(request, state)

    def _finish(self, request: int, state: _Request) -> None:
        dep = self.deployment
        if dep.bands is not None:
            band_ops.assemble(state.env, state.bands, dep.bands)
        if dep.device == dep.source and self.on_result is not None and dep.output_transfer is None:
            self.on_result(request, state.env[dep.output])
        del self.requests[request]
        dep.admission.finish(request)

    def _run(self, task: dict[str, Any], request: int, state: _Request) -> None:
        dep = self.deployment
        region = task.get("region")
        if dep.bands is not None and region is None:  # gathered bands become whole values first
            band_ops.assemble(state.env, state.bands, dep.bands)
        if task["kind"] == "transfer":
            if region is not None:
                tensors = band_ops.outgoing(state.env, state.bands, dep.bands, task)
            else:
                tensors = [state.env[v] for v in task["values"]]
            self.senders[task["dst"]][1].put((request, task["id"], task["values"], tensors, time.monotonic()))
            return
        start = time.monotonic()
        if region is not None:
            band_ops.compute(state.env, state.bands, dep.bands, task, state.programs)
        else:
            dep.runner.run_nodes([dep.local[i] for i in task["nodes"]], state.env, keep=dep.keep[task["id"]])
        elapsed = time.monotonic() - start
        if dep.emulate:  # a slower device, or one with its own profile: take the plan's time there
            wait_until(start + max(elapsed, float(task["time_s"])))
        end = time.monotonic()
        if len(self.events) >= MAX_EVENTS:
            return
        self.events.append(
            {
                "resource": f"dev:{self.name}",
                "request": request,
                "task": task["id"],
                "start": wall(start),
                "end": wall(end),
                "kind": "compute",
                "bytes": 0,
                "compute_s": elapsed,
                "planned_s": float(task["time_s"]) if dep.emulate else None,
            }
        )

    def _send_loop(self, dst: str, q: queue.Queue, sock: zmq.Socket) -> None:
        dep = self.deployment
        try:
            shaper = LinkShaper(dep.links[dst], dep.epoch, shape_bandwidth=dep.shape_bandwidth)
            while True:
                item = q.get()
                if item is None:
                    return
                request, task, names, tensors, queued_at = item
                nbytes = sum(t.numel() * t.element_size() for t in tensors)
                # The link is free from when the message was handed over, not from when this
                # thread finished pushing the previous one into ZeroMQ.
                start, deliver = shaper.reserve(nbytes, queued_at)
                if not wait_until(deliver, dep.retired):
                    return
                if request is None:  # a link probe: raw filler bytes
                    probed = {"type": "probed", "src": self.name, "t_start": wall(start), "bytes": nbytes}
                    frames = [*pack(probed), tensors[0].numpy().tobytes()]
                else:
                    header = {
                        "type": "data",
                        "request": request,
                        "task": task,
                        "values": names,
                        "src": self.name,
                        "t_start": wall(start),
                        "bytes": nbytes,
                    }
                    frames = pack(header, tensors)
                while not dep.retired.is_set():  # never block for ever on a peer that is gone
                    try:
                        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                        break
                    except zmq.Again:
                        dep.retired.wait(0.002)
        except Exception as exc:
            self.error = f"sending to {dst}: {type(exc).__name__}: {exc}"
        finally:
            sock.close(0)


def serve(
    listen: str,
    name: str,
    announce: Callable[[str], None] = print,
    keys: Path | None = None,
    max_frame_bytes: int = DEFAULT_MAX_FRAME,
    keyring: Keyring | None = None,
    persistent: bool = True,
) -> None:
    """Run a worker process; announces its bound endpoint first.

    `persistent` (`edgeweave worker`, a helper started by hand): it serves one session after
    another and never exits on a coordinator's word. A local worker that a session started
    (persistent=False) exits when that session tells it to, or when the session's process is gone.
    With `keys`, the worker loads its own secret key (`keys/NAME.key_secret`) and admits only
    the members whose public keys are in that folder; a `keyring` (a session's ephemeral keys,
    given to a local worker on stdin) does the same without files.
    """
    from edgeweave.runtime.security import load_keyring, stop_authenticator

    torch.set_num_threads(1)
    if keys is not None:
        keyring = load_keyring(keys, name)
    ctx = zmq.Context.instance()
    try:
        worker = Worker(name, listen, ctx, keyring=keyring, max_frame_bytes=max_frame_bytes, persistent=persistent)
        announce(f"READY {worker.endpoint}")
        worker.serve_forever()
    finally:
        stop_authenticator(ctx)
