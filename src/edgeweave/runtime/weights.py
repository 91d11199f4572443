"""Weights as safetensors bytes, made and read with one copy, and weights read from a file on demand.

Why not `safetensors.torch.save`/`load`: a coordinator shipping ViT-Huge stage by stage, and a
worker receiving its stage, must each hold a stage's weights about once. `save` wants the tensors
materialised (the caller cloned them, too) and returns a second copy; `load` copies the bytes into
new tensors while the message is still held. Here a blob is one preallocated buffer filled tensor
by tensor (from memory, or straight from a checkpoint file's byte ranges), and the receiver's
tensors are views into the buffer it received. The format stays safetensors: bytes and a JSON
header, nothing that can carry code, and `safetensors.torch.load` reads our blobs and we read its.

`WeightFile` is a read-only mapping over a .safetensors file: nothing is read until a key is
asked for, so a session that ships weights from it holds one stage at a time, not the model
(`runtime.session` ships each device's blob before it makes the next).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeweave.errors import UserError

# safetensors' dtype names <-> torch dtypes (those a captured graph can hold)
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 100 << 20  # safetensors' own cap on the JSON header
_ALIGN = 8  # the header is padded so that the data section starts 8-aligned


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors buffer or file: dtype, shape and byte range of the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _layout(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]]) -> tuple[bytes, dict[str, Entry]]:
    """Header bytes (length prefix included, padded to 8) and each tensor's place in the data section.
    Widest dtypes first and back to back (safetensors allows no gaps): every tensor's size is a
    multiple of its element size, so every start stays aligned for its dtype."""
    order = sorted(specs, key=lambda s: (-s[1].itemsize, s[0]))
    entries: dict[str, Entry] = {}
    offset = 0
    for key, dtype, shape in order:
        if dtype not in _NAMES:
            raise ValueError(f"weight {key!r} has dtype {dtype}, which a weight blob cannot carry")
        nbytes = math.prod(shape) * dtype.itemsize
        entries[key] = Entry(dtype, tuple(shape), offset, offset + nbytes)
        offset += nbytes
    meta = {
        k: {"dtype": _NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [e.start, e.end]}
        for k, e in entries.items()
    }
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw, entries


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes without a copy when it is contiguous on the CPU (one copy otherwise)."""
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.to("cpu").contiguous()
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def weights_blob(weights: Mapping[str, torch.Tensor], keys: list[str]) -> bytearray:
    """The named weights as one safetensors buffer. A `WeightFile` fills it from the file; any
    other mapping from its tensors' memory. Either way the buffer is the only copy made."""
    if not keys:
        return bytearray()
    if isinstance(weights, WeightFile):
        return weights.blob(keys)
    tensors = {k: weights[k] for k in keys}
    head, entries = _layout((k, t.dtype, tuple(t.shape)) for k, t in tensors.items())
    end = max(e.end for e in entries.values())
    buf = bytearray(len(head) + end)
    buf[: len(head)] = head
    view = memoryview(buf)
    for key, e in entries.items():
        view[len(head) + e.start : len(head) + e.end] = _tensor_bytes(tensors[key])
    return buf


def parse_header(buf: memoryview) -> tuple[int, dict[str, Entry]]:
    """The data section's start and each tensor's entry, every field checked (the bytes may come
    from the network): a ValueError names what is wrong."""
    if len(buf) < 8:
        raise ValueError("weight blob shorter than its length prefix")
    (hlen,) = struct.unpack("<Q", buf[:8])
    if hlen > min(MAX_HEADER, len(buf) - 8):
        raise ValueError("weight blob header length out of range")
    try:
        meta = json.loads(bytes(buf[8 : 8 + hlen]))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"weight blob header is not JSON: {type(exc).__name__}") from None
    if not isinstance(meta, dict):
        raise ValueError("weight blob header is not a JSON object")
    meta.pop("__metadata__", None)
    data = len(buf) - 8 - hlen
    entries: dict[str, Entry] = {}
    for key, spec in meta.items():
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"weight blob entry {key[:60]!r} is malformed")
        dtype, shape, offsets = _DTYPES.get(spec["dtype"]), spec["shape"], spec["data_offsets"]
        ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        ints = ints and all(type(v) is int and v >= 0 for v in [*shape, *offsets])
        if dtype is None or not ints or len(shape) > 16:
            raise ValueError(f"weight blob entry {key[:60]!r} has a bad dtype, shape or offsets")
        start, end = offsets
        if not start <= end <= data or end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"weight blob entry {key[:60]!r}: offsets disagree with its shape or the blob's size")
        entries[key] = Entry(dtype, tuple(shape), start, end)
    spans = sorted((e.start, e.end) for e in entries.values() if e.nbytes)
    if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
        raise ValueError("weight blob entries overlap")
    return 8 + hlen, entries


