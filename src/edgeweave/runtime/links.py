"""Application-level link emulation: every directed link paces its own messages.

The default runtime runs all devices as local processes joined by loopback TCP, which is far
faster than the links the plan was made for. So each sender thread holds one `LinkShaper` per
outgoing link and, before handing a message to ZeroMQ, asks it when the message would have
arrived on the emulated link (`reserve`) and sleeps until then (`wait_until`). The receiver
then sees the message at the emulated arrival time.

The shaper follows the design notes' link model (`cost/linkmodel.py`), as the simulator and the
planners do: the link is a FIFO pipe that carries one message's bytes at a time, so a message
holds it for its transmission time (bytes / bandwidth) and the next one queues behind that; the
message arrives `latency` after its last byte has left. Latency is propagation delay and does not
hold the link: two back-to-back messages of B bytes arrive at B/bw + L and 2*B/bw + L, not
2*(B/bw + L). So a measured run can be compared with a prediction message by message.
A bandwidth trace (`time_s,mbps` CSV) makes the rate vary over time; the transmission time is
the integral of the piecewise-constant rate.

With kernel shaping (`--links netns`, see `netns.py`) tc already limits the rate and queues the
messages, and the kernel here has no netem, so the shaper then adds only the latency, without
holding the link (`shape_bandwidth=False`): each message is handed to the kernel `latency` after
it was handed over, and the kernel's FIFO queue transmits it at the shaped rate.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeweave.cost.linkmodel import send_on_link
from edgeweave.errors import UserError

Trace = list[tuple[float, float]]

# wait_until sleeps coarsely until this long before the target, then in fine steps.
_FINE_WINDOW_S = 0.0015
_FINE_STEP_S = 0.0001


# ---------------------------------------------------------------------------------------------
# Bandwidth traces


def _parse_trace_line(line: str, origin: str) -> tuple[float, float] | None:
    """(time_s, bits/s) for one CSV line, None for a header line; UserError for anything else."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 2:
        raise UserError(f"{origin}: expected 'time_s,mbps', got {line.strip()!r}")
    try:
        t, mbps = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    if not (math.isfinite(t) and math.isfinite(mbps)):
        raise UserError(f"{origin}: time and rate must be finite numbers, got {line.strip()!r}")
    if t < 0 or mbps < 0:
        raise UserError(f"{origin}: time and rate must be >= 0, got {line.strip()!r}")
    return t, mbps * 1e6


def load_trace(path: str | Path) -> Trace:
    """Read a bandwidth trace: CSV `time_s,mbps`, one point per line, as (t, bits/s) pairs.

    A header line is allowed before the first point, `#` starts a comment, blank lines are
    skipped. Times must increase strictly. The rate of a point holds until the next point, and
    the last rate holds for ever, so the last rate must be > 0 (a message sent after the end of
    the trace must arrive). When the first point is later than 0 its rate also covers [0, t0).
    Every problem is a UserError naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such bandwidth trace file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected a time_s,mbps CSV trace)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the bandwidth trace: {exc.strerror or exc}") from None
    points: Trace = []
    last_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        origin = f"{path}: line {number}"
        point = _parse_trace_line(line, origin)
        if point is None:
            if points:
                raise UserError(f"{origin}: expected numbers 'time_s,mbps', got {raw.strip()!r}")
            continue  # the header
        if points and point[0] <= points[-1][0]:
            raise UserError(f"{origin}: times must increase, {point[0]:g} follows {points[-1][0]:g}")
        points.append(point)
        last_line = number
    if not points:
        raise UserError(f"{path}: the bandwidth trace has no points (expected lines 'time_s,mbps')")
    if points[-1][1] <= 0:
        raise UserError(f"{path}: line {last_line}: the last rate must be > 0 (it holds after the trace ends)")
    if points[0][0] > 0:
        points.insert(0, (0.0, points[0][1]))
    return points


def _checked_trace(trace: Sequence[Sequence[float]]) -> Trace:
    """A trace given in Python or JSON, checked like a file (ValueError: it is a programming error)."""
    points = [(float(t), float(bps)) for t, bps in trace]
    if not points:
        raise ValueError("a bandwidth trace needs at least one point")
    if any(not (math.isfinite(t) and math.isfinite(b)) or t < 0 or b < 0 for t, b in points):
        raise ValueError("trace times and rates must be finite and >= 0")
    if any(b[0] <= a[0] for a, b in zip(points[:-1], points[1:], strict=True)):
        raise ValueError("trace times must increase")
    if points[-1][1] <= 0:
        raise ValueError("the last rate of a trace must be > 0")
    if points[0][0] > 0:
        points.insert(0, (0.0, points[0][1]))
    return points


# ---------------------------------------------------------------------------------------------
# What a worker needs to know about one link


@dataclass
class LinkSpec:
    """One directed link as the runtime emulates it; JSON-safe via `to_dict` / `from_dict`.

    `trace`, when given, overrides `bandwidth_bps` (which stays the link's nominal rate, the
    one the planner used).
    """

    bandwidth_bps: float
    latency_s: float = 0.0
    trace: Trace | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_bps) and self.bandwidth_bps > 0):
            raise ValueError(f"bandwidth_bps must be a finite number > 0, got {self.bandwidth_bps}")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"latency_s must be a finite number >= 0, got {self.latency_s}")
        if self.trace is not None:
            self.trace = _checked_trace(self.trace)

    @classmethod
    def from_link(cls, link: Any, trace_path: str | Path | None = None) -> LinkSpec:
        """From a cluster `Link`; pass `Cluster.trace_path(a, b)` to load its trace file."""
        trace = load_trace(trace_path) if trace_path is not None else None
        return cls(bandwidth_bps=float(link.bandwidth_bps), latency_s=float(link.latency_s), trace=trace)

    @classmethod
    def for_pair(cls, cluster: Any, a: str, b: str) -> LinkSpec:
        """The a -> b link of a `Cluster`, its trace (if any) loaded."""
        return cls.from_link(cluster.link(a, b), cluster.trace_path(a, b))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: workers receive their links inside a JSON message."""
        trace = None if self.trace is None else [[t, bps] for t, bps in self.trace]
        return {"bandwidth_bps": self.bandwidth_bps, "latency_s": self.latency_s, "trace": trace}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkSpec:
        """Inverse of `to_dict` (JSON turned the trace's tuples into lists; they come back as tuples)."""
        trace = data.get("trace")
        return cls(
            bandwidth_bps=float(data["bandwidth_bps"]),
            latency_s=float(data.get("latency_s", 0.0)),
            trace=None if trace is None else [(float(t), float(bps)) for t, bps in trace],
        )


