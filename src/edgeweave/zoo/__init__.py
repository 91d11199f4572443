"""The model zoo: what can be run, by name, without importing torch.

Everything downstream (graph capture, profiling, planning, the runtime) needs the same two
things: an `nn.Module` in eval mode and an example input of the right shape and dtype.
`edgeweave.zoo.models` makes them, from either a zoo name or a user's `package.module:factory`.

This package's top level is only the catalogue (names, input shapes, parameter counts) and the
parsing of the options that describe an input, so `edgeweave models` and the checks that run
before a model is built (a misspelt name, a bad shape or dtype) answer in well under a second:
importing torch alone takes one to two. The torch side is imported on first use of
`load_model`, `build_model` and the other names listed in `_LAZY`.

No weights can be downloaded, so zoo models are randomly initialised. Initialisation is seeded,
so every process that builds the same model with the same seed gets bit-identical weights.
A user can load real weights from a checkpoint file instead.
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass
from typing import Any

from edgeweave.errors import UserError

Shape = tuple[int, ...]

IMAGE_SHAPE: Shape = (1, 3, 224, 224)
CAMERA_SHAPE: Shape = (1, 3, 480, 640)  # a VGA camera frame: what robots' dense models see
TOKEN_SHAPE: Shape = (1, 128)
BERT_VOCAB = 30522  # BertConfig().vocab_size; hard-coded so making an input never imports transformers

# dtypes a generated input may have (`--input-dtype`); names as torch spells them without "torch."
INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "uint8", "int8", "int16", "int32", "int64", "bool")
INPUT_KINDS = ("float", "uint8-image")


@dataclass(frozen=True)
class ZooEntry:
    """One named model: how to build it and what it expects.

    `params` is the parameter count at full size, hard-coded so `edgeweave models` need not build
    632M-parameter models to list them (a test checks it against the real count).
    `builder` names a function of `edgeweave.zoo.models` (called with `args`, the input shape and
    the overrides), so the catalogue holds no torch objects. `overrides` names the keyword
    arguments `build_model` accepts to shrink the model. `vocab` bounds the example token ids.
    """

    name: str
    family: str
    description: str
    input_shape: Shape
    input_dtype: str
    params: int
    builder: str
    args: tuple[Any, ...] = ()
    overrides: frozenset[str] = frozenset()
    vocab: int | None = None


def _cnn(name: str, params: float, description: str) -> ZooEntry:
    return ZooEntry(name, "cnn", description, IMAGE_SHAPE, "float32", int(params), "torchvision_cnn", (name,))


def _vit(name: str, params: float, description: str, dims: tuple[int, int, int, int, int]) -> ZooEntry:
    return ZooEntry(
        name, "vit", description, IMAGE_SHAPE, "float32", int(params), "torchvision_vit", (name, *dims),
        frozenset({"num_layers"}),
    )  # fmt: skip


def _segmentation(name: str, params: float, description: str) -> ZooEntry:
    return ZooEntry(
        name, "segmentation", description, CAMERA_SHAPE, "float32", int(params), "torchvision_segmentation", (name,)
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
        "float32",
        int(22.1e6),
        "timm_vit_small",
        overrides=frozenset({"depth"}),
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
        "float32",
        14_113_489,
        "keypoints",
    ),
    ZooEntry(
        "bert-base",
        "transformer",
        "BERT-base encoder (transformers, SDPA attention), 128 token ids in",
        TOKEN_SHAPE,
        "int64",
        int(108.9e6),
        "bert_base",
        overrides=frozenset({"num_hidden_layers"}),
        vocab=BERT_VOCAB,
    ),
)


def _canonical(name: str) -> str:
    """Names match ignoring case and the difference between '-' and '_' (bert-base, vit-b-16)."""
    return name.strip().lower().replace("-", "_")


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
_BY_CANONICAL: dict[str, ZooEntry] = {_canonical(entry.name): entry for entry in _ENTRIES}


def list_models() -> list[dict[str, Any]]:
    """The zoo as rows for `edgeweave models` (JSON-friendly: shapes as lists, dtypes as names)."""
    return [
        {
            "name": e.name,
            "family": e.family,
            "input_shape": list(e.input_shape),
            "input_dtype": e.input_dtype,
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


def is_user_spec(spec: str) -> bool:
    """A `package.module:factory` spec (a user's own model) rather than a zoo name."""
    return ":" in spec


def check_model_spec(spec: str) -> None:
    """Refuse a model that cannot be resolved, without building it: an unknown zoo name, or a
    malformed `package.module:factory` (whether the user's module imports is learnt by importing it)."""
    if not is_user_spec(spec):
        get_entry(spec)
        return
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(f"bad model '{spec}': expected a zoo name or package.module:factory")


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


def check_input_dtype(name: str | None) -> str | None:
    """`--input-dtype` as torch spells it ("float32", "int64", ...), or a one-line error listing them."""
    if name is None:
        return None
    canonical = name.strip().lower().removeprefix("torch.")
    canonical = {"float": "float32", "long": "int64", "int": "int32", "half": "float16", "double": "float64"}.get(
        canonical, canonical
    )
    if canonical not in INPUT_DTYPES:
        raise UserError(f"unknown --input-dtype {name!r}; choose one of {', '.join(INPUT_DTYPES)}")
    return canonical


def parse_input_range(text: str | None, dtype: str | None = None) -> tuple[float, float] | None:
    """`--input-range LOW,HIGH`: generated inputs are drawn from [LOW, HIGH) (integers for integer
    dtypes, so token ids of a vocabulary of 30522 are `0,30522`)."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).strip().strip("()[]").split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"bad --input-range {text!r}: give LOW,HIGH such as 0,30522") from None
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise UserError(f"bad --input-range {text!r}: need finite LOW < HIGH")
    integer = dtype is not None and not dtype.startswith(("float", "bfloat"))
    if integer and (low != int(low) or high != int(high)):
        raise UserError(f"--input-range {text!r}: {dtype} inputs need whole numbers")
    return low, high


# The torch side, imported on first use (see the module docstring).
_LAZY = {
    "ModelSpec",
    "MainOutput",
    "KeypointHeatmaps",
    "BertLastHiddenState",
    "UInt8Image",
    "PixelLabels",
    "OneTensorOut",
    "as_uint8_image",
    "as_labels",
    "build_model",
    "load_model",
    "example_input",
    "load_checkpoint",
    "capture_model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("edgeweave.zoo.models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
