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


class ComputeTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["compute"] = "compute"
    id: str
    device: str
    nodes: list[int] = Field(min_length=1)  # indices in profile order, ascending
    after: list[str] = Field(default_factory=list)
    time_s: float = Field(ge=0)  # predicted compute time on this device
    memory_bytes: int = 0
    region: dict[str, Any] | None = None  # hybrid plans: the output region computed


class TransferTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["transfer"] = "transfer"
    id: str
    src: str
    dst: str
    values: list[str] = Field(min_length=1)  # node names or "input"
    bytes: int = Field(ge=0)
    after: list[str] = Field(default_factory=list)
    region: dict[str, Any] | None = None
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
