"""Segmenting volumes of any size block by block, with one id per object across blocks and resume.

Geometry (all boxes global voxels, (z, y, x))
--------------------------------------------
The requested ``box`` (default: the whole volume) is tiled into **cores** of ``block_shape_zyx`` anchored at
``box.start`` (edge cores are smaller). Each core padded by ``overlap_zyx`` on each side and clipped to the
*volume* (not the box: context beyond the box helps) is the block's **subvolume**, the array handed to the
segmenter. Neighbouring subvolumes share ``2 * overlap`` voxels across each core face; reconciliation
(:mod:`connectomix.segment.reconcile`) compares the two blocks' labels there (by default only the central
``overlap`` voxels, where both blocks had at least half the overlap as context) and links ids that are one
object. Every output voxel takes its label from the block whose core contains it.

**Choosing the overlap.** A flood-filling network needs context: it cannot move within half a field of view
of a subvolume's border, so an object reaches a core face only if the subvolume extends well past it. Use
``overlap ≥ fov // 2 + delta`` per axis (24 voxels for Google's FIB-25 model: FOV 33³, deltas 8³;
:attr:`FFNSegmenter.recommended_overlap_zyx` computes it and :func:`segment_volume` warns when the overlap
is smaller). With overlap 0 blocks share no voxels and every object is cut at every block face. The caller
chooses; larger overlaps cost ``((block + 2 * overlap) / block)³`` times the compute.

Segmenters
----------
A :class:`BlockSegmenter` takes a *batch* of subvolumes (the FFN engine advances several canvases in one
forward pass): ``segmenter(raws, boxes, resolution_nm_zyx) -> list[BlockOutput]``. ``boxes`` are the
subvolumes' global boxes (segmenters that do not need them ignore them); ``resolution_nm_zyx`` the voxel size
in nm. A segmenter may carry a ``fingerprint`` string (its parameters and weights) that becomes part of the
run's parameter hash, so a resumed run never mixes two segmenters' blocks. Adapters:
:func:`baseline_segmenter`, :func:`ffn_segmenter`.

Files
-----
``out_url`` (zarr, ``PATH.zarr``)
    The segmentation, uint64, shape ``box.shape``, ``voxel_offset = box.start``, the raw's resolution.
``PATH-probability.zarr``, ``PATH-uncertainty.zarr`` (``PATH`` = ``out`` without ``.zarr``)
    Beside it, when the segmenter returned probability (uint8) or uncertainty (float32) maps: core voxels.
``<out>.work/`` (``workdir``)
    ``ledger.sqlite`` (:mod:`connectomix.segment.ledger`); ``labels.zarr``, the scratch of every block's
    *full padded subvolume* of local labels (uint32, ``1..n`` per block, renumbered in scan order): block
    ``g = (gz, gy, gx)`` of the block grid occupies the slot starting at ``g * (block_shape + 2 * overlap)``,
    one zarr chunk per slot, so a block's write never touches another block's chunk. A label is made globally
    unique by its block: provisional global id ``(block_index << 32) | local_id`` (block_index in C order on
    the grid); reconciliation uses the equivalent dense node numbering ``sum(n_objects of earlier blocks) +
    local_id``. ``probability.zarr`` / ``uncertainty.zarr``: the cores' maps, box-shaped with one chunk per
    core.

Runs, resume and atomicity
--------------------------
1. Blocks not yet recorded as done in the ledger are segmented, ``batch_blocks`` per segmenter call, in C
   order. Each block's scratch is written, then the block is recorded (one SQLite transaction). If the
   segmenter raises, its batch is recorded as failed and :class:`BlockFailedError` (naming the boxes) is
   raised; blocks finished before stay recorded.
2. Reconciliation reads the scratch only, so it is recomputed on every run (its parameters are not part of the
   hash: changing them re-uses the segmentation).
3. The outputs are written under temporary names beside their final paths and renamed into place at the end:
   an existing output is replaced only when everything is written. Then the ledger is marked complete and
   the work directory removed (unless ``keep_workdir``).

A re-run with the same parameters and ``resume=True`` skips finished blocks and gives output identical to an
uninterrupted run (ids depend only on the blocks' results, see :func:`reconcile.resolve_global_ids`). A re-run
with other parameters raises :class:`InputError` (delete the work directory or use a new output path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import fastremap
import numpy as np

from connectomix.errors import BlockFailedError, InputError
from connectomix.progress import track
from connectomix.segment.ledger import LEDGER_NAME, BlockRecord, Ledger
from connectomix.segment.reconcile import GlobalIds, Links, ReconcileParams, match_overlap, neighbour_pairs
from connectomix.segment.reconcile import resolve_global_ids as _resolve_global_ids
from connectomix.volume.base import Volume
from connectomix.volume.blocks import read_blocks
from connectomix.volume.box import Box, FloatTriple, Triple
from connectomix.volume.url import open_volume, parse_url

#: Version of the scratch layout; part of the parameter hash.
SCRATCH_FORMAT = 1
_MAX_LOCAL_ID = (1 << 32) - 1


# -- the segmenter protocol ---------------------------------------------------------------------------------
@dataclass
class BlockOutput:
    """One subvolume's result; arrays have the subvolume's shape, (z, y, x).

    ``segmentation``: integer labels, local ids ``1..n``, 0 = unassigned (any non-negative integer dtype; ids
    need not be consecutive, they are renumbered). ``probability``: optional uint8 map (object probability
    x 255). ``uncertainty``: optional float32 map. ``counters``: numbers summed over blocks (e.g. network
    steps, seeds tried).
    """

    segmentation: np.ndarray
    probability: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    counters: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class BlockSegmenter(Protocol):
    """Segments a batch of subvolumes: ``raws[k]`` is the image of global box ``boxes[k]`` ((z, y, x))."""

    def __call__(
        self, raws: list[np.ndarray], boxes: list[Box], resolution_nm_zyx: FloatTriple
    ) -> list[BlockOutput]: ...


def fingerprint_of(segmenter: Any) -> str:
    """The segmenter's ``fingerprint`` attribute, or its type's qualified name."""
    text = getattr(segmenter, "fingerprint", None)
    if isinstance(text, str) and text:
        return text
    kind = segmenter if callable(segmenter) and hasattr(segmenter, "__qualname__") else type(segmenter)
    return f"{kind.__module__}.{kind.__qualname__}"


# -- adapters -----------------------------------------------------------------------------------------------
class BaselineSegmenter:
    """:func:`~connectomix.segment.baseline.segment_baseline` on each subvolume in turn.

    With a ``boundary_model`` (a :class:`~connectomix.segment.unet.BoundaryUNet`, or the path of one saved by
    :func:`~connectomix.segment.unet.save_boundary_model`), each subvolume's boundary map is predicted by the
    U-Net (:func:`~connectomix.segment.unet.predict_boundary` with ``precision``, and ``patch_zyx`` and
    ``overlap_zyx`` in voxels (z, y, x), None for that function's defaults) instead of computed from the raw
    image; the model's hash and the prediction options then become part of the fingerprint.
    """

    def __init__(
        self,
        params: Any = None,
        boundary_model: Any = None,
        *,
        precision: str = "auto",
        patch_zyx: Sequence[int] | int | None = None,
        overlap_zyx: Sequence[int] | int | None = None,
    ) -> None:
        from connectomix.segment.baseline import BaselineParams

        self.params = params or BaselineParams()
        self.fingerprint = "baseline:" + json.dumps(dataclasses.asdict(self.params), sort_keys=True)
        self.boundary_model = None
        self.predict_options: dict[str, Any] = {}
        if boundary_model is not None:
            from connectomix.segment import unet
            from connectomix.segment.precision import check_precision

            if isinstance(boundary_model, str | Path):
                boundary_model = unet.load_boundary_model(boundary_model)
            if not isinstance(boundary_model, unet.BoundaryUNet):
                raise InputError(
                    "boundary_model must be a BoundaryUNet or a model file path, "
                    f"got {type(boundary_model).__name__}"
                )
            check_precision(precision)
            self.boundary_model = boundary_model
            self.predict_options = {
                "precision": precision,
                "patch_zyx": unet.DEFAULT_PATCH_ZYX if patch_zyx is None else patch_zyx,
                "overlap_zyx": unet.DEFAULT_OVERLAP_ZYX if overlap_zyx is None else overlap_zyx,
            }
            options = json.dumps(
                {k: v if isinstance(v, str | int) else list(v) for k, v in self.predict_options.items()}
            )
            self.fingerprint += f"|boundary-unet:{unet.model_fingerprint(boundary_model)}:{options}"

    def __call__(
        self, raws: list[np.ndarray], boxes: list[Box], resolution_nm_zyx: FloatTriple
    ) -> list[BlockOutput]:
        from connectomix.segment.baseline import segment_baseline

        outputs = []
        for raw in raws:
            boundary = None
            tick = time.perf_counter()
            if self.boundary_model is not None:
                from connectomix.segment.unet import predict_boundary

                boundary = predict_boundary(raw, self.boundary_model, **self.predict_options)
            predict_seconds = time.perf_counter() - tick
            result = segment_baseline(
                raw, boundary=boundary, resolution_nm_zyx=resolution_nm_zyx, params=self.params
            )
            counters = {"seeds": float(result.n_seeds), "segments": float(result.n_segments)}
            counters.update({f"seconds_{k}": float(v) for k, v in result.timings.items()})
            if boundary is not None:
                counters["seconds_boundary"] = counters.get("seconds_boundary", 0.0) + predict_seconds
            outputs.append(BlockOutput(segmentation=result.segmentation, counters=counters))
        return outputs


def baseline_segmenter(
    params: Any = None, boundary_model: Any = None, **predict_options: Any
) -> BaselineSegmenter:
    """A :class:`BlockSegmenter` running the baseline watershed (``params``: :class:`BaselineParams`).

    ``boundary_model``: an optional boundary U-Net (or its file) whose prediction replaces the raw-derived
    boundary map; ``predict_options``: ``precision``, ``patch_zyx``, ``overlap_zyx`` of the prediction.
    """
    return BaselineSegmenter(params, boundary_model, **predict_options)


class FFNSegmenter:
    """Google-style flood filling of each subvolume through ``connectomix.segment.inference``.

    Calls ``segment_subvolumes(raws, model, options)`` once per batch (imported on first use) and converts
    each result's ``segmentation``, ``probability``, ``uncertainty`` and ``counters``. A subvolume smaller
    than the model's field of view on some axis (only possible for a thin edge block of a volume, or a
    volume smaller than one FOV) cannot be flood-filled: it is returned unassigned (all 0) and counted in
    ``counters["subvolumes_too_small"]``.
    """

    def __init__(self, model: Any, options: Any = None) -> None:
        self.model = model
        self.options = options
        self._fingerprint: str | None = None

    @property
    def recommended_overlap_zyx(self) -> Triple | None:
        """``fov // 2 + delta`` per axis (voxels, (z, y, x)) from the model's config, if it has one."""
        config = getattr(self.model, "config", None)
        if config is None:
            return None
        return tuple(  # type: ignore[return-value]
            int(f) // 2 + int(d) for f, d in zip(config.fov_zyx, config.deltas_zyx, strict=True)
        )

    @property
    def fingerprint(self) -> str:
        """Hash of the model's config and weights and of the inference options."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            config = getattr(self.model, "config", None)
            digest.update(repr(config).encode())
            state = getattr(self.model, "state_dict", None)
            if callable(state):
                for name, tensor in sorted(state().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().double().numpy().tobytes())
            digest.update(_describe(self.options).encode())
            self._fingerprint = "ffn:" + digest.hexdigest()[:32]
        return self._fingerprint

    def __call__(
        self, raws: list[np.ndarray], boxes: list[Box], resolution_nm_zyx: FloatTriple
    ) -> list[BlockOutput]:
        from connectomix.segment import inference  # lazily: torch-heavy, and it may not be installed

        for raw, box in zip(raws, boxes, strict=True):
            if raw.dtype != np.uint8:
                raise InputError(f"FFN inference needs uint8 raw images, got {raw.dtype} for {box}")
        config = getattr(self.model, "config", None)
        fov = tuple(config.fov_zyx) if config is not None else (1, 1, 1)
        fits = [all(s >= f for s, f in zip(raw.shape, fov, strict=True)) for raw in raws]
        fitting = [r for r, ok in zip(raws, fits, strict=True) if ok]
        results = iter(inference.segment_subvolumes(fitting, self.model, self.options) if fitting else [])
        outputs = []
        for raw, ok in zip(raws, fits, strict=True):
            if not ok:
                empty = np.zeros(raw.shape, np.uint64)
                outputs.append(BlockOutput(segmentation=empty, counters={"subvolumes_too_small": 1.0}))
                continue
            r = next(results)
            outputs.append(
                BlockOutput(
                    segmentation=np.asarray(r.segmentation),
                    probability=None
                    if getattr(r, "probability", None) is None
                    else np.asarray(r.probability),
                    uncertainty=None
                    if getattr(r, "uncertainty", None) is None
                    else np.asarray(r.uncertainty),
                    counters=_numbers(getattr(r, "counters", None)),
                )
            )
        return outputs


def ffn_segmenter(model: Any, options: Any = None) -> FFNSegmenter:
    """A :class:`BlockSegmenter` running FFN inference with ``model`` and inference ``options``."""
    return FFNSegmenter(model, options)


#: Inference options that never change a result (batching is exact) and so do not enter the fingerprint.
_RESULT_NEUTRAL_OPTIONS = ("batch_size",)


def _describe(options: Any) -> str:
    if options is None:
        return "None"
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        fields = dataclasses.asdict(options)
        for name in _RESULT_NEUTRAL_OPTIONS:
            fields.pop(name, None)
        return json.dumps(fields, sort_keys=True, default=str)
    return repr(options)


def _numbers(counters: Any) -> dict[str, float]:
    """Numeric entries of a mapping or dataclass as floats."""
    if counters is None:
        return {}
    if dataclasses.is_dataclass(counters) and not isinstance(counters, type):
        counters = dataclasses.asdict(counters)
    if not isinstance(counters, Mapping):
        return {}
    return {
        str(k): float(v)
        for k, v in counters.items()
        if isinstance(v, int | float | np.number) and v is not True
    }


# -- geometry -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockLayout:
    """Cores, subvolumes and scratch slots of a block-wise run (global voxels, (z, y, x))."""

    box: Box
    bounds: Box
    block_shape: Triple
    overlap: Triple
    grid_shape: Triple
    cores: list[Box]
    subvolumes: list[Box]

    @property
    def slot_shape(self) -> Triple:
        """Shape of one scratch slot: ``block_shape + 2 * overlap``."""
        return tuple(b + 2 * o for b, o in zip(self.block_shape, self.overlap, strict=True))  # type: ignore[return-value]

    @property
    def scratch_shape(self) -> Triple:
        return tuple(g * s for g, s in zip(self.grid_shape, self.slot_shape, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.cores)

    def trimmed_subvolume(self, index: int, trim: float) -> Box:
        """Subvolume ``index`` less ``floor(trim * overlap)`` (at most ``overlap - 1``) voxels at each inner
        border; borders on the volume's bounds are kept (nothing lies beyond them)."""
        sub = self.subvolumes[index]
        cut = [min(int(trim * o), max(o - 1, 0)) for o in self.overlap]
        start = [a + c if a > lo else a for a, c, lo in zip(sub.start, cut, self.bounds.start, strict=True)]
        stop = [b - c if b < hi else b for b, c, hi in zip(sub.stop, cut, self.bounds.stop, strict=True)]
        return Box(start, [max(a, b) for a, b in zip(start, stop, strict=True)])

    def compared_region(self, i: int, j: int, trim: float = 0.0) -> Box:
        """The voxels blocks ``i`` and ``j`` both segmented, less the trimmed inner borders (see
        :meth:`trimmed_subvolume`): where reconciliation compares their labels."""
        return self.trimmed_subvolume(i, trim).intersect(self.trimmed_subvolume(j, trim))

    def slot_box(self, index: int, region: Box) -> Box:
        """Where ``region`` (global, inside block ``index``'s subvolume) lies in the scratch volume."""
        grid = np.unravel_index(index, self.grid_shape)
        slot_start = tuple(int(g) * s for g, s in zip(grid, self.slot_shape, strict=True))
        sub = self.subvolumes[index]
        return region.translate(tuple(s - a for s, a in zip(slot_start, sub.start, strict=True)))


