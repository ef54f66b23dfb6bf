"""Request and response bodies of the proofreading web API (pydantic; they document the OpenAPI schema).

Segment ids, task ids and edit ids cross JSON as strings (uint64 exceeds JSON's 2^53); points are voxels
(x, y, z); times are unix seconds.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PointXYZ = tuple[int, int, int]
#: a uint64 segment id; JSON may send it as a number or (better) a string
SegmentId = Annotated[int, Field(ge=0, lt=2**64)]


class Health(BaseModel):
    status: str = Field("ok", examples=["ok"])


class ErrorOut(BaseModel):
    detail: str = Field(..., description="One line saying what was expected.")
    error: str = Field(..., description="The error type, e.g. ConflictError.")


class UserOut(BaseModel):
    name: str
    role: str = Field(..., examples=["proofreader", "admin"])
    created_at: float
    disabled: bool = False


class TaskOut(BaseModel):
    """A queued task: the queue's bookkeeping plus the flagged task itself."""

    id: str = Field(..., description="Queue id (a string).")
    key: str
    kind: str = Field(..., examples=["merge", "split", "unassigned"])
    state: str = Field(..., examples=["queued", "claimed", "done", "skipped"])
    priority: float
    score: float
    point_xyz: list[int] = Field(..., description="Voxel (x, y, z).")
    point_nm_xyz: list[float] = Field(..., description="nm (x, y, z).")
    segment_ids: list[str]
    evidence: dict[str, Any] = Field(default_factory=dict)
    claimed_by: str | None = None
    lease_expires: float | None = None
    enqueued_at: float
    claimed_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None


class TaskView(BaseModel):
    """A task with the Neuroglancer state and link that show it."""

    task: TaskOut
    viewer_state: dict[str, Any] = Field(..., description="Neuroglancer JSON state.")
    neuroglancer_url: str = Field(..., description="Opens the task in the bundled Neuroglancer client.")


class EditOut(BaseModel):
    id: str
    version: int
    operation: str
    user: str
    time: float
    new_ids: list[str]
    parent_ids: list[str]


class ActionOut(BaseModel):
    """What an action did: the task as it is now and, for merge/split, the edit it made."""

    task: TaskOut
    action: str = Field(..., examples=["merge", "split", "skip", "correct"])
    edit: EditOut | None = None


class Heartbeat(BaseModel):
    task_id: str
    lease_expires: float


class MergeIn(BaseModel):
    """Optional body of a merge: the two segments (default: the task's) and points that justify it."""

    model_config = ConfigDict(extra="forbid")

    segment_ids: tuple[SegmentId, SegmentId] | None = Field(None, description="Two segment ids.")
    points_xyz: list[PointXYZ] = Field(default_factory=list, description="Voxels (x, y, z).")


class SplitIn(BaseModel):
    """Optional body of a split (defaults: the task's segment and its evidence's sources/sinks)."""

    model_config = ConfigDict(extra="forbid")

    segment_id: SegmentId | None = None
    sources_xyz: list[PointXYZ] | None = Field(None, description="Voxels (x, y, z) on one side.")
    sinks_xyz: list[PointXYZ] | None = Field(None, description="Voxels (x, y, z) on the other side.")


class QueueStatsOut(BaseModel):
    depth: int
    claimed: int
    done: int
    skipped: int
    wait_p50_s: float | None = None
    wait_p95_s: float | None = None
    handling_p50_s: float | None = None
    handling_p95_s: float | None = None


class UserStats(BaseModel):
    name: str
    role: str
    completed: int = Field(..., description="Tasks this user completed.")
    edits: int = Field(..., description="Edits this user made.")


class AdminStats(BaseModel):
    queue: QueueStatsOut
    edits: int = Field(..., description="Edits in the log (undone ones included).")
    version: int = Field(..., description="Current segmentation version.")
    users: list[UserStats]
