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
    ModelArg,
    ModelChoice,
    ModelOpt,
    console,
    err_console,
    model_choice,
    print_json,
)
from edgeweave.cli.inputs import CacheOpt, ClusterOpt, NoCacheOpt, ProfileOpt, load_cluster, prepare
from edgeweave.cli.plan_cmd import ObjectiveOpt, StrategyOpt, attach_prediction
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
def emulated_links(mode: str, cluster, plan):
    """Nothing for the in-process shaper; namespaces shaped by tc for `netns` (removed on exit)."""
    if mode == "shaper":
        yield None
        return
    if mode != "netns":
        raise UserError(f"unknown --links {mode!r}: use shaper or netns")
    from edgeweave.runtime.netns import NetnsCluster, require_root

    require_root()
    devices = list(plan.devices)
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
) -> dict[str, Any]:
    from edgeweave.runtime.measure import RunConfig, run_plan
    from edgeweave.runtime.session import SessionOptions

    stem = f"{plan.model}-{plan.strategy}"
    config = RunConfig(
        requests=requests,
        trace=out / f"{stem}-trace.json",
        timeline=out / f"{stem}-timeline.png",
        options=SessionOptions(connect_timeout_s=connect_timeout, max_inflight=max_inflight, links=links, keys=keys),
    )
    with emulated_links(links, cluster, plan) as net:
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
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategy: StrategyOpt = "pipeline",
    objective: ObjectiveOpt = "throughput",
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
        model_choice(model, model_opt, input_shape, checkpoint, input_kind=input_kind),
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
    )
    results = run_strategies(request, [strategy], quiet=json_out)
    if json_out:
        print_json(results[0])
    else:
        print_run(results[0])


def bench(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    input_shape: InputShapeOpt = None,
    checkpoint: CheckpointOpt = None,
    input_kind: InputKindOpt = "float",
    profile: ProfileOpt = None,
    cluster: ClusterOpt = None,
    strategies: Annotated[
        str, typer.Option("--strategies", help="Comma-separated strategies to run side by side.")
    ] = "local,offload,neurosurgeon,pipeline",
    objective: ObjectiveOpt = "latency",
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
        model_choice(model, model_opt, input_shape, checkpoint, input_kind=input_kind),
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


def run_strategies(req: RunRequest, names: list[str], quiet: bool) -> list[dict[str, Any]]:
    """Plan every strategy first (a bad name fails before anything starts), then run each for real."""
    from edgeweave.plan.strategies import make_plan

    the_cluster = load_cluster(req.cluster)
    if req.links not in ("shaper", "netns"):
        raise UserError(f"unknown --links {req.links!r}: use shaper or netns")
    if req.keys is not None:  # a broken keys folder fails before minutes of capture and profiling
        from edgeweave.runtime.security import COORDINATOR, load_keyring

        load_keyring(req.keys, COORDINATOR)
    _, graph, weights, prof = prepare(req.choice, req.profile, req.cache_dir, req.no_cache)
    plans = [
        attach_prediction(make_plan(prof, the_cluster, name, req.objective, graph), req.requests, req.max_inflight)
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
        )
        for p in plans
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


def print_run(r: dict[str, Any]) -> None:
    p = r["predicted"]
    table = Table(
        title=f"{r['model']} {r['strategy']} ({r['objective']}): {r['requests']} requests, measured vs predicted"
    )
    for col in ("", "measured", "predicted", "measured / predicted"):
        table.add_column(col, justify="left" if not col else "right")
    rows = [
        ("latency, one request alone", r["single_latency_s"], p.get("latency_s")),
        ("latency p50 in the stream", r["latency_s"]["p50"], p.get("stream_p50_latency_s")),
        ("latency p95 in the stream", r["latency_s"]["p95"], None),
    ]
    for label, m, pr in rows:
        table.add_row(label, _ms(m), _ms(pr), f"{m / pr:.2f}" if m and pr else "")
    tp, pp = r["throughput_per_s"], p.get("throughput_per_s")
    table.add_row("throughput", f"{tp:.2f}/s", f"{pp:.2f}/s" if pp else "-", f"{tp / pp:.2f}" if pp else "")
    console.print(table)
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
