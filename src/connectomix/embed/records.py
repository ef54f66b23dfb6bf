"""Embedding rows in memory: one segment's rows, a columnar table of many segments, and coordinate units.

A SegCLR row is ``node_id, x, y, z, e0, …, e{D-1}``: a skeleton node, its position (x, y, z order, in voxels
of the release's resolution or in nanometres) and its D-float embedding (D = 64 in SegCLR). Both containers
below hold exactly that, as numpy arrays:

- :class:`SegmentEmbeddings`: the rows of one segment (one ``{segment_id}.csv`` member of a CSV-ZIP shard).
- :class:`EmbeddingTable`: rows of many segments side by side (a shard, a Parquet row group), with a
  ``segment_ids`` column; rows of one segment are contiguous.

Dtypes are fixed: segment ids ``uint64``, node ids ``int64``, positions ``float64`` (exact for integer voxel
coordinates up to 2^53), embeddings ``float32``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from connectomix.errors import InputError

#: The largest segment id (ids are uint64).
MAX_SEGMENT_ID = 2**64 - 1
#: SegCLR's embedding width.
SEGCLR_DIM = 64

Unit = Literal["voxel", "nm"]


@dataclass(frozen=True)
class Coordinates:
    """What the x, y, z of the rows mean: voxels of ``resolution_nm_xyz`` or nanometres.

    Parameters
    ----------
    unit
        ``"voxel"`` (positions are voxel indices; ``resolution_nm_xyz`` gives the voxel size) or ``"nm"``.
    resolution_nm_xyz
        Voxel size in nm, (x, y, z) order, e.g. ``(32, 32, 33)`` for H01; required for ``"voxel"``, absent
        for ``"nm"``.
    """

    unit: Unit
    resolution_nm_xyz: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("voxel", "nm"):
            raise InputError(f"coordinate unit must be 'voxel' or 'nm', got {self.unit!r}")
        if self.unit == "voxel":
            res = self.resolution_nm_xyz
            if res is None or len(res) != 3 or not all(np.isfinite(r) and r > 0 for r in res):
                raise InputError(
                    "voxel coordinates need a resolution: 3 positive numbers X,Y,Z in nm, "
                    f"got {self.resolution_nm_xyz!r}"
                )
            object.__setattr__(self, "resolution_nm_xyz", tuple(float(r) for r in res))
        elif self.resolution_nm_xyz is not None:
            raise InputError("nm coordinates take no resolution (it is for unit 'voxel')")

    def to_nm(self, positions_xyz: NDArray[np.floating]) -> NDArray[np.float64]:
        """Positions (N, 3) in x, y, z order converted to nanometres."""
        positions = np.asarray(positions_xyz, dtype=np.float64)
        if self.unit == "nm":
            return positions
        return positions * np.asarray(self.resolution_nm_xyz, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """``{"unit": "voxel", "resolution_nm_xyz": [32.0, 32.0, 33.0]}`` or ``{"unit": "nm"}``."""
        if self.unit == "nm":
            return {"unit": "nm"}
        return {"unit": "voxel", "resolution_nm_xyz": list(self.resolution_nm_xyz or ())}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Coordinates:
        """Inverse of :meth:`to_json`."""
        if not isinstance(payload, dict) or "unit" not in payload:
            raise InputError(f"coordinate metadata must be an object with a 'unit', got {payload!r}")
        res = payload.get("resolution_nm_xyz")
        return cls(payload["unit"], tuple(res) if res is not None else None)  # type: ignore[arg-type]

    def describe(self) -> str:
        """``"voxel (32×32×33 nm)"`` or ``"nm"``."""
        if self.unit == "nm":
            return "nm"
        return "voxel ({} nm)".format("×".join(f"{r:g}" for r in self.resolution_nm_xyz or ()))


def check_segment_id(segment_id: int | np.integer) -> int:
    """``segment_id`` as a Python int; :class:`InputError` unless it is an integer in [0, 2^64)."""
    if isinstance(segment_id, bool) or not isinstance(segment_id, int | np.integer):
        raise InputError(f"segment id must be an integer in [0, 2^64), got {segment_id!r}")
    value = int(segment_id)
    if not 0 <= value <= MAX_SEGMENT_ID:
        raise InputError(f"segment id must be in [0, 2^64), got {value}")
    return value


def _rows_arrays(
    node_ids: Any, positions_xyz: Any, embeddings: Any, what: str
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float32]]:
    nodes = np.asarray(node_ids)
    if nodes.ndim != 1 or not (nodes.size == 0 or np.issubdtype(nodes.dtype, np.integer)):
        raise InputError(f"{what}: node_ids must be a 1-D integer array, got {nodes.dtype} {nodes.shape}")
    if nodes.dtype == np.uint64 and nodes.size and int(nodes.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{what}: node ids must fit int64, got {int(nodes.max())}")
    positions = np.asarray(positions_xyz, dtype=np.float64)
    if positions.ndim != 2 or positions.shape != (len(nodes), 3):
        raise InputError(f"{what}: positions_xyz must have shape ({len(nodes)}, 3), got {positions.shape}")
    values = np.asarray(embeddings, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(nodes):
        raise InputError(f"{what}: embeddings must have shape ({len(nodes)}, D), got {values.shape}")
    if values.shape[1] < 1:
        raise InputError(f"{what}: embeddings need at least one column, got {values.shape}")
    return nodes.astype(np.int64, copy=False), positions, values


@dataclass(frozen=True)
class SegmentEmbeddings:
    """The embedding rows of one segment.

    Attributes
    ----------
    segment_id
        The segment (uint64 range, as a Python int).
    node_ids
        (N,) int64 skeleton node ids.
    positions_xyz
        (N, 3) float64 node positions, x, y, z order, in the release's coordinate unit.
    embeddings
        (N, D) float32 embeddings, one row per node.
    """

    segment_id: int
    node_ids: NDArray[np.int64]
    positions_xyz: NDArray[np.float64]
    embeddings: NDArray[np.float32]

    def __post_init__(self) -> None:
        object.__setattr__(self, "segment_id", check_segment_id(self.segment_id))
        nodes, positions, values = _rows_arrays(
            self.node_ids, self.positions_xyz, self.embeddings, f"segment {self.segment_id}"
        )
        object.__setattr__(self, "node_ids", nodes)
        object.__setattr__(self, "positions_xyz", positions)
        object.__setattr__(self, "embeddings", values)

    def __len__(self) -> int:
        return len(self.node_ids)

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return int(self.embeddings.shape[1])

    def duplicate_position(self) -> tuple[int, int] | None:
        """The first pair of row indices (0-based, earlier first) that share a position, or None."""
        return first_duplicate_position(np.zeros(len(self), dtype=np.int64), self.positions_xyz)


def first_duplicate_position(
    group: NDArray[np.integer], positions_xyz: NDArray[np.float64]
) -> tuple[int, int] | None:
    """The first pair of rows (i < j, smallest j) in the same ``group`` that share a position, or None.

    Vectorised: one lexsort over (group, x, y, z) and a comparison of neighbours.
    """
    if len(group) < 2:
        return None
    # lexsort is stable: within a run of equal (group, x, y, z) keys rows keep their original order.
    order = np.lexsort((positions_xyz[:, 2], positions_xyz[:, 1], positions_xyz[:, 0], group))
    g, p = group[order], positions_xyz[order]
    same = (g[1:] == g[:-1]) & np.all(p[1:] == p[:-1], axis=1)
    if not same.any():
        return None
    is_start = np.concatenate([[True], ~same])
    first_of_run = order[is_start][np.cumsum(is_start) - 1]
    later, earlier = order[~is_start], first_of_run[~is_start]
    k = int(np.argmin(later))
    return int(earlier[k]), int(later[k])


@dataclass(frozen=True)
class EmbeddingTable:
    """Rows of many segments, column by column; the rows of one segment are contiguous.

    Attributes
    ----------
    segment_ids
        (N,) uint64, the segment of each row.
    node_ids
        (N,) int64 skeleton node ids.
    positions_xyz
        (N, 3) float64 positions, x, y, z order.
    embeddings
        (N, D) float32 embeddings.
    """

    segment_ids: NDArray[np.uint64]
    node_ids: NDArray[np.int64]
    positions_xyz: NDArray[np.float64]
    embeddings: NDArray[np.float32]

    def __post_init__(self) -> None:
        segments = np.asarray(self.segment_ids)
        if segments.ndim != 1 or not (segments.size == 0 or np.issubdtype(segments.dtype, np.integer)):
            raise InputError(
                f"segment_ids must be a 1-D integer array, got {segments.dtype} {segments.shape}"
            )
        if segments.size and segments.dtype.kind == "i" and int(segments.min()) < 0:
            raise InputError(f"segment ids must be non-negative, got {int(segments.min())}")
        nodes, positions, values = _rows_arrays(self.node_ids, self.positions_xyz, self.embeddings, "table")
        if len(nodes) != len(segments):
            raise InputError(f"table: {len(segments)} segment ids for {len(nodes)} rows")
        object.__setattr__(self, "segment_ids", segments.astype(np.uint64, copy=False))
        object.__setattr__(self, "node_ids", nodes)
        object.__setattr__(self, "positions_xyz", positions)
        object.__setattr__(self, "embeddings", values)

    def __len__(self) -> int:
        return len(self.node_ids)

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return int(self.embeddings.shape[1])

    def run_starts(self) -> NDArray[np.intp]:
        """Start row of each run of equal segment ids, plus ``len(self)`` at the end."""
        ids = self.segment_ids
        if len(ids) == 0:
            return np.zeros(1, dtype=np.intp)
        starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        return np.concatenate([[0], starts, [len(ids)]]).astype(np.intp)

    def segments(self) -> Iterator[SegmentEmbeddings]:
        """One :class:`SegmentEmbeddings` per run of rows with the same segment id, in row order."""
        bounds = self.run_starts()
        for start, stop in itertools.pairwise(bounds):
            yield SegmentEmbeddings(
                int(self.segment_ids[start]),
                self.node_ids[start:stop],
                self.positions_xyz[start:stop],
                self.embeddings[start:stop],
            )

    def slice(self, start: int, stop: int) -> EmbeddingTable:
        """Rows ``start:stop`` (views, no copy)."""
        return EmbeddingTable(
            self.segment_ids[start:stop],
            self.node_ids[start:stop],
            self.positions_xyz[start:stop],
            self.embeddings[start:stop],
        )

    @classmethod
    def empty(cls, dim: int = SEGCLR_DIM) -> EmbeddingTable:
        """A table with no rows and ``dim`` embedding columns."""
        return cls(
            np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, dim), np.float32)
        )

    @classmethod
    def from_segments(cls, segments: Sequence[SegmentEmbeddings], dim: int | None = None) -> EmbeddingTable:
        """Stack segments (all of one width) into a table, in the given order."""
        if not segments:
            return cls.empty(dim or SEGCLR_DIM)
        widths = {s.dim for s in segments}
        if len(widths) != 1:
            raise InputError(f"segments have different embedding widths {sorted(widths)}")
        counts = [len(s) for s in segments]
        return cls(
            np.repeat(np.array([s.segment_id for s in segments], dtype=np.uint64), counts),
            np.concatenate([s.node_ids for s in segments]),
            np.concatenate([s.positions_xyz for s in segments]),
            np.concatenate([s.embeddings for s in segments]),
        )

    @classmethod
    def concat(cls, tables: Iterable[EmbeddingTable]) -> EmbeddingTable:
        """Rows of several tables (all of one width) one after the other."""
        parts = list(tables)
        if not parts:
            return cls.empty()
        widths = {t.dim for t in parts}
        if len(widths) != 1:
            raise InputError(f"tables have different embedding widths {sorted(widths)}")
        return cls(
            np.concatenate([t.segment_ids for t in parts]),
            np.concatenate([t.node_ids for t in parts]),
            np.concatenate([t.positions_xyz for t in parts]),
            np.concatenate([t.embeddings for t in parts]),
        )
