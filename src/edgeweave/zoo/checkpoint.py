"""Real weights for a model: a state dict from a .pt/.pth (read with `weights_only=True`, so
nothing is unpickled) or a .safetensors file, checked key by key and shape by shape so that a
mismatch is one line naming the file and the first offending keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeweave.errors import UserError


def load_checkpoint(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict from a .pt/.pth (torch) or .safetensors file; keys and shapes must match."""
    state = _read_state_dict(Path(path))
    _check_state_dict(module, state, Path(path))
    module.load_state_dict(state, strict=True)


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
