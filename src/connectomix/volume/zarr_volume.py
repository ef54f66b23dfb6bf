"""zarr v3 volumes (``zarr://PATH``): the default format for everything connectomix writes.

Arrays are stored (z, y, x) with ``dimension_names = ["z", "y", "x"]``, zstd-compressed chunks, and the
physical metadata in the array attributes under ``"connectomix"``: ``resolution_nm_zyx``,
``voxel_offset_zyx`` and ``kind``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, BloscShuffle

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box
from connectomix.volume.url import CreateSpec, ParsedUrl

ATTRS_KEY = "connectomix"


class ZarrVolume(Volume):
    """A zarr v3 array on the local file system."""

    scheme = "zarr"

    def __init__(self, url: str, array: zarr.Array, writable: bool) -> None:
        attrs: dict[str, Any] = dict(array.attrs.get(ATTRS_KEY, {}))  # type: ignore[arg-type]
        if array.ndim != 3:
            raise InputError(
                f"{url}: expected a 3-D (z, y, x) zarr array, found {array.ndim}-D {array.shape}"
            )
        super().__init__(
            url,
            shape=array.shape,
            dtype=array.dtype,
            resolution=attrs.get("resolution_nm_zyx", (1.0, 1.0, 1.0)),
            chunks=array.chunks,
            voxel_offset=attrs.get("voxel_offset_zyx", (0, 0, 0)),
            kind=attrs.get("kind"),
            writable=writable,
        )
        self.array = array

    def _read_raw(self, box: Box) -> np.ndarray:
        return np.asarray(self.array[box.to_slices(self.voxel_offset)])

    def _write_raw(self, box: Box, array: np.ndarray) -> None:
        self.array[box.to_slices(self.voxel_offset)] = array


def _compressor(dtype: np.dtype) -> BloscCodec:
    # zstd through blosc with byte shuffle: labels (uint64, long runs) and uint8 EM both compress well.
    shuffle = BloscShuffle.shuffle if dtype.itemsize > 1 else BloscShuffle.noshuffle
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def create_zarr(path: Path, spec: CreateSpec, url: str, overwrite: bool) -> ZarrVolume:
    """Create a zarr v3 array at ``path`` described by ``spec``."""
    if overwrite and path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    array = zarr.create_array(
        store=str(path),
        shape=spec.shape,
        chunks=spec.chunks,
        dtype=spec.dtype,
        compressors=[_compressor(spec.dtype)],
        fill_value=0,
        dimension_names=("z", "y", "x"),
        attributes={
            ATTRS_KEY: {
                "resolution_nm_zyx": list(spec.resolution),
                "voxel_offset_zyx": list(spec.voxel_offset),
                "kind": spec.kind
                or ("segmentation" if spec.dtype.kind in "iu" and spec.dtype.itemsize > 1 else "image"),
                "axes": ["z", "y", "x"],
            }
        },
        zarr_format=3,
    )
    return ZarrVolume(url, array, writable=True)


def open_zarr(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> ZarrVolume:
    """Opener for ``zarr://PATH`` (see :func:`connectomix.volume.open_volume` for modes)."""
    path = Path(parsed.path)
    exists = (path / "zarr.json").exists() or (path / ".zarray").exists()
    if mode in ("w", "w-") or (mode == "a" and not exists):
        if mode == "w-" and path.exists():
            raise InputError(f"{parsed.url}: already exists (mode 'w-' creates only new volumes)")
        if mode == "w" and path.exists() and not exists and (path.is_file() or any(path.iterdir())):
            raise InputError(f"{parsed.url}: exists and is not a zarr volume; refusing to replace it")
        if spec is None:
            raise InputError(f"{parsed.url}: creating a volume needs shape and dtype (or like=VOLUME)")
        return create_zarr(path, spec, parsed.url, overwrite=(mode == "w"))
    if not path.exists():
        raise NotFoundError(f"{parsed.url}: no such zarr volume (expected a directory with zarr.json)")
    try:
        array = zarr.open_array(str(path), mode="r" if mode == "r" else "r+")
    except (zarr.errors.NodeTypeValidationError, FileNotFoundError) as exc:
        raise CorruptDataError(f"{parsed.url}: not a zarr array ({exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"{parsed.url}: unreadable zarr metadata ({exc})") from None
    volume = ZarrVolume(parsed.url, array, writable=mode != "r")
    if mode == "a" and spec is not None and (volume.shape != spec.shape or volume.dtype != spec.dtype):
        raise InputError(
            f"{parsed.url}: exists as {volume.dtype} {volume.shape}, "
            f"not the requested {spec.dtype} {spec.shape}"
        )
    override = parsed.resolution_override()
    if override is not None:
        volume.resolution = override
    return volume
