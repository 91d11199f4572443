"""Energy per inference, from a timeline of tasks and each device's power model.

One function, `timeline_energy`, serves the simulator (predicted events) and the runtime
(measured events), so a predicted and a measured energy are computed by the same rules:

- A device draws `idle_w` for the whole window, plus `busy_w - idle_w` while it computes
  (the union of its compute intervals, so overlapping measured tasks are not counted twice).
- Its radio draws `radio_base_w` while any transfer it sends or receives is being transmitted
  (the union of those intervals) plus `radio_w_per_mbps * rate` for each transfer, on the sender
  and on the receiver (`radio_rx_w_per_mbps` on the receiver when given). `rate * duration` is
  the number of megabits moved whatever the rate, so the per-Mbps term is simply W/Mbps x
  megabits: the simulator (rate = link bandwidth) and the runtime (rate = bytes*8 / measured
  duration) agree on it exactly.
- The radio is active while a message is transmitted, NOT during the link's latency: a transfer
  event spans its link occupancy (first byte out to last byte out, plus the per-message software
  cost where one is counted), as the design notes' link model defines it (`cost/linkmodel.py`).
  Latency is propagation (air, switches, the peer's queue): the radios have sent or received
  every bit by then, and counting it would charge a chunked stream its latency once per chunk,
  the error the link model exists to remove. The simulator's events already end when the last
  byte has left; the runtime's measured transfers end at arrival, so `Session.collect_events`
  moves that to `arrival` and ends the event one link latency earlier.
- Radio power adds to idle/busy power: the radio is a separate consumer (Huang et al. measured
  it as the phone's power above its screen-on idle baseline).

What "per inference" means (`energy_j` in the JSON):
- one request alone: the window runs from its arrival to its completion (its latency). This is
  what the robot's battery pays per frame when frames are spaced out; idle time between frames
  is the application's, not the inference's.
- a stream (`stream_energy_j`): energy of every counted device over the makespan, divided by
  the number of requests (idle counted for the whole makespan).

Devices counted: the plan's devices (those that run tasks). A cluster device the plan does not
use is not charged: it may be off, or busy with someone else's work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edgeweave.cost.cluster import Cluster, PowerModel
from edgeweave.errors import UserError


@dataclass(frozen=True)
class DeviceEnergy:
    """One device's energy over a window, split by what drew it (joules and seconds)."""

    energy_j: float
    idle_j: float  # idle_w over the whole window
    compute_j: float  # (busy_w - idle_w) while computing
    radio_j: float  # base while the radio is active + per-Mbps x megabits
    busy_s: float
    radio_s: float
    megabits: float  # sent + received


@dataclass(frozen=True)
class EnergyReport:
    """Energy of every counted device over one window; `source_j` is the source's (the battery)."""

    window_s: float
    source: str
    devices: dict[str, DeviceEnergy]

    @property
    def total_j(self) -> float:
        return sum(d.energy_j for d in self.devices.values())

    @property
    def source_j(self) -> float:
        return self.devices[self.source].energy_j if self.source in self.devices else 0.0

    def scaled(self, factor: float) -> EnergyReport:
        """The same report with every joule multiplied (e.g. 1/requests for per-request figures)."""
        devices = {
            name: DeviceEnergy(
                d.energy_j * factor,
                d.idle_j * factor,
                d.compute_j * factor,
                d.radio_j * factor,
                d.busy_s * factor,
                d.radio_s * factor,
                d.megabits * factor,
            )
            for name, d in self.devices.items()
        }
        return EnergyReport(self.window_s * factor, self.source, devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_j": self.total_j,
            "source_energy_j": self.source_j,
            "window_s": self.window_s,
            "devices": {name: asdict(d) for name, d in self.devices.items()},
        }


def power_models(cluster: Cluster, devices: Iterable[str]) -> dict[str, PowerModel]:
    """The complete power model of every device named, or a UserError naming device and field."""
    return {name: cluster.device(name).require_power() for name in devices}


