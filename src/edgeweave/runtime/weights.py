"""Weights as safetensors bytes, made and read with one copy, and weights read from a file on demand.

Why not `safetensors.torch.save`/`load`: a coordinator shipping ViT-Huge stage by stage, and a
worker receiving its stage, must each hold a stage's weights about once. `save` wants the tensors
materialised (the caller cloned them, too) and returns a second copy; `load` copies the bytes into
new tensors while the message is still held. Here a blob is one preallocated buffer filled tensor
by tensor (from memory, or straight from a checkpoint file's byte ranges), and the receiver's
tensors are views into the buffer it received, each 64-byte aligned (see ALIGN: alignment
changes float results). The format stays safetensors: bytes and a JSON header, nothing that can
carry code, and `safetensors.torch.load` reads our blobs and we read its.

`WeightFile` is a read-only mapping over a .safetensors file: nothing is read until a key is
asked for, so a session that ships weights from it holds one stage at a time, not the model
(`runtime.session` ships each device's blob before it makes the next).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# Every tensor starts 64-byte aligned, in the blob and in memory. Not a nicety: the CPU kernels
# pick their vector path by the address, and resnet50's output moved by 3e-5 with its weights 4
# bytes off alignment (0 at 16, 32, 48) -- a split run would no longer equal single-device
# execution. safetensors allows no gaps between tensors, so a gap is a padding entry (`PAD`),
# which readers here drop; the JSON header is space-padded to the same alignment.
ALIGN = 64
PAD = "__edgeweave_pad__."


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
    """Header bytes (length prefix included, padded to ALIGN) and each tensor's place in the data
    section, every start ALIGN-aligned, the gaps filled by PAD entries (uint8, never read)."""
    entries: dict[str, Entry] = {}
    meta: dict[str, dict] = {}
    offset = 0
    for key, dtype, shape in specs:
        if dtype not in _NAMES:
            raise ValueError(f"weight {key!r} has dtype {dtype}, which a weight blob cannot carry")
        gap = -offset % ALIGN
        if gap:
            meta[f"{PAD}{len(meta)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            offset += gap
        nbytes = math.prod(shape) * dtype.itemsize
        entries[key] = Entry(dtype, tuple(shape), offset, offset + nbytes)
        meta[key] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % ALIGN)
    return struct.pack("<Q", len(raw)) + raw, entries


def aligned_buffer(nbytes: int) -> memoryview:
    """A writable buffer of `nbytes` whose first byte is ALIGN-aligned (torch's CPU allocator
    aligns to 64; a bytearray only to 16). The memoryview keeps its storage alive."""
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview(torch.empty(nbytes, dtype=torch.uint8).numpy()).cast("B")


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's bytes without a copy when it is contiguous on the CPU (one copy otherwise)."""
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous():
        t = t.to("cpu").contiguous()
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def weights_blob(weights: Mapping[str, torch.Tensor], keys: list[str]) -> memoryview | bytes:
    """The named weights as one safetensors buffer (aligned: see ALIGN). A `WeightFile` fills it
    from the file; any other mapping from its tensors' memory. Either way the buffer is the only
    copy made."""
    if not keys:
        return b""
    if isinstance(weights, WeightFile):
        return weights.blob(keys)
    tensors = {k: weights[k] for k in keys}
    head, entries = _layout((k, t.dtype, tuple(t.shape)) for k, t in tensors.items())
    view = aligned_buffer(len(head) + max(e.end for e in entries.values()))
    view[: len(head)] = head
    for key, e in entries.items():
        view[len(head) + e.start : len(head) + e.end] = _tensor_bytes(tensors[key])
    return view


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


