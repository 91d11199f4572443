"""`edgeweave run`, `edgeweave bench` and `edgeweave worker`: execute plans for real."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from edgeweave.cli.common import (
    CheckpointOpt,
    InputKindOpt,
    InputShapeOpt,
    JsonOpt,
    LabelsOpt,
    ModelArg,
    ModelChoice,
    ModelOpt,
    console,
    err_console,
    model_choice,
    print_json,
)
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, ProfileOpt, load_cluster, prepare
from edgeweave.cli.plan_cmd import (
    DeadlineOpt,
    EnergyBudgetOpt,
    EnergyScopeOpt,
    ObjectiveOpt,
    StrategyOpt,
    attach_prediction,
)
from edgeweave.cli.rate import RateOpt
from edgeweave.cli.resilience_opts import AdaptOpt, FaultOpt, print_recovery, resilience
from edgeweave.cli.split_options import ChunksOpt, SplitAxisOpt, SplitRatiosOpt, hybrid_options
from edgeweave.errors import UserError

RequestsOpt = Annotated[int, typer.Option("--requests", "-n", min=1, help="Requests to stream (after warm-up).")]
LinksOpt = Annotated[
    str,
    typer.Option(
        "--links", help="shaper (in-process token bucket, default) or netns (Linux namespaces + tc, root only)."
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for the measured trace and timeline.")]
InflightOpt = Annotated[
    int | None,
    typer.Option(
        "--max-inflight",
        min=1,
        help="Requests in the system at once [default: one per plan task + 1].",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[float, typer.Option("--connect-timeout", min=0.1, help="Seconds to wait for a worker.")]
KeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys",
        help="Keys folder from `edgeweave keys`: every connection is then authenticated and encrypted (CURVE). "
        "Required when a device has a non-loopback address.",
        show_default=False,
    ),
]


@contextlib.contextmanager
def emulated_links(mode: str, cluster, plan, every_device: bool = False):
    """Nothing for the in-process shaper; namespaces shaped by tc for `netns` (removed on exit)."""
    if mode == "shaper":
        yield None
        return
    if mode != "netns":
        raise UserError(f"unknown --links {mode!r}: use shaper or netns")
    from edgeweave.runtime.netns import NetnsCluster, require_root

    require_root()
    devices = list(cluster.devices) if every_device else list(plan.devices)  # a re-plan may use any
    rates = {(a, b): cluster.link(a, b).bandwidth_bps for a in devices for b in devices if a != b}
    with NetnsCluster(devices, plan.source, rates) as net:
        yield net


def execute(
    plan,
    cluster,
    graph,
    weights,
    *,
    requests: int,
    links: str,
    out: Path,
    max_inflight,
    connect_timeout,
    show_progress: bool,
    keys: Path | None = None,
    rate_per_s: float | None = None,
    resilience: Any = None,
    replan: Any = None,
) -> dict[str, Any]:
    from edgeweave.runtime.measure import RunConfig, run_plan
    from edgeweave.runtime.session import SessionOptions

    stem = f"{plan.model}-{plan.strategy}"
    config = RunConfig(
        requests=requests,
        trace=out / f"{stem}-trace.json",
        timeline=out / f"{stem}-timeline.png",
        options=SessionOptions(connect_timeout_s=connect_timeout, max_inflight=max_inflight, links=links, keys=keys),
        rate_per_s=rate_per_s,
        replan=replan(plan.strategy) if replan is not None else None,
        resilience=resilience,
    )
    with emulated_links(links, cluster, plan, every_device=replan is not None) as net:
        if not show_progress:
            return run_plan(plan, cluster, graph, weights, config, netns=net)
        with Progress(
            TextColumn(f"running {plan.strategy}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=requests)
            return run_plan(
                plan,
                cluster,
                graph,
                weights,
                config,
                netns=net,
                progress=lambda done, total: bar.update(task, completed=done),
            )


def run(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    input_shape: InputShapeOpt = None,
    checkpoint: CheckpointOpt = None,
    input_kind: InputKindOpt = "float",
    labels: LabelsOpt = False,
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategy: StrategyOpt = "pipeline",
    objective: ObjectiveOpt = "throughput",
    energy_scope: EnergyScopeOpt = "source",
    energy_budget: EnergyBudgetOpt = None,
    deadline: DeadlineOpt = None,
    rate: RateOpt = None,
    split_ratios: SplitRatiosOpt = None,
    chunks: ChunksOpt = None,
    split_axis: SplitAxisOpt = None,
    adapt: AdaptOpt = False,
    fault: FaultOpt = None,
    requests: RequestsOpt = 20,
    links: LinksOpt = "shaper",
    out: OutDirOpt = Path("out/run"),
    max_inflight: InflightOpt = None,
    connect_timeout: TimeoutOpt = 5.0,
    keys: KeysOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Execute MODEL on the cluster for real: one worker process per device, measured vs predicted."""
    request = RunRequest(
        model_choice(model, model_opt, input_shape, checkpoint, input_kind=input_kind, labels=labels),
        profile,
        cluster,
        objective,
        requests,
        links,
        out,
        max_inflight,
        connect_timeout,
        keys,
        cache_dir,
        no_cache,
        energy_scope=energy_scope,
        energy_budget_j=energy_budget,
        deadline_s=deadline,
        rate_per_s=rate,
        hybrid=hybrid_options(split_ratios, chunks, split_axis),
        resilience=resilience(adapt, fault),
    )
    results = run_strategies(request, [strategy], quiet=json_out)
    if json_out:
        print_json(results[0])
    else:
        print_run(results[0])
        print_recovery(results[0], console)


