"""Turning command-line inputs into a cluster and a profile (shared by plan, run and bench)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from edgeweave.cli.common import err_console
from edgeweave.cost.cluster import Cluster
from edgeweave.cost.profile import Profile
from edgeweave.cost.store import DEFAULT_CACHE, cached_profile, profile_key
from edgeweave.errors import UserError

ClusterOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        "-c",
        help="Cluster YAML. Default: the embedded robot + server on 50 Mbps WiFi.",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile", "-p", help="Profile JSON from `edgeweave profile` (skips measuring here).", show_default=False
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help=f"Where measured profiles are kept for reuse [default: {DEFAULT_CACHE}].",
        show_default=False,
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Measure afresh; do not read or write the cache.")]


def default_cluster_text() -> str:
    return resources.files("edgeweave").joinpath("data/robot-server.yaml").read_text()


def load_cluster(path: Path | None) -> Cluster:
    if path is None:
        return Cluster.from_yaml(default_cluster_text(), origin="<embedded robot-server>")
    return Cluster.load(path)


def prepare(choice, profile_path: Path | None, cache_dir, no_cache):
    """Model, captured graph and weights, and a profile whose nodes are that graph's nodes."""
    from edgeweave.cost.profile import Profile
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.cost.store import DEFAULT_CACHE
    from edgeweave.graph import capture

    with err_console.status(f"building and capturing {choice.spec} ..."):
        spec = choice.load()
        graph, weights = capture(spec.module, spec.example_input, spec.name)
    names = [n.name for n in graph.nodes]

    def measure() -> Profile:
        with err_console.status(f"profiling {spec.name} (once; cached for later runs) ..."):
            return profile_graph(graph, weights, spec.example_input, module=spec.module)

    if profile_path is not None:
        profile = Profile.load(profile_path)
        if [n.name for n in profile.nodes] != names:
            raise UserError(
                f"{profile_path}: its {len(profile.nodes)} nodes are not the {len(names)} nodes "
                f"{spec.name} captures to; profile it with `edgeweave profile {choice.spec}`"
            )
        return spec, graph, weights, profile
    key = profile_key(choice.cache_name, tuple(spec.input_shape), threads=1)
    profile = cached_profile(key, None if no_cache else (cache_dir or DEFAULT_CACHE), measure)
    if [n.name for n in profile.nodes] != names:  # a stale cache entry (e.g. another torch): measure again
        profile = measure()
    return spec, graph, weights, profile
