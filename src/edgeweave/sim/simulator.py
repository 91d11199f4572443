"""Discrete-event simulation of a stream of requests through one Plan.

A `Plan` is the task graph of ONE request. `simulate` replays it for N requests on the plan's
cluster (or another one, to try other link rates) and reports latency, steady-state throughput,
per-device and per-link busy time and the full timeline.

The rules (the runtime executes the same ones, so a prediction and a measurement compare):

- A compute task lasts `task.time_s` (the planner already scaled it to its device).
- A transfer follows the design notes' link model (`cost/linkmodel.py`): it occupies its link
  direction for bytes / bandwidth + overhead (`overhead_s` of `simulate` plus the task's own
  `overhead_s`: the per-message software cost, which the sender pays before the next message can
  go), and it completes `latency` after that, when its dependants may start. Latency is
  propagation delay: it does not occupy the link, so the next transfer on the same direction may
  start while this one is still in flight, and a stream of chunks pays the latency once. So a
  pipeline's throughput is 1 / max(compute times, link occupancies), as the pipeline cost model
  says, while one request's latency sums latency + bytes / bandwidth per transfer.
- Busy time, utilisation and timeline events of a link count its occupancy (transmission), not
  the latency; a transfer's event ends when its last byte has left and carries its `arrival`.
- Resources: each device computes one task at a time; each ordered link direction (src, dst)
  carries one transfer at a time; the two directions are independent, and a device may compute
  while it sends and receives.
- FIFO: every resource serves its tasks strictly in (request index, position in `plan.tasks`)
  order; a later task never overtakes an earlier one, even if it is ready first.
- Arrivals: request r arrives at r / rate_per_s, or at 0 for a saturating stream. At most
  `max_inflight` requests are in the system: request r is admitted at
  max(arrival_r, completion of request r - max_inflight).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

from edgeweave.cost.cluster import Cluster
from edgeweave.errors import UserError
from edgeweave.plan.ir import Plan
from edgeweave.trace import TimelineEvent


@dataclass
class RequestRecord:
    """One request's life: arrival, admission (start), completion (finish), all in seconds."""

    index: int
    arrival_s: float
    start_s: float  # admitted into the system (arrival, or later when max_inflight was reached)
    finish_s: float  # its last task ended
    latency_s: float  # finish - arrival: what the user waits, queueing included
    service_latency_s: float  # finish - start: time inside the system


@dataclass
class DeviceUsage:
    tasks: int
    busy_s: float
    idle_s: float
    utilisation: float  # busy / makespan


@dataclass
class LinkUsage:
    transfers: int
    bytes: int
    busy_s: float  # transmission (bytes / bandwidth + per-message overhead); latency does not occupy a link
    utilisation: float  # busy / makespan


@dataclass
class SimResult:
    """What `simulate` predicts for a stream of requests through a plan."""

    requests: int
    max_inflight: int
    rate_per_s: float | None
    overhead_s: float
    latency_s: float  # p50 of per-request latency (finish - arrival)
    latency_p95_s: float
    service_latency_s: float  # p50 of finish - admission
    single_latency_s: float  # one request alone in the system: the critical path
    throughput_per_s: float  # steady state, from the completions of the second half
    makespan_s: float  # last completion (the stream starts at 0)
    per_request: list[RequestRecord]
    devices: dict[str, DeviceUsage]
    links: dict[str, LinkUsage]  # keyed "src->dst"
    events: list[TimelineEvent] = field(repr=False)

    def to_dict(self, events: bool = True) -> dict[str, Any]:
        """JSON-able view; non-finite numbers (a plan of zero-time tasks) become None."""
        out: dict[str, Any] = {
            "requests": self.requests,
            "max_inflight": self.max_inflight,
            "rate_per_s": self.rate_per_s,
            "overhead_s": self.overhead_s,
            "latency_s": {"p50": self.latency_s, "p95": self.latency_p95_s},
            "service_latency_s": self.service_latency_s,
            "single_latency_s": self.single_latency_s,
            "throughput_per_s": self.throughput_per_s,
            "makespan_s": self.makespan_s,
            "devices": {k: asdict(v) for k, v in self.devices.items()},
            "links": {k: asdict(v) for k, v in self.links.items()},
            "per_request": [asdict(r) for r in self.per_request],
        }
        if events:
            out["events"] = [e.to_dict() for e in self.events]
        return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The plan as flat arrays: the inner loop runs requests x tasks times and must stay cheap.


@dataclass
class _TaskTable:
    ids: list[str]
    kinds: list[str]
    durations: list[float]  # how long each task holds its resource (a transfer: its occupancy)
    delays: list[float]  # from releasing the resource to completion (a transfer: the link latency)
    nbytes: list[int]
    deps: list[tuple[int, ...]]  # positions of the tasks each one waits for (all earlier)
    resource: list[int]  # index into `resources`
    resources: list[str]  # "dev:NAME" / "link:SRC->DST"


