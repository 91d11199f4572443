"""How long the exact pipeline planner takes, on the instances EdgePipe's DP is slow on.

EdgePipe reports over 120 s for 16 distinct devices and 96 layers. Cases here:
  * 16 distinct devices (all speeds and memories differ) x ~100 candidate cuts, one switch (uniform links);
  * the same 16 devices grouped into 2 types (device-type grouping);
  * pairwise (asymmetric, all different) links with growing device counts: the general path;
  * the real ViT-Huge profile (~800 cuts) on edgepipe-16 when benchmarks/profiles/vit_h_14.json exists.
Usage: python benchmarks/planner_timing.py [--json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edgeweave.plan.costmodel import PipelineModel
from edgeweave.plan.pipeline import plan_pipeline

ROOT = Path(__file__).resolve().parent.parent


def synthetic(n_devices: int, n_nodes: int, links: str, kinds: int | None = None, seed: int = 0) -> PipelineModel:
    rng = np.random.default_rng(seed)
    if kinds:
        base_speed, base_mem = rng.uniform(0.2, 1.0, kinds), rng.integers(1, 8, kinds) * 2**30
        which = np.arange(n_devices) % kinds
        speed, memory = base_speed[which], base_mem[which]
    else:
        speed, memory = rng.uniform(0.2, 1.0, n_devices), rng.integers(1, 8, n_devices) * 2**30
    bw = np.full((n_devices, n_devices), 125e6)
    if links == "pairwise":
        bw = rng.uniform(12.5e6, 125e6, (n_devices, n_devices))
    lat = np.full((n_devices, n_devices), 1e-4)
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


def timed(name: str, pm: PipelineModel, objective: str = "throughput") -> dict:
    start = time.perf_counter()
    sol = plan_pipeline(pm, objective)
    elapsed = time.perf_counter() - start
    return {
        "case": name,
        "devices": pm.num_devices,
        "cuts": pm.num_nodes - 1,
        "objective": objective,
        "time_s": round(elapsed, 3),
        "stages": len(sol.stages),
        "bottleneck_s": sol.costs.bottleneck_s,
        "classes": sol.stats.get("classes"),
        "uniform_links": sol.stats.get("uniform_links"),
    }


def main() -> None:
    rows = [
        timed("16 distinct devices, uniform links", synthetic(16, 100, "uniform")),
        timed("16 distinct devices, uniform links", synthetic(16, 100, "uniform"), "latency"),
        timed("16 devices of 2 types (grouped)", synthetic(16, 100, "uniform", kinds=2)),
        timed("64 devices of 4 types (grouped)", synthetic(64, 100, "uniform", kinds=4)),
    ]
    for n in (4, 6, 8, 10):
        rows.append(timed(f"{n} distinct devices, pairwise links", synthetic(n, 100, "pairwise")))
    vit_h = ROOT / "benchmarks" / "profiles" / "vit_h_14.json"
    if vit_h.exists():
        from edgeweave.cost.cluster import Cluster
        from edgeweave.cost.profile import Profile

        pm = PipelineModel.build(Profile.load(vit_h), Cluster.load(ROOT / "examples/clusters/edgepipe-16.yaml"))
        rows.append(timed("vit_h_14 profile on edgepipe-16", pm))
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print(
            f"{r['case']:<42} {r['objective']:<10} devices={r['devices']:<3} cuts={r['cuts']:<4} "
            f"classes={r['classes']:<3} time={r['time_s']:>7.3f} s  stages={r['stages']}"
        )


if __name__ == "__main__":
    main()
