"""The runtime's per-message software cost, end to end on loopback: one number.

A chain of tiny nodes alternates between two local worker processes (a, b, a, b, ...), so every
node's output crosses a link. The links run at 100 Gbps with no latency, so the emulated
transmission is ~0 and everything between a producer's compute ending and its consumer's compute
starting is software: the hand-off to the sender thread, the shaper, serialisation, ZeroMQ over
loopback, decoding, and the receiver's hand-off to its compute thread. Frames run one at a time
(no queueing); the median of those gaps over every message of every frame is the per-message
cost that planners price (`MESSAGE_OVERHEAD_S` in plan/hybrid.py, `overhead_s` of the simulator).
The gaps come from the runtime's own timeline (wall-clock times from both processes, one clock).
A cross-check from whole frames: (median frame latency of the ping-pong plan - that of the same
chain run on the source alone) / messages per frame, which also counts the output's way back and
everything the timeline does not see.

Usage: python benchmarks/message_cost.py [--json] [--frames 40] [--nodes 16] [--floats 64]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.graph import capture
from edgeweave.plan.build import build_plan
from edgeweave.plan.costmodel import PipelineModel
from edgeweave.runtime.session import Session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--floats", type=int, default=64, help="float32 values per message (64: 256 B)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    module = nn.Sequential(*[nn.ReLU() for _ in range(args.nodes)])
    x = torch.randn(1, args.floats)
    graph, weights = capture(module, x, "relu_chain")
    profile = profile_graph(graph, weights, x, warmup=1, repeats=3)
    cluster = Cluster.from_dict(
        {
            "source": "a",
            "devices": {d: {"speed": 1.0, "memory": "1GiB"} for d in ("a", "b")},
            "links": {"default": {"bandwidth": "100Gbps", "latency": "0ms"}},
        }
    )
    pm = PipelineModel.build(profile, cluster)
    placement = [(k % 2, [k]) for k in range(len(profile.nodes))]
    plan = build_plan(profile, cluster, pm, placement, "ping-pong", "latency")
    transfers = {t.id: t for t in plan.tasks if t.kind == "transfer"}
    computes = {t.id: t for t in plan.tasks if t.kind == "compute"}
    producer = {t.id: t.after[0] for t in transfers.values() if t.after}  # transfer -> compute before it
    consumer = {c.after[0]: c.id for c in computes.values() if c.after and c.after[0] in transfers}

    local = build_plan(profile, cluster, pm, [(pm.source, list(range(len(profile.nodes))))], "local", "latency")
    frame_s, timeline = {}, {}
    for which in (plan, local):
        with Session(cluster, which, graph, weights) as session:
            for _ in range(5):  # warm-up
                session.infer(x)
            session.collect_events()
            first = session.next_request
            for _ in range(args.frames):
                session.infer(x)
            timeline[which.strategy] = session.collect_events()
            lat = session.latencies()
            frame_s[which.strategy] = statistics.median(lat[r] for r in range(first, session.next_request))
    events = timeline["ping-pong"]
    start = {(e["request"], e["task"]): e["start"] for e in events}
    end = {(e["request"], e["task"]): e["end"] for e in events}
    requests = sorted({e["request"] for e in events})
    gaps = [
        start[r, consumer[x_id]] - end[r, producer[x_id]]
        for r in requests
        for x_id in consumer
        if (r, consumer[x_id]) in start and (r, producer[x_id]) in end
    ]
    result = {
        "messages": len(gaps),
        "bytes_per_message": int(x.numel() * x.element_size()),
        "per_message_s_median": statistics.median(gaps),
        "per_message_s_p10": statistics.quantiles(gaps, n=10)[0],
        "per_message_s_p90": statistics.quantiles(gaps, n=10)[-1],
        "per_message_s_from_frames": (frame_s["ping-pong"] - frame_s["local"]) / len(transfers),
        "frame_latency_s": frame_s,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"per-message cost, end to end on loopback: median {result['per_message_s_median'] * 1e3:.3f} ms "
        f"(p10 {result['per_message_s_p10'] * 1e3:.3f}, p90 {result['per_message_s_p90'] * 1e3:.3f}) "
        f"over {len(gaps)} messages of {result['bytes_per_message']} B; from whole frames "
        f"{result['per_message_s_from_frames'] * 1e3:.3f} ms"
    )


if __name__ == "__main__":
    main()
