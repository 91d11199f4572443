"""The torch side of the zoo: named models (and users' own) turned into a module plus an example input.

Everything downstream (graph capture, profiling, planning, the runtime) needs the same two
things: an `nn.Module` in eval mode and an example input of the right shape and dtype. This
module is the only place that knows how to make them, from either a zoo name (`edgeweave models`)
or a user's `package.module:factory`.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeweave.compat import import_torchvision, prepare_third_party
from edgeweave.errors import UserError
from edgeweave.zoo import (
    INPUT_KINDS,
    Shape,
    ZooEntry,
    check_input_dtype,
    check_model_spec,
    get_entry,
    is_user_spec,
)


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


# --------------------------------------------------------------------------- builders


def _check_image_shape(name: str, shape: Shape) -> None:
    """Image models take (batch, 3, height, width); catch other shapes before a confusing forward."""
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"{name} takes an input of shape (batch, 3, height, width), got {_fmt(shape)}")


def _torchvision_cnn(factory: str, shape: Shape, overrides: dict[str, int]) -> nn.Module:
    """A torchvision classification CNN; these accept any image size (adaptive pooling)."""
    _check_image_shape(factory, shape)
    return getattr(import_torchvision().models, factory)(weights=None)


def _square_size(name: str, shape: Shape, patch: int) -> int:
    """The image size a ViT needs: square (torchvision asserts it) and a whole number of patches."""
    _check_image_shape(name, shape)
    height, width = shape[2], shape[3]
    if height != width or height % patch:
        raise UserError(f"{name} needs a square image whose side is a multiple of {patch}, got {height}x{width}")
    return height


def _torchvision_vit(
    name: str, patch: int, layers: int, heads: int, hidden: int, mlp: int, shape: Shape, overrides: dict[str, int]
) -> nn.Module:
    """A torchvision VisionTransformer with the named size's dimensions; `num_layers` may shrink it.

    Built directly (not through `torchvision.models.vit_*`) because those fix `num_layers`; with the
    same arguments the result is identical to the named builder.
    """
    size = _square_size(name, shape, patch)
    vt = import_torchvision().models.vision_transformer
    return vt.VisionTransformer(
        image_size=size,
        patch_size=patch,
        num_layers=overrides.get("num_layers", layers),
        num_heads=heads,
        hidden_dim=hidden,
        mlp_dim=mlp,
    )


def _timm_vit_small(shape: Shape, overrides: dict[str, int]) -> nn.Module:
    """timm's ViT-S/16. `pretrained=False` means timm never looks at the hub or the network."""
    _check_image_shape("timm_vit_small", shape)
    if shape[2] % 16 or shape[3] % 16:
        raise UserError(f"timm_vit_small needs height and width multiples of 16, got {_fmt(shape)}")
    import_torchvision()  # timm imports torchvision at import time
    import timm

    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=(shape[2], shape[3]), **overrides)