def plan_blocks(
    bounds: Box, box: Box, block_shape_zyx: Sequence[int] | int, overlap_zyx: Sequence[int] | int
) -> BlockLayout:
    """Tile ``box`` (inside ``bounds``, the volume) into cores and padded subvolumes; validates the inputs."""
    block = _triple(block_shape_zyx, "block_shape_zyx")
    overlap = _triple(overlap_zyx, "overlap_zyx")
    if any(b < 1 for b in block):
        raise InputError(f"block_shape_zyx must be positive on every axis, got {block}")
    if any(o < 0 or o >= b for o, b in zip(overlap, block, strict=True)):
        raise InputError(
            f"overlap_zyx must satisfy 0 ≤ overlap < block shape per axis, got {overlap} for {block}"
        )
    if box.empty:
        raise InputError(f"the box to segment is empty: {box}")
    if not bounds.contains(box):
        raise InputError(f"the box to segment {box} lies outside the volume's bounds {bounds}")
    cores = box.split(block)
    grid = tuple(len(r) for r in box.chunk_indices(block, box.start))
    subvolumes = [core.pad(overlap).intersect(bounds) for core in cores]
    return BlockLayout(box, bounds, block, overlap, grid, cores, subvolumes)  # type: ignore[arg-type]


def _triple(values: Sequence[int] | int, name: str) -> Triple:
    if isinstance(values, int | np.integer):
        return (int(values),) * 3
    items = tuple(values)
    if len(items) != 3:
        raise InputError(f"{name} must have 3 values (z, y, x), got {items!r}")
    return (int(items[0]), int(items[1]), int(items[2]))


