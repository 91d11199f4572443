"""Zoo models by name: one builder per catalogue entry's `builder`, and the modules that give
torchvision's, timm's and transformers' models one tensor in and one tensor out.

Every builder takes the entry's arguments, the input shape and the size overrides, refuses a
shape the model cannot take in one line, and never touches the network (`weights=None`,
`pretrained=False`, locally built configs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from edgeweave.compat import import_torchvision
from edgeweave.errors import UserError
from edgeweave.zoo import Shape, ZooEntry, get_entry


def _check_image_shape(name: str, shape: Shape) -> None:
    """Image models take (batch, 3, height, width); catch other shapes before a confusing forward."""
    if len(shape) != 4 or shape[1] != 3:
        raise UserError(f"{name} takes an input of shape (batch, 3, height, width), got {format_shape(shape)}")


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
        raise UserError(f"timm_vit_small needs height and width multiples of 16, got {format_shape(shape)}")
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
            f"bert-base takes token ids of shape (batch, length <= {config.max_position_embeddings}), "
            f"got {format_shape(shape)}"
        )
    from transformers import BertModel

    return BertLastHiddenState(BertModel(config, add_pooling_layer=False))


# The catalogue's `builder` names -> functions (args, shape, overrides) -> nn.Module.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "torchvision_cnn": _torchvision_cnn,
    "torchvision_vit": _torchvision_vit,
    "torchvision_segmentation": _torchvision_segmentation,
    "timm_vit_small": _timm_vit_small,
    "keypoints": _keypoints,
    "bert_base": _bert_base,
}


def build_model(name: str, *, input_shape: Shape | None = None, **overrides: int) -> nn.Module:
    """Build zoo model `name` (random init from the current RNG state), optionally shrunk.

    ViTs accept `num_layers=` (torchvision) or `depth=` (timm), BERT `num_hidden_layers=`; every
    other dimension keeps its named size, so a 2-layer vit_h_14 has ViT-H's layers, only fewer.
    """
    entry = get_entry(name)
    _check_overrides(entry, overrides)
    shape = entry.input_shape if input_shape is None else check_shape(input_shape)
    return BUILDERS[entry.builder](*entry.args, shape, dict(overrides)).eval()


def format_shape(shape: Shape) -> str:
    return ",".join(str(d) for d in shape)


def check_shape(shape: Any) -> Shape:
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
