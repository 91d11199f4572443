"""Hand-given split choices for `--strategy hybrid` (--split-ratios, --chunks, --split-axis; declared in options.py).

The planner searches whatever is left open; what is given is checked against the cluster
(one share per device, shares adding up to 1, ...) and refused in one line when it cannot work.
"""

from __future__ import annotations

import math
from typing import Any

from edgeweave.errors import UserError


def hybrid_options(ratios: str | None, chunks: int | None, axis: str | None) -> Any:
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
    from edgeweave.plan.band import HybridOptions  # the band planner reaches torch: only when asked for

    return HybridOptions(ratios=shares, chunks=chunks, axis=axis)
