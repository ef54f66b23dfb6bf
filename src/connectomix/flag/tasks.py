"""Proofreading tasks: what the flagging stage hands to the queue.

A :class:`Task` says *where* a proofreader should look (a voxel, (x, y, z), global coordinates of the
volume, and the same point in nm), *what* may be wrong (its kind and the segment ids involved), *how urgent*
it is (``score``, higher first) and *why* (``evidence``, a JSON-able dict). Kinds:

``merge``
    Two segments meet at an uncertain boundary and may belong together (the segmentation may have *split*
    one object): ``segment_ids = (a, b)``, ``a < b``; ``evidence["points_xyz"]`` holds one voxel in ``a``
    and one in ``b`` beside the contact, the inputs of a merge edit.
``split``
    One segment has an uncertain interior and may hold two objects (the segmentation may have *merged*
    them): ``segment_ids = (s,)``; ``evidence["sources_xyz"]`` and ``evidence["sinks_xyz"]`` are suggested
    seed voxels on either side, the inputs of a split edit.
``unassigned``
    A region the segmentation left unassigned (id 0) where the model was uncertain or never looked:
    ``segment_ids = ()``; its neighbouring segments are in ``evidence["neighbour_ids"]``.

The key is stable: the same kind, ids and point (quantised to :data:`KEY_QUANTUM_VOXELS` voxels) give the same
key in every run, so re-flagging a volume enqueues nothing twice. Segment ids are Python ints (uint64 range)
in memory and decimal strings in JSON, since they exceed 2**53.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from connectomix.errors import InputError

TaskKind = Literal["merge", "split", "unassigned"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
#: Points are quantised to cubes of this many voxels (per axis) before hashing into the key.
KEY_QUANTUM_VOXELS = 8
_UINT64_MAX = 2**64 - 1
_IDS_PER_KIND = {"merge": (2, 2), "split": (1, 1), "unassigned": (0, 64)}


def task_key(kind: str, segment_ids: Sequence[int], point_xyz: Sequence[int]) -> str:
    """``"{kind}-{16 hex}"``: SHA-1 of the kind, the sorted ids and the point quantised to 8 voxels."""
    quantised = ",".join(str(int(v) // KEY_QUANTUM_VOXELS) for v in point_xyz)
    ids = ",".join(str(i) for i in sorted(int(i) for i in segment_ids))
    digest = hashlib.sha1(f"{kind}|{ids}|{quantised}".encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def _segment_id(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: segment ids must be integers or decimal strings, got {value!r}") from None
    if isinstance(value, float) or not 0 < number <= _UINT64_MAX:
        raise InputError(f"{what}: segment ids must be integers in 1..2**64-1, got {value!r}")
    return number


def _int_triple(values: Any, what: str) -> tuple[int, int, int]:
    try:
        items = [int(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be 3 integers (x, y, z), got {values!r}") from None
    if len(items) != 3:
        raise InputError(f"{what} must be 3 integers (x, y, z), got {values!r}")
    return (items[0], items[1], items[2])


def _float_triple(values: Any, what: str) -> tuple[float, float, float]:
    try:
        items = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be 3 numbers (x, y, z), got {values!r}") from None
    if len(items) != 3:
        raise InputError(f"{what} must be 3 numbers (x, y, z), got {values!r}")
    return (items[0], items[1], items[2])


@dataclass(frozen=True)
class Task:
    """A candidate proofreading task (see the module docstring for the kinds).

    ``point_xyz`` is a voxel in global volume coordinates, (x, y, z); ``point_nm_xyz`` the same point in nm.
    ``segment_ids``: 2 ids for ``merge`` (ascending), 1 for ``split``, none for ``unassigned``.
    ``score``: higher is more urgent. ``evidence``: JSON-able (ids as strings).
    Equality compares every field; the hash is the key's.
    """

    key: str
    kind: TaskKind
    point_xyz: tuple[int, int, int]
    point_nm_xyz: tuple[float, float, float]
    segment_ids: tuple[int, ...]
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise InputError(f"task kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        ids = tuple(_segment_id(i, f"{self.kind} task") for i in self.segment_ids)
        low, high = _IDS_PER_KIND[self.kind]
        if not low <= len(ids) <= high:
            raise InputError(f"a {self.kind} task needs {low}..{high} segment ids, got {len(ids)}")
        if not isinstance(self.key, str) or not self.key:
            raise InputError(f"task key must be a non-empty string, got {self.key!r}")
        object.__setattr__(self, "segment_ids", ids)
        object.__setattr__(self, "point_xyz", _int_triple(self.point_xyz, "point_xyz"))
        object.__setattr__(self, "point_nm_xyz", _float_triple(self.point_nm_xyz, "point_nm_xyz"))
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "evidence", dict(self.evidence))

    def __hash__(self) -> int:
        return hash(self.key)

    @classmethod
    def create(
        cls,
        kind: TaskKind,
        point_xyz: Sequence[int],
        segment_ids: Sequence[int],
        score: float,
        *,
        resolution_nm_xyz: Sequence[float] = (8.0, 8.0, 8.0),
        evidence: Mapping[str, Any] | None = None,
    ) -> Task:
        """A task with its stable key and nm point computed from ``point_xyz`` and ``resolution_nm_xyz``."""
        point = _int_triple(point_xyz, "point_xyz")
        res = _float_triple(resolution_nm_xyz, "resolution_nm_xyz")
        ids = tuple(sorted(int(i) for i in segment_ids)) if kind == "merge" else tuple(segment_ids)
        return cls(
            key=task_key(kind, ids, point),
            kind=kind,
            point_xyz=point,
            point_nm_xyz=(point[0] * res[0], point[1] * res[1], point[2] * res[2]),
            segment_ids=ids,
            score=score,
            evidence=dict(evidence or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; segment ids as decimal strings (they exceed 2**53)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "point_xyz": list(self.point_xyz),
            "point_nm_xyz": list(self.point_nm_xyz),
            "segment_ids": [str(i) for i in self.segment_ids],
            "score": self.score,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """Inverse of :meth:`to_dict` (ids may be strings or ints); InputError on malformed input."""
        if not isinstance(data, Mapping):
            raise InputError(f"a task must be a JSON object, got {type(data).__name__}")
        required = ("key", "kind", "point_xyz", "point_nm_xyz", "segment_ids", "score")
        missing = [k for k in required if k not in data]
        if missing:
            raise InputError(f"task is missing field(s) {', '.join(missing)}")
        ids = data["segment_ids"]
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise InputError(f"task segment_ids must be a list of ids, got {ids!r}")
        evidence = data.get("evidence") or {}
        if not isinstance(evidence, Mapping):
            raise InputError(f"task evidence must be a JSON object, got {type(evidence).__name__}")
        try:
            score = float(data["score"])
        except (TypeError, ValueError):
            raise InputError(f"task score must be a number, got {data['score']!r}") from None
        return cls(
            key=data["key"],
            kind=data["kind"],
            point_xyz=data["point_xyz"],
            point_nm_xyz=data["point_nm_xyz"],
            segment_ids=tuple(ids),
            score=score,
            evidence=dict(evidence),
        )
