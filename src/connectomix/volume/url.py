"""``open_volume(url, mode)``: one entry point for every backend.

URL forms (paths may be relative):

==============================================  =====================================================
``zarr://PATH`` or ``PATH.zarr``                 zarr v3, chunked and compressed (default for writing)
``precomputed://file://PATH``                    Neuroglancer precomputed via tensorstore (read/write)
``h5://FILE#DATASET`` (also ``.h5.gz``)          HDF5 (read)
``npz://FILE#MEMBER``                            numpy ``.npz`` member (read)
``pngstack://DIR``                               a directory of 2-D PNG slices, z = sorted name order
``tiff://PATH``                                  a multi-page TIFF or a directory of TIFF slices
``synthetic://raw?shape=…&seed=…``               generated EM-like volume with exact ground truth
``NAME/LAYER`` (e.g. ``fib25-ts2/raw``)           a named dataset (``cx data list``)
==============================================  =====================================================

Query parameters common to read-only sources: ``resolution=X,Y,Z`` (nm, in x, y, z order like
Neuroglancer) overrides the voxel size.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl

import numpy as np

from connectomix.errors import InputError, UnsupportedError
from connectomix.volume.base import Volume, VolumeKind
from connectomix.volume.box import xyz_to_zyx

Mode = Literal["r", "r+", "a", "w", "w-"]
MODES: tuple[str, ...] = ("r", "r+", "a", "w", "w-")

#: scheme -> "module:function" of its opener, imported on first use so the CLI starts fast.
_SCHEMES: dict[str, str] = {
    "zarr": "connectomix.volume.zarr_volume:open_zarr",
    "precomputed": "connectomix.volume.precomputed:open_precomputed",
    "h5": "connectomix.volume.hdf5:open_hdf5",
    "npz": "connectomix.volume.npz:open_npz",
    "pngstack": "connectomix.volume.imagestack:open_pngstack",
    "tiff": "connectomix.volume.imagestack:open_tiff",
    "synthetic": "connectomix.volume.synthetic:open_synthetic",
    "dataset": "connectomix.volume.datasets:open_dataset",
}


@dataclass(frozen=True)
class ParsedUrl:
    """A volume URL split into scheme, path, fragment (member) and query parameters."""

    url: str
    scheme: str
    path: str
    fragment: str = ""
    query: dict[str, str] = field(default_factory=dict)

    def resolution_override(self) -> tuple[float, float, float] | None:
        """``resolution=X,Y,Z`` from the query, converted to (z, y, x) nm."""
        text = self.query.get("resolution")
        if text is None:
            return None
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise InputError(f"{self.url}: resolution must be 3 numbers X,Y,Z in nm, got {text!r}") from None
        if len(values) != 3 or any(v <= 0 for v in values):
            raise InputError(f"{self.url}: resolution must be 3 positive numbers X,Y,Z in nm, got {text!r}")
        return xyz_to_zyx(values)  # type: ignore[return-value]


@dataclass(frozen=True)
class CreateSpec:
    """What a new volume looks like: all sizes in (z, y, x) voxels, resolution in nm."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    resolution: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunks: tuple[int, int, int] = (64, 64, 64)
    voxel_offset: tuple[int, int, int] = (0, 0, 0)
    kind: VolumeKind | None = None


def require_read_only(parsed: ParsedUrl, mode: str, what: str) -> None:
    """Raise :class:`UnsupportedError` unless ``mode`` is ``r``: ``what`` names the read-only source."""
    if mode != "r":
        raise UnsupportedError(
            f"{parsed.url}: {what} are read-only (mode 'r'); write to a zarr:// or precomputed:// URL"
        )


def parse_url(url: str) -> ParsedUrl:
    """Split a volume URL; plain paths are recognised by suffix, ``NAME/LAYER`` as a dataset."""
    if not isinstance(url, str) or not url.strip():
        raise InputError(
            "expected a volume URL such as zarr://out.zarr or fib25-ts2/raw, got an empty string"
        )
    url = url.strip()
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":
            return parse_url(rest)
    else:
        scheme, rest = _guess_scheme(url), url
    if scheme == "precomputed":
        # precomputed://file://PATH: the inner scheme is tensorstore's kvstore driver; keep it in ``path``.
        body, _, query_text = rest.partition("?")
        return ParsedUrl(url, scheme, body, "", dict(parse_qsl(query_text)))
    body, _, fragment = rest.partition("#")
    body, _, query_text = body.partition("?")
    if "?" in fragment:  # allow FILE#MEMBER?query too
        fragment, _, query_text = fragment.partition("?")
    return ParsedUrl(url, scheme, body, fragment, dict(parse_qsl(query_text)))


