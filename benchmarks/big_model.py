"""Bigger than any device, for real (issue 14, item 4): ViT-Huge on local workers that the kernel
holds to less memory than the model needs, with a coordinator that never holds the model either.

Three processes' worth of roles:
  1. `prepare` (a child process; a workstation's job): builds the seeded model, streams its
     weights to a .safetensors checkpoint, and runs the single-device reference on the requests.
     It is the only process that ever holds the whole model.
  2. The coordinator (this process): captures the model on the meta device (no weights), plans it
     from a FLOP-estimated profile with each worker's memory, and ships each worker its stage
     read from the checkpoint, one stage at a time (`runtime.weights.WeightFile`).
  3. The workers: local processes, each under RLIMIT_DATA (`runtime.process.hold_memory`) set to
     an idle worker's data memory plus its stage's weights (received tensor by tensor while the
     deploy message's frames are released, so about once) plus a quarter of them and a margin
     (threads, activations): less than an idle worker plus the model's weights, so no single
     worker could hold the model.

Reported: exactness against the reference (bit-identical, and max abs error), each worker's peak
RSS (VmHWM) against the plan's memory figure for its stage (parameters + largest activation, the
planner's own `stage_memory`) and its OS limit, the coordinator's peak RSS against the model's
weight bytes and the largest stage, and (`--compare-whole`) the coordinator's peak RSS when it
loads and captures the model with its weights, as `edgeweave run` does.

Usage: python benchmarks/big_model.py [--model vit_h_14] [--workers 4] [--requests 3] [--json]
       [--compare-whole] [--out benchmarks/results]
Timings on this shared 2-core machine are noisy; memory figures are what this is for.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
FLOPS_PER_S = 20e9  # a profile's times only shape the cut; memory decides who can hold what
MARGIN = 64 * MiB  # per worker, on top of an idle worker's data memory and 1.25x its stage


def prepare(model: str, folder: Path, requests: int, overrides: dict[str, int]) -> dict[str, Any]:
    """In a child process: checkpoint, inputs and the single-device reference outputs."""
    import torch

    from edgeweave.runtime.weights import save_weights
    from edgeweave.zoo import load_model
    from edgeweave.zoo.models import example_input
    from edgeweave.zoo.streaming import write_checkpoint

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    spec = load_model(model, **overrides)
    weight_bytes = write_checkpoint(spec.module, folder / "model.safetensors")
    ref: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(requests):
            x = example_input(spec.input_shape, spec.input_dtype, seed=100 + i, value_range=spec.input_range)
            ref[f"x{i}"], ref[f"y{i}"] = x, spec.module(x)
    save_weights(ref, folder / "reference.safetensors")
    return {
        "weight_bytes": weight_bytes,
        "seconds": time.perf_counter() - t0,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def proc_memory(pid: int) -> dict[str, int]:
    """A process's peak RSS (VmHWM), RSS and data memory (VmData, what RLIMIT_DATA counts), bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "VmData"):
                fields[key] = int(value.split()[0]) * 1024
    return {"peak_rss": fields["VmHWM"], "rss": fields["VmRSS"], "data": fields["VmData"]}


def idle_worker() -> dict[str, int]:
    """Memory of a worker that is up and holds nothing: its data memory is the floor every limit adds to."""
    from edgeweave.runtime.process import launch_worker

    worker = launch_worker("idle", "tcp://127.0.0.1:*").wait_ready()
    try:
        time.sleep(0.5)
        return proc_memory(worker.proc.pid)
    finally:
        worker.stop()


def cluster_for(workers: int, plan_memory: int, source_memory: int) -> Any:
    from edgeweave.cost.cluster import Cluster

    # speed 1: every process computes at this machine's own pace (a slower speed would pad each
    # task to the profile's estimated time, which measures nothing here)
    devices = {"robot": {"speed": 1.0, "memory": f"{source_memory // MiB}MiB"}}
    devices.update({f"w{i}": {"speed": 1.0, "memory": f"{plan_memory // MiB}MiB"} for i in range(workers)})
    return Cluster.from_dict(
        {"source": "robot", "devices": devices, "links": {"default": {"bandwidth": "1Gbps", "latency": "1ms"}}}
    )


def stage_figures(graph: Any, plan: Any) -> dict[str, dict[str, int]]:
    """Per device: the plan's memory figure (parameters + largest activation of its nodes, the
    pipeline planner's `stage_memory`) and its parameter bytes."""
    out: dict[str, dict[str, int]] = {}
    for task in plan.tasks:
        if task.kind != "compute":
            continue
        nodes = [graph.nodes[i] for i in task.nodes]
        params = sum(n.param_bytes for n in nodes)
        out[task.device] = {"plan_memory": params + max(n.out_bytes for n in nodes), "param_bytes": params}
    return out


