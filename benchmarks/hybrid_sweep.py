"""The hybrid sweep: p50 latency vs bandwidth for a robot (speed 0.25) and a server (speed 1.0).

Per model and bandwidth, every strategy is planned on the same profile; with --real each plan is
executed by the runtime on emulated devices and links (otherwise the simulator's latency of the
same plan is reported). The bound T* = 1 / (1/T_local + 1/T_offload) is drawn: no split of a
perfectly divisible, perfectly overlapped workload beats it.

Targets (issue 5): at the crossover bandwidth (local ~ offload) hybrid >= 30% faster than the best
other strategy; never > 3% slower than the best other; within 1.25x of T*.
Usage: python benchmarks/hybrid_sweep.py [--models a,b] [--bandwidths 10,25] [--real] [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgeweave.cli.common import ModelChoice  # noqa: E402
from edgeweave.cli.inputs import prepare  # noqa: E402
from edgeweave.cost.cluster import Cluster  # noqa: E402
from edgeweave.plan.strategies import make_plan  # noqa: E402
from edgeweave.sim.simulator import simulate  # noqa: E402

STRATEGIES = ["local", "offload", "neurosurgeon", "dads", "hybrid-grid", "hybrid"]


def cluster_at(mbps: float) -> Cluster:
    return Cluster.from_dict(
        {
            "source": "robot",
            "devices": {"robot": {"speed": 0.25, "memory": "4GiB"}, "server": {"speed": 1.0, "memory": "16GiB"}},
            "links": {"robot-server": {"bandwidth": f"{mbps}Mbps", "latency": "2ms"}},
        },
        origin=f"<robot-server {mbps} Mbps>",
    )


def measure(plan, cluster, graph, weights, real: bool, requests: int) -> float:
    if not real:
        return simulate(plan, requests=1).single_latency_s
    from edgeweave.runtime.measure import RunConfig, run_plan

    result = run_plan(plan, cluster, graph, weights, RunConfig(requests=requests, warmup=1, single=3))
    assert result["correct"], f"{plan.strategy} gave wrong outputs"
    return result["single_latency_s"]


def sweep(model: str, bandwidths: list[float], real: bool, requests: int, input_kind: str) -> list[dict]:
    _, graph, weights, profile = prepare(ModelChoice(model, input_kind=input_kind), None, None, False)
    rows = []
    for mbps in bandwidths:
        cluster = cluster_at(mbps)
        lat = {}
        for strategy in STRATEGIES:
            plan = make_plan(profile, cluster, strategy, "latency", graph)
            lat[strategy] = measure(plan, cluster, graph, weights, real, requests)
        t_star = 1.0 / (1.0 / lat["local"] + 1.0 / lat["offload"])
        best_other = min(v for k, v in lat.items() if k != "hybrid")
        rows.append(
            {
                "model": model,
                "mbps": mbps,
                "latency_s": lat,
                "t_star_s": t_star,
                "hybrid_vs_best_other": lat["hybrid"] / best_other,
                "hybrid_vs_t_star": lat["hybrid"] / t_star,
                "crossover_gap": abs(lat["local"] - lat["offload"]) / min(lat["local"], lat["offload"]),
            }
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        pts = [r for r in rows if r["model"] == model]
        x = [r["mbps"] for r in pts]
        for strategy in STRATEGIES:
            style = "o-" if strategy == "hybrid" else ".--"
            ax.plot(
                x,
                [1e3 * r["latency_s"][strategy] for r in pts],
                style,
                label=strategy,
                lw=2.2 if strategy == "hybrid" else 1,
            )
        ax.plot(x, [1e3 * r["t_star_s"] for r in pts], "k:", label="bound T*")
        ax.set_xscale("log")
        ax.set_title(model)
        ax.set_xlabel("bandwidth (Mbps)")
        ax.set_ylabel("p50 latency (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,vgg16,resnet50")
    parser.add_argument("--bandwidths", default="10,25,50,100,200")
    parser.add_argument("--real", action="store_true", help="execute every plan with the runtime")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument(
        "--input",
        default="float",
        choices=["float", "uint8-image"],
        help="uint8-image: every strategy sends camera pixels as bytes",
    )
    parser.add_argument("--out", type=Path, default=Path("out/hybrid_sweep"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        rows += sweep(model, [float(b) for b in args.bandwidths.split(",")], args.real, args.requests, args.input)
    plot(rows, args.out / "hybrid_sweep.png")
    (args.out / "hybrid_sweep.json").write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    mode = "measured" if args.real else "simulated"
    print(f"latency in ms ({mode}); last columns: hybrid / best other, hybrid / T*")
    print(f"{'model':<13}{'Mbps':>6}" + "".join(f"{s:>13}" for s in STRATEGIES) + f"{'T*':>8}{'h/best':>8}{'h/T*':>7}")
    for r in rows:
        print(
            f"{r['model']:<13}{r['mbps']:>6.0f}"
            + "".join(f"{1e3 * r['latency_s'][s]:>13.1f}" for s in STRATEGIES)
            + f"{1e3 * r['t_star_s']:>8.1f}{r['hybrid_vs_best_other']:>8.2f}{r['hybrid_vs_t_star']:>7.2f}"
        )
    print(f"plot: {args.out / 'hybrid_sweep.png'}")


if __name__ == "__main__":
    main()
