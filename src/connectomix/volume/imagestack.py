"""Image stacks as read-only volumes: a directory of 2-D PNG or TIFF slices, or one multi-page TIFF file.

* ``pngstack://DIR``: every ``*.png`` in ``DIR`` is one z slice; z follows the natural sort order of the
  file names (``iso.2600.png`` < ``iso.2601.png``, ``2.png`` < ``10.png``). Names starting with ``.`` are
  ignored (temporary files).
* ``tiff://PATH``: a multi-page TIFF (pages = z; memory-mapped where the file allows it, else decoded a page
  at a time) or a directory of 2-D TIFF slices treated like a PNG stack.

Slices are (y, x) grayscale images; the volume is (z, y, x) with voxel offset (0, 0, 0). Opening reads only
the slices' headers (to check that all have one shape and dtype); pixels are decoded on read, only for the
slices a box touches. Storage chunks are ``(min(32, z), y, x)``. ``?resolution=X,Y,Z`` (nm, x/y/z) sets the
voxel size (default 1 nm). :func:`write_pngstack` writes a (z, y, x) uint8/uint16 array as such a stack.
"""

from __future__ import annotations

import re
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box
from connectomix.volume.url import CreateSpec, ParsedUrl, require_read_only

SLAB_DEPTH = 32
PNG_SUFFIXES: tuple[str, ...] = (".png",)
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
#: Pillow image modes that are one grayscale channel, and the numpy dtype each decodes to.
_GRAY_MODES: dict[str, np.dtype] = {
    "1": np.dtype(bool),
    "L": np.dtype(np.uint8),
    "I;16": np.dtype(np.uint16),
    "I;16L": np.dtype(np.uint16),
    "I;16B": np.dtype(np.uint16),
    "I": np.dtype(np.int32),
    "F": np.dtype(np.float32),
}
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    UnidentifiedImageError,
)

SliceHeader = tuple[tuple[int, int], np.dtype]
T = TypeVar("T")


def natural_key(name: str) -> tuple:
    """Sort key ordering digit runs by value: ``2.png`` < ``10.png``, ``iso.2600.png`` < ``iso.2601.png``."""
    parts = re.split(r"(\d+)", name)
    return (tuple(int(p) if p.isdigit() else p.lower() for p in parts), name)


