"""The compiled band engine against unsplit execution of the same nodes, one process, one thread.

For each model, the longest local segment (the backbone) is computed (a) unsplit by the graph
executor the runtime uses for layer-wise stages, and (b) as one device's whole band by a
`BandProgram` fed by input chunks, 1 and 8 of them (and optionally by the interpreted
`run_bands` wavefront it replaces). Runs alternate (A B A B ...) so machine noise hits all alike;
the table reports medians and the ratio to unsplit.

    python benchmarks/band_engine.py [--models resnet18,mobilenet_v2] [--repeats 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from edgeweave.graph.band_program import BandProgram, step_geometry
from edgeweave.graph.capture import capture
from edgeweave.graph.execute import GraphRunner
from edgeweave.graph.regions import chunk_bands, local_runs, make_segment, run_bands
from edgeweave.zoo import load_model

TARGETS = {("resnet18", 1): 1.05, ("resnet18", 8): 1.35, ("mobilenet_v2", 8): 1.4}


def backbone(graph, axis: str = "rows"):
    """The longest valid local segment (shortened from its end until it is one)."""
    first, last = max(local_runs(graph, axis), key=lambda r: r[1] - r[0])
    while last > first:
        seg = make_segment(graph, first, last, axis)
        if seg is not None:
            return seg
        last -= 1
    raise SystemExit(f"{graph.model} has no local segment")


def program_runner(seg, weights, env, chunks: int, channels_last: bool) -> Callable[[], None]:
    own = {v: (0, seg.extent(v)) for v in seg.outputs}
    geo = step_geometry(seg, own, chunks)
    prog = BandProgram(seg, weights, geo, channels_last=channels_last)

    def run() -> None:
        for j in range(geo.steps):
            for v, (a, b) in geo.received[j].items():
                prog.feed(v, env[v].narrow(prog.buffers[v].axis, a, b - a), a)
            prog.step(j)

    return run


def interpreted_runner(seg, weights, env, chunks: int) -> Callable[[], None]:
    own = {v: (0, seg.extent(v)) for v in seg.outputs}
    whole = {v: env[v] for v in seg.inputs}

    def run() -> None:
        wavefront: dict = {}
        with torch.no_grad():
            for sub in chunk_bands(own, chunks):
                run_bands(seg, weights, whole, sub, wavefront)

    return run


def measure(model: str, repeats: int, interpreted: bool) -> list[dict]:
    spec = load_model(model)
    graph, weights = capture(spec.module, spec.example_input, model)
    seg = backbone(graph)
    runner = GraphRunner(graph, weights)
    env = runner.run_nodes(range(seg.first), {"input": spec.example_input}, keep=set(seg.inputs) | {"input"})
    nodes = list(seg.nodes)

    def unsplit() -> None:
        runner.run_nodes(nodes, dict(env), keep=set(seg.outputs))

    variants: dict[str, Callable[[], None]] = {"unsplit": unsplit}
    for chunks in (1, 8):
        variants[f"engine x{chunks}"] = program_runner(seg, weights, env, chunks, True)
        variants[f"engine nchw x{chunks}"] = program_runner(seg, weights, env, chunks, False)
        if interpreted:
            variants[f"run_bands x{chunks}"] = interpreted_runner(seg, weights, env, chunks)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["unsplit"])
    rows = []
    for name, samples in times.items():
        med = statistics.median(samples)
        chunks = int(name.rsplit("x", 1)[1]) if "x" in name else 0
        target = TARGETS.get((model, chunks)) if name.startswith("engine x") else None
        rows.append(
            {
                "model": model,
                "segment": [seg.first, seg.last],
                "variant": name,
                "median_ms": round(1e3 * med, 2),
                "ratio": round(med / base, 3),
                "target": target,
                "met": None if target is None else med / base <= target,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,resnet50")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--interpreted", action="store_true", help="also time the interpreted run_bands wavefront")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for m in args.models.split(",") for r in measure(m, args.repeats, args.interpreted)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'model':14} {'nodes':9} {'variant':18} {'median ms':>10} {'ratio':>7} {'target':>7}")
    for r in rows:
        target = "" if r["target"] is None else f"<={r['target']}" + (" ok" if r["met"] else " MISS")
        seg = f"{r['segment'][0]}-{r['segment'][1]}"
        print(f"{r['model']:14} {seg:9} {r['variant']:18} {r['median_ms']:10.2f} {r['ratio']:7.3f} {target:>7}")


if __name__ == "__main__":
    main()
