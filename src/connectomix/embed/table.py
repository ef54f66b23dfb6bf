"""Embedding rows as Parquet: ``segment_id, node_id, x, y, z, e0 … e{D-1}``, with the coordinate unit.

Columns: ``segment_id`` uint64, ``node_id`` int64, ``x``, ``y``, ``z`` float64 (x, y, z order), ``e0`` …
``e{D-1}`` float32. The schema metadata key ``connectomix.embeddings`` holds JSON such as::

    {"format": "segclr-embeddings", "version": 1, "embedding_dim": 64,
     "coordinates": {"unit": "voxel", "resolution_nm_xyz": [32.0, 32.0, 33.0]}}

(or ``{"unit": "nm"}``), so a reader knows what x, y, z mean. Rows of one segment are contiguous. Files are
written under a temporary name and renamed when complete; reading streams row group by row group.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from connectomix.embed.records import Coordinates, EmbeddingTable, SegmentEmbeddings
from connectomix.errors import CorruptDataError, InputError, NotFoundError

METADATA_KEY = b"connectomix.embeddings"
FORMAT_NAME = "segclr-embeddings"
FORMAT_VERSION = 1


def embedding_columns(dim: int) -> list[str]:
    """``["e0", …, "e{dim-1}"]``."""
    return [f"e{i}" for i in range(dim)]


def parquet_schema(dim: int, coordinates: Coordinates) -> pa.Schema:
    """The Arrow schema of a ``dim``-wide embedding table, its metadata recording ``coordinates``."""
    fields = [
        pa.field("segment_id", pa.uint64(), nullable=False),
        pa.field("node_id", pa.int64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("z", pa.float64(), nullable=False),
    ]
    fields += [pa.field(name, pa.float32(), nullable=False) for name in embedding_columns(dim)]
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "embedding_dim": dim,
        "coordinates": coordinates.to_json(),
    }
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def to_arrow(table: EmbeddingTable, schema: pa.Schema) -> pa.Table:
    """An :class:`EmbeddingTable` as an Arrow table of ``schema`` (zero-copy where the dtypes allow)."""
    columns: list[Any] = [
        table.segment_ids,
        table.node_ids,
        np.ascontiguousarray(table.positions_xyz[:, 0]),
        np.ascontiguousarray(table.positions_xyz[:, 1]),
        np.ascontiguousarray(table.positions_xyz[:, 2]),
    ]
    embeddings = np.asfortranarray(table.embeddings)  # column slices become contiguous
    columns += [embeddings[:, i] for i in range(table.dim)]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)


def from_arrow(data: pa.Table | pa.RecordBatch, label: str) -> EmbeddingTable:
    """Arrow columns ``segment_id, node_id, x, y, z, e0…`` as an :class:`EmbeddingTable`."""
    names = data.schema.names
    dim = _embedding_dim(names, label)

    def column(name: str, dtype: type[np.generic]) -> np.ndarray:
        array = data.column(name)
        if array.null_count:
            raise CorruptDataError(f"{label}: column {name} has {array.null_count} missing values")
        if isinstance(array, pa.ChunkedArray):
            return np.asarray(array.to_numpy()).astype(dtype, copy=False)
        return np.asarray(array.to_numpy(zero_copy_only=False)).astype(dtype, copy=False)

    id_type = data.schema.field("segment_id").type
    if not pa.types.is_integer(id_type):
        raise CorruptDataError(f"{label}: column segment_id must hold integers, got {id_type}")
    segment_ids = column("segment_id", np.int64 if pa.types.is_signed_integer(id_type) else np.uint64)
    if segment_ids.dtype.kind == "i" and segment_ids.size and int(segment_ids.min()) < 0:
        raise CorruptDataError(f"{label}: segment ids must be non-negative, got {int(segment_ids.min())}")
    positions = np.stack([column(axis, np.float64) for axis in ("x", "y", "z")], axis=1)
    embeddings = np.stack([column(name, np.float32) for name in embedding_columns(dim)], axis=1)
    return EmbeddingTable(segment_ids.astype(np.uint64), column("node_id", np.int64), positions, embeddings)


def _embedding_dim(names: list[str], label: str) -> int:
    missing = [name for name in ("segment_id", "node_id", "x", "y", "z") if name not in names]
    dim = sum(1 for name in names if name.startswith("e") and name[1:].isdigit())
    if missing or dim == 0 or any(name not in names for name in embedding_columns(dim)):
        raise CorruptDataError(
            f"{label}: expected columns segment_id, node_id, x, y, z, e0…e{{D-1}}, got {', '.join(names[:8])}"
            + ("…" if len(names) > 8 else "")
        )
    return dim


# -- writing --------------------------------------------------------------------------------------------
class ParquetEmbeddingWriter:
    """Write embedding tables to one Parquet file, atomically (temporary name, renamed on :meth:`close`).

    Parameters
    ----------
    path
        The ``.parquet`` file to create.
    coordinates
        What x, y, z mean (recorded in the schema metadata).
    overwrite
        Replace an existing file (only once the new one is complete).
    row_group_rows
        Rows buffered into one row group.
    """

    def __init__(
        self,
        path: str | Path,
        coordinates: Coordinates,
        *,
        overwrite: bool = False,
        row_group_rows: int = 1 << 17,
    ) -> None:
        self.path = Path(path)
        if not isinstance(coordinates, Coordinates):
            raise InputError(f"coordinates must be a Coordinates, got {coordinates!r}")
        if self.path.exists() and not overwrite:
            raise InputError(f"{self.path} already exists; pass overwrite (cx: --overwrite) to replace it")
        self.coordinates = coordinates
        self.row_group_rows = row_group_rows
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[EmbeddingTable] = []
        self._pending_rows = 0
        self.dim: int | None = None
        self.n_rows = 0
        self._closed = False

    def __enter__(self) -> ParquetEmbeddingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, table: EmbeddingTable) -> None:
        """Append rows (all tables of one embedding width)."""
        if self._closed:
            raise InputError(f"Parquet writer for {self.path} is closed")
        if self.dim is None:
            self.dim = table.dim
        elif table.dim != self.dim:
            raise InputError(f"{self.path}: rows of width {table.dim} after rows of width {self.dim}")
        if len(table) == 0:
            return
        self._pending.append(table)
        self._pending_rows += len(table)
        self.n_rows += len(table)
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def close(self) -> None:
        """Write what is buffered and move the file into place."""
        if self._closed:
            return
        self._flush(final=True)
        assert self._writer is not None
        self._writer.close()
        self._tmp.replace(self.path)
        self._closed = True

    def abort(self) -> None:
        """Discard the partial file; an existing file at ``path`` is left untouched."""
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)
        self._closed = True

    def _flush(self, final: bool = False) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema = parquet_schema(self.dim or 64, self.coordinates)
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        if self._pending:
            assert self._schema is not None
            self._writer.write_table(to_arrow(EmbeddingTable.concat(self._pending), self._schema))
        self._pending, self._pending_rows = [], 0


def write_parquet(
    path: str | Path, tables: Iterable[EmbeddingTable], coordinates: Coordinates, *, overwrite: bool = False
) -> int:
    """Write tables to a Parquet file (atomic); returns the number of rows written."""
    with ParquetEmbeddingWriter(path, coordinates, overwrite=overwrite) as writer:
        for table in tables:
            writer.write(table)
    return writer.n_rows


# -- reading --------------------------------------------------------------------------------------------
def open_parquet(path: str | Path) -> pq.ParquetFile:
    """Open a Parquet file; :class:`NotFoundError` / :class:`CorruptDataError` on a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"Parquet file {path} does not exist")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptDataError(f"{path}: not a readable Parquet file ({exc})") from None


