"""Members of numpy ``.npz`` archives as read-only volumes (``npz://FILE#MEMBER``).

The member is taken to be (z, y, x) already (FFN's result files store ``segmentation`` that way). Opening
reads only the member's ``.npy`` header (shape and dtype); the array is decompressed in full on the first
read and then kept in memory (a zip member cannot be read in parts). Loading never unpickles: other members
of the archive may hold pickled objects and are never touched. ``?resolution=X,Y,Z`` (nm, x/y/z) sets the
voxel size (default 1 nm); the voxel offset is (0, 0, 0).
"""

from __future__ import annotations

import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box
from connectomix.volume.url import CreateSpec, ParsedUrl, require_read_only

DEFAULT_CHUNKS: tuple[int, int, int] = (64, 64, 64)


class NpzVolume(Volume):
    """A 3-D array member of an ``.npz`` archive, (z, y, x); decoded on first read, then kept in memory."""

    scheme = "npz"

    def __init__(
        self,
        url: str,
        path: Path,
        member: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        resolution: tuple[float, float, float],
    ) -> None:
        super().__init__(
            url,
            shape=shape,
            dtype=dtype,
            resolution=resolution,
            chunks=[min(c, s) for c, s in zip(DEFAULT_CHUNKS, shape, strict=True)],
            writable=False,
            cached=False,  # the whole member is in memory after the first read: caching would only copy it
        )
        self.path = path
        self.member = member
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def _load(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                try:
                    with np.load(self.path, allow_pickle=False) as archive:
                        array = archive[self.member]
                except (
                    zipfile.BadZipFile,
                    zlib.error,
                    EOFError,
                    OSError,
                    ValueError,
                    NotImplementedError,
                ) as exc:
                    raise CorruptDataError(
                        f"{self.url}: cannot decode member {self.member!r} ({exc})"
                    ) from None
                if array.shape != self.shape or array.dtype != self.dtype:
                    raise CorruptDataError(
                        f"{self.url}: member {self.member!r} decoded as {array.dtype} {array.shape}, "
                        f"its header said {self.dtype} {self.shape}"
                    )
                array.setflags(write=False)
                self._array = array
            return self._array

    def _read_raw(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (z, y, x; the voxel offset is 0) as a new array."""
        return self._load()[box.to_slices(self.voxel_offset)].copy()


def open_npz(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> NpzVolume:
    """Opener for ``npz://FILE#MEMBER`` (read-only: any mode but ``r`` raises :class:`UnsupportedError`).

    Without ``#MEMBER`` the archive's only 3-D numeric member is used. Raises :class:`NotFoundError` for a
    missing file or member (listing the members), :class:`CorruptDataError` for a file that is not a readable
    ``.npz``, and :class:`InputError` for a member that is not a 3-D numeric array.
    """
    require_read_only(parsed, mode, ".npz volumes")
    path = Path(parsed.path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"{parsed.url}: no such .npz file {str(path)!r}")
    headers = _member_headers(parsed, path)
    listing = ", ".join(f"{name} {dtype} {shape}" for name, (shape, dtype) in headers.items()) or "none"
    member = parsed.fragment
    if not member:
        candidates = [n for n, (shape, dtype) in headers.items() if len(shape) == 3 and not dtype.hasobject]
        if len(candidates) != 1:
            raise NotFoundError(
                f"{parsed.url}: name a member as npz://FILE#MEMBER "
                f"({len(candidates)} 3-D arrays to choose from; the archive holds: {listing})"
            )
        member = candidates[0]
    if member not in headers:
        raise NotFoundError(f"{parsed.url}: no member {member!r} in the archive; it holds: {listing}")
    shape, dtype = headers[member]
    if dtype.hasobject:
        raise InputError(
            f"{parsed.url}: member {member!r} holds pickled Python objects; expected a 3-D numeric array"
        )
    if len(shape) != 3:
        raise InputError(
            f"{parsed.url}: expected a 3-D (z, y, x) array, member {member!r} is {len(shape)}-D {shape}"
        )
    resolution = parsed.resolution_override() or (1.0, 1.0, 1.0)
    volume = NpzVolume(parsed.url, path, member, shape, dtype, resolution)
    volume.source_files = [path]
    return volume


def _member_headers(parsed: ParsedUrl, path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each ``.npy`` member's name (without ``.npy``), shape and dtype, read from its header alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                headers[info.filename[: -len(".npy")]] = (tuple(int(s) for s in shape), np.dtype(dtype))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError) as exc:
        raise CorruptDataError(f"{parsed.url}: not a readable .npz archive ({exc})") from None
    return headers
