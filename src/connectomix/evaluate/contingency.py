"""The contingency table of two label volumes, built in one pass over blocks.

Every segmentation metric here (VI, ARAND, split/merge lists) is a function of one table: for each pair
(segment id, ground-truth body id) that occurs together, the number of voxels they share. Building it is
the only step that touches voxels, so it is the only step that must be fast and block-wise.

Per block, both label arrays are walked in memory order and cut into *runs*: maximal stretches where
neither label changes. Label volumes are piecewise constant, so a block of millions of voxels has only a
few hundred thousand runs, and everything after that (dense ranks from ``fastremap.unique``, a combined
pair key, ``np.bincount`` weighted by run length) works on the runs, not the voxels. Per-block tables are
concatenated and reduced the same way; the whole table is never larger than the number of distinct pairs.
The table does not depend on the order in which voxels are visited, so any common memory layout of the
two inputs (C or Fortran order) works without a copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import fastremap
import numpy as np

from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.volume.base import ArrayVolume, Volume
from connectomix.volume.blocks import read_blocks
from connectomix.volume.box import Box

#: Default block (z, y, x) voxels for reading volumes: 4 Mi voxels, about 100 MB of temporaries.
DEFAULT_BLOCK_SHAPE: tuple[int, int, int] = (64, 256, 256)

#: In-memory arrays are processed in flat slabs of this many voxels (in their memory order).
_SLAB_VOXELS = 1 << 24

#: Reduce the pending per-block tables when they hold more pairs than this (bounds memory).
_PENDING_PAIRS = 1 << 23

Labels = Volume | np.ndarray


@dataclass(frozen=True)
class Contingency:
    """Voxel overlap counts of every co-occurring (segment, ground-truth body) pair.

    ``seg_ids``, ``gt_ids`` (uint64) and ``counts`` (int64, voxels) are parallel 1-D arrays sorted by
    (seg id, gt id); each pair appears once. Id 0 is background on both sides and is included like any
    other id. ``n_voxels`` is the number of voxels compared (the sum of ``counts``).
    """

    seg_ids: np.ndarray
    gt_ids: np.ndarray
    counts: np.ndarray
    n_voxels: int

    def __len__(self) -> int:
        return int(self.counts.size)

    def seg_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct segment ids (sorted, uint64) and their sizes in voxels (int64)."""
        return _marginal(self.seg_ids, self.counts)

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ground-truth ids (sorted, uint64) and their sizes in voxels (int64)."""
        return _marginal(self.gt_ids, self.counts)

    def without_gt_background(self) -> Contingency:
        """The table restricted to voxels whose ground-truth id is not 0."""
        keep = self.gt_ids != 0
        counts = self.counts[keep]
        return Contingency(self.seg_ids[keep], self.gt_ids[keep], counts, int(counts.sum()))


def _marginal(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(ids, return_inverse=True)
    sizes = np.bincount(inverse, weights=counts, minlength=unique.size)
    return unique, np.rint(sizes).astype(np.int64)


# -- input checks -------------------------------------------------------------------------------------
def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iu":
        raise InputError(f"{name}: expected integer labels, got {dtype}")


def _check_arrays(seg: np.ndarray, gt: np.ndarray) -> None:
    _check_dtype(seg.dtype, "SEG")
    _check_dtype(gt.dtype, "GT")
    if seg.shape != gt.shape:
        raise InputError(f"SEG shape {seg.shape} does not match GT shape {gt.shape}")
    if seg.size == 0:
        raise InputError(f"SEG and GT are empty (shape {seg.shape}): nothing to evaluate")


def _as_volumes(seg: Labels, gt: Labels) -> tuple[Volume, Volume]:
    """Wrap arrays as volumes placed where the other input lies, and check the pair matches."""
    for value, name in ((seg, "SEG"), (gt, "GT")):
        if not isinstance(value, Volume | np.ndarray):
            raise InputError(f"{name}: expected a Volume or a numpy array, got {type(value).__name__}")
    if isinstance(seg, np.ndarray) and isinstance(gt, Volume):
        seg = ArrayVolume(seg, url="memory://seg", voxel_offset=gt.voxel_offset)
    elif isinstance(gt, np.ndarray) and isinstance(seg, Volume):
        gt = ArrayVolume(gt, url="memory://gt", voxel_offset=seg.voxel_offset)
    assert isinstance(seg, Volume) and isinstance(gt, Volume)
    _check_dtype(seg.dtype, "SEG")
    _check_dtype(gt.dtype, "GT")
    if seg.shape != gt.shape:
        raise InputError(f"SEG shape {seg.shape} does not match GT shape {gt.shape}")
    if seg.bounds != gt.bounds:
        raise InputError(f"SEG bounds {seg.bounds} do not match GT bounds {gt.bounds}")
    if seg.bounds.empty:
        raise InputError(f"SEG and GT are empty (shape {seg.shape}): nothing to evaluate")
    return seg, gt


def _flat_pair(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as 1-D views in one common memory order (copying only when layouts differ)."""
    if not (seg.flags.c_contiguous and gt.flags.c_contiguous):
        if seg.flags.f_contiguous and gt.flags.f_contiguous:
            seg, gt = seg.T, gt.T  # the table does not depend on voxel order
        else:
            seg, gt = np.ascontiguousarray(seg), np.ascontiguousarray(gt)
    return seg.reshape(-1), gt.reshape(-1)


