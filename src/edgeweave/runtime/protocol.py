"""The strict frame decoder: every message is checked in full before any tensor buffer is touched.

A worker serves peers it cannot fully trust (a buggy or compromised device holds a valid key),
so a message is accepted only when all of this holds, checked in this order, cheapest first:

  size       frame count, header bytes and total bytes within limits (libzmq's MAXMSGSIZE already
             cut any single frame above the deployment's limit on the way in);
  JSON       the header is a JSON object of this protocol version with a known `type`;
  schema     exactly the fields of that type, each of exactly its JSON type (no bool for an int,
             no float for a shape entry);
  plan       data: a task this device receives, from that task's source device (the CURVE-
             authenticated sender when keys are in use), carrying exactly that task's values with
             exactly the dtype, shape and byte length the deployment expects, in frames of exactly
             that length;
  window     the request id is admitted by `Admission` (no replay, not absurdly far ahead, within
             the sender's in-flight cap).

Only then are tensors built, from the EXPECTED dtype and shape (never from what the header
claims) as zero-copy views of the frames. Nothing is unpickled, evaluated or imported.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from edgeweave.graph.opgraph import dtype_from_name
from edgeweave.graph.opset import check_node
from edgeweave.plan.ir import Task
from edgeweave.runtime.admission import Admission, Refused
from edgeweave.runtime.weights import load_weights_frames
from edgeweave.runtime.wire import NHWC, PROTOCOL, WireError, from_wire_order

DATA_HEADER_LIMIT = 64 << 10  # any header that is not the coordinator's
CONTROL_HEADER_LIMIT = 16 << 20  # a deploy header lists the device's graph nodes
# A deploy message's body (its JSON header, then its weights) travels in frames of at most this
# many bytes, so that no frame a worker accepts is larger than its largest incoming tensor or
# this: libzmq's MAXMSGSIZE (per frame) can then be tight, and a member's frames of a MiB are cut
# at the first one instead of being held.
DEPLOY_CHUNK = 256 << 10
CONTROL = frozenset({"hello", "ping", "collect", "shutdown", "release"})
COORDINATOR_ONLY = frozenset({"deploy", "collect", "shutdown", "probe", "release"})
KNOWN = CONTROL | {"data", "deploy", "probe", "probed"}
# Link probes (the coordinator's bandwidth estimate of a link no plan uses right now): the
# coordinator asks a worker to `probe` a peer, which receives `probed` filler bytes over the
# emulated link and reports how long they took. Small, so they fit any deployment's frame limit.
PROBE_MAX_BYTES = 48 << 10
_DEPLOY_FIELDS = frozenset({"v", "type", "tensors", "header_bytes", "weight_bytes"})
_DATA_FIELDS = frozenset({"v", "type", "request", "task", "values", "src", "t_start", "bytes", "tensors"})
_CONTROL_FIELDS = frozenset({"v", "type", "tensors"})
_MAX_REQUEST = 1 << 62


class Drop(WireError):
    """A message the worker drops and counts; `reason` is a short category for the counters."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


def frame_len(frame: Any) -> int:
    return len(frame.buffer) if hasattr(frame, "buffer") else len(frame)


