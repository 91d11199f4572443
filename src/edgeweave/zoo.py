"""The model zoo: named models (and users' own) turned into a module plus an example input.

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
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeweave.compat import import_torchvision
from edgeweave.errors import UserError

Shape = tuple[int, ...]
Builder = Callable[[Shape, dict[str, int]], nn.Module]

IMAGE_SHAPE: Shape = (1, 3, 224, 224)
CAMERA_SHAPE: Shape = (1, 3, 480, 640)  # a VGA camera frame: what robots' dense models see
TOKEN_SHAPE: Shape = (1, 128)
BERT_VOCAB = 30522  # BertConfig().vocab_size; hard-coded so making an input never imports transformers


@dataclass
class ModelSpec:
    """A model ready to capture, profile or run: the module (eval mode) and an example input."""

    name: str
    module: nn.Module
    example_input: torch.Tensor
    input_shape: Shape
    input_dtype: torch.dtype


@dataclass(frozen=True)
class ZooEntry:
    """One named model: how to build it and what it expects.

    `params` is the parameter count at full size, hard-coded so `edgeweave models` need not build
    632M-parameter models to list them (a test checks it against the real count).
    `overrides` names the keyword arguments `build_model` accepts to shrink the model.
    `vocab` bounds the example token ids of models that take them.
    """

    name: str
    family: str
    description: str
    input_shape: Shape
    input_dtype: torch.dtype
    params: int
    build: Builder
    overrides: frozenset[str] = frozenset()
    vocab: int | None = None


# --------------------------------------------------------------------------- builders


def _check_image_shape(name: str, shape: Shape) -> None:
    """Image models take (batch, 3, height, width); catch other shapes before a confusing forward."""
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"{name} takes an input of shape (batch, 3, height, width), got {_fmt(shape)}")


def _torchvision_cnn(factory: str) -> Builder:
    """A torchvision classification CNN; these accept any image size (adaptive pooling)."""

    def build(shape: Shape, overrides: dict[str, int]) -> nn.Module:
        _check_image_shape(factory, shape)
        return getattr(import_torchvision().models, factory)(weights=None)

    return build


def _square_size(name: str, shape: Shape, patch: int) -> int:
    """The image size a ViT needs: square (torchvision asserts it) and a whole number of patches."""
    _check_image_shape(name, shape)
    height, width = shape[2], shape[3]
    if height != width or height % patch:
        raise UserError(f"{name} needs a square image whose side is a multiple of {patch}, got {height}x{width}")
    return height


def _torchvision_vit(name: str, patch: int, layers: int, heads: int, hidden: int, mlp: int) -> Builder:
    """A torchvision VisionTransformer with the named size's dimensions; `num_layers` may shrink it.

    Built directly (not through `torchvision.models.vit_*`) because those fix `num_layers`; with the
    same arguments the result is identical to the named builder.
    """

    def build(shape: Shape, overrides: dict[str, int]) -> nn.Module:
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

    return build


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


def _torchvision_segmentation(factory: str) -> Builder:
    """A torchvision segmentation model, random init (no backbone download), without the aux head."""

    def build(shape: Shape, overrides: dict[str, int]) -> nn.Module:
        _check_image_shape(factory, shape)
        extra = {} if factory.startswith("lraspp") else {"aux_loss": False}
        seg = import_torchvision().models.segmentation
        return MainOutput(getattr(seg, factory)(weights=None, weights_backbone=None, **extra))

    return build


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


# --------------------------------------------------------------------------- the registry


def _cnn(name: str, params: float, description: str) -> ZooEntry:
    return ZooEntry(name, "cnn", description, IMAGE_SHAPE, torch.float32, int(params), _torchvision_cnn(name))


def _vit(name: str, params: float, description: str, dims: tuple[int, int, int, int, int]) -> ZooEntry:
    return ZooEntry(
        name,
        "vit",
        description,
        IMAGE_SHAPE,
        torch.float32,
        int(params),
        _torchvision_vit(name, *dims),
        frozenset({"num_layers"}),
    )


def _segmentation(name: str, params: float, description: str) -> ZooEntry:
    return ZooEntry(
        name, "segmentation", description, CAMERA_SHAPE, torch.float32, int(params), _torchvision_segmentation(name)
    )


_ENTRIES: tuple[ZooEntry, ...] = (
    _cnn("resnet18", 11.7e6, "ResNet-18 (torchvision), 224x224 ImageNet classifier"),
    _cnn("resnet50", 25.6e6, "ResNet-50 (torchvision), 224x224 ImageNet classifier"),
    _cnn("resnet152", 60.2e6, "ResNet-152 (torchvision), 224x224 ImageNet classifier"),
    _cnn("vgg16", 138.4e6, "VGG-16 (torchvision): large early feature maps, huge classifier"),
    _cnn("vgg19", 143.7e6, "VGG-19 (torchvision): large early feature maps, huge classifier"),
    _cnn("mobilenet_v2", 3.5e6, "MobileNetV2 (torchvision): depthwise-separable, mobile-sized"),
    _cnn("mobilenet_v3_large", 5.5e6, "MobileNetV3-Large (torchvision): mobile-sized"),
    _cnn("densenet121", 8.0e6, "DenseNet-121 (torchvision): many long skip connections"),
    _cnn("convnext_tiny", 28.6e6, "ConvNeXt-Tiny (torchvision): 7x7 depthwise convolutions"),
    _cnn("efficientnet_b0", 5.3e6, "EfficientNet-B0 (torchvision): squeeze-excitation blocks"),
    _vit("vit_b_16", 86.6e6, "ViT-Base/16 (torchvision): 12 layers, hidden 768", (16, 12, 12, 768, 3072)),
    _vit("vit_l_16", 304.3e6, "ViT-Large/16 (torchvision): 24 layers, hidden 1024", (16, 24, 16, 1024, 4096)),
    _vit("vit_h_14", 632.0e6, "ViT-Huge/14 (torchvision): 32 layers, hidden 1280", (14, 32, 16, 1280, 5120)),
    ZooEntry(
        "timm_vit_small",
        "vit",
        "ViT-Small/16 (timm vit_small_patch16_224): 12 layers, hidden 384",
        IMAGE_SHAPE,
        torch.float32,
        int(22.1e6),
        _timm_vit_small,
        frozenset({"depth"}),
    ),
    _segmentation(
        "lraspp_mobilenet_v3_large",
        3_221_538,
        "LR-ASPP MobileNetV3-Large (torchvision): 21-class segmentation logits at the input's size",
    ),
    _segmentation(
        "deeplabv3_mobilenet_v3_large",
        11_025_477,
        "DeepLabV3 MobileNetV3-Large (torchvision): dilated backbone, ASPP, 21-class logits at the input's size",
    ),
    _segmentation(
        "fcn_resnet50",
        32_957_013,
        "FCN ResNet-50 (torchvision): dilated ResNet-50 (stride 8), 21-class logits at the input's size",
    ),
    ZooEntry(
        "keypoints_resnet18_fpn",
        "keypoints",
        "ResNet-18 + FPN (torchvision detection backbone), transposed-conv head: 17 keypoint heatmaps "
        "at the input's size, no NMS",
        CAMERA_SHAPE,
        torch.float32,
        14_113_489,
        _keypoints,
    ),
    ZooEntry(
        "bert-base",
        "transformer",
        "BERT-base encoder (transformers, SDPA attention), 128 token ids in",
        TOKEN_SHAPE,
        torch.int64,
        int(108.9e6),
        _bert_base,
        frozenset({"num_hidden_layers"}),
        vocab=BERT_VOCAB,
    ),
)


def _canonical(name: str) -> str:
    """Names match ignoring case and the difference between '-' and '_' (bert-base, vit-b-16)."""
    return name.strip().lower().replace("-", "_")


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
_BY_CANONICAL: dict[str, ZooEntry] = {_canonical(entry.name): entry for entry in _ENTRIES}


# --------------------------------------------------------------------------- public API


def list_models() -> list[dict[str, Any]]:
    """The zoo as rows for `edgeweave models` (JSON-friendly: shapes as lists, dtypes as names)."""
    return [
        {
            "name": e.name,
            "family": e.family,
            "input_shape": list(e.input_shape),
            "input_dtype": _dtype_name(e.input_dtype),
            "params": e.params,
            "description": e.description,
        }
        for e in _ENTRIES
    ]


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for `name`, or a UserError suggesting the closest names."""
    entry = _BY_CANONICAL.get(_canonical(name))
    if entry is not None:
        return entry
    close = difflib.get_close_matches(_canonical(name), list(_BY_CANONICAL), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(_BY_CANONICAL[c].name for c in close)}? " if close else ""
    raise UserError(
        f"unknown model '{name}'; {hint}run `edgeweave models` to list them, or give your own as package.module:factory"
    )


