"""Every option of `plan`, `run`, `bench` and `demo`, declared once, with one default each.

Three groups, each a dataclass: `ModelOptions` (what to build), `PlanningOptions` (what to plan
it on and for what), `ExecutionOptions` (how to run it for real). A command names the groups it
takes as parameters; `@grouped` spreads their fields into the command's signature for typer and
gathers them back into one object per group. So `run` and `bench` share their options by
construction instead of each spelling out the same 28, and an option has the same default in
every command that takes it. The rule, documented in the README:

- `--objective latency` everywhere: what one camera frame costs is what edgeweave is about;
  ask for `throughput` when requests stream.
- `--cluster` the embedded robot + server, `--strategy pipeline`, `--requests 20`.

Each group's `check()` validates what is cheap to validate (names, numbers, files, the cluster,
the profile JSON) before any model is built: a misspelt strategy costs a fraction of a second,
not a model capture.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_type_hints

import typer

from edgeweave.cli.common import ModelChoice
from edgeweave.cli.resilience_opts import AdaptOpt, FaultOpt, NoRecoverOpt
from edgeweave.errors import UserError

DEFAULT_OBJECTIVE = "latency"
DEFAULT_STRATEGY = "pipeline"
DEFAULT_REQUESTS = 20
LINK_MODES = ("shaper", "netns")
ENERGY_SCOPES = ("source", "total")


# --------------------------------------------------------------------------- what to build

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Zoo model name (see `edgeweave models`) or package.module:factory.",
        show_default=False,
        metavar="MODEL",
    ),
]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Same as the MODEL argument.", show_default=False)]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape", help="Input shape such as 1,3,224,224 (required for your own model).", show_default=False
    ),
]
InputDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-dtype",
        help="Input dtype: float32, float16, bfloat16, uint8, int32, int64 (token ids), bool ... "
        "(default: the zoo model's own; float32 for your own model).",
        show_default=False,
    ),
]
InputRangeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-range",
        help="LOW,HIGH: generated inputs are drawn from [LOW, HIGH), e.g. 0,30522 for token ids "
        "(default: standard normal floats; for integer ids the size of the model's first nn.Embedding).",
        show_default=False,
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="State dict (.pt/.pth or .safetensors) to load instead of random weights.",
        show_default=False,
    ),
]
InputKindOpt = Annotated[
    str,
    typer.Option(
        "--input",
        help="float (the model's own input) or uint8-image: the model takes camera pixels "
        "as uint8 and normalises them itself, so planners can send 4x fewer bytes.",
    ),
]
LabelsOpt = Annotated[
    bool,
    typer.Option(
        "--labels",
        help="End a segmentation model in a per-pixel argmax as uint8: the label map a robot uses "
        "(300 KB at 480x640 instead of 25 MB of logits).",
    ),
]


@dataclass
class ModelOptions:
    """MODEL and how to build it and its inputs."""

    panel: ClassVar[str] = "Model"

    model: ModelArg = None
    model_opt: ModelOpt = None
    input_shape: InputShapeOpt = None
    input_dtype: InputDtypeOpt = None
    input_range: InputRangeOpt = None
    checkpoint: CheckpointOpt = None
    input_kind: InputKindOpt = "float"
    labels: LabelsOpt = False

    @property
    def spec(self) -> str | None:
        if self.model and self.model_opt and self.model != self.model_opt:
            raise UserError(f"two different models given: {self.model!r} and --model {self.model_opt!r}")
        return self.model or self.model_opt

    def choice(self, required: bool = True, default: str | None = None) -> ModelChoice | None:
        """The checked model choice (nothing is built yet), None when no model was given and none is required."""
        from edgeweave.zoo import INPUT_KINDS, check_input_dtype, check_model_spec, parse_input_range, parse_input_shape

        spec = self.spec or default
        if spec is None:
            if required:
                raise UserError(
                    "no model given: name one (see `edgeweave models`) or pass --model package.module:factory"
                )
            return None
        check_model_spec(spec)
        shape = parse_input_shape(self.input_shape) if self.input_shape else None
        if ":" in spec and shape is None:
            raise UserError(f"model {spec} needs --input-shape (for example --input-shape 1,3,224,224)")
        dtype = check_input_dtype(self.input_dtype)
        value_range = parse_input_range(self.input_range, dtype)
        if self.input_kind not in INPUT_KINDS:
            raise UserError(f"unknown --input {self.input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise UserError(f"checkpoint {self.checkpoint} does not exist")
        return ModelChoice(spec, shape, self.checkpoint, self.input_kind, self.labels, dtype, value_range)


# --------------------------------------------------------------------------- what to plan for

StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        "-s",
        help="local, offload, neurosurgeon, dads, even, pipedream, pipeline (the exact heterogeneous optimiser), "
        "tensor (every layer split, gathered after each), hybrid-grid, stream-offload (the frame streamed in "
        "chunks to the best helper, computed as it arrives) or hybrid.",
    ),
]
StrategiesOpt = Annotated[str, typer.Option("--strategies", help="Comma-separated strategies to run side by side.")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        "-p",
        help="Profile JSON from `edgeweave profile` (default: measured here once, then cached).",
        show_default=False,
    ),
]
ClusterOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster",
        "-c",
        help="Cluster YAML (default: the embedded robot + server on 50 Mbps WiFi).",
        show_default=False,
    ),
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        "-O",
        help="latency (one request alone: a camera frame), throughput (minimise the bottleneck of a stream) "
        "or energy (joules per inference).",
    ),
]
EnergyScopeOpt = Annotated[
    str,
    typer.Option("--energy-scope", help="Energy to minimise or budget: source (the source device's battery) or total."),
]
EnergyBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--energy-budget",
        help="With --objective latency/throughput: the best plan using at most this many joules per inference.",
        show_default=False,
    ),
]
DeadlineOpt = Annotated[
    float | None,
    typer.Option(
        "--deadline",
        help="With --objective energy: the most frugal plan whose one-request latency is at most this many seconds.",
        show_default=False,
    ),
]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--rate",
        help="Camera frame rate (frames per second): frame k arrives at k / rate and latency counts from its "
        "arrival (default: every request ready at once).",
        show_default=False,
    ),
]
SplitRatiosOpt = Annotated[
    str | None,
    typer.Option(
        "--split-ratios",
        help="hybrid: each device's share of the split, the source first then the cluster's order "
        "(e.g. 0.3,0.7); the planner still picks the segment, chunking and where the result is gathered.",
        show_default=False,
    ),
]
ChunksOpt = Annotated[
    int | None,
    typer.Option("--chunks", help="hybrid: stream every band in this many chunks (1-64).", show_default=False),
]
SplitAxisOpt = Annotated[
    str | None,
    typer.Option("--split-axis", help="hybrid: split feature maps by rows or cols.", show_default=False),
]
TimeBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--time-budget",
        help="pipeline: stop the exact search after this many seconds with the best plan found, a proven "
        "lower bound and the gap (in the JSON's search block).",
        show_default=False,
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Where measured profiles are kept for reuse (default: ~/.cache/edgeweave).",
        show_default=False,
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Measure afresh; do not read or write the cache.")]


@dataclass
class PlanningOptions:
    """The cluster, the profile and every option a planner takes (the same for plan, run, bench, demo)."""

    panel: ClassVar[str] = "Planning"

    profile: ProfileOpt = None
    cluster: ClusterOpt = None
    objective: ObjectiveOpt = DEFAULT_OBJECTIVE
    energy_scope: EnergyScopeOpt = "source"
    energy_budget: EnergyBudgetOpt = None
    deadline: DeadlineOpt = None
    rate: RateOpt = None
    split_ratios: SplitRatiosOpt = None
    chunks: ChunksOpt = None
    split_axis: SplitAxisOpt = None
    time_budget: TimeBudgetOpt = None
    cache_dir: CacheOpt = None
    no_cache: NoCacheOpt = False

    def check(self, strategies: list[str], has_model: bool) -> Checked:
        """Validate every cheap option and load the cluster and the profile file, before any model is built."""
        from edgeweave.cli.inputs import load_cluster, load_profile
        from edgeweave.plan.strategies import GRAPH_STRATEGIES, check_strategy
        from edgeweave.sim.stream import check_rate

        if not strategies:
            raise UserError("no strategy given")
        for name in strategies:
            check_strategy(name, self.objective)
            if name in GRAPH_STRATEGIES and not has_model:
                raise UserError(
                    f"--strategy {name} needs the model itself (it analyses which operators can be split): "
                    "give MODEL, not only --profile"
                )
        if self.energy_scope not in ENERGY_SCOPES:
            raise UserError(f"unknown --energy-scope {self.energy_scope!r}; choose one of {', '.join(ENERGY_SCOPES)}")
        for flag, value in (
            ("--energy-budget", self.energy_budget),
            ("--deadline", self.deadline),
            ("--time-budget", self.time_budget),
        ):
            if value is not None and not value > 0:
                raise UserError(f"{flag} must be > 0, got {value:g}")
        check_rate(self.rate)
        if self.hybrid_given and "hybrid" not in strategies:
            raise UserError(
                f"--split-ratios, --chunks and --split-axis apply to --strategy hybrid, not {', '.join(strategies)}"
            )
        if self.split_axis is not None and self.split_axis not in ("rows", "cols"):
            raise UserError(f"split axis {self.split_axis!r} is not one of rows, cols")
        if self.chunks is not None and not 1 <= self.chunks <= 64:
            raise UserError(f"chunk count {self.chunks} must be between 1 and 64")
        cluster = load_cluster(self.cluster)
        profile = load_profile(self.profile) if self.profile is not None else None
        return Checked(cluster, profile, self.hybrid())

    @property
    def hybrid_given(self) -> bool:
        return self.split_ratios is not None or self.chunks is not None or self.split_axis is not None

    def hybrid(self) -> Any:
        """HybridOptions as given, or None when none was (the planner searches everything)."""
        if not self.hybrid_given:
            return None
        from edgeweave.cli.split_options import hybrid_options

        return hybrid_options(self.split_ratios, self.chunks, self.split_axis)

    def plan_kwargs(self, strategy: str, hybrid: Any) -> dict[str, Any]:
        """Keyword arguments of `make_plan` after (profile, cluster, strategy, objective, graph)."""
        return {
            "energy_scope": self.energy_scope,
            "energy_budget_j": self.energy_budget,
            "deadline_s": self.deadline,
            "hybrid": hybrid if strategy == "hybrid" else None,
            "time_budget_s": self.time_budget,
        }


@dataclass
class Checked:
    """What `PlanningOptions.check` loaded: the cluster, the --profile file (if given), hybrid options."""

    cluster: Any
    profile: Any
    hybrid: Any


# --------------------------------------------------------------------------- how to run it

RequestsOpt = Annotated[
    int, typer.Option("--requests", "-n", min=1, metavar="N", help="Requests to stream (after warm-up), at least 1.")
]
LinksOpt = Annotated[
    str,
    typer.Option("--links", help="shaper (in-process token bucket) or netns (Linux namespaces + tc, root only)."),
]
OutDirOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Folder for measured traces and timelines (names never collide: concurrent runs keep both).",
    ),
]
InflightOpt = Annotated[
    int | None,
    typer.Option(
        "--max-inflight",
        min=1,
        metavar="N",
        help="Requests in the system at once (default: one per plan task + 1).",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--connect-timeout", min=0.1, metavar="SECONDS", help="Seconds to wait for a worker.")
]
KeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys",
        help="Keys folder from `edgeweave keys`: every connection is then authenticated and encrypted (CURVE). "
        "Required when a device has a non-loopback address.",
        show_default=False,
    ),
]


InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Plaintext instead of this run's ephemeral CURVE keys: no authentication, no encryption. "
        "Loopback devices only; for debugging with a packet capture.",
    ),
]


@dataclass
class ExecutionOptions:
    """How `run`, `bench` and `demo` execute plans for real."""

    panel: ClassVar[str] = "Execution"

    requests: RequestsOpt = DEFAULT_REQUESTS
    links: LinksOpt = "shaper"
    out: OutDirOpt = Path("out")
    max_inflight: InflightOpt = None
    connect_timeout: TimeoutOpt = 5.0
    keys: KeysOpt = None
    adapt: AdaptOpt = False
    fault: FaultOpt = None
    no_recover: NoRecoverOpt = False
    insecure: InsecureOpt = False

    def check(self) -> Any:
        """Validate before capture and profiling; returns the run's ResilienceOptions."""
        from edgeweave.cli.resilience_opts import resilience

        if self.links not in LINK_MODES:
            raise UserError(f"unknown --links {self.links!r}: use shaper or netns")
        try:  # traces and timelines go here after minutes of running: a bad folder fails now
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--out {self.out}: cannot create the folder: {exc.strerror or exc}") from exc
        if not os.access(self.out, os.W_OK):
            raise UserError(f"--out {self.out}: the folder is not writable")
        if self.keys is not None and self.insecure:
            raise UserError("--keys and --insecure contradict each other: give one")
        if self.keys is not None:  # a broken keys folder fails before minutes of capture and profiling
            from edgeweave.runtime.security import COORDINATOR, load_keyring

            load_keyring(self.keys, COORDINATOR)
        return resilience(self.adapt, self.fault, self.no_recover)


