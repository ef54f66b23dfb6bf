"""Storage of the edit log's versions: the database tables, the chunk grid, and the files of one log.

Layout of one edit log named ``NAME`` in a workspace::

    <workspace>/NAME/v0.zarr        version 0: the imported segmentation (never written again)
    <workspace>/NAME/current.zarr   the current version, kept materialised (edits rewrite only their chunks)
    <workspace>/NAME/current.json   {"version": V, "pending": [[cz, cy, cx], ...]}: the version that
                                    current.zarr holds, and the chunks an edit is rewriting right now

Every edit (merge, split, undo, redo) stores, per storage chunk it touched, the whole chunk before and after
(zlib-compressed little-endian uint64, ``(z, y, x)`` C order) in ``chunk_changes``. So the content of chunk
``c`` at version ``V`` is the ``after`` of the last change to ``c`` at a version ≤ V, or v0's chunk when no
edit up to ``V`` touched it: reading any version needs one lookup per chunk, never a replay.

current.zarr is updated inside the edit's database transaction (the log's row is locked): the chunks are
first listed as ``pending`` in current.json, then written, then the transaction commits, then current.json
is marked clean at the new version. A crash anywhere in between leaves either a committed edit whose chunks
may not all be written, or chunks written for an edit that never committed; the next writer (or reader)
sees ``pending`` or a version mismatch and rewrites those chunks from the database (:func:`chunk_at`), so
no half-applied edit is ever visible through this API.

Segment ids are uint64; the database stores them as signed 64-bit integers (ids ≥ 2^63 wrap to negative
numbers, see :func:`id_to_db`), which keeps equality lookups exact on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import zarr
from sqlalchemy.engine import Connection

from connectomix.errors import CorruptDataError, InputError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box

Triple = tuple[int, int, int]
MAX_ID = (1 << 64) - 1

# -- database tables --------------------------------------------------------------------------------------
metadata = sa.MetaData()

edit_logs = sa.Table(
    "edit_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("segmentation_url", sa.Text, nullable=False),
    sa.Column("raw_url", sa.Text),
    sa.Column("boundary_url", sa.Text),
    # JSON: shape_zyx, chunks_zyx, offset_zyx (voxels), resolution_nm_zyx (nm)
    sa.Column("geometry", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("next_id", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

edits = sa.Table(
    "edits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("log_id", sa.Integer, sa.ForeignKey("edit_logs.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("user_name", sa.String(256), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),  # JSON object
    sa.Column("new_ids", sa.Text, nullable=False),  # JSON list of id strings
    sa.Column("parent_ids", sa.Text, nullable=False),  # JSON list of id strings
    sa.Column("undone", sa.Boolean, nullable=False, default=False),
    sa.Column("target_id", sa.Integer),  # undo/redo: the merge or split they revert or re-apply
    sa.UniqueConstraint("log_id", "version", name="uq_edits_log_version"),
)

chunk_changes = sa.Table(
    "chunk_changes",
    metadata,
    sa.Column("edit_id", sa.Integer, sa.ForeignKey("edits.id"), primary_key=True),
    sa.Column("cz", sa.Integer, primary_key=True),
    sa.Column("cy", sa.Integer, primary_key=True),
    sa.Column("cx", sa.Integer, primary_key=True),
    sa.Column("log_id", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("before", sa.LargeBinary, nullable=False),
    sa.Column("after", sa.LargeBinary, nullable=False),
    sa.Index("ix_chunk_changes_chunk", "log_id", "cz", "cy", "cx", "version"),
    sa.Index("ix_chunk_changes_version", "log_id", "version"),
)

segment_chunks = sa.Table(
    "segment_chunks",
    metadata,
    sa.Column("log_id", sa.Integer, primary_key=True),
    sa.Column("segment_id", sa.BigInteger, primary_key=True),
    sa.Column("cz", sa.Integer, primary_key=True),
    sa.Column("cy", sa.Integer, primary_key=True),
    sa.Column("cx", sa.Integer, primary_key=True),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("log_id", sa.Integer, nullable=False),
    sa.Column("parent", sa.BigInteger, nullable=False),
    sa.Column("child", sa.BigInteger, nullable=False),
    sa.Column("edit_id", sa.Integer, sa.ForeignKey("edits.id"), nullable=False),
    sa.Index("ix_lineage_parent", "log_id", "parent"),
    sa.Index("ix_lineage_child", "log_id", "child"),
)


def _create_tables(connection: Connection) -> None:
    metadata.create_all(connection)


#: Schema migrations of the ``edits`` component (see :meth:`Database.ensure_schema`).
MIGRATIONS = [_create_tables]


def id_to_db(segment_id: int) -> int:
    """A uint64 id as the signed 64-bit integer the database stores."""
    return segment_id - (1 << 64) if segment_id >= (1 << 63) else segment_id


def id_from_db(value: int) -> int:
    """Inverse of :func:`id_to_db`."""
    return value + (1 << 64) if value < 0 else value


def check_id(value: object, name: str = "segment id") -> int:
    """A positive uint64 id as a Python int (InputError for 0, negatives, non-integers, > 2^64 - 1)."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not 0 < number <= MAX_ID:
        raise InputError(f"{name} must be in 1..2^64-1 (0 is background), got {value!r}")
    return number


