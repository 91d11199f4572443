"""Models from outside the zoo, as a user would bring them: factories that return the library's
own model, unwrapped (a dict out, a ModelOutput out, token ids in). Used by the command-line tests."""

from __future__ import annotations

from torch import nn


def torchvision_segmentation() -> nn.Module:
    """torchvision's LR-ASPP: imports torchvision itself, returns {"out": logits}."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)


def timm_resnet() -> nn.Module:
    """timm's resnet26d (deep stem, avg-pool downsampling); timm imports torchvision at import time."""
    import timm

    return timm.create_model("resnet26d", pretrained=False)


def distilbert() -> nn.Module:
    """A 2-layer DistilBERT encoder taking token ids (int64), returning a BaseModelOutput."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=1000, n_layers=2, dim=128, hidden_dim=256, n_heads=4)
    return DistilBertModel(config)


def channels_mismatch() -> nn.Module:
    """A convolution that wants 4 channels: given 3, the error must say so, not blame control flow."""
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())


def small_cnn() -> nn.Module:
    """A few convolutions: fast enough to stream many requests in a test."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )
