"""`edgeweave run`, `edgeweave bench` and `edgeweave worker`: execute plans for real.

`run` is `bench` with one strategy: both take the same option groups (cli/options.py) and go
through `run_strategies`, which checks every cheap option, then builds the model once, plans
every strategy (a bad name fails before anything starts), warns about what this machine cannot
emulate, and runs each plan.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn

from edgeweave.cli.common import JsonOpt, ModelChoice, console, err_console, print_json
from edgeweave.cli.options import (
    DEFAULT_STRATEGY,
    ExecutionOptions,
    ModelOptions,
    PlanningOptions,
    StrategiesOpt,
    StrategyOpt,
    grouped,
)
from edgeweave.cli.report import plan_key, print_comparison, print_run, print_summary
from edgeweave.cli.resilience_opts import print_recovery
from edgeweave.errors import UserError

BENCH_STRATEGIES = "local,offload,neurosurgeon,pipeline"


@grouped
def run(
    m: ModelOptions,
    p: PlanningOptions,
    e: ExecutionOptions,
    strategy: StrategyOpt = DEFAULT_STRATEGY,
    json_out: JsonOpt = False,
) -> None:
    """Execute MODEL on the cluster for real: one worker process per device, measured vs predicted."""
    results = run_strategies(m.choice(), p, e, [strategy], quiet=json_out)
    if json_out:
        print_json(results[0])
    else:
        print_run(results[0])
        print_recovery(results[0], console)


@grouped
def bench(
    m: ModelOptions,
    p: PlanningOptions,
    e: ExecutionOptions,
    strategies: StrategiesOpt = BENCH_STRATEGIES,
    json_out: JsonOpt = False,
) -> None:
    """Run several strategies for real, one after another in one process tree, and compare them."""
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    results = run_strategies(m.choice(), p, e, names, quiet=json_out)
    if json_out:
        print_json(results)
    else:
        print_comparison(results)
        print_summary(results)


def free_cores() -> float:
    """Cores not busy with other work right now (the 1-minute load average), at least one."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1.0, cores - load)


def emulation_warnings(plan: Any, cluster: Any, cores: float | None = None) -> list[str]:
    """Warnings for devices this machine cannot emulate faithfully, with the distortion to expect.

    Emulated devices are worker processes on this host, slowed to their `speed`; a device faster
    than this machine (speed > 1) computes at this machine's speed instead, and devices that
    compute at once (every stage, in a stream) share its free cores. Both make measurements
    slower than predictions, silently unless said here (a small ViT on home-4 measured 0.42x its
    predicted throughput). `cores`: the free cores (default: `free_cores()`).
    """
    cores = free_cores() if cores is None else cores
    computing = sorted({t.device for t in plan.tasks if t.kind == "compute"})
    out = []
    fast = {d: cluster.devices[d].speed for d in computing if d in cluster.devices and cluster.devices[d].speed > 1}
    for device, speed in fast.items():
        out.append(
            f"{plan.strategy}: device {device} has speed {speed:g}, faster than this machine can emulate: "
            f"its tasks will take up to {speed:g}x their predicted time"
        )
    total = sum(min(cluster.devices[d].speed, 1.0) for d in computing if d in cluster.devices)
    if len(computing) > 1 and total > cores + 0.1:
        out.append(
            f"{plan.strategy}: devices {', '.join(computing)} compute at once with speeds summing to {total:.2f} "
            f"on {cores:.1f} free cores: expect up to {total / cores:.1f}x slower compute and lower throughput "
            "than predicted"
        )
    return out


def run_strategies(
    choice: ModelChoice | None,
    p: PlanningOptions,
    e: ExecutionOptions,
    names: list[str],
    quiet: bool,
) -> list[dict[str, Any]]:
    """Check every option, build and profile the model once, plan every strategy, then run each for real."""
    from edgeweave.cli.inputs import prepare
    from edgeweave.cli.plan_cmd import attach_prediction, node_modules, with_source
    from edgeweave.plan.strategies import make_plan

    if choice is None:
        raise UserError("no model given: name one (see `edgeweave models`) or pass --model package.module:factory")
    checked = p.check(names, has_model=True)
    resilience = e.check()
    ready = prepare(choice, checked.profile, p.profile, p.cache_dir, p.no_cache)
    plans = []
    for name in names:
        the_plan = make_plan(
            ready.profile, checked.cluster, name, p.objective, ready.graph, **p.plan_kwargs(name, checked.hybrid)
        )
        predicted = attach_prediction(the_plan, e.requests, e.max_inflight, p.rate)
        the_plan = with_source(predicted, ready.source, warn=not plans)  # say it once, not per strategy
        the_plan.node_modules = node_modules(ready.profile)
        plans.append(the_plan)
    for the_plan in plans:
        for warning in emulation_warnings(the_plan, checked.cluster):
            err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    replan = _replanner(ready, p, checked) if resilience is not None else None
    results = []
    for the_plan in plans:
        result = execute(
            the_plan,
            checked.cluster,
            ready,
            e,
            show_progress=not quiet,
            rate_per_s=p.rate,
            resilience=resilience,
            replan=replan,
        )
        result["profile"] = ready.source.to_dict()
        result["plan_key"] = plan_key(the_plan)
        result["plan_devices"] = list(dict.fromkeys(t.device for t in the_plan.tasks if t.kind == "compute"))
        result["plan_messages_out"] = sum(
            1 for t in the_plan.tasks if t.kind == "transfer" and t.src == the_plan.source
        )
        results.append(result)
    return results