def parse_header(frame: Any, limit: int) -> dict[str, Any]:
    """The header frame as a JSON object of this protocol version with a known type."""
    if frame_len(frame) > limit:
        raise Drop("too large", f"header of {frame_len(frame)} bytes exceeds {limit}")
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, too deep, a 5000-digit number
        raise Drop("not json", f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise Drop("schema", "header is not a JSON object")
    if header.get("v") != PROTOCOL or type(header.get("v")) is not int:
        raise Drop("schema", "not this protocol version")
    kind = header.get("type")
    if type(kind) is not str or kind not in KNOWN:
        raise Drop("unknown type", f"unknown message type {str(kind)[:40]!r}")
    return header


def check_control(header: dict[str, Any], frames: list[Any]) -> None:
    """hello, ping, collect, release and shutdown carry nothing but their type."""
    if header.keys() != _CONTROL_FIELDS or header["tensors"] != [] or len(frames) != 1:
        raise Drop("schema", f"malformed {header['type']} message")


def check_probe(header: dict[str, Any], frames: list[Any]) -> None:
    """probe: {dst, bytes}: send `bytes` filler bytes to peer `dst` (the coordinator only)."""
    if (
        header.keys() != _CONTROL_FIELDS | {"dst", "bytes"}
        or header["tensors"] != []
        or len(frames) != 1
        or type(header["dst"]) is not str
        or type(header["bytes"]) is not int
        or not 0 < header["bytes"] <= PROBE_MAX_BYTES
    ):
        raise Drop("schema", "malformed probe message")


def check_probed(header: dict[str, Any], frames: list[Any], sender: str | None) -> tuple[str, int, float]:
    """probed: filler bytes from a peer; (src, bytes, t_start) once checked."""
    if (
        header.keys() != {"v", "type", "tensors", "src", "t_start", "bytes"}
        or len(frames) != 2
        or type(header["src"]) is not str
        or type(header["bytes"]) is not int
        or not 0 < header["bytes"] <= PROBE_MAX_BYTES
        or frame_len(frames[1]) != header["bytes"]
        or type(header["t_start"]) is not float
        or not math.isfinite(header["t_start"])
    ):
        raise Drop("schema", "malformed probed message")
    if sender is not None and sender != header["src"]:
        raise Drop("spoofed", f"{sender} claims to be {header['src']}")
    return header["src"], header["bytes"], header["t_start"]


def same_json(a: Any, b: Any) -> bool:
    """Equality that also requires equal JSON types (1.0 and True are not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return a == b


# -- what a deployment expects ---------------------------------------------------------------
@dataclass(frozen=True)
class ValueSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    meta: dict[str, Any]  # the tensor description a correct sender writes, for exact comparison


@dataclass(frozen=True)
class Incoming:
    """A transfer this device receives, as the deployment says it must look."""

    task: str
    src: str
    names: list[str]
    specs: tuple[ValueSpec, ...]
    nbytes: int


def value_spec(name: str, dtype: str, shape: list[int]) -> ValueSpec:
    torch_dtype = dtype_from_name(dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=torch_dtype).element_size()
    return ValueSpec(name, torch_dtype, tuple(shape), nbytes, {"dtype": dtype, "shape": list(shape), "nbytes": nbytes})


@dataclass
class Decoded:
    request: int
    task: Incoming
    values: dict[str, torch.Tensor]
    header: dict[str, Any]


def decode_data(
    header: dict[str, Any],
    frames: list[Any],
    incoming: dict[str, Incoming],
    admission: Admission,
    sender: str | None,
) -> Decoded:
    """A data message checked against the deployment, then admitted; raises Drop otherwise.

    `sender` is the CURVE-authenticated member that sent it (None without keys).
    """
    if header.keys() != _DATA_FIELDS:
        raise Drop("schema", "data header has the wrong fields")
    request, task_id, names, src = header["request"], header["task"], header["values"], header["src"]
    if type(request) is not int or not 0 <= request < _MAX_REQUEST:
        raise Drop("schema", "request id is not a sane integer")
    if type(task_id) is not str or type(src) is not str or type(header["bytes"]) is not int:
        raise Drop("schema", "task, src or bytes has the wrong type")
    t_start = header["t_start"]
    if type(t_start) not in (int, float) or not math.isfinite(t_start):
        raise Drop("schema", "t_start is not a finite number")
    task = incoming.get(task_id)
    if task is None:
        raise Drop("unknown task", "this device receives no such task")
    if src != task.src or (sender is not None and sender != task.src):
        raise Drop("wrong sender", f"task {task_id} comes from {task.src}")
    if not same_json(names, task.names):
        raise Drop("wrong values", f"task {task_id} carries {task.names}")
    metas = header["tensors"]
    if type(metas) is not list or len(metas) != len(task.specs) or len(frames) != 1 + len(task.specs):
        raise Drop("wrong tensors", f"task {task_id} carries {len(task.specs)} tensors")
    layouts = []
    for meta, spec, frame in zip(metas, task.specs, frames[1:], strict=True):
        core = {k: v for k, v in meta.items() if k != "layout"} if type(meta) is dict else meta
        if not same_json(core, spec.meta):
            raise Drop("wrong tensors", f"{spec.name} must be {spec.meta}")
        layout = meta.get("layout")
        if layout is not None and (layout != NHWC or len(spec.shape) != 4):
            raise Drop("wrong tensors", f"{spec.name}: layout must be absent or {NHWC!r} for a 4-D tensor")
        layouts.append(layout == NHWC)
        if frame_len(frame) != spec.nbytes:
            raise Drop("wrong tensors", f"{spec.name}: frame has {frame_len(frame)} bytes, not {spec.nbytes}")
    if header["bytes"] != task.nbytes:
        raise Drop("wrong tensors", "byte count disagrees")
    try:
        admission.admit(request, task_id, src)
    except Refused as exc:
        raise Drop(exc.reason, str(exc)) from None
    values = {
        spec.name: _view(spec, frame, nhwc) for spec, frame, nhwc in zip(task.specs, frames[1:], layouts, strict=True)
    }
    return Decoded(request, task, values, header)


def _view(spec: ValueSpec, frame: Any, nhwc: bool = False) -> torch.Tensor:
    """A tensor over the received frame's bytes (no copy), shaped as the deployment expects."""
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    with warnings.catch_warnings():
        # Received frames are read-only; the graph is functional, so no op writes into its inputs.
        warnings.simplefilter("ignore", UserWarning)
        return from_wire_order(torch.frombuffer(buf, dtype=torch.uint8).view(spec.dtype), list(spec.shape), nhwc)


# -- the deploy message ----------------------------------------------------------------------
def _chunks(body: bytes) -> list[memoryview]:
    view = memoryview(body)
    return [view[k : k + DEPLOY_CHUNK] for k in range(0, len(body), DEPLOY_CHUNK)]


def deploy_frames(header: dict[str, Any], blob: bytes) -> list[Any]:
    """A deploy message: an envelope saying how many bytes of JSON header and of weights follow,
    then both, each cut into frames of at most DEPLOY_CHUNK bytes."""
    body = json.dumps({**header, "v": PROTOCOL, "tensors": [], "has_weights": bool(blob)}, separators=(",", ":"))
    raw = body.encode()
    envelope = {"v": PROTOCOL, "type": "deploy", "tensors": [], "header_bytes": len(raw), "weight_bytes": len(blob)}
    return [json.dumps(envelope).encode(), *_chunks(raw), *_chunks(blob)]


def join_deploy(envelope: dict[str, Any], frames: list[Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The (header, weights) of a deploy message checked frame by frame against its envelope;
    a ValueError says what is wrong (the worker reports it to the coordinator). The weight
    frames are consumed tensor by tensor: `frames` holds None in their place afterwards, so where
    that list is their only holder (the worker's receive loop) a stage costs its weights about
    once, not twice (`weights.load_weights_frames`)."""
    if envelope.keys() != _DEPLOY_FIELDS or envelope["tensors"] != []:
        raise ValueError("malformed deploy envelope")
    sizes = envelope["header_bytes"], envelope["weight_bytes"]
    if any(type(n) is not int or n < 0 for n in sizes) or not 0 < sizes[0] <= CONTROL_HEADER_LIMIT:
        raise ValueError("malformed deploy envelope: header_bytes and weight_bytes")
    counts = [-(-n // DEPLOY_CHUNK) for n in sizes]
    if len(frames) != 1 + sum(counts):
        raise ValueError(f"deploy message has {len(frames)} frames, its envelope says {1 + sum(counts)}")
    parts = [frames[1 : 1 + counts[0]], frames[1 + counts[0] :]]
    for n, chunks in zip(sizes, parts, strict=True):
        lengths = [frame_len(f) for f in chunks]
        if sum(lengths) != n or any(k != DEPLOY_CHUNK for k in lengths[:-1]):
            raise ValueError("deploy message: a chunk has the wrong length")
    header_raw = b"".join(f.bytes if hasattr(f, "bytes") else bytes(f) for f in parts[0])
    del parts, chunks  # the slices hold the frames too
    try:
        header = json.loads(header_raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"deploy header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict) or header.get("type") != "deploy":
        raise ValueError("deploy header is not a deploy message")
    if header.get("has_weights") is not (sizes[1] > 0):
        raise ValueError(f"deploy message carries {sizes[1]} bytes of weights; has_weights disagrees")
    return header, load_weights_frames(frames, 1 + counts[0], sizes[1])


_OP = re.compile(r"^(getitem|[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SpecMsg(_Strict):
    name: str
    dtype: str
    shape: list[int] = Field(max_length=16)


class NodeMsg(_Strict):
    name: str
    op: str = Field(pattern=_OP.pattern)
    args: list[Any]
    kwargs: dict[str, Any]
    inputs: list[str]
    weights: list[str]
    out_index: int | None = None


class GraphNodeMsg(NodeMsg):
    out_shape: list[Any]
    out_dtype: str | list[str]
    out_bytes: int = Field(ge=0)
    param_bytes: int = Field(ge=0)
    flops: int = Field(ge=0)
    module: str = ""


class GraphMsg(_Strict):
    """The operator graph (no weights) that band tasks of a hybrid plan rebuild their segments from."""

    model: str
    input_shape: list[int] = Field(max_length=16)
    input_dtype: str
    nodes: list[GraphNodeMsg]
    weight_shapes: dict[str, list[int]] = Field(default_factory=dict)
    weight_dtypes: dict[str, str] = Field(default_factory=dict)


class DeployMsg(_Strict):
    """The JSON part of a deploy message (its weights travel beside it as safetensors bytes)."""

    v: Literal[1] = 1
    type: Literal["deploy"]
    tensors: list[Any] = Field(default_factory=list, max_length=0)
    has_weights: bool = False
    device: str
    source: str
    output: str
    model: str
    tasks: list[dict[str, Any]]
    nodes: dict[str, NodeMsg]
    input_shape: list[int]
    input_dtype: str
    graph_len: int = Field(ge=0)
    receives: dict[str, list[SpecMsg]]
    max_inflight: int = Field(ge=1, le=1 << 16)
    speed: float = Field(default=1.0, gt=0)
    emulate: bool = False  # take the plan's time per task even at speed >= 1 (a device with its own profile)
    peers: dict[str, str] = Field(default_factory=dict)
    links: dict[str, dict[str, Any]] = Field(default_factory=dict)
    epoch: float | None = None
    shape_bandwidth: bool = True
    first_request: int = Field(default=0, ge=0)  # a redeployment's requests start here
    keep_weights: bool = False  # a redeployment: reuse the weights held, the blob adds the missing ones
    graph: GraphMsg | None = None


_TASKS = TypeAdapter(list[Task])


def parse_deploy(header: dict[str, Any]) -> DeployMsg:
    """The deploy header, validated; a ValueError says what is wrong (reported to the coordinator)."""
    try:
        msg = DeployMsg.model_validate(header)
        _TASKS.validate_python(msg.tasks)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"malformed deploy message: {where}: {err['msg']}") from None
    for node in [*msg.nodes.values(), *(msg.graph.nodes if msg.graph else [])]:
        if any(part.startswith("__") for part in node.op.split(".")):
            raise ValueError(f"malformed deploy message: operator {node.op!r}")
        # only pure tensor operators, refused here, before anything of the deployment is built
        # (graph/opset.py says why: `aten.from_file` alone reads and writes the host's files)
        check_node(node.op, node.args, node.kwargs)
    return msg
