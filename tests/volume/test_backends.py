"""zarr (the default writable backend) and .npz members: round trips, reopening, modes and errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from connectomix.errors import CorruptDataError, InputError, NotFoundError, UnsupportedError
from connectomix.volume import Box, open_volume

# -- zarr -----------------------------------------------------------------------------------------------


def test_zarr_round_trip_partial_boxes_and_metadata(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path / 'seg.zarr'}"
    data = np.random.default_rng(4).integers(0, 2**62, size=(14, 21, 30), dtype=np.uint64)
    vol = open_volume(
        url,
        "w",
        shape=data.shape,
        dtype=np.uint64,
        resolution=(40, 8, 4),
        chunks=(4, 8, 8),
        voxel_offset=(100, -5, 7),
        kind="segmentation",
    )
    bounds = vol.bounds
    assert bounds == Box((100, -5, 7), (114, 16, 37))
    # Fill with four writes whose edges fall inside chunks on every axis.
    z_cut, y_cut, x_cut = 105, 6, 20
    for zs in ((100, z_cut), (z_cut, 114)):
        for ys in ((-5, y_cut), (y_cut, 16)):
            box = Box((zs[0], ys[0], 7), (zs[1], ys[1], x_cut))
            vol.write(box, data[box.to_slices(bounds.start)])
            box = Box((zs[0], ys[0], x_cut), (zs[1], ys[1], 37))
            vol.write(box, data[box.to_slices(bounds.start)])
    np.testing.assert_array_equal(vol.read(), data)

    again = open_volume(url)
    assert again.resolution == (40.0, 8.0, 4.0)
    assert again.voxel_offset == (100, -5, 7)
    assert again.chunks == (4, 8, 8)
    assert again.kind == "segmentation" and again.dtype == np.uint64
    part = Box((101, -2, 9), (113, 15, 36))
    np.testing.assert_array_equal(again.read(part), data[part.to_slices(bounds.start)])
    np.testing.assert_array_equal(again.read(), data)


def test_zarr_modes(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path / 'img.zarr'}"
    with pytest.raises(NotFoundError):
        open_volume(url)
    vol = open_volume(url, "w", shape=(4, 5, 6), dtype=np.uint8)
    assert vol.kind == "image"
    vol.write(vol.bounds, np.full((4, 5, 6), 7, np.uint8))
    with pytest.raises(InputError, match="already exists"):
        open_volume(url, "w-", shape=(4, 5, 6), dtype=np.uint8)
    reader = open_volume(url, "r")
    with pytest.raises(UnsupportedError, match="read-only"):
        reader.write(Box((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.uint8))
    assert (reader.read() == 7).all()
    # 'w' replaces what is there.
    open_volume(url, "w", shape=(2, 2, 2), dtype=np.uint16)
    assert open_volume(url).shape == (2, 2, 2) and not open_volume(url).read().any()


# -- npz ------------------------------------------------------------------------------------------------


def _npz(path: Path, **members: object) -> Path:
    np.savez_compressed(path, **members)  # type: ignore[arg-type]
    return path


def test_npz_round_trip_and_member_lookup(tmp_path: Path) -> None:
    seg = np.random.default_rng(5).integers(0, 9, size=(6, 7, 8), dtype=np.uint8)
    path = _npz(
        tmp_path / "r.npz", segmentation=seg, origins=np.array([{"a": 1}], dtype=object), vec=np.arange(3)
    )
    vol = open_volume(f"npz://{path}#segmentation")
    assert vol.shape == (6, 7, 8) and vol.dtype == np.uint8 and vol.resolution == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(vol.read(), seg)
    np.testing.assert_array_equal(vol.read(Box((1, 2, 3), (5, 7, 8))), seg[1:5, 2:7, 3:8])
    # Without a member: the only 3-D numeric array (the pickled one is never loaded).
    np.testing.assert_array_equal(open_volume(f"{path}").read(), seg)
    assert open_volume(f"npz://{path}#segmentation?resolution=4,4,40").resolution == (40.0, 4.0, 4.0)


def test_npz_errors(tmp_path: Path) -> None:
    path = _npz(
        tmp_path / "m.npz",
        a=np.zeros((2, 2, 2)),
        b=np.zeros((3, 3, 3)),
        flat=np.zeros((4, 4)),
        objs=np.array([None, 1], dtype=object),
    )
    with pytest.raises(NotFoundError, match=r"no member 'nope'.*a float64 \(2, 2, 2\)"):
        open_volume(f"npz://{path}#nope")
    with pytest.raises(NotFoundError, match="2 3-D arrays"):
        open_volume(f"npz://{path}")
    with pytest.raises(InputError, match="expected a 3-D"):
        open_volume(f"npz://{path}#flat")
    with pytest.raises(InputError, match="pickled"):
        open_volume(f"npz://{path}#objs")
    with pytest.raises(UnsupportedError, match="read-only"):
        open_volume(f"npz://{path}#a", "r+")
    with pytest.raises(NotFoundError, match="no such"):
        open_volume(f"npz://{tmp_path / 'missing.npz'}#a")

    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04" + np.random.default_rng(1).bytes(300))
    with pytest.raises(CorruptDataError, match=r"not a readable \.npz"):
        open_volume(f"npz://{junk}#a")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptDataError):
        open_volume(f"npz://{cut}#a")


def test_npz_damaged_member_data_is_reported_on_read(tmp_path: Path) -> None:
    big = np.arange(20 * 20 * 20, dtype=np.uint32).reshape(20, 20, 20)
    path = tmp_path / "d.npz"
    np.savez(path, big=big)  # stored uncompressed: flip bytes inside the data, keep the header intact
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("big.npy")
    middle = info.header_offset + 30 + len(info.filename) + 200 + 8000
    raw[middle : middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    vol = open_volume(f"npz://{path}#big")
    assert vol.shape == (20, 20, 20)
    with pytest.raises(CorruptDataError, match="cannot decode member 'big'"):
        vol.read()


def test_real_ffn_result_npz(testdata: Path) -> None:
    """Google's FFN result: 'segmentation' loads without unpickling the archive's pickled members."""
    path = testdata / "reference/google_ffn_fib25/sample-training2.npz"
    vol = open_volume(f"npz://{path}#segmentation")
    assert vol.shape == (250, 250, 250) and vol.dtype == np.uint8
    assert vol.read(Box((100, 100, 100), (110, 110, 110))).any()
    with pytest.raises(InputError, match="pickled"):
        open_volume(f"npz://{path}#origins")
