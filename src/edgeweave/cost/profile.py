"""The profile: measured time, output size and parameter size of every node (design contract).

Profiles are the interchange format between devices: profile a model once on a reference
device, plan for any cluster elsewhere. Extra fields are allowed and kept.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeweave.errors import read_json, validated

INPUT = "input"


class ProfileNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    time_s: float = Field(ge=0)
    out_bytes: int = Field(ge=0)
    param_bytes: int = Field(ge=0)
    inputs: list[str]


class Profile(BaseModel):
    """Nodes in topological order; the model output is the last node's output."""

    model_config = ConfigDict(extra="allow", ignored_types=(cached_property,))

    model: str
    input_bytes: int = Field(ge=0)
    nodes: list[ProfileNode] = Field(min_length=1)

    @model_validator(mode="after")
    def _topological(self) -> Profile:
        seen = {INPUT}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise ValueError(f"nodes[{i}].name: {node.name!r} appears twice (or is the reserved name 'input')")
            for ref in node.inputs:
                if ref not in seen:
                    raise ValueError(f"nodes[{i}].inputs: {ref!r} is not the model input or an earlier node")
            seen.add(node.name)
        return self

    # -- loading and saving -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_data(read_json(path, "profile"), origin=str(path))

    @classmethod
    def from_data(cls, data: Any, origin: str = "<profile>") -> Profile:
        return validated(cls, data, origin)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    # -- derived quantities the planners need ---------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    @cached_property
    def times(self) -> np.ndarray:
        return np.array([n.time_s for n in self.nodes], dtype=np.float64)

    @cached_property
    def param_bytes(self) -> np.ndarray:
        return np.array([n.param_bytes for n in self.nodes], dtype=np.int64)

    @cached_property
    def out_bytes(self) -> np.ndarray:
        return np.array([n.out_bytes for n in self.nodes], dtype=np.int64)

    @cached_property
    def index(self) -> dict[str, int]:
        """Node name -> position in profile order."""
        return {n.name: i for i, n in enumerate(self.nodes)}

    def value_bytes(self, name: str) -> int:
        """Size of a value: the model input or a node's output."""
        return self.input_bytes if name == INPUT else self.nodes[self.index[name]].out_bytes

    @cached_property
    def output_bytes(self) -> int:
        return int(self.nodes[-1].out_bytes)

    @cached_property
    def _spans(self) -> list[tuple[str, int, int, int]]:
        """(value, producer index (-1 for the input), last consumer index, bytes) of every value read."""
        index = self.index
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for ref in node.inputs:
                last[ref] = i
        spans = []
        for name, last_i in last.items():
            producer = -1 if name == INPUT else index[name]
            size = self.input_bytes if name == INPUT else self.nodes[producer].out_bytes
            spans.append((name, producer, last_i, size))
        return spans

    @cached_property
    def cut_bytes(self) -> np.ndarray:
        """cut_bytes[p]: bytes that cross a cut placed before node p (p = 0..len).

        A value crosses when it is produced before the cut (the input counts as produced before
        node 0) and read at or after it: residual connections make a cut carry several tensors.
        cut_bytes[len] is the model output, which goes back to the source.
        """
        n = len(self.nodes)
        diff = np.zeros(n + 2, dtype=np.int64)
        for _, producer, last_i, size in self._spans:
            diff[producer + 1] += size
            diff[last_i + 1] -= size
        cuts = np.cumsum(diff)[: n + 1]
        cuts[n] = self.output_bytes
        return cuts

    def cut_values(self, p: int) -> list[str]:
        """Names of the values crossing a cut before node p (the runtime sends exactly these)."""
        if p == len(self.nodes):
            return [self.nodes[-1].name]
        return [name for name, producer, last_i, _ in self._spans if producer < p <= last_i]

    def total_time(self) -> float:
        return float(self.times.sum())

    def summary(self) -> dict[str, Any]:
        extra = self.model_extra or {}
        return {
            "model": self.model,
            "nodes": len(self.nodes),
            "total_time_s": self.total_time(),
            "param_bytes": int(self.param_bytes.sum()),
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "forward_time_s": extra.get("forward_time_s"),
            "flops": sum(int((n.model_extra or {}).get("flops", 0)) for n in self.nodes),
        }
