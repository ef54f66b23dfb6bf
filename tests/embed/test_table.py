"""Parquet embedding tables: exact round trip, unit metadata, streaming by segment, bad files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectomix.embed.records import Coordinates, EmbeddingTable, SegmentEmbeddings
from connectomix.embed.table import (
    METADATA_KEY,
    ParquetEmbeddingWriter,
    iter_parquet_segments,
    read_coordinates,
    read_parquet,
    write_parquet,
)
from connectomix.errors import CorruptDataError, InputError, NotFoundError


def make_table(rng: np.random.Generator, n_segments: int = 20, dim: int = 64) -> EmbeddingTable:
    segments = []
    for k in range(n_segments):
        rows = int(rng.integers(1, 30))
        segments.append(
            SegmentEmbeddings(
                2**64 - 1 - k if k < 3 else int(rng.integers(1, 2**62)),
                np.arange(rows) + 10 * k,
                rng.integers(0, 50_000, size=(rows, 3)),
                rng.normal(size=(rows, dim)).astype(np.float32),
            )
        )
    return EmbeddingTable.from_segments(segments)


def test_round_trip_keeps_values_and_unit(tmp_path):
    table = make_table(np.random.default_rng(0))
    coords = Coordinates("voxel", (32, 32, 33))
    path = tmp_path / "emb.parquet"
    assert write_parquet(path, [table.slice(0, 50), table.slice(50, len(table))], coords) == len(table)
    assert read_coordinates(path) == coords
    back = read_parquet(path)
    np.testing.assert_array_equal(back.segment_ids, table.segment_ids)
    assert back.segment_ids.dtype == np.uint64 and int(back.segment_ids[0]) == 2**64 - 1
    np.testing.assert_array_equal(back.node_ids, table.node_ids)
    np.testing.assert_array_equal(back.positions_xyz, table.positions_xyz)
    np.testing.assert_array_equal(back.embeddings, table.embeddings)
    schema = pq.read_schema(path)
    assert schema.names[:5] == ["segment_id", "node_id", "x", "y", "z"]
    assert schema.names[5:] == [f"e{i}" for i in range(64)]
    assert schema.field("e0").type == pa.float32() and schema.field("segment_id").type == pa.uint64()
    assert b'"resolution_nm_xyz": [32.0, 32.0, 33.0]' in schema.metadata[METADATA_KEY]
    nm = tmp_path / "nm.parquet"
    write_parquet(nm, [table], Coordinates("nm"))
    assert read_coordinates(nm) == Coordinates("nm")
    assert list(tmp_path.glob(".*")) == []  # no temporary files left


def test_streaming_segments_across_batches(tmp_path):
    table = make_table(np.random.default_rng(1), n_segments=12, dim=8)
    path = tmp_path / "t.parquet"
    write_parquet(path, [table], Coordinates("nm"))
    expected = list(table.segments())
    streamed = list(iter_parquet_segments(path, batch_rows=7))  # segments straddle batch boundaries
    assert [s.segment_id for s in streamed] == [s.segment_id for s in expected]
    for a, b in zip(streamed, expected, strict=True):
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
        np.testing.assert_array_equal(a.node_ids, b.node_ids)


def test_non_contiguous_segment_is_an_error(tmp_path):
    table = make_table(np.random.default_rng(2), n_segments=3, dim=4)
    first = table.slice(0, int(table.run_starts()[1]))
    path = tmp_path / "t.parquet"
    write_parquet(path, [table, first], Coordinates("nm"))
    with pytest.raises(InputError, match="are not contiguous; sort the table by segment_id"):
        list(iter_parquet_segments(path))


def test_bad_files(tmp_path):
    with pytest.raises(NotFoundError):
        read_parquet(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(CorruptDataError, match="not a readable Parquet file"):
        read_parquet(junk)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"segment_id": [1, 2], "foo": [1.0, 2.0]}), other)
    with pytest.raises(CorruptDataError, match="expected columns segment_id, node_id, x, y, z"):
        read_parquet(other)
    assert read_coordinates(other) is None
    table = make_table(np.random.default_rng(3), n_segments=2)
    write_parquet(tmp_path / "a.parquet", [table], Coordinates("nm"))
    with pytest.raises(InputError, match="already exists"):
        ParquetEmbeddingWriter(tmp_path / "a.parquet", Coordinates("nm"))
    with pytest.raises(InputError, match="voxel coordinates need a resolution"):
        Coordinates("voxel")


def test_failed_write_leaves_existing_file(tmp_path):
    path = tmp_path / "a.parquet"
    table = make_table(np.random.default_rng(4), n_segments=2)
    write_parquet(path, [table], Coordinates("nm"))
    before = path.read_bytes()
    with (
        pytest.raises(RuntimeError),
        ParquetEmbeddingWriter(path, Coordinates("nm"), overwrite=True, row_group_rows=1) as writer,
    ):
        writer.write(table)
        raise RuntimeError("interrupted")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]