def bench(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    input_shape: InputShapeOpt = None,
    checkpoint: CheckpointOpt = None,
    input_kind: InputKindOpt = "float",
    labels: LabelsOpt = False,
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategies: Annotated[
        str, typer.Option("--strategies", help="Comma-separated strategies to run side by side.")
    ] = "local,offload,neurosurgeon,pipeline",
    objective: ObjectiveOpt = "latency",
    energy_scope: EnergyScopeOpt = "source",
    energy_budget: EnergyBudgetOpt = None,
    deadline: DeadlineOpt = None,
    rate: RateOpt = None,
    split_ratios: SplitRatiosOpt = None,
    chunks: ChunksOpt = None,
    split_axis: SplitAxisOpt = None,
    adapt: AdaptOpt = False,
    fault: FaultOpt = None,
    requests: RequestsOpt = 20,
    links: LinksOpt = "shaper",
    out: OutDirOpt = Path("out/bench"),
    max_inflight: InflightOpt = None,
    connect_timeout: TimeoutOpt = 5.0,
    keys: KeysOpt = None,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run several strategies for real, one after another in one process tree, and compare them."""
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    request = RunRequest(
        model_choice(model, model_opt, input_shape, checkpoint, input_kind=input_kind, labels=labels),
        profile,
        cluster,
        objective,
        requests,
        links,
        out,
        max_inflight,
        connect_timeout,
        keys,
        cache_dir,
        no_cache,
        energy_scope=energy_scope,
        energy_budget_j=energy_budget,
        deadline_s=deadline,
        rate_per_s=rate,
        hybrid=hybrid_options(split_ratios, chunks, split_axis),
        resilience=resilience(adapt, fault),
    )
    results = run_strategies(request, names, quiet=json_out)
    if json_out:
        print_json(results)
    else:
        print_comparison(results)


@dataclass
class RunRequest:
    """Everything `run` and `bench` were asked, gathered once."""

    choice: ModelChoice
    profile: Path | None
    cluster: Path | None
    objective: str
    requests: int
    links: str
    out: Path
    max_inflight: int | None
    connect_timeout: float
    keys: Path | None
    cache_dir: Path | None
    no_cache: bool
    energy_scope: str = "source"  # energy-aware planning (plan/energy.py)
    energy_budget_j: float | None = None
    deadline_s: float | None = None
    rate_per_s: float | None = None  # camera frames per second (None: every request ready at once)
    resilience: Any = None  # --adapt / --fault: ResilienceOptions (re-plan, recover, replay)
    hybrid: Any = None  # --split-ratios / --chunks / --split-axis: HybridOptions for the hybrid strategy


def run_strategies(req: RunRequest, names: list[str], quiet: bool) -> list[dict[str, Any]]:
    """Plan every strategy first (a bad name fails before anything starts), then run each for real."""
    from edgeweave.plan.strategies import make_plan
    from edgeweave.sim.stream import check_rate

    check_rate(req.rate_per_s)
    the_cluster = load_cluster(req.cluster)
    if req.links not in ("shaper", "netns"):
        raise UserError(f"unknown --links {req.links!r}: use shaper or netns")
    if req.keys is not None:  # a broken keys folder fails before minutes of capture and profiling
        from edgeweave.runtime.security import COORDINATOR, load_keyring

        load_keyring(req.keys, COORDINATOR)
    _, graph, weights, prof = prepare(req.choice, req.profile, req.cache_dir, req.no_cache)
    plans = [
        attach_prediction(
            make_plan(
                prof,
                the_cluster,
                name,
                req.objective,
                graph,
                energy_scope=req.energy_scope,
                energy_budget_j=req.energy_budget_j,
                deadline_s=req.deadline_s,
                hybrid=req.hybrid if name == "hybrid" else None,
            ),
            req.requests,
            req.max_inflight,
            req.rate_per_s,
        )
        for name in names
    ]
    return [
        execute(
            p,
            the_cluster,
            graph,
            weights,
            requests=req.requests,
            links=req.links,
            out=req.out,
            max_inflight=req.max_inflight,
            connect_timeout=req.connect_timeout,
            show_progress=not quiet,
            keys=req.keys,
            rate_per_s=req.rate_per_s,
            resilience=req.resilience,
            replan=_replanner(prof, req, graph) if req.resilience is not None else None,
        )
        for p in plans
    ]


def _replanner(prof, req: RunRequest, graph):
    """`strategy -> (cluster -> Plan)`: the planner a resilient run calls after a failure or a
    bandwidth change, with every planning option the first plan was made with."""
    from edgeweave.plan.band import SegmentGeometry
    from edgeweave.plan.strategies import make_plan

    geometry = SegmentGeometry(prof, graph) if graph is not None else None  # kept: re-plans take ~0.1 s

    def for_strategy(strategy: str):
        def replan(cluster):
            return make_plan(
                prof,
                cluster,
                strategy,
                req.objective,
                graph,
                energy_scope=req.energy_scope,
                energy_budget_j=req.energy_budget_j,
                deadline_s=req.deadline_s,
                hybrid=req.hybrid if strategy == "hybrid" else None,
                geometry=geometry,
            )

        return replan

    return for_strategy


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


def _joules(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} J"


def print_run(r: dict[str, Any]) -> None:
    p = r["predicted"]
    table = Table(
        title=f"{r['model']} {r['strategy']} ({r['objective']}): {r['requests']} requests, measured vs predicted"
    )
    for col in ("", "measured", "predicted", "measured / predicted"):
        table.add_column(col, justify="left" if not col else "right")
    fps = p.get("stream") or {}  # frames at --rate: latency from arrival, predicted at the same rate
    at = f" at {fps['rate_per_s']:g} frames/s" if fps else ""
    p50 = fps.get("latency_p50_s", p.get("stream_p50_latency_s"))
    rows = [
        ("latency, one request alone", r["single_latency_s"], p.get("latency_s")),
        (f"latency p50 in the stream{at}", r["latency_s"]["p50"], p50),
        (f"latency p95 in the stream{at}", r["latency_s"]["p95"], fps.get("latency_p95_s")),
    ]
    for label, m, pr in rows:
        table.add_row(label, _ms(m), _ms(pr), f"{m / pr:.2f}" if m and pr else "")
    tp, pp = r["throughput_per_s"], fps.get("throughput_per_s", p.get("throughput_per_s"))
    table.add_row("throughput", f"{tp:.2f}/s", f"{pp:.2f}/s" if pp else "-", f"{tp / pp:.2f}" if pp else "")
    for label, key in (("energy / inference, source", "source_energy_j"), ("energy / inference, all", "energy_j")):
        m, pr = r.get(key), p.get(key)
        if m is not None or pr is not None:
            table.add_row(label, _joules(m), _joules(pr), f"{m / pr:.2f}" if m and pr else "")
    console.print(table)
    power = r.get("measured_power") or {}
    if power.get("available"):
        console.print(f"host energy measured by {', '.join(power['sensors'])}: {power['host_energy_j']:.2f} J (stream)")
    elif power:
        console.print(f"measured energy: {power.get('why')}; energy above is modelled from the measured timeline")
    dev = Table(title="devices (stream)")
    for col in ("device", "tasks", "compute", "busy (padded)", "idle", "utilisation"):
        dev.add_column(col, justify="left" if col == "device" else "right")
    for name, d in r["devices"].items():
        dev.add_row(
            name,
            str(d["tasks"]),
            _ms(d["compute_s"]),
            _ms(d["busy_s"]),
            _ms(d["idle_s"]),
            f"{100 * d['utilisation']:.0f}%",
        )
    console.print(dev)
    if r["links"]:
        links = Table(title="links (measured at the receiver)")
        for col in ("link", "transfers", "bytes", "busy"):
            links.add_column(col, justify="left" if col == "link" else "right")
        for name, link in r["links"].items():
            links.add_row(name, str(link["transfers"]), f"{link['bytes'] / 2**20:.2f} MiB", _ms(link["busy_s"]))
        console.print(links)
    over = {name: d["overruns"] for name, d in r["devices"].items() if d.get("overruns")}
    if over:
        console.print(
            "[yellow]warning:[/] compute ran past the emulated device time ("
            + ", ".join(f"{n}: {k} tasks" for n, k in over.items())
            + "): this machine is too busy to emulate these devices faithfully; use fewer or slower devices"
        )
    verdict = "[green]exact[/]" if r["correct"] else "[red]WRONG[/]"
    console.print(
        f"outputs vs single-device execution: {verdict} (max abs err {r['max_abs_err']:.2e})   "
        f"trace: {r.get('trace')}   timeline: {r.get('timeline')}"
    )


def print_comparison(results: list[dict[str, Any]], title: str | None = None) -> None:
    """Strategies side by side; with local or offload among them, how each compares to the better of the two."""
    singles = [r["single_latency_s"] for r in results if r["strategy"] in ("local", "offload")]
    best = min(singles) if singles else None
    table = Table(title=title or f"{results[0]['model']}: strategies run for real")
    columns = [
        "strategy",
        "latency (pred)",
        "latency (meas)",
        "p50 stream",
        "throughput (pred)",
        "throughput (meas)",
        "source J (pred)",
        "source J (meas)",
        "exact?",
    ]
    if best is not None:
        columns.insert(3, "vs best of local/offload")
    for col in columns:
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in results:
        p = r["predicted"]
        row = [
            r["strategy"],
            _ms(p.get("latency_s")),
            _ms(r["single_latency_s"]),
            _ms(r["latency_s"]["p50"]),
            f"{p.get('throughput_per_s', 0):.2f}/s",
            f"{r['throughput_per_s']:.2f}/s",
            _joules(p.get("source_energy_j")),
            _joules(r.get("source_energy_j")),
            "yes" if r["correct"] else "NO",
        ]
        if best is not None:
            row.insert(3, f"{best / r['single_latency_s']:.2f}x")
        table.add_row(*row)
    console.print(table)


def worker(
    listen: Annotated[
        str, typer.Option("--listen", help="Where to accept the coordinator and peers, e.g. tcp://10.0.0.2:5555.")
    ] = "tcp://127.0.0.1:5555",
    name: Annotated[str, typer.Option("--name", help="This device's name in the cluster YAML.")] = "worker",
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="Keys folder from `edgeweave keys` holding NAME.key_secret and the members' public keys: only "
            "the coordinator and the other devices can connect, and everything is encrypted.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext without keys; allowed on loopback addresses only.")
    ] = False,
    max_frame_bytes: Annotated[
        int,
        typer.Option(
            "--max-frame-bytes", min=1 << 20, help="Largest frame accepted (a device's weights travel in one frame)."
        ),
    ] = 2 << 30,
) -> None:
    """Serve one device: wait for a coordinator to deploy its part of a plan, then execute it."""
    import zmq

    from edgeweave.runtime.security import check_listen
    from edgeweave.runtime.worker import serve

    check_listen(listen, keys, insecure)
    if insecure:
        err_console.print(
            "[bold red]WARNING: --insecure: no authentication and no encryption.[/] Any process on this host "
            "can deploy work here and read every tensor; use --keys outside a throw-away test"
        )
    if "0.0.0.0" in listen or "://*" in listen or "[::]" in listen:
        err_console.print(
            "[yellow]warning:[/] listening on all interfaces: only holders of the keys in "
            f"{keys} can connect, but prefer a specific address on a trusted network"
        )
    try:
        serve(
            listen,
            name,
            announce=lambda text: err_console.print(f"{name}: {text}"),
            keys=keys,
            max_frame_bytes=max_frame_bytes,
        )
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise UserError(f"cannot listen on {listen}: the port is already in use") from exc
        raise UserError(f"cannot listen on {listen}: {exc}") from exc


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(bench)
    app.command()(worker)
