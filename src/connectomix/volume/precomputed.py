"""Neuroglancer precomputed volumes through tensorstore (``precomputed://file://PATH``), read and write.

The format stores everything in (x, y, z) order: the ``info`` file's ``resolution`` (nm), ``voxel_offset``,
``size`` and ``chunk_sizes``, and tensorstore's array domain ``(x, y, z, channel)``. This module is the one
place where that order meets connectomix's (z, y, x): metadata triples are reversed with
:func:`~connectomix.volume.box.xyz_to_zyx` / :func:`~connectomix.volume.box.zyx_to_xyz`, and arrays are
transposed in :meth:`PrecomputedVolume._read_raw` / :meth:`PrecomputedVolume._write_raw`.

Boxes are global voxel coordinates, the same numbers as tensorstore's domain (which starts at the info's
``voxel_offset``), so no offset arithmetic happens here beyond the axis swap.

URL forms: ``precomputed://file:///abs/dir``, ``precomputed://file://rel/dir``, ``precomputed://DIR`` (a bare
local path), or any other tensorstore kvstore URL (``memory://``, ``gs://`` ...). Query parameters:
``encoding=raw|compressed_segmentation`` (creation only), ``scale=N`` (which scale to open; default 0) and
``resolution=X,Y,Z`` (nm, overrides the stored voxel size when reading).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.base import Volume, VolumeKind, infer_kind
from connectomix.volume.box import Box, xyz_to_zyx, zyx_to_xyz
from connectomix.volume.url import CreateSpec, ParsedUrl

#: data types the precomputed format (and tensorstore's driver) can store.
SUPPORTED_DTYPES: tuple[str, ...] = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "float32",
)
ENCODINGS: tuple[str, ...] = ("raw", "compressed_segmentation")
SEGMENTATION_BLOCK_XYZ: tuple[int, int, int] = (8, 8, 8)
#: a tensorstore kvstore: a JSON spec or a kvstore URL such as ``memory://name/``.
KvStoreSpec = dict[str, Any] | str


class PrecomputedVolume(Volume):
    """One scale of a Neuroglancer precomputed volume as a (z, y, x) array in global voxel coordinates."""

    scheme = "precomputed"

    def __init__(
        self,
        url: str,
        store: ts.TensorStore,
        info: dict[str, Any],
        scale_index: int,
        writable: bool,
        resolution_override: tuple[float, float, float] | None = None,
    ) -> None:
        scale = info["scales"][scale_index]
        domain = store.domain
        if store.rank != 4 or domain.labels != ("x", "y", "z", "channel"):
            raise CorruptDataError(f"{url}: expected an (x, y, z, channel) precomputed array, got {domain}")
        super().__init__(
            url,
            shape=xyz_to_zyx(domain.shape[:3]),
            dtype=store.dtype.numpy_dtype,
            resolution=resolution_override or xyz_to_zyx(scale["resolution"]),
            chunks=xyz_to_zyx(_read_chunk_xyz(store, scale)),
            voxel_offset=xyz_to_zyx(domain.origin[:3]),
            kind=_kind_of(info, store.dtype.numpy_dtype),
            writable=writable,
        )
        self.info = info
        self.scale_index = scale_index
        self.encoding: str = scale.get("encoding", "raw")
        self._store = store

    @property
    def store(self) -> ts.TensorStore:
        """The underlying tensorstore array, domain ``(x, y, z, channel)`` in global voxel coordinates."""
        return self._store

    def _xyz_view(self, box: Box) -> ts.TensorStore:
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        return self._store[x0:x1, y0:y1, z0:z1, 0]

    def _read_raw(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (global, z/y/x) as a C-ordered (z, y, x) array."""
        try:
            data_xyz = self._xyz_view(box).read().result()
        except ValueError as exc:
            raise CorruptDataError(f"{self.url}: cannot read {box}: {_short(exc)}") from None
        return np.ascontiguousarray(np.asarray(data_xyz).transpose(2, 1, 0))

    def _write_raw(self, box: Box, array: np.ndarray) -> None:
        """Store a (z, y, x) ``array`` into ``box`` (global voxel coordinates)."""
        try:
            self._xyz_view(box).write(np.asarray(array).transpose(2, 1, 0)).result()
        except ValueError as exc:
            raise CorruptDataError(f"{self.url}: cannot write {box}: {_short(exc)}") from None


