"""ChunkCache (memory LRU + disk tier), Prefetcher, and Volume.read/write through the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.volume import ArrayVolume, Box, ChunkCache, Prefetcher, open_volume

KB = 1000


def chunk(value: float, nbytes: int = KB) -> np.ndarray:
    """A float64 array of ``nbytes`` bytes filled with ``value``."""
    return np.full(nbytes // 8, value, dtype=np.float64)


# -- memory tier ---------------------------------------------------------------------------------------------
def test_lru_eviction_under_byte_budget() -> None:
    cache = ChunkCache(max_bytes=3 * KB)
    for i, name in enumerate("abc"):
        cache.put((name, (0, 0, 0)), chunk(i))
    assert len(cache) == 3 and cache.nbytes == 3 * KB
    assert cache.get(("a", (0, 0, 0))) is not None  # "a" becomes most recently used
    cache.put(("d", (0, 0, 0)), chunk(3))  # over budget: the least recently used ("b") goes
    assert ("b", (0, 0, 0)) not in cache
    assert all((k, (0, 0, 0)) in cache for k in "acd")
    assert cache.nbytes == 3 * KB
    assert cache.get(("b", (0, 0, 0))) is None
    assert cache.get(("c", (0, 0, 0)))[0] == 2.0
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (2, 1, 1)
    assert cache.stats.hit_rate == pytest.approx(2 / 3)
    cache.reset_stats()
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (0, 0, 0)


def test_one_put_can_evict_several() -> None:
    cache = ChunkCache(max_bytes=4 * KB)
    for name in "abcd":
        cache.put((name, (0, 0, 0)), chunk(0))
    cache.put(("big", (0, 0, 0)), chunk(1, 3 * KB))
    assert [k for k in "abcd" if (k, (0, 0, 0)) in cache] == ["d"]
    assert cache.stats.evictions == 3
    assert cache.nbytes == 4 * KB


def test_chunk_larger_than_budget_is_not_kept() -> None:
    cache = ChunkCache(max_bytes=2 * KB)
    cache.put(("small", (0, 0, 0)), chunk(1))
    cache.put(("huge", (0, 0, 0)), chunk(2, 3 * KB))
    assert ("huge", (0, 0, 0)) not in cache
    assert ("small", (0, 0, 0)) in cache  # nothing was evicted to make room for it
    assert cache.nbytes == KB and cache.stats.evictions == 0
    assert cache.get(("huge", (0, 0, 0))) is None


def test_replacing_with_an_oversized_chunk_drops_the_old_one() -> None:
    cache = ChunkCache(max_bytes=2 * KB)
    key = ("v", (0, 0, 0))
    cache.put(key, chunk(1))
    cache.put(key, chunk(2, 3 * KB))
    assert cache.get(key) is None  # never the stale small chunk
    assert cache.nbytes == 0


def test_get_or_load_loads_once() -> None:
    cache = ChunkCache(max_bytes=10 * KB)
    calls = []

    def load() -> np.ndarray:
        calls.append(1)
        return chunk(7)

    first = cache.get_or_load(("v", (0, 0, 0)), load)
    second = cache.get_or_load(("v", (0, 0, 0)), load)
    assert len(calls) == 1
    assert first is second
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_cached_arrays_are_read_only() -> None:
    cache = ChunkCache(max_bytes=10 * KB)
    cache.put(("v", (0, 0, 0)), chunk(5))
    array = cache.get(("v", (0, 0, 0)))
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1.0
    loaded = cache.get_or_load(("w", (0, 0, 0)), lambda: chunk(6))
    assert not loaded.flags.writeable


def test_invalidate_by_volume_key() -> None:
    cache = ChunkCache(max_bytes=10 * KB)
    for start in [(0, 0, 0), (0, 0, 8)]:
        cache.put(("v1", start), chunk(1))
        cache.put(("v2", start), chunk(2))
    cache.invalidate("v1")
    assert len(cache) == 2 and cache.nbytes == 2 * KB
    assert ("v1", (0, 0, 0)) not in cache and ("v1", (0, 0, 8)) not in cache
    assert cache.get(("v2", (0, 0, 8)))[0] == 2.0
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


# -- disk tier -----------------------------------------------------------------------------------------------
def test_disk_tier_serves_a_second_cache(tmp_path: Path) -> None:
    key = ("volume@1:0", (0, 64, 128))
    data = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    writer = ChunkCache(max_bytes=10 * KB, disk_dir=tmp_path)
    writer.put(key, data)
    files = list(tmp_path.rglob("*"))
    assert [p.suffix for p in files if p.is_file()] == [".npy"]
    assert not any(p.name.endswith(".tmp") for p in files)

    reader = ChunkCache(max_bytes=10 * KB, disk_dir=tmp_path)  # empty memory tier
    assert len(reader) == 0
    found = reader.get(key)
    assert found is not None and np.array_equal(found, data) and found.dtype == np.uint16
    assert not found.flags.writeable
    assert (reader.stats.hits, reader.stats.disk_hits, reader.stats.misses) == (1, 1, 0)
    assert key in reader  # promoted to memory
    reader.get(key)
    assert reader.stats.disk_hits == 1  # second lookup served from memory

    reader.invalidate("volume@1:0")
    assert not [p for p in tmp_path.rglob("*.npy")]
    third = ChunkCache(max_bytes=10 * KB, disk_dir=tmp_path)
    assert third.get(key) is None
    assert third.stats.misses == 1


def test_disk_tier_ignores_a_corrupt_file(tmp_path: Path) -> None:
    key = ("v", (0, 0, 0))
    ChunkCache(max_bytes=10 * KB, disk_dir=tmp_path).put(key, chunk(1))
    (npy,) = tmp_path.rglob("*.npy")
    npy.write_bytes(b"not a numpy file")
    assert ChunkCache(max_bytes=10 * KB, disk_dir=tmp_path).get(key) is None


# -- volumes through the cache -------------------------------------------------------------------------------
@pytest.fixture
def zarr_volume(tmp_path: Path):
    """A (20, 24, 30) uint16 zarr volume with chunks (8, 8, 8), filled with distinct values."""
    volume = open_volume(
        "zarr://" + str(tmp_path / "v.zarr"), "w", shape=(20, 24, 30), dtype="uint16", chunks=(8, 8, 8)
    )
    data = np.arange(20 * 24 * 30, dtype=np.uint16).reshape(20, 24, 30)
    volume.write(volume.bounds, data)
    return volume, data


def test_read_twice_second_is_all_hits(zarr_volume, fresh_cache: ChunkCache) -> None:
    volume, data = zarr_volume
    assert volume.cache is fresh_cache
    box = Box((3, 5, 7), (17, 20, 29))  # touches 3 x 3 x 4 chunks of 8³
    fresh_cache.reset_stats()
    first = volume.read(box)
    assert np.array_equal(first, data[box.to_slices()])
    assert (fresh_cache.stats.hits, fresh_cache.stats.misses) == (0, 36)
    fresh_cache.reset_stats()
    second = volume.read(box)
    assert np.array_equal(second, first)
    assert (fresh_cache.stats.hits, fresh_cache.stats.misses) == (36, 0)
    second[0, 0, 0] = 1  # read returns a new writable array; the cache is untouched
    assert volume.read(box)[0, 0, 0] == data[3, 5, 7]


def test_write_invalidates(zarr_volume, fresh_cache: ChunkCache) -> None:
    volume, data = zarr_volume
    box = Box((0, 0, 0), (8, 8, 8))
    assert np.array_equal(volume.read(box), data[:8, :8, :8])
    key_before = volume.cache_key
    volume.write(Box((2, 2, 2), (4, 4, 4)), np.full((2, 2, 2), 7, np.uint16))
    assert volume.cache_key != key_before
    assert not any(k[0] == key_before for k in list(fresh_cache._entries))
    after = volume.read(box)
    expected = data[:8, :8, :8].copy()
    expected[2:4, 2:4, 2:4] = 7
    assert np.array_equal(after, expected)
    reopened = open_volume(volume.url)  # another handle reads the file, not a stale cache entry
    assert np.array_equal(reopened.read(box), expected)


def test_read_with_fill_value_pads_outside(zarr_volume) -> None:
    volume, data = zarr_volume
    box = Box((-2, 20, 25), (3, 26, 33))  # sticks out below z, above y and above x
    with pytest.raises(InputError, match="outside"):
        volume.read(box)
    padded = volume.read(box, fill_value=0)
    assert padded.shape == box.shape and padded.dtype == np.uint16
    inside = box.intersect(volume.bounds)
    assert np.array_equal(padded[inside.to_slices(box.start)], data[inside.to_slices()])
    mask = np.ones(box.shape, bool)
    mask[inside.to_slices(box.start)] = False
    assert mask.any() and np.all(padded[mask] == 0)
    far = volume.read(Box((100, 100, 100), (102, 102, 102)), fill_value=9)
    assert np.all(far == 9)


def test_prefetch_then_read_has_no_misses(zarr_volume, fresh_cache: ChunkCache) -> None:
    volume, data = zarr_volume
    box = Box((0, 4, 4), (16, 20, 30))
    prefetcher = Prefetcher(volume.cache)
    try:
        queued = volume.prefetch(box, prefetcher)
        assert queued == 2 * 3 * 4
        prefetcher.wait()
        assert fresh_cache.stats.prefetched == queued
        assert volume.prefetch(box, prefetcher) == 0  # already cached: nothing queued
        fresh_cache.reset_stats()
        assert np.array_equal(volume.read(box), data[box.to_slices()])
        assert fresh_cache.stats.misses == 0 and fresh_cache.stats.hits == queued
    finally:
        prefetcher.close()


def test_prefetcher_reraises_loader_errors() -> None:
    cache = ChunkCache(max_bytes=10 * KB)
    prefetcher = Prefetcher(cache)

    def broken() -> np.ndarray:
        raise OSError("disk on fire")

    try:
        prefetcher.submit([(("v", (0, 0, 0)), lambda: chunk(1)), (("v", (0, 0, 8)), broken)])
        with pytest.raises(OSError, match="disk on fire"):
            prefetcher.wait()
        assert ("v", (0, 0, 0)) in cache and ("v", (0, 0, 8)) not in cache
        prefetcher.wait()  # errors are reported once
    finally:
        prefetcher.close()


def test_array_volume_reads_bypass_the_cache(fresh_cache: ChunkCache) -> None:
    array = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)
    volume = ArrayVolume(array, voxel_offset=(10, 0, 0), writable=True)
    box = Box((11, 1, 2), (13, 4, 6))
    assert np.array_equal(volume.read(box), array[1:3, 1:4, 2:6])
    assert (fresh_cache.stats.hits, fresh_cache.stats.misses) == (0, 0)
    with pytest.raises(InputError):
        volume.read(Box((0, 0, 0), (2, 2, 2)))
    padded = volume.read(Box((9, 0, 0), (11, 5, 6)), fill_value=-1)
    assert np.all(padded[0] == -1) and np.array_equal(padded[1], array[0])
    volume.write(Box((10, 0, 0), (11, 1, 1)), np.array([[[99]]], dtype=np.int32))
    assert volume.read(Box((10, 0, 0), (11, 1, 1)))[0, 0, 0] == 99
