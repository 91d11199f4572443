"""How `run`, `bench` and `demo` report: measured against predicted, strategies side by side, and
a closing summary that tells the story (who won, by how much, why, which strategies agreed).

Two latencies appear everywhere and are defined where they are printed (`LATENCY_TERMS`): a
frame alone is what one camera frame costs; the stream's p50 counts queueing, and with every
request sent at once it is about twice the frame's.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from edgeweave.cli.common import console, print_table

LATENCY_TERMS = (
    "frame = median latency of a frame run alone (what one camera frame costs); "
    "stream p50 = median latency of the {n} requests {how}, queueing included"
)


def latency_terms(r: dict[str, Any]) -> str:
    fps = (r.get("predicted") or {}).get("stream") or {}
    how = (
        f"arriving at {fps['rate_per_s']:g} frames/s, counted from each arrival"
        if fps
        else "sent at once (so about twice a frame's latency or more: each waits for those ahead)"
    )
    return LATENCY_TERMS.format(n=r["requests"], how=how)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f} ms"


def _num_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def _joules(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} J"


def print_run(r: dict[str, Any]) -> None:
    p = r["predicted"]
    table = Table(
        title=f"{r['model']} {r['strategy']} ({r['objective']}): {r['requests']} requests, measured vs predicted"
    )
    for col in ("", "measured", "predicted", "meas / pred"):
        table.add_column(col, justify="left" if not col else "right")
    fps = p.get("stream") or {}  # frames at --rate: latency from arrival, predicted at the same rate
    at = f" at {fps['rate_per_s']:g}/s" if fps else ""
    p50 = fps.get("latency_p50_s", p.get("stream_p50_latency_s"))
    rows = [
        ("latency, frame alone", r["single_latency_s"], p.get("latency_s")),
        (f"latency, stream p50{at}", r["latency_s"]["p50"], p50),
        (f"latency, stream p95{at}", r["latency_s"]["p95"], fps.get("latency_p95_s")),
    ]
    for label, m, pr in rows:
        table.add_row(label, _ms(m), _ms(pr), f"{m / pr:.2f}" if m and pr else "")
    tp, pp = r["throughput_per_s"], fps.get("throughput_per_s", p.get("throughput_per_s"))
    table.add_row("throughput", f"{tp:.2f}/s", f"{pp:.2f}/s" if pp else "-", f"{tp / pp:.2f}" if pp else "")
    for label, key in (("energy/inference, source", "source_energy_j"), ("energy/inference, all", "energy_j")):
        m, pr = r.get(key), p.get(key)
        if m is not None or pr is not None:
            table.add_row(label, _joules(m), _joules(pr), f"{m / pr:.2f}" if m and pr else "")
    print_table(table)
    console.print(latency_terms(r), soft_wrap=True)
    power = r.get("measured_power") or {}
    if power.get("available"):
        console.print(f"host energy measured by {', '.join(power['sensors'])}: {power['host_energy_j']:.2f} J (stream)")
    elif power:
        console.print(f"measured energy: {power.get('why')}; energy above is modelled from the measured timeline")
    dev = Table(title="devices (stream)")
    for col in ("device", "tasks", "compute", "busy (padded)", "idle", "use"):
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
    print_table(dev)
    if r["links"]:
        links = Table(title="links (measured at the receiver)")
        for col in ("link", "transfers", "bytes", "busy"):
            links.add_column(col, justify="left" if col == "link" else "right")
        for name, link in r["links"].items():
            links.add_row(name, str(link["transfers"]), f"{link['bytes'] / 2**20:.2f} MiB", _ms(link["busy_s"]))
        print_table(links)
    print_overruns([r])
    print_profile_source(r)
    verdict = "[green]exact[/]" if r["correct"] else "[red]WRONG[/]"
    console.print(f"outputs vs single-device execution: {verdict} (max abs err {r['max_abs_err']:.2e})")
    console.print(f"trace: {r.get('trace')}\ntimeline: {r.get('timeline')}", soft_wrap=True)


def print_overruns(results: list[dict[str, Any]]) -> None:
    """After a run: name the devices whose compute ran past their emulated time."""
    for r in results:
        over = {name: d["overruns"] for name, d in r["devices"].items() if d.get("overruns")}
        if over:
            console.print(
                f"[yellow]warning:[/] {r['strategy']}: compute ran past the emulated device time ("
                + ", ".join(f"{n}: {k} tasks" for n, k in over.items())
                + "): this machine was too busy to emulate these devices faithfully; measured times are inflated",
                soft_wrap=True,
            )


def print_comparison(results: list[dict[str, Any]], title: str | None = None) -> None:
    """Strategies side by side: measured (and predicted) frame latency, stream latency, throughput, energy.

    Eight narrow columns with two-line headers and no vertical rules fit 80 columns on a
    terminal; in a pipe the table is markdown (see `print_table`).
    """
    energy = any(r.get("source_energy_j") is not None for r in results)
    table = Table(
        title=title or f"{results[0]['model']}: strategies run for real",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        title_justify="left",
    )
    columns = ["frame\nms", "pred\nms", "stream\np50 ms", "frames\nper s", "pred\nper s"]
    if energy:
        columns.append("src J")
    columns.append("exact")
    table.add_column("strategy", no_wrap=True, min_width=max(len(r["strategy"]) for r in results))
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        p = r["predicted"]
        row = [
            r["strategy"],
            _num_ms(r["single_latency_s"]),
            _num_ms(p.get("latency_s")),
            _num_ms(r["latency_s"]["p50"]),
            f"{r['throughput_per_s']:.2f}",
            f"{p.get('throughput_per_s', 0):.2f}",
        ]
        if energy:
            row.append("-" if r.get("source_energy_j") is None else f"{r['source_energy_j']:.3f}")
        row.append("yes" if r["correct"] else "NO")
        table.add_row(*row)
    print_table(table)
    console.print(latency_terms(results[0]), soft_wrap=True)
    print_overruns(results)


# --------------------------------------------------------------------------- the closing summary


def plan_shape(r: dict[str, Any]) -> str:
    """A plan in a few words: "all on server", "all on server, the source sending 8 messages a frame"
    (the frame streamed in chunks), "split over robot, server"."""
    devices = r.get("plan_devices") or [d for d, v in r["devices"].items() if v.get("tasks")]
    sent = r.get("plan_messages_out") or 0
    streamed = f", the source sending {sent} messages a frame" if sent > 1 else ""
    if len(devices) == 1:
        return f"all on {devices[0]}{streamed}"
    return f"split over {', '.join(devices)}{streamed}"


def plan_key(plan: Any) -> str:
    """Equal for two plans that place and move the same work (whatever strategy made them)."""
    import hashlib

    parts = [
        f"c {t.device} {t.nodes} {t.region}" if t.kind == "compute" else f"x {t.src} {t.dst} {t.bytes}"
        for t in plan.tasks
    ]
    return hashlib.sha1("\n".join(sorted(parts)).encode()).hexdigest()[:12]


def _bound(r: dict[str, Any], hint: bool = True) -> str:
    """Why a run measured what it did: a frame's time on links against its time computing (the
    emulated devices' busy time), and the busiest resource of its stream."""
    n = max(r["requests"], 1)
    busiest = max(
        [(d["busy_s"], f"device {name} computing") for name, d in r["devices"].items()]
        + [(link["busy_s"], f"link {name} sending") for name, link in r["links"].items()],
        default=(0.0, "nothing"),
    )
    link_ms = sum(link["busy_s"] for link in r["links"].values()) / n * 1e3
    # busy_s: what the emulated devices took (a slow device's tasks padded to its speed)
    compute_ms = sum(d["busy_s"] for d in r["devices"].values()) / n * 1e3
    if link_ms > compute_ms:
        kind = "link-bound"
        advice = "fewer bytes on the link would help most (camera frames: --input uint8-image sends 4x less)"
    else:
        kind = "compute-bound"
        advice = "faster devices, or more of them sharing the work, would help most"
    text = f"{kind}: per frame {link_ms:.1f} ms on links, {compute_ms:.1f} ms computing"
    if not hint:
        return text
    return f"{text}; the stream's busiest resource is {busiest[1]}; {advice}"


