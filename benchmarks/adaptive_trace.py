"""Adaptive re-planning vs fixed plans on a bandwidth trace: 100 -> 10 -> 100 Mbps.

A robot (speed 0.25) and a server (1.0) run a hybrid (band-split) plan of a CNN on camera
frames (float32 by default; `--input uint8-image` sends 4x fewer bytes). The robot-server
link follows a trace with steps 100 -> 10 -> 100 Mbps (`--segment` seconds each), emulated by
the senders' link shapers from the same epoch in every run. Three runs on the same trace, in one process:

  adaptive   starts with the plan for 100 Mbps and re-plans on the bandwidth it measures
             (receiver-side transfer times, EWMA, hysteresis band [0.5x, 2x])
  fixed-100  the plan for 100 Mbps throughout
  fixed-10   the plan for 10 Mbps throughout

Frames come from a camera at `--fps` for the whole trace (open loop, the same frames at the
same times in every run); a frame's latency counts from its release, so a plan that cannot
keep up with the camera on a slow link pays for the queue it builds. The figure of merit is
the mean latency over all frames. Every 5th output is checked against single-device execution.
The adaptive run's plan cache is filled beforehand for the link scaled by 2, sqrt(2), 1, ...,
1/16 (planning a hybrid plan takes seconds; switching to a cached one costs a redeployment).

Usage: python benchmarks/adaptive_trace.py [--model mobilenet_v2] [--segment 8] [--fps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profiler import profile_graph
from edgeweave.graph import GraphRunner, capture
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.estimator import PlanCache
from edgeweave.runtime.measure import make_inputs
from edgeweave.runtime.resilient import ResilienceOptions, ResilientSession, plan_maker, prewarm
from edgeweave.runtime.session import SessionOptions
from edgeweave.zoo import load_model


def cluster_yaml(folder: Path, segment_s: float, high: float, low: float) -> Path:
    trace = folder / "wifi.csv"
    trace.write_text(f"time_s,mbps\n0,{high:g}\n{segment_s:g},{low:g}\n{2 * segment_s:g},{high:g}\n")
    path = folder / "robot-server.yaml"
    path.write_text(
        "source: robot\n"
        "devices:\n"
        "  robot: {speed: 0.25, memory: 4GiB}\n"
        "  server: {speed: 1.0, memory: 16GiB}\n"
        "links:\n"
        f"  robot-server: {{bandwidth: {high:g}Mbps, latency: 2ms, trace: wifi.csv}}\n"
    )
    return path


def at_rate(cluster: Cluster, mbps: float) -> Cluster:
    """The cluster as a planner would see it at `mbps` (no trace)."""
    data = cluster.to_dict()
    data["links"] = {"robot-server": {"bandwidth": f"{mbps:g}Mbps", "latency": "2ms"}}
    return Cluster.from_dict(data)


def stream(rs: ResilientSession, frames, duration_s: float, fps: float, check: GraphRunner) -> dict:
    """`duration_s * fps` frames released at `fps` from the trace's start."""
    count = int(duration_s * fps)
    inputs = [frames[k % len(frames)] for k in range(count)]
    wait = rs.session.epoch - time.monotonic()  # start the camera with the trace
    if wait > 0:
        time.sleep(wait)
    offset = time.monotonic() - rs.session.epoch
    outputs = rs.infer_many(inputs, rate_per_s=fps)
    errors = max(float((outputs[k] - check.run(inputs[k])).abs().max()) for k in range(0, count, 5))
    return {
        "latencies": list(rs.release_latencies),
        "at": [offset + k / fps for k in range(count)],
        "max_abs_err": errors,
    }


def run_mode(mode, cluster, plans, replan, graph, weights, frames, duration_s, fps, check, cache) -> dict:
    adapt = mode == "adaptive"
    plan = plans["100" if mode in ("adaptive", "fixed-100") else "10"]
    opts = ResilienceOptions(adapt=adapt)
    kwargs = {"cache": cache} if adapt else {}
    with ResilientSession(cluster, plan, graph, weights, replan, SessionOptions(), opts, **kwargs) as rs:
        out = stream(rs, frames, duration_s, fps, check)
        report = rs.report()
    lat = out["latencies"]
    q = statistics.quantiles(lat, n=20)
    return {
        "mode": mode,
        "frames": len(lat),
        "mean_latency_s": statistics.fmean(lat),
        "p50_latency_s": statistics.median(lat),
        "p95_latency_s": q[18],
        "max_abs_err": out["max_abs_err"],
        "replans": [
            {"reason": r["reason"], "switch_s": r["switch_s"], "conditions_mbps": r["conditions_mbps"]}
            for r in report["replans"]
        ],
        "replan_at_s": [round(m, 2) for m in _replan_times(rs, report)],
        "estimates": report["estimates"],
        "per_segment_mean_s": _segments(out["at"], lat, duration_s / 3),
    }


