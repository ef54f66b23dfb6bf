"""``flag_volume``: a segmentation and its probability/uncertainty map → ranked tasks, chunk-wise.

Two passes over all the chunks of the region (a grid of ``chunk_zyx`` anchored at the global origin, so the
chunks, the per-chunk cap and the keys do not depend on where the region starts):

1. per chunk core: the per-voxel entropy (:mod:`connectomix.flag.entropy`) feeds an exact streaming top-k
   (``np.partition``) and the segment sizes are counted (``fastremap.unique``);
   the threshold is the ``(1 - top_fraction)`` quantile of the entropy over the whole region (ties
   included: every voxel at the threshold is hot; voxels of entropy 0 never are);
2. per chunk, with ``margin_voxels`` of context on every side (read from the volume beyond the region where
   it exists): hot voxels of the core are clustered and classified into candidate tasks
   (:mod:`connectomix.flag.hotspots`);

then non-maximum suppression within ``nms_radius_voxels``, at most ``max_tasks_per_chunk`` per chunk, and
descending score (:mod:`connectomix.flag.ranking`); and a third pass over only the chunks holding kept split
tasks computes their suggested seeds (a distance transform each, too costly for every candidate).

Only one window of each input is in memory at a time, plus the top-k buffer (``top_fraction`` of the
region's voxels), the segment size table and the candidates.

A task whose cluster lies inside one chunk gets the same key whatever the chunk size; a cluster cut by a
chunk border gives one candidate per piece (suppression keeps the best).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import fastremap
import numpy as np

from connectomix.errors import InputError
from connectomix.flag.entropy import TopFraction, entropy_map
from connectomix.flag.hotspots import SEED_PAD, HotspotParams, SizeTable, split_seeds, window_tasks
from connectomix.flag.ranking import cap_per_chunk, ranked, suppress_duplicates
from connectomix.flag.tasks import Task
from connectomix.progress import track
from connectomix.volume.base import Volume
from connectomix.volume.box import Box, check_resolution

ArrayOrVolume = np.ndarray | Volume


class _Source:
    """Reads global (z, y, x) boxes from an array placed at an offset, or from a Volume."""

    def __init__(self, data: Any, offset_zyx: Sequence[int], name: str) -> None:
        self.name = name
        if isinstance(data, Volume):
            self.volume: Volume | None = data
            self.array: np.ndarray | None = None
            self.bounds = data.bounds
        else:
            self.volume = None
            self.array = np.asarray(data)
            if self.array.ndim != 3:
                raise InputError(f"{name} must be a 3-D (z, y, x) array, got shape {self.array.shape}")
            self.bounds = Box.from_shape(self.array.shape, offset_zyx)

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype if self.volume is not None else self.array.dtype  # type: ignore[union-attr]

    def read(self, box: Box) -> np.ndarray:
        if self.volume is not None:
            return self.volume.read(box)
        assert self.array is not None
        return self.array[box.to_slices(self.bounds.start)]


def _check_params(
    top_fraction: float, chunk_zyx: Sequence[int], max_tasks_per_chunk: int, min_cluster_voxels: int
) -> tuple[int, int, int]:
    if not 0 < top_fraction <= 1:
        raise InputError(f"top fraction must be in (0, 1], got {top_fraction!r}")
    chunk = tuple(int(c) for c in chunk_zyx)
    if len(chunk) != 3 or any(c < 1 for c in chunk):
        raise InputError(f"chunk_zyx must be 3 positive integers (z, y, x), got {tuple(chunk_zyx)!r}")
    if max_tasks_per_chunk < 1:
        raise InputError(f"max tasks per chunk must be ≥ 1, got {max_tasks_per_chunk!r}")
    if min_cluster_voxels < 1:
        raise InputError(f"min cluster size must be ≥ 1 voxel, got {min_cluster_voxels!r}")
    return chunk  # type: ignore[return-value]


def flag_volume(
    segmentation: ArrayOrVolume,
    probability: ArrayOrVolume | None = None,
    *,
    uncertainty: ArrayOrVolume | None = None,
    resolution_nm_xyz: Sequence[float] | None = (8.0, 8.0, 8.0),
    top_fraction: float = 0.01,
    chunk_zyx: Sequence[int] = (64, 64, 64),
    max_tasks_per_chunk: int = 10,
    min_cluster_voxels: int = 10,
    offset_zyx: Sequence[int] = (0, 0, 0),
    box: Box | None = None,
    nms_radius_voxels: float = 16.0,
    margin_voxels: int = 12,
    progress: bool = False,
) -> list[Task]:
    """Candidate proofreading tasks, sorted by descending score (see the module docstring).

    Parameters
    ----------
    segmentation
        Segment ids, ``(z, y, x)``, any unsigned or non-negative integer dtype (0 = unassigned): an array or a
        :class:`~connectomix.volume.Volume`.
    probability
        Same shape: uint8 FFN quantisation (0 = never explored) or float in [0, 1] (NaN = never explored).
    uncertainty
        Same shape: float log-variance (NaN = never explored). At least one of the two maps is required.
    resolution_nm_xyz
        Voxel size in nm, (x, y, z), for ``point_nm_xyz``; None = the segmentation volume's own (8 nm for
        arrays).
    top_fraction
        Fraction of the region's voxels that are hot (the highest entropy), e.g. 0.01.
    chunk_zyx
        Chunk of the per-chunk cap and of the processing, (z, y, x) voxels, grid anchored at the origin.
    max_tasks_per_chunk
        At most this many tasks per chunk (the highest scored).
    min_cluster_voxels
        Clusters of fewer hot voxels are dropped.
    offset_zyx
        Global coordinate of the arrays' first voxel (arrays only; volumes carry their ``voxel_offset``).
    box
        Only flag this global (z, y, x) box (default: everything); context is still read around it.
    nms_radius_voxels
        Non-maximum suppression radius (voxels) between tasks of the same kind and ids.
    margin_voxels
        Context read around each chunk (voxels per side); at least ``SEED_PAD``.
    progress
        Show progress bars on a terminal.
    """
    chunk = _check_params(top_fraction, chunk_zyx, max_tasks_per_chunk, min_cluster_voxels)
    seg_source = _Source(segmentation, offset_zyx, "segmentation")
    if seg_source.dtype.kind not in "iu":
        raise InputError(f"segmentation must hold integer ids, got dtype {seg_source.dtype}")
    maps = {
        name: _Source(data, offset_zyx, name)
        for name, data in (("probability", probability), ("uncertainty", uncertainty))
        if data is not None
    }
    if not maps:
        raise InputError("flagging needs a probability map or an uncertainty map (or both)")
    bounds = seg_source.bounds
    for source in maps.values():
        if source.bounds != bounds:
            raise InputError(
                f"{source.name} covers {source.bounds} but the segmentation covers {bounds} (z, y, x)"
            )
    if resolution_nm_xyz is None:
        resolution_nm_xyz = seg_source.volume.resolution_xyz if seg_source.volume is not None else (8, 8, 8)
    res = check_resolution(resolution_nm_xyz, "resolution_nm_xyz")
    region = bounds if box is None else box
    if not bounds.contains(region):
        raise InputError(f"box {region} (z, y, x) lies outside the volume's bounds {bounds}")
    if region.empty:
        return []
    margin = max(int(margin_voxels), SEED_PAD)
    cores = list(region.iter_chunks(chunk, (0, 0, 0), clip=True))

    def read(window: Box) -> tuple[np.ndarray, np.ndarray]:
        seg = seg_source.read(window)
        if seg.dtype.kind == "i" and seg.size and seg.min() < 0:
            raise InputError(f"segmentation ids must be non-negative, found {seg.min()} in {window}")
        arrays = {name: source.read(window) for name, source in maps.items()}
        ent = entropy_map(seg, arrays.get("probability"), arrays.get("uncertainty"))
        return seg.astype(np.uint64, copy=False), ent

    # pass 1: the global threshold and the segment sizes
    top = TopFraction(top_fraction, region.size)
    size_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for core in track(cores, "flag: entropy threshold", enabled=progress):
        seg, ent = read(core)
        top.add(ent)
        ids, counts = fastremap.unique(seg, return_counts=True)
        size_parts.append((np.asarray(ids, np.uint64), np.asarray(counts, np.int64)))
        if len(size_parts) >= 64:
            table = SizeTable.merge(size_parts)
            size_parts = [(table.ids, table.counts)]
    sizes = SizeTable.merge(size_parts)
    params = HotspotParams(
        threshold=top.threshold(),
        min_cluster_voxels=int(min_cluster_voxels),
        resolution_nm_xyz=(float(res[0]), float(res[1]), float(res[2])),
    )

    # pass 2: hot spots per chunk, with context
    candidates: list[Task] = []
    # task key → (score, chunk core, cluster index) of its best candidate, to find its cluster again
    origin: dict[str, tuple[float, Box, int]] = {}
    for core in track(cores, "flag: hot spots", enabled=progress):
        window = core.pad(margin).intersect(bounds)
        seg, ent = read(window)
        for task, index in window_tasks(seg, ent, window, core, sizes, params):
            candidates.append(task)
            if task.key not in origin or task.score > origin[task.key][0]:
                origin[task.key] = (task.score, core, index)

    kept = ranked(
        cap_per_chunk(suppress_duplicates(candidates, nms_radius_voxels), chunk, max_tasks_per_chunk)
    )

    # pass 3: split seeds for the split tasks kept, chunk by chunk
    wanted: dict[Box, dict[int, int]] = {}
    for task in kept:
        if task.kind == "split":
            _, core, index = origin[task.key]
            wanted.setdefault(core, {})[index] = task.segment_ids[0]
    seeds: dict[tuple[Box, int], tuple[list, list]] = {}
    for core, clusters in track(list(wanted.items()), "flag: split seeds", enabled=progress):
        window = core.pad(margin).intersect(bounds)
        seg, ent = read(window)
        for index, found in split_seeds(seg, ent, window, core, params, clusters).items():
            seeds[(core, index)] = found
    out = []
    for task in kept:
        if task.kind == "split":
            sources, sinks = seeds.get(origin[task.key][1:], ([], []))
            task = dataclasses.replace(
                task, evidence={**task.evidence, "sources_xyz": sources, "sinks_xyz": sinks}
            )
        out.append(task)
    return out
