"""Neuroglancer precomputed through tensorstore: round trips, xyz metadata on disk, and the axis swap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from connectomix.errors import CorruptDataError, InputError, NotFoundError, UnsupportedError
from connectomix.volume import Box, open_volume


def _url(path: Path, query: str = "") -> str:
    return f"precomputed://file://{path}" + (f"?{query}" if query else "")


def _info(path: Path) -> dict:
    return json.loads((path / "info").read_text())


def test_raw_uint8_image_round_trip_with_offset_and_anisotropy(tmp_path: Path) -> None:
    path = tmp_path / "img"
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(12, 20, 36), dtype=np.uint8)
    vol = open_volume(
        _url(path),
        "w",
        shape=data.shape,
        dtype=np.uint8,
        resolution=(40, 8, 4),
        chunks=(4, 8, 16),
        voxel_offset=(3, 50, 700),
    )
    assert vol.kind == "image" and vol.encoding == "raw"
    assert vol.bounds == Box((3, 50, 700), (15, 70, 736))
    # Two partial writes that cross chunk boundaries on every axis, then the rest.
    vol.write(Box((3, 50, 700), (9, 61, 719)), data[:6, :11, :19])
    vol.write(Box((9, 50, 700), (15, 70, 736)), data[6:])
    vol.write(Box((3, 61, 700), (9, 70, 736)), data[:6, 11:])
    vol.write(Box((3, 50, 719), (9, 61, 736)), data[:6, :11, 19:])

    info = _info(path)
    scale = info["scales"][0]
    assert info["type"] == "image" and info["data_type"] == "uint8" and info["num_channels"] == 1
    assert scale["resolution"] == [4, 8, 40]  # x, y, z
    assert scale["size"] == [36, 20, 12]
    assert scale["voxel_offset"] == [700, 50, 3]
    assert scale["chunk_sizes"] == [[16, 8, 4]]
    assert scale["encoding"] == "raw"

    again = open_volume(_url(path))
    assert again.resolution == (40.0, 8.0, 4.0)
    assert again.voxel_offset == (3, 50, 700)
    assert again.chunks == (4, 8, 16)
    assert again.shape == (12, 20, 36) and again.dtype == np.uint8 and again.kind == "image"
    np.testing.assert_array_equal(again.read(), data)
    part = Box((5, 55, 710), (13, 69, 735))
    np.testing.assert_array_equal(again.read(part), data[2:10, 5:19, 10:35])


def test_tensorstore_sees_x_y_z_order(tmp_path: Path) -> None:
    """Read our volume straight through tensorstore: ts[x, y, z, 0] == ours[z, y, x] (global coords)."""
    path = tmp_path / "asym"
    shape_zyx = (3, 5, 7)  # every axis a different length
    data = np.arange(np.prod(shape_zyx), dtype=np.uint32).reshape(shape_zyx)
    offset_zyx = (10, 20, 30)
    vol = open_volume(
        _url(path), "w", shape=shape_zyx, dtype=np.uint32, voxel_offset=offset_zyx, chunks=(2, 2, 4)
    )
    vol.write(vol.bounds, data)

    store = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path) + "/"}}
    ).result()
    assert store.domain.labels == ("x", "y", "z", "channel")
    assert store.domain.origin[:3] == (30, 20, 10)
    assert store.domain.shape[:3] == (7, 5, 3)
    ts_xyz = store[:, :, :, 0].read().result()
    np.testing.assert_array_equal(ts_xyz, data.transpose(2, 1, 0))
    for z, y, x in [(0, 0, 0), (2, 1, 6), (1, 4, 3)]:
        assert ts_xyz[x, y, z] == data[z, y, x]
        gx, gy, gz = x + 30, y + 20, z + 10
        assert (
            store[gx, gy, gz, 0].read().result()
            == vol.read(Box((gz, gy, gx), (gz + 1, gy + 1, gx + 1)))[0, 0, 0]
        )


def test_compressed_segmentation_uint64_keeps_large_ids(tmp_path: Path) -> None:
    path = tmp_path / "seg64"
    rng = np.random.default_rng(2)
    ids = np.array([0, 2**53 + 1, 2**63 + 12345, 2**64 - 1, 7], dtype=np.uint64)
    data = ids[rng.integers(0, len(ids), size=(10, 17, 9))]
    vol = open_volume(
        _url(path), "w", shape=data.shape, dtype=np.uint64, resolution=(30, 6, 6), chunks=(8, 8, 8)
    )
    assert vol.kind == "segmentation" and vol.encoding == "compressed_segmentation"
    vol.write(vol.bounds, data)
    scale = _info(path)["scales"][0]
    assert _info(path)["type"] == "segmentation"
    assert scale["encoding"] == "compressed_segmentation"
    assert scale["compressed_segmentation_block_size"] == [8, 8, 8]
    assert scale["resolution"] == [6, 6, 30]
    got = open_volume(_url(path)).read()
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, data)
    assert int(got.max()) == 2**64 - 1


def test_compressed_segmentation_uint32_and_raw_override(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 2**32, size=(9, 10, 11), dtype=np.uint32)
    seg = open_volume(_url(tmp_path / "s32"), "w", shape=data.shape, dtype=np.uint32)
    assert seg.encoding == "compressed_segmentation"
    seg.write(seg.bounds, data)
    np.testing.assert_array_equal(open_volume(_url(tmp_path / "s32")).read(), data)

    raw = open_volume(_url(tmp_path / "r32", "encoding=raw"), "w", shape=data.shape, dtype=np.uint32)
    assert raw.encoding == "raw" and _info(tmp_path / "r32")["scales"][0]["encoding"] == "raw"
    raw.write(raw.bounds, data)
    np.testing.assert_array_equal(open_volume(_url(tmp_path / "r32")).read(), data)


def test_bare_path_and_encoding_errors(tmp_path: Path) -> None:
    vol = open_volume(f"precomputed://{tmp_path / 'bare'}", "w", shape=(4, 4, 4), dtype=np.uint16)
    assert vol.kind == "segmentation" and vol.encoding == "raw"  # uint16 cannot be compressed_segmentation
    assert (tmp_path / "bare" / "info").is_file()
    with pytest.raises(InputError, match="compressed_segmentation"):
        open_volume(
            _url(tmp_path / "u8", "encoding=compressed_segmentation"), "w", shape=(4, 4, 4), dtype="uint8"
        )
    with pytest.raises(InputError, match="encoding must be one of"):
        open_volume(_url(tmp_path / "x", "encoding=png8"), "w", shape=(4, 4, 4), dtype="uint8")
    with pytest.raises(InputError, match="float64"):
        open_volume(_url(tmp_path / "f"), "w", shape=(4, 4, 4), dtype="float64")


def test_modes(tmp_path: Path) -> None:
    path = tmp_path / "v"
    url = _url(path)
    with pytest.raises(NotFoundError, match="info"):
        open_volume(url)
    with pytest.raises(NotFoundError):
        open_volume(url, "r+")
    with pytest.raises(InputError, match="shape and dtype"):
        open_volume(url, "w")

    first = open_volume(url, "a", shape=(8, 8, 8), dtype=np.uint8, chunks=(4, 4, 4))
    first.write(first.bounds, np.full((8, 8, 8), 9, np.uint8))
    with pytest.raises(InputError, match="already exists"):
        open_volume(url, "w-", shape=(8, 8, 8), dtype=np.uint8)
    with pytest.raises(InputError, match="does not match"):
        open_volume(url, "a", shape=(8, 8, 9), dtype=np.uint8)

    reader = open_volume(url, "r")
    with pytest.raises(UnsupportedError):
        reader.write(Box((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.uint8))
    editor = open_volume(url, "r+")
    editor.write(Box((0, 0, 0), (1, 1, 1)), np.array([[[3]]], np.uint8))
    assert open_volume(url).read(Box((0, 0, 0), (1, 1, 2))).ravel().tolist() == [3, 9]

    # 'w' replaces: the old chunks are gone (new volume reads as zeros) and the new metadata is in force.
    old_chunks = [p for p in path.rglob("*") if p.is_file() and p.name != "info"]
    assert old_chunks
    replaced = open_volume(url, "w", shape=(4, 6, 8), dtype=np.uint64, resolution=(2, 3, 4))
    assert not any(p.exists() for p in old_chunks)
    assert replaced.shape == (4, 6, 8) and replaced.dtype == np.uint64
    assert _info(path)["scales"][0]["resolution"] == [4, 3, 2]
    assert not open_volume(url).read().any()


def test_w_refuses_a_foreign_directory_and_corrupt_info_is_reported(tmp_path: Path) -> None:
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="no precomputed 'info'"):
        open_volume(_url(foreign), "w", shape=(4, 4, 4), dtype=np.uint8)
    assert (foreign / "keep.txt").read_text() == "mine"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "info").write_text("{not json")
    with pytest.raises(CorruptDataError, match="not valid JSON"):
        open_volume(_url(broken))
    (broken / "info").write_text(json.dumps({"type": "image", "scales": []}))
    with pytest.raises(CorruptDataError, match="no scales"):
        open_volume(_url(broken))
    (broken / "info").write_text("{not json")
    fresh = open_volume(_url(broken), "w", shape=(2, 3, 4), dtype=np.uint8)  # 'w' may replace a broken volume
    assert fresh.shape == (2, 3, 4) and _info(broken)["type"] == "image"


def test_failed_w_keeps_the_old_volume(tmp_path: Path) -> None:
    path = tmp_path / "keep"
    old = open_volume(_url(path), "w", shape=(4, 4, 4), dtype=np.uint8)
    old.write(old.bounds, np.full((4, 4, 4), 5, np.uint8))
    with pytest.raises(InputError, match="float64"):
        open_volume(_url(path), "w", shape=(4, 4, 4), dtype=np.float64)
    with pytest.raises(InputError, match="compressed_segmentation"):
        open_volume(_url(path, "encoding=compressed_segmentation"), "w", shape=(4, 4, 4), dtype=np.int16)
    assert (open_volume(_url(path)).read() == 5).all()


def test_resolution_override_on_read(tmp_path: Path) -> None:
    open_volume(_url(tmp_path / "v"), "w", shape=(2, 2, 2), dtype=np.uint8, resolution=(40, 4, 4))
    vol = open_volume(_url(tmp_path / "v", "resolution=8,8,33"))
    assert vol.resolution == (33.0, 8.0, 8.0)