def load_weights_blob(blob: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors buffer. From a writable buffer (what `protocol.join_deploy`
    makes) they are views into it, so receiving a stage costs its bytes once; from read-only bytes
    they are copies."""
    if not blob:
        return {}
    view = memoryview(blob)
    base, entries = parse_header(view)
    if view.readonly:
        view = memoryview(bytearray(view))
    out = {}
    for key, e in entries.items():
        if e.nbytes == 0:
            out[key] = torch.empty(e.shape, dtype=e.dtype)
            continue
        raw = torch.frombuffer(view, dtype=torch.uint8, count=e.nbytes, offset=base + e.start)
        out[key] = (
            raw.view(e.dtype).view(e.shape)
            if (base + e.start) % e.dtype.itemsize == 0
            else raw.clone().view(e.dtype).view(e.shape)
        )
    return out


class WeightFile(Mapping[str, torch.Tensor]):
    """A .safetensors checkpoint read on demand: `wf[key]` reads that tensor from the file, and
    `blob(keys)` copies those tensors' bytes from the file into a new blob; nothing is cached, so
    what a caller holds is what it asked for. Keys are the model's state-dict keys, which are the
    weight keys of a graph captured from the same model (see `zoo.streaming`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                (hlen,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (-1,)
                if not 0 < hlen <= MAX_HEADER:
                    raise ValueError("not a safetensors file (bad header length)")
                head = prefix + f.read(hlen)
                size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read weights file {self.path}: {exc}") from None
        # parse the header against the file's real size, without reading the data section
        sized = _Sized(head, size)
        try:
            self.base, self.entries = parse_header(sized)  # type: ignore[arg-type]
        except ValueError as exc:
            raise UserError(f"weights file {self.path}: {exc}") from None

    def __getitem__(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        buf = bytearray(e.nbytes)
        with open(self.path, "rb") as f:
            f.seek(self.base + e.start)
            if f.readinto(buf) != e.nbytes:
                raise UserError(f"weights file {self.path} is truncated at {key!r}")
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        return torch.frombuffer(buf, dtype=torch.uint8).view(e.dtype).view(e.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def nbytes(self, keys: Iterable[str]) -> int:
        return sum(self.entries[k].nbytes for k in keys)

    def blob(self, keys: list[str]) -> bytearray:
        """The named tensors as a safetensors buffer, read from the file straight into it."""
        head, entries = _layout((k, self.entries[k].dtype, self.entries[k].shape) for k in keys)
        buf = bytearray(len(head) + max(e.end for e in entries.values()))
        buf[: len(head)] = head
        view = memoryview(buf)
        with open(self.path, "rb") as f:
            for key, e in entries.items():
                src = self.entries[key]
                f.seek(self.base + src.start)
                if f.readinto(view[len(head) + e.start : len(head) + e.end]) != e.nbytes:
                    raise UserError(f"weights file {self.path} is truncated at {key!r}")
        return buf


class _Sized:
    """A file's header bytes posing as the whole file for `parse_header` (which needs the length)."""

    def __init__(self, head: bytes, size: int):
        self.head, self.size = head, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> bytes:
        return self.head[s]


def save_weights(weights: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write weights as a .safetensors file, one tensor at a time (no second copy of the model)."""
    keys = list(weights)
    head, entries = _layout((k, weights[k].dtype, tuple(weights[k].shape)) for k in keys)
    with open(path, "wb") as f:
        f.write(head)
        for key in entries:
            f.write(_tensor_bytes(weights[key]))