# -- opening --------------------------------------------------------------------------------------------
def open_precomputed(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> PrecomputedVolume:
    """Opener for ``precomputed://`` URLs (modes as in :func:`connectomix.volume.open_volume`).

    ``r`` / ``r+`` need an existing ``info``; ``a`` opens it or creates one from ``spec``; ``w`` deletes an
    existing precomputed volume (info and chunks) and creates a new one; ``w-`` fails if an ``info`` exists.
    """
    kvstore = _kvstore_spec(parsed)
    try:
        info = _read_info(parsed, kvstore)
        exists = info is not None
    except CorruptDataError:
        if mode != "w":
            raise
        info, exists = None, True  # a broken 'info' still marks a precomputed volume that 'w' may replace
    if mode == "w-" and exists:
        raise InputError(f"{parsed.url}: already exists (mode 'w-' creates only new volumes)")
    if mode in ("r", "r+") or (mode == "a" and exists):
        if info is None:
            raise NotFoundError(
                f"{parsed.url}: no precomputed volume here (expected an 'info' file in the directory)"
            )
        volume = _open_existing(parsed, kvstore, info, writable=mode != "r")
        if spec is not None:
            _check_matches(volume, spec)
        return volume
    if spec is None:
        raise InputError(f"{parsed.url}: creating a volume needs shape and dtype (or like=VOLUME)")
    ts_spec = _creation_spec(parsed, kvstore, spec)  # validate before anything existing is deleted
    if mode == "w":
        _clear(parsed, kvstore, exists)
    return _create(parsed, kvstore, ts_spec)


def _open_existing(
    parsed: ParsedUrl, kvstore: KvStoreSpec, info: dict[str, Any], writable: bool
) -> PrecomputedVolume:
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales:
        raise CorruptDataError(
            f"{parsed.url}: the 'info' file has no scales (expected a non-empty 'scales' list)"
        )
    scale_index = _scale_index(parsed, len(scales))
    if int(info.get("num_channels", 1)) != 1:
        raise InputError(
            f"{parsed.url}: expected a single-channel volume, "
            f"the info says num_channels={info['num_channels']}"
        )
    store = _ts_open(
        parsed,
        {"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": scale_index, "open": True},
        writable,
    )
    return PrecomputedVolume(parsed.url, store, info, scale_index, writable, parsed.resolution_override())


def _creation_spec(parsed: ParsedUrl, kvstore: KvStoreSpec, spec: CreateSpec) -> dict[str, Any]:
    """The tensorstore spec that creates a one-scale volume for ``spec`` (metadata converted to x, y, z)."""
    dtype = np.dtype(spec.dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise InputError(
            f"{parsed.url}: precomputed volumes store {', '.join(SUPPORTED_DTYPES)}; got dtype {dtype.name}"
        )
    kind: VolumeKind = spec.kind or infer_kind(dtype)
    encoding = _encoding(parsed, kind, dtype)
    scale: dict[str, Any] = {
        "resolution": [float(r) for r in zyx_to_xyz(spec.resolution)],
        "size": [int(s) for s in zyx_to_xyz(spec.shape)],
        "voxel_offset": [int(o) for o in zyx_to_xyz(spec.voxel_offset)],
        "chunk_size": [int(c) for c in zyx_to_xyz(spec.chunks)],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = list(SEGMENTATION_BLOCK_XYZ)
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": kvstore,
        "multiscale_metadata": {"type": kind, "data_type": dtype.name, "num_channels": 1},
        "scale_metadata": scale,
        "create": True,
    }


def _create(parsed: ParsedUrl, kvstore: KvStoreSpec, ts_spec: dict[str, Any]) -> PrecomputedVolume:
    store = _ts_open(parsed, ts_spec, writable=True)
    info = _read_info(parsed, kvstore)
    if info is None:  # pragma: no cover - tensorstore wrote it a moment ago
        raise CorruptDataError(f"{parsed.url}: the 'info' file vanished right after creating the volume")
    return PrecomputedVolume(parsed.url, store, info, 0, writable=True)


def _encoding(parsed: ParsedUrl, kind: VolumeKind, dtype: np.dtype) -> str:
    segmentable = dtype.name in ("uint32", "uint64")
    requested = parsed.query.get("encoding")
    if requested is None:
        return "compressed_segmentation" if kind == "segmentation" and segmentable else "raw"
    if requested not in ENCODINGS:
        raise InputError(f"{parsed.url}: encoding must be one of {', '.join(ENCODINGS)}, got {requested!r}")
    if requested == "compressed_segmentation" and not segmentable:
        raise InputError(
            f"{parsed.url}: compressed_segmentation encoding stores only uint32 or uint64, got {dtype.name}"
        )
    return requested


def _check_matches(volume: PrecomputedVolume, spec: CreateSpec) -> None:
    """Mode ``a`` on an existing volume: refuse a spec that describes a different array."""
    if tuple(spec.shape) != volume.shape or np.dtype(spec.dtype) != volume.dtype:
        raise InputError(
            f"{volume.url}: exists with shape (z, y, x) {volume.shape} {volume.dtype}, which does not match "
            f"the requested {tuple(spec.shape)} {np.dtype(spec.dtype)} (use mode 'w' to replace it)"
        )


# -- storage helpers ------------------------------------------------------------------------------------
def _kvstore_spec(parsed: ParsedUrl) -> KvStoreSpec:
    """The tensorstore kvstore for the URL's location (a directory; always with a trailing slash).

    Local paths (``file://PATH`` or a bare path, relative ones resolved against the working directory)
    become a ``file`` driver spec; any other ``SCHEME://...`` is handed to tensorstore as a kvstore URL.
    """
    location = parsed.path.strip()
    if not location:
        raise InputError(f"{parsed.url}: expected precomputed://file://PATH, got an empty path")
    if location.startswith("file://"):
        location = location[len("file://") :]
    elif "://" in location:
        return location.rstrip("/") + "/"
    path = Path(location).expanduser().absolute()
    return {"driver": "file", "path": str(path).rstrip("/") + "/"}


def _kvstore(parsed: ParsedUrl, kvstore: KvStoreSpec) -> ts.KvStore:
    try:
        return ts.KvStore.open(kvstore).result()
    except ValueError as exc:
        raise InputError(f"{parsed.url}: cannot open storage {kvstore}: {_short(exc)}") from None


def _read_info(parsed: ParsedUrl, kvstore: KvStoreSpec) -> dict[str, Any] | None:
    """The parsed ``info`` JSON, or None where there is none."""
    try:
        result = _kvstore(parsed, kvstore).read("info").result()
    except ValueError as exc:
        raise CorruptDataError(f"{parsed.url}: cannot read 'info': {_short(exc)}") from None
    if result.state != "value":
        return None
    try:
        info = json.loads(bytes(result.value))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDataError(f"{parsed.url}: the 'info' file is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise CorruptDataError(f"{parsed.url}: the 'info' file must hold a JSON object")
    return info


def _clear(parsed: ParsedUrl, kvstore: KvStoreSpec, exists: bool) -> None:
    """Mode ``w``: delete an existing precomputed volume (info and every chunk under the directory).

    A non-empty location without an ``info`` is not a precomputed volume; it is left alone and refused.
    """
    store = _kvstore(parsed, kvstore)
    if not exists:
        if store.list().result():
            raise InputError(
                f"{parsed.url}: the location holds files but no precomputed 'info'; "
                "expected an empty or precomputed directory to replace"
            )
        return
    store.delete_range(ts.KvStore.KeyRange()).result()


def _ts_open(parsed: ParsedUrl, ts_spec: dict[str, Any], writable: bool) -> ts.TensorStore:
    try:
        if writable:
            return ts.open(ts_spec, read=True, write=True).result()
        return ts.open(ts_spec, read=True).result()
    except ValueError as exc:
        message = _short(exc)
        if message.startswith("NOT_FOUND"):
            raise NotFoundError(f"{parsed.url}: {message}") from None
        if "create" in ts_spec:
            raise InputError(f"{parsed.url}: cannot create a precomputed volume: {message}") from None
        raise CorruptDataError(f"{parsed.url}: not a readable precomputed volume: {message}") from None


def _scale_index(parsed: ParsedUrl, count: int) -> int:
    text = parsed.query.get("scale", "0")
    try:
        index = int(text)
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise InputError(f"{parsed.url}: scale must be an integer in 0..{count - 1}, got {text!r}")
    return index


def _read_chunk_xyz(store: ts.TensorStore, scale: dict[str, Any]) -> tuple[int, int, int]:
    """The unit worth caching: tensorstore's read chunk (the chunk size, also in sharded volumes), x/y/z."""
    stored = [int(c) for c in scale["chunk_sizes"][0]]
    layout = store.chunk_layout.read_chunk.shape
    if not layout:
        return (stored[0], stored[1], stored[2])
    chunk = [int(c) if c else d for c, d in zip(layout[:3], stored, strict=True)]
    return (chunk[0], chunk[1], chunk[2])


def _kind_of(info: dict[str, Any], dtype: np.dtype) -> VolumeKind:
    kind = info.get("type")
    return kind if kind in ("image", "segmentation") else infer_kind(dtype)


def _short(exc: BaseException) -> str:
    """Tensorstore's message without the (long) spec it appends."""
    return str(exc).split(" [tensorstore_spec=", 1)[0].strip()
