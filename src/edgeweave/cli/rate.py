"""The `--rate FPS` option shared by plan, simulate, run, bench and demo (see sim/stream.py)."""

from __future__ import annotations

from typing import Annotated

import typer

RateOpt = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="Camera frame rate (frames per second): frame k arrives at k / rate and latency counts from its "
        "arrival [default: every request ready at once].",
        show_default=False,
    ),
]
