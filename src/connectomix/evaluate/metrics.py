"""Segmentation scores from a contingency table: VI (split/merge), ARAND, and lists of split and merge errors.

Conventions (the same as scikit-image 0.26, so numbers can be compared with published ones):

- **VI** is in bits (log base 2). ``vi_split = H(SEG | GT)`` (over-segmentation: one body cut into several
  segments) and ``vi_merge = H(GT | SEG)`` (under-segmentation: several bodies in one segment), computed over
  *all* voxels, background 0 included on both sides, exactly what
  ``skimage.metrics.variation_of_information(gt, seg)`` returns as ``(split, merge)``. With
  ``ignore_gt_background=True`` voxels whose ground truth is 0 are left out (as skimage does with
  ``ignore_labels=(0,)``): unlabelled ground truth then costs nothing.
- **ARAND** (adapted Rand error, SNEMI3D) ignores voxels whose *ground truth* is 0; segment 0 is scored as
  an ordinary segment (unsegmented voxels inside a body count as one big segment), exactly
  ``skimage.metrics.adapted_rand_error(gt, seg, ignore_labels=(0,))[0]``.
  ``arand_precision`` and ``arand_recall`` use the standard (SNEMI3D/CREMI) meaning: precision falls with
  merges, recall with splits. scikit-image returns the two the other way round
  (scikit-image issue #6485): its ``[1]`` is our recall and its ``[2]`` our precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectomix.errors import InputError
from connectomix.evaluate.contingency import Contingency, Labels, _marginal, contingency

#: Default overlap (voxels) a segment and a body must share for the pair to count as a split or merge.
DEFAULT_MIN_OVERLAP = 100

#: (seg or gt id, voxels) pairs listing the parts of a split body or the bodies of a merging segment.
Overlaps = list[tuple[int, int]]


# -- VI -----------------------------------------------------------------------------------------------
def variation_of_information(
    table: Contingency, *, ignore_gt_background: bool = False
) -> tuple[float, float]:
    """``(vi_split, vi_merge) = (H(SEG|GT), H(GT|SEG))`` in bits.

    ``ignore_gt_background`` leaves out voxels whose ground-truth id is 0. Returns ``(nan, nan)`` when no
    voxel is left to compare.
    """
    if ignore_gt_background:
        table = table.without_gt_background()
    counts = table.counts.astype(np.float64)
    total = counts.sum()
    if total == 0:
        return math.nan, math.nan
    gt_size = _pair_marginal(table.gt_ids, counts)
    seg_size = _pair_marginal(table.seg_ids, counts)
    p = counts / total
    # H(SEG|GT) = -sum p_ij log2(n_ij / n_i), n_i the body size; H(GT|SEG) likewise with the segment size.
    split = -float(np.dot(p, np.log2(counts / gt_size)))
    merge = -float(np.dot(p, np.log2(counts / seg_size)))
    return max(0.0, split), max(0.0, merge)  # clamp -0.0 and rounding below zero


def _pair_marginal(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For every table row, the total count of its id (the row's marginal)."""
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse, weights=counts)[inverse]


# -- ARAND --------------------------------------------------------------------------------------------
def adapted_rand(table: Contingency) -> tuple[float, float, float]:
    """``(arand, precision, recall)`` of the adapted Rand index, ground-truth background ignored.

    With ``n_ij`` the voxels of segment j in body i (gt != 0 only), ``a_i`` the body sizes and ``b_j`` the
    segment sizes within gt != 0, each term counts ordered voxel pairs:
    ``P = sum n_ij^2 - N``, ``A = sum a_i^2 - N``, ``B = sum b_j^2 - N``; precision ``P / B``, recall
    ``P / A``, ``arand = 1 - 2P / (A + B)``. Where a denominator is 0 (every body a single voxel, or no
    voxel with gt != 0) the value is nan, as in scikit-image.
    """
    table = table.without_gt_background()
    counts = table.counts.astype(np.float64)
    _, gt_sizes = _marginal(table.gt_ids, table.counts)
    _, seg_sizes = _marginal(table.seg_ids, table.counts)
    a = gt_sizes.astype(np.float64)
    b = seg_sizes.astype(np.float64)
    sum_p = counts @ counts - counts.sum()
    sum_a = a @ a - a.sum()
    sum_b = b @ b - b.sum()
    precision = _ratio(sum_p, sum_b)
    recall = _ratio(sum_p, sum_a)
    arand = 1.0 - _ratio(sum_p, 0.5 * sum_a + 0.5 * sum_b)
    return arand, precision, recall


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


# -- error lists --------------------------------------------------------------------------------------
def split_bodies(table: Contingency, min_overlap: int = DEFAULT_MIN_OVERLAP) -> dict[int, Overlaps]:
    """Ground-truth bodies (id != 0) that overlap two or more nonzero segments by ``min_overlap`` voxels each.

    Returns ``{gt_id: [(seg_id, voxels), ...]}``, parts largest first. Overlaps below ``min_overlap`` are
    ignored: one-voxel contacts along boundaries are label noise, not errors.
    """
    return _grouped(table.gt_ids, table.seg_ids, table.counts, min_overlap)


