"""The one array API every volume backend implements.

A :class:`Volume` is a 3-D array in (z, y, x) order with a voxel size (``resolution``, nm, z/y/x), a
storage chunk shape, and a voxel offset (its first voxel's global coordinate). ``read(box)`` and
``write(box, array)`` take boxes in global voxel coordinates. Reads go through the shared
:class:`~connectomix.volume.cache.ChunkCache` one storage chunk at a time; writes invalidate it.
Backends implement only ``_read_raw`` and (if writable) ``_write_raw``.
"""

from __future__ import annotations

import hashlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from connectomix.errors import InputError, UnsupportedError
from connectomix.volume.box import Box, FloatTriple, Triple, zyx_to_xyz
from connectomix.volume.cache import ChunkCache, Prefetcher, shared_cache

VolumeKind = Literal["image", "segmentation"]
_version_counter = itertools.count()


def stamp_paths(paths: Sequence[Path]) -> str:
    """A digest of files' absolute paths, sizes and modification times (changes when any file does)."""
    digest = hashlib.sha1()
    for path in sorted(Path(p).resolve() for p in paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def infer_kind(dtype: np.dtype) -> VolumeKind:
    """Segmentation for unsigned/signed integers wider than 8 bits, image otherwise."""
    dtype = np.dtype(dtype)
    return "segmentation" if dtype.kind in "iu" and dtype.itemsize > 1 else "image"


class Volume(ABC):
    """A chunked 3-D array with physical metadata. Subclasses read and write raw boxes."""

    #: URL scheme this backend serves (for messages).
    scheme: str = ""

    def __init__(
        self,
        url: str,
        *,
        shape: Sequence[int],
        dtype: np.dtype | str | type,
        resolution: Sequence[float],
        chunks: Sequence[int],
        voxel_offset: Sequence[int] = (0, 0, 0),
        kind: VolumeKind | None = None,
        writable: bool = False,
        cache: ChunkCache | None = None,
        cached: bool = True,
    ) -> None:
        self.url = url
        self.shape: Triple = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.dtype = np.dtype(dtype)
        self.resolution: FloatTriple = tuple(float(r) for r in resolution)  # type: ignore[assignment]
        self.chunks: Triple = tuple(max(1, int(c)) for c in chunks)  # type: ignore[assignment]
        self.voxel_offset: Triple = tuple(int(o) for o in voxel_offset)  # type: ignore[assignment]
        self.kind: VolumeKind = kind or infer_kind(self.dtype)
        self.writable = writable
        self._cache = cache
        self.cached = cached
        self._version = next(_version_counter)
        self._stamp: str | None = None
        #: files whose sizes and modification times identify this volume's content (set by file backends)
        self.source_files: list[Path] = []
        if len(self.shape) != 3 or len(self.resolution) != 3 or len(self.chunks) != 3:
            raise InputError(f"{url}: expected a 3-D (z, y, x) volume, got shape {self.shape}")

    # -- metadata -------------------------------------------------------------------------------------
    @property
    def bounds(self) -> Box:
        """The voxels this volume holds, in global coordinates (z, y, x)."""
        return Box.from_shape(self.shape, self.voxel_offset)

    @property
    def resolution_xyz(self) -> FloatTriple:
        return zyx_to_xyz(self.resolution)

    @property
    def size(self) -> int:
        return self.bounds.size

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def cache(self) -> ChunkCache:
        return self._cache if self._cache is not None else shared_cache()

    @property
    def cache_key(self) -> str:
        """Identifies this volume's current content in the chunk cache.

        Read-only file-backed volumes are keyed by their files' paths, sizes and modification times, so the
        on-disk cache tier can serve them across processes and a changed file is never served stale. Other
        volumes get a process-local key (prefixed ``local:``) that changes with every write; the disk tier
        ignores those.
        """
        if not self.writable:
            if self._stamp is None:
                self._stamp = stamp_paths(self.source_files) if self.source_files else ""
            if self._stamp:
                return f"{self.url}|{self._stamp}"
        return f"local:{self.url}@{id(self)}:{self._version}"

    def close(self) -> None:  # noqa: B027 - a hook with a default, not an abstract method
        """Release open files or handles (a no-op for backends that hold none)."""

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict:
        """Metadata as a JSON-ready dict (sizes in voxels (z, y, x), resolution in nm)."""
        return {
            "url": self.url,
            "kind": self.kind,
            "shape_zyx": list(self.shape),
            "dtype": str(self.dtype),
            "resolution_nm_zyx": list(self.resolution),
            "chunks_zyx": list(self.chunks),
            "voxel_offset_zyx": list(self.voxel_offset),
            "size_gvox": self.size / 1e9,
            "nbytes": self.nbytes,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.url!r}, shape_zyx={self.shape}, dtype={self.dtype}, "
            f"resolution_nm_zyx={self.resolution})"
        )

    # -- reading --------------------------------------------------------------------------------------
    def _check_box(self, box: Box) -> None:
        if not self.bounds.contains(box):
            raise InputError(f"{self.url}: box {box} lies outside the volume's bounds {self.bounds}")

    def _chunk_grid(self, box: Box) -> list[Box]:
        """Storage chunks (clipped to the volume) that touch ``box``."""
        return [
            chunk.intersect(self.bounds)
            for chunk in box.iter_chunks(self.chunks, self.voxel_offset, clip=False)
        ]

    def _load_chunk(self, chunk: Box) -> np.ndarray:
        return self.cache.get_or_load((self.cache_key, chunk.start), lambda: self._read_raw(chunk))

    def read(self, box: Box | None = None, *, fill_value: float | None = None) -> np.ndarray:
        """The voxels of ``box`` (global coordinates; default: everything) as a new (z, y, x) array.

        Parts of ``box`` outside the volume raise :class:`InputError` unless ``fill_value`` is given, in
        which case they are filled with it.
        """
        box = self.bounds if box is None else box
        inside = box.intersect(self.bounds)
        if fill_value is None:
            self._check_box(box)
        out = np.empty(box.shape, dtype=self.dtype)
        if fill_value is not None and inside != box:
            out.fill(fill_value)
        if inside.empty:
            return out
        if not self.cached:
            out[inside.to_slices(box.start)] = self._read_raw(inside)
            return out
        for chunk in self._chunk_grid(inside):
            part = chunk.intersect(inside)
            data = self._load_chunk(chunk)
            out[part.to_slices(box.start)] = data[part.to_slices(chunk.start)]
        return out

    def prefetch(self, box: Box, prefetcher: Prefetcher) -> int:
        """Queue the chunks of ``box`` for background loading into the cache; returns how many."""
        inside = box.intersect(self.bounds)
        key = self.cache_key
        items = [((key, c.start), (lambda c=c: self._read_raw(c))) for c in self._chunk_grid(inside)]
        return prefetcher.submit(items)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self.read()
        return data if dtype is None else data.astype(dtype)

    # -- writing --------------------------------------------------------------------------------------
    def write(self, box: Box, array: np.ndarray) -> None:
        """Write ``array`` (shape ``box.shape``, cast safely to the volume's dtype) into ``box``."""
        if not self.writable:
            raise UnsupportedError(f"{self.url}: opened read-only; open with mode 'r+', 'a' or 'w' to write")
        self._check_box(box)
        array = np.asarray(array)
        if array.shape != box.shape:
            raise InputError(f"{self.url}: array shape {array.shape} does not match box shape {box.shape}")
        if array.dtype != self.dtype:
            if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
                raise InputError(f"{self.url}: cannot write {array.dtype} data into a {self.dtype} volume")
            array = array.astype(self.dtype)
        self._write_raw(box, array)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        """Drop this volume's chunks from the cache and start a new content version."""
        self.cache.invalidate(self.cache_key)
        self._version = next(_version_counter)

    # -- backend hooks --------------------------------------------------------------------------------
    @abstractmethod
    def _read_raw(self, box: Box) -> np.ndarray:
        """Read ``box`` (inside ``bounds``) straight from storage."""

    def _write_raw(self, box: Box, array: np.ndarray) -> None:
        raise UnsupportedError(f"{self.url}: the {self.scheme or type(self).__name__} backend is read-only")


