"""Hand-given split choices for `--strategy hybrid`: --split-ratios, --chunks, --split-axis.

The planner searches whatever is left open; what is given is checked against the cluster
(one share per device, shares adding up to 1, ...) and refused in one line when it cannot work.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from edgeweave.errors import UserError
from edgeweave.plan.band import HybridOptions

SplitRatiosOpt = Annotated[
    str | None,
    typer.Option(
        "--split-ratios",
        help="hybrid: each device's share of the split, the source first then the cluster's order "
        "(e.g. 0.3,0.7); the planner still picks the segment, chunking and where the result is gathered.",
        show_default=False,
    ),
]
ChunksOpt = Annotated[
    int | None,
    typer.Option("--chunks", help="hybrid: stream every band in this many chunks (1-64).", show_default=False),
]
SplitAxisOpt = Annotated[
    str | None,
    typer.Option("--split-axis", help="hybrid: split feature maps by rows or cols.", show_default=False),
]


def hybrid_options(ratios: str | None, chunks: int | None, axis: str | None) -> HybridOptions | None:
    """The options as given, or None when none was; malformed ratios are a one-line error."""
    if ratios is None and chunks is None and axis is None:
        return None
    shares = None
    if ratios is not None:
        try:
            shares = tuple(float(r) for r in ratios.split(","))
        except ValueError:
            raise UserError(f"--split-ratios {ratios!r}: give comma-separated numbers such as 0.3,0.7") from None
        if any(not math.isfinite(r) for r in shares):
            raise UserError(f"--split-ratios {ratios!r}: every share must be a finite number")
    return HybridOptions(ratios=shares, chunks=chunks, axis=axis)
