"""Turning command-line inputs into a cluster and a profile (shared by plan, run and bench)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from edgeweave.cli.common import ModelChoice, err_console
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


def resolve_profile(
    choice: ModelChoice | None, profile_path: Path | None, cache_dir: Path | None, no_cache: bool
) -> Profile:
    """A profile from --profile, else measured for MODEL here (cached); checks they agree if both are given."""
    if profile_path is not None:
        profile = Profile.load(profile_path)
        if choice is not None:
            from edgeweave.graph import capture

            spec = choice.load()
            graph, _ = capture(spec.module, spec.example_input, spec.name)
            if len(graph) != len(profile.nodes):
                raise UserError(
                    f"{profile_path}: has {len(profile.nodes)} nodes but {spec.name} captures to "
                    f"{len(graph)}; profile this model with `edgeweave profile {choice.spec}`"
                )
        return profile
    if choice is None:
        raise UserError("give a MODEL or --profile P.json")
    from edgeweave.zoo import parse_input_shape

    shape = parse_input_shape(choice.input_shape) if choice.input_shape else None
    key = profile_key(choice.spec, shape, threads=1)
    cache = None if no_cache else (cache_dir or DEFAULT_CACHE)
    return cached_profile(key, cache, lambda: measure(choice))


def measure(choice: ModelChoice) -> Profile:
    from edgeweave.cost.profiler import profile_graph
    from edgeweave.graph import capture

    with err_console.status(f"capturing and profiling {choice.spec} (once; reused from the cache later) ..."):
        spec = choice.load()
        graph, weights = capture(spec.module, spec.example_input, spec.name)
        return profile_graph(graph, weights, spec.example_input, module=spec.module)
