"""The coordinator: lives in the source device's process, deploys a plan, streams requests.

    session = edgeweave.connect(cluster, plan, "resnet18")
    y = session.infer(x)
    ys = session.infer_many(frames)

It starts a local worker process for every device without an `address` (the embedded
default), connects to the others, ships each its part of the plan and only its weights, then
admits requests through a bounded window so that nothing in the system grows without bound.
Failures surface as one-line errors naming the device; nothing hangs and no process is orphaned.

Every connection is CURVE-authenticated and encrypted. With `SessionOptions.keys` (a folder from
`edgeweave keys`) the coordinator's control sockets use the `coordinator` key pair, the source
device's worker its own, and the local workers it starts get `--keys` too. Without a folder the
session makes ephemeral key pairs for itself and every device (in memory, handed to its local
workers on their stdin), so a process on the same host can neither forge results nor deploy;
a device started by hand then needs the keys folder. `SessionOptions.insecure` is the explicit
plaintext opt-out, refused as soon as a device is reached at an address other than loopback.

Every request has a deadline (`request_deadline_s`): one that does not finish in time fails
with an error that says which request and what the workers dropped, never a silent hang.

Liveness is decided in one place, the heartbeat (`beat`): a worker process that exited, a ping
unanswered for `dead_after_s` (while deploying too: workers answer pings while they build a
deployment), a pong with another nonce (the worker restarted behind its address) or saying the
session is not its own (it was released, or lost this coordinator's connection), an error a
worker reports, or the oldest request past its deadline: each raises DeviceFailure naming the
device (None for a deadline). A worker started by hand is released on close, not stopped.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import zmq

from edgeweave.cost.cluster import Cluster
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph, dtype_name
from edgeweave.plan.ir import Plan
from edgeweave.runtime.deploy import FRAME_OVERHEAD, DevicePart, split_plan, weights_blob
from edgeweave.runtime.links import LinkSpec
from edgeweave.runtime.process import LocalWorker, launch_worker
from edgeweave.runtime.protocol import CONTROL_HEADER_LIMIT, deploy_frames
from edgeweave.runtime.security import (
    COORDINATOR,
    Keyring,
    auth_failures,
    curve_client,
    ephemeral_keyrings,
    is_loopback,
    load_keyring,
    start_authenticator,
    stop_authenticator,
)
from edgeweave.runtime.wire import WireError, pack, unpack
from edgeweave.runtime.worker import Worker


class DeviceFailure(UserError):
    """A device stopped during a run (process died, stopped answering, or failed a task).

    `device` names it (None when unknown), so that a resilient coordinator can re-plan without it.
    """

    def __init__(self, message: str, device: str | None = None):
        super().__init__(message)
        self.device = device


DEPLOY_RATE_BPS = 400e6  # what encrypting and decrypting a deploy message sustains, at least (bits/s)
HISTORY = 1 << 16  # requests whose timings a session keeps (latencies, run reports)


class RequestFailed(UserError):
    """Some requests could not be served (no plan fits the devices left); `outputs` holds the
    others (None where failed), `failed` the indices that failed."""

    def __init__(self, message: str, outputs: list[torch.Tensor | None], failed: list[int]):
        super().__init__(message)
        self.outputs = outputs
        self.failed = failed


@dataclass
class Pending:
    """A request the caller gave the loop: its input and where its output goes."""

    index: int
    x: torch.Tensor
    first_submitted: float | None = None  # a replay's latency counts from its first submission (or arrival)
    stalled: bool = False  # replayed once already because a request missed its deadline


class StreamPolicy(Protocol):
    """What the request loop asks of a recovery policy (resilient.py's ResilientSession)."""

    def maintain(self, inflight: dict[int, Pending]) -> None:
        """Once per loop turn: beat, probe, switch plans between requests; may raise DeviceFailure."""

    def holding(self) -> bool:
        """Admit nothing new (a plan switch waits for the requests in flight to drain)."""

    def unservable(self) -> str | None:
        """Why no request can be served now (no plan fits the devices left), or None."""

    def request_done(self) -> None:
        """A request completed."""

    def failed(self, exc: DeviceFailure, replay: list[Pending]) -> None:
        """A failure with `replay` taken out of flight (they go back into the queue): recover or raise."""


@dataclass
class Remote:
    """The coordinator's connection to one remote worker and what it knows of its liveness."""

    device: str
    endpoint: str
    sock: zmq.Socket
    local: LocalWorker | None = None
    last_pong: float = field(default_factory=time.monotonic)
    unanswered_since: float | None = None  # when the oldest ping still without a reply was sent
    max_frame_bytes: int | None = None
    nonce: str | None = None  # the worker process's, from its hello: another one means it restarted


@dataclass
class SessionOptions:
    connect_timeout_s: float = 5.0
    heartbeat_s: float = 0.25
    # a ping unanswered this long means dead; checked every heartbeat, so a device is declared
    # dead at most dead_after_s + heartbeat_s = 2 s after it stopped answering
    dead_after_s: float = 1.75
    max_inflight: int | None = None
    links: str = "shaper"  # or "netns": the kernel shapes bandwidth, the application adds latency
    listen_host: str = "127.0.0.1"
    keys: Path | None = None  # a folder from `edgeweave keys`: every connection is then CURVE
    connect_all: bool = False  # start/connect every device of the cluster, not only the plan's (re-planning)
    insecure: bool = False  # plaintext, loopback only: the explicit opt-out of ephemeral CURVE keys
    # seconds a request may take from submission before the run fails; None: derived from the
    # plan (request_deadline_s), so that a lost or refused message can never hang a caller
    request_timeout_s: float | None = None
    # bytes of data memory the kernel allows each local worker (RLIMIT_DATA, `process.hold_memory`),
    # by device: a process standing in for a small device is held to what that device has
    memory_limits: dict[str, int] = field(default_factory=dict)


class Session:
    def __init__(
        self,
        cluster: Cluster,
        plan: Plan,
        graph: OpGraph,
        weights: dict[str, torch.Tensor],
        options: SessionOptions | None = None,
        netns: Any = None,
    ):
        self.cluster, self.plan, self.graph = cluster, plan, graph
        self.options = options or SessionOptions()
        self.netns = netns
        self.ctx = zmq.Context()
        self.remotes: dict[str, Remote] = {}
        self.results: dict[int, tuple[torch.Tensor, float]] = {}
        self.cond = threading.Condition()
        self.next_request = 0
        self._oldest = 0  # no request below this id is still waiting for its result
        self.source: Worker | None = None
        self.submitted: dict[int, float] = {}  # request -> when its latency starts (wall time)
        self._started: dict[int, float] = {}  # request -> when it was (re)submitted: its deadline counts from here
        self._open: set[int] = set()  # submitted, not yet answered nor abandoned: the window's occupancy
        self._last_beat = 0.0
        self._beat_lock = threading.Lock()  # concurrent infer() calls: one of them beats (sockets are not shared)
        self.pending: list = []
        self.keys: Keyring | None = None  # the coordinator's key pair and the members' public keys
        self.ephemeral: dict[str, Keyring] = {}  # without a keys folder: this session's pairs, by member
        self.drops: dict[str, dict[str, int]] = {}  # each device's drop counters, from its last pong
        self.weights = weights
        self.held: dict[str, list[str]] = {}  # weight keys each device holds (from its last deployment)
        self.epoch = time.monotonic()  # link traces run from here, across redeployments
        self.on_telemetry: Any = None  # called with (device, pong header) for every pong
        try:
            self._start(weights)
        except BaseException:
            self.close()
            raise

    # -- start-up ----------------------------------------------------------------------------
    def _start(self, weights: dict[str, torch.Tensor]) -> None:
        plan, opts = self.plan, self.options
        parts = split_plan(plan, self.graph)
        if opts.connect_all:  # a later plan may use any device: connect them all now
            for dev in self.cluster.devices:
                parts.setdefault(dev, DevicePart(dev, []))
        source_keys = self._load_keys(parts)
        host = self.netns.address(plan.source) if self.netns else opts.listen_host
        self.source = Worker(
            plan.source,
            f"tcp://{host}:*",
            self.ctx,
            on_result=self._on_result,
            keyring=source_keys,
            max_frame_bytes=self.frame_limit(parts[plan.source]),
            remote_control=False,
        )
        self.source.start_background()
        endpoints = {plan.source: self.source.endpoint}
        pending = {}
        for dev, part in parts.items():
            if dev != plan.source and self.cluster.devices[dev].address is None:
                prefix = self.netns.exec_prefix(dev) if self.netns else None
                host = self.netns.address(dev) if self.netns else opts.listen_host
                limit = self.frame_limit(part)
                ring = self.ephemeral.get(dev)
                pending[dev] = launch_worker(
                    dev,
                    f"tcp://{host}:*",
                    prefix,
                    keys=opts.keys,
                    max_frame_bytes=limit,
                    keyring=ring,
                    memory_limit=opts.memory_limits.get(dev),
                )
        self.pending = list(pending.values())  # stopped by close() if start-up fails half way
        for dev in parts:
            if dev == plan.source:
                continue
            local = pending[dev].wait_ready() if dev in pending else None
            address = local.endpoint if local else self.cluster.devices[dev].address
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if self.keys is not None:
                curve_client(sock, self.keys, dev)
            self.remotes[dev] = Remote(dev, address, sock, local)
            endpoints[dev] = address
        self._greet()
        self.epoch = time.monotonic()
        self._deploy(parts, endpoints, first_request=0)

    def _deploy(self, parts: dict[str, Any], endpoints: dict[str, str], first_request: int) -> None:
        """Ship every device its part (weights only where they changed), one device after the other.
        `self.weights` may be a `WeightFile`: each blob is then read from the checkpoint when it is sent."""
        plan, opts, weights, epoch = self.plan, self.options, self.weights, self.epoch
        for dev, part in parts.items():
            # every peer's link, not only the plan's: an idle link can still be probed (resilient.py)
            links = {d: LinkSpec.for_pair(self.cluster, dev, d).to_dict() for d in endpoints if d != dev}
            extra = {
                "speed": self.cluster.devices[dev].speed,
                "emulate": self.cluster.devices[dev].profile is not None,  # its tasks take its own profile's times
                "peers": endpoints,
                "links": links,
                "epoch": epoch,
                "shape_bandwidth": opts.links != "netns",
                "max_inflight": self.max_inflight,
                "first_request": first_request,
                "keep_weights": dev in self.held,
            }
            msg = part.message(self.graph, plan, extra)
            held = set(self.held.get(dev, ()))
            blob = weights_blob(weights, [k for k in part.weight_keys if k not in held])  # only what is missing
            self.held[dev] = part.weight_keys
            if dev == plan.source:
                self.source.deploy(msg, blob)
                continue
            remote = self.remotes[dev]
            frames = deploy_frames(msg, blob)
            header_bytes = sum(len(f) for f in frames[1:]) - len(blob)
            self._check_fits(remote, header_bytes, part.frame_limit(self.graph))
            remote.sock.send_multipart(frames, copy=False)
            nbytes = header_bytes + len(blob)
            del frames, blob  # zmq holds the bytes until they are sent
            # one device at a time: its `deployed` says its weights left this process, so the
            # coordinator holds one stage's blob at most, never every stage's (issue 14)
            self._await_deployed({dev: nbytes})

    def _await_deployed(self, sent: dict[str, int]) -> None:
        """Wait for every device's `deployed`, pinging them meanwhile: a worker answers pings
        while it builds its deployment, so a device that froze or was cut off is declared dead
        within dead_after_s (plus the time its deploy message needs on the link), not after a
        long fixed timeout; one that keeps answering may take as long as its weights need."""
        opts = self.options
        waiting = {dev: self.remotes[dev] for dev in sent}
        # a ping waits behind the deploy message on its connection: allow twice the time its bytes
        # need on the link, or through CURVE on a small CPU (DEPLOY_RATE_BPS), whichever is slower
        grace = {
            dev: opts.dead_after_s
            + 2.0 * 8 * nbytes / min(DEPLOY_RATE_BPS, self.cluster.link(self.plan.source, dev).bandwidth_bps)
            for dev, nbytes in sent.items()
        }
        now = time.monotonic()
        for remote in waiting.values():
            remote.unanswered_since = None
        last_ping = 0.0
        while waiting:
            self._drain_deploy_replies(waiting)  # before judging: a starved coordinator has replies unread
            now = time.monotonic()
            if waiting and now - last_ping >= opts.heartbeat_s:
                last_ping = now
                for dev, remote in waiting.items():
                    self._check_process(remote)
                    if remote.unanswered_since is not None and now - remote.unanswered_since > grace[dev]:
                        raise DeviceFailure(
                            f"device {dev} at {remote.endpoint} stopped answering while deploying "
                            f"(no heartbeat for {now - remote.unanswered_since:.1f} s)",
                            dev,
                        )
                    if remote.unanswered_since is None:
                        remote.unanswered_since = now
                    remote.sock.send_multipart(pack({"type": "ping"}))
            if waiting:
                poller = zmq.Poller()
                for remote in waiting.values():
                    poller.register(remote.sock, zmq.POLLIN)
                poller.poll(max(1.0, 1000 * opts.heartbeat_s / 2))

    def _drain_deploy_replies(self, waiting: dict[str, Remote]) -> None:
        """Read every reply of the devices still deploying; a `deployed` takes its device off `waiting`."""
        for dev, remote in list(waiting.items()):
            while remote.sock.poll(0):
                header = self._receive(remote)
                remote.unanswered_since = None
                remote.last_pong = time.monotonic()
                if header.get("type") == "pong":
                    self._check_pong(remote, header, deploying=True)
                elif header.get("type") == "deployed":
                    if header.get("error"):
                        raise DeviceFailure(f"device {dev}: deployment failed: {header['error']}", dev)
                    del waiting[dev]
                    break

    # -- re-planning and recovery (see resilient.py: the caller decides placement) -------------
    def redeploy(self, plan: Plan) -> None:
        """Install a new plan on the devices already connected, between requests: requests still
        in flight under the old plan are abandoned (the caller replays them); new request ids
        continue, so data of the old deployment arriving late is refused as a replay."""
        parts = split_plan(plan, self.graph)
        missing = [d for d in parts if d != plan.source and d not in self.remotes]
        if plan.source != self.plan.source or missing:
            raise ValueError(f"redeploy: devices not connected: {', '.join(missing) or plan.source}")
        idle = [d for d in self.remotes if d not in parts]  # stop their old work too
        for dev in idle:
            parts[dev] = DevicePart(dev, [])
        endpoints = {plan.source: self.source.endpoint, **{d: r.endpoint for d, r in self.remotes.items()}}
        self.plan = plan
        self._abandon(list(self._open))
        self._deploy(parts, endpoints, first_request=self.next_request)

    def drop_device(self, device: str) -> Remote:
        """Forget a failed device (its process, if it is ours and still alive, keeps running so
        that it can rejoin); returns its connection record for probing."""
        remote = self.remotes.pop(device)
        self.held.pop(device, None)
        return remote

    def add_device(self, remote: Remote) -> None:
        """A device that answered again (or a relaunched worker) becomes usable by the next plan."""
        self.remotes[remote.device] = remote
        self.held.pop(remote.device, None)

    def frame_limit(self, part: DevicePart) -> int:
        """The device's MAXMSGSIZE: for its part, or (connect_all) for any part a re-plan may give
        it (any value of the graph, or the input, may then reach it)."""
        if not self.options.connect_all:
            return part.frame_limit(self.graph)
        least = DevicePart(part.device, []).frame_limit(self.graph)
        largest = max([n.out_bytes for n in self.graph.nodes] + [self.graph.input_bytes])
        return max(least, largest + FRAME_OVERHEAD)

    def _load_keys(self, parts: dict[str, Any]) -> Keyring | None:
        """The coordinator's and the source's keys: from the keys folder, or made for this session
        (ephemeral); plaintext only when `insecure` says so, and then only on loopback."""
        opts = self.options
        if opts.keys is not None and opts.insecure:
            raise UserError("keys and insecure contradict each other: give one")
        if opts.keys is None and not opts.insecure:
            for dev in parts:
                address = self.cluster.devices[dev].address
                if dev != self.plan.source and address is not None:
                    raise UserError(
                        f"device {dev} is reached at {address}, a worker started by hand: without a keys folder "
                        "this session cannot authenticate it; create the cluster's keys with `edgeweave keys "
                        "--out DIR --cluster C.yaml`, start each worker with --keys DIR and run with --keys DIR "
                        "(or opt out with insecure plaintext, loopback only)"
                    )
            self.ephemeral = ephemeral_keyrings(sorted({*self.cluster.devices, *parts}))
            self.keys = self.ephemeral[COORDINATOR]
            source_keys = self.ephemeral[self.plan.source]
            start_authenticator(self.ctx, source_keys)
            return source_keys
        if opts.keys is None:
            for dev in parts:
                address = self.cluster.devices[dev].address
                if dev != self.plan.source and address is not None and not is_loopback(address):
                    raise UserError(
                        f"device {dev} is reached at {address}, which is not a loopback address: refusing to "
                        "send weights and data there unauthenticated and unencrypted; create the cluster's keys "
                        "with `edgeweave keys --out DIR --cluster C.yaml`, start each worker with --keys DIR "
                        "and run with --keys DIR"
                    )
            return None
        self.keys = load_keyring(opts.keys, COORDINATOR)
        for dev in parts:
            self.keys.public_of(dev)  # every device's public key is there (a clear error if not)
        source_keys = load_keyring(opts.keys, self.plan.source)
        start_authenticator(self.ctx, source_keys)
        return source_keys

    def _greet(self) -> None:
        """Connect to every remote worker and wait for its hello; with keys, a refused key is
        reported as such rather than as a worker that is not there."""
        with contextlib.ExitStack() as stack:
            monitors = {}
            for remote in self.remotes.values():
                if self.keys is not None:
                    monitors[remote.device] = stack.enter_context(auth_failures(remote.sock))
                remote.sock.connect(self.control_route(remote.endpoint))
                remote.sock.send_multipart(pack({"type": "hello"}))
            for remote in self.remotes.values():
                self._await_hello(remote, self.options.connect_timeout_s, monitors.get(remote.device))

    def greet(self, remote: Remote, timeout_s: float | None = None) -> None:
        """Say hello again on an existing connection (a worker that came back, or restarted)
        and wait for its answer: it serves this session again, under its new nonce."""
        while remote.sock.poll(0):  # whatever it said before it was greeted
            self._receive(remote)
        remote.sock.send_multipart(pack({"type": "hello"}))
        self._await_hello(remote, self.options.connect_timeout_s if timeout_s is None else timeout_s)
        remote.unanswered_since = None
        remote.last_pong = time.monotonic()

    def _await_hello(self, remote: Remote, timeout_s: float, monitor: zmq.Socket | None = None) -> None:
        hint = "is `edgeweave worker` running there?"
        if self.keys is not None:
            folder = self.keys.folder or "the keys folder"
            hint = f"is `edgeweave worker --keys` running there, with the public keys of {folder}?"
        reply = self._expect(
            remote,
            ("hello", "busy"),
            timeout_s,
            f"device {remote.device}: no worker answered at {remote.endpoint} within {timeout_s:g} s ({hint})",
            monitor=monitor,
        )
        if reply["type"] == "busy":  # another session's: refused, and that session is unaffected
            raise DeviceFailure(f"device {remote.device} at {remote.endpoint}: {reply.get('error')}", remote.device)
        if type(reply.get("max_frame_bytes")) is int:
            remote.max_frame_bytes = reply["max_frame_bytes"]
        remote.nonce = reply.get("nonce") if isinstance(reply.get("nonce"), str) else None

    def _check_fits(self, remote: Remote, header_bytes: int, frame_bytes: int) -> None:
        if header_bytes > CONTROL_HEADER_LIMIT:
            raise UserError(
                f"device {remote.device}: its deploy message has {header_bytes} bytes of graph, more than "
                f"the {CONTROL_HEADER_LIMIT} a worker accepts; split the model over more devices"
            )
        if remote.max_frame_bytes is not None and frame_bytes > remote.max_frame_bytes:
            raise UserError(
                f"device {remote.device}: its worker accepts frames up to {remote.max_frame_bytes} bytes but "
                f"this deployment sends {frame_bytes}; restart it with --max-frame-bytes {2 * frame_bytes}"
            )

    def control_route(self, address: str) -> str:
        """With network namespaces, control traffic (deployment included) leaves from an address
        the kernel does not shape: only data between devices crosses the emulated links."""
        if self.netns is None or not address.startswith("tcp://"):
            return address
        return f"tcp://{self.netns.control_address}:0;{address.removeprefix('tcp://')}"

    def _expect(
        self,
        remote: Remote,
        kind: str | tuple[str, ...],
        timeout_s: float,
        message: str,
        monitor: zmq.Socket | None = None,
    ) -> dict[str, Any]:
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_process(remote)
            if monitor is not None and monitor.poll(0):
                self._refused(remote, monitor)
            if remote.sock.poll(100):
                header = self._receive(remote)
                remote.last_pong = time.monotonic()
                remote.unanswered_since = None
                if header["type"] in kinds:
                    return header
        raise DeviceFailure(message, remote.device)

    def _receive(self, remote: Remote) -> dict[str, Any]:
        """A reply from a worker; a malformed one ends the run naming the device, not with a traceback."""
        try:
            header, _ = unpack(remote.sock.recv_multipart(copy=False))
        except WireError as exc:
            raise DeviceFailure(f"device {remote.device} sent a malformed reply: {exc}", remote.device) from None
        return header

    def _refused(self, remote: Remote, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(monitor)["event"]
        keys = self.keys.folder if self.keys is not None else "the keys folder"
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise DeviceFailure(
                f"device {remote.device}: the worker at {remote.endpoint} refused this coordinator's key "
                f"(CURVE authentication failed): give that worker the public key {keys}/{COORDINATOR}.key"
            )
        raise DeviceFailure(
            f"device {remote.device}: secure handshake with {remote.endpoint} failed: is that worker started "
            f"with --keys, and is {keys}/{remote.device}.key its public key?"
        )

    def _check_process(self, remote: Remote) -> None:
        if remote.local is not None and remote.local.exit_code() is not None:
            why = remote.local.last_log_line()
            raise DeviceFailure(
                f"device {remote.device}: worker process exited with code "
                f"{remote.local.exit_code()}" + (f": {why}" if why else ""),
                remote.device,
            )

    # -- requests ----------------------------------------------------------------------------
    @property
    def max_inflight(self) -> int:
        from edgeweave.sim.simulator import default_max_inflight

        return self.options.max_inflight or default_max_inflight(self.plan)

    @property
    def request_deadline_s(self) -> float:
        """How long a request may take from submission: `request_timeout_s`, or 10x what the plan
        predicts for it behind a full window (its latency plus max_inflight bottlenecks ahead of
        it) + 2 s, so that a slow, loaded machine is not mistaken for a lost request."""
        if self.options.request_timeout_s is not None:
            return self.options.request_timeout_s
        predicted = self.plan.predicted or {}
        latency, rate = predicted.get("latency_s"), predicted.get("throughput_per_s")
        if not isinstance(latency, (int, float)) or not isinstance(rate, (int, float)) or rate <= 0:
            latency, rate = self._simulated()  # a plan made in code carries no prediction
        if not math.isfinite(latency) or not math.isfinite(rate) or rate <= 0:
            return 60.0
        return 10.0 * (float(latency) + self.max_inflight / float(rate)) + 2.0

    def _simulated(self) -> tuple[float, float]:
        """(latency_s, throughput_per_s) of the current plan by the simulator, once per plan."""
        cached = getattr(self, "_simulated_for", None)
        if cached is not None and cached[0] is self.plan:
            return cached[1]
        from edgeweave.sim.simulator import simulate

        try:
            result = simulate(self.plan, requests=2 * self.max_inflight, max_inflight=self.max_inflight)
            found = (float(result.single_latency_s), float(result.throughput_per_s))
        except Exception:  # a prediction is a convenience here: fall back to a fixed minute
            found = (math.inf, 0.0)
        self._simulated_for = (self.plan, found)
        return found

    def _check_deadline(self) -> None:
        """Fail the oldest request still waiting once it is past its deadline (a message that was
        lost, refused or never sent would otherwise leave the caller waiting for ever)."""
        with self.cond:
            while self._oldest < self.next_request and (
                self._oldest in self.results or self._oldest not in self.submitted
            ):
                self._oldest += 1
            rid = self._oldest
            if rid >= self.next_request:
                return
            waited = time.time() - self._started.get(rid, self.submitted[rid])
        deadline = self.request_deadline_s
        if waited > deadline:
            drops = {self.plan.source: dict(self.source.drops), **self.drops}
            dropped = {d: c for d, c in drops.items() if c}
            raise DeviceFailure(
                f"request {rid} did not finish within its deadline of {deadline:.1f} s"
                + (f"; messages dropped: {dropped}" if dropped else "; no device reported a dropped message")
            )

    def _on_result(self, request: int, value: torch.Tensor) -> None:
        with self.cond:
            if request not in self._open:  # abandoned (replayed under another id), or not ours
                return
            self._open.discard(request)
            self.results[request] = (value.clone(), time.time())
            self.cond.notify_all()

    def _abandon(self, rids: Iterable[int]) -> None:
        """Forget requests still in flight (their replays get new ids); a late result is ignored."""
        with self.cond:
            for rid in rids:
                self._open.discard(rid)
                self.submitted.pop(rid, None)
                self._started.pop(rid, None)

    def _taken(self, rid: int) -> None:
        """A result handed to its caller: keep its timing (latencies, run reports), drop its tensor,
        and keep at most HISTORY requests' timings, so that a session can run for days."""
        with self.cond:
            if rid in self.results:
                self.results[rid] = (None, self.results[rid][1])  # type: ignore[assignment]
            while len(self.submitted) > HISTORY:
                old = next(iter(self.submitted))
                if old in self._open:
                    break
                del self.submitted[old]
                self._started.pop(old, None)
                self.results.pop(old, None)

    def validate_input(self, x: torch.Tensor) -> None:
        want_shape, want_dtype = list(self.graph.input_shape), self.graph.input_dtype
        if not isinstance(x, torch.Tensor):
            raise UserError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if x.device.type != "cpu" or x.layout != torch.strided or x.is_quantized:
            # a meta tensor has no data: computing it failed the source's worker for good (finding 8)
            raise UserError(f"input must be a dense CPU tensor with data, not a {x.layout} tensor on device {x.device}")
        if list(x.shape) != want_shape or dtype_name(x.dtype) != want_dtype:
            raise UserError(
                f"input has shape {list(x.shape)} and dtype {dtype_name(x.dtype)}; this deployment "
                f"expects shape {want_shape} and dtype {want_dtype}"
            )

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer_many([x])[0]

    def infer_many(
        self, frames: Iterable[torch.Tensor], progress=None, rate_per_s: float | None = None
    ) -> list[torch.Tensor]:
        """Outputs in request order; at most `max_inflight` requests are in the system at once.

        With `rate_per_s` the frames are a camera stream: frame k arrives k / rate_per_s after
        the first and is submitted then (or when the window frees up); its latency (`latencies`)
        counts from its arrival, queueing included, as the simulator's does."""
        return self.stream(list(frames), progress, rate_per_s)

    def stream(
        self,
        frames: list[torch.Tensor],
        progress=None,
        rate_per_s: float | None = None,
        policy: StreamPolicy | None = None,
    ) -> list[torch.Tensor]:
        """The one request loop: admit frames through the window (at their arrival times), beat,
        collect results in order. A DeviceFailure goes to `policy` (recovery: resilient.py), which
        re-plans and has the requests in flight replayed, or raises; without one it is raised."""
        for x in frames:
            self.validate_input(x)
        if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise UserError(f"the frame rate must be > 0 frames per second, got {rate_per_s!r}")
        start = time.time()
        arrival = [start + k / rate_per_s for k in range(len(frames))] if rate_per_s else None
        outputs: list[torch.Tensor | None] = [None] * len(frames)
        failed: list[int] = []
        todo = deque(Pending(i, x.contiguous()) for i, x in enumerate(frames))
        inflight: dict[int, Pending] = {}
        done = 0
        while todo or inflight:
            try:
                if policy is None:
                    self.beat()
                else:
                    policy.maintain(inflight)
                    if policy.unservable():
                        failed += [p.index for p in [*inflight.values(), *todo]]
                        self._abandon(inflight)
                        break
                holding = policy is not None and policy.holding()
                while todo and len(self._open) < self.max_inflight and not holding:  # one window for all callers
                    item = todo[0]
                    if arrival is not None and time.time() < arrival[item.index]:
                        break
                    todo.popleft()
                    if item.first_submitted is None:  # latency from arrival (a camera) or first submission
                        item.first_submitted = arrival[item.index] if arrival is not None else time.time()
                    inflight[self.submit(item.x, item.first_submitted)] = item
                wake = time.time() + self.options.heartbeat_s / 2
                if todo and arrival is not None and len(self._open) < self.max_inflight and not holding:
                    wake = min(wake, max(arrival[todo[0].index], time.time() + 1e-4))  # the next frame
                self.wait_for(inflight, wake - time.time())
                for rid in sorted(inflight):
                    result = self.result(rid)
                    if result is None:
                        continue
                    outputs[inflight.pop(rid).index] = result[0]
                    self._taken(rid)
                    done += 1
                    if policy is not None:
                        policy.request_done()
                    if progress:
                        progress(done, len(frames))
            except DeviceFailure as exc:
                replay = [inflight[r] for r in sorted(inflight)]
                self._abandon(inflight)
                inflight.clear()
                if policy is None:
                    raise
                todo = deque(sorted([*replay, *todo], key=lambda p: p.index))
                policy.failed(exc, replay)  # re-plans and redeploys, or raises
        if failed:
            reason = policy.unservable() if policy is not None else ""
            raise RequestFailed(f"{len(failed)} of {len(frames)} requests failed: {reason}", outputs, sorted(failed))
        return outputs  # type: ignore[return-value]

    # -- the request interface a coordinator loop uses (resilient.py drives it too) ----------
    def submit(self, x: torch.Tensor, since: float | None = None) -> int:
        """Start one request on the source device now; its id. Its latency counts from `since`
        (its arrival, or a replayed request's first submission; default now), its deadline from now."""
        now = time.time()
        with self.cond:
            rid = self.next_request
            self.next_request += 1
            self.submitted[rid] = now if since is None else since
            self._started[rid] = now
            self._open.add(rid)
        self.source.submit(rid, x.contiguous())
        return rid

    def result(self, rid: int) -> tuple[torch.Tensor, float] | None:
        """(output, wall time it arrived) of a request, or None while it is not done."""
        with self.cond:
            return self.results.get(rid)

    def wait_for(self, rids: Iterable[int], timeout_s: float) -> None:
        """Block until one of `rids` has its result, or for `timeout_s` (health is not checked: see `beat`)."""
        rids = list(rids)
        with self.cond:
            if not any(r in self.results for r in rids):
                self.cond.wait(max(0.0, timeout_s))

    def beat(self) -> None:
        """Once per heartbeat period: ping the devices, check their answers and the oldest
        request's deadline; raises DeviceFailure naming what failed."""
        now = time.monotonic()
        if now - self._last_beat < self.options.heartbeat_s:
            return
        if not self._beat_lock.acquire(blocking=False):  # another caller's thread is beating
            return
        try:
            self._last_beat = now
            self._heartbeat(now)
            self._check_deadline()
        finally:
            self._beat_lock.release()

    def _heartbeat(self, now: float) -> None:
        if self.source.error:
            raise DeviceFailure(f"device {self.plan.source}: {self.source.error}", self.plan.source)
        if self.on_telemetry is not None:
            self.on_telemetry(self.plan.source, {"links": self.source.take_link_samples()})
        for remote in list(self.remotes.values()):
            self._check_process(remote)
            while remote.sock.poll(0):
                header = self._receive(remote)
                remote.last_pong = now
                remote.unanswered_since = None
                if header.get("type") == "pong":
                    self._check_pong(remote, header)
                elif header.get("error"):
                    raise DeviceFailure(f"device {remote.device}: {header['error']}", remote.device)
            # Dead means: a ping went unanswered for too long. Time spent idle between calls
            # (no pings sent) says nothing about a device.
            if remote.unanswered_since is not None and now - remote.unanswered_since > self.options.dead_after_s:
                raise DeviceFailure(
                    f"device {remote.device} at {remote.endpoint} stopped answering "
                    f"(no heartbeat for {now - remote.unanswered_since:.1f} s)",
                    remote.device,
                )
            if remote.unanswered_since is None:
                remote.unanswered_since = now
            remote.sock.send_multipart(pack({"type": "ping"}))

    def _check_pong(self, remote: Remote, header: dict[str, Any], deploying: bool = False) -> None:
        """What a pong says about its worker: the same process as greeted, still serving this
        session, no error; and its drop counters and link samples."""
        if remote.nonce is not None and header.get("nonce") != remote.nonce:
            raise DeviceFailure(
                f"device {remote.device} at {remote.endpoint} restarted (another worker process answers there)",
                remote.device,
            )
        if header.get("yours") is False:
            raise DeviceFailure(
                f"device {remote.device} at {remote.endpoint} no longer serves this session "
                "(it released it, or lost this coordinator's connection)",
                remote.device,
            )
        if isinstance(header.get("drops"), dict):
            self.drops[remote.device] = header["drops"]
        if self.on_telemetry is not None and not deploying:
            self.on_telemetry(remote.device, header)
        if header.get("error") and not deploying:
            raise DeviceFailure(f"device {remote.device}: {header['error']}", remote.device)

    def latencies(self) -> dict[int, float]:
        """Seconds from submission to result, per completed request."""
        return {rid: self.results[rid][1] - t for rid, t in self.submitted.items() if rid in self.results}

    # -- telemetry and shutdown ------------------------------------------------------------
    def collect_events(self) -> list[dict[str, Any]]:
        """The measured timeline of every device (compute tasks, and transfers as their receivers saw them).

        A receiver sees a transfer from its first byte leaving the sender to its arrival, link
        latency included; the simulator's events (and the energy model) span only the time the
        link was busy sending, latency being propagation that does not hold it. So each measured
        transfer keeps its arrival in `arrival` and ends one link latency before it.
        """
        events = list(self.source.events)
        self.source.events = []
        for remote in self.remotes.values():
            remote.sock.send_multipart(pack({"type": "collect"}))
            events += self._expect(remote, "events", 10.0, f"device {remote.device}: no telemetry")["events"]
        return sorted((self._sending_span(e) for e in events), key=lambda e: e["start"])

    def _sending_span(self, event: dict[str, Any]) -> dict[str, Any]:
        """A measured transfer as [start, arrival - link latency] with its `arrival`; others as they are."""
        if event.get("kind") != "transfer" or "arrival" in event:
            return event
        src, _, dst = str(event["resource"]).partition(":")[2].partition("->")
        try:
            latency = self.cluster.link(src, dst).latency_s
        except (UserError, ValueError):  # a device the current cluster no longer knows
            latency = 0.0
        arrival = float(event["end"])
        return {**event, "end": max(float(event["start"]), arrival - latency), "arrival": arrival}

    def close(self) -> None:
        """End the session: workers this session started exit; a worker started by hand is
        released (it stays up for the next session), waiting briefly for it to confirm."""
        for remote in self.remotes.values():
            try:
                kind = "shutdown" if remote.local is not None else "release"
                remote.sock.send_multipart(pack({"type": kind}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for remote in self.remotes.values():
            if remote.local is None:
                with contextlib.suppress(DeviceFailure, WireError, zmq.ZMQError):
                    self._expect(remote, "released", 1.0, "")
        for remote in self.remotes.values():
            if remote.local is not None:
                remote.local.stop()
            remote.sock.close(0)
        for p in self.pending:  # workers started but never connected (start-up failed)
            LocalWorker(p.device, p.proc, "", p.log_path).stop()
        if self.source is not None:
            self.source.stop()
        stop_authenticator(self.ctx)
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
