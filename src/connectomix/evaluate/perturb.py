"""Known errors injected into a ground truth: a test bed for flagging and for the simulated proofreader.

:func:`perturb_segmentation` takes a ground-truth label volume ``(z, y, x)`` and returns a segmentation with
exactly ``n_merges`` false merges and ``n_splits`` false splits, each recorded as an :class:`InjectedError`
with its location:

* **merge**: two ground-truth bodies that *touch* (6-connected face contact, at least ``min_contact`` faces;
  with ``max_gap > 0`` also across up to that many unlabelled voxels, which then join the merge) become one
  segment (a fresh id). Location: a voxel of the first body on their contact, the one nearest the contact's
  centre; ``box``: the bounding box of the contact voxels (both sides).
* **split**: one body is cut in two by the plane through its centroid normal to its longest principal
  axis (a cross-section, like a segmenter losing a neurite's continuation); both pieces get fresh ids and
  must each hold at least ``min_size`` voxels. Location: a voxel of the cut (on the first piece, with a face
  neighbour in the second) nearest the centroid; ``box``: the bounding box of the cut voxels (both sides).

Every body is used by at most one error, untouched bodies keep their ground-truth ids, fresh ids start
above the largest ground-truth id, and the choice is random but fixed by ``seed``. Points are voxels, (x, y,
z); boxes are (z, y, x) :class:`~connectomix.volume.Box` es (``bbox_xyz`` gives them as (x, y, z) corners).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import fastremap
import numpy as np
from scipy import ndimage

from connectomix.errors import InputError
from connectomix.volume.box import Box

ErrorKind = Literal["merge", "split"]


@dataclass(frozen=True)
class InjectedError:
    """One injected error: its kind, the ground-truth ids involved, the ids it produced, and where it is."""

    kind: ErrorKind
    gt_ids: tuple[int, ...]  # merge: the two bodies; split: the body
    segment_ids: tuple[int, ...]  # merge: the merged segment; split: the two pieces
    point_xyz: tuple[int, int, int]  # a voxel on the contact (merge) or on the cut (split), (x, y, z)
    box: Box  # (z, y, x) bounding box of the contact or cut voxels

    @property
    def bbox_xyz(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``box`` as ((x0, y0, z0), (x1, y1, z1)), stop exclusive."""
        return self.box.start_xyz, self.box.stop_xyz

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (ids as strings)."""
        return {
            "kind": self.kind,
            "gt_ids": [str(i) for i in self.gt_ids],
            "segment_ids": [str(i) for i in self.segment_ids],
            "point_xyz": list(self.point_xyz),
            "bbox_xyz": [list(self.box.start_xyz), list(self.box.stop_xyz)],
        }


@dataclass
class PerturbedSegmentation:
    """A ground truth with known errors: ``segmentation`` (uint64, (z, y, x)) and the ``injected`` errors."""

    segmentation: np.ndarray
    injected: list[InjectedError] = field(default_factory=list)

    @property
    def merges(self) -> list[InjectedError]:
        return [e for e in self.injected if e.kind == "merge"]

    @property
    def splits(self) -> list[InjectedError]:
        return [e for e in self.injected if e.kind == "split"]

    def points_xyz(self) -> np.ndarray:
        """The errors' locations as an ``(N, 3)`` int64 array of (x, y, z) voxels."""
        return np.array([e.point_xyz for e in self.injected], dtype=np.int64).reshape(-1, 3)


