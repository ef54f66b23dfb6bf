"""Reading segment ids at points, and segment sizes, from a segmentation volume or an edit log.

Points here are ``(N, 3)`` integer voxel indices in (z, y, x) order and global coordinates; callers holding
(x, y, z) positions convert them with :func:`connectomix.volume.box.points_xyz_to_zyx` first. Lookups read
each storage chunk that holds a point once, through the volume's chunk cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.volume.box import Box, Triple, points_zyx_to_xyz


@dataclass(frozen=True)
class LabelSource:
    """Where ids are read: global voxel ``bounds``, storage ``chunks`` anchored at ``origin`` (all z, y, x)
    and ``read(box) -> (z, y, x) array``."""

    bounds: Box
    chunks: Triple
    origin: Triple
    read: Any
    name: str

    @classmethod
    def of(cls, source: Any) -> LabelSource:
        """A :class:`~connectomix.volume.base.Volume` (any integer kind) or an
        :class:`~connectomix.proofread.edits.EditLog` (its current version)."""
        if isinstance(source, LabelSource):
            return source
        grid = getattr(source, "grid", None)
        if grid is not None and hasattr(source, "lineage"):  # an EditLog
            return cls(grid.bounds, tuple(grid.chunks), tuple(grid.offset), source.read, f"log {source.name}")
        if hasattr(source, "bounds") and hasattr(source, "chunks") and hasattr(source, "read"):
            if np.dtype(source.dtype).kind not in "iu":
                raise InputError(f"{source.url}: expected an integer segmentation, found {source.dtype}")
            return cls(source.bounds, source.chunks, source.voxel_offset, source.read, source.url)
        raise InputError(f"expected a segmentation volume or an edit log, got {type(source).__name__}")


def outside_mask(source: Any, points_zyx: np.ndarray) -> np.ndarray:
    """Which points lie outside the source's bounds."""
    bounds = LabelSource.of(source).bounds
    points = np.asarray(points_zyx)
    below, above = points < np.array(bounds.start), points >= np.array(bounds.stop)
    return np.asarray((below | above).any(axis=1), dtype=bool)


def lookup_ids(source: Any, points_zyx: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """The id (uint64) at each (z, y, x) voxel of ``points_zyx`` in a volume or an edit log's current
    version. InputError if a point lies outside (:func:`outside_mask` tells which)."""
    labels = LabelSource.of(source)
    points = np.asarray(points_zyx)
    if points.ndim != 2 or points.shape[1] != 3 or points.dtype.kind not in "iu":
        raise InputError(
            f"expected an (N, 3) integer array of (z, y, x) voxels, got {points.dtype} {points.shape}"
        )
    out = np.zeros(points.shape[0], np.uint64)
    if points.shape[0] == 0:
        return out
    outside = outside_mask(labels, points)
    if outside.any():
        first = points_zyx_to_xyz(points[outside][:1])[0]
        raise InputError(
            f"{int(outside.sum())} of {points.shape[0]} points lie outside {labels.name} "
            f"(bounds x, y, z [{labels.bounds.start_xyz}, {labels.bounds.stop_xyz})), "
            f"e.g. {tuple(int(v) for v in first)} (x, y, z)"
        )
    origin, chunks = np.array(labels.origin), np.array(labels.chunks)
    index = (points - origin) // chunks
    unique, inverse = np.unique(index, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(unique.shape[0] + 1))
    for i in track(range(unique.shape[0]), "reading ids", enabled=progress):
        rows = order[starts[i] : starts[i + 1]]
        box = Box.from_shape(labels.chunks, tuple(origin + unique[i] * chunks)).intersect(labels.bounds)
        data = labels.read(box)
        local = points[rows] - np.array(box.start)
        out[rows] = data[local[:, 0], local[:, 1], local[:, 2]]
    return out


def segment_volumes(volume: Any, *, ids: Any = None, progress: bool = False) -> pd.DataFrame:
    """Size of each segment of a segmentation volume: ``node_id`` (uint64), ``voxels``, ``volume_nm3``.

    Read chunk by chunk (never the whole volume at once); ``ids`` restricts the table (absent ids get 0).
    Background (0) is left out.
    """
    import fastremap

    labels = LabelSource.of(volume)
    resolution = getattr(volume, "resolution", None)
    if resolution is None:
        resolution = volume.grid.resolution
    parts_values, parts_counts = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    boxes = list(labels.bounds.iter_chunks(labels.chunks, labels.origin))
    for box in track(boxes, "segment sizes", enabled=progress):
        values, counts = fastremap.unique(labels.read(box), return_counts=True)
        parts_values.append(values.astype(np.uint64))
        parts_counts.append(counts.astype(np.int64))
    values, inverse = np.unique(np.concatenate(parts_values), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(parts_counts), minlength=values.size)
    keep = values != 0
    table = pd.DataFrame({"node_id": values[keep], "voxels": counts[keep].astype(np.int64)})
    if ids is not None:
        wanted = pd.DataFrame({"node_id": np.asarray(ids, dtype=np.uint64)})
        table = wanted.merge(table, on="node_id", how="left").fillna({"voxels": 0})
        table["voxels"] = table["voxels"].astype(np.int64)
    table["volume_nm3"] = table["voxels"] * float(np.prod(resolution))
    return table


__all__ = ["LabelSource", "lookup_ids", "outside_mask", "segment_volumes"]
