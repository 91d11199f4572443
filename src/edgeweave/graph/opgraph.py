"""The operator graph: the one description of a model that every later stage reads.

Each node is one ATen operator call with JSON-safe arguments. Tensor arguments are references
(`{"ref": name}` to an earlier node or to `"input"`, `{"w": key}` to a weight), so a graph can be
saved, sent to another device as plain JSON, and executed there from the weights it names:
nothing is pickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

INPUT = "input"

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}") from None


def encode_arg(value: Any) -> Any:
    """Turn a captured argument into JSON-safe data; node references are encoded by the caller."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [encode_arg(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": dtype_name(value)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise TypeError(f"cannot encode argument of type {type(value).__name__}: {value!r}")


def decode_const(value: Any) -> Any:
    """Inverse of `encode_arg` for everything but references (which the executor resolves)."""
    if isinstance(value, list):
        return [decode_const(v) for v in value]
    if isinstance(value, dict):
        if "float" in value:
            return float(value["float"])
        if "dtype" in value:
            return dtype_from_name(value["dtype"])
        if "device" in value:
            return torch.device(value["device"])
        if "layout" in value:
            return getattr(torch, value["layout"])
        if "memory_format" in value:
            return getattr(torch, value["memory_format"])
    return value


@dataclass
class OpNode:
    """One operator call. `inputs` lists the node names (or "input") whose outputs it reads."""

    name: str
    op: str
    args: list[Any]
    kwargs: dict[str, Any]
    inputs: list[str]
    weights: list[str]
    out_shape: list[int] | list[list[int]]
    out_dtype: str | list[str]
    out_bytes: int
    param_bytes: int
    flops: int
    out_index: int | None = None
    module: str = ""

    @property
    def is_tuple(self) -> bool:
        return isinstance(self.out_dtype, list)


@dataclass
class OpGraph:
    """A model as a topologically ordered list of single-output operator nodes.

    The model's one input is called "input"; its output is the last node's output.
    """

    model: str
    input_shape: list[int]
    input_dtype: str
    nodes: list[OpNode]
    weight_shapes: dict[str, list[int]] = field(default_factory=dict)
    weight_dtypes: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[OpNode]:
        return iter(self.nodes)

    @property
    def input_bytes(self) -> int:
        return math.prod(self.input_shape) * torch.empty((), dtype=dtype_from_name(self.input_dtype)).element_size()

    @property
    def total_param_bytes(self) -> int:
        return sum(n.param_bytes for n in self.nodes)

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpGraph:
        nodes = [OpNode(**n) for n in data["nodes"]]
        return cls(**{**data, "nodes": nodes})
