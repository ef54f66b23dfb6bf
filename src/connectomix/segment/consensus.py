"""Two-run consensus of FFN segmentations (Google's "split consensus").

Google runs inference twice, once with the seeds in forward and once in reverse order
(``seed_policy="reverse:peaks"``), and intersects the two results: a voxel keeps a label only as part of
an (id in run 1, id in run 2) pair, so a merge made by one run alone is split by the other.
"""

from __future__ import annotations

import cc3d
import fastremap
import numpy as np

from connectomix.errors import InputError


def consensus(
    forward: np.ndarray,
    reverse: np.ndarray,
    *,
    min_size: int = 0,
    require_both: bool = False,
    split_connected: bool = False,
) -> np.ndarray:
    """The split consensus of two segmentations of one (z, y, x) volume, as uint64 (0 = unassigned).

    Every distinct pair ``(forward id, reverse id)`` of overlapping voxels becomes one segment, exactly as
    Google's ``split_segmentation_by_intersection``: a pair ``(a, 0)`` (segmented only by the forward run)
    is kept as a segment of its own, ``(0, b)`` becomes 0. With ``require_both`` a voxel is kept only where
    both runs segmented it. With ``split_connected`` each piece is further split into its 6-connected
    components. Pieces smaller than ``min_size`` voxels become 0. New ids are consecutive from 1 in
    (z, y, x) scan order of each piece's first voxel.

    >>> a = np.array([[[1, 1, 2, 2]]], dtype=np.uint64)
    >>> b = np.array([[[5, 6, 6, 0]]], dtype=np.uint64)
    >>> consensus(a, b).tolist()
    [[[1, 2, 3, 4]]]
    >>> consensus(a, b, require_both=True).tolist()
    [[[1, 2, 3, 0]]]
    """
    if forward.shape != reverse.shape:
        raise InputError(
            f"consensus needs two segmentations of one shape, got {forward.shape} and {reverse.shape}"
        )
    if forward.ndim != 3:
        raise InputError(f"segmentations must be 3-D (z, y, x), got shape {forward.shape}")
    if min_size < 0:
        raise InputError(f"min_size must be >= 0 voxels, got {min_size}")
    a, _ = fastremap.renumber(np.asarray(forward), preserve_zero=True, in_place=False)
    b, _ = fastremap.renumber(np.asarray(reverse), preserve_zero=True, in_place=False)
    a = a.astype(np.uint64, copy=False)
    b = b.astype(np.uint64, copy=False)
    pairs = a * (np.uint64(b.max()) + np.uint64(1)) + b
    pairs[a == 0] = 0
    if require_both:
        pairs[b == 0] = 0
    if split_connected:
        pairs = cc3d.connected_components(pairs, connectivity=6, out_dtype=np.uint64)
    if min_size > 0:
        ids, sizes = fastremap.unique(pairs, return_counts=True)
        small = ids[(sizes < min_size) & (ids > 0)]
        if len(small):
            pairs = fastremap.mask(pairs, small.tolist(), in_place=True)
    out, _ = fastremap.renumber(pairs, preserve_zero=True, in_place=True)
    return out.astype(np.uint64, copy=False)
