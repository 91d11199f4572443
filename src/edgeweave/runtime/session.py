"""The coordinator: lives in the source device's process, deploys a plan, streams requests.

    session = edgeweave.connect(cluster, plan, "resnet18")
    y = session.infer(x)
    ys = session.infer_many(frames)

It starts a local worker process for every device without an `address` (the embedded
default), connects to the others, ships each its part of the plan and only its weights, then
admits requests through a bounded window so that nothing in the system grows without bound.
Failures surface as one-line errors naming the device; nothing hangs and no process is orphaned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import zmq

from edgeweave.cost.cluster import Cluster
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph, dtype_name
from edgeweave.plan.ir import Plan
from edgeweave.runtime.deploy import split_plan, weights_blob
from edgeweave.runtime.links import LinkSpec
from edgeweave.runtime.process import LocalWorker, launch_worker
from edgeweave.runtime.wire import pack, unpack
from edgeweave.runtime.worker import Worker


class DeviceFailure(UserError):
    """A device stopped during a run (process died, stopped answering, or failed a task)."""


@dataclass
class _Remote:
    device: str
    endpoint: str
    sock: zmq.Socket
    local: LocalWorker | None = None
    last_pong: float = field(default_factory=time.monotonic)


@dataclass
class SessionOptions:
    connect_timeout_s: float = 5.0
    heartbeat_s: float = 0.25
    dead_after_s: float = 2.0
    max_inflight: int | None = None
    links: str = "shaper"  # or "netns": the kernel shapes bandwidth, the application adds latency
    listen_host: str = "127.0.0.1"


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
        self.remotes: dict[str, _Remote] = {}
        self.results: dict[int, tuple[torch.Tensor, float]] = {}
        self.cond = threading.Condition()
        self.next_request = 0
        self.source: Worker | None = None
        self.submitted: dict[int, float] = {}
        self.pending: list = []
        try:
            self._start(weights)
        except BaseException:
            self.close()
            raise

    # -- start-up ----------------------------------------------------------------------------
    def _start(self, weights: dict[str, torch.Tensor]) -> None:
        plan, opts = self.plan, self.options
        parts = split_plan(plan, self.graph)
        host = self.netns.address(plan.source) if self.netns else opts.listen_host
        self.source = Worker(plan.source, f"tcp://{host}:*", self.ctx, on_result=self._on_result)
        self.source.start_background()
        endpoints = {plan.source: self.source.endpoint}
        pending = {}
        for dev in parts:
            if dev != plan.source and self.cluster.devices[dev].address is None:
                prefix = self.netns.exec_prefix(dev) if self.netns else None
                host = self.netns.address(dev) if self.netns else opts.listen_host
                pending[dev] = launch_worker(dev, f"tcp://{host}:*", prefix)
        self.pending = list(pending.values())  # stopped by close() if start-up fails half way
        for dev in parts:
            if dev == plan.source:
                continue
            local = pending[dev].wait_ready() if dev in pending else None
            address = local.endpoint if local else self.cluster.devices[dev].address
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._control_route(address))
            self.remotes[dev] = _Remote(dev, address, sock, local)
            endpoints[dev] = address
        for remote in self.remotes.values():
            remote.sock.send_multipart(pack({"type": "hello"}))
        for remote in self.remotes.values():
            self._expect(
                remote,
                "hello",
                opts.connect_timeout_s,
                f"device {remote.device}: no worker answered at {remote.endpoint} within "
                f"{opts.connect_timeout_s:g} s (is `edgeweave worker` running there?)",
            )
        epoch = time.monotonic()
        for dev, part in parts.items():
            links = {
                t["dst"]: LinkSpec.for_pair(self.cluster, dev, t["dst"]).to_dict()
                for t in part.tasks
                if t["kind"] == "transfer" and t["src"] == dev
            }
            extra = {
                "speed": self.cluster.devices[dev].speed,
                "peers": endpoints,
                "links": links,
                "epoch": epoch,
                "shape_bandwidth": opts.links != "netns",
            }
            msg = part.message(self.graph, plan, extra)
            blob = weights_blob(weights, part.weight_keys)
            if dev == plan.source:
                self.source.deploy(msg, blob)
                continue
            remote = self.remotes[dev]
            frames = pack({**msg, "has_weights": bool(blob)})
            remote.sock.send_multipart([*frames, blob] if blob else frames, copy=False)
        for remote in self.remotes.values():
            reply = self._expect(remote, "deployed", 120.0, f"device {remote.device}: deployment timed out")
            if reply.get("error"):
                raise DeviceFailure(f"device {remote.device}: deployment failed: {reply['error']}")

    def _control_route(self, address: str) -> str:
        """With network namespaces, control traffic (deployment included) leaves from an address
        the kernel does not shape: only data between devices crosses the emulated links."""
        if self.netns is None or not address.startswith("tcp://"):
            return address
        return f"tcp://{self.netns.control_address}:0;{address.removeprefix('tcp://')}"

    def _expect(self, remote: _Remote, kind: str, timeout_s: float, message: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_process(remote)
            if remote.sock.poll(100):
                header, _ = unpack(remote.sock.recv_multipart(copy=False))
                remote.last_pong = time.monotonic()
                if header["type"] == kind:
                    return header
        raise DeviceFailure(message)

    def _check_process(self, remote: _Remote) -> None:
        if remote.local is not None and remote.local.exit_code() is not None:
            why = remote.local.last_log_line()
            raise DeviceFailure(
                f"device {remote.device}: worker process exited with code "
                f"{remote.local.exit_code()}" + (f": {why}" if why else "")
            )

    # -- requests ----------------------------------------------------------------------------
    @property
    def max_inflight(self) -> int:
        from edgeweave.sim.simulator import default_max_inflight

        return self.options.max_inflight or default_max_inflight(self.plan)

    def _on_result(self, request: int, value: torch.Tensor) -> None:
        with self.cond:
            self.results[request] = (value.clone(), time.time())
            self.cond.notify_all()

    def validate_input(self, x: torch.Tensor) -> None:
        want_shape, want_dtype = list(self.graph.input_shape), self.graph.input_dtype
        if not isinstance(x, torch.Tensor):
            raise UserError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if list(x.shape) != want_shape or dtype_name(x.dtype) != want_dtype:
            raise UserError(
                f"input has shape {list(x.shape)} and dtype {dtype_name(x.dtype)}; this deployment "
                f"expects shape {want_shape} and dtype {want_dtype}"
            )

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer_many([x])[0]

    def infer_many(self, frames: Iterable[torch.Tensor], progress=None) -> list[torch.Tensor]:
        """Outputs in request order; at most `max_inflight` requests are in the system at once."""
        frames = list(frames)
        for x in frames:
            self.validate_input(x)
        ids = []
        window = self.max_inflight
        for x in frames:
            self._wait(lambda: self._inflight() < window)
            rid = self.next_request
            self.next_request += 1
            ids.append(rid)
            self.submitted[rid] = time.time()
            self.source.submit(rid, x.contiguous())
        out = []
        for k, rid in enumerate(ids):
            self._wait(lambda rid=rid: rid in self.results)
            with self.cond:
                out.append(self.results[rid][0])
            if progress:
                progress(k + 1, len(ids))
        return out

    def _inflight(self) -> int:
        return sum(1 for rid in self.submitted if rid not in self.results)

    def _wait(self, ready) -> None:
        """Block until `ready()`, checking every device's health meanwhile."""
        last_ping = 0.0
        while True:
            with self.cond:
                if ready():
                    return
                self.cond.wait(self.options.heartbeat_s / 2)
                if ready():
                    return
            now = time.monotonic()
            if now - last_ping >= self.options.heartbeat_s:
                self._heartbeat(now)
                last_ping = now

    def _heartbeat(self, now: float) -> None:
        if self.source.error:
            raise DeviceFailure(f"device {self.plan.source}: {self.source.error}")
        for remote in self.remotes.values():
            self._check_process(remote)
            while remote.sock.poll(0):
                header, _ = unpack(remote.sock.recv_multipart(copy=False))
                remote.last_pong = now
                if header.get("error"):
                    raise DeviceFailure(f"device {remote.device}: {header['error']}")
            if now - remote.last_pong > self.options.dead_after_s:
                raise DeviceFailure(
                    f"device {remote.device} at {remote.endpoint} stopped answering "
                    f"(no heartbeat for {now - remote.last_pong:.1f} s)"
                )
            remote.sock.send_multipart(pack({"type": "ping"}))

    def latencies(self) -> dict[int, float]:
        """Seconds from submission to result, per completed request."""
        return {rid: self.results[rid][1] - t for rid, t in self.submitted.items() if rid in self.results}

    # -- telemetry and shutdown ------------------------------------------------------------
    def collect_events(self) -> list[dict[str, Any]]:
        """The measured timeline of every device (compute tasks, and transfers as their receivers saw them)."""
        events = list(self.source.events)
        self.source.events = []
        for remote in self.remotes.values():
            remote.sock.send_multipart(pack({"type": "collect"}))
            events += self._expect(remote, "events", 10.0, f"device {remote.device}: no telemetry")["events"]
        return sorted(events, key=lambda e: e["start"])

    def close(self) -> None:
        for remote in self.remotes.values():
            try:
                remote.sock.send_multipart(pack({"type": "shutdown"}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for remote in self.remotes.values():
            if remote.local is not None:
                remote.local.stop()
            remote.sock.close(0)
        for p in self.pending:  # workers started but never connected (start-up failed)
            LocalWorker(p.device, p.proc, "", p.log_path).stop()
        if self.source is not None:
            self.source.stop()
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
