"""HDF5 datasets as read-only volumes (``h5://FILE#DATASET``), also gzip'd files (``.h5.gz``).

Datasets are taken to be (z, y, x) already, as FFN, gunpowder and NeuroProof write them; nothing is
transposed. Any compression h5py reads natively works (gzip, lzf, szip where built in). A gzip'd file is
decompressed into memory once (a ``BytesIO``) and opened from there; this is detected from the file's first
bytes, not its name.

Voxel size (nm, z/y/x) comes from the dataset's attributes, then the file's: ``resolution_nm_zyx`` or
``resolution`` (the gunpowder convention, also z/y/x); else 1 nm. ``?resolution=X,Y,Z`` (x/y/z, like
Neuroglancer) overrides it. The volume's voxel offset is (0, 0, 0).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import IO

import h5py
import numpy as np

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box
from connectomix.volume.url import CreateSpec, ParsedUrl, require_read_only

DEFAULT_CHUNKS: tuple[int, int, int] = (64, 64, 64)
RESOLUTION_ATTRS: tuple[str, ...] = ("resolution_nm_zyx", "resolution")
_GZIP_MAGIC = b"\x1f\x8b"


class Hdf5Volume(Volume):
    """A 3-D HDF5 dataset read in (z, y, x) order; keeps its file open until :meth:`close`."""

    scheme = "h5"

    def __init__(
        self,
        url: str,
        dataset: h5py.Dataset,
        file: h5py.File,
        buffer: IO[bytes] | None,
        resolution: tuple[float, float, float],
    ) -> None:
        shape = tuple(int(s) for s in dataset.shape)
        # Cache granularity: whole multiples of the stored chunks, at least 64 voxels per axis (HDF5 files
        # often use tiny chunks such as (7, 25, 50), which would make a cache entry per few KB).
        stored = dataset.chunks
        chunks = [c * -(-64 // c) for c in stored] if stored else list(DEFAULT_CHUNKS)
        super().__init__(
            url,
            shape=shape,
            dtype=dataset.dtype,
            resolution=resolution,
            chunks=[max(1, min(c, s)) for c, s in zip(chunks, shape, strict=True)],
            writable=False,
        )
        self.dataset = dataset
        self._file = file
        self._buffer = buffer  # the decompressed bytes of a .h5.gz file: must outlive the h5py File

    def _read_raw(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (z, y, x; the voxel offset is 0) straight from the dataset."""
        try:
            return np.asarray(self.dataset[box.to_slices(self.voxel_offset)])
        except (OSError, RuntimeError, ValueError) as exc:
            raise CorruptDataError(f"{self.url}: cannot decode {box} ({_first_line(exc)})") from None

    def close(self) -> None:
        """Close the HDF5 file (and drop the in-memory copy of a gzip'd one). Reads fail afterwards."""
        self._file.close()
        self._buffer = None


def open_hdf5(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> Hdf5Volume:
    """Opener for ``h5://FILE#DATASET`` (read-only: any mode but ``r`` raises :class:`UnsupportedError`).

    Without ``#DATASET`` the file's only 3-D dataset is used. Raises :class:`NotFoundError` for a missing file
    or dataset, :class:`CorruptDataError` for a file that is not readable HDF5 (or not readable gzip), and
    :class:`InputError` for a dataset that is not 3-D.
    """
    require_read_only(parsed, mode, "HDF5 volumes")
    path = Path(parsed.path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"{parsed.url}: no such HDF5 file {str(path)!r}")
    file, buffer = _open_file(parsed, path)
    try:
        dataset = _find_dataset(parsed, file)
        resolution = parsed.resolution_override() or _stored_resolution(parsed, dataset, file)
        volume = Hdf5Volume(parsed.url, dataset, file, buffer, resolution)
        volume.source_files = [path]
        return volume
    except BaseException:
        file.close()
        raise


def _open_file(parsed: ParsedUrl, path: Path) -> tuple[h5py.File, IO[bytes] | None]:
    """Open ``path`` with h5py, gunzipping it into memory first if it starts with the gzip magic bytes."""
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
    buffer: IO[bytes] | None = None
    try:
        if gzipped:
            try:
                with gzip.open(path, "rb") as handle:
                    buffer = io.BytesIO(handle.read())
            except (OSError, EOFError, zlib.error) as exc:
                raise CorruptDataError(
                    f"{parsed.url}: not a readable gzip file ({_first_line(exc)})"
                ) from None
            return h5py.File(buffer, "r"), buffer
        return h5py.File(path, "r"), None
    except OSError as exc:
        what = "gzip'd file does not hold" if gzipped else "file is not"
        raise CorruptDataError(f"{parsed.url}: the {what} valid HDF5 ({_first_line(exc)})") from None


def _find_dataset(parsed: ParsedUrl, file: h5py.File) -> h5py.Dataset:
    datasets = _list_datasets(file)
    listing = ", ".join(f"{name} {shape}" for name, shape in datasets.items()) or "none"
    name = parsed.fragment.strip("/")
    if not name:
        three_d = [n for n, shape in datasets.items() if len(shape) == 3]
        if len(three_d) != 1:
            raise NotFoundError(
                f"{parsed.url}: name a dataset as h5://FILE#DATASET "
                f"({len(three_d)} 3-D datasets to choose from; the file holds: {listing})"
            )
        name = three_d[0]
    node = file.get(name)
    if not isinstance(node, h5py.Dataset):
        raise NotFoundError(f"{parsed.url}: no dataset {name!r} in the file; it holds: {listing}")
    if node.ndim != 3:
        raise InputError(
            f"{parsed.url}: expected a 3-D (z, y, x) dataset, {name!r} is {node.ndim}-D {node.shape}"
        )
    return node


def _list_datasets(file: h5py.File) -> dict[str, tuple[int, ...]]:
    """Every dataset's path in the file and its shape (metadata only; nothing is read)."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(name: str, node: object) -> None:
        if isinstance(node, h5py.Dataset):
            found[name] = tuple(node.shape)

    file.visititems(visit)
    return found


def _stored_resolution(
    parsed: ParsedUrl, dataset: h5py.Dataset, file: h5py.File
) -> tuple[float, float, float]:
    """The (z, y, x) nm voxel size from the dataset's or the file's attributes; 1 nm where none is stored."""
    for attrs in (dataset.attrs, file.attrs):
        for key in RESOLUTION_ATTRS:
            if key in attrs:
                try:
                    values = np.asarray(attrs[key], dtype=float).ravel()
                except (TypeError, ValueError):
                    values = np.asarray([], dtype=float)
                if values.size != 3 or not np.all(values > 0):
                    raise CorruptDataError(
                        f"{parsed.url}: attribute {key!r} must be 3 positive numbers (z, y, x nm), "
                        f"got {attrs[key]!r}"
                    )
                return (float(values[0]), float(values[1]), float(values[2]))
    return (1.0, 1.0, 1.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