def merging_segments(table: Contingency, min_overlap: int = DEFAULT_MIN_OVERLAP) -> dict[int, Overlaps]:
    """Segments (id != 0) that overlap two or more nonzero bodies by ``min_overlap`` voxels each.

    Returns ``{seg_id: [(gt_id, voxels), ...]}``, bodies largest first.
    """
    return _grouped(table.seg_ids, table.gt_ids, table.counts, min_overlap)


def _grouped(
    keys: np.ndarray, values: np.ndarray, counts: np.ndarray, min_overlap: int
) -> dict[int, Overlaps]:
    if min_overlap < 1:
        raise InputError(f"min_overlap must be at least 1 voxel, got {min_overlap}")
    keep = (keys != 0) & (values != 0) & (counts >= min_overlap)
    keys, values, counts = keys[keep], values[keep], counts[keep]
    order = np.lexsort((-counts, keys))  # by key, then largest overlap first
    keys, values, counts = keys[order], values[order], counts[order]
    unique, first, sizes = np.unique(keys, return_index=True, return_counts=True)
    multi = sizes >= 2
    result: dict[int, Overlaps] = {}
    for key, start, size in zip(
        unique[multi].tolist(), first[multi].tolist(), sizes[multi].tolist(), strict=True
    ):
        stop = start + size
        result[key] = list(zip(values[start:stop].tolist(), counts[start:stop].tolist(), strict=True))
    return result


# -- the entry point ----------------------------------------------------------------------------------
@dataclass
class Scores:
    """All scores of one segmentation against one ground truth.

    VI values in bits; ARAND values in [0, 1]; voxel counts in voxels. ``n_seg_ids`` and ``n_gt_ids``
    count distinct nonzero ids. ``split_bodies`` maps a gt id to the segments it is split into and
    ``merging_segments`` a segment id to the bodies it merges, as (id, voxels) pairs largest first.
    """

    vi_split: float
    vi_merge: float
    vi: float
    arand: float
    arand_precision: float
    arand_recall: float
    n_split_bodies: int
    n_merging_segments: int
    n_voxels: int
    n_seg_ids: int
    n_gt_ids: int
    min_overlap: int
    split_bodies: dict[int, Overlaps] = field(default_factory=dict, repr=False)
    merging_segments: dict[int, Overlaps] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ids as strings (they exceed 2^53), nan as None."""
        return {
            "vi_split": _json_float(self.vi_split),
            "vi_merge": _json_float(self.vi_merge),
            "vi": _json_float(self.vi),
            "arand": _json_float(self.arand),
            "arand_precision": _json_float(self.arand_precision),
            "arand_recall": _json_float(self.arand_recall),
            "n_split_bodies": self.n_split_bodies,
            "n_merging_segments": self.n_merging_segments,
            "n_voxels": self.n_voxels,
            "n_seg_ids": self.n_seg_ids,
            "n_gt_ids": self.n_gt_ids,
            "min_overlap": self.min_overlap,
            "split_bodies": _json_overlaps(self.split_bodies, "seg_id"),
            "merging_segments": _json_overlaps(self.merging_segments, "gt_id"),
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _json_overlaps(groups: dict[int, Overlaps], id_name: str) -> dict[str, list[dict[str, Any]]]:
    return {
        str(key): [{id_name: str(other), "voxels": int(voxels)} for other, voxels in parts]
        for key, parts in groups.items()
    }


def scores_from_table(table: Contingency, *, min_overlap: int = DEFAULT_MIN_OVERLAP) -> Scores:
    """Every score of :class:`Scores` from a contingency table (no voxels are read)."""
    vi_split, vi_merge = variation_of_information(table)
    arand, precision, recall = adapted_rand(table)
    splits = split_bodies(table, min_overlap)
    merges = merging_segments(table, min_overlap)
    seg_unique = np.unique(table.seg_ids)
    gt_unique = np.unique(table.gt_ids)
    return Scores(
        vi_split=vi_split,
        vi_merge=vi_merge,
        vi=vi_split + vi_merge,
        arand=arand,
        arand_precision=precision,
        arand_recall=recall,
        n_split_bodies=len(splits),
        n_merging_segments=len(merges),
        n_voxels=table.n_voxels,
        n_seg_ids=int(np.count_nonzero(seg_unique)),
        n_gt_ids=int(np.count_nonzero(gt_unique)),
        min_overlap=min_overlap,
        split_bodies=splits,
        merging_segments=merges,
    )


def evaluate(
    seg: Labels,
    gt: Labels,
    *,
    min_overlap: int = DEFAULT_MIN_OVERLAP,
    block_shape: Sequence[int] | None = None,
    progress: bool = False,
) -> Scores:
    """Score segmentation ``seg`` against ground truth ``gt`` (VI in bits, ARAND, split and merge lists).

    ``seg`` and ``gt`` are Volumes or integer numpy arrays of one shape ((z, y, x) for volumes); see
    :func:`~connectomix.evaluate.contingency.contingency` for ``block_shape`` and ``progress``, and
    :func:`split_bodies` for ``min_overlap`` (voxels).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[[1, 1, 2, 2]]], dtype=np.uint64)
    >>> evaluate(gt, gt, min_overlap=1).vi
    0.0
    """
    if min_overlap < 1:
        raise InputError(f"min_overlap must be at least 1 voxel, got {min_overlap}")
    table = contingency(seg, gt, block_shape=block_shape, progress=progress)
    return scores_from_table(table, min_overlap=min_overlap)
