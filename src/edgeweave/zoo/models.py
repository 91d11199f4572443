"""The torch side of the zoo: named models (and users' own) turned into a module plus an example input.

Everything downstream (graph capture, profiling, planning, the runtime) needs the same two
things: an `nn.Module` in eval mode and an example input of the right shape and dtype. This
module is the only place that makes them (`load_model`), from either a zoo name (built by
`zoo.builders`) or a user's `package.module:factory`, with weights from `zoo.checkpoint` if given.

No weights can be downloaded, so zoo models are randomly initialised. Initialisation is seeded,
so every process that builds the same model with the same seed (the planner, each runtime
worker, the single-device reference run) gets bit-identical weights without shipping them.
A user can load real weights from a checkpoint file instead.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgeweave.compat import prepare_third_party
from edgeweave.errors import UserError
from edgeweave.zoo import INPUT_KINDS, Shape, check_input_dtype, check_model_spec, get_entry, is_user_spec
from edgeweave.zoo.builders import (
    BertLastHiddenState,
    KeypointHeatmaps,
    MainOutput,
    build_model,
    check_shape,
    format_shape,
)
from edgeweave.zoo.checkpoint import load_checkpoint

__all__ = [  # the builders' and checkpoint's public names are re-exported: `from edgeweave.zoo import ...`
    "BertLastHiddenState",
    "KeypointHeatmaps",
    "MainOutput",
    "ModelSpec",
    "as_labels",
    "as_uint8_image",
    "build_model",
    "capture_model",
    "example_input",
    "load_checkpoint",
    "load_model",
]


@dataclass
class ModelSpec:
    """A model ready to capture, profile or run: the module (eval mode) and an example input.

    `input_range` is where generated inputs come from ([low, high); None: standard normal floats,
    or the model's vocabulary for token ids): the runtime draws its requests from it too.
    """

    name: str
    module: nn.Module
    example_input: torch.Tensor
    input_shape: Shape
    input_dtype: torch.dtype
    input_range: tuple[float, float] | None = None


class UInt8Image(nn.Module):
    """A camera frame in, as uint8 pixels: normalisation (ImageNet mean and std) is part of the model.

    Declaring this lets a planner send pixels as bytes, 4x smaller than float32 and losing nothing.
    The conversion and normalisation are element-wise, so region splits carry uint8 bands too.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.to(torch.float32) - self.mean) / self.std)


def as_uint8_image(spec: ModelSpec, seed: int = 0) -> ModelSpec:
    """Wrap an image model so that it takes uint8 pixels (see `UInt8Image`)."""
    if spec.input_dtype != torch.float32 or len(spec.input_shape) != 4 or spec.input_shape[1] != 3:
        raise UserError(
            f"--input uint8-image needs an image model taking (N, 3, H, W) floats; {spec.name} takes "
            f"{tuple(spec.input_shape)} {str(spec.input_dtype).removeprefix('torch.')}"
        )
    x = example_input(tuple(spec.input_shape), torch.uint8, seed, value_range=(0.0, 256.0))
    return ModelSpec(spec.name, UInt8Image(spec.module).eval(), x, spec.input_shape, torch.uint8, (0.0, 256.0))


