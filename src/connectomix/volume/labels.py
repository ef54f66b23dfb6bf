"""Small label-volume helpers shared by generators, targets and evaluation."""

from __future__ import annotations

import numpy as np


def label_interfaces(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels with a 6-neighbour of another label (both sides of every interface)."""
    mask = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differ = labels[tuple(lo)] != labels[tuple(hi)]
        mask[tuple(lo)] |= differ
        mask[tuple(hi)] |= differ
    return mask
