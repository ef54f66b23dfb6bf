"""Training flood-filling networks: centre sampling, examples, recurrent FOV moves, resumable checkpoints.

Everything follows Google's FFN training (``compute_partitions.py``, ``build_coordinates.py``,
``train.py``), re-written. Volumes are numpy arrays indexed ``(z, y, x)`` in voxels; tensors are
``(batch, channel, z, y, x)``.

1. **Centres** (:func:`sample_training_centres`): for every candidate voxel, the fraction of voxels of its
   own label in the cube of radius ``fov // 2 + delta`` around it; candidates are binned by that fraction and
   every non-empty bin is sampled equally often, so hard places (thin processes, boundaries) are not swamped
   by the insides of big objects.
2. **Examples** (:func:`make_example`): an ``fov + 2·delta`` cutout of image and labels around a centre,
   randomly flipped and axis-swapped; target ``label == label[centre] and label != 0``, softened to
   0.95 / 0.05.
3. **Recurrent moves** (:class:`_Stream`): the seed canvas over the example starts at ``logit(0.05)`` with
   ``logit(0.95)`` at the centre voxel; the FOV at offset 0 is run, its predicted logits overwrite the canvas
   (detached), and the faces of the ±delta cube around the FOV centre propose moves where their maximum is
   ≥ ``logit(0.9)`` (Google's ``FaceMaxMovementPolicy``), exactly as inference does. Every FOV is one training
   sample with its own loss; a batch holds one FOV from each of ``batch_size`` independent example streams.
4. **Optimisation** (:func:`train`): sigmoid cross-entropy (mean over voxels), or
   :func:`~connectomix.segment.inception.heteroscedastic_bce` for models with an uncertainty head; SGD,
   lr 1e-3, batch 4, gradients clipped to ±0.7 (Google's FIB-25 settings) by default.

Randomness is counter-based: example ``k`` draws its centre and augmentation from
``numpy.random.default_rng([seed, …, k])``, so a checkpoint only needs the example counter, the in-flight
streams (their seed canvases and move queues), the optimiser state and the step to continue bit-identically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastremap
import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional

from connectomix.checkpoints import (
    load_optimizer_state,
    read_checkpoint,
    resume_source,
    write_checkpoint,
)
from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.segment.models import ConvStack3D, FFNConfig, FFNModel, load_state, save_model
from connectomix.segment.precision import Precision, resolve_precision

log = logging.getLogger(__name__)

IntTriple = tuple[int, int, int]

#: Google's ``compute_partitions`` thresholds on the same-label fraction (13 bins: < 0.025 … ≥ 0.9).
DEFAULT_BINS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Soft targets and seed values (FIB-25 settings).
TARGET_ON, TARGET_OFF = 0.95, 0.05
SEED_INIT, SEED_PAD, MOVE_THRESHOLD = 0.95, 0.05, 0.9
#: The candidate grid is coarsened until it holds at most this many voxels (see :func:`compute_partitions`).
MAX_CANDIDATES = 1 << 21
CHECKPOINT_FORMAT = "connectomix-ffn-train/1"


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------------------------------------------------
# centre sampling
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partitions:
    """Candidate training centres with their same-label fraction and fraction bin.

    ``coords_zyx`` is ``(m, 3)`` int64 voxel positions; ``fraction`` ``(m,)`` float32 in (0, 1]; ``bin``
    ``(m,)`` int64 in ``0 … len(bins)`` (``numpy.digitize``: bin ``i`` holds
    ``bins[i-1] ≤ fraction < bins[i]``).
    """

    coords_zyx: np.ndarray
    fraction: np.ndarray
    bin: np.ndarray
    radius_zyx: IntTriple
    stride: int


def training_radius(config: FFNConfig) -> IntTriple:
    """Neighbourhood radius and example half-size ``fov // 2 + delta`` per axis (z, y, x), in voxels."""
    return tuple(f // 2 + d for f, d in zip(config.fov_zyx, config.deltas_zyx, strict=True))  # type: ignore[return-value]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3-D (z, y, x) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must be an integer array (segment ids), got dtype {labels.dtype}")
    return labels


def compute_partitions(
    labels: np.ndarray,
    radius_zyx: Sequence[int],
    *,
    bins: Sequence[float] = DEFAULT_BINS,
    stride: int | None = None,
) -> Partitions:
    """Same-label fractions of candidate centres (Google's ``compute_partitions``, on a grid).

    Candidates are the nonzero-label voxels at least ``radius_zyx`` from every border, on a grid of ``stride``
    voxels (default: the smallest stride that leaves at most :data:`MAX_CANDIDATES` grid points; 1 for
    volumes up to ~128³ valid voxels, 2 for FIB-25's 250³). A candidate's fraction is the number of voxels of
    its label in the ``(2r + 1)``-cube around it divided by the cube's volume.

    Cost: per label, one comparison and one cumulative sum over the label's bounding box grown by ``r`` (the
    box sum along z), then box sums along y and x on arrays already sub-sampled by the stride; in all
    ``O(Σ_labels bbox volume)``, not ``O(labels × volume)`` as in Google's per-label uniform filter over the
    whole volume. FIB-25's 250³ with 526 bodies takes a few seconds.
    """
    labels = _check_labels(labels)
    radius = np.asarray([int(r) for r in radius_zyx], dtype=np.int64)
    shape = np.asarray(labels.shape, dtype=np.int64)
    if radius.shape != (3,) or np.any(radius < 0):
        raise InputError(f"radius_zyx must be 3 non-negative sizes, got {tuple(radius_zyx)}")
    valid = shape - 2 * radius
    if np.any(valid < 1):
        raise InputError(
            f"volume {tuple(labels.shape)} is too small for training centres {tuple(radius)} voxels from "
            f"every border (needs more than {tuple(2 * radius)} per axis)"
        )
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size == 0 or np.any(np.diff(edges) <= 0):
        raise InputError(f"bins must be increasing fractions, got {tuple(bins)}")
    if stride is None:
        stride = 1
        while np.prod(-(-valid // stride)) > MAX_CANDIDATES:
            stride += 1
    if stride < 1:
        raise InputError(f"stride must be ≥ 1, got {stride}")

    grid = [np.arange(r, s - r, stride) for r, s in zip(radius, shape, strict=True)]
    compact, _ = fastremap.renumber(labels, in_place=False, preserve_zero=True)
    if compact.dtype == bool:
        compact = compact.astype(np.uint8)
    cand = compact[np.ix_(*grid)]
    counts = np.zeros(cand.shape, dtype=np.int32)
    for index, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        # Grid indices of candidates inside this label's bounding box, per axis.
        sel = []
        for axis, sl in enumerate(box):
            g = grid[axis]
            lo, hi = np.searchsorted(g, sl.start), np.searchsorted(g, sl.stop)
            sel.append(slice(int(lo), int(hi)))
        if any(s.start >= s.stop for s in sel):
            continue
        mine = cand[tuple(sel)] == index
        if not mine.any():
            continue
        # The crop covering the cubes around those candidates.
        first = [int(grid[a][sel[a].start] - radius[a]) for a in range(3)]
        last = [int(grid[a][sel[a].stop - 1] + radius[a] + 1) for a in range(3)]
        box_sum: np.ndarray = compact[tuple(slice(f, e) for f, e in zip(first, last, strict=True))] == index
        for axis in range(3):
            centres = grid[axis][sel[axis]] - first[axis]
            cumsum = np.zeros(
                (*box_sum.shape[:axis], box_sum.shape[axis] + 1, *box_sum.shape[axis + 1 :]), np.int32
            )
            np.cumsum(box_sum, axis=axis, dtype=np.int32, out=_axis_slice(cumsum, axis, slice(1, None)))
            box_sum = np.take(cumsum, centres + radius[axis] + 1, axis=axis) - np.take(
                cumsum, centres - radius[axis], axis=axis
            )
        counts[tuple(sel)][mine] = box_sum[mine]  # writes through: counts[sel] is a view
    nonzero = cand != 0
    coords = np.stack([g[i] for g, i in zip(grid, np.nonzero(nonzero), strict=True)], axis=1).astype(np.int64)
    fraction = (counts[nonzero] / float(np.prod(2 * radius + 1))).astype(np.float32)
    return Partitions(
        coords_zyx=coords,
        fraction=fraction,
        bin=np.digitize(fraction, edges).astype(np.int64),
        radius_zyx=tuple(int(r) for r in radius),  # type: ignore[arg-type]
        stride=int(stride),
    )


def _axis_slice(array: np.ndarray, axis: int, sl: slice) -> np.ndarray:
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = sl
    return array[tuple(index)]


def sample_training_centres(
    labels: np.ndarray,
    config: FFNConfig,
    *,
    n: int,
    seed: int = 0,
    bins: Sequence[float] = DEFAULT_BINS,
    stride: int | None = None,
) -> np.ndarray:
    """``n`` training centres ``(n, 3)`` int64 (z, y, x), every same-label-fraction bin equally represented.

    Fractions are computed by :func:`compute_partitions` with radius ``fov // 2 + delta``; so every centre
    lies at least that far from each border and has a nonzero label. Each of the ``k`` non-empty bins gets
    ``n // k`` centres (the remainder goes to randomly chosen bins, one each), drawn without replacement where
    the bin has enough candidates and, like Google's ``build_coordinates``, by repeating a random permutation
    where it has not.
    The result is shuffled; the same inputs and ``seed`` give the same centres.
    """
    if n < 1:
        raise InputError(f"n must be ≥ 1, got {n}")
    parts = compute_partitions(labels, training_radius(config), bins=bins, stride=stride)
    if parts.coords_zyx.shape[0] == 0:
        raise InputError(
            "no training centres: every voxel far enough from the border "
            f"({parts.radius_zyx} voxels) has label 0"
        )
    rng = np.random.default_rng([int(seed), 1])
    present = np.unique(parts.bin)
    quota = np.full(present.size, n // present.size, dtype=np.int64)
    quota[rng.permutation(present.size)[: n % present.size]] += 1
    chosen = []
    for b, q in zip(present, quota, strict=True):
        members = np.flatnonzero(parts.bin == b)
        chosen.append(np.resize(rng.permutation(members), int(q)))
    picks = np.concatenate(chosen)
    return parts.coords_zyx[rng.permutation(picks)]


# ---------------------------------------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingExample:
    """One training cutout of ``fov + 2·delta`` voxels per axis, after augmentation.

    ``image`` float32 normalised ``(raw - image_mean) / image_stddev``; ``labels`` the cut ids; ``target``
    float32 0.95 where ``labels == centre_label != 0``, else 0.05; all ``(z, y, x)``. The centre voxel is at
    ``shape // 2``. ``flips_zyx`` says which axes were reversed (applied first) and ``axes`` the transpose
    applied after (a permutation of 0, 1, 2).
    """

    image: np.ndarray
    labels: np.ndarray
    target: np.ndarray
    centre_zyx: IntTriple
    centre_label: int
    flips_zyx: tuple[bool, bool, bool]
    axes: IntTriple


def swappable_axes(config: FFNConfig, isotropic: bool = False) -> list[int]:
    """Axes that may be permuted among themselves (0 = z, 1 = y, 2 = x).

    y and x always (EM sections are isotropic in-plane), z only when ``isotropic`` is set (FIB-SEM); and only
    axes with equal FOV and delta, so the example keeps its shape.
    """
    axes = [0, 1, 2] if isotropic else [1, 2]
    key = list(zip(config.fov_zyx, config.deltas_zyx, strict=True))
    groups: dict[tuple[int, int], list[int]] = {}
    for a in axes:
        groups.setdefault(key[a], []).append(a)
    return max(groups.values(), key=len) if groups else []


def make_example(
    raw: np.ndarray,
    labels: np.ndarray,
    centre_zyx: Sequence[int],
    config: FFNConfig,
    rng: np.random.Generator | None = None,
    *,
    augment: bool = True,
    isotropic: bool = False,
) -> TrainingExample:
    """Cut, augment and label one example around ``centre_zyx`` (which must lie ``fov // 2 + delta`` inside).

    With ``augment`` each axis is flipped with probability 1/2 and the axes in :func:`swappable_axes` are put
    in a uniformly random order; image and labels always get the same transform.
    """
    radius = np.asarray(training_radius(config))
    centre = np.asarray([int(c) for c in centre_zyx], dtype=np.int64)
    if centre.shape != (3,) or np.any(centre < radius) or np.any(centre + radius >= labels.shape):
        raise InputError(
            f"centre {tuple(centre.tolist())} is not at least {tuple(radius)} voxels inside the volume "
            f"{labels.shape}"
        )
    window = tuple(slice(int(c - r), int(c + r + 1)) for c, r in zip(centre, radius, strict=True))
    image = raw[window].astype(np.float32)
    cut = np.asarray(labels[window])
    flips = (False, False, False)
    axes: IntTriple = (0, 1, 2)
    if augment:
        rng = rng or np.random.default_rng()
        flips = tuple(bool(f) for f in rng.integers(0, 2, size=3))  # type: ignore[assignment]
        order = list(range(3))
        movable = swappable_axes(config, isotropic)
        for a, b in zip(movable, rng.permutation(movable), strict=True):
            order[a] = int(b)
        axes = tuple(order)  # type: ignore[assignment]
        flip_axes = tuple(a for a in range(3) if flips[a])
        if flip_axes:
            image, cut = np.flip(image, flip_axes), np.flip(cut, flip_axes)
        image, cut = image.transpose(axes), cut.transpose(axes)
    image = np.ascontiguousarray((image - config.image_mean) / config.image_stddev, dtype=np.float32)
    cut = np.ascontiguousarray(cut)
    centre_label = int(labels[tuple(centre)])
    inside = (cut == centre_label) & (cut != 0)
    target = np.where(inside, TARGET_ON, TARGET_OFF).astype(np.float32)
    return TrainingExample(
        image=image,
        labels=cut,
        target=target,
        centre_zyx=tuple(int(c) for c in centre),  # type: ignore[arg-type]
        centre_label=centre_label,
        flips_zyx=flips,  # type: ignore[arg-type]
        axes=axes,
    )


# ---------------------------------------------------------------------------------------------------------
# recurrent FOV moves inside one example
# ---------------------------------------------------------------------------------------------------------
def face_moves(
    logits: np.ndarray, deltas_zyx: Sequence[int], threshold: float = logit(MOVE_THRESHOLD)
) -> list[tuple[float, IntTriple]]:
    """Moves proposed by a FOV's predicted ``logits`` ``(z, y, x)`` (Google's ``FaceMaxMovementPolicy``).

    For each of the 6 faces of the ±delta cube around the FOV centre, the highest logit on the face; faces
    whose maximum is ≥ ``threshold`` give ``(score, offset)`` with ``offset`` that voxel's position relative
    to the centre (±delta on the face's axis, within ±delta on the others). Sorted by descending score.
    """
    centre = np.asarray(logits.shape) // 2
    deltas = [int(d) for d in deltas_zyx]
    cube = [slice(int(c - d), int(c + d + 1)) for c, d in zip(centre, deltas, strict=True)]
    moves: list[tuple[float, IntTriple]] = []
    for axis, d in enumerate(deltas):
        if d == 0:
            continue
        for sign in (-1, 1):
            face_sel = list(cube)
            face_sel[axis] = slice(int(centre[axis] + sign * d), int(centre[axis] + sign * d + 1))
            face = logits[tuple(face_sel)]
            pos = np.unravel_index(int(np.argmax(face)), face.shape)
            score = float(face[pos])
            if score < threshold:
                continue
            offset = tuple(int(p - dd) for p, dd in zip(pos, deltas, strict=True))
            offset = (*offset[:axis], sign * d, *offset[axis + 1 :])
            moves.append((score, offset))  # type: ignore[arg-type]
    moves.sort(key=lambda m: -m[0])
    return moves


@dataclass
class _Stream:
    """One example being trained on, FOV by FOV: its seed canvas and the FIFO queue of FOV offsets.

    Offsets are voxels (z, y, x) from the example centre; they stay within ±delta (the example is
    ``fov + 2·delta``), so at most 3³ quantised positions are visited. ``offset`` is the FOV handed out last.
    """

    index: int
    example: TrainingExample
    canvas: np.ndarray
    queue: deque[IntTriple]
    done: set[IntTriple]
    visited: int = 0
    offset: IntTriple | None = None

    @classmethod
    def start(cls, index: int, example: TrainingExample) -> _Stream:
        canvas = np.full(example.image.shape, logit(SEED_PAD), dtype=np.float32)
        canvas[tuple(np.asarray(canvas.shape) // 2)] = logit(SEED_INIT)
        return cls(index, example, canvas, deque([(0, 0, 0)]), set())

    def next_offset(self, config: FFNConfig, max_fovs: int | None) -> IntTriple | None:
        deltas = config.deltas_zyx
        while self.queue and (max_fovs is None or self.visited < max_fovs):
            offset = self.queue.popleft()
            if any(abs(o) > d for o, d in zip(offset, deltas, strict=True)):
                continue
            key = tuple((o + d // 2) // max(d, 1) for o, d in zip(offset, deltas, strict=True))
            if key in self.done:
                continue
            self.done.add(key)  # type: ignore[arg-type]
            self.visited += 1
            self.offset = offset
            return offset
        return None

    def window(self, config: FFNConfig) -> tuple[slice, ...]:
        assert self.offset is not None
        centre = np.asarray(self.canvas.shape) // 2
        return tuple(
            slice(int(c + o - f // 2), int(c + o + f // 2 + 1))
            for c, o, f in zip(centre, self.offset, config.fov_zyx, strict=True)
        )

    def update(self, logits: np.ndarray, config: FFNConfig) -> None:
        """Overwrite the canvas in the current FOV with ``logits`` and queue the moves they propose."""
        assert self.offset is not None
        self.canvas[self.window(config)] = logits
        for _, move in face_moves(logits, config.deltas_zyx):
            self.queue.append(tuple(m + o for m, o in zip(move, self.offset, strict=True)))  # type: ignore[arg-type]

    def state(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "canvas": torch.from_numpy(self.canvas.copy()),
            "queue": torch.tensor(list(self.queue), dtype=torch.int64).reshape(-1, 3),
            "done": torch.tensor(sorted(self.done), dtype=torch.int64).reshape(-1, 3),
            "visited": self.visited,
        }


# ---------------------------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` did. ``losses`` and ``bce`` hold one value per step from step 1 (including steps
    done before a resume): the optimised objective and the plain sigmoid cross-entropy (they differ only for
    models with an uncertainty head). ``examples`` counts examples started in all; ``fovs`` the FOVs trained
    on in this call; ``seconds`` this call's wall time."""

    model: FFNModel
    step: int
    losses: np.ndarray
    bce: np.ndarray
    examples: int
    resumed_from: int | None
    checkpoint: Path | None
    seconds: float
    fovs: int = 0


class _Data:
    """The training volume, its centre pool and the counter-based example generator."""

    def __init__(
        self,
        raw: np.ndarray,
        labels: np.ndarray,
        config: FFNConfig,
        *,
        seed: int,
        n_centres: int,
        augment: bool,
        isotropic: bool,
    ) -> None:
        self.raw, self.labels, self.config = raw, labels, config
        self.seed, self.augment, self.isotropic = seed, augment, isotropic
        self.centres = sample_training_centres(labels, config, n=n_centres, seed=seed)
        self._epoch: tuple[int, np.ndarray] | None = None

    def example(self, k: int) -> TrainingExample:
        n = len(self.centres)
        epoch = k // n
        if epoch == 0:
            order_index = k
        else:
            if self._epoch is None or self._epoch[0] != epoch:
                self._epoch = (epoch, np.random.default_rng([self.seed, 2, epoch]).permutation(n))
            order_index = int(self._epoch[1][k % n])
        rng = np.random.default_rng([self.seed, 3, k])
        return make_example(
            self.raw,
            self.labels,
            self.centres[order_index],
            self.config,
            rng,
            augment=self.augment,
            isotropic=self.isotropic,
        )


def module_groups(model: nn.Module) -> list[nn.Module]:
    """The model's sub-modules in input-to-output order, for :func:`train`'s ``train_last``.

    ``ConvStack3D``: conv0 (a and b), each residual module, ``conv_lom``; models with a ``module_groups()``
    method (``InceptionFFN``: stem, blocks, heads) say themselves; any other model is one group.
    """
    if isinstance(model, ConvStack3D):
        return [nn.ModuleList([model.conv0_a, model.conv0_b]), *model.residual, model.conv_lom]
    groups = getattr(model, "module_groups", None)
    if callable(groups):
        return list(groups())
    return [model]


def _loss(
    model: FFNModel, logits: torch.Tensor, log_variance: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    bce = functional.binary_cross_entropy_with_logits(logits.float(), target)
    if model.has_uncertainty and log_variance is not None:
        from connectomix.segment.inception import heteroscedastic_bce

        return heteroscedastic_bce(logits, log_variance, target), bce
    return bce, bce


def _make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise InputError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def train(
    model: FFNModel,
    raw: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    clip: float | None = 0.7,
    optimizer: Literal["sgd", "adam"] = "sgd",
    momentum: float = 0.0,
    seed: int = 0,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    resume: bool | Path | str = True,
    precision: Precision = "fp32",
    train_last: int | None = None,
    n_centres: int = 4096,
    max_fovs_per_example: int | None = None,
    augment: bool = True,
    isotropic: bool = False,
    device: str | torch.device = "cpu",
    log_every: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train (or fine-tune) ``model`` on one volume until it has done ``steps`` optimiser steps in all.

    Parameters
    ----------
    model
        Any :class:`FFNModel` (fresh, :func:`~connectomix.segment.models.load_model`-ed, or imported from
        Google's checkpoint); trained in place and returned in the result.
    raw, labels
        ``(z, y, x)`` arrays of one shape: the EM image (uint8, normalised with the model's config) and the
        ground-truth ids (0 = background, never a target).
    steps
        Total optimiser steps, counting those of a resumed checkpoint. Each step is one FOV from each of
        ``batch_size`` example streams (see the module docstring).
    lr, clip, optimizer, momentum
        ``sgd`` (Google: lr 1e-3, no momentum) or ``adam``; gradients are clipped elementwise to ``±clip``.
    seed
        Seed of every random choice (centres, augmentation); same inputs and seed, same weights.
    checkpoint_dir, checkpoint_every, keep_checkpoints
        Where a checkpoint ``step-NNNNNNNN/`` (``model.safetensors`` + ``state.pt``) is written every
        ``checkpoint_every`` steps and at the end, atomically (a temporary folder, then rename); only the
        newest ``keep_checkpoints`` are kept.
    resume
        ``True``: continue from the newest checkpoint in ``checkpoint_dir`` if there is one; a path: continue
        from that checkpoint folder (it must exist); ``False``: start afresh. A resumed run ends with the same
        weights as an uninterrupted one (fp32; same device and thread count).
    precision
        ``bf16`` runs the forward pass under autocast (weights and loss stay fp32).
    train_last
        Train only the last ``k`` of :func:`module_groups` (e.g. 1: the output head(s)); ``None``: all.
    n_centres, max_fovs_per_example, augment, isotropic
        Size of the centre pool (:func:`sample_training_centres`), a cap on FOVs per example (default: until
        no move is left, at most 27), flips and axis swaps (z joins the swaps when ``isotropic``).
    log_every, progress
        Log the mean loss every ``log_every`` steps (``logging``, INFO); a progress bar on a terminal.
    """
    config = model.config
    raw = np.asarray(raw)
    labels = _check_labels(labels)
    if raw.shape != labels.shape:
        raise InputError(f"raw {raw.shape} and labels {labels.shape} must have the same (z, y, x) shape")
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise InputError(f"raw must be a numeric image (uint8), got dtype {raw.dtype}")
    if any(d > f // 2 for d, f in zip(config.deltas_zyx, config.fov_zyx, strict=True)):
        raise InputError(
            f"deltas {config.deltas_zyx} must be at most half the field of view {config.fov_zyx} per axis"
        )
    for name, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if value < 1 and not (name == "steps" and value == 0):
            raise InputError(f"{name} must be ≥ 1, got {value}")
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    groups = module_groups(model)
    if train_last is not None and not 1 <= train_last <= len(groups):
        raise InputError(f"train_last must be in 1…{len(groups)} for this model, got {train_last}")
    trainable = groups if train_last is None else groups[-train_last:]
    params = list(dict.fromkeys(p for g in trainable for p in g.parameters()))
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    model.to(device)
    opt = _make_optimizer(optimizer, params, lr, momentum)
    data = _Data(raw, labels, config, seed=seed, n_centres=n_centres, augment=augment, isotropic=isotropic)
    meta = {"batch_size": batch_size, "optimizer": optimizer, "seed": seed, "train_last": train_last}

    step, next_example, streams = 0, 0, []
    losses: list[float] = []
    bces: list[float] = []
    resumed_from = None
    source = resume_source(ckpt_dir, resume)
    if source is not None:
        state = load_checkpoint(source, model, opt, meta)
        step, next_example = int(state["step"]), int(state["next_example"])
        losses = [float(v) for v in state["losses"].tolist()]
        bces = [float(v) for v in state["bce"].tolist()]
        for s in state["streams"]:
            stream = _Stream.start(int(s["index"]), data.example(int(s["index"])))
            stream.canvas = s["canvas"].numpy().copy()
            stream.queue = deque(tuple(int(v) for v in row) for row in s["queue"].tolist())  # type: ignore[misc]
            stream.done = {tuple(int(v) for v in row) for row in s["done"].tolist()}  # type: ignore[misc]
            stream.visited = int(s["visited"])
            streams.append(stream)
        for group in opt.param_groups:  # this run's hyper-parameters, not the checkpoint's
            group["lr"] = lr
            if optimizer == "sgd":
                group["momentum"] = momentum
        resumed_from = step
        log.info("resumed FFN training from %s at step %d", source, step)

    while len(streams) < batch_size:
        streams.append(_Stream.start(next_example, data.example(next_example)))
        next_example += 1

    start_step = step
    started = time.perf_counter()
    last_checkpoint: Path | None = None
    fovs = 0
    model.train()
    try:
        todo = range(start_step + 1, steps + 1)
        for step in track(todo, "training FFN", total=len(todo), enabled=progress):
            images, seeds, targets = [], [], []
            for b in range(batch_size):
                if streams[b].next_offset(config, max_fovs_per_example) is None:
                    streams[b] = _Stream.start(next_example, data.example(next_example))
                    next_example += 1
                    streams[b].next_offset(config, max_fovs_per_example)
                window = streams[b].window(config)
                images.append(streams[b].example.image[window])
                seeds.append(streams[b].canvas[window])
                targets.append(streams[b].example.target[window])
            image_t = torch.from_numpy(np.stack(images)[:, None]).to(device)
            seed_t = torch.from_numpy(np.stack(seeds)[:, None]).to(device)
            target_t = torch.from_numpy(np.stack(targets)[:, None]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits, log_variance = model.predict(image_t, seed_t)
            loss, bce = _loss(model, logits, log_variance, target_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_value_(params, clip)
            opt.step()
            fovs += batch_size
            losses.append(float(loss.detach()))
            bces.append(float(bce.detach()))
            predicted = logits.detach().float().cpu().numpy()[:, 0]
            for b in range(batch_size):
                streams[b].update(predicted[b], config)
            if log_every and step % log_every == 0:
                log.info("step %d: loss %.4f", step, float(np.mean(losses[-log_every:])))
            if ckpt_dir is not None and (step % checkpoint_every == 0 or step == steps):
                last_checkpoint = save_checkpoint(
                    ckpt_dir,
                    model,
                    opt,
                    step=step,
                    next_example=next_example,
                    streams=streams,
                    losses=losses,
                    bce=bces,
                    meta=meta,
                    keep=keep_checkpoints,
                )
    finally:
        model.eval()
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
    return TrainResult(
        model=model,
        step=len(losses),
        losses=np.asarray(losses, dtype=np.float64),
        bce=np.asarray(bces, dtype=np.float64),
        examples=next_example,
        resumed_from=resumed_from,
        checkpoint=last_checkpoint,
        seconds=time.perf_counter() - started,
        fovs=fovs,
    )


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
def save_checkpoint(
    checkpoint_dir: Path,
    model: FFNModel,
    opt: torch.optim.Optimizer,
    *,
    step: int,
    next_example: int,
    streams: list[_Stream],
    losses: list[float],
    bce: list[float],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoint_dir/step-NNNNNNNN/`` (``model.safetensors`` + ``state.pt``) atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "next_example": next_example,
        "config": model.config.to_json(),
        "meta": json.dumps(meta, sort_keys=True),
        "optimizer": opt.state_dict(),
        "streams": [s.state() for s in streams],
        "losses": torch.tensor(losses, dtype=torch.float64),
        "bce": torch.tensor(bce, dtype=torch.float64),
    }
    return write_checkpoint(
        checkpoint_dir,
        step,
        lambda path: save_model(model, path, metadata={"step": str(step)}),
        state,
        keep=keep,
    )


def load_checkpoint(
    path: Path | str,
    model: FFNModel,
    opt: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a training checkpoint folder into ``model`` (and ``opt``); return its state dict.

    Raises :class:`NotFoundError` when the folder is missing, :class:`CorruptDataError` when a file is missing
    or unreadable, and :class:`InputError` when it belongs to a different model config or training setup.
    """
    state, tensors = read_checkpoint(
        path, format_tag=CHECKPOINT_FORMAT, what="FFN", config_json=model.config.to_json(), meta=meta
    )
    device = next(model.parameters()).device
    load_state(
        model, {k: v.to(device) for k, v in tensors.items()}, source=str(Path(path) / "model.safetensors")
    )
    if opt is not None:
        load_optimizer_state(path, opt, state)
    return state
