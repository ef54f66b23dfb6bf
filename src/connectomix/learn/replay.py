"""The replay buffer: earlier ground truth and confident predictions, mixed into every fit so that an
adapter learns the corrections without forgetting what the base model already did well.

:class:`ReplayBuffer` keeps at most ``capacity`` patches by reservoir sampling (Vitter's algorithm R, seeded),
so every patch ever offered has the same chance of being kept, however long the stream of corrections.
Patches come from:

* :func:`ground_truth_patches`: boxes of a volume with validated labels (the base model's training data, or a
  proofread region), every labelled segment a possible centre;
* :func:`confident_patches`: boxes of the model's own segmentation where its probability map is mostly
  certain, with the neighbourhood of every flagged place left unknown: the model's behaviour where it was
  right, kept as a target (a form of self-distillation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from connectomix.errors import InputError
from connectomix.flag.entropy import binary_entropy, probability_as_float
from connectomix.learn.patches import Patch, PatchSource, patch_shape
from connectomix.segment.models import FFNConfig
from connectomix.segment.training import training_radius
from connectomix.volume.box import Box


class ReplayBuffer:
    """At most ``capacity`` patches, a uniform sample of every patch added (reservoir sampling).

    Deterministic given ``seed`` and the order of :meth:`add` calls. :meth:`sample` draws with a caller's
    generator, so a fit's draw depends only on the fit's own seed.
    """

    def __init__(self, capacity: int = 256, *, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InputError(f"replay capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._rng = np.random.default_rng([int(seed), 11])
        self._patches: list[Patch] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self._patches)

    @property
    def patches(self) -> list[Patch]:
        return list(self._patches)

    def add(self, patch: Patch) -> bool:
        """Offer ``patch``; True if it is kept (it may later be replaced by a newer one)."""
        if not isinstance(patch, Patch):
            raise InputError(f"the replay buffer holds Patch objects, got {type(patch).__name__}")
        self.seen += 1
        if len(self._patches) < self.capacity:
            self._patches.append(patch)
            return True
        slot = int(self._rng.integers(0, self.seen))
        if slot < self.capacity:
            self._patches[slot] = patch
            return True
        return False

    def extend(self, patches: Iterable[Patch]) -> int:
        """Offer every patch; returns how many were kept."""
        return sum(self.add(p) for p in patches)

    def sample(self, n: int, rng: np.random.Generator) -> list[Patch]:
        """``n`` patches drawn uniformly with replacement (an empty list when the buffer is empty)."""
        if n < 0:
            raise InputError(f"cannot sample {n} patches")
        if not self._patches or n == 0:
            return []
        picks = rng.integers(0, len(self._patches), size=n)
        return [self._patches[int(i)] for i in picks]

    def counts(self) -> dict[str, int]:
        """Patches held per source."""
        return dict(Counter(p.source for p in self._patches))


def _centre_ids(labels: np.ndarray, config: FFNConfig, min_voxels: int | None) -> list[int]:
    """Segments with at least ``min_voxels`` voxels where an example can be centred (default: 200, or a
    twentieth of that inner region where it is small)."""
    radius = training_radius(config)
    inner = labels[tuple(slice(r, s - r) for r, s in zip(radius, labels.shape, strict=True))]
    if min_voxels is None:
        min_voxels = max(1, min(200, inner.size // 20))
    ids, counts = np.unique(inner, return_counts=True)
    return [int(i) for i, c in zip(ids, counts, strict=True) if i != 0 and c >= min_voxels]


def _shape(shape_zyx: Sequence[int] | None, config: FFNConfig, region: Box) -> tuple[int, ...]:
    """``shape_zyx``, or the default patch shape cut to ``region`` where that is smaller."""
    if shape_zyx is not None:
        return tuple(int(s) for s in shape_zyx)
    return tuple(min(p, r) for p, r in zip(patch_shape(config), region.shape, strict=True))


def _random_boxes(region: Box, shape: Sequence[int], n: int, rng: np.random.Generator) -> list[Box]:
    if any(s > r for s, r in zip(shape, region.shape, strict=True)):
        raise InputError(f"patches of {tuple(shape)} voxels do not fit in the region {region}")
    starts = [
        rng.integers(lo, hi - s + 1, size=n)
        for lo, hi, s in zip(region.start, region.stop, shape, strict=True)
    ]
    return [Box.from_shape(shape, (int(z), int(y), int(x))) for z, y, x in zip(*starts, strict=True)]


def ground_truth_patches(
    raw: np.ndarray,
    labels: np.ndarray,
    config: FFNConfig,
    *,
    n: int,
    seed: int = 0,
    shape_zyx: Sequence[int] | None = None,
    region: Box | None = None,
    min_voxels: int | None = None,
    source: PatchSource = "ground-truth",
) -> list[Patch]:
    """``n`` patches at uniformly random places of ``region`` (default: all) of validated ``labels``.

    ``raw`` and ``labels`` are ``(z, y, x)`` arrays of one shape (offset 0). A segment is a centre id when
    at least ``min_voxels`` of its voxels lie where an example can be centred (default 200, or a
    twentieth of that region in small patches); boxes with none are
    redrawn (at most ``4 n`` draws in all).
    """
    raw, labels = np.asarray(raw), np.asarray(labels)
    if raw.shape != labels.shape or raw.ndim != 3:
        raise InputError(f"raw {raw.shape} and labels {labels.shape} must be 3-D arrays of one shape")
    region = (
        Box.from_shape(labels.shape) if region is None else region.intersect(Box.from_shape(labels.shape))
    )
    shape = _shape(shape_zyx, config, region)
    rng = np.random.default_rng([int(seed), 12])
    patches: list[Patch] = []
    for box in _random_boxes(region, shape, 4 * n, rng):
        if len(patches) == n:
            break
        cut = np.ascontiguousarray(labels[box.to_slices()])
        ids = _centre_ids(cut, config, min_voxels)
        if ids:
            patches.append(
                Patch(np.ascontiguousarray(raw[box.to_slices()]), cut, tuple(ids), box, source=source)
            )
    return patches


def confident_patches(
    raw: np.ndarray,
    segmentation: np.ndarray,
    probability: np.ndarray,
    config: FFNConfig,
    *,
    n: int,
    seed: int = 0,
    avoid_zyx: Sequence[Sequence[int]] | np.ndarray = (),
    avoid_radius: int = 8,
    max_hot_fraction: float = 0.2,
    hot_entropy_bits: float = 0.5,
    min_known_fraction: float = 0.3,
    shape_zyx: Sequence[int] | None = None,
    min_voxels: int | None = None,
) -> list[Patch]:
    """Up to ``n`` patches of the model's own ``segmentation``, keeping only what it was sure of.

    ``probability`` is the FFN's map (uint8 quantised with 0 = never explored, or float in [0, 1] with NaN).
    In each box (drawn at random, at most ``8 n`` draws) the labels are set to 0, which the learner leaves out
    of the loss, within ``avoid_radius`` voxels (per axis) of every ``avoid_zyx`` point (flagged places,
    (z, y, x) voxels of these arrays), where the model may have been wrong. A box qualifies when at most
    ``max_hot_fraction`` of its explored voxels away from the flagged places have a binary entropy above
    ``hot_entropy_bits`` and at least ``min_known_fraction`` of its voxels keep a label. Hot voxels are not
    masked: every object's edge is a shell of them (a tenth of the explored voxels of the synthetic loop's
    region A, measured), and the edges are what the patch teaches.

    Masking voxels, not rejecting boxes: in a region dense with flagged places (FIB-25's region A of the
    loop has one every 18³ voxels) no box of a training example's size is free of them, and rejecting
    such boxes left the replay without a single confident patch, so nothing held the adapter to the base's
    behaviour where the base was right. The default radius, 8 voxels (a cube of 17³ around each place,
    about one FOV move), is what leaves that region something to replay: with 16 the cubes around its 240
    flagged places cover 99.7 % of a median 81³ box and no box keeps 30 % of its labels; with 8 the median
    box keeps 47.5 % (measured on the base model's bf16 segmentation of that region).
    """
    raw, seg = np.asarray(raw), np.asarray(segmentation)
    if not (raw.shape == seg.shape == np.shape(probability)) or raw.ndim != 3:
        raise InputError(
            f"raw {raw.shape}, segmentation {seg.shape} and probability {np.shape(probability)} must be 3-D "
            "arrays of one shape"
        )
    for name, value in (("max_hot_fraction", max_hot_fraction), ("min_known_fraction", min_known_fraction)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must be in [0, 1], got {value}")
    if isinstance(avoid_radius, bool) or not isinstance(avoid_radius, int) or avoid_radius < 0:
        raise InputError(f"avoid_radius must be an integer >= 0 voxels, got {avoid_radius!r}")
    shape = _shape(shape_zyx, config, Box.from_shape(seg.shape))
    avoid = np.asarray(avoid_zyx, dtype=np.int64).reshape(-1, 3)
    rng = np.random.default_rng([int(seed), 13])
    patches: list[Patch] = []
    for box in _random_boxes(Box.from_shape(seg.shape), shape, 8 * n, rng):
        if len(patches) == n:
            break
        avoided = _near_points(box, avoid, avoid_radius)
        prob = probability_as_float(np.asarray(probability[box.to_slices()]))
        explored = np.isfinite(prob) & ~avoided
        if not explored.any():
            continue
        hot_fraction = float((binary_entropy(prob[explored]) > hot_entropy_bits).mean())
        if hot_fraction > max_hot_fraction:
            continue
        cut = np.array(seg[box.to_slices()])
        cut[avoided] = 0
        known = float(np.count_nonzero(cut)) / cut.size
        if known < min_known_fraction:
            continue
        ids = _centre_ids(cut, config, min_voxels)
        if ids:
            patches.append(
                Patch(
                    np.ascontiguousarray(raw[box.to_slices()]),
                    cut,
                    tuple(ids),
                    box,
                    source="confident",
                    info={"hot_fraction": hot_fraction, "known_fraction": known},
                )
            )
    return patches


def _near_points(box: Box, points_zyx: np.ndarray, radius: int) -> np.ndarray:
    """Voxels of ``box`` (bool, its shape) within ``radius`` voxels, per axis, of any of the points."""
    near = np.zeros(box.shape, dtype=bool)
    for point in points_zyx:
        cube = Box.around(point, 2 * radius + 1).intersect(box)
        if cube.size:
            near[cube.to_slices(box.start)] = True
    return near


__all__ = ["ReplayBuffer", "confident_patches", "ground_truth_patches"]
