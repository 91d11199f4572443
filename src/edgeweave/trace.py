"""Timelines of task executions: a Gantt chart (PNG) and a Chrome/Perfetto trace (JSON).

A module of its own, beside `sim` and `runtime` rather than inside either: the simulator
produces timelines and the runtime measures them, and both write them with these functions,
so neither layer imports the other for it.

Both writers take a generic list of `TimelineEvent`s, not a simulation result, because the same
pictures are wanted for MEASURED runs: the runtime records (resource, request, task, start, end)
for every task it executes and hands them to the same functions, so a prediction and a
measurement can be put side by side. Anything with an `events` attribute (a `SimResult`), a list
of `TimelineEvent`s, or a list of dicts with the same keys (an event list read back from JSON)
is accepted.

Resources are named "dev:NAME" (a device computing) and "link:SRC->DST" (one direction of a link
carrying a transfer). Times are in seconds; the runtime should pass them relative to its start.
A transfer's event spans the time its link direction was busy sending it (start to last byte
out); the link's latency comes after that and does not occupy the link, so the message's
`arrival` (end + latency) is carried apart, and drawn as a thin line after the bar.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Drawing more requests than this makes the bars too thin to read; the title says when we cut.
DEFAULT_MAX_REQUESTS = 30
# tab20 then tab20b: 40 colours, so every request drawn (at most DEFAULT_MAX_REQUESTS) has its own;
# neighbouring requests take far-apart entries (even ones first, then odd) so they never look alike
_PALETTE = [("tab20", k) for k in range(0, 20, 2)] + [("tab20b", k) for k in range(0, 20, 4)]
_PALETTE += [("tab20", k) for k in range(1, 20, 2)] + [("tab20b", k) for k in range(2, 20, 4)]
_PALETTE += [("tab20b", k) for k in range(1, 20, 2)]


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One task execution on one resource (simulated or measured)."""

    resource: str  # "dev:NAME" or "link:SRC->DST"
    request: int
    task: str
    start: float  # seconds
    end: float  # seconds
    kind: str  # "compute" or "transfer"
    bytes: int = 0
    arrival: float | None = None  # a transfer: when it reached the receiver (end + link latency)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def done(self) -> float:
        """When the task's result is available to its dependants: the arrival of a transfer, else its end."""
        return self.end if self.arrival is None else self.arrival

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_events(source: Any) -> list[TimelineEvent]:
    """Events from a result with `.events`, a list of `TimelineEvent`s, or a list of mappings."""
    items: Iterable[Any] = getattr(source, "events", source)
    events: list[TimelineEvent] = []
    for item in items:
        if isinstance(item, TimelineEvent):
            events.append(item)
        elif isinstance(item, Mapping):
            events.append(
                TimelineEvent(
                    resource=str(item["resource"]),
                    request=int(item["request"]),
                    task=str(item["task"]),
                    start=float(item["start"]),
                    end=float(item["end"]),
                    kind=str(item.get("kind", "compute")),
                    bytes=int(item.get("bytes", 0)),
                    arrival=None if item.get("arrival") is None else float(item["arrival"]),
                )
            )
        else:
            raise TypeError(f"not a timeline event: {type(item).__name__}")
    return events


def resource_order(events: list[TimelineEvent]) -> list[str]:
    """Resources in the order work first reaches them, which for a pipeline is the data flow.

    Ties (two resources starting at the same instant) keep the order of first appearance.
    """
    first: dict[str, tuple[float, int]] = {}
    for pos, ev in enumerate(events):
        if ev.resource not in first or ev.start < first[ev.resource][0]:
            first[ev.resource] = (ev.start, first.get(ev.resource, (0.0, pos))[1])
    return sorted(first, key=lambda name: first[name])


def _row_label(resource: str) -> str:
    kind, _, name = resource.partition(":")
    return f"{name} (link)" if kind == "link" else name if kind == "dev" else resource


