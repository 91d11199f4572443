"""`--adapt`, `--fault` and `--no-recover` for run and bench: re-plan on measured bandwidth,
inject failures, or fail fast instead of recovering (recovery is the default).

Re-planning itself is the runtime's (runtime/resilient.py); the CLI only supplies the planner
callback, the same `make_plan` call that made the first plan, and shows what happened.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from edgeweave.errors import UserError

AdaptOpt = Annotated[
    bool,
    typer.Option(
        "--adapt",
        help="Re-plan when the bandwidth measured on a link leaves [0.5x, 2x] of what the plan was made for.",
    ),
]
FaultOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fault",
        help="Inject a failure for a demo: DEVICE@N kills DEVICE's worker after N requests completed; "
        "DEVICE@N:5s takes its link down for 5 s (--links netns). Repeatable.",
        show_default=False,
    ),
]


NoRecoverOpt = Annotated[
    bool,
    typer.Option(
        "--no-recover",
        help="Fail at the first lost device instead of re-planning over the others and replaying "
        "the requests it held (the default).",
    ),
]


def resilience(adapt: bool, faults: list[str] | None, no_recover: bool = False) -> Any:
    """ResilienceOptions for the run: recovery is on unless `no_recover` (issue 13, item 6)."""
    if no_recover and faults:  # before the runtime (and torch) is imported: a cheap mistake
        raise UserError("--fault injects a failure to recover from; it cannot go with --no-recover")
    from edgeweave.runtime.resilient import Fault, ResilienceOptions

    return ResilienceOptions(adapt=adapt, faults=[Fault.parse(f) for f in faults or []], recover=not no_recover)


def print_recovery(r: dict[str, Any], console: Any) -> None:
    """The run's failures, re-plans, replays and recovery times, if it was a resilient run."""
    rec = r.get("recovery")
    if not rec or not (rec["failures"] or rec["replans"]):
        return
    table = Table(title="re-plans and failures")
    for col in ("event", "devices / reason", "time"):
        table.add_column(col, justify="left" if col != "time" else "right")
    for f in rec["failures"]:
        took = f.get("recovery_s")
        detail = f"detected after {f.get('detect_s', 0) * 1e3:.0f} ms, {f['replayed']} requests replayed"
        table.add_row(f"failure {f['device']}", f["reason"], "-" if took is None else f"recovered in {took:.2f} s")
        table.add_row("", detail, "")
    for p in rec["replans"]:
        cond = ", ".join(f"{k} {v:.0f} Mbps" for k, v in p["conditions_mbps"].items())
        table.add_row(f"re-plan ({p['reason']})", f"{', '.join(p['devices'])}: {cond}", f"{p['switch_s'] * 1e3:.0f} ms")
    console.print(table)
    console.print(
        f"replayed {rec['replayed']} requests; plan cache {rec['plan_cache']['hits']} hits / "
        f"{rec['plan_cache']['misses']} misses"
        + (f"; [red]no plan possible:[/] {rec['no_plan']}" if rec.get("no_plan") else "")
    )
