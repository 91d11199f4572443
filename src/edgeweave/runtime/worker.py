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
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import zmq

from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import INPUT, OpGraph, OpNode
from edgeweave.runtime.deploy import load_weights_blob
from edgeweave.runtime.links import LinkShaper, LinkSpec, wait_until
from edgeweave.runtime.wire import WireError, header_of, pack, unpack

HWM = 16  # messages a socket queues before its sender blocks
Result = Callable[[int, torch.Tensor], None]


def wall(mono: float) -> float:
    """A monotonic instant as wall-clock time (events from several processes share one clock)."""
    return time.time() - (time.monotonic() - mono)


@dataclass
class _Request:
    env: dict[str, torch.Tensor] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


class Deployment:
    """One device's part of a plan, ready to run."""

    def __init__(self, msg: dict[str, Any], blob: bytes):
        self.device: str = msg["device"]
        self.source: str = msg["source"]
        self.output: str = msg["output"]
        self.speed: float = float(msg.get("speed", 1.0))
        self.tasks: list[dict[str, Any]] = msg["tasks"]
        self.order = {t["id"]: k for k, t in enumerate(self.tasks)}
        self.incoming = {t["id"] for t in self.tasks if t["kind"] == "transfer" and t["dst"] == self.device}
        order = sorted(int(i) for i in msg["nodes"])
        self.local = {g: k for k, g in enumerate(order)}
        nodes = [_node(msg["nodes"][str(g)]) for g in order]
        graph = OpGraph(
            model=msg.get("model", ""), input_shape=msg["input_shape"], input_dtype=msg["input_dtype"], nodes=nodes
        )
        self.runner = GraphRunner(graph, load_weights_blob(blob)) if nodes else None
        self.keep = self._keep_sets()
        # When the output reaches the source by a transfer, hand it over on arrival: the robot's
        # application must not wait for the source's compute thread to finish unrelated work.
        self.output_transfer = next(
            (
                t["id"]
                for t in self.tasks
                if t["id"] in self.incoming and self.output in t["values"] and self.device == self.source
            ),
            None,
        )
        self.links = {dst: LinkSpec.from_dict(spec) for dst, spec in msg.get("links", {}).items()}
        self.peers: dict[str, str] = msg.get("peers", {})
        self.shape_bandwidth: bool = msg.get("shape_bandwidth", True)
        self.epoch: float = msg.get("epoch", time.monotonic())

    def _keep_sets(self) -> dict[str, set[str]]:
        """For each compute task, the values later tasks of this device still need."""
        keep: dict[str, set[str]] = {}
        later: set[str] = {self.output} if self.device == self.source else set()
        for task in reversed(self.tasks):
            if task["kind"] == "compute":
                keep[task["id"]] = set(later)
            elif task["src"] == self.device:
                later.update(task["values"])
        return keep


def _node(d: dict[str, Any]) -> OpNode:
    return OpNode(
        name=d["name"],
        op=d["op"],
        args=d["args"],
        kwargs=d["kwargs"],
        inputs=d["inputs"],
        weights=d["weights"],
        out_shape=[],
        out_dtype="",
        out_bytes=0,
        param_bytes=0,
        flops=0,
        out_index=d.get("out_index"),
    )