# -- paths --------------------------------------------------------------------------------------------------
def output_paths(out_url: str) -> tuple[Path, Path, Path]:
    """(segmentation, probability, uncertainty) paths for ``out_url`` (``zarr://PATH`` or ``PATH.zarr``)."""
    parsed = parse_url(out_url)
    if parsed.scheme != "zarr":
        raise InputError(
            f"block-wise segmentation writes zarr: expected zarr://PATH or PATH.zarr, got {out_url!r}"
        )
    path = Path(parsed.path)
    stem = path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name
    return path, path.with_name(f"{stem}-probability.zarr"), path.with_name(f"{stem}-uncertainty.zarr")


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class BlockwiseResult:
    """What :func:`segment_volume` did. Voxel counts in voxels, times in seconds."""

    out_url: str
    probability_url: str | None
    uncertainty_url: str | None
    n_blocks: int
    #: blocks found finished in the ledger and not segmented again
    n_blocks_skipped: int
    #: sum over blocks of their local object counts
    n_objects_before: int
    #: distinct ids in the output
    n_objects_after: int
    #: links between ids of neighbouring blocks
    n_links: int
    #: segmenters' counters summed over all blocks (resumed ones included)
    counters: dict[str, float]
    seconds: float
    #: seconds per phase: segment, reconcile, write
    timings: dict[str, float] = field(default_factory=dict)


