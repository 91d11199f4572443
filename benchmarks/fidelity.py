"""Fidelity: does the runtime deliver what the simulator predicts?

A 4-stage heterogeneous pipeline (default resnet50; four emulated devices of different speeds
on 1 Gbps and 200 Mbps links) is planned with the exact planner, simulated, then run for real
with the in-process link shaper. Targets: measured throughput >= 90% of simulated, simulated
one-request latency within 10% of measured.

Speeds are chosen so that the four workers together need well under this machine's two cores:
a device at speed s computes for a fraction s of its emulated time and sleeps the rest, so the
host is busy about sum(speeds) = 1.1 cores. With speeds summing to 1.55 (0.45/0.35/0.5/0.25)
stages overran their emulated time under contention and throughput fell to 0.85-0.89 of
simulated: emulation is faithful only while the host has headroom.
Usage: python benchmarks/fidelity.py [--model resnet50] [--requests 40] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeweave.cli.common import ModelChoice
from edgeweave.cli.inputs import prepare
from edgeweave.cli.plan_cmd import attach_prediction
from edgeweave.cost.cluster import Cluster
from edgeweave.plan.strategies import make_plan
from edgeweave.runtime.measure import RunConfig, run_plan

CLUSTER = {
    "name": "fidelity-4",
    "source": "cam",
    "devices": {
        "cam": {"speed": 0.3, "memory": "4GiB"},
        "jetson": {"speed": 0.25, "memory": "8GiB"},
        "nuc": {"speed": 0.35, "memory": "8GiB"},
        "pi": {"speed": 0.2, "memory": "4GiB"},
    },
    "links": {
        "default": {"bandwidth": "1Gbps", "latency": "0.5ms"},
        "cam-pi": {"bandwidth": "200Mbps", "latency": "2ms"},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("out/fidelity"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cluster = Cluster.from_dict(CLUSTER, origin="<fidelity cluster>")
    prep = prepare(ModelChoice(args.model), None, None, None, False)
    graph, weights, profile = prep.graph, prep.weights, prep.profile
    plan = attach_prediction(make_plan(profile, cluster, "pipeline", "throughput"), args.requests)
    config = RunConfig(requests=args.requests, trace=args.out / "trace.json", timeline=args.out / "timeline.png")
    measured = run_plan(plan, cluster, graph, weights, config)
    p = plan.predicted
    result = {
        "model": args.model,
        "stages": [s.model_dump() for s in plan.stages or []],
        "throughput": {
            "measured": measured["throughput_per_s"],
            "simulated": p["throughput_per_s"],
            "ratio": measured["throughput_per_s"] / p["throughput_per_s"],
        },
        "latency": {
            "measured": measured["single_latency_s"],
            "simulated": p["latency_s"],
            "error": abs(p["latency_s"] - measured["single_latency_s"]) / measured["single_latency_s"],
        },
        "stream_p50": {"measured": measured["latency_s"]["p50"], "simulated": p["stream_p50_latency_s"]},
        "correct": measured["correct"],
        "max_abs_err": measured["max_abs_err"],
        "timeline": measured.get("timeline"),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.model}: {len(plan.stages or [])} stages on " + ", ".join(s.device for s in plan.stages or []))
    t, lat = result["throughput"], result["latency"]
    print(
        f"throughput: measured {t['measured']:.3f}/s, simulated {t['simulated']:.3f}/s, "
        f"ratio {t['ratio']:.3f} (target >= 0.90)"
    )
    print(
        f"latency:    measured {lat['measured'] * 1e3:.1f} ms, simulated {lat['simulated'] * 1e3:.1f} ms, "
        f"error {100 * lat['error']:.1f}% (target <= 10%)"
    )
    print(
        f"stream p50: measured {result['stream_p50']['measured'] * 1e3:.1f} ms, "
        f"simulated {result['stream_p50']['simulated'] * 1e3:.1f} ms;  exact: {result['correct']}"
    )


if __name__ == "__main__":
    main()
