"""Pieces every command shares: model options, JSON output, consoles and error reporting."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console

from edgeweave.errors import UserError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

ModelArg = Annotated[
    str | None,
    typer.Argument(help="Zoo model name (see `edgeweave models`) or package.module:factory.", show_default=False),
]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Same as the MODEL argument.", show_default=False)]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape", help="Input shape such as 1,3,224,224 (required for your own model).", show_default=False
    ),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        help="State dict (.pt/.pth or .safetensors) to load instead of random weights.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
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
class ModelChoice:
    """What the user asked for; loaded lazily because building a model can take seconds."""

    spec: str
    input_shape: str | None = None
    checkpoint: str | None = None
    input_kind: str = "float"
    labels: bool = False  # --labels: the model ends in a per-pixel argmax (uint8 label map)

    def load(self):
        from edgeweave.zoo import load_model, parse_input_shape

        shape = parse_input_shape(self.input_shape) if self.input_shape else None
        return load_model(
            self.spec, input_shape=shape, checkpoint=self.checkpoint, input_kind=self.input_kind, labels=self.labels
        )

    @property
    def cache_name(self) -> str:
        """The profile cache's name for this model as built (each variant captures other nodes)."""
        name = self.spec if self.input_kind == "float" else f"{self.spec}+{self.input_kind}"
        return f"{name}+labels" if self.labels else name


def model_choice(
    model: str | None,
    model_opt: str | None,
    input_shape: str | None,
    checkpoint: str | None,
    required: bool = True,
    input_kind: str = "float",
    labels: bool = False,
) -> ModelChoice | None:
    if model and model_opt and model != model_opt:
        raise UserError(f"two different models given: {model!r} and --model {model_opt!r}")
    spec = model or model_opt
    if spec is None:
        if required:
            raise UserError("no model given: name one (see `edgeweave models`) or pass --model package.module:factory")
        return None
    return ModelChoice(spec, input_shape, checkpoint, input_kind, labels)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fail(message: str) -> None:
    raise UserError(message)
