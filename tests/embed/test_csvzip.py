"""SegCLR CSV-ZIP: sharding by md5, round trips for both bytewidths, hand-made shards, malformed inputs."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from connectomix.embed.csvzip import (
    CsvZipReader,
    CsvZipWriter,
    format_member,
    parse_members,
    read_shard,
    shard_of,
    write_csvzip,
)
from connectomix.embed.records import SegmentEmbeddings
from connectomix.errors import CorruptDataError, InputError, NotFoundError

BIG_ID = 2**64 - 1  # > 2^63: must survive as uint64
ID_ABOVE_2_63 = 2**63 + 12345


def independent_shard(segment_id: int, num_shards: int, bytewidth: int) -> int:
    """The spec's rule written out again, without the library."""
    digest = hashlib.md5(segment_id.to_bytes(bytewidth, "little")).digest()
    return int.from_bytes(digest, "little") % num_shards


def make_segments(rng: np.random.Generator, n: int = 30, dim: int = 64) -> list[SegmentEmbeddings]:
    ids = [int(v) for v in rng.integers(1, 2**63, size=n - 2, dtype=np.int64)] + [BIG_ID, ID_ABOVE_2_63]
    segments = []
    for k, segment_id in enumerate(ids):
        rows = int(rng.integers(1, 40))
        positions = rng.choice(100_000, size=(rows, 3), replace=False).astype(np.float64)
        if k % 3 == 0:  # nm coordinates with fractions
            positions = positions * 8.25 + 0.125
        segments.append(
            SegmentEmbeddings(
                segment_id,
                rng.permutation(10 * rows)[:rows],
                positions,
                (rng.normal(size=(rows, dim)) * 10.0 ** rng.integers(-6, 4)).astype(np.float32),
            )
        )
    return segments


def assert_same(a: SegmentEmbeddings, b: SegmentEmbeddings) -> None:
    assert a.segment_id == b.segment_id
    np.testing.assert_array_equal(a.node_ids, b.node_ids)
    np.testing.assert_array_equal(a.positions_xyz, b.positions_xyz)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)  # bit-exact float32


def test_shard_matches_spec_and_bytewidths_differ():
    for segment_id in (0, 1, 12345, 864691135591041291, ID_ABOVE_2_63, BIG_ID):
        for bytewidth in (8, 64):
            assert shard_of(segment_id, num_shards=10_000, bytewidth=bytewidth) == independent_shard(
                segment_id, 10_000, bytewidth
            )
    ids = range(1, 200)
    same = sum(
        shard_of(i, num_shards=10_000, bytewidth=8) == shard_of(i, num_shards=10_000, bytewidth=64)
        for i in ids
    )
    assert same < 5  # zero-padding to 64 bytes changes the hash