def _guess_scheme(url: str) -> str:
    path = url.split("#", 1)[0].split("?", 1)[0].rstrip("/")
    lower = path.lower()
    if lower.endswith(".zarr"):
        return "zarr"
    directory = Path(path)
    if directory.is_dir():
        if (directory / "zarr.json").is_file():
            return "zarr"
        if (directory / "info").is_file():
            return "precomputed"
        if any(directory.glob("*.png")):
            return "pngstack"
        if any(directory.glob("*.tif")) or any(directory.glob("*.tiff")):
            return "tiff"
    if lower.endswith((".h5", ".hdf5", ".h5.gz", ".hdf", ".hdf5.gz")):
        return "h5"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".tif", ".tiff")):
        return "tiff"
    from connectomix.volume.datasets import is_dataset_name

    if is_dataset_name(path):
        return "dataset"
    raise InputError(
        f"cannot tell the format of {url!r}: expected a URL with a scheme "
        f"({', '.join(s + '://' for s in _SCHEMES)}), a path ending in .zarr/.h5/.npz/.tif, "
        f"or a dataset name (see `cx data list`)"
    )


def _opener(scheme: str) -> Callable[..., Volume]:
    target = _SCHEMES.get(scheme)
    if target is None:
        raise InputError(
            f"unknown volume URL scheme {scheme + '://'!r}: expected one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}"
        )
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def open_volume(
    url: str,
    mode: Mode = "r",
    *,
    shape: Sequence[int] | None = None,
    dtype: np.dtype | str | type | None = None,
    resolution: Sequence[float] | None = None,
    chunks: Sequence[int] | int | None = None,
    voxel_offset: Sequence[int] | None = None,
    kind: VolumeKind | None = None,
    like: Volume | None = None,
) -> Volume:
    """Open (or create) the volume at ``url``.

    Modes: ``r`` read-only; ``r+`` read/write an existing volume; ``a`` open or create; ``w`` create,
    replacing what is there; ``w-`` create, failing if it exists. Creating needs ``shape`` and ``dtype``
    (or ``like``, a volume whose metadata to copy); ``shape``, ``chunks``, ``voxel_offset`` are (z, y, x)
    voxels and ``resolution`` is (z, y, x) nm.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    parsed = parse_url(url)
    spec = None
    if mode != "r" and mode != "r+":
        spec = _create_spec(parsed, shape, dtype, resolution, chunks, voxel_offset, kind, like)
    return _opener(parsed.scheme)(parsed, mode, spec)


def _create_spec(
    parsed: ParsedUrl,
    shape: Sequence[int] | None,
    dtype: np.dtype | str | type | None,
    resolution: Sequence[float] | None,
    chunks: Sequence[int] | int | None,
    voxel_offset: Sequence[int] | None,
    kind: VolumeKind | None,
    like: Volume | None,
) -> CreateSpec | None:
    if like is not None:
        shape = shape if shape is not None else like.shape
        dtype = dtype if dtype is not None else like.dtype
        resolution = resolution if resolution is not None else like.resolution
        chunks = chunks if chunks is not None else like.chunks
        voxel_offset = voxel_offset if voxel_offset is not None else like.voxel_offset
        kind = kind or like.kind
    if shape is None or dtype is None:
        return None  # mode 'a' on an existing volume needs no spec; openers check when they must create
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3 or any(s <= 0 for s in shape_t):
        raise InputError(f"{parsed.url}: shape must be 3 positive sizes (z, y, x), got {tuple(shape)}")
    if isinstance(chunks, int):
        chunks = (chunks,) * 3
    chunk_t = tuple(int(c) for c in (chunks or (64, 64, 64)))
    chunk_t = tuple(max(1, min(c, s)) for c, s in zip(chunk_t, shape_t, strict=True))
    res = parsed.resolution_override() or tuple(float(r) for r in (resolution or (1.0, 1.0, 1.0)))
    return CreateSpec(
        shape=shape_t,  # type: ignore[arg-type]
        dtype=np.dtype(dtype),
        resolution=res,  # type: ignore[arg-type]
        chunks=chunk_t,  # type: ignore[arg-type]
        voxel_offset=tuple(int(v) for v in (voxel_offset or (0, 0, 0))),  # type: ignore[arg-type]
        kind=kind,
    )