def missing_power(cluster: Cluster, devices: Iterable[str]) -> str | None:
    """Why energy cannot be computed for these devices (the UserError's line), or None if it can."""
    try:
        power_models(cluster, devices)
    except UserError as exc:
        return str(exc)
    return None


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Total length of the union of intervals, clipped to [lo, hi]."""
    total, reach = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, hi)
        if b > a:
            total += b - a
            reach = b
    return total


def _get(event: Any, key: str) -> Any:
    return event[key] if isinstance(event, Mapping) else getattr(event, key)


def timeline_energy(
    events: Iterable[Any],
    power: Mapping[str, PowerModel],
    source: str,
    start: float,
    end: float,
) -> EnergyReport:
    """Energy of every device in `power` over [start, end] from compute and transfer events.

    `events` are `TimelineEvent`s or dicts with resource ("dev:NAME" / "link:SRC->DST"), start,
    end, kind and bytes. Events outside the window are clipped (a transfer's megabits count in
    proportion to the part inside). Devices in `power` with no events draw idle power only.
    """
    if end < start:
        raise ValueError(f"energy window ends before it starts ({start} > {end})")
    busy: dict[str, list[tuple[float, float]]] = {d: [] for d in power}
    radio: dict[str, list[tuple[float, float]]] = {d: [] for d in power}
    radio_var_j = dict.fromkeys(power, 0.0)
    megabits = dict.fromkeys(power, 0.0)
    for event in events:
        kind, resource = str(_get(event, "kind")), str(_get(event, "resource"))
        a, b = float(_get(event, "start")), float(_get(event, "end"))
        name = resource.split(":", 1)[1]
        if kind == "compute":
            if name in busy:
                busy[name].append((a, b))
            continue
        src, _, dst = name.partition("->")
        inside = _union_length([(a, b)], start, end)
        share = inside / (b - a) if b > a else (1.0 if start <= a <= end else 0.0)
        mbits = float(_get(event, "bytes")) * 8 / 1e6 * share
        for dev, receiving in ((src, False), (dst, True)):
            if dev not in power:
                continue
            model = power[dev]
            per_mbps = model.radio_rx_w_per_mbps if receiving and model.radio_rx_w_per_mbps is not None else None
            radio[dev].append((a, b))
            radio_var_j[dev] += (model.radio_w_per_mbps if per_mbps is None else per_mbps) * mbits
            megabits[dev] += mbits
    window = end - start
    devices = {}
    for dev, model in power.items():
        assert model.idle_w is not None and model.busy_w is not None  # power_models checked it
        busy_s = _union_length(busy[dev], start, end)
        radio_s = _union_length(radio[dev], start, end)
        idle_j = model.idle_w * window
        compute_j = (model.busy_w - model.idle_w) * busy_s
        radio_j = model.radio_base_w * radio_s + radio_var_j[dev]
        devices[dev] = DeviceEnergy(
            idle_j + compute_j + radio_j, idle_j, compute_j, radio_j, busy_s, radio_s, megabits[dev]
        )
    return EnergyReport(window, source, devices)


def request_energy(
    events: Iterable[Any], power: Mapping[str, PowerModel], source: str, request: int, start: float, end: float
) -> EnergyReport:
    """Energy of one request alone: only its own events, over its own [arrival, completion]."""
    own = [e for e in events if int(_get(e, "request")) == request]
    return timeline_energy(own, power, source, start, end)


def energy_fields(single: EnergyReport | None, stream: EnergyReport | None, why_not: str | None) -> dict[str, Any]:
    """The energy keys of a `predicted` block or a run's JSON (None with the reason when unknown)."""
    if single is None:
        return {"energy_j": None, "source_energy_j": None, "energy_note": why_not}
    out: dict[str, Any] = {
        "energy_j": single.total_j,
        "source_energy_j": single.source_j,
        "energy_per_device_j": {name: d.energy_j for name, d in single.devices.items()},
    }
    if stream is not None:
        out["stream_energy_j"] = stream.total_j
        out["stream_source_energy_j"] = stream.source_j
    return out


def check_energy_args(scope: str, budget_j: float | None, deadline_s: float | None) -> None:
    """One-line errors for energy options that cannot mean anything."""
    if scope not in ENERGY_SCOPES:
        raise UserError(f"unknown energy scope {scope!r}; choose one of {', '.join(ENERGY_SCOPES)}")
    if budget_j is not None and not budget_j > 0:
        raise UserError(f"the energy budget must be > 0 joules, got {budget_j!r}")
    if deadline_s is not None and not deadline_s > 0:
        raise UserError(f"the deadline must be > 0 seconds, got {deadline_s!r}")


ENERGY_SCOPES = ("source", "total")
