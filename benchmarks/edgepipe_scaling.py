"""Reproduce EdgePipe/PipeEdge on paper: throughput speedup of ViT-Large and ViT-Huge on 1..16 boards.

Times come from a profile measured here (benchmarks/profiles/*.json, batch 1, 1 thread), scaled to
EdgePipe's microbatch of 8 (times, activations and the input x 8; parameters unchanged). The
edgepipe-16 cluster's speeds are derived from the same ViT-Large profile and the published
single-device times (44.52 s MinnowBoard, 35.84 s RCC-VE), so one device here takes what the
paper's board took. Each plan is simulated; speedup = simulated throughput / one device's.

Also the heterogeneous comparison: the exact planner vs pipedream (assumes identical devices)
vs even (equal node counts) on a mixed cluster.

Usage: python benchmarks/edgepipe_scaling.py [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgeweave.cost.cluster import Cluster  # noqa: E402
from edgeweave.cost.profile import Profile  # noqa: E402
from edgeweave.errors import UserError  # noqa: E402
from edgeweave.plan.strategies import make_plan  # noqa: E402
from edgeweave.sim.simulator import simulate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = {"vit_l_16": 10.59, "vit_h_14": 11.88}
MICROBATCH = 8
# Device sets for each size: half of each board kind, the source (rcc-1) always included.
SUBSETS = {
    1: ["rcc-1"],
    2: ["rcc-1", "rcc-2"],
    4: ["rcc-1", "rcc-2", "minnow-1", "minnow-2"],
    8: [f"rcc-{i}" for i in range(1, 5)] + [f"minnow-{i}" for i in range(1, 5)],
    16: [f"rcc-{i}" for i in range(1, 9)] + [f"minnow-{i}" for i in range(1, 9)],
}
MIXED = {
    "source": "jetson-1",
    "devices": {
        "jetson-1": {"speed": 0.35, "memory": "8GiB"},
        "jetson-2": {"speed": 0.35, "memory": "8GiB"},
        "minnow-1": {"speed": 0.344, "memory": "2GiB"},
        "minnow-2": {"speed": 0.344, "memory": "2GiB"},
        "minnow-3": {"speed": 0.344, "memory": "2GiB"},
        "minnow-4": {"speed": 0.344, "memory": "2GiB"},
        "desktop": {"speed": 1.5, "memory": "16GiB"},
        "laptop": {"speed": 0.6, "memory": "8GiB"},
    },
    "links": {"default": {"bandwidth": "1Gbps", "latency": "0.1ms"}},
}


def scaled(profile: Profile, factor: int) -> Profile:
    """The profile of a microbatch of `factor` inputs: compute and activations grow, weights do not."""
    data = profile.model_dump()
    data["input_bytes"] *= factor
    for node in data["nodes"]:
        node["time_s"] *= factor
        node["out_bytes"] *= factor
    return Profile.model_validate(data)


def run_plan(profile: Profile, cluster: Cluster, strategy: str) -> dict:
    plan = make_plan(profile, cluster, strategy, "throughput")
    sim = simulate(plan, requests=60)
    return {
        "strategy": strategy,
        "stages": len(plan.stages or []),
        "sim_throughput_per_s": sim.throughput_per_s,
        "model_bottleneck_s": plan.cost_model["bottleneck_s"],
        "fits": plan.cost_model["fits"],
    }


def scaling(model: str, profile: Profile, cluster: Cluster) -> list[dict]:
    rows = []
    for n, names in SUBSETS.items():
        row = {"model": model, "devices": n, **run_plan(profile, cluster.subset(names, source="rcc-1"), "pipeline")}
        rows.append(row)
    base = rows[0]["sim_throughput_per_s"]
    for row in rows:
        row["speedup"] = row["sim_throughput_per_s"] / base
    return rows


def heterogeneous(model: str, profile: Profile) -> list[dict]:
    cluster = Cluster.from_dict(MIXED, origin="<mixed cluster>")
    rows = []
    for strategy in ("pipeline", "pipedream", "even"):
        try:
            rows.append({"model": model, **run_plan(profile, cluster, strategy)})
        except UserError as exc:
            rows.append({"model": model, "strategy": strategy, "error": str(exc)})
    best = rows[0]["sim_throughput_per_s"]
    for row in rows:
        if "sim_throughput_per_s" in row:
            row["pipeline_advantage"] = best / row["sim_throughput_per_s"]
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = sorted(SUBSETS)
    ax.plot(ns, ns, "k--", lw=1, label="linear limit (16x at 16)")
    for model, colour in (("vit_l_16", "tab:blue"), ("vit_h_14", "tab:red")):
        pts = [r for r in rows if r["model"] == model]
        if not pts:
            continue
        ax.plot(
            [r["devices"] for r in pts], [r["speedup"] for r in pts], "o-", color=colour, label=f"edgeweave {model}"
        )
        ax.plot(
            [16], [PUBLISHED[model]], "*", ms=14, color=colour, label=f"EdgePipe published {model}: {PUBLISHED[model]}x"
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("devices (edgepipe-16 testbed model, 1 Gbps)")
    ax.set_ylabel("throughput speedup vs one device")
    ax.set_title("Pipeline throughput scaling, microbatch 8 (simulated)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "edgepipe")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cluster = Cluster.load(ROOT / "examples/clusters/edgepipe-16.yaml")
    rows, hetero = [], []
    for model in PUBLISHED:
        path = ROOT / "benchmarks" / "profiles" / f"{model}.json"
        if not path.exists():
            raise SystemExit(f"missing {path}: run `edgeweave profile {model} --out {path}` first")
        profile = scaled(Profile.load(path), MICROBATCH)
        rows += scaling(model, profile, cluster)
        hetero += heterogeneous(model, profile)
    plot(rows, args.out / "edgepipe_scaling.png")
    (args.out / "edgepipe_scaling.json").write_text(json.dumps({"scaling": rows, "heterogeneous": hetero}, indent=1))
    if args.json:
        print(json.dumps({"scaling": rows, "heterogeneous": hetero}, indent=1))
        return
    print(
        f"{'model':<10} {'devices':>7} {'stages':>6} {'throughput/s':>13} {'speedup':>8}"
        "  (EdgePipe at 16: L 10.59x, H 11.88x)"
    )
    for r in rows:
        print(
            f"{r['model']:<10} {r['devices']:>7} {r['stages']:>6} "
            f"{r['sim_throughput_per_s']:>13.4f} {r['speedup']:>7.2f}x"
        )
    print("\nheterogeneous cluster (8 devices: desktop, laptop, 2 jetsons, 4 minnowboards):")
    for r in hetero:
        if "error" in r:
            print(f"{r['model']:<10} {r['strategy']:<10} {r['error']}")
        else:
            print(
                f"{r['model']:<10} {r['strategy']:<10} throughput {r['sim_throughput_per_s']:.4f}/s  "
                f"fits={r['fits']}  pipeline is {r['pipeline_advantage']:.2f}x this"
            )
    print(f"\nwritten: {args.out / 'edgepipe_scaling.png'}")


if __name__ == "__main__":
    main()
