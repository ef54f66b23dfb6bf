"""Training patches for the continual learner: EM image plus a label field that says which voxels belong
together, cut around a completed proofreading task (or drawn from ground truth / confident predictions).

A :class:`Patch` holds, for one box of the volume (global voxels, (z, y, x)):

* ``raw``: the EM image, uint8, ``(z, y, x)``;
* ``labels``: the segment ids of the box as the proofreader left them (the edit log's version after the
  task's edit), uint64, ``(z, y, x)``; 0 is unassigned and is never a training target;
* ``centre_ids``: the segments a training example may start in. For a corrected task these are the segments
  the proofreader looked at, *after* the edit: the merged segment of a merge, the two pieces of a split, the
  confirmed segments of a task answered "correct". Elsewhere in the box the labels are whatever the
  automated segmentation said; they only shape the target (``label == label[centre]``), they are never
  centres, so unchecked segments do not teach the model;
* ``source``: ``correction``, ``ground-truth`` or ``confident``; the task key and edit ids it came from.

:func:`patches_from_tasks` builds correction patches from the queue's completed tasks and the edit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from connectomix.errors import InputError
from connectomix.segment.models import FFNConfig
from connectomix.segment.training import training_radius
from connectomix.volume.box import Box, xyz_to_zyx

PatchSource = Literal["correction", "ground-truth", "confident"]
PATCH_SOURCES: tuple[str, ...] = ("correction", "ground-truth", "confident")
#: Voxels added on each side of the smallest patch (fov + 2·delta) so that training centres can vary.
DEFAULT_MARGIN = 16


@dataclass(frozen=True)
class Patch:
    """One training patch (see the module docstring). ``box`` is global voxels (z, y, x) of ``raw``'s
    shape; ``centre_ids`` are nonzero ids present in ``labels``."""

    raw: np.ndarray
    labels: np.ndarray
    centre_ids: tuple[int, ...]
    box: Box
    source: PatchSource = "correction"
    task_key: str | None = None
    edit_ids: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw, labels = np.asarray(self.raw), np.asarray(self.labels)
        if raw.ndim != 3 or labels.shape != raw.shape:
            raise InputError(
                f"a patch needs 3-D raw and labels of one shape (z, y, x), got {raw.shape} and {labels.shape}"
            )
        if tuple(self.box.shape) != raw.shape:
            raise InputError(f"patch box {self.box} does not have the raw's shape {raw.shape}")
        if labels.dtype.kind not in "iub":
            raise InputError(f"patch labels must be integer segment ids, got dtype {labels.dtype}")
        if self.source not in PATCH_SOURCES:
            raise InputError(f"patch source must be one of {', '.join(PATCH_SOURCES)}, got {self.source!r}")
        ids = tuple(sorted({int(i) for i in self.centre_ids if int(i) != 0}))
        if not ids:
            raise InputError("a patch needs at least one nonzero centre id")
        object.__setattr__(self, "centre_ids", ids)
        object.__setattr__(self, "edit_ids", tuple(int(e) for e in self.edit_ids))

    def centre_mask(self, config: FFNConfig) -> np.ndarray:
        """Voxels of ``centre_ids`` at least ``fov // 2 + delta`` from every face: where an example of
        ``config``'s size may be centred (bool, (z, y, x))."""
        radius = training_radius(config)
        inner = tuple(slice(r, s - r) for r, s in zip(radius, self.labels.shape, strict=True))
        mask = np.zeros(self.labels.shape, dtype=bool)
        if any(sl.start >= sl.stop for sl in inner):
            return mask
        mask[inner] = np.isin(self.labels[inner], np.asarray(self.centre_ids, dtype=self.labels.dtype))
        return mask


def patch_shape(config: FFNConfig, margin: int = DEFAULT_MARGIN) -> tuple[int, int, int]:
    """The default patch size (z, y, x) for ``config``: ``fov + 2·delta + 2·margin`` voxels per axis."""
    if margin < 0:
        raise InputError(f"margin must be >= 0 voxels, got {margin}")
    return tuple(f + 2 * d + 2 * margin for f, d in zip(config.fov_zyx, config.deltas_zyx, strict=True))  # type: ignore[return-value]


def box_inside(centre_zyx: Sequence[int], shape_zyx: Sequence[int], bounds: Box) -> Box:
    """The box of ``shape_zyx`` centred on ``centre_zyx``, shifted (not shrunk) to lie inside ``bounds``;
    InputError when ``bounds`` is smaller than ``shape_zyx``."""
    if any(s > b for s, b in zip(shape_zyx, bounds.shape, strict=True)):
        raise InputError(f"a patch of {tuple(shape_zyx)} voxels does not fit in the volume {bounds}")
    box = Box.around(centre_zyx, shape_zyx)
    shift = []
    for lo, hi, blo, bhi in zip(box.start, box.stop, bounds.start, bounds.stop, strict=True):
        shift.append(blo - lo if lo < blo else (bhi - hi if hi > bhi else 0))
    return box.translate(shift)


