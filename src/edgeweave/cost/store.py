"""Profiles on disk: reuse a measurement instead of re-profiling a model for every command.

A profile is keyed by everything that changes its times (model, input shape, threads, torch
version, host); weights do not change times, so a checkpoint does not change the key.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from edgeweave.cost.profile import Profile

DEFAULT_CACHE = Path.home() / ".cache" / "edgeweave"


# Bumped when the profiler starts measuring something new (2: region_costs; 3: their floors; 4: packed
# convolutions and band programs; 5: band programs with per-shape packings), so older cached
# profiles are measured again instead of silently lacking it.
PROFILE_FORMAT = 5


def profile_key(spec: str, input_shape: tuple[int, ...] | None, threads: int) -> str:
    raw = json.dumps([spec, list(input_shape or []), threads, torch.__version__, platform.node(), PROFILE_FORMAT])
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in spec)[:40]
    return f"{safe}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"


def cached_profile(key: str, cache_dir: Path | None, make: Callable[[], Profile]) -> Profile:
    """Load the profile stored under `key`, or make, store and return it (no cache: always make)."""
    if cache_dir is None:
        return make()
    path = Path(cache_dir) / "profiles" / f"{key}.json"
    if path.exists():
        try:
            return Profile.load(path)
        except Exception:  # a damaged cache entry is re-measured, never fatal
            path.unlink(missing_ok=True)
    profile = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    profile.save(tmp)
    tmp.replace(path)
    return profile