def build_model(name: str, *, input_shape: Shape | None = None, **overrides: int) -> nn.Module:
    """Build zoo model `name` (random init from the current RNG state), optionally shrunk.

    ViTs accept `num_layers=` (torchvision) or `depth=` (timm), BERT `num_hidden_layers=`; every
    other dimension keeps its named size, so a 2-layer vit_h_14 has ViT-H's layers, only fewer.
    """
    entry = get_entry(name)
    _check_overrides(entry, overrides)
    shape = entry.input_shape if input_shape is None else _check_shape(input_shape)
    return entry.build(shape, dict(overrides)).eval()


INPUT_KINDS = ("float", "uint8-image")


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
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, tuple(spec.input_shape), generator=generator, dtype=torch.uint8)
    return ModelSpec(spec.name, UInt8Image(spec.module).eval(), x, spec.input_shape, torch.uint8)


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
        spec.name, PixelLabels(spec.module, spec.name).eval(), spec.example_input, spec.input_shape, spec.input_dtype
    )


def load_model(
    spec: str,
    input_shape: Shape | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    seed: int = 0,
    input_kind: str = "float",
    labels: bool = False,
    **overrides: int,
) -> ModelSpec:
    """Resolve a zoo name or `package.module:factory` into a ModelSpec.

    Weights come from `torch.manual_seed(seed)` (so every process builds the same model) unless a
    checkpoint is given. The caller's global RNG state is left as it was. `labels` ends the
    model in a per-pixel argmax (`PixelLabels`); `input_kind` "uint8-image" takes camera pixels.
    """
    shape = None if input_shape is None else _check_shape(input_shape)
    with _seeded(seed):
        if ":" in spec:
            name, module, shape, dtype = _load_user_model(spec, shape, overrides)
            vocab = None
        else:
            entry = get_entry(spec)
            name, shape, dtype, vocab = entry.name, shape or entry.input_shape, entry.input_dtype, entry.vocab
            module = build_model(entry.name, input_shape=shape, **overrides)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint)
    module.eval()
    loaded = ModelSpec(name, module, example_input(shape, dtype, seed, vocab), shape, dtype)
    if labels:
        loaded = as_labels(loaded)
    if input_kind not in INPUT_KINDS:
        raise UserError(f"unknown --input {input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
    return as_uint8_image(loaded, seed) if input_kind == "uint8-image" else loaded


def example_input(shape: Shape, dtype: torch.dtype, seed: int = 0, vocab: int | None = None) -> torch.Tensor:
    """A deterministic example input: standard normal floats, or token ids in [0, vocab)."""
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype)
    if vocab is None:
        raise ValueError(f"an example input of dtype {dtype} needs a vocabulary size")
    return torch.randint(0, vocab, shape, generator=generator, dtype=dtype)