def _check_gt(gt: np.ndarray) -> np.ndarray:
    array = np.asarray(gt)
    if array.ndim != 3:
        raise InputError(f"ground truth must be a 3-D (z, y, x) array, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise InputError(f"ground truth must hold integer ids, got dtype {array.dtype}")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise InputError(f"ground-truth ids must be non-negative, found {array.min()}")
    return array


def _shifted(labels: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    return labels[tuple(index)]


def _bridges(
    labels: np.ndarray, max_gap: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Axis-aligned contacts between different non-zero labels across at most ``max_gap`` zero voxels.

    Yields ``(axis, gap, valid, low, high)``: ``valid[i]`` marks a contact from voxel ``i`` (low end) to
    ``i + gap + 1`` along ``axis`` (high end) with only zeros between; ``low``/``high`` are the labels at the
    two ends (arrays of ``valid``'s shape). ``gap = 0`` are the 6-connected face contacts.
    """
    for axis in range(3):
        n = labels.shape[axis]
        for gap in range(max_gap + 1):
            span = gap + 1
            if n <= span:
                continue
            low = _shifted(labels, axis, 0, n - span)
            high = _shifted(labels, axis, span, n)
            valid = (low != high) & (low != 0) & (high != 0)
            for k in range(1, span):
                valid &= _shifted(labels, axis, k, n - span + k) == 0
            yield axis, gap, valid, low, high


def _contact_pairs(dense: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of dense labels (ascending) in contact (see :func:`_bridges`) and their contact counts."""
    keys = [np.empty(0, np.uint64)]
    for _, _, valid, low, high in _bridges(dense, max_gap):
        a = low[valid].astype(np.uint64)
        b = high[valid].astype(np.uint64)
        keys.append(np.minimum(a, b) << np.uint64(32) | np.maximum(a, b))
    packed, counts = np.unique(np.concatenate(keys), return_counts=True)
    pairs = np.stack([packed >> np.uint64(32), packed & np.uint64(0xFFFFFFFF)], axis=1).astype(np.int64)
    return pairs, counts


def _union_slices(*slices: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(s[k].start for s in slices), max(s[k].stop for s in slices)) for k in range(3))


def _contacts_between(
    local: np.ndarray, first: int, second: int, max_gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contacts between labels ``first`` and ``second`` of ``local``: (end voxels in ``first`` (n, 3), end
    voxels in ``second`` (n, 3), the zero voxels bridged (m, 3)), local (z, y, x)."""
    on_first, on_second, seam = [np.empty((0, 3), np.int64)], [np.empty((0, 3), np.int64)], []
    for axis, gap, valid, low, high in _bridges(local, max_gap):
        for a, b, into_first in ((first, second, True), (second, first, False)):
            ends = np.argwhere(valid & (low == a) & (high == b))
            other = ends.copy()
            other[:, axis] += gap + 1
            on_first.append(ends if into_first else other)
            on_second.append(other if into_first else ends)
            for k in range(1, gap + 1):
                between = ends.copy()
                between[:, axis] += k
                seam.append(between)
    seam_voxels = np.concatenate(seam) if seam else np.empty((0, 3), np.int64)
    return np.concatenate(on_first), np.concatenate(on_second), seam_voxels


def _location(
    on_first: np.ndarray, on_second: np.ndarray, target: np.ndarray, origin: np.ndarray
) -> tuple[tuple[int, int, int], Box]:
    """(point (x, y, z) on the first side nearest ``target``, Box of both sides), global coordinates."""
    mid = (on_first + on_second) / 2.0
    best = int(np.argmin(((mid - target) ** 2).sum(axis=1)))
    both = np.concatenate([on_first, on_second])
    box = Box(both.min(axis=0) + origin, both.max(axis=0) + origin + 1)
    x, y, z = (int(v) for v in (on_first[best] + origin)[::-1])
    return (x, y, z), box


def perturb_segmentation(
    gt: np.ndarray,
    *,
    n_merges: int,
    n_splits: int,
    seed: int,
    min_size: int = 500,
    min_contact: int = 20,
    max_gap: int = 0,
) -> PerturbedSegmentation:
    """Inject ``n_merges`` false merges and ``n_splits`` false splits into ``gt`` (see the module docstring).

    ``min_size``: voxels each merged body and each split piece must have; ``min_contact``: contacts (faces,
    or axis-aligned bridges across unlabelled voxels) two bodies must share to be merged; ``max_gap``: how
    many unlabelled (0) voxels a contact may cross: 0 = the bodies must touch (6-connected faces), ``g > 0``
    for ground truths that keep bodies apart by thin 0 seams (membranes), in which case the bridged seam
    voxels join the merged segment too. Raises InputError when the volume has too few suitable bodies.
    """
    labels = _check_gt(gt)
    if n_merges < 0 or n_splits < 0:
        raise InputError(f"n_merges and n_splits must be ≥ 0, got {n_merges} and {n_splits}")
    if max_gap < 0:
        raise InputError(f"max_gap must be ≥ 0 voxels, got {max_gap}")
    rng = np.random.default_rng(seed)
    dense, mapping = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    dense = np.asarray(dense)
    original = np.zeros(len(mapping) + 1, dtype=np.uint64)
    for orig, new in mapping.items():
        original[int(new)] = int(orig)
    sizes = np.bincount(dense.ravel(), minlength=original.size)
    boxes = ndimage.find_objects(dense)
    out = labels.astype(np.uint64, copy=True)
    next_id = int(labels.max()) + 1 if labels.size else 1
    used: set[int] = set()
    injected: list[InjectedError] = []

    # splits: large bodies in random order, cut across their longest axis
    candidates = [int(i) for i in rng.permutation(np.flatnonzero(sizes >= 2 * min_size)) if i != 0]
    for body in candidates:
        if len(injected) == n_splits:
            break
        found = _cut(dense, body, boxes[body - 1], min_size)
        if found is None:
            continue
        box, positive, negative, (on_first, on_second) = found
        origin = np.array([s.start for s in box], dtype=np.int64)
        region = out[box]
        region[positive] = next_id
        region[negative] = next_id + 1
        centre = np.argwhere(positive | negative).mean(axis=0)
        point, where = _location(on_first, on_second, centre, origin)
        injected.append(InjectedError("split", (int(original[body]),), (next_id, next_id + 1), point, where))
        used.add(body)
        next_id += 2
    if len(injected) < n_splits:
        raise InputError(
            f"only {len(injected)} of {n_splits} splits possible: too few bodies of ≥ {2 * min_size} voxels "
            "whose central cross-section leaves two pieces of ≥ min_size"
        )

    # merges: touching pairs of large bodies in random order, each body used once
    pairs, contacts = _contact_pairs(dense, max_gap)
    ok = (contacts >= min_contact) & (sizes[pairs[:, 0]] >= min_size) & (sizes[pairs[:, 1]] >= min_size)
    pairs = pairs[ok][rng.permutation(int(ok.sum()))]
    merged = 0
    for a, b in pairs.tolist():
        if merged == n_merges:
            break
        if a in used or b in used:
            continue
        box = _union_slices(boxes[a - 1], boxes[b - 1])
        origin = np.array([s.start for s in box], dtype=np.int64)
        local = dense[box]
        on_first, on_second, seam = _contacts_between(local, a, b, max_gap)
        centre = ((on_first + on_second) / 2.0).mean(axis=0)
        point, where = _location(on_first, on_second, centre, origin)
        region = out[box]
        region[(local == a) | (local == b)] = next_id
        region[tuple(seam.T)] = next_id
        gt_pair = (int(original[a]), int(original[b]))
        injected.append(InjectedError("merge", gt_pair, (next_id,), point, where))
        used.update((a, b))
        next_id += 1
        merged += 1
    if merged < n_merges:
        raise InputError(
            f"only {merged} of {n_merges} merges possible: too few disjoint pairs of bodies of ≥ {min_size} "
            f"voxels with ≥ {min_contact} contacts (gaps of ≤ {max_gap} unlabelled voxels)"
        )
    return PerturbedSegmentation(segmentation=out, injected=injected)


def _cut(
    dense: np.ndarray, body: int, box: tuple[slice, ...] | None, min_size: int
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]] | None:
    """(box, first piece, second piece, their face contacts) cutting ``body`` across its longest axis, or
    None when a piece would be smaller than ``min_size`` or the pieces would not touch."""
    if box is None:
        return None
    mask = dense[box] == body
    coords = np.argwhere(mask).astype(np.float64)
    centre = coords.mean(axis=0)
    centred = coords - centre
    normal = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    side = centred @ normal >= 0
    if side.sum() < min_size or (~side).sum() < min_size:
        return None
    positive = np.zeros(mask.shape, dtype=bool)
    negative = np.zeros(mask.shape, dtype=bool)
    ints = coords.astype(np.int64)
    positive[tuple(ints[side].T)] = True
    negative[tuple(ints[~side].T)] = True
    pieces = positive.astype(np.uint8) + 2 * negative.astype(np.uint8)
    on_first, on_second, _ = _contacts_between(pieces, 1, 2, 0)
    if on_first.shape[0] == 0:
        return None
    return box, positive, negative, (on_first, on_second)


def error_interfaces(perturbed: PerturbedSegmentation, gt: np.ndarray) -> np.ndarray:
    """Boolean ``(z, y, x)`` mask of the injected errors' interfaces: for a merge, the voxels of the merged
    segment with a face neighbour in it of another ground-truth label (the two bodies' contact, and any
    bridged seam); for a split, the voxels of its two pieces that face each other."""
    labels = _check_gt(gt)
    seg = perturbed.segmentation
    if seg.shape != labels.shape:
        raise InputError(f"ground truth shape {labels.shape} does not match segmentation shape {seg.shape}")
    merge_map = {s: k for k, e in enumerate(perturbed.merges, start=1) for s in e.segment_ids}
    split_map = {s: k for k, e in enumerate(perturbed.splits, start=1) for s in e.segment_ids}
    gt64 = np.ascontiguousarray(labels.astype(np.uint64, copy=False))
    seg = np.ascontiguousarray(seg)
    merge_err = _index_of(seg, merge_map) if merge_map else None
    split_err = _index_of(seg, split_map) if split_map else None
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo_t, hi_t = tuple(lo), tuple(hi)
        face = np.zeros(mask[lo_t].shape, dtype=bool)
        for err, ids in ((merge_err, gt64), (split_err, seg)):
            if err is None:
                continue
            face |= (err[lo_t] == err[hi_t]) & (err[lo_t] != 0) & (ids[lo_t] != ids[hi_t])
        mask[lo_t] |= face
        mask[hi_t] |= face
    return mask


def _index_of(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """``table[label]`` per voxel, 0 for labels not in ``table``."""
    full = {int(i): table.get(int(i), 0) for i in fastremap.unique(labels)}
    return fastremap.remap(labels, full, preserve_missing_labels=True)