class PixelLabels(nn.Module):
    """A dense model ended in its per-pixel class: argmax over channels, as uint8 (--labels).

    What a robot consumes from a segmentation model is the label map: at 480x640 it is 300 KB,
    where 21 float32 logits per pixel are 25 MB. The argmax is per pixel, so region splits
    carry it to every device and only labels cross the links. Needs an (N, C, H, W) map of at
    most 256 classes; anything else is refused in one line when the model first runs.
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.model(x)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 4 or not scores.is_floating_point():
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise UserError(
                f"--labels needs a model whose output is an (N, C, H, W) map of scores; {self.name} gives {got}"
            )
        if scores.shape[1] > 256:
            raise UserError(f"--labels gives uint8 labels, at most 256 classes; {self.name} has {scores.shape[1]}")
        return scores.argmax(dim=1).to(torch.uint8)


def as_labels(spec: ModelSpec) -> ModelSpec:
    """Wrap a dense model so that its output is the uint8 label map (see `PixelLabels`)."""
    return ModelSpec(
        spec.name,
        PixelLabels(spec.module, spec.name).eval(),
        spec.example_input,
        spec.input_shape,
        spec.input_dtype,
        spec.input_range,
    )


def load_model(
    spec: str,
    input_shape: Shape | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    seed: int = 0,
    input_kind: str = "float",
    labels: bool = False,
    input_dtype: str | torch.dtype | None = None,
    input_range: tuple[float, float] | None = None,
    **overrides: int,
) -> ModelSpec:
    """Resolve a zoo name or `package.module:factory` into a ModelSpec.

    Weights come from `torch.manual_seed(seed)` (so every process builds the same model) unless a
    checkpoint is given. The caller's global RNG state is left as it was. `input_dtype` (a zoo
    model's own, float32 for a user's model unless given) and `input_range` ([low, high) of the
    generated inputs) describe what the model takes; `labels` ends the model in a per-pixel argmax
    (`PixelLabels`); `input_kind` "uint8-image" takes camera pixels.
    """
    if input_kind not in INPUT_KINDS:
        raise UserError(f"unknown --input {input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
    check_model_spec(spec)
    shape = None if input_shape is None else check_shape(input_shape)
    dtype_name = check_input_dtype(_dtype_name(input_dtype) if isinstance(input_dtype, torch.dtype) else input_dtype)
    with _seeded(seed):
        if is_user_spec(spec):
            name, module, shape = _load_user_model(spec, shape, overrides)
            vocab, default_dtype = None, "float32"
        else:
            entry = get_entry(spec)
            name, shape, vocab, default_dtype = entry.name, shape or entry.input_shape, entry.vocab, entry.input_dtype
            module = build_model(entry.name, input_shape=shape, **overrides)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
    module.eval()
    dtype = getattr(torch, dtype_name or default_dtype)
    value_range = input_range or _default_range(name, module, dtype, vocab)
    x = example_input(shape, dtype, seed, value_range=value_range)
    loaded = ModelSpec(name, module, x, shape, dtype, value_range)
    if labels:
        loaded = as_labels(loaded)
    return as_uint8_image(loaded, seed) if input_kind == "uint8-image" else loaded


def _default_range(name: str, module: nn.Module, dtype: torch.dtype, vocab: int | None) -> tuple[float, float] | None:
    """Where generated inputs come from when `--input-range` is not given.

    Floats: standard normal (None). uint8: all 256 values (camera pixels). bool: both. Other
    integers are token ids: the zoo entry's vocabulary, else the size of the model's first
    `nn.Embedding` (ids past it would fail inside the model, far from the cause); with neither, the
    user must say, since any guess could index out of range.
    """
    if dtype.is_floating_point:
        return None
    if dtype == torch.uint8:
        return (0.0, 256.0)
    if dtype == torch.bool:
        return (0.0, 2.0)
    if vocab is None:
        # the first embedding is the token table in transformers models (position and segment tables follow)
        vocab = next((m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)), None)
    if vocab is None:
        raise UserError(
            f"{name} takes {_dtype_name(dtype)} inputs but has no nn.Embedding to bound them: "
            "give --input-range LOW,HIGH for the generated values"
        )
    return (0.0, float(vocab))


def example_input(
    shape: Shape,
    dtype: torch.dtype,
    seed: int = 0,
    vocab: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """A deterministic input: standard normal floats (uniform in `value_range` if given), or
    integers in `value_range` ([0, vocab) for token ids)."""
    generator = torch.Generator().manual_seed(seed)
    if value_range is None and vocab is not None:
        value_range = (0.0, float(vocab))
    if dtype.is_floating_point:
        if value_range is None:
            return torch.randn(shape, generator=generator, dtype=dtype)
        low, high = value_range
        return torch.rand(shape, generator=generator, dtype=torch.float32).mul_(high - low).add_(low).to(dtype)
    if value_range is None:
        raise ValueError(f"an example input of dtype {dtype} needs a value range")
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(int(value_range[0]), int(value_range[1]), shape, generator=generator, dtype=dtype)


def capture_model(spec: ModelSpec) -> tuple[Any, dict[str, torch.Tensor]]:
    """Capture `spec` into (OpGraph, weights), blaming the real problem when capture fails.

    torch.export fails for two kinds of reasons that its error does not tell apart: the model
    cannot run on this input at all (3 channels expected, float token ids, ids past the
    vocabulary), or it runs but cannot be traced. Running the model once, only after a failure,
    tells which, so the advice fits: fix the input options, or fix the forward.
    """
    from edgeweave.graph import capture

    try:
        return capture(spec.module, spec.example_input, spec.name)
    except UserError as err:
        if err.__cause__ is None:  # capture's own one-line refusal (one output, ...): already precise
            raise
        try:
            with torch.no_grad():
                spec.module(spec.example_input)
        except UserError:
            raise
        except Exception as run_err:
            raise UserError(_input_problem(spec, run_err)) from run_err
        raise


def _input_problem(spec: ModelSpec, err: Exception) -> str:
    """One line naming why `spec.module` fails on its example input, with the option that fixes it."""
    text = str(err)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)[:240]
    got = f"an input of shape {format_shape(spec.input_shape)} {_dtype_name(spec.input_dtype)}"
    if "indices" in text and spec.input_dtype.is_floating_point:
        hint = "it takes integer ids: give --input-dtype int64 (and --input-range 0,VOCAB if it has no nn.Embedding)"
    elif "index out of range" in text:
        hint = "its ids must be below the vocabulary: lower the top of --input-range"
    elif any(word in text for word in ("channels", "size mismatch", "shape", "mat1 and mat2", "dimension")):
        hint = "check --input-shape"
    elif "dtype" in text or "scalar type" in text:
        hint = "check --input-dtype"
    else:
        hint = "check --input-shape and --input-dtype"
    return f"{spec.name} fails on {got} ({type(err).__name__}: {first}); {hint}"


# --------------------------------------------------------------------------- helpers


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for construction without disturbing the caller's RNG stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Make modules in the current directory importable, only for the duration of one import."""
    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        sys.path[:] = saved


