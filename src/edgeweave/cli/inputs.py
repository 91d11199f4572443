"""Turning command-line inputs into a cluster, a profile and a captured model (plan, run, bench, demo)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgeweave.cli.common import ModelChoice, err_console
from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.cost.store import DEFAULT_CACHE, ProfileSource, cache_path, profile_key, read_cached, write_cached
from edgeweave.errors import UserError


def default_cluster_text() -> str:
    return resources.files("edgeweave").joinpath("data/robot-server.yaml").read_text()


def load_cluster(path: Path | None) -> Cluster:
    if path is None:
        return Cluster.from_yaml(default_cluster_text(), origin="<embedded robot-server>")
    return Cluster.load(path)


def load_profile(path: Path) -> Profile:
    return Profile.load(path)


@dataclass
class Prepared:
    """A model built and captured, and the profile of exactly its nodes (with where it came from)."""

    spec: Any  # zoo.models.ModelSpec
    graph: Any  # graph.OpGraph
    weights: dict[str, Any]
    profile: Profile
    source: ProfileSource


def prepare(
    choice: ModelChoice, profile: Profile | None, profile_path: Path | None, cache_dir: Path | None, no_cache: bool
) -> Prepared:
    """Build and capture the model; take the --profile given, else the cached one, else measure (and cache)."""
    from edgeweave.zoo import capture_model

    with err_console.status(f"building and capturing {choice.spec} ..."):
        spec = choice.load()
        graph, weights = capture_model(spec)
    names = [n.name for n in graph.nodes]
    if profile is not None:
        if [n.name for n in profile.nodes] != names:
            raise UserError(
                f"{profile_path}: its {len(profile.nodes)} nodes are not the {len(names)} nodes "
                f"{spec.name} captures to; profile it with `edgeweave profile {choice.spec}`"
            )
        return Prepared(spec, graph, weights, profile, ProfileSource.of(profile, "file", profile_path))

    def measure() -> Profile:
        from edgeweave.cost.profiler import profile_graph

        with err_console.status(f"profiling {spec.name} (once; cached for later runs) ..."):
            return profile_graph(graph, weights, spec.example_input, module=spec.module)

    if no_cache:
        measured = measure()
        return Prepared(spec, graph, weights, measured, ProfileSource.of(measured, "measured", None))
    path = cache_path(cache_dir or DEFAULT_CACHE, profile_key(choice.cache_name, tuple(spec.input_shape), threads=1))
    cached = read_cached(path)
    if cached is not None and [n.name for n in cached.nodes] == names:  # else stale (another torch): re-measure
        return Prepared(spec, graph, weights, cached, ProfileSource.of(cached, "cache", path))
    measured = measure()
    write_cached(path, measured)
    return Prepared(spec, graph, weights, measured, ProfileSource.of(measured, "measured", path))


def update_cache(
    choice: ModelChoice, input_shape: tuple[int, ...], profile: Profile, threads: int, cache_dir: Path | None
) -> Path:
    """`edgeweave profile --out` also replaces the cache entry later commands would read."""
    path = cache_path(cache_dir or DEFAULT_CACHE, profile_key(choice.cache_name, input_shape, threads))
    write_cached(path, profile)
    return path
