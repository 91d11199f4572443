"""Energy sweep: the robot's energy per inference vs bandwidth, for every strategy (issue 7).

Cluster: the embedded robot-server (Jetson-class robot 5 W idle / 14 W busy + WiFi radio
0.283 W/Mbps + 0.133 W, GPU server 60 / 250 W) with the WiFi rate swept. Per model and
bandwidth every strategy is planned for latency (as published) and the hybrid planner also for
`--objective energy` (the source's energy; `hybrid-energy`). Layer-wise baselines are reported as
published (latency plans) and energy-optimised among their own candidates (`*-energy` rows
folded into `best layer-wise (energy-opt)`).

The crossover bandwidth (where local and offload take equally long) is computed per model and
added to the sweep: offload latency is a + k / B on the simulator, fitted from two rates.

Every simulated plan pays the same per-message overhead on each transfer (see `price`).

Target (issue 7): hybrid-energy >= 35% less robot energy than the best layer-wise baseline at
the crossover; the table reports the reduction everywhere. With --real the plans are executed
and the energy is the one modelled from the MEASURED timeline.
Usage: python benchmarks/energy_sweep.py [--models a,b] [--bandwidths 10,25] [--real] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from edgeweave.cli.common import ModelChoice  # noqa: E402
from edgeweave.cli.inputs import default_cluster_text, prepare  # noqa: E402
from edgeweave.cost.cluster import Cluster  # noqa: E402
from edgeweave.cost.energy import power_models  # noqa: E402
from edgeweave.plan.band import with_message_overhead  # noqa: E402
from edgeweave.plan.energy import candidates, score_plan  # noqa: E402
from edgeweave.plan.strategies import make_plan  # noqa: E402
from edgeweave.sim.energy import single_energy  # noqa: E402
from edgeweave.sim.simulator import simulate  # noqa: E402

LAYERWISE = ["local", "offload", "neurosurgeon", "dads"]
STRATEGIES = [*LAYERWISE, "pipeline", "hybrid-grid", "hybrid"]


def cluster_at(mbps: float) -> Cluster:
    data = yaml.safe_load(default_cluster_text())
    data["links"] = {"robot-server": {"bandwidth": f"{mbps:.6g}Mbps", "latency": "2ms"}}
    return Cluster.from_dict(data, origin=f"<robot-server {mbps:.3g} Mbps>")


def dense_models() -> set[str]:
    """Camera-resolution dense models: swept with --labels (a per-pixel argmax as uint8, what a
    robot consumes: 300 KB at 480x640 instead of 17-21 maps of float scores)."""
    from edgeweave.zoo import list_models

    return {m["name"] for m in list_models() if m["family"] in ("segmentation", "keypoints")}


def crossover_mbps(profile, at=cluster_at) -> float | None:
    """The rate at which offload's simulated latency equals local's (latency = a + k / B);
    `at(mbps)` builds the cluster at a rate."""
    lat = {}
    for mbps in (10.0, 100.0):
        cluster = at(mbps)
        lat[mbps] = simulate(make_plan(profile, cluster, "offload", "latency"), requests=1).single_latency_s
    k = (lat[10.0] - lat[100.0]) / (1 / 10.0 - 1 / 100.0)
    a = lat[100.0] - k / 100.0
    local = simulate(make_plan(profile, at(100.0), "local", "latency"), requests=1).single_latency_s
    return k / (local - a) if local > a else None


def price(plan, cluster, graph, weights, real: bool, requests: int) -> tuple[float, float, float]:
    """(latency s, robot J, all devices J) of one request alone: simulated, or measured with --real.

    Simulated plans all pay the same per-message overhead (MESSAGE_OVERHEAD_S per transfer, as the
    hybrid planner charges its own candidates), so no strategy is flattered by being costed without it.
    """
    if not real:
        plan = with_message_overhead(plan)
        report = single_energy(plan, cluster, required=True)
        return simulate(plan, requests=1, cluster=cluster).single_latency_s, report.source_j, report.total_j
    from edgeweave.runtime.measure import RunConfig, run_plan

    result = run_plan(plan, cluster, graph, weights, RunConfig(requests=requests, warmup=1, single=3))
    assert result["correct"], f"{plan.strategy} gave wrong outputs"
    return result["single_latency_s"], result["source_energy_j"], result["energy_j"]


def sweep(model: str, bandwidths: list[float], real: bool, requests: int, input_kind: str) -> tuple[list, dict]:
    choice = ModelChoice(model, input_kind=input_kind, labels=model in dense_models())
    prep = prepare(choice, None, None, None, False)
    graph, weights, profile = prep.graph, prep.weights, prep.profile
    cross = crossover_mbps(profile)
    points = sorted({*bandwidths, *([round(cross, 2)] if cross else [])})
    rows, cloud = [], {}
    for mbps in points:
        cluster = cluster_at(mbps)
        runs = {}
        for strategy in STRATEGIES:
            plan = make_plan(profile, cluster, strategy, "latency", graph)
            runs[strategy] = price(plan, cluster, graph, weights, real, requests)
        for strategy in [*LAYERWISE, "hybrid"]:
            plan = make_plan(profile, cluster, strategy, "energy", graph, energy_scope="source")
            runs[f"{strategy}-energy"] = price(plan, cluster, graph, weights, real, requests)
        best_pub = min(LAYERWISE, key=lambda s: runs[s][1])
        best_opt = min(LAYERWISE, key=lambda s: runs[f"{s}-energy"][1])
        hyb = runs["hybrid-energy"][1]
        rows.append(
            {
                "model": model,
                "mbps": mbps,
                "crossover": cross is not None and abs(mbps - round(cross, 2)) < 1e-9,
                "latency_s": {k: v[0] for k, v in runs.items()},
                "robot_j": {k: v[1] for k, v in runs.items()},
                "total_j": {k: v[2] for k, v in runs.items()},
                "best_layerwise": best_pub,
                "best_layerwise_energy_opt": best_opt,
                "reduction_vs_best_layerwise": 1 - hyb / runs[best_pub][1],
                "reduction_vs_best_layerwise_energy_opt": 1 - hyb / runs[f"{best_opt}-energy"][1],
            }
        )
        if rows[-1]["crossover"]:  # every hybrid candidate, for the Pareto picture
            power = power_models(cluster, cluster.device_names)
            scored = [score_plan(p, cluster, power, "energy") for p in candidates(profile, cluster, "hybrid", graph)]
            cloud = {"mbps": mbps, "points": [(s.latency_s, s.source_energy_j) for s in scored], "runs": runs}
    return rows, cloud


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency and energy, by latency."""
    front, best = [], float("inf")
    for lat, joules in sorted(points):
        if joules < best:
            front.append((lat, joules))
            best = joules
    return front


