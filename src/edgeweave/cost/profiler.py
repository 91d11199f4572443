"""Measure every node's time on this device.

Each repeat runs the whole graph in order and times every node inside that pass, so caches and
allocator state resemble a real forward; the median over repeats is robust to the odd hiccup.
The model's own forward time is measured beside it, so a user sees how faithful the sum is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from edgeweave.cost.profile import Profile
from edgeweave.cost.region_overhead import measure_region_costs
from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.opgraph import INPUT, OpGraph

Progress = Callable[[int, int], None]


@contextmanager
def torch_threads(n: int):
    """Run with n intra-op threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _timed_pass(runner: GraphRunner, graph: OpGraph, x: torch.Tensor) -> list[float]:
    env = {INPUT: x}
    times = []
    clock = time.perf_counter
    for i, node in enumerate(graph.nodes):
        fn = runner.compiled[i]
        start = clock()
        env[node.name] = fn(env)
        times.append(clock() - start)
        for ref in node.inputs:
            if runner.last_use.get(ref, -1) <= i:
                env.pop(ref, None)
    return times


@torch.no_grad()
def time_forward(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time of `forward(x)`."""
    for _ in range(warmup):
        forward(x)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(x)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def profile_graph(
    graph: OpGraph,
    weights: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    module: torch.nn.Module | None = None,
    warmup: int = 2,
    repeats: int = 5,
    threads: int = 1,
    progress: Progress | None = None,
) -> Profile:
    """Profile `graph` on input `x`; with `module`, also time the model's own forward."""
    runner = GraphRunner(graph, weights)
    total_steps = warmup + repeats + (warmup + repeats if module is not None else 0)
    step = 0
    samples: list[list[float]] = []
    with torch_threads(threads):
        for r in range(warmup + repeats):
            times = _timed_pass(runner, graph, x)
            if r >= warmup:
                samples.append(times)
            step += 1
            if progress:
                progress(step, total_steps)
        forward_time = None
        if module is not None:
            module.eval()
            forward_time = time_forward(module, x, warmup, repeats)
            if progress:
                progress(total_steps, total_steps)
    medians = [statistics.median(col) for col in zip(*samples, strict=True)]
    with torch_threads(threads):
        region_costs = measure_region_costs(graph, weights, x, medians)
    nodes = [
        {
            "name": n.name,
            "time_s": t,
            "out_bytes": n.out_bytes,
            "param_bytes": n.param_bytes,
            "inputs": n.inputs,
            "op": n.op,
            "flops": n.flops,
            "out_shape": n.out_shape,
            "out_dtype": n.out_dtype,
            "module": n.module,
        }
        for n, t in zip(graph.nodes, medians, strict=True)
    ]
    return Profile.model_validate(
        {
            "model": graph.model,
            "input_bytes": graph.input_bytes,
            "input_shape": graph.input_shape,
            "input_dtype": graph.input_dtype,
            "threads": threads,
            "warmup": warmup,
            "repeats": repeats,
            "forward_time_s": forward_time,
            "region_costs": region_costs,
            "reference_device": reference_device(threads),
            "nodes": nodes,
        }
    )


def reference_device(threads: int) -> dict[str, Any]:
    """What the profile's times were measured on, so a reader knows what speed 1.0 means, and
    when and under what load (a profile taken on a busy host plans differently: cost/store.py warns)."""
    import datetime
    import os
    import platform

    return {
        "host": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor() or "",
        "torch": torch.__version__,
        "threads": threads,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
    }