def _task_table(plan: Plan, cluster: Cluster | None, overhead_s: float) -> _TaskTable:
    position = {t.id: i for i, t in enumerate(plan.tasks)}
    resources: dict[str, int] = {}
    table = _TaskTable([], [], [], [], [], [], [], [])
    for task in plan.tasks:
        delay = 0.0
        if task.kind == "compute":
            name, duration, nbytes = f"dev:{task.device}", float(task.time_s), 0
        else:
            assert cluster is not None  # checked by the caller: plans with transfers need a cluster
            name = f"link:{task.src}->{task.dst}"
            duration = cluster.occupancy(task.src, task.dst, task.bytes) + overhead_s + task.overhead_s
            if task.src != task.dst:
                delay = cluster.link(task.src, task.dst).latency_s
            nbytes = task.bytes
        table.ids.append(task.id)
        table.kinds.append(task.kind)
        table.durations.append(duration)
        table.delays.append(delay)
        table.nbytes.append(nbytes)
        table.deps.append(tuple(position[a] for a in task.after))
        table.resource.append(resources.setdefault(name, len(resources)))
    table.resources = list(resources)
    return table


def _schedule(
    table: _TaskTable,
    arrivals: list[float],
    max_inflight: int,
) -> tuple[list[float], list[float], list[list[float]], list[list[float]]]:
    """Start and completion of every task of every request under the FIFO rules; returns
    (admission, finish, starts[r][i], ends[r][i]). A task holds its resource from its start for
    its duration and completes `delay` later (a transfer's latency): ends = start + duration + delay.

    Why one pass in (request, task position) order equals a real event simulation: under strict
    FIFO, a task (r, i) starts at max(completion of its dependencies, release of its resource by
    the task served just before it, admission of r). Its dependencies are earlier tasks of request r
    (the Plan guarantees `after` names earlier tasks); the task before it on its resource has a
    smaller (request, position) key; the admission of r depends on the completion of request
    r - max_inflight. All of these have smaller keys, so visiting tasks in key order computes
    each start from values that are already final: the same times an event-driven simulator
    with FIFO queues produces (tests/test_sim.py checks this against one).
    """
    n = len(table.durations)
    free = [0.0] * len(table.resources)
    admission: list[float] = []
    finish: list[float] = []
    starts: list[list[float]] = []
    ends: list[list[float]] = []
    durations, delays, deps, resource = table.durations, table.delays, table.deps, table.resource
    for r, arrival in enumerate(arrivals):
        admit = arrival if r < max_inflight else max(arrival, finish[r - max_inflight])
        start_r = [0.0] * n
        end_r = [0.0] * n
        for i in range(n):
            ready = admit
            for d in deps[i]:
                if end_r[d] > ready:
                    ready = end_r[d]
            res = resource[i]
            if free[res] > ready:
                ready = free[res]
            start_r[i] = ready
            free[res] = ready + durations[i]
            end_r[i] = free[res] + delays[i]
        admission.append(admit)
        # Completions are non-decreasing in r: task i of r+1 uses the same resource as task i of
        # r, is served after it and has the same delay. So "r - max_inflight completed" means all
        # earlier ones did.
        finish.append(max(end_r, default=admit))
        starts.append(start_r)
        ends.append(end_r)
    return admission, finish, starts, ends


# ---------------------------------------------------------------------------------------------
# Summaries