def _points_of(task: Any, result: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Every voxel (z, y, x) the task and its answer name: the task's point, merge points, split seeds."""
    points = [task.point_xyz]
    evidence = task.evidence or {}
    for key in ("points_xyz", "sources_xyz", "sinks_xyz"):
        for p in evidence.get(key) or []:
            points.append(tuple(int(v) for v in p))
    for key in ("points_xyz", "sources_xyz", "sinks_xyz"):
        for p in result.get(key) or []:
            points.append(tuple(int(v) for v in p))
    return [tuple(int(v) for v in xyz_to_zyx(p)) for p in points]  # type: ignore[misc]


def patches_from_tasks(
    completed: Iterable[Any],
    labels: Any,
    raw: Any,
    config: FFNConfig,
    *,
    shape_zyx: Sequence[int] | None = None,
    region: Box | None = None,
) -> list[Patch]:
    """Correction patches from completed queue tasks (:class:`~connectomix.proofread.queue.QueuedTask`).

    ``labels`` is the corrected segmentation: an :class:`~connectomix.proofread.edits.EditLog` (its current
    version is read) or anything with ``read(box)`` over global (z, y, x) voxels, or a ``(z, y, x)`` array
    (offset 0); ``raw`` the EM image likewise (a volume or an array of the same shape). Each task gives one
    patch of ``shape_zyx`` (default :func:`patch_shape`, cut to the region where it is smaller)
    centred on its point, kept inside ``region``
    (default: the whole volume). Centre ids are the current segments at the voxels the task names (its point,
    its merge points or split seeds, and those of the answer), plus the ids its edit created. Tasks that name
    no segment after the edit (an unassigned region left unassigned) give no patch. Edit ids are the
    result's ``edit_id``. For an unassigned-region task the segments around
    the region (its ``neighbour_ids``, where they still exist) are centre ids too.
    """
    read_labels, bounds = _reader(labels, "labels")
    read_raw, raw_bounds = _reader(raw, "raw")
    if not raw_bounds.contains(bounds):
        raise InputError(f"raw bounds {raw_bounds} do not cover the labels' bounds {bounds}")
    region = bounds if region is None else region.intersect(bounds)
    if shape_zyx is None:  # the default size, cut to the region where that is smaller
        shape = tuple(min(p, r) for p, r in zip(patch_shape(config), region.shape, strict=True))
    else:
        shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise InputError(f"shape_zyx must be 3 positive voxel counts, got {shape_zyx}")
    radius = training_radius(config)
    if any(s < 2 * r + 1 for s, r in zip(shape, radius, strict=True)):
        raise InputError(
            f"patch shape {shape} is smaller than one training example ({tuple(2 * r + 1 for r in radius)})"
        )
    patches: list[Patch] = []
    for queued in completed:
        if getattr(queued, "state", "done") != "done":
            continue
        task = queued.task
        result = dict(queued.result or {})
        centre = tuple(int(v) for v in xyz_to_zyx(task.point_xyz))
        if not region.contains_point(centre):
            continue
        box = box_inside(centre, shape, region)
        cut = np.asarray(read_labels(box))
        ids = {int(cut[tuple(p - s for p, s in zip(pt, box.start, strict=True))])
               for pt in _points_of(task, result) if box.contains_point(pt)}  # fmt: skip
        ids |= {int(i) for i in result.get("new_ids") or []}
        # an unassigned region's neighbours: the proofreader judged the gap between them
        ids |= {int(i) for i in (task.evidence or {}).get("neighbour_ids") or []}
        ids &= {int(i) for i in np.unique(cut)}
        ids.discard(0)
        if not ids:
            continue
        edit_ids = (int(result["edit_id"]),) if result.get("edit_id") is not None else ()
        patches.append(
            Patch(
                raw=np.asarray(read_raw(box)),
                labels=cut,
                centre_ids=tuple(sorted(ids)),
                box=box,
                source="correction",
                task_key=queued.key,
                edit_ids=edit_ids,
                info={"kind": task.kind, "action": result.get("action", "correct")},
            )
        )
    return patches


def _reader(data: Any, what: str) -> tuple[Any, Box]:
    """A ``read(box)`` over global voxels and the data's bounds, for an edit log, a volume or an array."""
    if hasattr(data, "grid") and hasattr(data, "read"):  # an EditLog
        return data.read, data.grid.bounds
    if hasattr(data, "read") and hasattr(data, "bounds"):  # a Volume
        return data.read, data.bounds
    array = np.asarray(data)
    if array.ndim != 3:
        raise InputError(f"{what} must be a 3-D (z, y, x) array, a volume or an edit log, got {array.shape}")
    bounds = Box.from_shape(array.shape)
    return (lambda box: array[box.to_slices()]), bounds


__all__ = ["PATCH_SOURCES", "Patch", "PatchSource", "box_inside", "patch_shape", "patches_from_tasks"]
