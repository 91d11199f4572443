"""Online link estimates from the transfers a run already makes, and when they warrant a new plan.

Every receiver records, for each incoming transfer, its bytes and how long it took from when
the sender's link started on it to when it arrived (`Worker.link_samples`, shipped with each
heartbeat pong). Nothing here reads the configured rates: a robot's WiFi does not tell anyone
its rate, it only shows in how long messages take.

A transfer takes `latency + 8 * bytes / bandwidth`. With messages of several sizes on a link
(band-split plans stream chunks of different heights; idle links get probes of two sizes) a
least-squares fit through the fastest message of each size in a short window separates the
two; with one size only (a pipeline cut), the latency estimate is kept (initially the smallest
duration seen for a small message, else 0) and the rate follows from it. The rate is smoothed
with an EWMA per directed link.

`Hysteresis` decides when to re-plan: only when a link's estimate leaves the band
[low x planned, high x planned] for `confirm` consecutive samples, and never sooner than
`hold_s` after the last switch, so that noise around a band edge cannot make plans flap.
`PlanCache` keeps plans keyed by the quantised conditions they were made for.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Link = tuple[str, str]

# a message this small is all latency (a few hundred bits on a slow link is ~no time)
_SMALL_BYTES = 2048
# Messages of one size cannot separate latency (and per-message overhead) from rate: only from
# this size on is a single-size link's rate estimated (its latency then taken as the smallest
# seen for small messages, else 0). A link carrying only small messages of one size has no
# bandwidth estimate, and its bandwidth hardly matters to any plan.
_RATE_BYTES = 64 << 10


@dataclass
class LinkEstimate:
    """The smoothed view of one directed link."""

    bandwidth_bps: float | None = None
    latency_s: float = 0.0
    samples: int = 0
    window: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=16))

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth_bps": self.bandwidth_bps, "latency_s": self.latency_s, "samples": self.samples}


class LinkEstimator:
    """EWMA of bandwidth (and a latency estimate) per directed link, from receiver-side samples."""

    def __init__(self, alpha: float = 0.3, min_seconds: float = 1e-4):
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.min_seconds = min_seconds
        self.links: dict[Link, LinkEstimate] = {}

    def add(self, src: str, dst: str, nbytes: int, seconds: float) -> float | None:
        """Record one transfer; returns the link's new bandwidth estimate (bits/s), if any."""
        est = self.links.setdefault((src, dst), LinkEstimate())
        if nbytes <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return est.bandwidth_bps
        est.window.append((nbytes, seconds))
        if nbytes <= _SMALL_BYTES:
            est.latency_s = seconds if est.samples == 0 else min(est.latency_s or seconds, seconds)
            est.samples += 1
            return est.bandwidth_bps
        fit = _fit(est.window)
        naive = 8.0 * nbytes / seconds  # as if there were no latency: a lower bound
        if fit is not None:
            est.latency_s, slope = fit
            rate = 8.0 / slope
        elif nbytes < _RATE_BYTES:
            est.samples += 1
            return est.bandwidth_bps
        else:
            rate = 8.0 * nbytes / max(seconds - est.latency_s, self.min_seconds)
        # per-message overhead on a loaded host scatters durations: never believe that latency
        # explains more than 3/4 of a large message's time
        rate = min(max(rate, naive), 4 * naive)
        old = est.bandwidth_bps
        est.bandwidth_bps = rate if old is None else (1 - self.alpha) * old + self.alpha * rate
        est.samples += 1
        return est.bandwidth_bps

    def add_pong(self, receiver: str, header: Mapping[str, Any]) -> None:
        """The samples a worker shipped with a heartbeat pong: `links: [[src, bytes, seconds], ...]`."""
        for item in header.get("links") or ():
            try:
                src, nbytes, seconds = str(item[0]), int(item[1]), float(item[2])
            except (TypeError, ValueError, IndexError):
                continue  # telemetry is advisory: a bad sample is ignored, never trusted
            self.add(src, receiver, nbytes, seconds)

    def bandwidth(self, src: str, dst: str) -> float | None:
        est = self.links.get((src, dst))
        return est.bandwidth_bps if est else None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-ready: `{"a->b": {bandwidth_bps, latency_s, samples}}`."""
        return {f"{a}->{b}": e.to_dict() for (a, b), e in sorted(self.links.items())}


def _fit(window: deque[tuple[int, float]]) -> tuple[float, float] | None:
    """(latency, seconds per byte): a least-squares line seconds = lat + bytes * k through the
    lower envelope of the window (the fastest message of each size class, a quarter octave
    wide), when sizes differ enough. Processing delays on a busy host only ever add time, so
    the fastest messages are the ones that show the link."""
    fastest: dict[int, tuple[int, float]] = {}
    for nbytes, seconds in window:
        key = round(4 * math.log2(nbytes))
        if key not in fastest or seconds < fastest[key][1]:
            fastest[key] = (nbytes, seconds)
    points = list(fastest.values())
    sizes = [b for b, _ in points]
    if len(points) < 2 or max(sizes) < 1.5 * min(sizes):
        return None
    n = len(points)
    mx = sum(sizes) / n
    my = sum(s for _, s in points) / n
    sxx = sum((b - mx) ** 2 for b in sizes)
    sxy = sum((b - mx) * (s - my) for b, s in points)
    if sxx <= 0 or sxy <= 0:
        return None
    slope = sxy / sxx
    return max(0.0, my - slope * mx), slope


@dataclass
class Hysteresis:
    """Re-plan when a planned-for link's estimate stays outside [low, high] x planned.

    `planned` is what the current plan was made for (bits/s per directed link). `update` is fed
    every new estimate and returns True once `confirm` consecutive estimates of one link were
    outside the band and at least `hold_s` passed since the last `switched`.
    """

    low: float = 0.5
    high: float = 2.0
    confirm: int = 3
    hold_s: float = 1.0
    planned: dict[Link, float] = field(default_factory=dict)
    outside: dict[Link, int] = field(default_factory=dict)
    last_switch: float = -math.inf

    def __post_init__(self) -> None:
        if not (0 < self.low < 1 < self.high):
            raise ValueError(f"the band must satisfy 0 < low < 1 < high, got [{self.low}, {self.high}]")

    def update(self, link: Link, estimate: float, now: float) -> bool:
        ref = self.planned.get(link)
        if ref is None or estimate is None:
            return False
        if self.low * ref <= estimate <= self.high * ref:
            self.outside[link] = 0
            return False
        self.outside[link] = self.outside.get(link, 0) + 1
        return self.outside[link] >= self.confirm and now - self.last_switch >= self.hold_s

    def switched(self, planned: Mapping[Link, float], now: float) -> None:
        """A new plan made for `planned` is in place: measure against it from now on."""
        self.planned = dict(planned)
        self.outside = {}
        self.last_switch = now


def quantise(bps: float, steps_per_octave: int = 2) -> float:
    """The bandwidth rounded on a log scale (√2 apart by default): nearby conditions share a plan."""
    if bps <= 0:
        return bps
    k = round(math.log2(bps) * steps_per_octave)
    return 2.0 ** (k / steps_per_octave)


class PlanCache:
    """Plans keyed by the devices they may use and the quantised bandwidth of every link."""

    def __init__(self, make: Callable[[dict[Link, float], tuple[str, ...]], Any], steps_per_octave: int = 2):
        self.make = make
        self.steps = steps_per_octave
        self.plans: dict[tuple, Any] = {}
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()  # a background planner thread fills the cache too

    def key(self, conditions: Mapping[Link, float], devices: tuple[str, ...] = ()) -> tuple:
        return devices, tuple(sorted((link, quantise(bps, self.steps)) for link, bps in conditions.items()))

    def get(self, conditions: Mapping[Link, float], devices: tuple[str, ...] = ()) -> tuple[Any, dict[Link, float]]:
        """(plan, the quantised conditions it was made for); a planner's error is not cached."""
        key = self.nearest(conditions, devices) or self.key(conditions, devices)
        with self.lock:
            plan = self.plans.get(key)
            self.hits += plan is not None
            self.misses += plan is None
        if plan is None:
            plan = self.make(dict(key[1]), devices)  # outside the lock: planning takes seconds
            with self.lock:
                self.plans[key] = plan
        return plan, dict(key[1])

    def nearest(self, conditions: Mapping[Link, float], devices: tuple[str, ...] = ()) -> tuple | None:
        """The cached key for the same devices whose every link is within one quantisation step
        of `conditions` (the closest such), else None: nearby conditions share a plan."""
        want = dict(self.key(conditions, devices)[1])
        best, best_d = None, math.inf
        with self.lock:
            keys = list(self.plans)
        for key in keys:
            if key[0] != devices or {link for link, _ in key[1]} != want.keys():
                continue
            d = max(abs(math.log2(bps / want[link])) for link, bps in key[1]) if want else 0.0
            if d <= 1.0 / self.steps + 1e-9 and d < best_d:
                best, best_d = key, d
        return best

    def put(self, conditions: Mapping[Link, float], devices: tuple[str, ...], plan: Any) -> None:
        """Remember a plan made elsewhere (the one a run starts with) for `conditions`."""
        with self.lock:
            self.plans.setdefault(self.key(conditions, devices), plan)

    def has(self, conditions: Mapping[Link, float], devices: tuple[str, ...] = ()) -> bool:
        return self.nearest(conditions, devices) is not None