def run_held(
    model: str = "vit_h_14",
    workers: int = 4,
    requests: int = 3,
    overrides: dict[str, int] | None = None,
    margin: int = MARGIN,
    control: bool = True,
) -> dict[str, Any]:
    """The whole measurement; returns the report (see the module docstring). `control` also
    deploys the whole model on one worker under the largest of those limits, which must fail."""
    overrides = overrides or {}
    with tempfile.TemporaryDirectory(prefix="edgeweave-big-") as tmp:
        work = Path(tmp)
        prep = _child(["prepare", model, str(work), str(requests), json.dumps(overrides)])
        report = _coordinate(model, workers, requests, overrides, work, prep, margin)
        if control:
            limit = max(w["os_limit"] for w in report["per_worker"].values())
            report["control"] = _child(["control", model, str(work), str(limit), json.dumps(overrides)])
        return report


def one_worker_control(model: str, work: Path, limit: int, overrides: dict[str, int]) -> dict[str, Any]:
    """In a child process: the whole model planned onto one worker held to `limit`. Its deployment
    must fail (the kernel refuses the memory): the limits above are real, not decoration."""
    from edgeweave.errors import UserError
    from edgeweave.plan.strategies import make_plan
    from edgeweave.runtime.session import Session, SessionOptions
    from edgeweave.zoo.streaming import capture_without_weights, flops_profile, open_weights

    graph = capture_without_weights(model, **overrides)
    weights = open_weights(graph, work / "model.safetensors")
    model_bytes = sum(n.param_bytes for n in graph.nodes)
    cluster = cluster_for(1, 2 * model_bytes, 1 * MiB)
    plan = make_plan(flops_profile(graph, FLOPS_PER_S), cluster, "pipeline", "throughput", graph)
    try:
        with Session(cluster, plan, graph, weights, SessionOptions(memory_limits={"w0": limit})):
            return {"os_limit": limit, "deployed": True, "error": None}
    except UserError as exc:
        return {"os_limit": limit, "deployed": False, "error": str(exc)[:300]}


