"""Capture and profile every zoo model: capture time, exactness, node count and profile-sum / forward ratio.

The profile's sum of node times should be within 25% of the model's own forward time
(node-by-node execution adds per-op Python overhead; fused kernels are not used either way).
Usage: python benchmarks/capture_zoo.py [--models a,b] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from edgeweave.cost.profiler import profile_graph
from edgeweave.graph import GraphRunner, capture
from edgeweave.zoo import list_models, load_model


def measure(name: str, repeats: int) -> dict:
    spec = load_model(name)
    start = time.perf_counter()
    graph, weights = capture(spec.module, spec.example_input, spec.name)
    capture_s = time.perf_counter() - start
    with torch.no_grad():
        expected = spec.module(spec.example_input)
    err = float((GraphRunner(graph, weights).run(spec.example_input) - expected).abs().max())
    prof = profile_graph(graph, weights, spec.example_input, module=spec.module, warmup=1, repeats=repeats)
    fwd = prof.model_extra["forward_time_s"]
    return {
        "model": name,
        "nodes": len(graph),
        "capture_s": round(capture_s, 2),
        "max_abs_err": err,
        "sum_s": round(prof.total_time(), 4),
        "forward_s": round(fwd, 4),
        "ratio": round(prof.total_time() / fwd, 3),
        "gflops": round(graph.total_flops / 1e9, 2),
        "param_mib": round(graph.total_param_bytes / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m["name"] for m in list_models()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, args.repeats))
        if not args.json:
            r = rows[-1]
            print(
                f"{r['model']:<20} nodes={r['nodes']:<5} capture={r['capture_s']:>6.2f}s err={r['max_abs_err']:.1e} "
                f"sum={r['sum_s']:.4f}s forward={r['forward_s']:.4f}s ratio={r['ratio']:.3f} "
                f"GFLOPs={r['gflops']} params={r['param_mib']}MiB",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