def draw_timeline(
    source: Any,
    path: str | Path,
    title: str = "edgeweave timeline",
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> Path:
    """Draw a Gantt chart: one row per device and per link direction, bars coloured by request.

    Only the first `max_requests` requests are drawn (the title says so) so that bars stay
    readable; each drawn request has its own colour and each wide enough bar is labelled with its
    request index, so neighbouring requests are always told apart.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events = as_events(source)
    requests = sorted({ev.request for ev in events})
    shown = set(requests[:max_requests])
    if len(requests) > max_requests:
        title = f"{title} (first {max_requests} of {len(requests)} requests)"
    drawn = [ev for ev in events if ev.request in shown]
    rows = resource_order(drawn)
    row_of = {name: i for i, name in enumerate(rows)}

    def colour_of(request: int) -> Any:
        name, k = _PALETTE[request % len(_PALETTE)]
        return plt.get_cmap(name)(k)

    fig, ax = plt.subplots(figsize=(12, max(3.0, 1.2 + 0.45 * len(rows))))
    t0 = min((ev.start for ev in drawn), default=0.0)
    t1 = max((ev.done for ev in drawn), default=1.0)
    span = max(t1 - t0, 1e-12)
    for ev in drawn:
        colour = colour_of(ev.request)
        hatch = "//" if ev.kind == "transfer" else None
        ax.barh(
            row_of[ev.resource],
            ev.duration,
            left=ev.start,
            height=0.7,
            color=colour,
            edgecolor="black",
            linewidth=0.4,
            hatch=hatch,
        )
        if ev.done > ev.end:  # propagation: the message is on its way, the link already free
            ax.hlines(row_of[ev.resource], ev.end, ev.done, colors=[colour], linewidth=1.0)
        if ev.duration > 0.025 * span:
            ax.text(
                ev.start + ev.duration / 2, row_of[ev.resource], str(ev.request), ha="center", va="center", fontsize=7
            )
    ax.set_yticks(range(len(rows)), [_row_label(r) for r in rows])
    ax.invert_yaxis()  # first resource on top, like reading the data flow
    ax.set_xlim(t0, t0 + span * 1.01)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("device / link (hatched: transfer)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    legend = [Patch(facecolor=colour_of(r), edgecolor="black", label=str(r)) for r in sorted(shown)]
    if legend:
        ax.legend(
            handles=legend,
            title="request",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            title_fontsize=8,
            ncol=1 + (len(legend) - 1) // 15,
        )
    path = Path(path)
    # "tight" grows the canvas to whatever sticks out (the y-axis label, long device names, the
    # legend outside the axes), which tight_layout alone clipped
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def task_labels(plan: Any) -> dict[str, str]:
    """Task id -> what a reader recognises: "nodes 0-17 conv1 .. layer2.0.bn1" for a compute task
    of a plan that carries its nodes' module paths (`node_modules`, set by the command line)."""
    modules = getattr(plan, "node_modules", None) or []
    labels: dict[str, str] = {}
    for task in plan.tasks:
        if task.kind != "compute" or not task.nodes:
            continue
        first, last = task.nodes[0], task.nodes[-1]
        span = f"nodes {first}-{last}" if last != first else f"node {first}"
        if last < len(modules) and modules[first]:
            span += f" {modules[first]}" if last == first else f" {modules[first]} .. {modules[last] or '?'}"
        labels[task.id] = span
    return labels


def trace_events(source: Any, name: str = "edgeweave", labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Chrome trace events: metadata naming the process and one thread per resource, then "X" events;
    `labels` (task id -> text, see `task_labels`) go into each event's args."""
    events = as_events(source)
    rows = resource_order(events)
    tid = {res: i + 1 for i, res in enumerate(rows)}
    out: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": name}}]
    for res in rows:
        out.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid[res], "args": {"name": res}})
        out.append(
            {"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid[res], "args": {"sort_index": tid[res]}}
        )
    for ev in events:
        out.append(
            {
                "name": f"{ev.task} r{ev.request}",
                "cat": ev.kind,
                "ph": "X",
                "pid": 1,
                "tid": tid[ev.resource],
                "ts": ev.start * 1e6,
                "dur": ev.duration * 1e6,
                "args": {"request": ev.request, "task": ev.task, "bytes": ev.bytes}
                | ({} if ev.arrival is None else {"arrival_us": ev.arrival * 1e6})
                | ({"nodes": labels[ev.task]} if labels and ev.task in labels else {}),
            }
        )
    return out


def write_trace(
    source: Any, path: str | Path, name: str = "edgeweave", labels: Mapping[str, str] | None = None
) -> Path:
    """Write a trace that chrome://tracing and ui.perfetto.dev open (ts/dur in microseconds)."""
    path = Path(path)
    path.write_text(json.dumps({"traceEvents": trace_events(source, name, labels), "displayTimeUnit": "ms"}))
    return path