def _combine(trials: list[dict]) -> dict:
    """One row per mode: means over the repeats (each repeat's own numbers kept in `trials`)."""
    if len(trials) == 1:
        return trials[0]
    out = dict(trials[-1])
    for key in ("mean_latency_s", "p50_latency_s", "p95_latency_s"):
        out[key] = statistics.fmean(t[key] for t in trials)
    out["frames"] = sum(t["frames"] for t in trials)
    out["max_abs_err"] = max(t["max_abs_err"] for t in trials)
    segs = zip(*(t["per_segment_mean_s"] for t in trials), strict=True)
    out["per_segment_mean_s"] = [statistics.fmean(v for v in seg if v is not None) for seg in segs]
    out["trials"] = [{k: t[k] for k in ("mean_latency_s", "per_segment_mean_s", "replan_at_s")} for t in trials]
    return out


def _replan_times(rs: ResilientSession, report: dict) -> list[float]:
    epoch_wall = time.time() - (time.monotonic() - rs.session.epoch)
    return [r["at"] - epoch_wall for r in rs.replans]


def _segments(at: list[float], lat: list[float], seg: float) -> list[float | None]:
    out = []
    for s in range(3):
        vals = [v for t, v in zip(at, lat, strict=True) if s * seg <= t < (s + 1) * seg]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--segment", type=float, default=8.0, help="seconds per trace step")
    ap.add_argument("--fps", type=float, default=8.0, help="camera frames per second")
    ap.add_argument("--high", type=float, default=100.0)
    ap.add_argument("--low", type=float, default=10.0)
    ap.add_argument("--strategy", default="hybrid")
    ap.add_argument("--input", default="float", help="float frames, or uint8-image (4x smaller)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each mode, interleaved")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_model(args.model, input_kind=args.input)
    graph, weights = capture(spec.module, spec.example_input, spec.name)
    profile = profile_graph(graph, weights, spec.example_input, warmup=1, repeats=3)

    def replan(c: Cluster):
        return make_plan(profile, c, args.strategy, "latency", graph)

    folder = Path(tempfile.mkdtemp(prefix="edgeweave-trace-"))
    cluster = Cluster.load(cluster_yaml(folder, args.segment, args.high, args.low))
    plans = {"100": replan(at_rate(cluster, args.high)), "10": replan(at_rate(cluster, args.low))}
    cache = PlanCache(plan_maker(cluster, replan))
    started = time.perf_counter()
    prewarm(cache, cluster, [2 ** (-k / 2) for k in range(-2, 9)])  # 2x down to 1/16 of the nominal
    prewarm_s = time.perf_counter() - started
    frames = make_inputs(graph, 8, seed=0)
    check = GraphRunner(graph, weights)
    duration = 3 * args.segment
    modes = ("adaptive", "fixed-100", "fixed-10")
    trials = [  # interleaved, so that load from elsewhere on the host falls on every mode alike
        run_mode(m, cluster, plans, replan, graph, weights, frames, duration, args.fps, check, cache)
        for _ in range(args.repeats)
        for m in modes
    ]
    runs = [_combine([t for t in trials if t["mode"] == m]) for m in modes]
    result = {
        "model": args.model,
        "input": args.input,
        "strategy": args.strategy,
        "trace_mbps": [args.high, args.low, args.high],
        "segment_s": args.segment,
        "fps": args.fps,
        "repeats": args.repeats,
        "prewarm_s": prewarm_s,
        "runs": runs,
        "adaptive_beats_all_fixed": all(runs[0]["mean_latency_s"] < r["mean_latency_s"] for r in runs[1:]),
    }
    print(f"{'mode':<10} {'frames':>6} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7}  per segment (ms)   replans")
    for r in runs:
        seg = " ".join(f"{v * 1e3:5.0f}" if v else "    -" for v in r["per_segment_mean_s"])
        print(
            f"{r['mode']:<10} {r['frames']:>6} {r['mean_latency_s'] * 1e3:8.1f} {r['p50_latency_s'] * 1e3:7.1f} "
            f"{r['p95_latency_s'] * 1e3:7.1f}  {seg}   {len(r['replans'])} at {r['replan_at_s']}"
        )
    print(f"adaptive beats every fixed plan: {result['adaptive_beats_all_fixed']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
