"""Keep answering when links change and devices fail: re-plan, recover, replay, rejoin.

    rs = ResilientSession(cluster, plan, graph, weights, replan=lambda c: make_plan(profile, c, ...))
    outputs = rs.infer_many(frames)      # every output, in order, even if a worker dies meanwhile
    rs.report()                          # failures, re-plans, replays, recovery times, estimates

It wraps a `Session` that connects every device of the cluster and drives it only through its
request interface (`submit`, `result`, `wait_for`, `beat`, `greet`, `redeploy`), adding what a
robot needs:

- Failure: the session's heartbeats raise `DeviceFailure(device=...)` when a worker process
  exits or stops answering (default 2 s). The device is dropped, the caller's `replan` is asked
  for a plan over the devices that remain (down to the source alone), the new plan is deployed
  on the workers already running (weights shipped only where a device's share changed), and
  every request that had not completed is replayed, in order, under new request ids (data of
  the old deployment that arrives late is refused as a replay by the workers' admission).
  Execution is deterministic, so a replayed request returns exactly what it would have.
- Stall: a request past its deadline while every device answers (its messages were lost or
  refused) is replayed, with every request in flight, on a fresh deployment of the plan; a
  replayed request that misses its deadline again fails the call: an error, never a hang.
- Rejoin: a dropped local worker whose process died is relaunched in the background; one whose
  process lives (an unreachable link) or that has an address is pinged until it answers, then
  greeted again (a worker restarted behind its address answers with another nonce and must be
  told which session it serves). A device back is used by the next re-plan, asked for at once.
- `recover=False` (`--no-recover`) fails the call at the first loss instead; recovery is the
  default of `run`, `bench` and `demo`.
- Adaptation (`adapt=True`): receivers measure every transfer (bytes and duration), the
  estimator smooths them per directed link, and when an estimate leaves the hysteresis band
  around what the current plan was made for, the coordinator stops admitting, lets the requests
  in flight finish, and switches to a plan made for the measured conditions (cached by
  quantised bandwidth). Nothing is dropped or reordered.
- No plan possible (the model fits none of the remaining devices): the affected requests fail
  with one clear `RequestFailed`, the coordinator stays up and re-plans when a device returns.

The runtime still never decides placement: `replan` is injected by the caller.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import zmq

from edgeweave.cost.cluster import Cluster, Link
from edgeweave.errors import UserError
from edgeweave.graph.opgraph import OpGraph
from edgeweave.plan.ir import Plan
from edgeweave.runtime.deploy import DevicePart
from edgeweave.runtime.estimator import Hysteresis, LinkEstimator, PlanCache
from edgeweave.runtime.process import LocalWorker, PendingWorker, launch_worker
from edgeweave.runtime.security import curve_client
from edgeweave.runtime.session import (  # noqa: F401  (RequestFailed: where callers import it)
    DeviceFailure,
    Pending,
    Remote,
    RequestFailed,
    Session,
    SessionOptions,
)
from edgeweave.runtime.wire import WireError, pack, unpack

Replan = Callable[[Cluster], Plan]
PROBE_WINDOW_S = 5.0  # a probe's sample is taken this long after it was asked for
MAX_STALL_REPLAYS = 3  # deadline misses replayed in one session before they fail the call


@dataclass
class Fault:
    """An injected fault for demos and tests: after `after` requests completed, SIGKILL the
    device's worker (`kind="kill"`) or take its link down for `duration_s` (`kind="link"`,
    network namespaces only)."""

    device: str
    after: int
    kind: str = "kill"
    duration_s: float = 5.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        """`DEVICE@N` (kill after N requests) or `DEVICE@N:5s` (link down for 5 s)."""
        try:
            device, rest = text.split("@", 1)
            if ":" in rest:
                n, dur = rest.split(":", 1)
                return cls(device, int(n), "link", float(dur.removesuffix("s")))
            return cls(device, int(rest))
        except ValueError:
            raise UserError(
                f"fault {text!r}: expected DEVICE@REQUEST (kill) or DEVICE@REQUEST:SECONDSs (link down)"
            ) from None


@dataclass
class ResilienceOptions:
    adapt: bool = False  # re-plan on measured bandwidth
    band: tuple[float, float] = (0.5, 2.0)  # hysteresis: re-plan outside [low, high] x planned
    confirm: int = 2  # consecutive estimates outside the band before re-planning
    hold_s: float = 1.0  # at least this long between two bandwidth re-plans
    probe_s: float = 0.25  # how often dropped devices are probed
    link_probe_s: float = 0.25  # adapt: how often links the plan leaves idle are measured
    relaunch: bool = True  # relaunch a dropped local worker whose process died
    faults: list[Fault] = field(default_factory=list)
    # re-plan and replay on a device loss (the default everywhere); False fails the call at the
    # first loss instead (`--no-recover`), still with the `recovery` report
    recover: bool = True


def plan_maker(cluster: Cluster, replan: Replan) -> Callable[[dict[tuple[str, str], float], tuple[str, ...]], Plan]:
    """For a `PlanCache`: the caller's planner on the cluster restricted to `devices`, its links'
    bandwidth set to `conditions` (latency as configured)."""

    def make(conditions: dict[tuple[str, str], float], devices: tuple[str, ...]) -> Plan:
        sub = cluster.subset(devices)
        links = {
            f"{a}->{b}": Link(bandwidth_bps=bps, latency_s=cluster.link(a, b).latency_s)
            for (a, b), bps in conditions.items()
        }
        if len(devices) == 1:
            links = {}
        return replan(Cluster(name=sub.name, source=sub.source, devices=sub.devices, links=links))

    return make


def prewarm(cache: PlanCache, cluster: Cluster, factors: Sequence[float]) -> None:
    """Plan ahead for every link scaled by each factor (all devices up): switching to a cached
    plan costs a redeployment, not a planner run."""
    names = list(cluster.devices)
    for f in factors:
        conditions = {(a, b): cluster.link(a, b).bandwidth_bps * f for a in names for b in names if a != b}
        cache.get(conditions, tuple(names))


def add_marks(trace_path: Any, marks: list[dict[str, Any]], t0: float) -> None:
    """Add failures, re-plans and recoveries to a chrome://tracing file as global instant events
    (`t0`: the wall time the trace's zero stands for)."""
    import json
    from pathlib import Path

    path = Path(trace_path)
    data = json.loads(path.read_text())
    for mark in marks:
        ts = (mark["at"] - t0) * 1e6
        data["traceEvents"].append({"name": mark["name"], "ph": "i", "s": "g", "ts": ts, "pid": 0, "tid": 0})
    path.write_text(json.dumps(data))


class ResilientSession:
    def __init__(
        self,
        cluster: Cluster,
        plan: Plan,
        graph: OpGraph,
        weights: dict[str, torch.Tensor],
        replan: Replan,
        options: SessionOptions | None = None,
        resilience: ResilienceOptions | None = None,
        netns: Any = None,
        cache: PlanCache | None = None,
    ):
        self.cluster, self.replan, self.netns = cluster, replan, netns
        self.opts = resilience or ResilienceOptions()
        options = replace(options or SessionOptions(), connect_all=True)
        self.session = Session(cluster, plan, graph, weights, options, netns)
        self.session.on_telemetry = self._telemetry
        self.estimator = LinkEstimator(alpha=0.5)
        low, high = self.opts.band
        self.hysteresis = Hysteresis(low=low, high=high, confirm=self.opts.confirm, hold_s=self.opts.hold_s)
        self.nominal = {
            (a, b): cluster.link(a, b).bandwidth_bps for a in cluster.devices for b in cluster.devices if a != b
        }
        self.hysteresis.switched(self.nominal, time.monotonic())
        self.cache = cache or PlanCache(plan_maker(cluster, replan))
        self.cache.put(self.nominal, tuple(cluster.devices), plan)
        self.down: dict[str, Remote] = {}
        self.relaunching: dict[str, PendingWorker] = {}
        self.last_probe = 0.0
        self.probed_at: dict[tuple[str, str], float] = {}  # (src, dst) -> when a probe was asked for
        self.stalls = 0  # replays because a request missed its deadline with all devices up
        self.last_link_probe = 0.0
        self._probe_big = False
        self.want_switch: str | None = None
        # a bandwidth re-plan is planned in the background while the current plan keeps serving;
        # `ready` holds it until the requests in flight have drained
        self.planner: threading.Thread | None = None
        self.ready: tuple[Plan, dict[tuple[str, str], float], float] | None = None
        self.no_plan: str | None = None
        self.completed = 0
        self.failures: list[dict[str, Any]] = []
        self.replans: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []  # trace marks: {name, at (wall s)}
        self.replayed = 0
        self.recovery_s: list[float] = []
        self._recovering: float | None = None  # wall time of the fault (or its detection)
        self._injected: dict[str, float] = {}  # device -> wall time a fault was injected
        self.timers: list[threading.Timer] = []

    # -- the request stream ------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return self.session.plan

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer_many([x])[0]

    def infer_many(
        self, frames: Sequence[torch.Tensor], progress=None, rate_per_s: float | None = None
    ) -> list[torch.Tensor]:
        """Every output in order; a worker lost meanwhile costs time, never a request.

        The session's one request loop runs it, with this object as its recovery policy."""
        if self.no_plan:
            self._retry_plan()
        return self.session.stream(list(frames), progress, rate_per_s, policy=self)

    # -- the policy the request loop calls (Session.stream) -----------------------------------
    def maintain(self, inflight: dict[int, Pending]) -> None:
        self._maintain(inflight)

    def holding(self) -> bool:
        return self._holding()

    def unservable(self) -> str | None:
        return self.no_plan

    def request_done(self) -> None:
        self._completed()

    def failed(self, exc: DeviceFailure, replay: list[Pending]) -> None:
        """Re-plan around the failure, or raise it; `replay` goes back into the loop's queue."""
        if exc.device is None and self.opts.recover:  # a request missed its deadline, all devices up
            self.stalls += 1
            if any(p.stalled for p in replay) or self.stalls > MAX_STALL_REPLAYS:
                raise exc  # it missed it again after a replay: an error, never a hang
            for p in replay:
                p.stalled = True
        self.replayed += len(replay)
        self._recover(exc, len(replay))

    def _completed(self) -> None:
        self.completed += 1
        now = time.time()
        if self._recovering is not None:
            self.recovery_s.append(now - self._recovering)
            self.failures[-1]["recovery_s"] = now - self._recovering
            self.marks.append({"name": "recovered", "at": now})
            self._recovering = None
        for fault in self.opts.faults:
            if fault.after == self.completed:
                self._inject(fault)

    # -- failures ----------------------------------------------------------------------------
    def _recover(self, exc: DeviceFailure, replayed: int) -> None:
        s = self.session
        detected = time.time()
        device = exc.device
        if device is None and self.opts.recover:  # a stalled request, every device answering: replay anew
            self._recovering = detected
            self.failures.append({"device": None, "reason": str(exc), "at": detected, "replayed": replayed})
            self.marks.append({"name": "stall", "at": detected})
            self._switch("stall")
            return
        if device == s.plan.source or device not in s.remotes or not self.opts.recover:
            # the source itself (this process) failed, nothing to fall back on; or fail fast
            self.failures.append({"device": device, "reason": str(exc), "at": detected, "replayed": 0})
            raise exc
        since = self._injected.pop(device, detected)
        self._recovering = since
        self.failures.append(
            {"device": device, "reason": str(exc), "at": detected, "detect_s": detected - since, "replayed": replayed}
        )
        self.marks.append({"name": f"failure {device}", "at": detected})
        self._drop(device)
        self._switch("failure")

    def _drop(self, device: str) -> None:
        remote = self.session.drop_device(device)
        self.down[device] = remote
        remote.unanswered_since = None

    def _switch(self, reason: str) -> None:
        """Re-plan over the devices up now for the conditions now, and deploy it (between requests)."""
        s = self.session
        self.want_switch = None
        self.ready = None  # a failure or rejoin changes the devices: a pending switch is stale
        while True:
            devices = [d for d in self.cluster.devices if d == s.plan.source or d in s.remotes]
            conditions = self._conditions(devices)
            t0 = time.time()
            try:
                plan, planned = self.cache.get(conditions, tuple(devices))
            except UserError as exc:
                self.no_plan = f"no plan over {', '.join(devices)}: {exc}"
                self.marks.append({"name": "no plan", "at": t0})
                return
            try:
                s.redeploy(plan)
            except DeviceFailure as exc:  # another device went while deploying: drop it too
                if exc.device is None or exc.device not in s.remotes:
                    raise
                self.failures.append({"device": exc.device, "reason": str(exc), "at": time.time(), "replayed": 0})
                self._drop(exc.device)
                continue
            break
        self._install(plan, planned, reason, t0, deployed=True)

    def _install(
        self, plan: Plan, planned: dict[tuple[str, str], float], reason: str, t0: float, deployed: bool = False
    ) -> None:
        same = [t.model_dump() for t in plan.tasks] == [t.model_dump() for t in self.session.plan.tasks]
        if not deployed and same:  # the measured conditions call for the plan already running
            self.hysteresis.switched(planned, time.monotonic())
            return
        if not deployed:
            self.session.redeploy(plan)  # a DeviceFailure here is handled like any other
        self.no_plan = None
        self.hysteresis.switched(planned, time.monotonic())
        self.replans.append(
            {
                "at": t0,
                "reason": reason,
                "devices": sorted(plan.devices),
                "strategy": plan.strategy,
                "switch_s": time.time() - t0,
                "conditions_mbps": {f"{a}->{b}": bps / 1e6 for (a, b), bps in sorted(planned.items())},
            }
        )
        self.marks.append({"name": f"replan ({reason})", "at": t0})

    def _retry_plan(self) -> None:
        self._probe()
        self._switch("retry")

    # -- probing, rejoining, adapting --------------------------------------------------------
    def _holding(self) -> bool:
        """Admit nothing new: a switch is ready (or a device rejoined) and waits for the drain."""
        return self.ready is not None or self.want_switch in ("rejoin", "retry")

    def _maintain(self, inflight: dict[int, Any]) -> None:
        self.session.beat()  # heartbeats, worker answers and the oldest request's deadline
        now = time.monotonic()
        if self.down and now - self.last_probe >= self.opts.probe_s:
            self.last_probe = now
            if self._probe():
                self.want_switch = "rejoin"
        if self.opts.adapt and now - self.last_link_probe >= self.opts.link_probe_s:
            self.last_link_probe = now
            self._probe_idle_links()
        if self.want_switch == "bandwidth" and self.ready is None and self.planner is None:
            self._plan_in_background()
        if self.planner is not None and not self.planner.is_alive():
            self.planner = None
        if inflight:
            return
        if self.ready is not None:
            plan, planned, t0 = self.ready
            self.ready = None
            self.want_switch = None
            connected = {self.session.plan.source, *self.session.remotes}
            if set(plan.devices) <= connected:  # else planned before a failure: stale
                self._install(plan, planned, "bandwidth", t0)
        elif self.want_switch in ("rejoin", "retry"):
            self._switch(self.want_switch)

    def _plan_in_background(self) -> None:
        s = self.session
        devices = tuple(d for d in self.cluster.devices if d == s.plan.source or d in s.remotes)
        conditions = self._conditions(list(devices))
        t0 = time.time()

        def work() -> None:
            try:
                plan, planned = self.cache.get(conditions, devices)
            except UserError:  # nothing better for these conditions: keep the current plan
                self.want_switch = None
                return
            if self.want_switch == "bandwidth":
                self.ready = (plan, planned, t0)

        if self.cache.has(conditions, devices):
            work()
            return
        self.planner = threading.Thread(target=work, name="edgeweave-replan", daemon=True)
        self.planner.start()

    def _probe(self) -> bool:
        """Ping dropped devices, relaunch dead local ones; True when one came back."""
        back = False
        for dev, remote in list(self.down.items()):
            if remote.local is not None and remote.local.exit_code() is not None:
                if self.opts.relaunch and dev not in self.relaunching:
                    remote.sock.close(0)
                    remote.local.stop()
                    self.relaunching[dev] = self._launch(dev)
                if dev in self.relaunching:
                    back |= self._poll_relaunch(dev)
                continue
            if self._pinged_back(remote):
                try:  # greeted again: it may have restarted, or released this session meanwhile
                    self.session.greet(remote, timeout_s=1.0)
                except DeviceFailure:  # busy with another session, or silent again: still down
                    continue
                del self.down[dev]
                self._rejoin(remote)
                back = True
        return back

    def _pinged_back(self, remote: Remote) -> bool:
        answered = False
        try:
            while remote.sock.poll(0):
                unpack(remote.sock.recv_multipart(copy=False))
                answered = True
        except WireError:
            return False
        if not answered:
            remote.sock.send_multipart(pack({"type": "ping"}))
        return answered

    def _rejoin(self, remote: Remote) -> None:
        self.session.add_device(remote)
        self.marks.append({"name": f"rejoin {remote.device}", "at": time.time()})

    def _launch(self, dev: str) -> PendingWorker:
        s = self.session
        prefix = self.netns.exec_prefix(dev) if self.netns else None
        host = self.netns.address(dev) if self.netns else s.options.listen_host
        limit = s.frame_limit(DevicePart(dev, []))
        return launch_worker(
            dev,
            f"tcp://{host}:*",
            prefix,
            keys=s.options.keys,
            max_frame_bytes=limit,
            keyring=s.ephemeral.get(dev),
            memory_limit=s.options.memory_limits.get(dev),
        )

    def _poll_relaunch(self, dev: str) -> bool:
        """Non-blocking: has the relaunched worker announced its endpoint? Then greet it."""
        pending = self.relaunching[dev]
        if pending.proc.poll() is not None:
            del self.relaunching[dev]  # it died at start: try again at the next probe
            LocalWorker(dev, pending.proc, "", pending.log_path).stop()
            return False
        if not select.select([pending.proc.stdout], [], [], 0)[0]:
            return False
        line = pending.proc.stdout.readline()
        if not line.startswith(b"READY "):
            return False
        del self.relaunching[dev]
        local = LocalWorker(dev, pending.proc, line.split()[1].decode(), pending.log_path)
        s = self.session
        sock = s.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if s.keys is not None:
            curve_client(sock, s.keys, dev)
        remote = Remote(dev, local.endpoint, sock, local)
        sock.connect(s.control_route(local.endpoint))
        try:
            s.greet(remote)
        except DeviceFailure:  # it died again: the next probe relaunches it
            sock.close(0)
            local.stop()
            return False
        self.down.pop(dev, None)
        self._rejoin(remote)
        return True

    def _telemetry(self, device: str, header: dict[str, Any]) -> None:
        """Link samples a worker measured: only for links into it that the plan uses or that this
        coordinator asked to probe lately (finding 8: forged probe replies for other links forced
        re-plans to the source alone)."""
        if not header.get("links"):
            return
        now = time.monotonic()
        used = {t.src for t in self.session.plan.tasks if t.kind == "transfer" and t.dst == device}
        probed = {a for (a, b), at in self.probed_at.items() if b == device and now - at < PROBE_WINDOW_S}
        links = [item for item in header["links"] if isinstance(item, list) and item and item[0] in used | probed]
        if not links:
            return
        header = {**header, "links": links}
        self.estimator.add_pong(device, header)
        if not self.opts.adapt:
            return
        now = time.monotonic()
        for src in {str(item[0]) for item in header["links"] if isinstance(item, list) and item}:
            est = self.estimator.bandwidth(src, device)
            if est is not None and self.hysteresis.update((src, device), est, now) and self.want_switch is None:
                self.want_switch = "bandwidth"

    def _conditions(self, devices: list[str]) -> dict[tuple[str, str], float]:
        """Bandwidth of every directed link among `devices`: measured when adapting, else nominal."""
        out = {}
        for a in devices:
            for b in devices:
                if a == b:
                    continue
                measured = None
                if self.opts.adapt:  # a direction without traffic to measure is taken to follow the other
                    measured = self.estimator.bandwidth(a, b) or self.estimator.bandwidth(b, a)
                out[(a, b)] = measured or self.nominal[(a, b)]
        return out

    def _probe_idle_links(self) -> None:
        """Measure the links the current plan leaves idle (a local plan uses none): each gets a
        small filler message, alternating two sizes so that the estimator can fit latency and
        rate. Without this, a plan chosen for a bad link would never learn the link recovered."""
        s = self.session
        busy = {(t.src, t.dst) for t in s.plan.tasks if t.kind == "transfer"}
        self._probe_big = not self._probe_big
        nbytes = (48 if self._probe_big else 16) << 10
        devices = [s.plan.source, *s.remotes]
        for a in devices:
            for b in devices:
                if a == b or (a, b) in busy:
                    continue
                self.probed_at[(a, b)] = time.monotonic()
                if a == s.plan.source:
                    s.source.probe(b, nbytes)
                else:
                    s.remotes[a].sock.send_multipart(pack({"type": "probe", "dst": b, "bytes": nbytes}))

    # -- faults (demos and tests) -------------------------------------------------------------
    def _inject(self, fault: Fault) -> None:
        s = self.session
        remote = s.remotes.get(fault.device) or self.down.get(fault.device)
        if remote is None:
            raise UserError(f"fault injection: no device {fault.device!r} to fail")
        self._injected[fault.device] = time.time()
        self.marks.append({"name": f"inject {fault.kind} {fault.device}", "at": time.time()})
        if fault.kind == "kill":
            if remote.local is None:
                raise UserError(f"fault injection: {fault.device} is not a worker this run started")
            os.kill(remote.local.proc.pid, signal.SIGKILL)
            return
        if self.netns is None:
            raise UserError("fault injection: taking a link down needs --links netns")
        self.netns.link_down(fault.device)
        timer = threading.Timer(fault.duration_s, self.netns.link_up, args=(fault.device,))
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    # -- reporting and shutdown ---------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """The run JSON's `recovery` block."""
        return {
            "enabled": self.opts.recover,
            "failures": [{k: v for k, v in f.items() if k != "at"} for f in self.failures],
            "replans": [{k: v for k, v in r.items() if k != "at"} for r in self.replans],
            "replayed": self.replayed,
            "recovery_s": self.recovery_s,
            "plan_cache": {"hits": self.cache.hits, "misses": self.cache.misses},
            "estimates": self.estimator.snapshot(),
            "no_plan": self.no_plan,
            "marks": list(self.marks),  # wall-clock times: see `add_marks`
        }

    def __getattr__(self, name: str) -> Any:
        """Everything else as the wrapped Session (collect_events, latencies, results, ...), so
        that code written for a Session runs a resilient one unchanged."""
        if name == "session":  # not yet set: do not recurse
            raise AttributeError(name)
        return getattr(self.session, name)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
            timer.function(*timer.args)  # a link taken down comes back before teardown
        for pending in self.relaunching.values():
            LocalWorker(pending.device, pending.proc, "", pending.log_path).stop()
        for remote in self.down.values():
            if remote.local is not None:
                remote.local.stop()
            remote.sock.close(0)
        self.session.close()

    def __enter__(self) -> ResilientSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