def read_coordinates(path: str | Path) -> Coordinates | None:
    """The coordinate unit recorded in a file's schema metadata (None when the file does not say)."""
    metadata = open_parquet(path).schema_arrow.metadata or {}
    if METADATA_KEY not in metadata:
        return None
    try:
        payload = json.loads(metadata[METADATA_KEY])
    except ValueError:
        raise CorruptDataError(f"{path}: schema metadata {METADATA_KEY.decode()} is not JSON") from None
    try:
        return Coordinates.from_json(payload.get("coordinates"))
    except InputError as exc:
        raise CorruptDataError(f"{path}: bad coordinate metadata ({exc})") from None


def count_rows(path: str | Path) -> int:
    """Number of rows in the file (from its footer)."""
    return int(open_parquet(path).metadata.num_rows)


def iter_parquet(path: str | Path, batch_rows: int = 1 << 17) -> Iterator[EmbeddingTable]:
    """The file's rows in batches of at most ``batch_rows``, in file order (streaming)."""
    handle = open_parquet(path)
    _embedding_dim(handle.schema_arrow.names, str(path))
    try:
        for batch in handle.iter_batches(batch_size=batch_rows):
            yield from_arrow(batch, str(path))
    except pa.ArrowException as exc:
        raise CorruptDataError(f"{path}: cannot read ({exc})") from None


def read_parquet(path: str | Path) -> EmbeddingTable:
    """All rows of the file as one table."""
    parts = list(iter_parquet(path))
    if not parts:
        return EmbeddingTable.empty(_embedding_dim(open_parquet(path).schema_arrow.names, str(path)))
    return EmbeddingTable.concat(parts)


def iter_parquet_segments(path: str | Path, batch_rows: int = 1 << 17) -> Iterator[SegmentEmbeddings]:
    """Segment by segment, streaming; a segment whose rows are not contiguous is an :class:`InputError`."""
    seen: set[int] = set()
    carry: list[EmbeddingTable] = []
    for table in iter_parquet(path, batch_rows):
        if len(table) == 0:
            continue
        bounds = table.run_starts()
        if carry and int(carry[-1].segment_ids[0]) != int(table.segment_ids[0]):
            yield _finish(carry, seen, path)
            carry = []
        for start, stop in itertools.pairwise(bounds[:-1]):
            carry.append(table.slice(int(start), int(stop)))
            yield _finish(carry, seen, path)
            carry = []
        carry.append(table.slice(int(bounds[-2]), int(bounds[-1])))
    if carry:
        yield _finish(carry, seen, path)


def _finish(parts: list[EmbeddingTable], seen: set[int], path: str | Path) -> SegmentEmbeddings:
    rows = parts[0] if len(parts) == 1 else EmbeddingTable.concat(parts)
    segment = next(rows.segments())
    if segment.segment_id in seen:
        raise InputError(
            f"{path}: rows of segment {segment.segment_id} are not contiguous; sort the table by segment_id"
        )
    seen.add(segment.segment_id)
    return segment
