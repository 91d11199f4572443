"""Profiles on disk, and where a plan's profile came from.

A measured profile is reused instead of re-profiling a model for every command. It is keyed by
everything that changes its times (model, input shape and dtype, threads, torch version, host);
weights do not change times, so a checkpoint does not change the key. `edgeweave profile --out`
writes the same cache entry, so a quiet re-measurement replaces a noisy one.

A cached profile is silent by nature, and a profile measured on a busy host plans differently
(a 28% slower resnet50 plan on home-4 from a profile taken under load): so every plan reports
its `ProfileSource` (file, cache or measured now; when and where; the host's load then), and
`warnings()` says when the profile should not be trusted.

Importing this module does not import torch (planning from a profile file must not).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgeweave.cost.profile import Profile

DEFAULT_CACHE = Path.home() / ".cache" / "edgeweave"


# Bumped when the profiler starts measuring something new (2: region_costs; 3: their floors; 4: packed
# convolutions and band programs; 5: band programs with per-shape packings), so older cached
# profiles are measured again instead of silently lacking it.
PROFILE_FORMAT = 5

# The other work on the host while profiling, as a share of its cores, above which op times are
# suspect (the profiler's own threads are not counted).
BUSY_HOST_SHARE = 0.5
# The sum of op times against the model's own forward pass. The graph runner's packed
# convolutions make the sum 0.4-0.8x of an eager forward on a quiet host; past this ratio, the
# op timings were inflated (load that came and went while measuring, a cold cache).
MAX_SUM_OVER_FORWARD = 1.3


def profile_key(spec: str, input_shape: tuple[int, ...] | None, threads: int) -> str:
    raw = json.dumps([spec, list(input_shape or []), threads, _torch_version(), platform.node(), PROFILE_FORMAT])
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in spec)[:40]
    return f"{safe}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"


def _torch_version() -> str:
    """torch's version without importing torch (the installed distribution's metadata)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "profiles" / f"{key}.json"


def read_cached(path: Path) -> Profile | None:
    """The profile stored at `path`, or None (absent or damaged: a damaged entry is removed, never fatal)."""
    if not path.exists():
        return None
    try:
        return Profile.load(path)
    except Exception:
        path.unlink(missing_ok=True)
        return None


def write_cached(path: Path, profile: Profile) -> None:
    """Store atomically: a reader never sees half a file, and concurrent writers do not mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    profile.save(tmp)
    tmp.replace(path)


@dataclass
class ProfileSource:
    """Which profile a plan used: `kind` is "file" (--profile), "cache" or "measured" (now, then cached)."""

    kind: str
    path: str | None
    measured_at: str | None = None
    host: str | None = None
    load_avg_1m: float | None = None
    cpus: int | None = None
    threads: int | None = None
    sum_over_forward: float | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, profile: Profile, kind: str, path: Path | str | None) -> ProfileSource:
        extra = profile.model_extra or {}
        ref = extra.get("reference_device") or {}
        forward = extra.get("forward_time_s")
        source = cls(
            kind=kind,
            path=None if path is None else str(path),
            measured_at=ref.get("measured_at"),
            host=ref.get("host"),
            load_avg_1m=ref.get("load_avg_1m"),
            cpus=ref.get("cpus"),
            threads=ref.get("threads", extra.get("threads")),
            sum_over_forward=profile.total_time() / forward if forward else None,
        )
        source.warnings = source._warnings()
        return source

    def _warnings(self) -> list[str]:
        out = []
        if self.load_avg_1m is not None and self.cpus:
            others = self.load_avg_1m - (self.threads or 1)
            if others > BUSY_HOST_SHARE * self.cpus:
                out.append(
                    f"the profile was measured on a busy host (load {self.load_avg_1m:.1f} on {self.cpus} cores): "
                    "op times may be inflated and plans skewed; re-measure on a quiet host with "
                    "`edgeweave profile MODEL --out FILE` (it also refreshes the cache)"
                )
        if self.sum_over_forward is not None and self.sum_over_forward > MAX_SUM_OVER_FORWARD:
            out.append(
                f"the profile's op times sum to {self.sum_over_forward:.2f}x the model's own forward pass "
                "(0.4-0.8x on a quiet host): they were inflated while measuring; re-measure with "
                "`edgeweave profile MODEL --out FILE`"
            )
        return out

    def describe(self) -> str:
        """One line: 'profile: cached PATH, measured 2026-11-30 05:12 UTC on HOST (load 0.9 on 2 cores)'."""
        where = {"file": "file", "cache": "cached", "measured": "measured now, cached as"}[self.kind]
        when = f"measured {self.measured_at}" if self.measured_at else "measurement time unknown (older profile)"
        host = f" on {self.host}" if self.host else ""
        load = f" (load {self.load_avg_1m:.1f} on {self.cpus} cores)" if self.load_avg_1m is not None else ""
        return f"profile: {where} {self.path or '-'}, {when}{host}{load}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