# -- chunk grid -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """The storage chunk grid of a log's volumes: all sizes (z, y, x) voxels; ``offset`` is the global
    coordinate of voxel (0, 0, 0); chunk indices and local boxes are relative to it."""

    shape: Triple
    chunks: Triple
    offset: Triple
    resolution: tuple[float, float, float]

    @property
    def bounds(self) -> Box:
        """Global voxel box of the volume."""
        return Box.from_shape(self.shape, self.offset)

    @property
    def local_bounds(self) -> Box:
        return Box.from_shape(self.shape)

    def chunk_box(self, index: Sequence[int]) -> Box:
        """Local box of chunk ``index`` (clipped at the volume's far edges)."""
        start = [i * c for i, c in zip(index, self.chunks, strict=True)]
        return Box.from_shape(self.chunks, start).intersect(self.local_bounds)

    def chunks_in(self, box_local: Box) -> list[Triple]:
        """Indices of the chunks that touch ``box_local`` (local coordinates), C order."""
        ranges = box_local.intersect(self.local_bounds).chunk_indices(self.chunks)
        return [(int(z), int(y), int(x)) for z, y, x in itertools.product(*ranges)]

    def all_chunks(self) -> list[Triple]:
        return self.chunks_in(self.local_bounds)

    def to_json(self) -> str:
        return json.dumps(
            {
                "shape_zyx": list(self.shape),
                "chunks_zyx": list(self.chunks),
                "offset_zyx": list(self.offset),
                "resolution_nm_zyx": list(self.resolution),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Grid:
        data = json.loads(text)
        return cls(
            tuple(data["shape_zyx"]),  # type: ignore[arg-type]
            tuple(data["chunks_zyx"]),  # type: ignore[arg-type]
            tuple(data["offset_zyx"]),  # type: ignore[arg-type]
            tuple(float(r) for r in data["resolution_nm_zyx"]),  # type: ignore[arg-type]
        )


def encode_chunk(array: np.ndarray) -> bytes:
    """A uint64 chunk as zlib-compressed little-endian bytes (C order, shape implied by the grid)."""
    return zlib.compress(np.ascontiguousarray(array, dtype="<u8").tobytes(), 1)


def decode_chunk(blob: bytes, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_chunk` (a writable uint64 array of ``shape``)."""
    try:
        data = np.frombuffer(zlib.decompress(blob), dtype="<u8")
    except zlib.error as exc:
        raise CorruptDataError(f"edit log chunk blob does not decompress: {exc}") from None
    if data.size != int(np.prod(shape)):
        raise CorruptDataError(f"edit log chunk blob holds {data.size} voxels, expected shape {tuple(shape)}")
    return data.astype(np.uint64).reshape(tuple(shape))


def chunk_ids(array: np.ndarray) -> set[int]:
    """The non-zero ids in a chunk."""
    values = np.unique(array)
    return {int(v) for v in values if v != 0}


# -- version lookups in the database ----------------------------------------------------------------------
def latest_changes(
    connection: Connection, log_id: int, version: int, indices: Iterable[Triple] | None = None
) -> dict[Triple, int]:
    """For each chunk changed by an edit at a version ≤ ``version``: the last such version.

    ``indices`` restricts the answer to those chunks (default: every chunk).
    """
    c = chunk_changes.c
    query = (
        sa.select(c.cz, c.cy, c.cx, sa.func.max(c.version))
        .where(c.log_id == log_id, c.version <= version)
        .group_by(c.cz, c.cy, c.cx)
    )
    wanted = None if indices is None else set(indices)
    if wanted is not None:
        if not wanted:
            return {}
        zs = sorted({i[0] for i in wanted})
        query = query.where(c.cz.in_(zs))
    result: dict[Triple, int] = {}
    for cz, cy, cx, last in connection.execute(query):
        index = (int(cz), int(cy), int(cx))
        if wanted is None or index in wanted:
            result[index] = int(last)
    return result


def change_blob(
    connection: Connection, log_id: int, version: int, index: Triple, side: str = "after"
) -> bytes:
    """The ``after`` (or ``before``) blob of chunk ``index`` stored by the edit that created ``version``."""
    c = chunk_changes.c
    row = connection.execute(
        sa.select(c.after if side == "after" else c.before).where(
            c.log_id == log_id, c.version == version, c.cz == index[0], c.cy == index[1], c.cx == index[2]
        )
    ).first()
    if row is None:
        raise CorruptDataError(f"edit log: chunk {index} of version {version} is missing from the database")
    return bytes(row[0])


# -- files ------------------------------------------------------------------------------------------------
class LogFiles:
    """The files of one edit log: v0.zarr, current.zarr and current.json under ``root``."""

    def __init__(self, root: Path, grid: Grid) -> None:
        self.root = root
        self.grid = grid
        self.v0_path = root / "v0.zarr"
        self.current_path = root / "current.zarr"
        self.state_path = root / "current.json"
        self._v0: zarr.Array | None = None
        self._current: zarr.Array | None = None
        #: chunks written to current.zarr by this process (for tests and benchmarks)
        self.chunk_writes = 0

    def _open(self, path: Path, mode: str) -> zarr.Array:
        if not (path / "zarr.json").is_file():
            raise CorruptDataError(f"edit log volume {path} is missing (expected a zarr v3 array)")
        array = zarr.open_array(str(path), mode=mode)  # type: ignore[arg-type]
        if tuple(array.shape) != self.grid.shape or tuple(array.chunks) != self.grid.chunks:
            raise CorruptDataError(
                f"edit log volume {path} has shape {array.shape} chunks {array.chunks}, "
                f"expected {self.grid.shape} chunks {self.grid.chunks}"
            )
        return array

    @property
    def v0(self) -> zarr.Array:
        if self._v0 is None:
            self._v0 = self._open(self.v0_path, "r")
        return self._v0

    @property
    def current(self) -> zarr.Array:
        if self._current is None:
            self._current = self._open(self.current_path, "r+")
        return self._current

    def read_v0_chunk(self, index: Triple) -> np.ndarray:
        return np.asarray(self.v0[self.grid.chunk_box(index).to_slices()], dtype=np.uint64)

    def read_current_chunk(self, index: Triple) -> np.ndarray:
        return np.asarray(self.current[self.grid.chunk_box(index).to_slices()], dtype=np.uint64)

    def read_current(self, box_local: Box) -> np.ndarray:
        return np.asarray(self.current[box_local.to_slices()], dtype=np.uint64)

    def write_current_chunk(self, index: Triple, data: np.ndarray) -> None:
        self.current[self.grid.chunk_box(index).to_slices()] = data
        self.chunk_writes += 1

    # -- current.json -------------------------------------------------------------------------------
    def read_state(self) -> tuple[int, list[Triple]]:
        """(version current.zarr holds, chunks being rewritten); (-1, []) when the file is missing."""
        try:
            data = json.loads(self.state_path.read_text())
            return int(data["version"]), [tuple(int(v) for v in p) for p in data["pending"]]  # type: ignore[misc]
        except FileNotFoundError:
            return -1, []
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptDataError(f"{self.state_path}: unreadable edit log state ({exc})") from None

    def write_state(self, version: int, pending: Sequence[Triple] = ()) -> None:
        """Replace current.json atomically (temporary file, fsync, rename)."""
        tmp = self.state_path.with_name(f".{self.state_path.name}.{uuid.uuid4().hex[:8]}")
        payload = json.dumps({"version": int(version), "pending": [list(p) for p in pending]})
        with tmp.open("w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.state_path)


def write_version0(
    source: Volume, root: Path, grid: Grid, *, progress: bool = False
) -> tuple[list[tuple[int, Triple]], int]:
    """Write ``root``/v0.zarr (uint64 copy of ``source``), current.zarr (a copy of it) and current.json.

    Returns the segment index of version 0 as ``(id, chunk index)`` pairs and the largest id (0 if none).
    InputError for negative labels.
    """
    from connectomix.progress import track
    from connectomix.volume.blocks import read_blocks
    from connectomix.volume.url import open_volume

    v0 = open_volume(
        f"zarr://{root / 'v0.zarr'}",
        "w-",
        shape=grid.shape,
        dtype=np.uint64,
        resolution=grid.resolution,
        chunks=grid.chunks,
        voxel_offset=grid.offset,
        kind="segmentation",
    )
    index_rows: list[tuple[int, Triple]] = []
    max_id = 0
    blocks = source.bounds.split(tuple(c * 4 for c in grid.chunks))
    for box, data in track(read_blocks(source, blocks), f"import {source.url}", len(blocks), progress):
        if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
            raise InputError(f"{source.url}: negative label in {box}; expected ids ≥ 0")
        data = data.astype(np.uint64, copy=False)
        v0.write(box, data)
        local = box.translate(tuple(-o for o in grid.offset))
        for index in grid.chunks_in(local):
            ids = chunk_ids(data[grid.chunk_box(index).to_slices(local.start)])
            index_rows.extend((i, index) for i in ids)
            max_id = max(max_id, *ids) if ids else max_id
    shutil.copytree(root / "v0.zarr", root / "current.zarr")
    LogFiles(root, grid).write_state(0)
    return index_rows, max_id


def chunk_at(connection: Connection, files: LogFiles, log_id: int, index: Triple, version: int) -> np.ndarray:
    """Chunk ``index`` as it is at ``version`` (the last change up to it, or version 0)."""
    last = latest_changes(connection, log_id, version, [index]).get(index)
    if last is None:
        return files.read_v0_chunk(index)
    return decode_chunk(change_blob(connection, log_id, last, index), files.grid.chunk_box(index).shape)


def chunks_at(
    connection: Connection, files: LogFiles, log_id: int, indices: Sequence[Triple], version: int
) -> Iterator[tuple[Triple, np.ndarray]]:
    """``(index, chunk at version)`` for each index; one lookup query for all of them."""
    last = latest_changes(connection, log_id, version, indices)
    for index in indices:
        if index in last:
            blob = change_blob(connection, log_id, last[index], index)
            yield index, decode_chunk(blob, files.grid.chunk_box(index).shape)
        else:
            yield index, files.read_v0_chunk(index)


__all__ = [
    "MAX_ID",
    "MIGRATIONS",
    "Grid",
    "LogFiles",
    "check_id",
    "chunk_at",
    "chunk_changes",
    "chunk_ids",
    "chunks_at",
    "decode_chunk",
    "edit_logs",
    "edits",
    "encode_chunk",
    "id_from_db",
    "id_to_db",
    "latest_changes",
    "lineage",
    "segment_chunks",
    "write_version0",
]