def load_weights_blob(blob: bytes | bytearray | memoryview | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors buffer (PAD entries dropped). From a writable buffer whose
    tensors sit ALIGN-aligned (what `weights_blob` lays out: the source's own deployment) they are
    views into it; a tensor of another writer's layout, or of read-only bytes, is copied to
    aligned memory. A dict is weights already received tensor by tensor (`load_weights_frames`,
    what `protocol.join_deploy` returns), taken as they are."""
    if isinstance(blob, dict):
        return blob
    if not blob:
        return {}
    view = memoryview(blob).cast("B")
    base, entries = parse_header(view)
    if view.readonly:
        copy = aligned_buffer(len(view))
        copy[:] = view
        view = copy
    whole = torch.frombuffer(view, dtype=torch.uint8)
    out = {}
    for key, e in entries.items():
        if key.startswith(PAD):
            continue
        raw = whole[base + e.start : base + e.end]
        if e.nbytes and raw.data_ptr() % ALIGN:
            raw = raw.clone()  # torch's allocator aligns it
        out[key] = raw.view(e.dtype).view(e.shape) if e.nbytes else torch.empty(e.shape, dtype=e.dtype)
    return out


def load_weights_frames(frames: list[Any], first: int, nbytes: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors blob that arrived as `frames[first:]` (`nbytes` in all), each
    copied into memory of its own, each frame released (set to None in `frames`) as soon as the
    tensors read past it. Why not join the frames into one buffer first: that buffer is mapped, and
    counted by RLIMIT_DATA, the moment it is allocated, while the frames still hold every byte, so
    a device would need twice its stage. Here the frames shrink as the tensors grow: about once."""
    if nbytes == 0:
        return {}
    reader = _FrameReader(frames, first)
    if reader.size != nbytes:
        raise ValueError("weight frames disagree with the blob's length")
    head = reader.read(0, min(8, nbytes))
    if len(head) < 8:
        raise ValueError("weight blob shorter than its length prefix")
    (hlen,) = struct.unpack("<Q", head)
    if hlen > min(MAX_HEADER, nbytes - 8):
        raise ValueError("weight blob header length out of range")
    base, entries = parse_header(_Sized(reader.read(0, 8 + hlen), nbytes))  # type: ignore[arg-type]
    out = {}
    for key, e in sorted(entries.items(), key=lambda kv: kv[1].start):  # parse_header refused overlaps
        tensor = torch.empty(e.shape, dtype=e.dtype)  # torch's allocator: ALIGN-aligned
        if e.nbytes:
            reader.copy_into(base + e.start, memoryview(tensor.view(-1).view(torch.uint8).numpy()).cast("B"))
        reader.release_below(base + e.end)
        if not key.startswith(PAD):
            out[key] = tensor
    reader.release_below(nbytes)
    return out


class _FrameReader:
    """Byte ranges of a blob spread over consecutive frames (zmq Frames, bytes or memoryviews)."""

    def __init__(self, frames: list[Any], first: int):
        self.frames, self.first = frames, first
        self.starts: list[int] = []
        pos = 0
        for f in frames[first:]:
            self.starts.append(pos)
            pos += len(self._data(f))
        self.size = pos
        self.released = first  # frames before this index are gone

    @staticmethod
    def _data(frame: Any) -> memoryview:
        return (frame.buffer if hasattr(frame, "buffer") else memoryview(frame)).cast("B")

    def _index(self, pos: int) -> int:
        return self.first + max(0, bisect.bisect_right(self.starts, pos) - 1)

    def read(self, lo: int, hi: int) -> bytes:
        out = bytearray(hi - lo)
        self.copy_into(lo, memoryview(out))
        return bytes(out)

    def copy_into(self, lo: int, dst: memoryview) -> None:
        pos, done = lo, 0
        while done < len(dst):
            i = self._index(pos)
            data = self._data(self.frames[i])
            off = pos - self.starts[i - self.first]
            n = min(len(data) - off, len(dst) - done)
            dst[done : done + n] = data[off : off + n]
            pos, done = pos + n, done + n

    def release_below(self, pos: int) -> None:
        """Drop every frame that ends at or before byte `pos`."""
        end = len(self.frames)
        while self.released < end:
            i = self.released
            stop = self.starts[i + 1 - self.first] if i + 1 < end else self.size
            if stop > pos:
                break
            self.frames[i] = None
            self.released += 1


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
        out = torch.empty(e.shape, dtype=e.dtype)
        if e.nbytes == 0:
            return out
        with open(self.path, "rb") as f:
            f.seek(self.base + e.start)
            if f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")) != e.nbytes:
                raise UserError(f"weights file {self.path} is truncated at {key!r}")
        return out

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.entries if not k.startswith(PAD))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def nbytes(self, keys: Iterable[str]) -> int:
        return sum(self.entries[k].nbytes for k in keys)

    def blob(self, keys: list[str]) -> memoryview:
        """The named tensors as a safetensors buffer, read from the file straight into it."""
        head, entries = _layout((k, self.entries[k].dtype, self.entries[k].shape) for k in keys)
        view = aligned_buffer(len(head) + max(e.end for e in entries.values()))
        view[: len(head)] = head
        with open(self.path, "rb") as f:
            for key, e in entries.items():
                src = self.entries[key]
                f.seek(self.base + src.start)
                if f.readinto(view[len(head) + e.start : len(head) + e.end]) != e.nbytes:
                    raise UserError(f"weights file {self.path} is truncated at {key!r}")
        return view


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
        pos = 0
        for key, e in entries.items():
            f.write(b"\0" * (e.start - pos))  # a PAD entry's bytes
            f.write(_tensor_bytes(weights[key]))
            pos = e.end