# ---------------------------------------------------------------------------------------------
# The shaper


class LinkShaper:
    """Arrival times of the messages on one directed link.

    One shaper belongs to ONE sender thread (the one that sends on that link), so it keeps no
    lock; sharing it between threads would need one around `reserve`. Times are absolute
    `time.monotonic()` seconds; `epoch` is the monotonic time at which the trace starts (the
    run's start, the same for every link of a run so that traces line up).
    """

    def __init__(self, spec: LinkSpec, epoch: float, shape_bandwidth: bool = True):
        self.spec = spec
        self.epoch = float(epoch)
        self.shape_bandwidth = shape_bandwidth
        self._free_at = -math.inf
        trace = spec.trace or [(0.0, spec.bandwidth_bps)]
        self._times = [t for t, _ in trace]
        self._rates = [bps for _, bps in trace]

    @property
    def free_at(self) -> float:
        """When the last byte of every message reserved so far has left (latency not included)."""
        return self._free_at

    def rate_at(self, t_abs: float) -> float:
        """The link's rate (bits/s) at monotonic time `t_abs` (the first rate before the trace starts)."""
        i = bisect.bisect_right(self._times, t_abs - self.epoch) - 1
        return self._rates[max(i, 0)]

    def transmission_time(self, nbytes: int, start_abs: float) -> float:
        """Seconds to push `nbytes` through the link starting at `start_abs`: the rate integrated over time."""
        if nbytes < 0:
            raise ValueError(f"cannot send a negative number of bytes ({nbytes})")
        bits = nbytes * 8.0
        t = start_abs - self.epoch
        i = max(bisect.bisect_right(self._times, t) - 1, 0)
        elapsed = 0.0
        while True:
            rate = self._rates[i]
            if i + 1 == len(self._times):  # the last rate holds for ever (and is > 0)
                return elapsed + bits / rate
            span = self._times[i + 1] - t
            if span > 0:
                if rate > 0 and bits <= rate * span:
                    return elapsed + bits / rate
                bits -= rate * span
                elapsed += span
                t = self._times[i + 1]
            i += 1

    def reserve(self, nbytes: int, now: float) -> tuple[float, float]:
        """Book the link for one message handed over at `now`: (start, deliver_at), monotonic seconds.

        start = when the link is free (not before `now`); the link is busy for the transmission
        time only (until start + transmission, `free_at`), and deliver_at = start + transmission
        time + latency: latency delays this message without delaying the next one. Without
        bandwidth shaping (the kernel transmits and queues) only the latency is added,
        deliver_at = start + latency, and the link is free again at `start`.

        Pass as `now` the time the message was handed to the link (e.g. when it was put in the
        sender thread's queue), not the time the thread got round to it: otherwise the time
        spent sending the previous message leaves the emulated link idle (~0.7% of a 50 Mbps
        link for 256 KiB messages over ZeroMQ).
        """
        start = max(now, self._free_at)
        if not self.shape_bandwidth:
            self._free_at = start
            return start, start + self.spec.latency_s
        sent = send_on_link(self._free_at, now, self.transmission_time(nbytes, start), self.spec.latency_s)
        self._free_at = sent.free_s
        return sent.start_s, sent.arrive_s


def wait_until(t: float, stop: threading.Event | None = None) -> bool:
    """Sleep until monotonic time `t`, to within a fraction of a millisecond.

    `time.sleep` may overshoot by the scheduler's slack, so it sleeps coarsely until ~1.5 ms
    before `t` and then in 0.1 ms steps (not a busy spin, which would starve the other worker
    threads of the GIL on a 2-core machine). With `stop`, returns False as soon as it is set
    (a sender thread being shut down), else True.
    """
    while True:
        remaining = t - time.monotonic()
        if remaining <= 0:
            return True
        if stop is not None and stop.is_set():
            return False
        if remaining > _FINE_WINDOW_S:
            coarse = remaining - _FINE_WINDOW_S
            if stop is not None:
                if stop.wait(coarse):
                    return False
            else:
                time.sleep(coarse)
        else:
            time.sleep(min(remaining, _FINE_STEP_S))
