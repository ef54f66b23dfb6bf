"""Importing into zarr: exact copies, read-ahead through the cache, and nothing half-written on failure."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.errors import CorruptDataError, InputError
from connectomix.volume import ArrayVolume, Box, open_volume
from connectomix.volume.blocks import read_blocks
from connectomix.volume.imagestack import write_pngstack
from connectomix.volume.transfer import import_volume


def test_import_pngstack_copies_exactly_with_metadata(tmp_path, fresh_cache):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, size=(40, 24, 28), dtype=np.uint8)
    write_pngstack(tmp_path / "png", stack)
    destination = f"zarr://{tmp_path / 'out.zarr'}"
    imported = import_volume(
        f"pngstack://{tmp_path / 'png'}?resolution=4,4,30",
        destination,
        chunks_zyx=(8, 16, 16),
        progress=False,
    )
    np.testing.assert_array_equal(imported.read(), stack)
    assert imported.chunks == (8, 16, 16)
    assert imported.resolution == (30.0, 4.0, 4.0)
    assert fresh_cache.stats.prefetched > 0  # the read-ahead thread loaded blocks before they were asked for


def test_read_blocks_prefetches_the_next_block(tmp_path, fresh_cache):
    array = np.arange(32 * 32 * 32, dtype=np.uint32).reshape(32, 32, 32)
    volume = open_volume(f"zarr://{tmp_path / 'v.zarr'}", "w", shape=array.shape, dtype=array.dtype, chunks=8)
    volume.write(volume.bounds, array)
    boxes = volume.bounds.split((16, 32, 32))
    seen = []
    for box, data in read_blocks(volume, boxes):
        np.testing.assert_array_equal(data, array[box.to_slices()])
        seen.append(box)
    assert seen == boxes
    # Each block holds 2 x 4 x 4 = 32 chunks. The first block is read on demand (32 misses); the second
    # was loaded by the prefetcher while the first was in use, so reading it counted only hits.
    assert fresh_cache.stats.prefetched == 32
    assert fresh_cache.stats.misses == 32
    assert fresh_cache.stats.hits == 32


class FailingVolume(ArrayVolume):
    """An in-memory volume whose reads fail past a given z, like a corrupt slice deep in a stack."""

    def __init__(self, array: np.ndarray, fail_from_z: int) -> None:
        super().__init__(array, url="failing://")
        self.fail_from_z = fail_from_z

    def _read_raw(self, box: Box) -> np.ndarray:
        if box.stop[0] > self.fail_from_z:
            raise CorruptDataError("failing://: slice cannot be decoded")
        return super()._read_raw(box)


def test_failed_import_leaves_nothing_and_keeps_the_old_destination(tmp_path):
    old = np.full((8, 8, 8), 7, dtype=np.uint8)
    destination = f"zarr://{tmp_path / 'out.zarr'}"
    import_volume(ArrayVolume(old), destination, chunks_zyx=(4, 4, 4), progress=False)
    source = FailingVolume(np.zeros((64, 8, 8), dtype=np.uint8), fail_from_z=40)
    with pytest.raises(CorruptDataError):
        import_volume(
            source, destination, chunks_zyx=(8, 8, 8), block_chunks=1, overwrite=True, progress=False
        )
    np.testing.assert_array_equal(open_volume(destination).read(), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_import_rejects_non_zarr_destination(tmp_path):
    with pytest.raises(InputError, match="zarr://"):
        import_volume(
            ArrayVolume(np.zeros((4, 4, 4), np.uint8)), f"h5://{tmp_path / 'x.h5'}#a", progress=False
        )