def _replanner(ready: Any, p: PlanningOptions, checked: Any) -> Any:
    """`strategy -> (cluster -> Plan)`: the planner a resilient run calls after a failure or a
    bandwidth change, with every planning option the first plan was made with."""
    from edgeweave.plan.strategies import make_plan

    kept: dict[str, Any] = {}  # the model's band geometry, made at the first re-plan (then ~0.1 s each)

    def geometry() -> Any:
        if "geometry" not in kept:
            from edgeweave.plan.band import SegmentGeometry

            kept["geometry"] = SegmentGeometry(ready.profile, ready.graph)
        return kept["geometry"]

    def for_strategy(strategy: str) -> Any:
        def replan(cluster: Any) -> Any:
            kwargs = p.plan_kwargs(strategy, checked.hybrid)
            return make_plan(ready.profile, cluster, strategy, p.objective, ready.graph, geometry=geometry(), **kwargs)

        return replan

    return for_strategy


@contextlib.contextmanager
def emulated_links(mode: str, cluster: Any, plan: Any, every_device: bool = False) -> Iterator[Any]:
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


def safe_name(text: str) -> str:
    """A file-name piece from a model or strategy name: `pkg.mod:factory` -> `pkg.mod-factory`."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")
    return cleaned[:80] or "model"


def reserve(folder: Path, stem: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Paths `folder/stem-<time>[-k]<suffix>` that no other run holds: each is created empty with
    O_EXCL, so two runs started at once (or one after another) never write over each other."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        base = f"{stem}-{stamp}" if k == 1 else f"{stem}-{stamp}-{k}"
        paths = [folder / f"{base}{suffix}" for suffix in suffixes]
        taken: list[Path] = []
        try:
            for path in paths:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                taken.append(path)
            return paths
        except FileExistsError:
            for path in taken:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(f"{folder}: cannot write there: {exc.strerror or exc}") from exc
    raise UserError(f"{folder}: too many runs named {stem} this second")


def execute(
    plan: Any,
    cluster: Any,
    ready: Any,
    e: ExecutionOptions,
    *,
    show_progress: bool,
    rate_per_s: float | None = None,
    resilience: Any = None,
    replan: Any = None,
) -> dict[str, Any]:
    from edgeweave.runtime.measure import RunConfig, run_plan
    from edgeweave.runtime.session import SessionOptions

    trace, timeline = reserve(
        e.out, f"{safe_name(plan.model)}-{safe_name(plan.strategy)}", ("-trace.json", "-timeline.png")
    )
    config = RunConfig(
        requests=e.requests,
        trace=trace,
        timeline=timeline,
        options=SessionOptions(
            connect_timeout_s=e.connect_timeout,
            max_inflight=e.max_inflight,
            links=e.links,
            keys=e.keys,
            insecure=e.insecure,
        ),
        rate_per_s=rate_per_s,
        replan=replan(plan.strategy) if replan is not None else None,
        resilience=resilience,
        input_range=ready.spec.input_range,
    )
    graph, weights = ready.graph, ready.weights
    with emulated_links(e.links, cluster, plan, every_device=replan is not None) as net:
        if not show_progress:
            return run_plan(plan, cluster, graph, weights, config, netns=net)
        with Progress(
            TextColumn(f"running {plan.strategy}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=e.requests)
            return run_plan(
                plan,
                cluster,
                graph,
                weights,
                config,
                netns=net,
                progress=lambda done, total: bar.update(task, completed=done),
            )


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
            "--max-frame-bytes",
            min=1 << 20,
            help="Largest frame accepted: the largest tensor a peer sends here (weights travel in 256 KiB chunks).",
        ),
    ] = 64 << 20,
) -> None:
    """Serve one device, one session after another: a coordinator deploys its part of a plan and
    runs requests; closing the session frees the worker for the next one (it keeps running). A
    second coordinator meanwhile is told the worker is busy."""
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
