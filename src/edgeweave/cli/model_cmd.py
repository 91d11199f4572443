"""`edgeweave models` and `edgeweave profile`: what can be run, and how long each operator takes."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeweave.cli.common import JsonOpt, console, err_console, print_json, print_table
from edgeweave.cli.options import CacheOpt, ModelOptions, grouped
from edgeweave.cost.profile import Profile
from edgeweave.cost.units import format_bytes


def models(json_out: JsonOpt = False) -> None:
    """List the model zoo (random weights unless you pass --checkpoint)."""
    from edgeweave.zoo import list_models

    rows = list_models()
    if json_out:
        print_json(rows)
        return
    if console.is_terminal and console.width < 120:  # a table would cut names or descriptions: a list
        for r in rows:
            shape = "x".join(str(d) for d in r["input_shape"])
            console.print(
                f"[bold]{r['name']}[/] ({r['family']}, {shape} {r['input_dtype']}, {r['params'] / 1e6:.1f}M)\n"
                f"    {r['description']}",
                soft_wrap=False,
            )
    else:
        table = Table(title="edgeweave model zoo")
        for col in ("name", "family", "input", "params", "description"):
            table.add_column(col, justify="right" if col == "params" else "left", no_wrap=col != "description")
        for r in rows:
            shape = "x".join(str(d) for d in r["input_shape"])
            table.add_row(
                r["name"], r["family"], f"{shape} {r['input_dtype']}", f"{r['params'] / 1e6:.1f}M", r["description"]
            )
        print_table(table)
    console.print(
        "Your own model: package.module:factory --input-shape 1,3,224,224 "
        "[--input-dtype int64 --input-range 0,30522] [--checkpoint W.pt]",
        soft_wrap=True,
    )


@grouped
def profile(
    m: ModelOptions,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the profile JSON.")] = Path("profile.json"),
    warmup: Annotated[int, typer.Option(min=0, help="Untimed passes first.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed passes; each node's median is kept.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="torch intra-op threads (1 = what a worker uses).")] = 1,
    top: Annotated[int, typer.Option(min=1, help="Rows in the top-ops table.")] = 10,
    cache_dir: CacheOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure every operator of MODEL on this machine and write the profile JSON.

    The profile is the interchange format of the design notes: plan with it on any machine. It
    also replaces the cached profile that plan, run and bench use for MODEL on this host.
    """
    from edgeweave.cli.inputs import update_cache
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.cost.store import ProfileSource
    from edgeweave.zoo import capture_model

    choice = m.choice()
    with err_console.status(f"building and capturing {choice.spec} ..."):
        spec = choice.load()
        start = time.perf_counter()
        graph, weights = capture_model(spec)
        capture_s = time.perf_counter() - start
    with Progress(
        TextColumn("profiling {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{spec.name} ({len(graph)} nodes)", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        prof = profile_graph(
            graph,
            weights,
            spec.example_input,
            module=spec.module,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
            progress=advance,
        )
    prof.capture_time_s = capture_s
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.save(out)
    cached = update_cache(choice, tuple(spec.input_shape), prof, threads, cache_dir)
    source = ProfileSource.of(prof, "file", out)
    for warning in source.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    summary = {**prof.summary(), "capture_time_s": capture_s, "out": str(out), "cache": str(cached)}
    summary["measured"] = {k: v for k, v in source.to_dict().items() if k not in ("kind", "path")}
    fwd = summary["forward_time_s"]
    summary["sum_over_forward"] = summary["total_time_s"] / fwd if fwd else None
    if json_out:
        print_json({**summary, "top_ops": top_ops(prof, top)})
        return
    print_profile_summary(prof, summary, top)


def top_ops(prof: Profile, top: int) -> list[dict]:
    """Time per operator type, largest first: where the model spends its time."""
    agg: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for n in prof.nodes:
        extra = n.model_extra or {}
        row = agg[extra.get("op", "?")]
        row[0] += n.time_s
        row[1] += 1
        row[2] += int(extra.get("flops", 0))
    total = prof.total_time() or 1.0
    rows = [{"op": op, "time_s": t, "share": t / total, "count": c, "flops": f} for op, (t, c, f) in agg.items()]
    return sorted(rows, key=lambda r: -r["time_s"])[:top]


def print_profile_summary(prof: Profile, summary: dict, top: int) -> None:
    table = Table(title=f"{prof.model}: top operators by time")
    for col in ("op", "count", "time", "share", "GFLOP"):
        table.add_column(col, justify="right" if col != "op" else "left")
    for r in top_ops(prof, top):
        table.add_row(
            r["op"],
            str(r["count"]),
            f"{r['time_s'] * 1e3:.2f} ms",
            f"{100 * r['share']:.1f}%",
            f"{r['flops'] / 1e9:.3f}",
        )
    print_table(table)
    fwd = summary["forward_time_s"]
    ratio = f" ({summary['sum_over_forward']:.2f}x of the model's own forward {fwd * 1e3:.1f} ms)" if fwd else ""
    console.print(f"nodes: {summary['nodes']}   sum of node times: {summary['total_time_s'] * 1e3:.1f} ms{ratio}")
    console.print(
        f"FLOPs: {summary['flops'] / 1e9:.2f} G   parameters: {format_bytes(summary['param_bytes'])}   "
        f"capture: {summary['capture_time_s']:.1f} s"
    )
    console.print(f"written: {summary['out']}\ncache updated: {summary['cache']}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.command()(profile)
