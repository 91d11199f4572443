"""The simulator: pipeline plans reproduce the cost model; FIFO, in-flight bound and arrivals hold.

The one-pass list scheduler is checked against an independent event-driven simulation with
per-resource FIFO queues on random task DAGs (several tasks per resource, both link directions).
Links follow the design notes' model: a transfer holds its link for bytes / bandwidth (+ the
per-message overhead) and completes one link latency later; latency does not occupy the link.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edgeweave.cli import sim_cmd
from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.errors import UserError
from edgeweave.plan.build import build_plan, stages_to_placement
from edgeweave.plan.costmodel import PipelineModel, Stage
from edgeweave.plan.ir import ComputeTask, Plan, TransferTask
from edgeweave.sim import SimResult, TimelineEvent, as_events, draw_timeline, simulate, write_trace

# ---------------------------------------------------------------------------------------------
# Building plans without models


def toy_profile(rng: np.random.Generator, n: int, skips: bool) -> Profile:
    """A chain of n nodes; with `skips`, some nodes also read a node (or the input) far back."""
    nodes = []
    for i in range(n):
        inputs = ["input" if i == 0 else f"n{i - 1}"]
        if skips and i >= 2 and rng.random() < 0.5:
            back = int(rng.integers(2, i + 2))  # i - back == -1 is the model input
            inputs.append("input" if i - back < 0 else f"n{i - back}")
        nodes.append(
            {
                "name": f"n{i}",
                "time_s": float(rng.uniform(0.001, 0.05)),
                "out_bytes": int(rng.integers(1_000, 400_000)),
                "param_bytes": int(rng.integers(0, 10_000)),
                "inputs": inputs,
            }
        )
    return Profile.model_validate({"model": "toy", "input_bytes": int(rng.integers(1_000, 200_000)), "nodes": nodes})


def toy_cluster(rng: np.random.Generator, n_dev: int, slow: bool = False) -> Cluster:
    """Heterogeneous devices and asymmetric pairwise links; `slow` makes links the bottleneck."""
    names = [f"d{i}" for i in range(n_dev)]
    devices = {d: {"speed": float(rng.choice([0.25, 0.5, 1.0, 2.0])), "memory": "16GiB"} for d in names}
    links: dict[str, dict[str, str]] = {"default": {"bandwidth": "100Mbps", "latency": "1ms"}}
    for a in names:
        for b in names:
            if a != b:
                mbps = int(rng.integers(1, 5)) if slow else int(rng.integers(20, 1000))
                links[f"{a}->{b}"] = {"bandwidth": f"{mbps}Mbps", "latency": f"{int(rng.integers(0, 3000))}us"}
    return Cluster.from_dict({"source": "d0", "devices": devices, "links": links})


def random_stages(rng: np.random.Generator, n_nodes: int, n_dev: int) -> list[Stage]:
    k = int(rng.integers(1, min(n_nodes, n_dev) + 1))
    cuts = sorted(rng.choice(np.arange(1, n_nodes), size=k - 1, replace=False).tolist())
    bounds = [0, *cuts, n_nodes]
    devs = rng.permutation(n_dev)[:k]
    return [Stage(bounds[i], bounds[i + 1], int(devs[i])) for i in range(k)]


def pipeline_plan(seed: int, skips: bool = True, slow: bool = False) -> Plan:
    rng = np.random.default_rng(seed)
    profile = toy_profile(rng, int(rng.integers(4, 12)), skips)
    cluster = toy_cluster(rng, int(rng.integers(2, 5)), slow)
    pm = PipelineModel.build(profile, cluster)
    stages = random_stages(rng, len(profile), pm.num_devices)
    return build_plan(profile, cluster, pm, stages_to_placement(stages), "pipeline", "throughput")


def chain_plan(durations: list[float], devices: list[str] | None = None) -> Plan:
    """Compute tasks only, one per device, each after the previous (no cluster needed)."""
    devices = devices or [f"d{i}" for i in range(len(durations))]
    tasks = [
        ComputeTask(id=f"c{i}", device=d, nodes=[i], time_s=t, after=[f"c{i - 1}"] if i else [])
        for i, (d, t) in enumerate(zip(devices, durations, strict=True))
    ]
    return Plan(
        strategy="chain",
        objective="throughput",
        model="toy",
        source=devices[0],
        devices=list(dict.fromkeys(devices)),
        num_nodes=len(durations),
        input_bytes=0,
        output_bytes=0,
        tasks=tasks,
    )


TWO = {
    "source": "a",
    "devices": {"a": {"speed": 1, "memory": "1GiB"}, "b": {"speed": 1, "memory": "1GiB"}},
    "links": {"a-b": {"bandwidth": "8Mbps", "latency": "0s"}},
}  # 1 MB/s: 1000 bytes take 1 ms


# ---------------------------------------------------------------------------------------------
# An independent event-driven simulation (strict FIFO queues), the reference for the fast one


def reference_simulation(plan: Plan, cluster: Cluster, requests: int, rate: float | None, k: int):
    """Returns (start, release, done, admitted, finish): a task holds its resource from start to
    release (a transfer: bytes * 8 / bandwidth) and is done, for its dependants, a link latency
    after its release."""
    tasks = plan.tasks
    pos = {t.id: i for i, t in enumerate(tasks)}
    deps = [[pos[a] for a in t.after] for t in tasks]
    dur = [t.time_s if t.kind == "compute" else t.bytes * 8 / cluster.link(t.src, t.dst).bandwidth_bps for t in tasks]
    delay = [0.0 if t.kind == "compute" else cluster.link(t.src, t.dst).latency_s for t in tasks]
    res = [f"dev:{t.device}" if t.kind == "compute" else f"link:{t.src}->{t.dst}" for t in tasks]
    queues: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in range(requests):
        for i in range(len(tasks)):
            queues[res[i]].append((r, i))
    head = dict.fromkeys(queues, 0)
    busy = dict.fromkeys(queues, False)
    arrived, admitted, finish = [False] * requests, [None] * requests, [None] * requests
    end: dict[tuple[int, int], float] = {}
    release: dict[tuple[int, int], float] = {}
    start: dict[tuple[int, int], float] = {}
    left = [len(tasks)] * requests
    heap: list = []
    seq = 0
    for r in range(requests):
        heapq.heappush(heap, (r / rate if rate else 0.0, seq, "arrive", r))
        seq += 1
    while heap:
        now = heap[0][0]
        while heap and heap[0][0] == now:
            _, _, what, data = heapq.heappop(heap)
            if what == "arrive":
                arrived[data] = True
            elif what == "release":  # the resource is free; a transfer is still propagating
                r, i = data
                release[data] = now
                busy[res[i]] = False
                heapq.heappush(heap, (now + delay[i], seq, "done", data))
                seq += 1
            else:
                r, i = data
                end[data] = now
                left[r] -= 1
                if left[r] == 0:
                    finish[r] = now
        for r in range(requests):
            if admitted[r] is None and arrived[r] and (r < k or finish[r - k] is not None):
                admitted[r] = now
        for name, queue in queues.items():
            if busy[name] or head[name] == len(queue):
                continue
            r, i = queue[head[name]]
            if admitted[r] is not None and all((r, d) in end for d in deps[i]):
                busy[name] = True
                head[name] += 1
                start[(r, i)] = now
                heapq.heappush(heap, (now + dur[i], seq, "release", (r, i)))
                seq += 1
    return start, release, end, admitted, finish


def random_dag_plan(rng: np.random.Generator, cluster: Cluster, n_tasks: int) -> Plan:
    names = cluster.device_names
    tasks: list[ComputeTask | TransferTask] = []
    for t in range(n_tasks):
        earlier = [x.id for x in tasks]
        after = sorted(rng.choice(earlier, size=min(len(earlier), int(rng.integers(0, 3))), replace=False).tolist())
        if rng.random() < 0.5:
            tasks.append(
                ComputeTask(
                    id=f"t{t}",
                    device=str(rng.choice(names)),
                    nodes=[0],
                    after=after,
                    time_s=float(rng.uniform(0, 0.01)),
                )
            )
        else:
            a, b = rng.choice(names, size=2, replace=False)
            tasks.append(
                TransferTask(
                    id=f"t{t}",
                    src=str(a),
                    dst=str(b),
                    values=["input"],
                    after=after,
                    bytes=int(rng.integers(0, 20_000)),
                )
            )
    return Plan(
        strategy="random",
        objective="throughput",
        model="toy",
        source=names[0],
        devices=names,
        num_nodes=1,
        input_bytes=0,
        output_bytes=0,
        tasks=tasks,
        cluster=cluster.to_dict(),
    )


@pytest.mark.parametrize("seed", range(12))
def test_one_pass_schedule_equals_event_simulation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cluster = toy_cluster(rng, 3)
    plan = random_dag_plan(rng, cluster, int(rng.integers(1, 12)))
    requests = int(rng.integers(1, 15))
    rate = None if seed % 3 == 0 else float(rng.uniform(20, 400))
    k = int(rng.integers(1, 6))
    result = simulate(plan, requests, rate_per_s=rate, max_inflight=k)
    start, release, done, admitted, finish = reference_simulation(plan, cluster, requests, rate, k)
    pos = {t.id: i for i, t in enumerate(plan.tasks)}
    assert len(result.events) == requests * len(plan.tasks)
    for ev in result.events:
        key = (ev.request, pos[ev.task])
        assert ev.start == pytest.approx(start[key], rel=1e-12, abs=1e-15)
        assert ev.end == pytest.approx(release[key], rel=1e-12, abs=1e-15)
        assert ev.done == pytest.approx(done[key], rel=1e-12, abs=1e-15)
        assert (ev.arrival is None) == (ev.kind == "compute")
    for rec in result.per_request:
        assert rec.start_s == pytest.approx(admitted[rec.index], abs=1e-15)
        assert rec.finish_s == pytest.approx(finish[rec.index], abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Pipelines reproduce the cost model


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("skips", [False, True])
def test_pipeline_matches_cost_model(seed: int, skips: bool) -> None:
    plan = pipeline_plan(seed, skips=skips)
    result = simulate(plan, 200)
    assert result.single_latency_s == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)
    assert result.throughput_per_s == pytest.approx(1 / plan.cost_model["bottleneck_s"], rel=0.01)


@pytest.mark.parametrize("seed", range(8))
def test_pipeline_with_transfer_bottleneck(seed: int) -> None:
    plan = pipeline_plan(100 + seed, skips=True, slow=True)
    cm = plan.cost_model
    if len(plan.transfer_tasks) == 0:
        pytest.skip("all stages on the source: no transfer")
    links = [*cm["link_in_s"], cm["output_link_s"]]
    assert max(links) == cm["bottleneck_s"]  # 1-4 Mbps links dominate the compute
    result = simulate(plan, 120)
    assert result.single_latency_s == pytest.approx(cm["latency_s"], rel=1e-9)
    assert result.throughput_per_s == pytest.approx(1 / cm["bottleneck_s"], rel=0.01)
    busiest = max(result.links.values(), key=lambda u: u.busy_s)
    assert busiest.utilisation > 0.9


@pytest.mark.parametrize("strategy", ["pipeline", "pipedream", "neurosurgeon", "dads", "even"])
def test_device_profiles_reach_plans_and_the_simulator(tmp_path: Path, strategy: str) -> None:
    """A cluster where one kind of board carries its own profile (cluster `profile:`), its times
    not proportional to the reference's: every layer-wise plan's compute tasks take that board's
    times, and the simulator, which only reads the plan, predicts exactly the cost model."""
    from edgeweave.plan.strategies import make_plan

    rng = np.random.default_rng(4)
    model = toy_profile(rng, 12, skips=True)
    own = model.model_dump()
    for node in own["nodes"]:
        node["time_s"] *= float(rng.uniform(0.1, 3.0))  # a GPU board: some ops far faster, some slower
    (tmp_path / "board.json").write_text(json.dumps(own))
    (tmp_path / "c.yaml").write_text(
        "source: host\nkinds:\n  board: {speed: 1.0, memory: 1GiB, profile: board.json}\n"
        "devices:\n  host: {speed: 0.3, memory: 1GiB}\n  b1: {kind: board}\n  b2: {kind: board}\n"
        "links:\n  default: {bandwidth: 100Mbps, latency: 1ms}\n"
    )
    cluster = Cluster.load(tmp_path / "c.yaml")
    board = np.array([n["time_s"] for n in own["nodes"]])
    plan = make_plan(model, cluster, strategy, "throughput")
    for task in plan.compute_tasks:
        expected = board[task.nodes].sum() if task.device != "host" else model.times[task.nodes].sum() / 0.3
        assert task.time_s == pytest.approx(expected, rel=1e-12)
    result = simulate(plan, 100)
    assert result.single_latency_s == pytest.approx(plan.cost_model["latency_s"], rel=1e-9)


def test_residual_plans_carry_several_values() -> None:
    """The skip connections really make some cut carry more than one tensor in these tests."""
    assert any(len(t.values) > 1 for seed in range(16) for t in pipeline_plan(seed, skips=True).transfer_tasks)


def test_single_stage_on_source_needs_no_cluster() -> None:
    plan = chain_plan([0.01])
    result = simulate(plan, 10)
    assert result.throughput_per_s == pytest.approx(100.0)
    assert result.links == {}
    assert result.devices["d0"].utilisation == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Scheduling rules


def test_fifo_no_overtaking_and_no_overlap() -> None:
    rng = np.random.default_rng(7)
    cluster = toy_cluster(rng, 3)
    plan = random_dag_plan(rng, cluster, 10)
    pos = {t.id: i for i, t in enumerate(plan.tasks)}
    result = simulate(plan, 30, max_inflight=8)
    by_resource: dict[str, list[TimelineEvent]] = defaultdict(list)
    for ev in result.events:
        by_resource[ev.resource].append(ev)
    for events in by_resource.values():
        events.sort(key=lambda e: (e.start, e.end))
        keys = [(e.request, pos[e.task]) for e in events]
        assert keys == sorted(keys), "a later task overtook an earlier one on the same resource"
        for a, b in zip(events, events[1:], strict=False):
            assert b.start >= a.end - 1e-15, "one resource ran two tasks at once"
    finishes = [r.finish_s for r in result.per_request]
    assert finishes == sorted(finishes)


def test_dependencies_respected() -> None:
    rng = np.random.default_rng(3)
    cluster = toy_cluster(rng, 3)
    plan = random_dag_plan(rng, cluster, 12)
    result = simulate(plan, 10)
    done = {(e.request, e.task): e.done for e in result.events}
    after = {t.id: t.after for t in plan.tasks}
    for ev in result.events:
        for dep in after[ev.task]:
            assert ev.start >= done[(ev.request, dep)]  # a transfer's dependants wait for its arrival


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_max_inflight_respected(k: int) -> None:
    plan = pipeline_plan(11, skips=True)
    result = simulate(plan, 40, max_inflight=k)
    assert result.max_inflight == k
    spans = [(r.start_s, r.finish_s) for r in result.per_request]
    for t, _ in spans:
        inside = sum(1 for s, f in spans if s <= t < f)
        assert inside <= k
    for ev in result.events:  # no task runs before its request is admitted
        assert ev.start >= result.per_request[ev.request].start_s
    # Little's law: throughput <= in-flight / latency of one request
    assert result.throughput_per_s <= k / result.single_latency_s * (1 + 1e-9)
    if k == 1:
        for rec in result.per_request:
            assert rec.service_latency_s == pytest.approx(result.single_latency_s, rel=1e-9)


def test_default_max_inflight_counts_transfers() -> None:
    """Equal compute and transfer times: counting only compute tasks would cap the throughput."""
    cluster = Cluster.from_dict(TWO)
    tasks = [
        TransferTask(id="x0", src="a", dst="b", values=["input"], bytes=1000),
        ComputeTask(id="c0", device="b", nodes=[0], after=["x0"], time_s=0.001),
        TransferTask(id="xout", src="b", dst="a", values=["n0"], bytes=1000, after=["c0"]),
    ]
    plan = Plan(
        strategy="offload",
        objective="throughput",
        model="toy",
        source="a",
        devices=["a", "b"],
        num_nodes=1,
        input_bytes=1000,
        output_bytes=1000,
        tasks=tasks,
        cluster=cluster.to_dict(),
    )
    result = simulate(plan, 100)
    assert result.max_inflight == 4
    assert result.throughput_per_s == pytest.approx(1000.0, rel=1e-6)
    # two in flight: Little's law caps it at 2 per single-request latency (completions come in pairs, hence 1%)
    assert simulate(plan, 100, max_inflight=2).throughput_per_s == pytest.approx(2 / 0.003, rel=0.01)


def test_rate_below_capacity_gives_the_rate_and_no_queueing() -> None:
    plan = pipeline_plan(11, skips=True)
    capacity = 1 / plan.cost_model["bottleneck_s"]
    rate = 0.5 * capacity
    result = simulate(plan, 60, rate_per_s=rate)
    assert result.throughput_per_s == pytest.approx(rate, rel=1e-6)
    assert [r.arrival_s for r in result.per_request[:3]] == pytest.approx([0, 1 / rate, 2 / rate])
    for rec in result.per_request:
        assert rec.latency_s == pytest.approx(result.single_latency_s, rel=1e-9)


def test_rate_above_capacity_queues() -> None:
    plan = pipeline_plan(11, skips=True)
    capacity = 1 / plan.cost_model["bottleneck_s"]
    result = simulate(plan, 60, rate_per_s=2 * capacity)
    assert result.throughput_per_s == pytest.approx(capacity, rel=0.01)
    lat = [r.latency_s for r in result.per_request]
    assert lat[-1] > lat[0] * 2  # the queue keeps growing
    assert result.latency_p95_s > result.latency_s > result.single_latency_s
    # service latency excludes waiting for admission, latency includes it
    assert all(r.latency_s >= r.service_latency_s for r in result.per_request)


def test_link_directions_are_independent() -> None:
    cluster = Cluster.from_dict(TWO)
    tasks = [
        TransferTask(id="ab", src="a", dst="b", values=["input"], bytes=1000),
        TransferTask(id="ba", src="b", dst="a", values=["input"], bytes=1000),
        TransferTask(id="ab2", src="a", dst="b", values=["input"], bytes=1000),
    ]
    plan = Plan(
        strategy="x",
        objective="latency",
        model="toy",
        source="a",
        devices=["a", "b"],
        num_nodes=1,
        input_bytes=0,
        output_bytes=0,
        tasks=tasks,
        cluster=cluster.to_dict(),
    )
    result = simulate(plan, 1)
    ev = {e.task: e for e in result.events}
    assert ev["ab"].start == ev["ba"].start == 0.0  # opposite directions run at once
    assert ev["ab2"].start == pytest.approx(ev["ab"].end) == pytest.approx(0.001)  # same direction queues
    assert set(result.links) == {"a->b", "b->a"}
    assert result.links["a->b"].transfers == 2 and result.links["a->b"].bytes == 2000
    assert result.single_latency_s == pytest.approx(0.002)


def chunked_plan(chunks: int, latency: str, overhead_s: float = 0.0) -> Plan:
    """`chunks` messages of 1000 bytes a -> b on an 8 Mbps link (1 ms each), then b computes 1 ms."""
    cluster = Cluster.from_dict({**TWO, "links": {"a-b": {"bandwidth": "8Mbps", "latency": latency}}})
    tasks: list[ComputeTask | TransferTask] = [
        TransferTask(id=f"x{j}", src="a", dst="b", values=["input"], bytes=1000, overhead_s=overhead_s)
        for j in range(chunks)
    ]
    tasks.append(ComputeTask(id="c", device="b", nodes=[0], time_s=0.001, after=[t.id for t in tasks]))
    return Plan(
        strategy="x",
        objective="latency",
        model="toy",
        source="a",
        devices=["a", "b"],
        num_nodes=1,
        input_bytes=1000 * chunks,
        output_bytes=0,
        tasks=tasks,
        cluster=cluster.to_dict(),
    )


def test_back_to_back_transfers_pay_the_latency_once() -> None:
    """Latency is propagation: chunk j leaves at j ms and arrives 50 ms later; the link is busy 1 ms per chunk."""
    result = simulate(chunked_plan(10, "50ms"), 1)
    ev = {e.task: e for e in result.events}
    for j in range(10):
        assert (ev[f"x{j}"].start, ev[f"x{j}"].end) == pytest.approx((0.001 * j, 0.001 * (j + 1)))
        assert ev[f"x{j}"].arrival == pytest.approx(0.001 * (j + 1) + 0.05)
    assert ev["c"].start == pytest.approx(0.060)  # 10 x B/bw + L, not 10 x (B/bw + L) = 0.51
    assert result.single_latency_s == pytest.approx(0.061)
    link = result.links["a->b"]
    assert link.busy_s == pytest.approx(0.010) and link.utilisation == pytest.approx(0.010 / 0.061)


def test_the_per_message_overhead_occupies_the_link() -> None:
    """The software cost is paid by the sender before the next message: it queues like bytes do."""
    result = simulate(chunked_plan(2, "20ms", overhead_s=0.0005), 1, overhead_s=0.00025)
    ev = {e.task: e for e in result.events}
    per_message = 0.001 + 0.0005 + 0.00025
    assert ev["x1"].start == pytest.approx(per_message)
    assert ev["x1"].arrival == pytest.approx(2 * per_message + 0.02)
    assert result.links["a->b"].busy_s == pytest.approx(2 * per_message)


@pytest.mark.parametrize("latency", ["0ms", "30ms", "300ms"])
def test_a_long_latency_link_still_pipelines_at_its_bottleneck(latency: str) -> None:
    """1 ms per message and 1 ms of compute: one request per ms whatever the latency, as the
    throughput objective says; the default window grows with the latency so that it can."""
    plan = chunked_plan(1, latency)
    window = simulate(plan, 1).max_inflight
    assert window == len(plan.tasks) + 1 + round(float(latency[:-2]) / 1.0)
    result = simulate(plan, 2000)
    assert result.throughput_per_s == pytest.approx(1000.0, rel=0.01)
    assert result.single_latency_s == pytest.approx(0.002 + float(latency[:-2]) / 1000)


def test_busy_times_sum_to_task_durations() -> None:
    plan = pipeline_plan(2, skips=True)
    cluster = Cluster.from_dict(plan.cluster)
    n = 25
    result = simulate(plan, n, overhead_s=0.0005)
    per_resource: dict[str, float] = defaultdict(float)
    for ev in result.events:
        per_resource[ev.resource] += ev.end - ev.start
    for task in plan.compute_tasks:
        use = result.devices[task.device]
        assert use.busy_s == pytest.approx(n * task.time_s, rel=1e-9)
        assert use.busy_s == pytest.approx(per_resource[f"dev:{task.device}"], rel=1e-9)
        assert use.busy_s + use.idle_s == pytest.approx(result.makespan_s)
        assert use.utilisation == pytest.approx(use.busy_s / result.makespan_s)
    for task in plan.transfer_tasks:
        use = result.links[f"{task.src}->{task.dst}"]
        expected = n * (task.bytes * 8 / cluster.link(task.src, task.dst).bandwidth_bps + 0.0005)  # no latency
        assert use.busy_s == pytest.approx(expected, rel=1e-9)
        assert use.busy_s == pytest.approx(per_resource[f"link:{task.src}->{task.dst}"], rel=1e-9)
        assert use.bytes == n * task.bytes and use.transfers == n
    assert result.makespan_s == max(r.finish_s for r in result.per_request)


def test_replay_on_another_cluster_and_overhead() -> None:
    plan = pipeline_plan(2, skips=True, slow=True)
    if not plan.transfer_tasks:
        pytest.skip("no transfer")
    base = simulate(plan, 30)
    fast_links = Cluster.from_dict({**plan.cluster, "links": {"default": {"bandwidth": "10Gbps", "latency": "0s"}}})
    fast = simulate(plan, 30, cluster=fast_links)
    assert fast.single_latency_s < base.single_latency_s
    assert fast.throughput_per_s > base.throughput_per_s
    slower = simulate(plan, 30, overhead_s=0.01)
    assert slower.single_latency_s == pytest.approx(base.single_latency_s + 0.01 * len(plan.transfer_tasks))


def test_deterministic_and_json() -> None:
    plan = pipeline_plan(9, skips=True)
    a, b = simulate(plan, 20), simulate(plan, 20)
    assert a.to_dict() == b.to_dict()
    data = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    assert data["latency_s"]["p50"] == a.latency_s and len(data["per_request"]) == 20
    assert len(data["events"]) == 20 * len(plan.tasks)
    assert "events" not in a.to_dict(events=False)


def test_bad_arguments() -> None:
    plan = pipeline_plan(1)
    for kwargs in ({"requests": 0}, {"rate_per_s": 0.0}, {"max_inflight": 0}, {"overhead_s": -1.0}):
        with pytest.raises(UserError):
            simulate(plan, **kwargs)
    bare = plan.model_copy(update={"cluster": {}})
    if bare.transfer_tasks:
        with pytest.raises(UserError, match="no cluster"):
            simulate(bare, 3)


def test_fast_enough() -> None:
    plan = chain_plan([0.001 * (1 + i % 5) for i in range(40)], [f"d{i % 8}" for i in range(40)])
    begin = time.perf_counter()
    result = simulate(plan, 1000)
    elapsed = time.perf_counter() - begin
    assert len(result.events) == 40_000
    assert elapsed < 1.5  # typically ~0.1 s


# ---------------------------------------------------------------------------------------------
# Timeline and trace


def test_timeline_png(tmp_path: Path) -> None:
    plan = pipeline_plan(2, skips=True)
    result = simulate(plan, 20)
    out = draw_timeline(result, tmp_path / "t.png", title="toy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000
    # many requests are cut to the first 30; plain event dicts (a measured run) work too
    many = simulate(plan, 80)
    dicts = [e.to_dict() for e in many.events]
    assert draw_timeline(dicts, tmp_path / "m.png").exists()


def test_trace_json(tmp_path: Path) -> None:
    plan = pipeline_plan(2, skips=True)
    result = simulate(plan, 12)
    write_trace(result, tmp_path / "t.json", name="toy")
    data = json.loads((tmp_path / "t.json").read_text())
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(complete) == 12 * len(plan.tasks)
    assert set(threads.values()) == {e.resource for e in result.events}
    assert {e["pid"] for e in events} == {1}
    first = result.events[0]
    match = next(e for e in complete if e["args"]["request"] == first.request and e["args"]["task"] == first.task)
    assert match["ts"] == pytest.approx(first.start * 1e6)
    assert match["dur"] == pytest.approx((first.end - first.start) * 1e6)
    assert threads[match["tid"]] == first.resource
    assert all("bytes" in e["args"] for e in complete)


def test_events_are_generic() -> None:
    ev = TimelineEvent("dev:a", 0, "c0", 0.0, 1.0, "compute")
    assert as_events([ev]) == [ev]
    assert as_events([ev.to_dict()]) == [ev]
    with pytest.raises(TypeError):
        as_events([42])


# ---------------------------------------------------------------------------------------------
# Command line


def sim_app() -> typer.Typer:
    app = typer.Typer()
    sim_cmd.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `simulate` as a named subcommand
    return app


def test_cli_json_tables_and_files(tmp_path: Path) -> None:
    plan = pipeline_plan(8, skips=True)
    path = tmp_path / "plan.json"
    plan.save(path)
    runner = CliRunner()
    res = runner.invoke(sim_app(), ["simulate", str(path), "--requests", "40", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["requests"] == 40 and data["strategy"] == "pipeline"
    assert data["throughput_per_s"] == pytest.approx(1 / plan.cost_model["bottleneck_s"], rel=0.01)
    assert data["predicted"]["latency_s"] == pytest.approx(data["single_latency_s"], rel=1e-9)

    png, trace = tmp_path / "t.png", tmp_path / "t.json"
    res = runner.invoke(
        sim_app(),
        [
            "simulate",
            str(path),
            "-n",
            "10",
            "--rate",
            "5",
            "--max-inflight",
            "3",
            "--timeline",
            str(png),
            "--trace",
            str(trace),
        ],
    )
    assert res.exit_code == 0, res.output
    for word in ("throughput", "single-request latency", "utilisation", "Devices"):
        assert word in res.stdout
    assert png.exists() and json.loads(trace.read_text())["traceEvents"]


def test_cli_cluster_replay(tmp_path: Path) -> None:
    plan = pipeline_plan(2, skips=True, slow=True)
    path, cpath = tmp_path / "plan.json", tmp_path / "fast.yaml"
    plan.save(path)
    cpath.write_text(json.dumps({**plan.cluster, "links": {"default": {"bandwidth": "10Gbps", "latency": "0s"}}}))
    res = CliRunner().invoke(sim_app(), ["simulate", str(path), "--cluster", str(cpath), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["single_latency_s"] < simulate(plan, 1).single_latency_s


@pytest.mark.parametrize("args", [["--requests", "0"], ["--rate", "-1"], ["--overhead-s", "-0.1"]])
def test_cli_errors_are_user_errors(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "plan.json"
    pipeline_plan(1).save(path)
    res = CliRunner().invoke(sim_app(), ["simulate", str(path), *args])
    assert isinstance(res.exception, UserError)


def test_cli_bad_plan_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = CliRunner().invoke(sim_app(), ["simulate", str(bad)])
    assert isinstance(res.exception, UserError)
    res = CliRunner().invoke(sim_app(), ["simulate", str(tmp_path / "missing.json")])
    assert isinstance(res.exception, UserError)


def test_simresult_type() -> None:
    assert isinstance(simulate(chain_plan([0.1, 0.2]), 3), SimResult)
