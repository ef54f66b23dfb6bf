"""Named datasets (``fib25-ts2/raw``, ``pinky40/seg`` …) usable anywhere a volume URL is accepted.

A dataset name is ``DATASET/LAYER``; ``open_volume("fib25-ts2/gt")`` and ``open_volume("dataset://fib25-ts2/gt")``
both land in :func:`open_dataset`. The files are the public data described in ``shared/testdata/README.md``,
found by :func:`data_dir`; each layer is decoded once per process into a read-only numpy array indexed
``(z, y, x)`` and served as an in-memory :class:`~connectomix.volume.base.ArrayVolume` (read-only; import
into zarr with ``cx data import`` to get a writable, chunked copy). Resolutions are nm per voxel, (z, y, x).

Decisions recorded here, checked on the files:

* ``fib25-ts2/gt``: ``groundtruth.h5.gz`` ``stack`` holds supervoxels; ``transforms`` maps supervoxel → body
  (``lut[transforms[:, 0]] = transforms[:, 1]``), giving 526 distinct values including 0 (on 250 voxels).
* ``fib25-ts2/overseg``: ``oversegmented_stack_labels.h5.gz`` has its own ``transforms`` (3,337 supervoxels →
  3,051 ids). 3,051 rows are the identity; the other 286 map a supervoxel onto an *adjacent* supervoxel that
  itself appears in the stack, i.e. it is a supervoxel → body merge table like the ground truth's. It is
  applied, which also reproduces the ``overseg`` of the derived crop file exactly.
* ``pinky40/seg``: crackle returns a Fortran-ordered array of shape ``(sx, sy, sz)`` (its header names the
  axes x, y, z; z is the axis crackle stores slice by slice, i.e. the sectioning axis). Along that axis labels
  change between neighbouring voxels 2–2.5× as often as along the other two (0.097 vs 0.037/0.048), as
  expected for the coarse 40 nm section axis. So the array is transposed to ``(z, y, x)`` (a free, C-ordered
  view of the Fortran array) and given resolution (40, 32, 32) nm. Labels stay ``uint32`` (2,524 values
  including 0): as uint64 the layer would take 1 GiB in memory.
* ``snemi-mini/boundary``: ``train-probabilities.tif`` is uint8 and *bright inside cells* (mean 240 inside
  labels vs 169 on label boundaries), the opposite polarity of gala's ``p1`` boundary maps. It is exposed as a
  boundary probability like the others: ``1 - value / 255`` as float32 (high on boundaries).
* ``snemi-mini/ws``: the fragments are 2-D: no fragment id occurs in two z-slices.
"""

from __future__ import annotations

import functools
import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from connectomix.errors import CorruptDataError, CxError, NotFoundError, UnsupportedError
from connectomix.volume.base import ArrayVolume, VolumeKind

if TYPE_CHECKING:
    from connectomix.volume.url import CreateSpec, ParsedUrl

FloatTriple = tuple[float, float, float]
CHUNKS_ZYX: tuple[int, int, int] = (64, 64, 64)


# -- where the data lives -------------------------------------------------------------------------------
def _has_readme(path: Path) -> bool:
    return (path / "README.md").is_file()


def data_dir() -> Path | None:
    """The real-data folder, or None.

    Order: ``Settings.data_dir`` (env ``CX_DATA_DIR``; used only if it holds ``README.md``, no fallback when
    set), else ``../shared/testdata`` from the working directory, else ``../shared/testdata`` beside the
    repository this module lives in.
    """
    from connectomix.config import get_settings

    configured = get_settings().data_dir
    if configured is not None:
        return configured if _has_readme(configured) else None
    candidates = (
        Path.cwd().parent / "shared" / "testdata",
        Path(__file__).resolve().parents[3].parent / "shared" / "testdata",
    )
    for candidate in candidates:
        if _has_readme(candidate):
            return candidate
    return None


def _require_data_dir() -> Path:
    folder = data_dir()
    if folder is not None:
        return folder
    from connectomix.config import get_settings

    configured = get_settings().data_dir
    if configured is not None:
        raise NotFoundError(
            f"data folder {str(configured)!r} (from CX_DATA_DIR or the settings) has no README.md: "
            "set CX_DATA_DIR to the shared testdata folder"
        )
    raise NotFoundError(
        "dataset files not found: set CX_DATA_DIR to the shared testdata folder "
        "(default: ../shared/testdata beside the project)"
    )


# -- loaders: each returns a (z, y, x) array and, where the file says, its resolution -------------------
class Decoded(NamedTuple):
    """A decoded layer: the (z, y, x) array and the resolution the file declares (nm, z/y/x) or None."""

    array: np.ndarray
    resolution_nm_zyx: FloatTriple | None = None


Loader = Callable[[Path], Decoded]