def segment_volume(
    raw: Volume | str,
    out_url: str,
    segmenter: BlockSegmenter | Callable[..., list[BlockOutput]],
    *,
    block_shape_zyx: Sequence[int] | int,
    overlap_zyx: Sequence[int] | int,
    box: Box | None = None,
    batch_blocks: int = 4,
    reconcile: ReconcileParams | None = None,
    workdir: Path | str | None = None,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    keep_workdir: bool = False,
    executor: Executor | None = None,
    retries: int = 0,
) -> BlockwiseResult:
    """Segment ``box`` of ``raw`` block by block and write one consistent segmentation to ``out_url``.

    See the module docstring for geometry, files, reconciliation and resume.

    Parameters
    ----------
    raw
        The EM image (a Volume or URL), uint8 or another integer dtype, (z, y, x).
    out_url
        Output zarr (``zarr://PATH`` or ``PATH.zarr``): uint64 ids, box-shaped, ``voxel_offset = box.start``.
    segmenter
        A :class:`BlockSegmenter` (:func:`baseline_segmenter`, :func:`ffn_segmenter`, or your own).
    block_shape_zyx, overlap_zyx
        Core size and context padding per side, voxels (z, y, x); ``0 ≤ overlap < block``.
    box
        Global voxel box to segment (default: the whole volume); must lie inside the volume.
    batch_blocks
        Subvolumes per segmenter call.
    reconcile
        When ids of neighbouring blocks are linked (:class:`ReconcileParams`; default: ≥ 10 shared voxels and
        intersection over union ≥ 0.5 in the shared region less half the overlap at each inner border).
    workdir
        Scratch and ledger directory; default ``<out path>.work``.
    progress
        Show progress bars on a terminal.
    resume
        Skip blocks a previous run with the same parameters finished; False starts over (the work directory
        is cleared).
    overwrite
        Replace an existing output not produced by this run's ledger.
    keep_workdir
        Keep the work directory after success (a later run then only reconciles and rewrites).
    executor
        Where the segmenter runs: None (here, in order), or any :class:`concurrent.futures.Executor`, such
        as a Dask cluster's (:func:`connectomix.run.executors.open_executor`); the segmenter must then be
        picklable. Output is identical whichever executor ran the blocks.
    retries
        With an executor: how many more times a batch that raised is sent again before the run fails.
    """
    start_time = time.perf_counter()
    volume = open_volume(raw) if isinstance(raw, str) else raw
    if not isinstance(volume, Volume):
        raise InputError(f"raw must be a Volume or a volume URL, got {type(raw).__name__}")
    if volume.dtype.kind not in "iu":
        raise InputError(f"{volume.url}: raw must be uint8 (or another integer dtype), got {volume.dtype}")
    if int(batch_blocks) < 1:
        raise InputError(f"batch_blocks must be at least 1, got {batch_blocks!r}")
    if not callable(segmenter):
        raise InputError(f"segmenter must be callable (a BlockSegmenter), got {type(segmenter).__name__}")
    layout = plan_blocks(volume.bounds, volume.bounds if box is None else box, block_shape_zyx, overlap_zyx)
    reconcile = reconcile or ReconcileParams()
    seg_path, prob_path, unc_path = output_paths(out_url)
    work = Path(workdir) if workdir is not None else seg_path.with_name(seg_path.name + ".work")
    _warn_small_overlap(segmenter, layout.overlap)

    params = {
        "scratch_format": SCRATCH_FORMAT,
        "raw_url": volume.url,
        "raw_shape_zyx": list(volume.shape),
        "raw_dtype": str(volume.dtype),
        "raw_offset_zyx": list(volume.voxel_offset),
        "box": [list(layout.box.start), list(layout.box.stop)],
        "block_shape_zyx": list(layout.block_shape),
        "overlap_zyx": list(layout.overlap),
        "segmenter": fingerprint_of(segmenter),
    }
    ledger_path = work / LEDGER_NAME
    if work.exists() and not ledger_path.exists() and any(work.iterdir()):
        raise InputError(f"{work}: work directory exists but holds no ledger; refusing to use or delete it")
    if not resume and work.exists():
        shutil.rmtree(work)
    if seg_path.exists() and not overwrite and not ledger_path.exists():
        # an existing output is replaced only when asked to, or when this run's own ledger made it
        raise InputError(f"{seg_path}: already exists (pass overwrite=True to replace it)")
    with Ledger(ledger_path, params) as ledger:
        timings: dict[str, float] = {}

        tick = time.perf_counter()
        done = ledger.finished()
        n_skipped = len(done)
        _segment_blocks(
            volume, layout, segmenter, ledger, done, work, int(batch_blocks), progress, executor, int(retries)
        )
        timings["segment"] = time.perf_counter() - tick

        tick = time.perf_counter()
        records = ledger.finished()
        scratch = open_volume(f"zarr://{work / 'labels.zarr'}", "r")
        ids = _reconcile(layout, scratch, records, reconcile, progress)
        timings["reconcile"] = time.perf_counter() - tick

        tick = time.perf_counter()
        written = _write_outputs(
            volume, layout, scratch, ids, work, (seg_path, prob_path, unc_path), progress
        )
        timings["write"] = time.perf_counter() - tick
        ledger.set_status("complete")
        scratch.invalidate_cache()

    counters: dict[str, float] = {}
    for record in records.values():
        for key, value in record.counters.items():
            counters[key] = counters.get(key, 0.0) + value
    if not keep_workdir:
        shutil.rmtree(work, ignore_errors=True)
    return BlockwiseResult(
        out_url=f"zarr://{seg_path}",
        probability_url=f"zarr://{prob_path}" if prob_path in written else None,
        uncertainty_url=f"zarr://{unc_path}" if unc_path in written else None,
        n_blocks=len(layout),
        n_blocks_skipped=n_skipped,
        n_objects_before=sum(r.n_objects for r in records.values()),
        n_objects_after=ids.n_objects,
        n_links=ids.n_links,
        counters=counters,
        seconds=time.perf_counter() - start_time,
        timings=timings,
    )


