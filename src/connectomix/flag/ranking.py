"""Ranking candidate tasks: non-maximum suppression, a per-chunk cap, and the final order.

* **Non-maximum suppression**: tasks are visited by descending score; a task within ``radius`` voxels
  (Euclidean, between task points) of an already kept task of the same kind and the same segment ids is
  dropped, and the kept task's ``evidence["suppressed"]`` counts it. Tasks with equal keys are duplicates
  whatever the radius.
* **Per-chunk cap**: at most ``max_per_chunk`` tasks (the highest scored) per chunk of a grid anchored at the
  global origin; a task belongs to the chunk holding its point.
* **Order**: descending score, ties by key (deterministic).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from connectomix.errors import InputError
from connectomix.flag.tasks import Task


def ranked(tasks: Iterable[Task]) -> list[Task]:
    """Tasks by descending score, ties broken by key."""
    return sorted(tasks, key=lambda t: (-t.score, t.key))


def suppress_duplicates(tasks: Iterable[Task], radius_voxels: float = 16.0) -> list[Task]:
    """Non-maximum suppression (see the module docstring); returns the kept tasks, ranked."""
    if radius_voxels < 0:
        raise InputError(f"suppression radius must be ≥ 0 voxels, got {radius_voxels!r}")
    kept: list[Task] = []
    suppressed: dict[str, int] = defaultdict(int)
    groups: dict[tuple, list[tuple[np.ndarray, str]]] = defaultdict(list)
    seen_keys: set[str] = set()
    r2 = float(radius_voxels) ** 2
    for task in ranked(tasks):
        if task.key in seen_keys:
            continue
        group = groups[(task.kind, task.segment_ids)]
        point = np.asarray(task.point_xyz, dtype=np.float64)
        winner = next((key for p, key in group if float(((p - point) ** 2).sum()) < r2), None)
        if winner is not None:
            suppressed[winner] += 1
            continue
        group.append((point, task.key))
        seen_keys.add(task.key)
        kept.append(task)
    return [
        dataclasses.replace(t, evidence={**t.evidence, "suppressed": suppressed[t.key]})
        if suppressed.get(t.key)
        else t
        for t in kept
    ]


def chunk_of(point_xyz: Sequence[int], chunk_zyx: Sequence[int]) -> tuple[int, int, int]:
    """Index (z, y, x) of the chunk (grid anchored at the global origin) holding a voxel (x, y, z)."""
    x, y, z = (int(v) for v in point_xyz)
    cz, cy, cx = (int(c) for c in chunk_zyx)
    return (z // cz, y // cy, x // cx)


def cap_per_chunk(tasks: Iterable[Task], chunk_zyx: Sequence[int], max_per_chunk: int) -> list[Task]:
    """The ``max_per_chunk`` highest-scored tasks of each chunk, ranked."""
    if max_per_chunk < 1:
        raise InputError(f"max tasks per chunk must be ≥ 1, got {max_per_chunk!r}")
    taken: dict[tuple[int, int, int], int] = defaultdict(int)
    out = []
    for task in ranked(tasks):
        chunk = chunk_of(task.point_xyz, chunk_zyx)
        if taken[chunk] < max_per_chunk:
            taken[chunk] += 1
            out.append(task)
    return out
