"""How long the exact pipeline planner takes, on the instances EdgePipe's DP is slow on.

EdgePipe reports over 120 s for 16 distinct devices and 96 layers; PipeEdge's C++ scheduler took
11.5 s with per-pair links. The targets of issue 14, each with every pair's link different
(`pairwise`: asymmetric, drawn per ordered pair):
  * 16 distinct devices (all speeds and memories differ) x 100 cuts: < 1 s
  * 24 distinct devices x 100 cuts: < 10 s
  * 64 devices of 8 kinds x 100 cuts: < 2 s
Also reported: the same with links slow enough to bind (the bottleneck is a link at some cuts),
the latency objective, uniform links, and the real ViT-Huge profile (~800 cuts) on edgepipe-16
when benchmarks/profiles/vit_h_14.json exists.

Times are medians of --runs runs in one process (the first call also loads numba's compiled
kernels from its disk cache, or compiles them once per checkout: reported as `first_s`). The
machine these were measured on is shared: run-to-run spread is large, so compare medians.
Usage: python benchmarks/planner_timing.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.pipeline import plan_pipeline

ROOT = Path(__file__).resolve().parent.parent


def synthetic(
    n_devices: int, n_nodes: int, links: str, kinds: int | None = None, seed: int = 0, link_scale: float = 1.0
) -> PipelineModel:
    """Random speeds (0.2-1.0) and memories (1-7 GiB), per device or per kind; node times 10-100 ms.

    links: "uniform" (one 1 Gbps switch) or "pairwise" (every ordered pair its own 100-1000 Mbps,
    times `link_scale`: 0.02 makes links bind at many cuts)."""
    rng = np.random.default_rng(seed)
    if kinds:
        base_speed, base_mem = rng.uniform(0.2, 1.0, kinds), rng.integers(1, 8, kinds) * 2**30
        which = np.arange(n_devices) % kinds
        speed, memory = base_speed[which], base_mem[which]
    else:
        speed, memory = rng.uniform(0.2, 1.0, n_devices), rng.integers(1, 8, n_devices) * 2**30
    bw = np.full((n_devices, n_devices), 125e6)
    if links == "pairwise":
        bw = rng.uniform(12.5e6, 125e6, (n_devices, n_devices)) * link_scale
    lat = np.full((n_devices, n_devices), 1e-4)
    if links == "pairwise":
        lat = rng.uniform(1e-4, 5e-3, (n_devices, n_devices))
    np.fill_diagonal(bw, np.inf)
    np.fill_diagonal(lat, 0.0)
    return PipelineModel(
        model="synthetic",
        times=rng.uniform(0.01, 0.1, n_nodes),
        params=rng.integers(1, 60, n_nodes) * 2**20,
        out_bytes=rng.integers(10**5, 10**6, n_nodes),
        cut_bytes=rng.integers(10**5, 10**6, n_nodes + 1),
        devices=[f"d{i}" for i in range(n_devices)],
        speed=speed,
        memory=memory,
        source=0,
        bandwidth=bw,
        latency=lat,
    )


def timed(name: str, pm: PipelineModel, objective: str = "throughput", runs: int = 3, target: float | None = None):
    times, sol = [], None
    for _ in range(runs):
        start = time.perf_counter()
        sol = plan_pipeline(pm, objective)
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:] if runs > 1 else times)
    return {
        "case": name,
        "devices": pm.num_devices,
        "cuts": pm.num_nodes - 1,
        "objective": objective,
        "median_s": round(median, 3),
        "first_s": round(times[0], 3),
        "runs": runs,
        "target_s": target,
        "met": None if target is None else median < target,
        "stages": len(sol.stages),
        "value_s": sol.costs.bottleneck_s if objective == "throughput" else sol.costs.latency_s,
        "optimal": sol.stats.get("optimal"),
        "gap": sol.stats.get("gap"),
        "stopped": sol.stats.get("stopped"),
        "exact_tests": sol.stats.get("tests"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per case; the median excludes the first")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = args.runs
    targets = [
        ("16 distinct devices, pairwise links", synthetic(16, 101, "pairwise"), 1.0),
        ("24 distinct devices, pairwise links", synthetic(24, 101, "pairwise"), 10.0),
        ("64 devices of 8 kinds, pairwise links", synthetic(64, 101, "pairwise", kinds=8), 2.0),
    ]
    rows = [timed(name, pm, runs=r, target=t) for name, pm, t in targets]
    rows += [timed(name, pm, "latency", runs=r) for name, pm, _ in targets]
    for n, kinds in ((16, None), (24, None), (64, 8)):
        pm = synthetic(n, 101, "pairwise", kinds=kinds, link_scale=0.02)
        label = f"{n} distinct devices" if kinds is None else f"{n} devices of {kinds} kinds"
        rows.append(timed(f"{label}, pairwise links that bind", pm, runs=r))
    rows += [
        timed("16 distinct devices, uniform links", synthetic(16, 101, "uniform"), runs=r),
        timed("16 devices of 2 types, uniform links", synthetic(16, 101, "uniform", kinds=2), runs=r),
        timed("64 devices of 4 types, uniform links", synthetic(64, 101, "uniform", kinds=4), runs=r),
    ]
    vit_h = ROOT / "benchmarks" / "profiles" / "vit_h_14.json"
    if vit_h.exists():
        from edgeweave.cost.cluster import Cluster
        from edgeweave.cost.profile import Profile

        pm = PipelineModel.build(Profile.load(vit_h), Cluster.load(ROOT / "examples/clusters/edgepipe-16.yaml"))
        rows.append(timed("vit_h_14 profile on edgepipe-16", pm, runs=r))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        target = "" if row["target_s"] is None else f" target<{row['target_s']:g}s {'met' if row['met'] else 'MISSED'}"
        print(
            f"{row['case']:<48} {row['objective']:<10} cuts={row['cuts']:<4} median={row['median_s']:>7.3f} s "
            f"first={row['first_s']:>7.3f} s stages={row['stages']:<3} optimal={row['optimal']}{target}"
            + ("" if row["optimal"] else f" gap={row['gap']:.1%} ({row['stopped']})")
        )


if __name__ == "__main__":
    main()