class MainOutput(nn.Module):
    """A torchvision segmentation model with one tensor out: its `out` map (class logits at input size).

    torchvision returns a dict ({"out": ..., "aux": ...}); capture and the runtime need one
    tensor. The model's submodules are adopted under their own names, so the state-dict keys
    are torchvision's and its checkpoints load unchanged.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self._forward = model.forward  # runs on the very submodules adopted above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)["out"]


def _torchvision_segmentation(factory: str, shape: Shape, overrides: dict[str, int]) -> nn.Module:
    """A torchvision segmentation model, random init (no backbone download), without the aux head."""
    _check_image_shape(factory, shape)
    extra = {} if factory.startswith("lraspp") else {"aux_loss": False}
    seg = import_torchvision().models.segmentation
    return MainOutput(getattr(seg, factory)(weights=None, weights_backbone=None, **extra))


class KeypointHeatmaps(nn.Module):
    """Bottom-up keypoint heatmaps: ResNet-18 + FPN (torchvision's detection backbone) and a small head.

    The head reads the finest FPN level (stride 4): a 3x3 convolution to 128 channels, then
    Keypoint R-CNN's predictor (a stride-2 transposed convolution to 17 COCO keypoints and a
    bilinear x2 resize), so the 17 heatmaps come out at input resolution. No boxes, no NMS: one
    tensor out. BatchNorm instead of torchvision's frozen variant keeps the graph free of
    per-call weight arithmetic (eval-mode BatchNorm is one operator).
    """

    def __init__(self, keypoints: int = 17):
        super().__init__()
        tv = import_torchvision()
        detection = tv.models.detection
        self.backbone = detection.backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
        self.head = nn.Sequential(nn.Conv2d(self.backbone.out_channels, 128, 3, padding=1), nn.ReLU(inplace=True))
        self.predictor = detection.keypoint_rcnn.KeypointRCNNPredictor(128, keypoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.head(self.backbone(x)["0"]))


def _keypoints(shape: Shape, overrides: dict[str, int]) -> nn.Module:
    _check_image_shape("keypoints_resnet18_fpn", shape)
    return KeypointHeatmaps()


class BertLastHiddenState(nn.Module):
    """BERT with one tensor in (token ids) and one tensor out (the last hidden state).

    Graph capture, partitioning and the runtime all assume one input and one output tensor;
    a transformers model returns a ModelOutput holding several.
    """

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).last_hidden_state


def _bert_config(overrides: Mapping[str, int]) -> Any:
    """The default BertConfig (BERT-base), built locally: nothing is fetched from the hub."""
    import_torchvision()  # transformers imports torchvision while loading its model code
    from transformers import BertConfig

    return BertConfig(attn_implementation="sdpa", **overrides)


def _bert_base(shape: Shape, overrides: dict[str, int]) -> nn.Module:
    """BERT-base encoder without the pooler, which the last hidden state does not use."""
    config = _bert_config(overrides)
    if len(shape) != 2 or shape[1] > config.max_position_embeddings:
        raise UserError(
            f"bert-base takes token ids of shape (batch, length <= {config.max_position_embeddings}), got {_fmt(shape)}"
        )
    from transformers import BertModel

    return BertLastHiddenState(BertModel(config, add_pooling_layer=False))


# The catalogue's `builder` names -> functions (args, shape, overrides) -> nn.Module.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "torchvision_cnn": _torchvision_cnn,
    "torchvision_vit": _torchvision_vit,
    "torchvision_segmentation": _torchvision_segmentation,
    "timm_vit_small": _timm_vit_small,
    "keypoints": _keypoints,
    "bert_base": _bert_base,
}


# --------------------------------------------------------------------------- public API


def build_model(name: str, *, input_shape: Shape | None = None, **overrides: int) -> nn.Module:
    """Build zoo model `name` (random init from the current RNG state), optionally shrunk.

    ViTs accept `num_layers=` (torchvision) or `depth=` (timm), BERT `num_hidden_layers=`; every
    other dimension keeps its named size, so a 2-layer vit_h_14 has ViT-H's layers, only fewer.
    """
    entry = get_entry(name)
    _check_overrides(entry, overrides)
    shape = entry.input_shape if input_shape is None else _check_shape(input_shape)
    return _BUILDERS[entry.builder](*entry.args, shape, dict(overrides)).eval()


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
    shape = None if input_shape is None else _check_shape(input_shape)
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
    got = f"an input of shape {_fmt(spec.input_shape)} {_dtype_name(spec.input_dtype)}"
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


def load_checkpoint(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict from a .pt/.pth (torch) or .safetensors file; keys and shapes must match."""
    state = _read_state_dict(Path(path))
    _check_state_dict(module, state, Path(path))
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- helpers


def _fmt(shape: Shape) -> str:
    return ",".join(str(d) for d in shape)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_shape(shape: Any) -> Shape:
    """An input shape must be a non-empty sequence of positive ints (bools are not ints here)."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise UserError(f"bad input shape {shape!r}: expected positive integers like 1,3,224,224")
    return dims


def _check_overrides(entry: ZooEntry, overrides: Mapping[str, Any]) -> None:
    """Reject overrides a model does not take, and sizes that are not positive ints."""
    for key, value in overrides.items():
        if key not in entry.overrides:
            accepted = ", ".join(sorted(entry.overrides)) or "none"
            raise UserError(f"model {entry.name} has no option '{key}' (accepted: {accepted})")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{key} for {entry.name} must be a positive integer, got {value!r}")


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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict; accept a training checkpoint that holds it under "state_dict" or "model"."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Explain a mismatch in one line (load_state_dict's own message is long and multi-line)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match the model: {len(missing)} missing keys"
            f" ({_first(missing)}), {len(unexpected)} unexpected keys ({_first(unexpected)})"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"checkpoint {path}: {key} has shape {tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )


def _first(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (", ..." if len(keys) > count else "") if keys else "none"