# -- the per-block kernel -----------------------------------------------------------------------------
def _runs(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut two flat label arrays into runs of constant (seg, gt); return their labels and lengths."""
    n = seg.size
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(seg[1:], seg[:-1], out=change[1:])
    gt_change = np.not_equal(gt[1:], gt[:-1])
    np.logical_or(change[1:], gt_change, out=change[1:])
    del gt_change
    starts = np.flatnonzero(change)
    lengths = np.empty(starts.size, dtype=np.int64)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = n - starts[-1]
    return seg[starts], gt[starts], lengths


def _to_uint64(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(f"{name}: labels must be non-negative, found {int(labels.min())}")
    return labels.astype(np.uint64, copy=False)


def _dense(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ranks of ``ids``: ``(inverse, unique)`` with ``unique`` sorted and ``unique[inverse] == ids``."""
    unique, inverse = fastremap.unique(ids, return_inverse=True)
    return inverse.astype(np.int64, copy=False).reshape(-1), unique


def _reduce_pairs(
    seg_ids: np.ndarray, gt_ids: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``weights`` over equal (seg, gt) pairs; the result is sorted by (seg, gt). Ids uint64."""
    if seg_ids.size == 0:
        return seg_ids, gt_ids, weights.astype(np.int64)
    seg_dense, seg_unique = _dense(seg_ids)
    gt_dense, gt_unique = _dense(gt_ids)
    n_seg, n_gt = seg_unique.size, gt_unique.size
    if n_seg * n_gt <= max(4 * seg_ids.size, 1 << 20):
        # Few enough possible pairs: count every (seg rank, gt rank) cell directly.
        sums = np.bincount(seg_dense * n_gt + gt_dense, weights=weights, minlength=n_seg * n_gt)
        key = np.flatnonzero(sums)
        sums = sums[key]
    elif n_seg * n_gt < (1 << 62):
        key_dense, key = _dense(seg_dense * n_gt + gt_dense)
        sums = np.bincount(key_dense, weights=weights, minlength=key.size)
    else:  # more distinct ids than a combined int64 key can hold: sort the pairs instead
        order = np.lexsort((gt_dense, seg_dense))
        s, g = seg_dense[order], gt_dense[order]
        first = np.flatnonzero(np.r_[True, (s[1:] != s[:-1]) | (g[1:] != g[:-1])])
        sums = np.add.reduceat(weights[order].astype(np.int64), first)
        return seg_unique[s[first]], gt_unique[g[first]], sums
    # bincount sums in float64: exact for counts below 2**53 voxels.
    return seg_unique[key // n_gt], gt_unique[key % n_gt], np.rint(sums).astype(np.int64)


def _block_table(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (seg, gt, count) pairs of one block of flat labels (same memory order)."""
    run_seg, run_gt, lengths = _runs(seg, gt)
    return _reduce_pairs(_to_uint64(run_seg, "SEG"), _to_uint64(run_gt, "GT"), lengths)


# -- driving the blocks -------------------------------------------------------------------------------
def _array_blocks(seg: np.ndarray, gt: np.ndarray) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    flat_seg, flat_gt = _flat_pair(seg, gt)
    starts = range(0, flat_seg.size, _SLAB_VOXELS)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in starts:
            yield flat_seg[start : start + _SLAB_VOXELS], flat_gt[start : start + _SLAB_VOXELS]

    return len(starts), blocks()


def _volume_blocks(
    seg: Volume, gt: Volume, block_shape: Sequence[int]
) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    boxes: list[Box] = seg.bounds.split(block_shape)

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Read ahead in background threads so decoding the next block overlaps counting this one.
        pairs = zip(read_blocks(seg, boxes), read_blocks(gt, boxes), strict=True)
        for (_, seg_block), (_, gt_block) in pairs:
            yield _flat_pair(seg_block, gt_block)

    return len(boxes), blocks()


def contingency(
    seg: Labels,
    gt: Labels,
    *,
    block_shape: Sequence[int] | None = None,
    progress: bool = False,
) -> Contingency:
    """Count the voxels of every (segment id, ground-truth id) pair of two label volumes.

    Parameters
    ----------
    seg, gt
        Label volumes of the same shape: :class:`~connectomix.volume.Volume` objects (read block by block,
        so they may be larger than memory) or numpy arrays of integers (any dimensionality when both are
        arrays; 3-D (z, y, x) when paired with a Volume). Signed integers must be non-negative.
    block_shape
        (z, y, x) voxels per block read from a Volume (default :data:`DEFAULT_BLOCK_SHAPE`). When both
        inputs are numpy arrays they are processed in flat slabs of 16 Mi voxels in memory order instead.
    progress
        Show a progress bar over blocks (only when stderr is a terminal).

    Raises
    ------
    InputError
        Shapes or bounds differ, labels are not integers or are negative, or the volumes are empty.
    """
    if isinstance(seg, np.ndarray) and isinstance(gt, np.ndarray):
        _check_arrays(seg, gt)
        n_blocks, blocks = _array_blocks(seg, gt)
    else:
        seg_volume, gt_volume = _as_volumes(seg, gt)
        shape = DEFAULT_BLOCK_SHAPE if block_shape is None else block_shape
        n_blocks, blocks = _volume_blocks(seg_volume, gt_volume, shape)

    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pending_pairs = 0
    n_voxels = 0
    for flat_seg, flat_gt in track(blocks, "contingency table", n_blocks, progress and n_blocks > 1):
        table = _block_table(flat_seg, flat_gt)
        n_voxels += flat_seg.size
        pending.append(table)
        pending_pairs += table[0].size
        if pending_pairs > _PENDING_PAIRS and len(pending) > 1:
            pending = [_reduce_pairs(*_concat(pending))]
            pending_pairs = pending[0][0].size
    seg_ids, gt_ids, counts = _reduce_pairs(*_concat(pending)) if len(pending) > 1 else pending[0]
    return Contingency(seg_ids, gt_ids, counts, n_voxels)


def _concat(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate([t[i] for t in tables]) for i in range(3))