def summary_lines(results: list[dict[str, Any]]) -> list[str]:
    """Who won, by how much and why, and which strategies chose the same plan (plain text).

    Strategies that chose the same plan are one contender, scored by the median of their runs:
    their differences are measurement noise, and naming one of them the winner would be noise too.
    """
    if not results:
        return []
    import statistics

    objective = results[0].get("objective", "latency")
    pool = [r for r in results if r["correct"]] or results
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in pool:
        groups.setdefault(r.get("plan_key") or r["strategy"], []).append(r)
    if objective == "throughput":

        def score(group: list[dict[str, Any]]) -> float:
            return -statistics.median(r["throughput_per_s"] for r in group)

        def shown(group: list[dict[str, Any]]) -> str:
            return f"{-score(group):.2f} frames/s"

        def versus(best: list[dict[str, Any]], other: list[dict[str, Any]]) -> str:
            return f"{score(best) / min(score(other), -1e-12):.2f}x the throughput of {_names(other)}"
    else:

        def score(group: list[dict[str, Any]]) -> float:
            return statistics.median(r["single_latency_s"] for r in group)

        def shown(group: list[dict[str, Any]]) -> str:
            return f"{score(group) * 1e3:.1f} ms per frame"

        def versus(best: list[dict[str, Any]], other: list[dict[str, Any]]) -> str:
            return f"{score(other) / score(best):.2f}x faster than {_names(other)}"

    ranked = sorted(groups.values(), key=score)
    best = ranked[0]
    same = " (the same plan, chosen by each)" if len(best) > 1 else ""
    lines = [f"winner ({objective}): {_names(best)}, {shown(best)}, {plan_shape(best[0])}{same}"]
    beaten = []
    if len(ranked) > 1:
        beaten.append(f"{versus(best, ranked[1])} ({plan_shape(ranked[1][0])})")
    local = next((g for g in ranked[2:] if any(r["strategy"] == "local" for r in g)), None)
    if local is not None:
        beaten.append(versus(best, local))
    if beaten:
        lines.append("  " + "; ".join(beaten))
    else:
        lines.append("  every strategy chose this plan")
    lines.append(f"  why: {_bound(best[0])}")
    if len(ranked) > 1:
        lines.append(f"  {_names(ranked[1])}: {_bound(ranked[1][0], hint=False)}")
    for group in ranked[1:]:
        if len(group) > 1:
            lines.append(f"  same plan ({plan_shape(group[0])}): {', '.join(r['strategy'] for r in group)}")
    wrong = [r["strategy"] for r in results if not r["correct"]]
    if wrong:
        lines.append(f"  WRONG outputs (not ranked): {', '.join(wrong)}")
    return lines


def _names(group: list[dict[str, Any]]) -> str:
    return " = ".join(r["strategy"] for r in group)


def print_summary(results: list[dict[str, Any]]) -> None:
    lines = summary_lines(results)
    if lines:
        console.print("\n".join(lines), soft_wrap=True, markup=False, highlight=False)
    print_profile_source(results[0] if results else {})


def print_profile_source(r: dict[str, Any]) -> None:
    """Which profile the plans were made from (file, cache or measured now; when, where, under what load)."""
    if r.get("profile"):
        from edgeweave.cost.store import ProfileSource

        console.print(ProfileSource(**r["profile"]).describe(), markup=False, highlight=False)
