"""A probability map from the disagreement between a segmentation and an independent boundary map.

Flagging needs a per-voxel probability whose uncertain values (near 0.5) mark where a proofreader should
look. A segmenter that keeps no probability map of its own (a ground truth with injected errors, an
imported segmentation, a watershed) can be given one by holding *two opinions* about every voxel and being
uncertain where they disagree:

* the **segmentation's** opinion ``s``: how firmly the voxel lies inside a segment, ``s = min(1, d / 2)``
  with ``d`` the distance (voxels) to the nearest voxel of another label (0 on both sides of every
  interface, 1 from two voxels in), and 0 on unassigned (id 0) voxels;
* the **image's** opinion ``1 - b``: ``b`` a boundary map in [0, 1] (high on membranes), e.g.
  :func:`connectomix.segment.baseline.boundary_from_raw` of the EM image or a learned membrane map.

The map is their average, ``p = 0.5 * (1 - b) + 0.5 * s``, a probability of "inside an object". Where the
two agree (a membrane on a segment boundary, no membrane inside a segment) ``p`` is near 0 or 1; a false
merge puts a membrane inside a segment and a false split a segment boundary where the image shows none,
and both give ``p`` near 0.5, the highest binary entropy, so :func:`~connectomix.flag.flag_volume` ranks
them first. Where the boundary map itself is wrong (dark organelles, faint membranes) the map is uncertain
too: that is the noise the errors compete with.

>>> from connectomix.flag import disagreement_probability, flag_volume
>>> prob = disagreement_probability(seg, boundary)  # doctest: +SKIP
>>> tasks = flag_volume(seg, prob, resolution_nm_xyz=(10, 10, 10))  # doctest: +SKIP
"""

from __future__ import annotations

import edt
import numpy as np

from connectomix.errors import InputError
from connectomix.volume.labels import label_interfaces

#: Distance (voxels) from the nearest interface at which the segmentation's opinion reaches 1.
SATURATION_VOXELS = 2.0


def disagreement_probability(
    segmentation: np.ndarray, boundary: np.ndarray, *, saturation_voxels: float = SATURATION_VOXELS
) -> np.ndarray:
    """``p = 0.5 * (1 - boundary) + 0.5 * min(1, d / saturation_voxels)`` (float32, ``(z, y, x)``).

    ``segmentation``: integer ids ``(z, y, x)`` (0 = unassigned); ``boundary``: float in [0, 1] of the same
    shape, high on membranes; ``d``: each voxel's distance (voxels) to the nearest voxel with a 6-neighbour
    of another label, the segmentation's opinion being 0 on unassigned voxels. See the module docstring.
    """
    seg = np.asarray(segmentation)
    bmap = np.asarray(boundary)
    if seg.ndim != 3 or seg.dtype.kind not in "iu":
        raise InputError(f"segmentation must be a 3-D (z, y, x) integer array, got {seg.dtype} {seg.shape}")
    if bmap.shape != seg.shape or bmap.dtype.kind != "f":
        raise InputError(
            f"boundary must be a float array of the segmentation's shape {seg.shape} (z, y, x), "
            f"got {bmap.dtype} {bmap.shape}"
        )
    if not saturation_voxels > 0:
        raise InputError(f"saturation_voxels must be > 0, got {saturation_voxels}")
    distance = edt.edt(~label_interfaces(seg), black_border=False).astype(np.float32)
    inside = np.clip(distance / np.float32(saturation_voxels), 0.0, 1.0)
    inside[seg == 0] = 0.0
    return (0.5 * (1.0 - np.clip(bmap, 0.0, 1.0)) + 0.5 * inside).astype(np.float32)


__all__ = ["SATURATION_VOXELS", "disagreement_probability"]