def _warn_small_overlap(segmenter: Any, overlap: Triple) -> None:
    recommended = getattr(segmenter, "recommended_overlap_zyx", None)
    if recommended is not None and any(o < r for o, r in zip(overlap, recommended, strict=True)):
        warnings.warn(
            f"overlap {overlap} is below the segmenter's recommended context {tuple(recommended)} "
            "(fov // 2 + delta): objects may not be continued across block faces",
            UserWarning,
            stacklevel=3,
        )


def _block_name(layout: BlockLayout, index: int) -> str:
    return f"block {index} (core {layout.cores[index]}, subvolume {layout.subvolumes[index]})"


def _segment_blocks(
    volume: Volume,
    layout: BlockLayout,
    segmenter: Any,
    ledger: Ledger,
    done: Mapping[int, BlockRecord],
    work: Path,
    batch_blocks: int,
    progress: bool,
    executor: Executor | None = None,
    retries: int = 0,
) -> None:
    """Segment every block not in ``done``; write its scratch, then record it in the ledger.

    Without an executor, batches run here one after another. With one, the raw subvolumes are read here
    (with read-ahead) and each batch is sent to the executor with the segmenter; at most twice the
    executor's workers batches are in flight, and results are written and recorded here as they arrive,
    so the scratch and the ledger have one writer. A batch that raises is sent again up to ``retries``
    times (a Dask worker that dies is also retried by Dask itself).
    """
    scratch = open_volume(
        f"zarr://{work / 'labels.zarr'}",
        "a",
        shape=layout.scratch_shape,
        dtype=np.uint32,
        chunks=layout.slot_shape,
        kind="segmentation",
    )
    maps: dict[str, Volume] = {}
    todo = [i for i in range(len(layout)) if i not in done]
    batches = [todo[k : k + batch_blocks] for k in range(0, len(todo), batch_blocks)]
    reader = read_blocks(volume, [layout.subvolumes[i] for i in todo], read_ahead=batch_blocks)
    try:
        if executor is None:
            for batch in track(batches, "segment blocks", len(batches), progress):
                raws = [data for _, data in itertools.islice(reader, len(batch))]
                tick = time.perf_counter()
                try:
                    outputs = _call_segmenter(segmenter, raws, [layout.subvolumes[i] for i in batch], volume)
                except Exception as exc:
                    _fail(layout, ledger, batch, exc)
                seconds = (time.perf_counter() - tick) / len(batch)
                _commit_batch(volume, layout, ledger, scratch, maps, work, batch, outputs, seconds)
        else:
            _segment_on_executor(
                volume, layout, segmenter, ledger, scratch, maps, work, batches, reader, executor, retries
            )
    finally:
        close = getattr(reader, "close", None)  # stop the read-ahead thread if a block failed
        if close is not None:
            close()