def plot(clouds: dict[str, dict], path: Path) -> None:
    models = [m for m, c in clouds.items() if c]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        c = clouds[model]
        xs, ys = zip(*c["points"], strict=True)
        ax.scatter([1e3 * x for x in xs], ys, s=6, c="0.75", label="hybrid candidates")
        named = [(v[0], v[1]) for v in c["runs"].values()]
        front = pareto(list(c["points"]) + named)
        ax.plot([1e3 * x for x, _ in front], [y for _, y in front], "k-", lw=1.2, label="Pareto front")
        colours = plt.get_cmap("tab20")
        for k, (name, (lat, robot, _)) in enumerate(c["runs"].items()):
            marker = "*" if name == "hybrid-energy" else "s" if name.endswith("-energy") else "o"
            ax.scatter(
                1e3 * lat, robot, marker=marker, s=110 if marker == "*" else 30, color=colours(k), label=name, zorder=3
            )
        # Zoom on the strategies (the worst candidates are far off and flatten the picture).
        ax.set_xlim(0, 1.5e3 * max(v[0] for v in named))
        ax.set_ylim(0, 1.15 * max(v[1] for v in named))
        ax.set_title(f"{model} at {c['mbps']:.1f} Mbps (crossover)")
        ax.set_xlabel("latency of one request (ms)")
        ax.set_ylabel("robot energy per inference (J)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2,vgg16,resnet50")
    parser.add_argument("--bandwidths", default="10,25,50,100,200")
    parser.add_argument("--real", action="store_true", help="execute every plan with the runtime")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--input", default="float", choices=["float", "uint8-image"])
    parser.add_argument("--out", type=Path, default=Path("out/energy_sweep"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, clouds = [], {}
    for model in args.models.split(","):
        got, clouds[model] = sweep(
            model, [float(b) for b in args.bandwidths.split(",")], args.real, args.requests, args.input
        )
        rows += got
    plot(clouds, args.out / "energy_vs_latency.png")
    (args.out / "energy_sweep.json").write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    mode = "measured timeline" if args.real else "simulated"
    shown = [*STRATEGIES, "hybrid-energy"]
    print(f"robot energy per inference in J ({mode}, {args.input} input); * = crossover bandwidth")
    print(
        f"{'model':<13}{'Mbps':>8}"
        + "".join(f"{s:>14}" for s in shown)
        + f"{'best LW':>14}{'vs best':>8}{'best LW-opt':>18}{'vs opt':>8}{'h-e ms':>8}"
    )
    for r in rows:
        mark = "*" if r["crossover"] else " "
        opt = r["best_layerwise_energy_opt"]
        print(
            f"{r['model']:<13}{r['mbps']:>7.1f}{mark}"
            + "".join(f"{r['robot_j'][s]:>14.3f}" for s in shown)
            + f"{r['best_layerwise']:>14}{100 * r['reduction_vs_best_layerwise']:>7.1f}%"
            + f"{opt + '-energy':>18}{100 * r['reduction_vs_best_layerwise_energy_opt']:>7.1f}%"
            + f"{1e3 * r['latency_s']['hybrid-energy']:>8.1f}"
        )
    print(f"plot: {args.out / 'energy_vs_latency.png'}   json: {args.out / 'energy_sweep.json'}")


if __name__ == "__main__":
    main()