def _load_user_model(spec: str, shape: Shape | None, overrides: Mapping[str, Any]) -> tuple[str, nn.Module, Shape]:
    """Import `package.module:factory` and call `factory()`; the user must give the input shape."""
    module_name, _, attr = spec.partition(":")
    if shape is None:
        raise UserError(f"model {spec} needs --input-shape (for example --input-shape 1,3,224,224)")
    if overrides:
        raise UserError(f"model {spec} takes no options, got {', '.join(sorted(overrides))}")
    factory = _resolve_factory(module_name, attr, spec)
    try:
        module = factory()
    except UserError:
        raise
    except Exception as err:  # the user's code: report it in one line rather than a traceback
        raise UserError(f"{spec}() failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    return spec, OneTensorOut(module), shape


class OneTensorOut(nn.Module):
    """A user's model with one tensor out: its output if that is a tensor, else the first tensor of
    the dict, ModelOutput or tuple it returns (torchvision segmentation's `out`, a transformers
    encoder's `last_hidden_state`, a classifier's `logits`).

    Capture and the runtime need one tensor; asking every user to write this wrapper was the first
    trap of bringing a model. The model's submodules are adopted under their own names (as in
    `MainOutput`), so state-dict keys, checkpoints and module paths stay the user's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in model.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self._forward = model.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._forward(x)
        if isinstance(out, torch.Tensor):
            return out
        values = list(out.values()) if isinstance(out, Mapping) else list(out) if isinstance(out, tuple | list) else []
        first = next((v for v in values if isinstance(v, torch.Tensor)), None)
        if first is None:
            raise UserError(f"the model returns {type(out).__name__} with no tensor in it; edgeweave needs one tensor")
        return first


def _resolve_factory(module_name: str, attr: str, spec: str) -> Callable[[], Any]:
    """Import the user's module (from the cwd too) and find the factory, possibly a dotted path.

    The third-party work-arounds run first: a user's module that imports torchvision, timm or
    transformers at its top would otherwise meet the broken torchvision wheel before we could help.
    """
    prepare_third_party()
    try:
        with _cwd_on_path():
            obj: Any = importlib.import_module(module_name)
    except Exception as err:
        raise UserError(f"cannot import {module_name} for {spec}: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{module_name} has no '{attr}' (from {spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{spec} is not callable")
    return obj