def steady_throughput(finish: list[float], makespan: float) -> float:
    """Completions per second over the second half of the stream (the first half is warm-up)."""
    n = len(finish)
    if n >= 4:
        tail = finish[n // 2 :]
        span = tail[-1] - tail[0]
        if span > 0:
            return (len(tail) - 1) / span
    return n / makespan if makespan > 0 else math.inf


def _device_usage(plan: Plan, table: _TaskTable, requests: int, makespan: float) -> dict[str, DeviceUsage]:
    busy = {d: 0.0 for d in plan.devices}
    count = dict.fromkeys(plan.devices, 0)
    for task, duration in zip(plan.tasks, table.durations, strict=True):
        if task.kind == "compute":
            busy[task.device] += duration * requests
            count[task.device] += requests
    return {
        d: DeviceUsage(count[d], busy[d], max(makespan - busy[d], 0.0), busy[d] / makespan if makespan else 0.0)
        for d in plan.devices
    }


def _link_usage(plan: Plan, table: _TaskTable, requests: int, makespan: float) -> dict[str, LinkUsage]:
    links: dict[str, LinkUsage] = {}
    for task, duration in zip(plan.tasks, table.durations, strict=True):
        if task.kind != "transfer":
            continue
        usage = links.setdefault(f"{task.src}->{task.dst}", LinkUsage(0, 0, 0.0, 0.0))
        usage.transfers += requests
        usage.bytes += task.bytes * requests
        usage.busy_s += duration * requests
    for usage in links.values():
        usage.utilisation = usage.busy_s / makespan if makespan else 0.0
    return links


def _events(table: _TaskTable, starts: list[list[float]], ends: list[list[float]]) -> list[TimelineEvent]:
    """One event per task and request: [start, release of its resource]; a transfer also carries
    its arrival (release + latency), so a timeline shows what the link did and when data landed."""
    names = [table.resources[res] for res in table.resource]
    transfer = [kind == "transfer" for kind in table.kinds]
    return [
        TimelineEvent(
            names[i],
            r,
            table.ids[i],
            s_r[i],
            s_r[i] + table.durations[i],
            table.kinds[i],
            table.nbytes[i],
            e_r[i] if transfer[i] else None,
        )
        for r, (s_r, e_r) in enumerate(zip(starts, ends, strict=True))
        for i in range(len(table.ids))
    ]


def _check_args(requests: int, rate_per_s: float | None, max_inflight: int | None, overhead_s: float) -> None:
    if isinstance(requests, bool) or not isinstance(requests, Integral) or requests < 1:
        raise UserError(f"requests must be a whole number >= 1, got {requests!r}")
    if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise UserError(f"the arrival rate must be > 0 requests per second, got {rate_per_s!r}")
    if max_inflight is not None and (not isinstance(max_inflight, Integral) or max_inflight < 1):
        raise UserError(f"max_inflight must be a whole number >= 1, got {max_inflight!r}")
    if not (math.isfinite(overhead_s) and overhead_s >= 0):
        raise UserError(f"the per-transfer overhead must be >= 0 seconds, got {overhead_s!r}")


def _resolve_cluster(plan: Plan, cluster: Cluster | None) -> Cluster | None:
    if cluster is not None:
        return cluster
    if plan.cluster:
        return Cluster.from_dict(plan.cluster, origin="the plan's cluster")
    if plan.transfer_tasks:
        raise UserError("the plan carries no cluster description and has transfers: give a cluster (--cluster C.yaml)")
    return None


def default_max_inflight(plan: Plan, cluster: Cluster | None = None) -> int:
    """Enough requests in flight for every task of the plan to work on a different one, plus one,
    plus the requests that fit in the links' latency.

    Transfers are pipeline stages too (a link carries one transfer at a time), so counting only
    compute tasks would cap a pipeline whose transfers are as long as its computations below
    1 / bottleneck (Little's law: throughput <= in-flight / latency). And a link's latency does
    not occupy it: at one request per bottleneck B, a transfer with latency L has about L / B
    requests in flight on the wire at once, so each one adds ceil(L / B) to the window, or a
    long-latency link would cap the throughput below 1 / B. `cluster` defaults to the plan's own.
    """
    base = len(plan.tasks) + 1
    if not plan.transfer_tasks:
        return base
    if cluster is None:
        if not plan.cluster:
            return base
        cluster = Cluster.from_dict(plan.cluster, origin="the plan's cluster")
    table = _task_table(plan, cluster, 0.0)
    busy = [0.0] * len(table.resources)
    for duration, res in zip(table.durations, table.resource, strict=True):
        busy[res] += duration
    bottleneck = max(busy)
    if bottleneck <= 0:
        return base
    return base + sum(math.ceil(delay / bottleneck) for delay in table.delays if delay > 0)


def simulate(
    plan: Plan,
    requests: int = 50,
    *,
    cluster: Cluster | None = None,
    rate_per_s: float | None = None,
    max_inflight: int | None = None,
    overhead_s: float = 0.0,
) -> SimResult:
    """Stream `requests` requests through `plan` and report latency, throughput and busy times.

    Pure and deterministic. `cluster` replaces the plan's own (to replay it on other link rates;
    compute times stay the plan's). `overhead_s` is added to every transfer's occupancy (the
    per-message cost of a real transport, which the sender pays). See the module docstring for
    the scheduling rules.
    """
    _check_args(requests, rate_per_s, max_inflight, overhead_s)
    cluster = _resolve_cluster(plan, cluster)
    requests = int(requests)
    inflight = default_max_inflight(plan, cluster) if max_inflight is None else int(max_inflight)
    table = _task_table(plan, cluster, overhead_s)
    arrivals = [r / rate_per_s if rate_per_s else 0.0 for r in range(requests)]
    admission, finish, starts, ends = _schedule(table, arrivals, inflight)
    makespan = max(finish)
    single = _schedule(table, [0.0], 1)[1][0]
    records = [
        RequestRecord(r, arrivals[r], admission[r], finish[r], finish[r] - arrivals[r], finish[r] - admission[r])
        for r in range(requests)
    ]
    latencies = np.array([rec.latency_s for rec in records])
    return SimResult(
        requests=requests,
        max_inflight=inflight,
        rate_per_s=rate_per_s,
        overhead_s=overhead_s,
        latency_s=float(np.percentile(latencies, 50)),
        latency_p95_s=float(np.percentile(latencies, 95)),
        service_latency_s=float(np.percentile([rec.service_latency_s for rec in records], 50)),
        single_latency_s=single,
        throughput_per_s=steady_throughput(finish, makespan),
        makespan_s=makespan,
        per_request=records,
        devices=_device_usage(plan, table, requests, makespan),
        links=_link_usage(plan, table, requests, makespan),
        events=_events(table, starts, ends),
    )