def _call_segmenter(
    segmenter: Any, raws: list[np.ndarray], boxes: list[Box], volume: Volume
) -> list[BlockOutput]:
    outputs = list(segmenter(raws, boxes, volume.resolution))
    if len(outputs) != len(raws):
        raise InputError(f"the segmenter returned {len(outputs)} results for {len(raws)} subvolumes")
    return outputs


def _timed_segmenter_call(
    segmenter: Any, raws: list[np.ndarray], boxes: list[Box], resolution: FloatTriple
) -> tuple[list[BlockOutput], float]:
    """What an executor's worker runs: the segmenter on one batch, and its wall seconds."""
    tick = time.perf_counter()
    outputs = list(segmenter(raws, boxes, resolution))
    if len(outputs) != len(raws):
        raise InputError(f"the segmenter returned {len(outputs)} results for {len(raws)} subvolumes")
    return outputs, time.perf_counter() - tick


def _segment_on_executor(
    volume: Volume,
    layout: BlockLayout,
    segmenter: Any,
    ledger: Ledger,
    scratch: Volume,
    maps: dict[str, Volume],
    work: Path,
    batches: list[list[int]],
    reader: Iterator[tuple[Box, np.ndarray]],
    executor: Executor,
    retries: int,
) -> None:
    workers = max(1, int(getattr(executor, "workers", 0) or _executor_threads(executor)))
    limit = 2 * workers
    pending: dict[Future[Any], tuple[list[int], list[np.ndarray], int]] = {}
    queue = list(reversed(batches))
    failed: list[tuple[list[int], BaseException]] = []

    def submit(batch: list[int], raws: list[np.ndarray], attempt: int) -> None:
        boxes = [layout.subvolumes[i] for i in batch]
        future = executor.submit(_timed_segmenter_call, segmenter, raws, boxes, volume.resolution)
        pending[future] = (batch, raws, attempt)

    with _Bar("segment blocks", len(batches), progress=True) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                batch = queue.pop()
                submit(batch, [data for _, data in itertools.islice(reader, len(batch))], 1)
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                batch, raws, attempt = pending.pop(future)
                try:
                    outputs, seconds = future.result()
                except Exception as exc:
                    if attempt <= retries:
                        submit(batch, raws, attempt + 1)
                    else:
                        failed.append((batch, exc))
                        for i in batch:
                            ledger.record_failed(
                                i, layout.cores[i], layout.subvolumes[i], f"{type(exc).__name__}: {exc}"
                            )
                        bar.advance()
                    continue
                _commit_batch(
                    volume, layout, ledger, scratch, maps, work, batch, outputs, seconds / len(batch)
                )
                bar.advance()
    if failed:
        batch, exc = failed[0]
        names = "; ".join(_block_name(layout, i) for b, _ in failed for i in b)
        raise BlockFailedError(
            f"segmenting {names} failed after {retries + 1} attempts: {type(exc).__name__}: {exc}"
        ) from exc