class ArrayVolume(Volume):
    """A volume held in memory (datasets decoded from files, synthetic volumes, test fixtures)."""

    scheme = "memory"

    def __init__(
        self,
        array: np.ndarray,
        *,
        url: str = "memory://",
        resolution: Sequence[float] = (1.0, 1.0, 1.0),
        chunks: Sequence[int] = (64, 64, 64),
        voxel_offset: Sequence[int] = (0, 0, 0),
        kind: VolumeKind | None = None,
        writable: bool = False,
    ) -> None:
        array = np.asarray(array)
        if array.ndim != 3:
            raise InputError(f"{url}: expected a 3-D (z, y, x) array, got {array.ndim}-D shape {array.shape}")
        super().__init__(
            url,
            shape=array.shape,
            dtype=array.dtype,
            resolution=resolution,
            chunks=[min(c, s) for c, s in zip(chunks, array.shape, strict=True)],
            voxel_offset=voxel_offset,
            kind=kind,
            writable=writable,
            cached=False,  # already in memory: caching would only copy it
        )
        self._array = array

    def _read_raw(self, box: Box) -> np.ndarray:
        return self._array[box.to_slices(self.voxel_offset)]

    def _write_raw(self, box: Box, array: np.ndarray) -> None:
        self._array[box.to_slices(self.voxel_offset)] = array
