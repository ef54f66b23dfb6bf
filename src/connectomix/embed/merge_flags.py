"""Merge flags from an embedding store: segments whose node embeddings form two clusters become split tasks.

:func:`flag_merges` works on a store of any size (CSV-ZIP or Parquet, read as tables that each hold whole
segments) in two streaming passes: the first accumulates the per-dimension mean and standard deviation of
all rows (so every segment is standardised by the statistics of the whole store, as
:func:`~connectomix.embed.evaluate.merge_scores` does for one table), the second scores every segment of at
least ``min_nodes`` nodes by the R² of its 2-means split and keeps those at or above ``threshold``, at most
the ``top_k`` best (a bounded heap, so memory does not grow with the store). The 2-means of a segment is
seeded from ``(seed, segment id)``: its score does not depend on how the store is batched. The tasks are
those of :func:`~connectomix.embed.evaluate.merge_tasks` (point and suggested source / sink: the closest
nodes of the two clusters), ready for :meth:`~connectomix.proofread.queue.TaskQueue.enqueue_many`.

On FIB-25 the R² of true bodies and of synthetic merges overlap heavily (see the README's morphology
section), so these flags rank candidates for a proofreader; they do not decide.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from connectomix.embed.evaluate import MergeScore, merge_tasks, split_r2, two_means
from connectomix.embed.records import Coordinates, EmbeddingTable
from connectomix.errors import InputError
from connectomix.flag.tasks import Task

METHOD = "segclr-2means"


@dataclass(frozen=True)
class MergeFlags:
    """What :func:`flag_merges` found: ``tasks`` (best first), how many segments and rows it read and
    scored, and the per-dimension ``mean`` / ``std`` it standardised with."""

    tasks: list[Task]
    segments_read: int
    segments_scored: int
    rows: int
    mean: np.ndarray
    std: np.ndarray


def embedding_moments(tables: Iterable[EmbeddingTable]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of every row of ``tables``, and the
    row count, accumulated in float64 (shifted by the first row, so large offsets do not cancel)."""
    shift: np.ndarray | None = None
    total = squares = None
    rows = 0
    for table in tables:
        if len(table) == 0:
            continue
        values = table.embeddings.astype(np.float64)
        if shift is None:
            shift = values[0].copy()
            total, squares = np.zeros_like(shift), np.zeros_like(shift)
        centred = values - shift
        total = total + centred.sum(axis=0)
        squares = squares + (centred * centred).sum(axis=0)
        rows += len(values)
    if shift is None or total is None or squares is None:
        raise InputError("the embedding store holds no rows; nothing to flag")
    mean_centred = total / rows
    variance = np.maximum(squares / rows - mean_centred**2, 0.0)
    return shift + mean_centred, np.maximum(np.sqrt(variance), 1e-6), rows


def voxel_table(
    table: EmbeddingTable, coordinates: Coordinates, resolution_nm_xyz: tuple[float, ...]
) -> EmbeddingTable:
    """``table`` with positions in voxels of ``resolution_nm_xyz`` (converted from nm where the store is in
    nm; as stored where it is in voxels of that resolution)."""
    if coordinates.unit == "voxel":
        return table
    return dataclasses.replace(table, positions_xyz=table.positions_xyz / np.asarray(resolution_nm_xyz))


def flag_merges(
    open_tables: Callable[[], Iterator[EmbeddingTable]],
    coordinates: Coordinates,
    *,
    resolution_nm_xyz: tuple[float, float, float] | None = None,
    threshold: float = 0.0,
    top_k: int | None = 100,
    min_nodes: int = 6,
    seed: int = 0,
) -> MergeFlags:
    """Split tasks for the segments of a store whose 2-means R² is at least ``threshold`` (the ``top_k``
    best; None: all), best first. ``open_tables()`` must start a fresh pass over the store each call
    (tables holding whole segments). Task points are voxels of ``resolution_nm_xyz`` (x, y, z, nm); it
    defaults to the store's voxel size and is required where the store's positions are in nm."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be an R² in [0, 1], got {threshold!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 2:
        raise InputError(f"min_nodes must be an integer >= 2, got {min_nodes!r}")
    if resolution_nm_xyz is None:
        if coordinates.unit != "voxel" or coordinates.resolution_nm_xyz is None:
            raise InputError(
                "the store's positions are in nm: give the voxel size of the task points (X,Y,Z nm)"
            )
        resolution_nm_xyz = coordinates.resolution_nm_xyz
    elif coordinates.unit == "voxel" and tuple(resolution_nm_xyz) != coordinates.resolution_nm_xyz:
        raise InputError(
            f"the store's positions are voxels of {coordinates.resolution_nm_xyz} nm; a resolution of "
            f"{tuple(resolution_nm_xyz)} would misplace the task points"
        )
    mean, std, rows = embedding_moments(open_tables())
    heap: list[tuple[float, int, Task]] = []  # (score, -segment id, task): the smallest is dropped first
    chosen: list[Task] = []
    read = scored = 0
    for table in open_tables():
        table = voxel_table(table, coordinates, resolution_nm_xyz)
        scores: list[MergeScore] = []
        bounds = table.run_starts()
        for start, stop in itertools.pairwise(bounds):
            read += 1
            if stop - start < min_nodes:
                continue
            segment_id = int(table.segment_ids[start])
            points = (table.embeddings[start:stop].astype(np.float64) - mean) / std
            labels = two_means(points, np.random.default_rng([seed, 11, segment_id]))
            score = split_r2(points, labels)
            scored += 1
            if score >= threshold and (top_k is None or len(heap) < top_k or score > heap[0][0]):
                scores.append(MergeScore(segment_id, score, np.arange(start, stop), labels))
        tasks = merge_tasks(scores, table, resolution_nm_xyz, threshold=threshold, method=METHOD)
        if top_k is None:
            chosen.extend(tasks)
            continue
        for task in tasks:
            item = (task.score, -int(task.segment_ids[0]), task)
            if len(heap) < top_k:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
    if top_k is not None:
        chosen = [task for _, _, task in heap]
    chosen.sort(key=lambda t: (-t.score, int(t.segment_ids[0])))
    return MergeFlags(chosen, read, scored, rows, mean, std)


__all__ = ["METHOD", "MergeFlags", "embedding_moments", "flag_merges", "voxel_table"]