# -- slice stacks (PNG or TIFF directories) ---------------------------------------------------------
class SliceStackVolume(Volume):
    """A directory of 2-D grayscale slices, one file per z, decoded lazily; (z, y, x)."""

    def __init__(
        self,
        url: str,
        files: Sequence[Path],
        shape_yx: tuple[int, int],
        dtype: np.dtype,
        decode: Callable[[Path], np.ndarray],
        resolution: tuple[float, float, float],
        scheme: str,
    ) -> None:
        shape = (len(files), *shape_yx)
        super().__init__(
            url,
            shape=shape,
            dtype=dtype,
            resolution=resolution,
            chunks=(min(SLAB_DEPTH, shape[0]), shape[1], shape[2]),
            writable=False,
        )
        self.scheme = scheme
        self.files: list[Path] = list(files)
        self._decode = decode

    def read_slice(self, z: int) -> np.ndarray:
        """Decode slice ``z`` (0-based, local) in full as a (y, x) array; checks its shape and dtype."""
        path = self.files[z]
        image = self._decode(path)
        if image.shape != self.shape[1:] or image.dtype != self.dtype:
            raise InputError(
                f"{self.url}: slice {path.name} decoded as {image.dtype} {image.shape}; "
                f"expected {self.dtype} {self.shape[1:]} like the other slices"
            )
        return image

    def _read_raw(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (z, y, x; the voxel offset is 0), decoding only the slices it spans."""
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        out = np.empty(box.shape, dtype=self.dtype)
        for i, z in enumerate(range(z0, z1)):
            out[i] = self.read_slice(z)[y0:y1, x0:x1]
        return out


def _list_slices(parsed: ParsedUrl, directory: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not directory.is_dir():
        raise NotFoundError(
            f"{parsed.url}: no such directory {str(directory)!r} (expected a folder of {what})"
        )
    files = [
        p
        for p in directory.iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise NotFoundError(f"{parsed.url}: no {what} in {str(directory)!r}")
    return sorted(files, key=lambda p: natural_key(p.name))


def _open_stack(
    parsed: ParsedUrl,
    files: list[Path],
    probe: Callable[[Path], SliceHeader],
    decode: Callable[[Path], np.ndarray],
    scheme: str,
) -> SliceStackVolume:
    """Check every slice's header against the first one and build the volume."""
    shape_yx, dtype = probe(files[0])
    for path in files[1:]:
        other_shape, other_dtype = probe(path)
        if other_shape != shape_yx or other_dtype != dtype:
            raise InputError(
                f"{parsed.url}: slice {path.name} is {other_dtype} {other_shape}; "
                f"expected {dtype} {shape_yx} like {files[0].name} (all slices must have one shape and dtype)"
            )
    resolution = parsed.resolution_override() or (1.0, 1.0, 1.0)
    volume = SliceStackVolume(parsed.url, files, shape_yx, dtype, decode, resolution, scheme)
    volume.source_files = list(files)
    return volume


# -- PNG ------------------------------------------------------------------------------------------------
def _png_probe(path: Path) -> SliceHeader:
    """Shape (y, x) and dtype of a grayscale PNG from its header (pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            image_format = image.format
    except _DECODE_ERRORS as exc:
        raise CorruptDataError(f"cannot decode {path.name}: expected a PNG image ({exc})") from None
    if image_format != "PNG":
        raise CorruptDataError(f"cannot decode {path.name}: expected a PNG image, found {image_format}")
    if mode not in _GRAY_MODES:
        raise InputError(f"{path.name}: expected grayscale (one channel) slices, found a {mode} image")
    return (height, width), _GRAY_MODES[mode]


def _png_decode(path: Path) -> np.ndarray:
    """All pixels of a grayscale PNG as a (y, x) array in native byte order."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except _DECODE_ERRORS as exc:
        raise CorruptDataError(f"cannot decode {path.name}: not a readable PNG image ({exc})") from None
    if mode not in _GRAY_MODES or array.ndim != 2:
        raise InputError(f"{path.name}: expected grayscale (one channel) slices, found a {mode} image")
    return np.ascontiguousarray(array, dtype=_GRAY_MODES[mode])


def open_pngstack(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> SliceStackVolume:
    """Opener for ``pngstack://DIR`` (read-only): the PNG slices of ``DIR`` in natural name order, (z, y, x).

    Raises :class:`NotFoundError` for a missing or PNG-less directory, :class:`CorruptDataError` naming a file
    that is not a decodable PNG, and :class:`InputError` naming a slice that is not grayscale or whose shape
    or dtype differs from the first slice's.
    """
    require_read_only(parsed, mode, "PNG stacks")
    files = _list_slices(parsed, Path(parsed.path).expanduser(), PNG_SUFFIXES, "PNG slices (*.png)")
    return _open_stack(
        parsed, files, _with_url(parsed, _png_probe), _with_url(parsed, _png_decode), "pngstack"
    )


def write_pngstack(directory: Path | str, array_zyx: np.ndarray, *, overwrite: bool = False) -> list[Path]:
    """Write a (z, y, x) uint8/uint16 array as PNG slices ``00000.png``, ``00001.png``, ... in ``directory``.

    Slice ``z`` is ``array_zyx[z]`` with rows = y and columns = x. Each file is written under a temporary name
    and renamed. A directory already holding PNGs is refused unless ``overwrite``, which deletes them first.
    Returns the written paths in z order.
    """
    array = np.asarray(array_zyx)
    if array.ndim != 3:
        raise InputError(
            f"write_pngstack expects a 3-D (z, y, x) array, got {array.ndim}-D shape {array.shape}"
        )
    if array.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise InputError(f"write_pngstack writes uint8 or uint16 slices, got {array.dtype}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [p for p in directory.iterdir() if p.suffix.lower() in PNG_SUFFIXES and p.is_file()]
    if existing and not overwrite:
        raise InputError(
            f"{directory}: already holds {len(existing)} PNG files (pass overwrite=True to replace)"
        )
    for path in existing:
        path.unlink()
    width = max(5, len(str(array.shape[0] - 1)))
    paths = []
    for z in range(array.shape[0]):
        path = directory / f"{z:0{width}d}.png"
        tmp = directory / f".{path.name}.tmp"
        Image.fromarray(np.ascontiguousarray(array[z])).save(tmp, format="PNG")
        tmp.replace(path)
        paths.append(path)
    return paths


# -- TIFF -----------------------------------------------------------------------------------------------
def _tiff_probe(path: Path) -> SliceHeader:
    """Shape (y, x) and dtype of a single-page grayscale TIFF from its header."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise CorruptDataError(f"cannot decode {path.name}: expected a TIFF image, found no pages")
            page = tif.pages.first
            shape, dtype, samples, pages = page.shape, page.dtype, page.samplesperpixel, len(tif.pages)
    except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
        raise CorruptDataError(f"cannot decode {path.name}: expected a TIFF image ({exc})") from None
    if samples > 1 or len(shape) != 2:
        raise InputError(f"{path.name}: expected grayscale (one channel) 2-D slices, found shape {shape}")
    if pages != 1:
        raise InputError(
            f"{path.name}: expected one 2-D slice per file in a TIFF directory, found {pages} pages"
        )
    if dtype is None:
        raise InputError(f"{path.name}: unsupported TIFF sample format")
    return (int(shape[0]), int(shape[1])), np.dtype(dtype).newbyteorder("=")


def _tiff_decode(path: Path) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
        raise CorruptDataError(f"cannot decode {path.name}: not a readable TIFF image ({exc})") from None
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


class TiffVolume(Volume):
    """A multi-page TIFF file, pages = z, (z, y, x); memory-mapped if possible, else decoded page by page."""

    scheme = "tiff"

    def __init__(self, url: str, path: Path, resolution: tuple[float, float, float]) -> None:
        try:
            self._tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
            raise CorruptDataError(f"{url}: not a readable TIFF file ({exc})") from None
        try:
            shape, dtype = self._layout(url)
        except BaseException:
            self._tif.close()
            raise
        super().__init__(
            url,
            shape=shape,
            dtype=dtype,
            resolution=resolution,
            chunks=(min(SLAB_DEPTH, shape[0]), shape[1], shape[2]),
            writable=False,
        )
        self.path = path
        self._lock = threading.Lock()
        self._memmap: np.ndarray | None = None
        self._whole: np.ndarray | None = None
        try:
            self._memmap = tifffile.memmap(path, mode="r", series=0).reshape(shape)
        except (ValueError, OSError):
            self._memmap = None  # compressed or scattered pages: decode per page

    def _layout(self, url: str) -> tuple[tuple[int, int, int], np.dtype]:
        if not self._tif.series or not self._tif.pages:
            raise CorruptDataError(f"{url}: the TIFF file holds no images")
        series = self._tif.series[0]
        self._series = series
        if "S" in series.axes:
            raise InputError(
                f"{url}: expected grayscale (one channel) pages, found axes {series.axes} {series.shape}"
            )
        shape = tuple(int(s) for s in series.shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise InputError(f"{url}: expected a 3-D (z, y, x) image stack, found axes {series.axes} {shape}")
        # One 2-D page per z lets us decode only the slices a box touches.
        pages = list(series.pages)
        self._pages = [p for p in pages if p is not None and tuple(p.shape) == shape[1:]]
        self._per_page = len(pages) == shape[0] and len(self._pages) == shape[0]
        return shape, np.dtype(series.dtype).newbyteorder("=")  # type: ignore[return-value]

    def _read_raw(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (z, y, x; the voxel offset is 0)."""
        (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
        try:
            if self._memmap is not None:
                return np.array(self._memmap[z0:z1, y0:y1, x0:x1], dtype=self.dtype)
            with self._lock:
                if self._per_page:
                    out = np.empty(box.shape, dtype=self.dtype)
                    for i, z in enumerate(range(z0, z1)):
                        out[i] = self._pages[z].asarray()[y0:y1, x0:x1]
                    return out
                if self._whole is None:
                    self._whole = np.asarray(self._series.asarray(), dtype=self.dtype).reshape(self.shape)
                return self._whole[z0:z1, y0:y1, x0:x1].copy()
        except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
            raise CorruptDataError(f"{self.url}: cannot decode {box} ({exc})") from None

    def close(self) -> None:
        """Close the TIFF file (and drop its memory map). Reads fail afterwards."""
        self._memmap = None
        self._whole = None
        self._tif.close()


def open_tiff(parsed: ParsedUrl, mode: str, spec: CreateSpec | None) -> Volume:
    """Opener for ``tiff://PATH`` (read-only): a multi-page TIFF file or a directory of 2-D TIFF slices.

    Raises :class:`NotFoundError` for a missing path or a directory without TIFFs, :class:`CorruptDataError`
    for an undecodable file, and :class:`InputError` for colour images or slices that disagree in shape/dtype.
    """
    require_read_only(parsed, mode, "TIFF volumes")
    path = Path(parsed.path).expanduser()
    resolution = parsed.resolution_override() or (1.0, 1.0, 1.0)
    if path.is_dir():
        files = _list_slices(parsed, path, TIFF_SUFFIXES, "TIFF slices (*.tif, *.tiff)")
        return _open_stack(
            parsed, files, _with_url(parsed, _tiff_probe), _with_url(parsed, _tiff_decode), "tiff"
        )
    if not path.is_file():
        raise NotFoundError(f"{parsed.url}: no such TIFF file or directory {str(path)!r}")
    volume = TiffVolume(parsed.url, path, resolution)
    volume.source_files = [path]
    return volume


# -- shared ---------------------------------------------------------------------------------------------
def _with_url(parsed: ParsedUrl, function: Callable[[Path], T]) -> Callable[[Path], T]:
    """Wrap a probe/decoder so that its errors start with the volume's URL (they already name the file)."""

    def wrapped(path: Path) -> T:
        try:
            return function(path)
        except CorruptDataError as exc:
            raise CorruptDataError(f"{parsed.url}: {exc}") from None
        except InputError as exc:
            raise InputError(f"{parsed.url}: {exc}") from None

    return wrapped