class Worker:
    """Serves one device. In a worker process the receive loop runs in the main thread; the
    source device's worker runs inside the coordinator's process (the robot's application)."""

    def __init__(self, name: str, endpoint: str, ctx: zmq.Context | None = None, on_result: Result | None = None):
        self.name = name
        self.ctx = ctx or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, HWM)
        self.router.bind(endpoint)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.on_result = on_result
        self.deployment: Deployment | None = None
        self.inbox: queue.Queue = queue.Queue()
        self.senders: dict[str, tuple[threading.Thread, queue.Queue]] = {}
        self.requests: dict[int, _Request] = {}
        self.events: list[dict[str, Any]] = []
        self.error: str | None = None
        self.dropped = 0
        self.stopping = threading.Event()
        self.compute_thread: threading.Thread | None = None
        self.recv_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start_background(self) -> None:
        self.recv_thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-recv", daemon=True)
        self.recv_thread.start()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(100):
                continue
            frames = self.router.recv_multipart(copy=False)
            self._handle(frames[0].bytes, frames[1:])
        self._stop_threads()
        self.router.close(0)

    def stop(self) -> None:
        self.stopping.set()
        if self.recv_thread is not None:
            self.recv_thread.join(timeout=5)

    # -- control -----------------------------------------------------------------------------
    def _reply(self, peer: bytes, header: dict[str, Any], tensors=()) -> None:
        self.router.send_multipart([peer, *pack(header, tensors)], copy=False)

    def _handle(self, peer: bytes, frames: list[Any]) -> None:
        try:
            if not frames:
                raise WireError("empty message")
            header = header_of(frames[0])
            # A deploy message carries its weights as one safetensors frame, not as tensors.
            tensors = unpack(frames)[1] if header["type"] == "data" else []
        except WireError:
            self.dropped += 1
            return
        kind = header["type"]
        if kind == "data":
            self._on_data(header, tensors)
        elif kind == "hello":
            self._reply(peer, {"type": "hello", "device": self.name})
        elif kind == "ping":
            self._reply(
                peer,
                {
                    "type": "pong",
                    "device": self.name,
                    "error": self.error,
                    "dropped": self.dropped,
                    "active": len(self.requests),
                },
            )
        elif kind == "deploy":
            try:
                blob = frames[1].bytes if header.get("has_weights") and len(frames) > 1 else b""
                self.deploy(header, blob)
                self._reply(peer, {"type": "deployed", "device": self.name})
            except Exception as exc:  # report, do not die: the coordinator says what went wrong
                self._reply(peer, {"type": "deployed", "device": self.name, "error": f"{type(exc).__name__}: {exc}"})
        elif kind == "collect":
            self._reply(peer, {"type": "events", "device": self.name, "events": self.events, "error": self.error})
            self.events = []
        elif kind == "shutdown":
            self._reply(peer, {"type": "bye", "device": self.name})
            self.stopping.set()
        else:
            self.dropped += 1

    def deploy(self, msg: dict[str, Any], blob: bytes) -> None:
        """Install a (new) deployment: stop the old one's threads, load only the shipped weights."""
        self._stop_threads()
        self.deployment = Deployment(msg, blob)
        self.requests.clear()
        self.events = []
        self.error = None
        self.inbox = queue.Queue()
        for dst in {t["dst"] for t in self.deployment.tasks if t["kind"] == "transfer" and t["src"] == self.name}:
            q: queue.Queue = queue.Queue()
            th = threading.Thread(target=self._send_loop, args=(dst, q), name=f"{self.name}->{dst}", daemon=True)
            self.senders[dst] = (th, q)
            th.start()
        self.compute_thread = threading.Thread(target=self._compute_loop, name=f"{self.name}-compute", daemon=True)
        self.compute_thread.start()

    def _stop_threads(self) -> None:
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
        self.inbox.put(("start", request, {INPUT: x}, None))

    def _on_data(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        dep = self.deployment
        task, names = header.get("task"), header.get("values")
        if dep is None or task not in dep.incoming or not isinstance(names, list) or len(names) != len(tensors):
            self.dropped += 1
            return
        arrived = time.time()
        self.events.append(
            {
                "resource": f"link:{header.get('src')}->{self.name}",
                "request": header["request"],
                "task": task,
                "start": header.get("t_start", arrived),
                "end": arrived,
                "kind": "transfer",
                "bytes": int(header.get("bytes", 0)),
            }
        )
        values = dict(zip(names, tensors, strict=True))
        if task == dep.output_transfer and self.on_result is not None:
            self.on_result(int(header["request"]), values[dep.output])
        self.inbox.put(("recv", int(header["request"]), values, task))

    def _compute_loop(self) -> None:
        try:
            while True:
                item = self.inbox.get()
                if item is None:
                    return
                kind, request, values, task = item
                state = self.requests.setdefault(request, _Request())
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
        if dep.device == dep.source and self.on_result is not None and dep.output_transfer is None:
            self.on_result(request, state.env[dep.output])
        del self.requests[request]

    def _run(self, task: dict[str, Any], request: int, state: _Request) -> None:
        dep = self.deployment
        if task["kind"] == "transfer":
            tensors = [state.env[v] for v in task["values"]]
            self.senders[task["dst"]][1].put((request, task["id"], task["values"], tensors, time.monotonic()))
            return
        start = time.monotonic()
        dep.runner.run_nodes([dep.local[i] for i in task["nodes"]], state.env, keep=dep.keep[task["id"]])
        elapsed = time.monotonic() - start
        if dep.speed < 1.0:  # emulate a slower device: take as long as the plan says it takes there
            wait_until(start + max(elapsed, float(task["time_s"])))
        end = time.monotonic()
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
                "planned_s": float(task["time_s"]) if dep.speed < 1.0 else None,
            }
        )

    def _send_loop(self, dst: str, q: queue.Queue) -> None:
        dep = self.deployment
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.connect(dep.peers[dst])
        shaper = LinkShaper(dep.links[dst], dep.epoch, shape_bandwidth=dep.shape_bandwidth)
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                request, task, names, tensors, queued_at = item
                nbytes = sum(t.numel() * t.element_size() for t in tensors)
                # The link is free from when the message was handed over, not from when this
                # thread finished pushing the previous one into ZeroMQ.
                start, deliver = shaper.reserve(nbytes, queued_at)
                wait_until(deliver)
                header = {
                    "type": "data",
                    "request": request,
                    "task": task,
                    "values": names,
                    "src": self.name,
                    "t_start": wall(start),
                    "bytes": nbytes,
                }
                sock.send_multipart(pack(header, tensors), copy=False)
        except Exception as exc:
            self.error = f"sending to {dst}: {type(exc).__name__}: {exc}"
        finally:
            sock.close(0)


def serve(listen: str, name: str, announce: Callable[[str], None] = print) -> None:
    """Run a worker process until told to shut down; announces its bound endpoint first."""
    torch.set_num_threads(1)
    worker = Worker(name, listen)
    announce(f"READY {worker.endpoint}")
    worker.serve_forever()
