"""HDF5 volumes: compression filters, gzip'd files, dataset lookup, resolution, and every error path."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest

from connectomix.errors import CorruptDataError, InputError, NotFoundError, UnsupportedError
from connectomix.volume import Box, open_volume

DATA = np.random.default_rng(7).integers(0, 5000, size=(20, 30, 40), dtype=np.int32)


def _write(path: Path, compression: str | None, **attrs: object) -> Path:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "stack", data=DATA, compression=compression, chunks=(8, 16, 16) if compression else None
        )
        for key, value in attrs.items():
            ds.attrs[key] = value
        f.create_dataset("flat", data=np.zeros((5, 5), np.uint8))
    return path


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_round_trip(tmp_path: Path, compression: str | None) -> None:
    path = _write(tmp_path / f"v-{compression}.h5", compression)
    vol = open_volume(f"h5://{path}#stack")
    assert vol.shape == DATA.shape and vol.dtype == np.int32
    # cache chunks: whole multiples of the stored (8, 16, 16) chunks, >= 64 per axis, clipped to the shape
    assert vol.chunks == (20, 30, 40)
    assert vol.resolution == (1.0, 1.0, 1.0) and vol.voxel_offset == (0, 0, 0)
    np.testing.assert_array_equal(vol.read(), DATA)
    np.testing.assert_array_equal(vol.read(Box((3, 7, 11), (19, 29, 39))), DATA[3:19, 7:29, 11:39])


def test_gzipped_file_and_plain_path_url(tmp_path: Path) -> None:
    plain = _write(tmp_path / "v.h5", "gzip")
    packed = tmp_path / "v.h5.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    vol = open_volume(f"{packed}#stack")  # scheme guessed from the .h5.gz suffix
    np.testing.assert_array_equal(vol.read(), DATA)
    np.testing.assert_array_equal(
        open_volume(f"h5://{packed}#/stack").read(Box((0, 0, 0), (2, 3, 4))), DATA[:2, :3, :4]
    )


def test_resolution_from_attributes_and_override(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.h5", "gzip", resolution_nm_zyx=[40, 8, 4])
    assert open_volume(f"h5://{path}#stack").resolution == (40.0, 8.0, 4.0)
    assert open_volume(f"h5://{path}#stack?resolution=5,6,7").resolution == (7.0, 6.0, 5.0)
    other = tmp_path / "file-attr.h5"
    with h5py.File(other, "w") as f:
        f.attrs["resolution"] = (30.0, 6.0, 6.0)
        f["stack"] = DATA
    assert open_volume(f"h5://{other}#stack").resolution == (30.0, 6.0, 6.0)


def test_single_3d_dataset_is_picked_without_a_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.h5", None)  # holds 'stack' (3-D) and 'flat' (2-D)
    np.testing.assert_array_equal(open_volume(f"h5://{path}").read(), DATA)
    with h5py.File(path, "a") as f:
        f["group/another"] = DATA
    with pytest.raises(NotFoundError, match=r"2 3-D datasets.*group/another.*stack"):
        open_volume(f"h5://{path}")


def test_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.h5", "gzip")
    with pytest.raises(NotFoundError, match="no such HDF5 file"):
        open_volume(f"h5://{tmp_path / 'missing.h5'}#stack")
    with pytest.raises(NotFoundError, match=r"no dataset 'nope'.*stack \(20, 30, 40\)"):
        open_volume(f"h5://{path}#nope")
    with pytest.raises(InputError, match="expected a 3-D"):
        open_volume(f"h5://{path}#flat")
    for mode in ("w", "r+", "a", "w-"):
        with pytest.raises(UnsupportedError, match="read-only"):
            open_volume(f"h5://{path}#stack", mode, shape=(1, 1, 1), dtype="uint8")


def test_corrupt_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CorruptDataError, match="not valid HDF5"):
        open_volume(f"h5://{junk}#stack")

    whole = _write(tmp_path / "whole.h5", "gzip").read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptDataError, match="truncated file"):
        open_volume(f"h5://{truncated}#stack")

    bad_gz = tmp_path / "bad.h5.gz"
    bad_gz.write_bytes(gzip.compress(whole)[:-100])
    with pytest.raises(CorruptDataError, match="gzip"):
        open_volume(f"h5://{bad_gz}#stack")
    not_h5_gz = tmp_path / "text.h5.gz"
    not_h5_gz.write_bytes(gzip.compress(b"hello world" * 100))
    with pytest.raises(CorruptDataError, match="valid HDF5"):
        open_volume(f"h5://{not_h5_gz}#stack")


def test_close_releases_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.h5", None)
    vol = open_volume(f"h5://{path}#stack")
    vol.close()  # type: ignore[attr-defined]
    with h5py.File(path, "a") as f:  # would fail with a lock error if our handle were still open
        f.attrs["touched"] = 1


def test_real_groundtruth_gz_and_lzf(testdata: Path) -> None:
    ts2 = open_volume(f"h5://{testdata}/em/neuroproof_fib_medulla_ts2/groundtruth.h5.gz#stack")
    assert ts2.shape == (250, 250, 250) and ts2.dtype == np.int32
    corner = ts2.read(Box((0, 0, 0), (16, 16, 16)))
    assert corner.shape == (16, 16, 16) and corner.any()

    lzf = open_volume(f"h5://{testdata}/em/gala_fib_medulla/train-gt.lzf.h5#stack")
    assert lzf.shape == (50, 100, 200) and lzf.chunks == (50, 75, 100)  # stored (7, 25, 50), grown
    gt = lzf.read()
    with h5py.File(testdata / "em/gala_fib_medulla/train-gt.lzf.h5", "r") as f:
        np.testing.assert_array_equal(gt, f["stack"][...])

    crop = open_volume(f"h5://{testdata}/em/neuroproof_fib_medulla_ts2_crop100.h5#raw")
    assert crop.resolution == (10.0, 10.0, 10.0) and crop.dtype == np.uint8
