"""PNG and TIFF stacks: order, laziness, multi-page TIFF, errors, and the real FIB-25 slices."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from connectomix.errors import CorruptDataError, InputError, NotFoundError, UnsupportedError
from connectomix.volume import Box, open_volume
from connectomix.volume.imagestack import natural_key, write_pngstack

RNG = np.random.default_rng(11)
STACK8 = RNG.integers(0, 256, size=(5, 9, 13), dtype=np.uint8)


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def test_pngstack_round_trip_uint8_and_uint16(tmp_path: Path) -> None:
    paths = write_pngstack(tmp_path / "s8", STACK8)
    assert [p.name for p in paths] == [f"{z:05d}.png" for z in range(5)]
    vol = open_volume(f"pngstack://{tmp_path / 's8'}")
    assert vol.shape == (5, 9, 13) and vol.dtype == np.uint8 and vol.chunks == (5, 9, 13)
    np.testing.assert_array_equal(vol.read(), STACK8)
    np.testing.assert_array_equal(vol.read(Box((1, 2, 3), (3, 9, 10))), STACK8[1:3, 2:9, 3:10])

    deep = RNG.integers(0, 65536, size=(3, 4, 6), dtype=np.uint16)
    write_pngstack(tmp_path / "s16", deep)
    vol16 = open_volume(f"pngstack://{tmp_path / 's16'}?resolution=4,4,40")
    assert vol16.dtype == np.uint16 and vol16.resolution == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol16.read(), deep)


def test_write_pngstack_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="uint8 or uint16"):
        write_pngstack(tmp_path / "f", STACK8.astype(np.float32))
    with pytest.raises(InputError, match="3-D"):
        write_pngstack(tmp_path / "f", STACK8[0])
    write_pngstack(tmp_path / "d", STACK8)
    with pytest.raises(InputError, match="already holds 5 PNG"):
        write_pngstack(tmp_path / "d", STACK8[:2])
    write_pngstack(tmp_path / "d", STACK8[:2], overwrite=True)
    assert open_volume(f"pngstack://{tmp_path / 'd'}").shape == (2, 9, 13)


def test_natural_sort_order(tmp_path: Path) -> None:
    for z, name in enumerate(["1.png", "2.png", "10.png"]):
        _save_png(tmp_path / name, np.full((3, 4), z, np.uint8))
    (tmp_path / ".3.png.tmp").write_bytes(b"partial")  # temporary files are ignored
    (tmp_path / "notes.txt").write_text("not a slice")
    vol = open_volume(f"pngstack://{tmp_path}")
    assert [p.name for p in vol.files] == ["1.png", "2.png", "10.png"]  # type: ignore[attr-defined]
    assert vol.read()[:, 0, 0].tolist() == [0, 1, 2]
    names = ["iso.2601.png", "iso.2600.png", "iso.10000.png", "iso.999.png"]
    assert sorted(names, key=natural_key) == ["iso.999.png", "iso.2600.png", "iso.2601.png", "iso.10000.png"]


def test_slabs_decode_lazily(tmp_path: Path) -> None:
    """A damaged slice (valid header, broken pixels) only fails the reads whose slab includes it."""
    stack = RNG.integers(0, 256, size=(40, 16, 16), dtype=np.uint8)
    paths = write_pngstack(tmp_path, stack)
    whole = paths[37].read_bytes()
    paths[37].write_bytes(whole[: len(whole) // 2])
    vol = open_volume(f"pngstack://{tmp_path}")
    assert vol.chunks == (32, 16, 16)
    np.testing.assert_array_equal(vol.read(Box((0, 0, 0), (32, 16, 16))), stack[:32])
    with pytest.raises(CorruptDataError, match=r"00037\.png"):
        vol.read(Box((35, 0, 0), (36, 1, 1)))


def test_pngstack_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such directory"):
        open_volume(f"pngstack://{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFoundError, match="no PNG slices"):
        open_volume(f"pngstack://{empty}")

    mixed = tmp_path / "mixed"
    write_pngstack(mixed, STACK8)
    _save_png(mixed / "00005.png", np.zeros((9, 12), np.uint8))
    with pytest.raises(InputError, match=r"00005.png.*\(9, 12\)"):
        open_volume(f"pngstack://{mixed}")
    _save_png(mixed / "00005.png", np.zeros((9, 13), np.uint16))
    with pytest.raises(InputError, match=r"00005\.png is uint16"):
        open_volume(f"pngstack://{mixed}")

    rgb = tmp_path / "rgb"
    write_pngstack(rgb, STACK8)
    _save_png(rgb / "00002.png", np.zeros((9, 13, 3), np.uint8))
    with pytest.raises(InputError, match=r"expected grayscale.*RGB"):
        open_volume(f"pngstack://{rgb}")

    corrupt = tmp_path / "corrupt"
    write_pngstack(corrupt, STACK8)
    (corrupt / "00003.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CorruptDataError, match=r"00003\.png"):
        open_volume(f"pngstack://{corrupt}")

    with pytest.raises(UnsupportedError, match="read-only"):
        open_volume(f"pngstack://{tmp_path / 'rgb'}", "w", shape=(1, 1, 1), dtype="uint8")


# -- TIFF -----------------------------------------------------------------------------------------------


def test_multipage_tiff_memory_mapped_and_compressed(tmp_path: Path) -> None:
    stack = RNG.integers(0, 65536, size=(6, 10, 12), dtype=np.uint16)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, stack, photometric="minisblack")
    vol = open_volume(f"tiff://{plain}")
    assert vol._memmap is not None  # type: ignore[attr-defined]
    assert vol.shape == (6, 10, 12) and vol.dtype == np.uint16
    np.testing.assert_array_equal(vol.read(), stack)
    np.testing.assert_array_equal(vol.read(Box((2, 3, 4), (5, 10, 11))), stack[2:5, 3:10, 4:11])

    packed = tmp_path / "packed.tiff"
    tifffile.imwrite(packed, stack, photometric="minisblack", compression="zlib")
    vol2 = open_volume(str(packed))  # scheme guessed from the suffix
    assert vol2._memmap is None  # type: ignore[attr-defined]
    np.testing.assert_array_equal(vol2.read(Box((1, 0, 0), (4, 10, 12))), stack[1:4])
    np.testing.assert_array_equal(vol2.read(), stack)

    big_endian = tmp_path / "be.tif"
    tifffile.imwrite(big_endian, stack, photometric="minisblack", byteorder=">")
    vol3 = open_volume(f"tiff://{big_endian}")
    assert vol3.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(vol3.read(), stack)


def test_tiff_directory_and_errors(tmp_path: Path) -> None:
    slices = tmp_path / "slices"
    slices.mkdir()
    for z in [0, 1, 2, 10]:
        tifffile.imwrite(slices / f"s{z}.tif", np.full((4, 5), z, np.uint8), photometric="minisblack")
    vol = open_volume(f"tiff://{slices}")
    assert vol.shape == (4, 4, 5) and vol.chunks == (4, 4, 5)
    assert vol.read()[:, 0, 0].tolist() == [0, 1, 2, 10]
    assert vol.read(Box((2, 1, 1), (3, 2, 2))).item() == 2

    tifffile.imwrite(slices / "s11.tif", np.zeros((4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="grayscale"):
        open_volume(f"tiff://{slices}")
    (slices / "s11.tif").unlink()
    tifffile.imwrite(slices / "s11.tif", np.zeros((4, 6), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"s11\.tif"):
        open_volume(f"tiff://{slices}")

    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((2, 4, 5, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match="expected grayscale"):
        open_volume(f"tiff://{rgb}")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(CorruptDataError, match="not a readable TIFF"):
        open_volume(f"tiff://{junk}")
    junk.write_bytes(b"II*\x00" + b"\xff" * 60)  # TIFF magic, then a first-page offset past the end
    with pytest.raises(CorruptDataError):
        open_volume(f"tiff://{junk}")
    with pytest.raises(NotFoundError):
        open_volume(f"tiff://{tmp_path / 'missing.tif'}")
    with pytest.raises(UnsupportedError):
        open_volume(f"tiff://{rgb}", "r+")


# -- real data ------------------------------------------------------------------------------------------


def test_real_fib25_png_stack_matches_the_derived_crop(testdata: Path) -> None:
    vol = open_volume(f"pngstack://{testdata}/em/neuroproof_fib_medulla_ts2/grayscale_maps")
    assert vol.shape == (250, 250, 250) and vol.dtype == np.uint8
    assert vol.files[0].name == "iso.2600.png" and vol.files[-1].name == "iso.2849.png"  # type: ignore[attr-defined]
    crop = vol.read(Box((75, 75, 75), (175, 175, 175)))
    with h5py.File(testdata / "em/neuroproof_fib_medulla_ts2_crop100.h5", "r") as f:
        np.testing.assert_array_equal(crop, f["raw"][...])


def test_real_snemi_multipage_tiff(testdata: Path) -> None:
    path = testdata / "em/gala_snemi_mini/train-labels.tif"
    vol = open_volume(f"tiff://{path}")
    assert vol.shape == (32, 160, 160) and vol.dtype == np.uint8
    np.testing.assert_array_equal(vol.read(Box((5, 0, 0), (9, 160, 160))), tifffile.imread(path)[5:9])