def _coordinate(
    model: str,
    workers: int,
    requests: int,
    overrides: dict[str, int],
    work: Path,
    prep: dict[str, Any],
    margin: int,
) -> dict[str, Any]:
    import torch

    from edgeweave.plan.strategies import make_plan
    from edgeweave.runtime.session import Session, SessionOptions
    from edgeweave.runtime.weights import WeightFile
    from edgeweave.zoo.streaming import capture_without_weights, flops_profile, open_weights

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    graph = capture_without_weights(model, **overrides)
    capture_s = time.perf_counter() - t0
    after_capture = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    weights = open_weights(graph, work / "model.safetensors")
    model_bytes = sum(n.param_bytes for n in graph.nodes)
    # Plan memory per worker: an even share of the weights plus room for the largest activation
    # and uneven layer boundaries. The source holds little (the patch embedding, say), so the
    # workers carry the model.
    share = model_bytes // workers
    plan_memory = share + share // 4 + max(n.out_bytes for n in graph.nodes)
    source_memory = 64 * MiB
    cluster = cluster_for(workers, plan_memory, source_memory)
    plan = make_plan(flops_profile(graph, FLOPS_PER_S), cluster, "pipeline", "throughput", graph)
    figures = stage_figures(graph, plan)
    idle_mem = idle_worker()
    idle = idle_mem["data"]
    limits = {dev: idle + fig["param_bytes"] * 5 // 4 + margin for dev, fig in figures.items() if dev != cluster.source}
    options = SessionOptions(memory_limits=limits, connect_timeout_s=30.0)
    t1 = time.perf_counter()
    with Session(cluster, plan, graph, weights, options) as session:
        deploy_s = time.perf_counter() - t1
        ref = WeightFile(work / "reference.safetensors")
        exact, max_err, latencies = True, 0.0, []
        for i in range(requests):
            x, want = ref[f"x{i}"], ref[f"y{i}"]
            t = time.perf_counter()
            got = session.infer(x)
            latencies.append(time.perf_counter() - t)
            exact = exact and torch.equal(got, want)
            max_err = max(max_err, float((got - want).abs().max()))
        measured = {dev: proc_memory(r.local.proc.pid) for dev, r in session.remotes.items() if r.local}
    coordinator_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    largest_stage = max(f["param_bytes"] for d, f in figures.items() if d != cluster.source)
    per_worker = {
        dev: {
            **figures[dev],
            "os_limit": limits[dev],
            "peak_rss": m["peak_rss"],
            "data_at_end": m["data"],
            "peak_over_plan": round(m["peak_rss"] / figures[dev]["plan_memory"], 2),
            "peak_above_idle_over_params": round((m["peak_rss"] - idle_mem["rss"]) / figures[dev]["param_bytes"], 2),
        }
        for dev, m in measured.items()
    }
    return {
        "model": model,
        "overrides": overrides,
        "model_weight_bytes": model_bytes,
        "workers": workers,
        "stages": [{"device": s.device, "nodes": [s.first, s.last]} for s in _stages(plan)],
        "idle_worker_data": idle,
        "idle_worker_rss": idle_mem["rss"],
        "no_worker_could_hold_the_model": all(lim < idle + model_bytes for lim in limits.values()),
        "per_worker": per_worker,
        "source": {"device": cluster.source, **figures.get(cluster.source, {"plan_memory": 0, "param_bytes": 0})},
        "coordinator": {
            "peak_rss": coordinator_peak,
            "peak_rss_after_capture": after_capture,
            "largest_stage_bytes": largest_stage,
        },
        "exact": exact,
        "max_abs_err": max_err,
        "requests": requests,
        "latency_s": sorted(latencies),
        "seconds": {"prepare": prep["seconds"], "capture": capture_s, "deploy": deploy_s},
        "prepare_peak_rss": prep["peak_rss"],
    }


def _stages(plan: Any) -> list[Any]:
    from types import SimpleNamespace

    out = []
    for task in plan.tasks:
        if task.kind == "compute":
            out.append(SimpleNamespace(device=task.device, first=min(task.nodes), last=max(task.nodes)))
    return out


def whole_coordinator(model: str, workers: int, overrides: dict[str, int]) -> dict[str, Any]:
    """In a child process: the coordinator as `edgeweave run` makes it (model built and captured
    with its weights, the weights dict handed to the session), deployed on the same kind of
    cluster without OS limits; its peak RSS is the 'before' figure."""
    import torch

    from edgeweave.plan.strategies import make_plan
    from edgeweave.runtime.session import Session, SessionOptions
    from edgeweave.zoo import capture_model, load_model
    from edgeweave.zoo.streaming import flops_profile

    torch.set_num_threads(1)
    spec = load_model(model, **overrides)
    graph, weights = capture_model(spec)
    model_bytes = sum(n.param_bytes for n in graph.nodes)
    share = model_bytes // workers
    cluster = cluster_for(workers, share + share // 4 + max(n.out_bytes for n in graph.nodes), 64 * MiB)
    plan = make_plan(flops_profile(graph, FLOPS_PER_S), cluster, "pipeline", "throughput", graph)
    with Session(cluster, plan, graph, weights, SessionOptions(connect_timeout_s=30.0)) as session:
        session.infer(spec.example_input)
        workers_peak = {d: proc_memory(r.local.proc.pid)["peak_rss"] for d, r in session.remotes.items() if r.local}
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "model_weight_bytes": model_bytes,
        "worker_peak_rss": workers_peak,
        "worker_param_bytes": {d: f["param_bytes"] for d, f in stage_figures(graph, plan).items()},
    }


def _print(report: dict[str, Any]) -> None:
    def mib(n: int) -> str:
        return f"{n / MiB:,.0f} MiB"

    print(f"{report['model']}: {mib(report['model_weight_bytes'])} of weights on {report['workers']} workers")
    print(f"exact: {report['exact']} (max abs err {report['max_abs_err']:.3g}) over {report['requests']} requests")
    print(f"idle worker: data memory {mib(report['idle_worker_data'])}, RSS {mib(report['idle_worker_rss'])}")
    for dev, w in report["per_worker"].items():
        print(
            f"  {dev}: plan figure {mib(w['plan_memory'])} (params {mib(w['param_bytes'])}), "
            f"OS limit {mib(w['os_limit'])}, peak RSS {mib(w['peak_rss'])}"
        )
    c = report["coordinator"]
    print(
        f"coordinator peak RSS {mib(c['peak_rss'])} (after capture {mib(c['peak_rss_after_capture'])}); "
        f"largest stage {mib(c['largest_stage_bytes'])}, source stage {mib(report['source']['param_bytes'])}"
    )
    if "control" in report:
        ctl = report["control"]
        print(
            f"control, whole model on one worker under {mib(ctl['os_limit'])}: "
            f"deployed={ctl['deployed']} {ctl['error']}"
        )
    if "whole_coordinator" in report:
        print(f"before (coordinator holds the model): peak RSS {mib(report['whole_coordinator']['peak_rss'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_h_14")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--num-layers", type=int, default=None, help="shrink the ViT (a quick check)")
    parser.add_argument("--compare-whole", action="store_true", help="also measure the coordinator holding the model")
    parser.add_argument("--out", type=Path, default=None, help="write big_model_<model>.json here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overrides = {"num_layers": args.num_layers} if args.num_layers else {}
    report = run_held(args.model, args.workers, args.requests, overrides)
    if args.compare_whole:
        report["whole_coordinator"] = _child(["whole", args.model, str(args.workers), json.dumps(overrides)])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"big_model_{args.model}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1)) if args.json else _print(report)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "prepare":
        print(json.dumps(prepare(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "control":
        print(json.dumps(one_worker_control(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "whole":
        print(json.dumps(whole_coordinator(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))))
    else:
        main()