_TS2 = "em/neuroproof_fib_medulla_ts2"
_CROP = "em/neuroproof_fib_medulla_ts2_crop100.h5"
_FFN = "reference/google_ffn_fib25/sample-training2.npz"
_GALA = "em/gala_fib_medulla"
_PINKY = "em/pinky40_autoseg_512/connectomics.npy.ckl.gz"
_SNEMI = "em/gala_snemi_mini"


def _h5_gz(path: Path):
    """Open a gzip'd HDF5 file from memory (h5py reads file-like objects)."""
    import h5py

    return h5py.File(io.BytesIO(gzip.decompress(path.read_bytes())), "r")


def _apply_transforms(stack: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Map supervoxel ids through an (N, 2) ``(supervoxel, body)`` table; unlisted ids map to themselves."""
    transforms = np.asarray(transforms).astype(np.int64)
    if transforms.ndim != 2 or transforms.shape[1] != 2:
        raise CorruptDataError(f"expected an (N, 2) transforms table, got shape {transforms.shape}")
    top = int(max(stack.max(initial=0), transforms[:, 0].max(initial=0)))
    lut = np.arange(top + 1, dtype=np.uint64)
    lut[transforms[:, 0]] = transforms[:, 1].astype(np.uint64)
    return lut[stack]


def _load_ts2_raw(root: Path) -> Decoded:
    import imageio.v3 as iio

    files = sorted((root / _TS2 / "grayscale_maps").glob("iso.*.png"))
    if not files:
        raise NotFoundError(f"no iso.*.png slices in {root / _TS2 / 'grayscale_maps'}")
    slices = [np.asarray(iio.imread(f)) for f in files]
    if any(s.ndim != 2 or s.dtype != np.uint8 or s.shape != slices[0].shape for s in slices):
        raise CorruptDataError(f"{root / _TS2 / 'grayscale_maps'}: expected equal-sized 2-D uint8 PNG slices")
    return Decoded(np.stack(slices))


def _load_ts2_labels(filename: str) -> Loader:
    def load(root: Path) -> Decoded:
        with _h5_gz(root / _TS2 / filename) as f:
            stack = f["stack"][()]
            transforms = f["transforms"][()]
        return Decoded(_apply_transforms(stack, transforms))

    return load


def _load_ffn(root: Path) -> Decoded:
    # Only the plain array member: the others are pickled and must not be unpickled.
    with np.load(root / _FFN, allow_pickle=False) as npz:
        return Decoded(npz["segmentation"].astype(np.uint64))


def _load_h5(
    relpath: str, dataset: str, dtype: np.dtype | type | None = None, resolution_attr: str = ""
) -> Loader:
    def load(root: Path) -> Decoded:
        import h5py

        with h5py.File(root / relpath, "r") as f:
            array = f[dataset][()]
            attr = f.attrs.get(resolution_attr) if resolution_attr else None
        resolution = tuple(float(v) for v in attr) if attr is not None else None
        if resolution is not None and len(resolution) != 3:
            raise CorruptDataError(
                f"{root / relpath}: attribute {resolution_attr} must have 3 values (z, y, x)"
            )
        return Decoded(array.astype(dtype) if dtype is not None else array, resolution)  # type: ignore[arg-type]

    return load


def _load_pinky(root: Path) -> Decoded:
    import crackle

    array_xyz = crackle.decompress(gzip.decompress((root / _PINKY).read_bytes()))
    return Decoded(np.ascontiguousarray(array_xyz.T))  # (x, y, z) Fortran -> (z, y, x) C, no copy


def _load_tiff(relpath: str, transform: Callable[[np.ndarray], np.ndarray]) -> Loader:
    def load(root: Path) -> Decoded:
        import tifffile

        return Decoded(transform(np.asarray(tifffile.imread(root / relpath))))

    return load


def _as_uint64(array: np.ndarray) -> np.ndarray:
    return array.astype(np.uint64)


def _inverted_probability(array: np.ndarray) -> np.ndarray:
    return (1.0 - array.astype(np.float32) / 255.0).astype(np.float32)


# -- the registry -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """One named layer: a (z, y, x) array decoded from ``files`` (paths relative to the data folder)."""

    description: str
    kind: VolumeKind
    files: tuple[str, ...]
    load: Loader


@dataclass(frozen=True)
class Dataset:
    """A group of aligned layers with one voxel size (nm, z/y/x) and one source."""

    description: str
    resolution_nm_zyx: FloatTriple
    source: str
    layers: dict[str, Layer]


@dataclass(frozen=True)
class DatasetInfo:
    """What ``cx data list`` shows for one ``DATASET/LAYER``."""

    name: str
    description: str
    resolution_nm_zyx: FloatTriple
    available: bool
    source: str


_FIB = "FIB-SEM, Drosophila medulla"
_TS2_SOURCE = "janelia-flyem/neuroproof_examples @ ce839e17 training_sample2; CC BY (Janelia FlyEM)"
_GALA_SOURCE = "janelia-flyem/gala @ db73a1c tests/example-data; BSD-like (HHMI)"


def _gala(split: str) -> Dataset:
    base = f"{_GALA}/{split}"
    return Dataset(
        description=(
            f"gala {split} crop (z, y, x) = (50, 100, 200), {_FIB}, FIB-25 family; "
            "10 nm isotropic assumed (the files carry no voxel size)"
        ),
        resolution_nm_zyx=(10.0, 10.0, 10.0),
        source=_GALA_SOURCE,
        layers={
            "raw": Layer(
                "EM image, uint8", "image", (f"{base}-image.h5",), _load_h5(f"{base}-image.h5", "stack")
            ),
            "gt": Layer(
                "ground-truth neuron ids, uint64 (0 = unlabelled)",
                "segmentation",
                (f"{base}-gt.lzf.h5",),
                _load_h5(f"{base}-gt.lzf.h5", "stack", np.uint64),
            ),
            "boundary": Layer(
                "boundary probability, float32 in [0, 1] (high on membranes)",
                "image",
                (f"{base}-p1.lzf.h5",),
                _load_h5(f"{base}-p1.lzf.h5", "stack", np.float32),
            ),
            "ws": Layer(
                "watershed fragments, uint64",
                "segmentation",
                (f"{base}-ws.lzf.h5",),
                _load_h5(f"{base}-ws.lzf.h5", "stack", np.uint64),
            ),
        },
    )


DATASETS: dict[str, Dataset] = {
    "fib25-ts2": Dataset(
        description=f"FIB-25 training_sample2, 250³ {_FIB}, 10 nm isotropic",
        resolution_nm_zyx=(10.0, 10.0, 10.0),
        source=_TS2_SOURCE,
        layers={
            "raw": Layer(
                "EM image, uint8 (z = sorted PNG name order)",
                "image",
                (f"{_TS2}/grayscale_maps/iso.2600.png",),
                _load_ts2_raw,
            ),
            "gt": Layer(
                "ground-truth bodies (supervoxels mapped through transforms), uint64, 526 ids incl. 0",
                "segmentation",
                (f"{_TS2}/groundtruth.h5.gz",),
                _load_ts2_labels("groundtruth.h5.gz"),
            ),
            "overseg": Layer(
                "NeuroProof over-segmentation mapped through its own transforms, uint64",
                "segmentation",
                (f"{_TS2}/oversegmented_stack_labels.h5.gz",),
                _load_ts2_labels("oversegmented_stack_labels.h5.gz"),
            ),
            "google-ffn": Layer(
                "Google's published FFN segmentation of this volume, uint64 (0 = unsegmented)",
                "segmentation",
                (_FFN,),
                _load_ffn,
            ),
        },
    ),
    "fib25-crop100": Dataset(
        description="crop [75:175]³ of fib25-ts2 (derived file), 10 nm isotropic",
        resolution_nm_zyx=(10.0, 10.0, 10.0),
        source=f"derived from {_TS2_SOURCE}",
        layers={
            "raw": Layer(
                "EM image, uint8", "image", (_CROP,), _load_h5(_CROP, "raw", None, "resolution_nm_zyx")
            ),
            "gt": Layer(
                "ground-truth bodies, uint64",
                "segmentation",
                (_CROP,),
                _load_h5(_CROP, "gt_bodies", np.uint64, "resolution_nm_zyx"),
            ),
            "overseg": Layer(
                "over-segmentation (mapped through its transforms), uint64",
                "segmentation",
                (_CROP,),
                _load_h5(_CROP, "overseg", np.uint64, "resolution_nm_zyx"),
            ),
        },
    ),
    "gala-train": _gala("train"),
    "gala-test": _gala("test"),
    "pinky40": Dataset(
        description=(
            "MICrONS pinky40 mouse cortex, 512³ automatic (not proofread) segmentation, 40×32×32 nm (z, y, x)"
        ),
        resolution_nm_zyx=(40.0, 32.0, 32.0),
        source=(
            "seung-lab/connected-components-3d @ 18a563c benchmarks/; repo LGPL-3.0, no separate data license"
        ),
        layers={
            "seg": Layer(
                "automatic segmentation, uint32 (kept 32-bit: 512 MiB instead of 1 GiB)",
                "segmentation",
                (_PINKY,),
                _load_pinky,
            ),
        },
    ),
    "snemi-mini": Dataset(
        description="SNEMI3D-derived (32, 160, 160) mouse cortex crop, no EM image, 30×6×6 nm (z, y, x)",
        resolution_nm_zyx=(30.0, 6.0, 6.0),
        source=(
            "janelia-flyem/gala @ db73a1c tests/example-data/snemi-mini; BSD-like (HHMI), "
            "SNEMI3D terms may apply"
        ),
        layers={
            "gt": Layer(
                "ground-truth labels, uint64",
                "segmentation",
                (f"{_SNEMI}/train-labels.tif",),
                _load_tiff(f"{_SNEMI}/train-labels.tif", _as_uint64),
            ),
            "ws": Layer(
                "2-D (per z-slice) fragments, uint64",
                "segmentation",
                (f"{_SNEMI}/train-fragments.tif",),
                _load_tiff(f"{_SNEMI}/train-fragments.tif", _as_uint64),
            ),
            "boundary": Layer(
                "boundary probability, float32 in [0, 1] (1 - stored uint8 cell-interior value / 255)",
                "image",
                (f"{_SNEMI}/train-probabilities.tif",),
                _load_tiff(f"{_SNEMI}/train-probabilities.tif", _inverted_probability),
            ),
        },
    ),
}


def dataset_names() -> list[str]:
    """Every ``DATASET/LAYER`` name, in registry order."""
    return [f"{d}/{layer}" for d, ds in DATASETS.items() for layer in ds.layers]


def is_dataset_name(path: str) -> bool:
    """True for ``DATASET/...`` with a registered DATASET (unknown layers too: they get a helpful error)."""
    dataset, sep, rest = path.strip().strip("/").partition("/")
    return bool(sep) and bool(rest) and dataset in DATASETS


def _lookup(name: str) -> tuple[Dataset, Layer]:
    dataset_name, _, layer_name = name.strip().strip("/").partition("/")
    dataset = DATASETS.get(dataset_name)
    if dataset is None:
        raise NotFoundError(
            f"unknown dataset {name!r}: expected one of {', '.join(dataset_names())} (see `cx data list`)"
        )
    layer = dataset.layers.get(layer_name)
    if layer is None:
        raise NotFoundError(
            f"dataset {dataset_name!r} has no layer {layer_name!r}: expected one of "
            f"{', '.join(f'{dataset_name}/{key}' for key in dataset.layers)}"
        )
    return dataset, layer


def list_datasets() -> list[DatasetInfo]:
    """Every named layer with its description, resolution (nm, z/y/x), source and whether its files exist."""
    root = data_dir()
    infos = []
    for dataset_name, dataset in DATASETS.items():
        for layer_name, layer in dataset.layers.items():
            available = root is not None and all((root / f).is_file() for f in layer.files)
            infos.append(
                DatasetInfo(
                    name=f"{dataset_name}/{layer_name}",
                    description=f"{layer.description}; {dataset.description}",
                    resolution_nm_zyx=dataset.resolution_nm_zyx,
                    available=available,
                    source=dataset.source,
                )
            )
    return infos


@functools.lru_cache(maxsize=16)
def _decode(root: str, name: str) -> Decoded:
    """Decode one layer (cached per process, keyed by data folder and name); the array is read-only."""
    _, layer = _lookup(name)
    folder = Path(root)
    for relpath in layer.files:
        if not (folder / relpath).is_file():
            raise NotFoundError(f"dataset {name}: file {relpath} not found in {folder}")
    try:
        decoded = layer.load(folder)
    except CxError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"dataset {name}: cannot decode {', '.join(layer.files)} ({exc})") from None
    array = decoded.array
    if array.ndim != 3:
        raise CorruptDataError(f"dataset {name}: expected a 3-D (z, y, x) array, decoded shape {array.shape}")
    array.setflags(write=False)
    return decoded


def load_array(name: str) -> np.ndarray:
    """The read-only (z, y, x) array of ``DATASET/LAYER`` (decoded once per process)."""
    _lookup(name)
    return _decode(str(_require_data_dir()), name.strip().strip("/")).array


def open_dataset(parsed: ParsedUrl, mode: str, spec: CreateSpec | None = None) -> ArrayVolume:
    """Opener for ``dataset://DATASET/LAYER`` and bare ``DATASET/LAYER``: a read-only in-memory volume.

    The volume is (z, y, x), chunks (64, 64, 64), resolution in nm (z, y, x): the dataset's, the file's own
    where it declares one, or ``?resolution=X,Y,Z`` (x, y, z order) from the URL.
    """
    name = parsed.path.strip().strip("/")
    if mode != "r":
        raise UnsupportedError(
            f"{name}: datasets are read-only (mode 'r'), got mode {mode!r}; "
            "import into zarr with `cx data import`"
        )
    dataset, layer = _lookup(name)
    decoded = _decode(str(_require_data_dir()), name)
    resolution = parsed.resolution_override() or decoded.resolution_nm_zyx or dataset.resolution_nm_zyx
    return ArrayVolume(decoded.array, url=name, resolution=resolution, chunks=CHUNKS_ZYX, kind=layer.kind)
