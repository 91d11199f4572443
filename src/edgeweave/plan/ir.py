"""The Plan: one serialisable description of who computes what and what crosses which link.

A plan is the task graph of ONE request: compute tasks (a device runs a set of graph nodes,
optionally only an output region of them) and transfer tasks (named values, or a region of one,
go from one device to another). `after` lists the tasks of the same request that must finish
first. The simulator replays this graph for a stream of requests; the runtime executes it. Both
read the same JSON, so a prediction and a measurement can be compared task by task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeweave.errors import read_json, validated

PLAN_VERSION = 1

MAX_STEPS = 64  # chunks a band's input may be streamed in (a hand-given --chunks is bounded alike)
Interval = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]  # rows [lo, hi) along the split axis


class Region(BaseModel):
    """Which band of a split segment a task computes or carries (hybrid and tensor plans).

    A compute task names the device's whole band of every segment output (`own`), the chunk count
    its input was cut into and its `step`: the worker rebuilds the same input-driven steps from
    them (graph/band_program.py) and runs step `step`. A transfer names the rows of each value it
    carries (`bands`). Typed and bounded: it arrives at workers inside deploy messages."""

    model_config = ConfigDict(extra="forbid")

    axis: Literal["rows", "cols"]
    segment: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    own: dict[str, Interval] | None = None
    chunks: int | None = Field(None, ge=1, le=MAX_STEPS)
    step: int | None = Field(None, ge=0, lt=MAX_STEPS)
    bands: dict[str, Interval] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Region:
        if self.segment[0] > self.segment[1]:
            raise ValueError(f"segment {list(self.segment)} ends before it starts")
        for field_name in ("own", "bands"):
            for value, (lo, hi) in (getattr(self, field_name) or {}).items():
                if lo > hi:
                    raise ValueError(f"{field_name} rows of {value!r} end before they start: [{lo}, {hi})")
        if (self.step is None) != (self.chunks is None):
            raise ValueError("a band step needs both `chunks` and `step`")
        if self.step is not None and self.step >= self.chunks:
            raise ValueError(f"step {self.step} of a band streamed in {self.chunks} chunks")
        return self


class ComputeTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["compute"] = "compute"
    id: str
    device: str
    nodes: list[int] = Field(min_length=1)  # indices in profile order, ascending
    after: list[str] = Field(default_factory=list)
    time_s: float = Field(ge=0)  # predicted compute time on this device
    memory_bytes: int = 0
    region: Region | None = None  # hybrid plans: the band computed


class TransferTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["transfer"] = "transfer"
    id: str
    src: str
    dst: str
    values: list[str] = Field(min_length=1)  # node names or "input"
    bytes: int = Field(ge=0)
    after: list[str] = Field(default_factory=list)
    region: Region | None = None  # hybrid plans: the rows carried
    # per-message software cost the planner counted on top of the link's latency + bytes/bandwidth;
    # the simulator adds it (the runtime simply pays it)
    overhead_s: float = Field(0.0, ge=0)


Task = Annotated[ComputeTask | TransferTask, Field(discriminator="kind")]


class StageRef(BaseModel):
    device: str
    first: int
    last: int


class Plan(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = PLAN_VERSION
    strategy: str
    objective: str
    model: str
    source: str
    devices: list[str]
    num_nodes: int
    input_bytes: int
    output_bytes: int
    tasks: list[Task]
    stages: list[StageRef] | None = None
    predicted: dict[str, Any] = Field(default_factory=dict)
    cost_model: dict[str, Any] = Field(default_factory=dict)
    cluster: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _well_formed(self) -> Plan:
        ids: set[str] = set()
        for task in self.tasks:
            if task.id in ids:
                raise ValueError(f"task id {task.id!r} appears twice")
            missing = [a for a in task.after if a not in ids]
            if missing:
                raise ValueError(f"task {task.id!r} waits for {missing[0]!r}, which is not an earlier task")
            ids.add(task.id)
            for dev in [task.device] if task.kind == "compute" else [task.src, task.dst]:
                if dev not in self.devices:
                    raise ValueError(f"task {task.id!r} uses device {dev!r}, which is not in the plan's devices")
        return self

    @property
    def compute_tasks(self) -> list[ComputeTask]:
        return [t for t in self.tasks if t.kind == "compute"]

    @property
    def transfer_tasks(self) -> list[TransferTask]:
        return [t for t in self.tasks if t.kind == "transfer"]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return validated(cls, read_json(path, "plan"), str(path))
