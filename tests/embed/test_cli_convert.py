"""``cx embed convert``: CSV-ZIP ↔ Parquet both ways, and one-line errors for bad URLs."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.embed.csvzip import CsvZipReader, write_csvzip
from connectomix.embed.records import Coordinates, SegmentEmbeddings
from connectomix.embed.table import read_coordinates, read_parquet


def run_cx(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.fixture
def release(tmp_path):
    rng = np.random.default_rng(0)
    segments = [
        SegmentEmbeddings(
            segment_id,
            np.arange(n),
            rng.choice(10_000, size=(n, 3), replace=False),
            rng.normal(size=(n, 64)).astype(np.float32),
        )
        for segment_id, n in [(2**64 - 1, 5), (2**63 + 7, 3), (12345, 9), (864691135591041291, 4)]
    ]
    write_csvzip(tmp_path / "rel", segments, num_shards=5, bytewidth=64)
    return tmp_path / "rel", {s.segment_id: s for s in segments}


def test_csvzip_to_parquet_and_back(tmp_path, capsys, release):
    directory, segments = release
    src = f"csvzip://{directory}?num_shards=5&bytewidth=64&resolution=32,32,33"
    code, out, err = run_cx(capsys, "embed", "convert", src, f"parquet://{tmp_path / 'e.parquet'}")
    assert code == 0, err
    assert out.count("\n") == 1 and "converted 4 segments, 21 rows (64-d, voxel (32×32×33 nm))" in out
    assert read_coordinates(tmp_path / "e.parquet") == Coordinates("voxel", (32, 32, 33))
    table = read_parquet(tmp_path / "e.parquet")
    assert set(int(v) for v in table.segment_ids) == set(segments)

    # back to CSV-ZIP with the other bytewidth and another shard count
    dst = f"csvzip://{tmp_path / 'back'}?num_shards=3&bytewidth=8"
    code, out, err = run_cx(capsys, "embed", "convert", f"parquet://{tmp_path / 'e.parquet'}", dst)
    assert code == 0, err
    assert "converted 4 segments, 21 rows" in out
    reader = CsvZipReader(tmp_path / "back", num_shards=3, bytewidth=8)
    for segment_id, segment in segments.items():
        back = reader[segment_id]
        np.testing.assert_array_equal(back.embeddings, segment.embeddings)
        np.testing.assert_array_equal(back.positions_xyz, segment.positions_xyz)
        np.testing.assert_array_equal(back.node_ids, segment.node_ids)

    # the unit can come from options too, and an existing destination needs --overwrite
    code, out, err = run_cx(
        capsys,
        "embed",
        "convert",
        f"csvzip://{directory}?num_shards=5&bytewidth=64",
        f"parquet://{tmp_path / 'e.parquet'}",
        "--unit",
        "nm",
    )
    assert_one_line_error(code, err, "already exists")
    code, out, err = run_cx(
        capsys,
        "embed",
        "convert",
        f"csvzip://{directory}?num_shards=5&bytewidth=64",
        f"parquet://{tmp_path / 'e.parquet'}",
        "--unit",
        "nm",
        "--overwrite",
    )
    assert code == 0, err
    assert read_coordinates(tmp_path / "e.parquet") == Coordinates("nm")


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("csvzip://{rel}?num_shards=5", ["bytewidth is required"]),
        ("csvzip://{rel}?num_shards=5&bytewidth=32", ["bytewidth must be 8 or 64"]),
        ("csvzip://{rel}?num_shards=five&bytewidth=8", ["num_shards must be an integer"]),
        ("csvzip://{rel}?num_shards=5&bytewidth=64&shards=3", ["unknown query parameter 'shards'"]),
        ("zip://{rel}", ["unknown embedding URL scheme 'zip://'"]),
        ("{rel}", ["expected an embedding URL such as csvzip://"]),
        ("csvzip://{rel}?num_shards=5&bytewidth=64", ["does not record its coordinate unit"]),
        ("csvzip://{rel}?num_shards=5&bytewidth=64&unit=voxel", ["unit=voxel needs resolution"]),
        ("parquet://{rel}/none.parquet", ["does not exist"]),
        ("csvzip://{rel}?num_shards=5&bytewidth=8&unit=nm", ["belongs in shard", "bytewidth=8"]),
    ],
)
def test_bad_urls_give_one_line_errors(tmp_path, capsys, release, source, fragments):
    directory, _ = release
    code, _, err = run_cx(
        capsys, "embed", "convert", source.format(rel=directory), f"parquet://{tmp_path / 'out.parquet'}"
    )
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rel"]  # nothing half-written