def parse_input_shape(text: str) -> Shape:
    """Parse `--input-shape` text such as "1,3,224,224" (or "1x3x224x224") into a tuple."""
    parts = [p.strip() for p in str(text).strip().strip("()[]").replace("x", ",").split(",")]
    if parts and parts[-1] == "":  # allow a trailing comma, as in "(1,)"
        parts.pop()
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise UserError(f"bad input shape '{text}': expected positive integers like 1,3,224,224")
    return shape


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


def _load_user_model(
    spec: str, shape: Shape | None, overrides: Mapping[str, Any]
) -> tuple[str, nn.Module, Shape, torch.dtype]:
    """Import `package.module:factory` and call `factory()`; the user must give the input shape."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(f"bad model '{spec}': expected a zoo name or package.module:factory")
    if shape is None:
        raise UserError(f"model {spec} needs --input-shape (for example --input-shape 1,3,224,224)")
    if overrides:
        raise UserError(f"model {spec} takes no options, got {', '.join(sorted(overrides))}")
    factory = _resolve_factory(module_name, attr, spec)
    try:
        module = factory()
    except Exception as err:  # the user's code: report it in one line rather than a traceback
        raise UserError(f"{spec}() failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    return spec, module, shape, torch.float32


def _resolve_factory(module_name: str, attr: str, spec: str) -> Callable[[], Any]:
    """Import the user's module (from the cwd too) and find the factory, possibly a dotted path."""
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
