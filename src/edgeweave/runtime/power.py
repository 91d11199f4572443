"""Real power readings, where the machine has them, and measured vs modelled energy of a run.

Sensors looked for (all read-only sysfs files, or a tool on PATH):
- Linux powercap / Intel RAPL: `/sys/class/powercap/*/energy_uj`, a cumulative counter in uJ
  (wraps at `max_energy_range_uj`);
- hwmon: `/sys/class/hwmon/*/energy*_input` (cumulative uJ) or `power*_input` (instantaneous uW,
  sampled by a thread and integrated); Jetson INA3221 rails appear here too on recent L4T;
- a Jetson's `tegrastats` (detected and reported; edgeweave does not parse its output: the same
  INA rails are read through hwmon).

A reading measures the WHOLE host: when every emulated device runs on this machine, it is the
sum of all of them (plus everyone else's work), so it is reported beside the modelled energy,
never instead of it. With no sensor (this development machine) the run says so.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeweave.cost.cluster import Cluster
from edgeweave.cost.energy import energy_fields, missing_power, power_models, request_energy, timeline_energy


@dataclass(frozen=True)
class Sensor:
    """One readable sensor file: a cumulative energy counter (uJ) or an instantaneous power (uW)."""

    path: Path
    kind: str  # "energy_uj" or "power_uw"
    label: str
    wrap_uj: int | None = None

    def read(self) -> int:
        return int(self.path.read_text().split()[0])


def find_sensors(root: Path = Path("/")) -> list[Sensor]:
    """Every readable power/energy sensor under `root` (a fake tree in tests)."""
    sensors: list[Sensor] = []
    for counter in sorted((root / "sys/class/powercap").glob("*/energy_uj")):
        # Sub-zones (intel-rapl:0:0) are included in their package zone: count packages only.
        if counter.parent.name.count(":") > 1:
            continue
        wrap = counter.parent / "max_energy_range_uj"
        sensors.append(Sensor(counter, "energy_uj", f"powercap {counter.parent.name}", _int_or_none(wrap)))
    for hwmon in sorted((root / "sys/class/hwmon").glob("*")):
        name = _text_or(hwmon / "name", hwmon.name)
        energies = sorted(hwmon.glob("energy*_input"))
        for path in energies or sorted(hwmon.glob("power*_input")):
            kind = "energy_uj" if path.name.startswith("energy") else "power_uw"
            sensors.append(Sensor(path, kind, f"hwmon {name} {path.name}"))
    return [s for s in sensors if _readable(s)]


def probe(root: Path = Path("/")) -> dict[str, Any]:
    """What can be measured here: `{"available": bool, "sensors": [...], "why": ...}`."""
    sensors = find_sensors(root)
    tegrastats = shutil.which("tegrastats") if root == Path("/") else None
    if sensors:
        return {"available": True, "sensors": [s.label for s in sensors], "why": None}
    why = "no power sensor on this machine (no readable powercap/RAPL energy_uj, hwmon energy/power inputs"
    why += (
        "; tegrastats is installed but its rails are not exposed through hwmon)" if tegrastats else ", no tegrastats)"
    )
    return {"available": False, "sensors": [], "why": why}


def _readable(sensor: Sensor) -> bool:
    try:
        sensor.read()
    except (OSError, ValueError, IndexError):
        return False
    return True


def _int_or_none(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _text_or(path: Path, default: str) -> str:
    try:
        return path.read_text().strip() or default
    except OSError:
        return default


@dataclass
class PowerMeter:
    """Host energy over a window: counters read at both ends, power inputs sampled in between.

    Use as a context manager around the measured phase; `joules` is then the host's energy.
    """

    sensors: list[Sensor]
    interval_s: float = 0.05
    _start: dict[Path, int] = field(default_factory=dict)
    _power_j: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    joules: float | None = None
    seconds: float = 0.0

    def __enter__(self) -> PowerMeter:
        self._t0 = time.perf_counter()
        self._start = {s.path: s.read() for s in self.sensors if s.kind == "energy_uj"}
        if any(s.kind == "power_uw" for s in self.sensors):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        watched = [s for s in self.sensors if s.kind == "power_uw"]
        last_t, last_w = time.perf_counter(), sum(s.read() for s in watched) / 1e6
        while not self._stop.wait(self.interval_s):
            now, watts = time.perf_counter(), sum(s.read() for s in watched) / 1e6
            self._power_j += (now - last_t) * (watts + last_w) / 2  # trapezoid
            last_t, last_w = now, watts

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        total_uj = 0
        for s in self.sensors:
            if s.kind != "energy_uj":
                continue
            delta = s.read() - self._start[s.path]
            if delta < 0 and s.wrap_uj:  # the counter wrapped once
                delta += s.wrap_uj
            total_uj += max(delta, 0)
        self.joules = total_uj / 1e6 + self._power_j if self.sensors else None
        self.seconds = time.perf_counter() - self._t0


def measured_energy(
    cluster: Cluster,
    devices: list[str],
    source: str,
    single: list[tuple[int, float, float]],
    single_events: list[dict[str, Any]],
    stream_events: list[dict[str, Any]],
    stream_window: tuple[float, float],
    requests: int,
) -> dict[str, Any]:
    """Modelled energy of the measured timeline: the median of the single requests (each over its
    own [submission, result] window) and the stream's energy over its makespan per request.

    `single` lists (request id, submitted, finished) in the events' clock. Returns the keys of
    `energy_fields` (None with the reason when a device lacks power numbers).
    """
    why = missing_power(cluster, devices)
    if why is not None or not single:
        return energy_fields(None, None, why or "no single request was timed")
    power = power_models(cluster, devices)
    reports = sorted(
        (request_energy(single_events, power, source, rid, t0, t1) for rid, t0, t1 in single),
        key=lambda r: r.total_j,
    )
    median = reports[len(reports) // 2]
    stream = None
    if requests > 0:
        whole = timeline_energy(stream_events, power, source, *stream_window)
        stream = whole.scaled(1.0 / requests)
    return energy_fields(median, stream, None)