# --------------------------------------------------------------------------- typer plumbing


def grouped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a typer command take option groups: a parameter annotated with one of the dataclasses
    above becomes that dataclass's fields in the signature typer reads, and is rebuilt from them."""
    hints = get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for name, param in inspect.signature(fn).parameters.items():
        annotation = hints.get(name, param.annotation)
        if dataclasses.is_dataclass(annotation):
            groups[name] = annotation
            field_hints = get_type_hints(annotation, include_extras=True)
            panel = getattr(annotation, "panel", None)
            for f in dataclasses.fields(annotation):
                hint = _in_panel(field_hints[f.name], panel)
                params.append(
                    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hint)
                )
        else:
            params.append(param.replace(annotation=annotation, kind=inspect.Parameter.KEYWORD_ONLY))
    # typer lists arguments in signature order: keep positional arguments (MODEL, PLAN) first
    params.sort(key=lambda p: not _is_argument(p.annotation))

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer must read the spread signature, not the grouped one
    return command


def _in_panel(annotation: Any, panel: str | None) -> Any:
    """The same Annotated option, shown under `panel` in --help (arguments keep their own panel)."""
    meta = getattr(annotation, "__metadata__", ())
    if panel is None or not meta or not isinstance(meta[0], typer.models.OptionInfo):
        return annotation
    info = copy.copy(meta[0])
    info.rich_help_panel = panel
    return Annotated[annotation.__origin__, info]


def _is_argument(annotation: Any) -> bool:
    return any(isinstance(meta, typer.models.ArgumentInfo) for meta in getattr(annotation, "__metadata__", ()))
