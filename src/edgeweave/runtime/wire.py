"""Messages on the wire: one small JSON header frame, then one raw frame per tensor.

Tensors travel as their bytes (sent without copying) described in the header by dtype and
shape, so a receiver rebuilds them with `torch.frombuffer`. A channels_last feature map (what
convolutions produce here, graph/kernels.py) travels in that byte order, marked `"layout": "nhwc"`:
it is sent without a copy and arrives in the layout it had, so every op after it computes exactly
as it would have on one device. Everything else travels contiguous. Nothing is ever unpickled,
evaluated or imported from the network: a header is JSON, a tensor is bytes, weights are
safetensors.

`unpack` is the plain decoder the coordinator uses for its workers' replies. Workers, which
serve peers they cannot fully trust, decode with the strict `protocol` module instead.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from edgeweave.graph.opgraph import dtype_from_name, dtype_name

PROTOCOL = 1
MAX_HEADER_BYTES = 1 << 20


class WireError(ValueError):
    """A frame that does not decode; the receiver drops it and keeps serving."""


def pack(header: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> list[Any]:
    """Frames for a message. Tensor frames are memoryviews over the tensors' own storage (no copy)."""
    metas, frames = [], []
    for t in tensors:
        t = t.detach()
        meta = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "nbytes": t.numel() * t.element_size()}
        nhwc = is_nhwc(t)
        if nhwc:
            meta["layout"] = NHWC
        metas.append(meta)
        frames.append(memoryview(wire_order(t, nhwc).reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    head = json.dumps({**header, "v": PROTOCOL, "tensors": metas}, separators=(",", ":")).encode()
    return [head, *frames]


NHWC = "nhwc"


def is_nhwc(t: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels_last (and not also plainly contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def wire_order(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    """The tensor as a contiguous tensor whose bytes are in wire order (N, H, W, C when `nhwc`)."""
    return t.permute(0, 2, 3, 1).contiguous() if nhwc else t.contiguous()


def from_wire_order(flat: torch.Tensor, shape: list[int], nhwc: bool) -> torch.Tensor:
    """A tensor of `shape` over bytes in wire order (the inverse of `wire_order`, no copy)."""
    if nhwc:
        n, c, h, w = shape
        return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return flat.reshape(shape)


def layout_of(meta: dict[str, Any], shape: list[int]) -> bool:
    """Whether a tensor description says channels_last byte order; anything else is refused."""
    layout = meta.get("layout")
    if layout is None:
        return False
    if layout != NHWC or len(shape) != 4:
        raise WireError(f"bad tensor layout {layout!r} for shape {shape}")
    return True


def header_of(frame: Any) -> dict[str, Any]:
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != PROTOCOL or not isinstance(header.get("type"), str):
        raise WireError("header is not an edgeweave message of this protocol version")
    return header


def unpack(frames: Sequence[Any]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Header and tensors of a message; the tensors share memory with the received frames."""
    if not frames:
        raise WireError("empty message")
    header = header_of(frames[0])
    metas = header.get("tensors", [])
    if not isinstance(metas, list) or len(metas) != len(frames) - 1:
        raise WireError(
            f"header describes {len(metas) if isinstance(metas, list) else '?'} tensors, message has {len(frames) - 1}"
        )
    tensors = [_tensor(meta, frame) for meta, frame in zip(metas, frames[1:], strict=True)]
    return header, tensors


def _tensor(meta: Any, frame: Any) -> torch.Tensor:
    try:
        dtype = dtype_from_name(meta["dtype"])
        shape = [int(d) for d in meta["shape"]]
        nbytes = int(meta["nbytes"])
        nhwc = layout_of(meta, shape)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"bad tensor description: {exc}") from None
    if any(d < 0 for d in shape) or nbytes != math.prod(shape) * torch.empty((), dtype=dtype).element_size():
        raise WireError("tensor shape, dtype and byte length disagree")
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    if buf.nbytes != nbytes:
        raise WireError(f"tensor frame has {buf.nbytes} bytes, header says {nbytes}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        # Received frames are read-only; the graph is functional, so no op writes into its inputs.
        warnings.simplefilter("ignore", UserWarning)
        return from_wire_order(torch.frombuffer(buf, dtype=torch.uint8).view(dtype), shape, nhwc)