def _executor_threads(executor: Executor) -> int:
    client = getattr(executor, "_client", None)  # distributed.ClientExecutor
    if client is None:
        return 1
    try:
        workers = client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except Exception:  # a scheduler that does not answer: one batch at a time
        return 1


class _Bar:
    """A progress bar advanced out of order (quiet when not on a terminal)."""

    def __init__(self, description: str, total: int, progress: bool) -> None:
        self._iterator = iter(track(range(total), description, total, progress))

    def __enter__(self) -> _Bar:
        return self

    def advance(self) -> None:
        next(self._iterator, None)

    def __exit__(self, *exc: object) -> None:
        for _ in self._iterator:
            pass


def _fail(layout: BlockLayout, ledger: Ledger, batch: list[int], exc: Exception) -> NoReturn:
    names = "; ".join(_block_name(layout, i) for i in batch)
    for i in batch:
        ledger.record_failed(i, layout.cores[i], layout.subvolumes[i], f"{type(exc).__name__}: {exc}")
    raise BlockFailedError(f"segmenting {names} failed: {type(exc).__name__}: {exc}") from exc


def _commit_batch(
    volume: Volume,
    layout: BlockLayout,
    ledger: Ledger,
    scratch: Volume,
    maps: dict[str, Volume],
    work: Path,
    batch: list[int],
    outputs: list[BlockOutput],
    seconds: float,
) -> None:
    """Write each block's scratch and maps, then record it in the ledger (``seconds`` per block)."""
    for i, output in zip(batch, outputs, strict=True):
        try:
            labels, n_objects = _local_labels(output.segmentation, layout.subvolumes[i].shape)
        except InputError as exc:
            raise BlockFailedError(f"{_block_name(layout, i)}: {exc}") from exc
        core = layout.cores[i]
        sub = layout.subvolumes[i]
        scratch.write(layout.slot_box(i, sub), labels)
        for name, array, dtype in (
            ("probability", output.probability, np.uint8),
            ("uncertainty", output.uncertainty, np.float32),
        ):
            if array is None:
                continue
            data = _check_map(array, sub.shape, dtype, name, _block_name(layout, i))
            target = maps.get(name) or _open_map(work / f"{name}.zarr", layout, volume, dtype)
            maps[name] = target
            target.write(core, data[core.to_slices(sub.start)])
        core_ids = fastremap.unique(labels[core.to_slices(sub.start)])
        ledger.record_done(
            i,
            core,
            sub,
            n_objects=n_objects,
            seconds=seconds,
            counters=_numbers(output.counters),
            core_ids=core_ids[core_ids != 0].astype(np.uint32),
        )