@pytest.mark.parametrize("bad", [0, 16, 32, None])
def test_bytewidth_must_be_chosen(bad):
    with pytest.raises(InputError, match="bytewidth must be 8"):
        shard_of(5, num_shards=10, bytewidth=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bytewidth", [8, 64])
def test_round_trip_random_access_and_iteration(tmp_path, bytewidth):
    rng = np.random.default_rng(bytewidth)
    segments = make_segments(rng)
    n = write_csvzip(tmp_path / "rel", segments, num_shards=7, bytewidth=bytewidth)
    assert n == len(segments)
    names = sorted(p.name for p in (tmp_path / "rel").iterdir())
    assert all(name.endswith(".zip") and not name.startswith(".") for name in names)  # no staging left
    reader = CsvZipReader(tmp_path / "rel", num_shards=7, bytewidth=bytewidth)
    for segment in segments:
        assert reader.shard_path(segment.segment_id).name == (
            f"{independent_shard(segment.segment_id, 7, bytewidth)}.zip"
        )
        assert_same(reader[segment.segment_id], segment)
    assert BIG_ID in reader and 424242 not in reader
    streamed = {s.segment_id: s for s in reader}
    assert set(streamed) == {s.segment_id for s in segments}
    for segment in segments:
        assert_same(streamed[segment.segment_id], segment)
    assert sorted(reader.segment_ids()) == sorted(s.segment_id for s in segments)
    many = reader.read_many([segments[0].segment_id, BIG_ID, 424242], missing="skip")
    assert set(many) == {segments[0].segment_id, BIG_ID}


def test_wrong_bytewidth_is_detected_while_iterating(tmp_path):
    write_csvzip(tmp_path / "rel", make_segments(np.random.default_rng(1)), num_shards=7, bytewidth=64)
    reader = CsvZipReader(tmp_path / "rel", num_shards=7, bytewidth=8)
    with pytest.raises(CorruptDataError, match=r"belongs in shard \d+ under num_shards=7, bytewidth=8"):
        list(reader)


def test_hand_made_shard_is_read(tmp_path):
    """A shard written with zipfile and hand-typed CSV, its index computed with hashlib."""
    segment_id, num_shards = 18446744073709551557, 13  # a uint64 above 2^63
    shard = independent_shard(segment_id, num_shards, 64)
    emb = ",".join(f"{0.5 * i - 3:g}" for i in range(64))
    text = f"7,100,200,33,{emb}\n8,101,200,33,{emb.replace('-3', '-2.75', 1)}\n"  # one trailing newline
    (tmp_path / "rel").mkdir()
    with zipfile.ZipFile(tmp_path / "rel" / f"{shard}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{segment_id}.csv", text)
        other = next(i for i in range(1, 10_000) if independent_shard(i, num_shards, 64) == shard)
        archive.writestr(f"{other}.csv", f"1,0,0,0,{emb}")
    reader = CsvZipReader(tmp_path / "rel", num_shards=num_shards, bytewidth=64)
    segment = reader[segment_id]
    np.testing.assert_array_equal(segment.node_ids, [7, 8])
    np.testing.assert_array_equal(segment.positions_xyz, [[100, 200, 33], [101, 200, 33]])
    expected = np.array([0.5 * i - 3 for i in range(64)], dtype=np.float32)
    np.testing.assert_array_equal(segment.embeddings[0], expected)
    assert segment.embeddings[1, 0] == np.float32(-2.75)
    assert segment.dim == 64
    with pytest.raises(NotFoundError, match=f"segment {segment_id + 1} not found"):
        reader[segment_id + 1]
    assert len(list(reader)) == 2


def test_written_text_is_segclr_csv():
    segment = SegmentEmbeddings(
        5, [3, 4], [[1, 2, 3], [4, 5, 6]], np.array([[0.1, -2.5], [1e-7, 3.0]], dtype=np.float32)
    )
    text = format_member(segment).decode()
    assert text.split("\n")[0].startswith("3,1,2,3,")
    assert not text.endswith("\n")
    row = text.split("\n")[1].split(",")
    assert len(row) == 6
    assert np.float32(row[4]) == np.float32(1e-7)  # float32 round-trips from text


def test_width_is_whatever_the_rows_have(tmp_path):
    rng = np.random.default_rng(3)
    segments = make_segments(rng, n=6, dim=16)
    write_csvzip(tmp_path / "rel", segments, num_shards=3, bytewidth=8)
    reader = CsvZipReader(tmp_path / "rel", num_shards=3, bytewidth=8)
    assert {s.dim for s in reader} == {16}
    strict = CsvZipReader(tmp_path / "rel", num_shards=3, bytewidth=8, dim=64)
    with pytest.raises(CorruptDataError, match="line 1: expected 68 fields, got 20"):
        list(strict)


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def row(node: int, xyz: tuple[int, int, int], dim: int = 64, value: str = "0.5") -> bytes:
    return (f"{node},{xyz[0]},{xyz[1]},{xyz[2]}," + ",".join([value] * dim)).encode()


def test_malformed_inputs_name_file_and_line(tmp_path):
    not_zip = tmp_path / "0.zip"
    not_zip.write_bytes(b"this is not a zip archive")
    with pytest.raises(CorruptDataError, match=r"0\.zip: not a readable ZIP file"):
        read_shard(not_zip)

    good = row(1, (0, 0, 0))
    short = b"2,1,1,1," + b",".join([b"0.5"] * 8)
    write_shard(tmp_path / "1.zip", {"11.csv": good, "12.csv": good + b"\n" + short})
    with pytest.raises(CorruptDataError, match=r"1\.zip:12\.csv line 2: expected 68 fields, got 12"):
        read_shard(tmp_path / "1.zip")

    bad_field = row(1, (0, 0, 0)) + b"\n" + row(2, (0, 0, 1)).replace(b"0.5", b"abc", 3)
    write_shard(tmp_path / "2.zip", {"21.csv": bad_field})
    with pytest.raises(
        CorruptDataError, match=r"2\.zip:21\.csv line 2 field 5: expected a number, got b'abc'"
    ):
        read_shard(tmp_path / "2.zip")

    duplicate = row(1, (5, 6, 7)) + b"\n" + row(2, (5, 6, 8)) + b"\n" + row(3, (5, 6, 7))
    write_shard(tmp_path / "3.zip", {"31.csv": good, "32.csv": duplicate})
    with pytest.raises(
        CorruptDataError, match=r"3\.zip:32\.csv line 3: position \(5\.0, 6\.0, 7\.0\) repeats line 1"
    ):
        read_shard(tmp_path / "3.zip")

    write_shard(tmp_path / "4.zip", {"notanid.csv": good})
    with pytest.raises(CorruptDataError, match=r"member 'notanid\.csv' is not named"):
        read_shard(tmp_path / "4.zip")

    blank = good + b"\n\n" + row(2, (1, 1, 1))
    with pytest.raises(CorruptDataError, match=r"x\.zip:5\.csv line 2: expected 68 fields, got 1"):
        parse_members("x.zip", [("5.csv", blank)])

    fractional_node = row(1, (0, 0, 0)).replace(b"1,", b"1.5,", 1)
    with pytest.raises(CorruptDataError, match=r"x\.zip:6\.csv line 1: node id must be an integer"):
        parse_members("x.zip", [("6.csv", fractional_node)])


def test_missing_segment_and_shard_raise_not_found(tmp_path):
    segments = make_segments(np.random.default_rng(4), n=3)
    write_csvzip(tmp_path / "rel", segments, num_shards=1000, bytewidth=8)
    reader = CsvZipReader(tmp_path / "rel", num_shards=1000, bytewidth=8)
    absent_shard = next(i for i in range(1, 10_000) if not reader.shard_path(i).exists())
    with pytest.raises(NotFoundError, match=r"its shard .* does not exist"):
        reader[absent_shard]
    present = reader.shard_of(segments[0].segment_id)
    sibling = next(
        i for i in range(1, 10**6) if reader.shard_of(i) == present and i != segments[0].segment_id
    )
    with pytest.raises(NotFoundError, match=f"has no member {sibling}.csv"):
        reader[sibling]
    with pytest.raises(NotFoundError, match="does not exist"):
        CsvZipReader(tmp_path / "nowhere", num_shards=1000, bytewidth=8)


def test_writer_is_atomic_and_refuses_to_clobber(tmp_path):
    segments = make_segments(np.random.default_rng(5), n=8)
    write_csvzip(tmp_path / "rel", segments, num_shards=4, bytewidth=8)
    before = {p.name: p.read_bytes() for p in (tmp_path / "rel").iterdir()}
    with pytest.raises(InputError, match="already holds"):
        CsvZipWriter(tmp_path / "rel", num_shards=4, bytewidth=8)
    # A failure half-way through an overwrite leaves the old release intact and no staging files.
    with (
        pytest.raises(RuntimeError),
        CsvZipWriter(tmp_path / "rel", num_shards=4, bytewidth=8, overwrite=True, buffer_bytes=1) as writer,
    ):
        writer.write(segments[0])  # staged immediately (tiny buffer)
        raise RuntimeError("interrupted")
    assert {p.name: p.read_bytes() for p in (tmp_path / "rel").iterdir()} == before
    with CsvZipWriter(tmp_path / "w", num_shards=4, bytewidth=8) as writer:
        writer.write(segments[0])
        with pytest.raises(InputError, match="written twice"):
            writer.write(segments[0])
    dup = SegmentEmbeddings(9, [1, 2], [[1, 1, 1], [1, 1, 1]], np.zeros((2, 64), np.float32))
    with pytest.raises(InputError, match="share position"):
        format_member(dup)


def test_writing_is_deterministic(tmp_path):
    segments = make_segments(np.random.default_rng(6), n=5)
    write_csvzip(tmp_path / "a", segments, num_shards=3, bytewidth=64)
    write_csvzip(tmp_path / "b", segments, num_shards=3, bytewidth=64)
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_each_shard_is_opened_once(tmp_path, monkeypatch):
    """Reading every segment must not reopen a shard per member (that would be quadratic in shard size)."""
    import connectomix.embed.csvzip as module

    segments = make_segments(np.random.default_rng(7), n=24)
    write_csvzip(tmp_path / "rel", segments, num_shards=3, bytewidth=64)
    opened: list[str] = []
    real = zipfile.ZipFile

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module.zipfile, "ZipFile", counting)
    reader = CsvZipReader(tmp_path / "rel", num_shards=3, bytewidth=64)
    assert len(reader.read_many([s.segment_id for s in segments])) == len(segments)
    assert sorted(opened) == ["0.zip", "1.zip", "2.zip"]
    opened.clear()
    assert sum(1 for _ in reader) == len(segments)
    assert sorted(opened) == ["0.zip", "1.zip", "2.zip"]