def _local_labels(segmentation: np.ndarray, shape: Triple) -> tuple[np.ndarray, int]:
    """Renumber a block's labels to ``1..n`` (0 kept) in scan order, as uint32."""
    seg = np.asarray(segmentation)
    if seg.shape != tuple(shape):
        raise InputError(f"segmentation has shape {seg.shape}, expected the subvolume's {tuple(shape)}")
    if seg.dtype.kind not in "iu":
        raise InputError(f"segmentation must hold integer ids, got dtype {seg.dtype}")
    if seg.dtype.kind == "i" and seg.size and int(seg.min()) < 0:
        raise InputError("segmentation ids must be non-negative")
    labels, mapping = fastremap.renumber(np.array(seg, copy=True), preserve_zero=True)
    n_objects = len(mapping) - (1 if 0 in mapping else 0)
    if n_objects > _MAX_LOCAL_ID:
        raise InputError(f"a block holds {n_objects} objects; at most {_MAX_LOCAL_ID} are supported")
    return labels.astype(np.uint32, copy=False), n_objects


def _check_map(array: np.ndarray, shape: Triple, dtype: type, name: str, block: str) -> np.ndarray:
    data = np.asarray(array)
    if data.shape != tuple(shape):
        raise BlockFailedError(f"{block}: {name} has shape {data.shape}, expected {tuple(shape)}")
    if dtype is np.uint8 and data.dtype != np.uint8:
        raise BlockFailedError(f"{block}: {name} must be uint8 (probability x 255), got {data.dtype}")
    return data.astype(dtype, copy=False)


def _open_map(path: Path, layout: BlockLayout, volume: Volume, dtype: type) -> Volume:
    """The box-shaped scratch map with one chunk per core."""
    return open_volume(
        f"zarr://{path}",
        "a",
        shape=layout.box.shape,
        dtype=dtype,
        resolution=volume.resolution,
        chunks=layout.block_shape,
        voxel_offset=layout.box.start,
        kind="image",
    )


# -- reconciliation and output ------------------------------------------------------------------------------
def _reconcile(
    layout: BlockLayout,
    scratch: Volume,
    records: Mapping[int, BlockRecord],
    params: ReconcileParams,
    progress: bool,
) -> GlobalIds:
    """Compare the labels of every pair of neighbouring blocks in their shared region and union them."""
    missing = [i for i in range(len(layout)) if i not in records]
    if missing:
        raise InputError(f"blocks {missing[:5]} are not recorded as done; cannot reconcile")
    links: list[tuple[int, int, Links]] = []
    pairs = neighbour_pairs(layout.grid_shape)
    for i, j in track(pairs, "reconcile blocks", len(pairs), progress):
        shared = layout.compared_region(i, j, params.border_trim)
        if shared.empty:
            continue
        labels_a = scratch.read(layout.slot_box(i, shared))
        labels_b = scratch.read(layout.slot_box(j, shared))
        links.append((i, j, match_overlap(labels_a, labels_b, params)))
    return _resolve_global_ids(
        [records[i].n_objects for i in range(len(layout))],
        links,
        [records[i].core_ids for i in range(len(layout))],
    )


def _write_outputs(
    volume: Volume,
    layout: BlockLayout,
    scratch: Volume,
    ids: GlobalIds,
    work: Path,
    paths: tuple[Path, Path, Path],
    progress: bool,
) -> list[Path]:
    """Write the segmentation (and maps) under temporary names, then rename them into place."""
    seg_path, prob_path, unc_path = paths
    chunks = tuple(_output_chunk(b) for b in layout.block_shape)
    token = uuid.uuid4().hex[:8]
    staged: list[tuple[Path, Path]] = []
    try:
        tmp = seg_path.with_name(f".{seg_path.name}.tmp-{token}")
        staged.append((tmp, seg_path))
        out = open_volume(
            f"zarr://{tmp}",
            "w-",
            shape=layout.box.shape,
            dtype=np.uint64,
            resolution=volume.resolution,
            chunks=chunks,
            voxel_offset=layout.box.start,
            kind="segmentation",
        )
        out.cached = False
        for i in track(range(len(layout)), "write segmentation", len(layout), progress):
            core = layout.cores[i]
            out.write(core, ids.relabel(i, scratch.read(layout.slot_box(i, core))))
        for name, final in (("probability", prob_path), ("uncertainty", unc_path)):
            source_path = work / f"{name}.zarr"
            if not source_path.exists():
                continue
            source = open_volume(f"zarr://{source_path}", "r")
            tmp = final.with_name(f".{final.name}.tmp-{token}")
            staged.append((tmp, final))
            target = open_volume(f"zarr://{tmp}", "w-", like=source, chunks=chunks)
            target.cached = False
            for core in layout.cores:
                target.write(core, source.read(core))
        # Into place: the maps first, the segmentation last; an old output is moved aside and removed only
        # once its replacement is in place.
        for tmp, final in staged[1:] + staged[:1]:
            old = final.with_name(f".{final.name}.old-{token}")
            if final.exists():
                final.replace(old)
            tmp.replace(final)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return [final for _, final in staged]


def _output_chunk(block: int, largest: int = 64, smallest: int = 16) -> int:
    """An output chunk size: the largest divisor of ``block`` ≤ ``largest``, unless that is tiny."""
    if block <= largest:
        return block
    best = max(d for d in range(1, largest + 1) if block % d == 0)
    return best if best >= smallest else largest
