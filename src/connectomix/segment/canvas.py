"""One subvolume's flood-filling state, advanced one network step at a time.

A :class:`Canvas` holds everything Google's ``inference.Canvas`` holds for one subvolume: the normalised
image, the seed canvas of the object in progress (float32 logits, NaN = unexplored), the segmentation, the
FIFO movement queue with its quantised visited set, and per-object statistics. It does not run the network:
it is a *step generator*. :meth:`Canvas.next_request` returns the (z, y, x) centre of the field of view the
object in progress needs evaluated next (``None`` once every seed has been tried) and :meth:`Canvas.apply`
writes the network's output back. A runner (:func:`connectomix.segment.inference.run_canvases`) can then
batch the requests of many canvases into one forward pass; within one canvas the steps stay sequential,
because each step's input is the previous step's output.

All positions are (z, y, x) voxel indices into the subvolume; all arrays are (z, y, x), C order.

The rules follow ``specs/ffn.md`` and Google's ``inference.py``/``movement.py`` (commit 6f61f6e):

* a seed is skipped within half a field of view of the border, on an already segmented voxel, or with any
  segmented voxel within ``min_boundary_dist`` of it;
* an object starts from a cleared canvas with ``seed[start] = logit(init_activation)``; positions are popped
  from a FIFO queue and skipped when their quantised key ``(pos - start + delta // 2) // delta`` was already
  evaluated, when ``seed[pos] < logit(move_threshold)``, near the border, or on a segmented voxel;
* the object stops when the queue is empty, when ``seed[start]`` drops below the move threshold, or after
  ``max_steps_per_object`` steps;
* each step overwrites the seed canvas in the field of view with the output logits (unexplored voxels are
  fed as ``logit(pad_value)``); with ``disco_seed_threshold`` not None (the default, 0.0, as in Google's
  FIB-25 run), Google's "disconnected seed" bias first keeps voxels that were below 0.5 from rising (see
  :meth:`Canvas.apply`). With it, Google's checkpoint on the FIB-25 crop ``[75:175]³`` takes exactly the
  726 steps Google's code takes (``bench/ffn_inference.py``);
* movement (``FaceMaxMovementPolicy``): :func:`face_max_moves`;
* commit: inside the bounding box of the visited fields of view, voxels with
  ``seed >= logit(segment_threshold)`` not yet assigned get the next id (first object wins), unless fewer
  than ``min_segment_size`` or the seed voxel itself fell below the move threshold.

Google also marks failed seeds with -1 in the segmentation; no rule ever reads those marks (every test is
``> 0`` or ``<= 0``), so they are not kept here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit, logit

from connectomix.errors import InputError
from connectomix.segment.models import FFNConfig
from connectomix.segment.seeds import seed_policy

if TYPE_CHECKING:
    from connectomix.segment.inference import InferenceOptions

Position = tuple[int, int, int]


@dataclass(frozen=True)
class ObjectStats:
    """One committed object: its id, seed voxel (z, y, x), size in voxels, network steps, wall seconds.

    ``seconds`` is wall time from the object's first request to its commit; in a batched run it includes
    the time the object waited for the batch to fill.
    """

    id: int
    seed_zyx: Position
    voxels: int
    steps: int
    seconds: float


@dataclass
class InferenceCounters:
    """What one subvolume's inference did. ``seconds`` is wall time from first request to finish."""

    steps: int = 0
    seconds: float = 0.0
    voxels_segmented: int = 0
    objects: int = 0
    objects_rejected: int = 0
    rejected_too_small: int = 0
    rejected_weak_seed: int = 0
    rejected_no_steps: int = 0
    seeds_total: int = 0
    seeds_tried: int = 0
    seeds_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SubvolumeResult:
    """The outcome of flood filling one subvolume; every array is (z, y, x) in the subvolume's voxels.

    ``segmentation`` (uint64): 0 = unassigned, ids 1..n consecutive in commit order.
    ``probability`` (uint8, or None when ``keep_probability`` is off): Google's quantisation
    ``digitize(p, linspace(0, 1, 255))`` of the object probability ``p = sigmoid(seed logit)``, so any
    explored voxel is 1..255 and 0 means never explored. A segmented voxel holds the probability of the
    object that claimed it (Google's ``seg_prob``); an unassigned voxel holds the highest probability any
    object (committed or rejected) reached there, so near-misses stay visible to the flagging stage.
    ``uncertainty`` (float32 log-variance, or None for models without an uncertainty head): the same rule,
    NaN where never explored.
    """

    segmentation: np.ndarray
    probability: np.ndarray | None
    uncertainty: np.ndarray | None
    objects: list[ObjectStats] = field(default_factory=list)
    counters: InferenceCounters = field(default_factory=InferenceCounters)


CanvasResult = SubvolumeResult


def face_max_moves(
    logits: np.ndarray, deltas_zyx: tuple[int, int, int] | np.ndarray, threshold: float
) -> list[tuple[float, Position]]:
    """Candidate moves of Google's ``FaceMaxMovementPolicy`` from one step's output.

    ``logits`` is the (z, y, x) output over a field of view centred at ``shape // 2``. For each of the 6
    faces of the cube ``centre ± deltas`` (axes with delta 0 have no faces), the highest-logit voxel of
    the face (first in C order on ties) is a candidate if its logit is ``>= threshold``. Returns
    ``(score, offset_zyx)`` pairs, offsets relative to the centre, sorted by descending
    ``(score, offset)`` as Google's ``sorted(..., reverse=True)`` does.
    """
    centre = np.asarray(logits.shape) // 2
    deltas = [int(d) for d in deltas_zyx]
    window = [slice(c - d, c + d + 1) for c, d in zip(centre, deltas, strict=True)]
    moves: set[tuple[float, Position]] = set()
    for axis, delta in enumerate(deltas):
        if delta == 0:
            continue
        for offset in (-delta, delta):
            face_sel = list(window)
            face_sel[axis] = int(centre[axis] + offset)  # type: ignore[call-overload]
            face = logits[tuple(face_sel)]
            flat = int(np.argmax(face))
            face_pos = np.unravel_index(flat, face.shape)
            score = float(face[face_pos])
            if not score >= threshold:
                continue
            rel = [int(face_pos[0]) - face.shape[0] // 2, int(face_pos[1]) - face.shape[1] // 2]
            rel.insert(axis, offset)
            moves.add((score, (rel[0], rel[1], rel[2])))
    return sorted(moves, reverse=True)


def quantize_probability(prob: np.ndarray) -> np.ndarray:
    """Google's ``storage.quantize_probability``: ``digitize(p, linspace(0, 1, 255))`` as uint8 (1..255)."""
    return np.minimum(np.floor(prob * 254.0) + 1.0, 255.0).astype(np.uint8)


def _logit32(p: float) -> float:
    # Google stores the converted thresholds in float32 proto fields.
    return float(np.float32(logit(p)))


class Canvas:
    """The flood-filling state of one subvolume (see the module docstring for the rules).

    ``raw`` is a (z, y, x) uint8 or float image in raw intensity units (normalised here with the model's
    ``image_mean``/``image_stddev``); every axis must be at least the field of view.
    """

    def __init__(self, raw: np.ndarray, config: FFNConfig, options: InferenceOptions) -> None:
        validate_raw(raw, config)
        self.config = config
        self.options = options
        self.image = (
            (raw.astype(np.float32) - np.float32(config.image_mean)) / np.float32(config.image_stddev)
        ).astype(np.float32, copy=False)
        self.shape: Position = tuple(int(s) for s in raw.shape)  # type: ignore[assignment]
        self.fov = np.asarray(config.fov_zyx, dtype=np.int64)
        self.margin = self.fov // 2
        self.deltas = np.asarray(config.deltas_zyx, dtype=np.int64)
        self.mbd = np.asarray(options.min_boundary_dist, dtype=np.int64)
        self.t_init = _logit32(options.init_activation)
        self.t_pad = np.float32(_logit32(options.pad_value))
        self.t_move = _logit32(options.move_threshold)
        self.t_segment = _logit32(options.segment_threshold)

        self.seed = np.full(self.shape, np.nan, dtype=np.float32)
        self.segmentation = np.zeros(self.shape, dtype=np.uint32)
        self.probability = np.zeros(self.shape, dtype=np.uint8) if options.keep_probability else None
        self.uncertainty: np.ndarray | None = None  # output, allocated on the first uncertainty result
        self._object_uncertainty: np.ndarray | None = None  # the object in progress, like ``seed``

        self.objects: list[ObjectStats] = []
        self.counters = InferenceCounters()
        self.done = False
        self._seeds: np.ndarray | None = None
        self._seed_index = 0
        self._t_first: float | None = None
        self._pending: Position | None = None
        # The object in progress.
        self._start: Position | None = None
        self._queue: deque[tuple[float, Position]] = deque()
        self._visited: set[Position] = set()
        self._steps = 0
        self._min_pos = np.zeros(3, dtype=np.int64)
        self._max_pos = np.zeros(3, dtype=np.int64)
        self._t_object = 0.0
        self._dirty: tuple[slice, ...] | None = None  # box of ``seed`` written by the last object

    # -- the step interface -------------------------------------------------------------------------------

    def next_request(self) -> Position | None:
        """The FOV centre (z, y, x) to evaluate next, or None when this canvas is finished.

        Calling it again before :meth:`apply` returns the same position.
        """
        if self._pending is not None:
            return self._pending
        if self._t_first is None:
            self._t_first = time.perf_counter()
        while not self.done:
            if self._start is None and not self._start_next_object():
                self._finish_canvas()
                return None
            pos = self._next_position()
            if pos is not None:
                self._pending = pos
                return pos
            self._finish_object()
        return None

    def fill_inputs(self, pos: Position, image_out: np.ndarray, seed_out: np.ndarray) -> None:
        """Write the (z, y, x) network inputs for the FOV at ``pos``: normalised image and seed logits,
        NaN (unexplored) replaced by ``logit(pad_value)``."""
        sel = self._fov(pos)
        image_out[...] = self.image[sel]
        np.copyto(seed_out, self.seed[sel])
        np.copyto(seed_out, self.t_pad, where=np.isnan(seed_out))

    def apply(self, pos: Position, logits: np.ndarray, uncertainty: np.ndarray | None = None) -> None:
        """Write one step's output logits (and log-variance) for the FOV at ``pos`` and queue the moves.

        ``logits``/``uncertainty`` are (z, y, x) arrays of the field-of-view shape. The seed canvas is
        overwritten in the FOV. With ``options.disco_seed_threshold`` not None (Google's
        ``disco_seed_threshold``, which its FIB-25 run left at the proto default 0): when the fraction of
        output voxels ``>= logit(move_threshold)`` exceeds it, voxels whose previous value was below
        ``logit(0.5)`` keep that value wherever the new logit is higher; the movement policy then sees the
        adjusted logits, as in Google's code.
        """
        if pos != self._pending:
            raise InputError(f"apply() got position {pos}, but the pending request is {self._pending}")
        if tuple(logits.shape) != tuple(self.fov):
            raise InputError(
                f"the model returned shape {tuple(logits.shape)} for one FOV, expected {tuple(self.fov)}"
            )
        sel = self._fov(pos)
        out = np.array(logits, dtype=np.float32)
        disco = self.options.disco_seed_threshold
        if disco is not None and np.mean(out >= self.t_move) > disco:
            old = self.seed[sel]
            with np.errstate(invalid="ignore"):
                frozen = (old < np.float32(logit(0.5))) & (out > old)
            out[frozen] = old[frozen]
        self.seed[sel] = out
        if uncertainty is not None:
            if self._object_uncertainty is None:
                self._object_uncertainty = np.full(self.shape, np.nan, dtype=np.float32)
                self.uncertainty = np.full(self.shape, np.nan, dtype=np.float32)
            self._object_uncertainty[sel] = uncertainty
        p = np.asarray(pos, dtype=np.int64)
        self._min_pos = np.minimum(self._min_pos, p)
        self._max_pos = np.maximum(self._max_pos, p)
        self._steps += 1
        self.counters.steps += 1
        self._visited.add(self._quantize(pos))
        for score, offset in face_max_moves(out, self.deltas, self.t_move):
            self._queue.append((score, (pos[0] + offset[0], pos[1] + offset[1], pos[2] + offset[2])))
        self._pending = None

    @property
    def seeds_done(self) -> int:
        """Seeds taken from the policy so far (tried or skipped)."""
        return self._seed_index

    def result(self) -> SubvolumeResult:
        """The result so far (complete once :meth:`next_request` has returned None)."""
        return SubvolumeResult(
            segmentation=self.segmentation.astype(np.uint64),
            probability=self.probability,
            uncertainty=self.uncertainty,
            objects=list(self.objects),
            counters=self.counters,
        )

    # -- seeds and objects --------------------------------------------------------------------------------

    def _start_next_object(self) -> bool:
        if self._seeds is None:
            policy = seed_policy(self.options.seed_policy)
            self._seeds = np.asarray(policy(self.image), dtype=np.int64).reshape(-1, 3)
            self.counters.seeds_total = len(self._seeds)
        while self._seed_index < len(self._seeds):
            pos: Position = tuple(int(v) for v in self._seeds[self._seed_index])  # type: ignore[assignment]
            self._seed_index += 1
            if not self._seed_is_valid(pos):
                self.counters.seeds_skipped += 1
                continue
            self._begin_object(pos)
            return True
        return False

    def _seed_is_valid(self, pos: Position) -> bool:
        if not self._inside(pos) or self.segmentation[pos] > 0:
            return False
        p = np.asarray(pos)
        lo = np.maximum(p - self.mbd, 0)
        hi = p + self.mbd + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        return not bool(np.any(self.segmentation[box] > 0))

    def _begin_object(self, pos: Position) -> None:
        if self._dirty is not None:
            self.seed[self._dirty] = np.nan
            if self._object_uncertainty is not None:
                self._object_uncertainty[self._dirty] = np.nan
        self.seed[pos] = self.t_init
        self._dirty = tuple(slice(v, v + 1) for v in pos)
        self._start = pos
        self._queue = deque([(self.t_move * 2, pos)])
        self._visited = set()
        self._steps = 0
        self._min_pos = np.asarray(pos, dtype=np.int64)
        self._max_pos = np.asarray(pos, dtype=np.int64)
        self._t_object = time.perf_counter()
        self.counters.seeds_tried += 1

    def _next_position(self) -> Position | None:
        assert self._start is not None
        limit = self.options.max_steps_per_object
        if limit is not None and self._steps >= limit:
            return None
        if self.seed[self._start] < self.t_move:  # the seed got too weak
            return None
        while self._queue:
            _, pos = self._queue.popleft()
            if self._quantize(pos) in self._visited:
                continue
            if self.seed[pos] < self.t_move or not self._inside(pos) or self.segmentation[pos] > 0:
                continue
            return pos
        return None

    def _finish_object(self) -> None:
        start = self._start
        assert start is not None
        self._start = None
        seconds = time.perf_counter() - self._t_object
        if self._steps == 0:
            self.counters.objects_rejected += 1
            self.counters.rejected_no_steps += 1
            return
        lo = np.maximum(self._min_pos - self.margin, 0)
        hi = np.minimum(self._max_pos + self.margin + 1, self.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        self._dirty = box
        seed = self.seed[box]
        segmentation = self.segmentation[box]
        mask = np.zeros(seed.shape, dtype=bool)
        if self.seed[start] < self.t_move:
            self.counters.objects_rejected += 1
            self.counters.rejected_weak_seed += 1
        else:
            mask = seed >= self.t_segment
            mask &= segmentation == 0
            voxels = int(np.count_nonzero(mask))
            if voxels < self.options.min_segment_size:
                self.counters.objects_rejected += 1
                self.counters.rejected_too_small += 1
                mask[...] = False
            else:
                new_id = len(self.objects) + 1
                segmentation[mask] = new_id
                self.counters.objects += 1
                self.counters.voxels_segmented += voxels
                self.objects.append(ObjectStats(new_id, start, voxels, self._steps, seconds))
        self._record_maps(box, mask)

    def _record_maps(self, box: tuple[slice, ...], committed: np.ndarray) -> None:
        """Probability / uncertainty maps: the committing object's values on ``committed`` voxels, the
        running maximum on unassigned explored voxels."""
        if self.probability is None and self.uncertainty is None:
            return
        seed = self.seed[box]
        open_ = (self.segmentation[box] == 0) & ~np.isnan(seed)
        if self.probability is not None:
            prob = self.probability[box]
            prob[committed] = quantize_probability(expit(seed[committed]))
            prob[open_] = np.maximum(prob[open_], quantize_probability(expit(seed[open_])))
        if self.uncertainty is not None and self._object_uncertainty is not None:
            out = self.uncertainty[box]
            ours = self._object_uncertainty[box]
            out[committed] = ours[committed]
            out[open_] = np.fmax(out[open_], ours[open_])

    def _finish_canvas(self) -> None:
        self.done = True
        if self._t_first is not None:
            self.counters.seconds = time.perf_counter() - self._t_first

    # -- geometry -----------------------------------------------------------------------------------------

    def _fov(self, pos: Position) -> tuple[slice, ...]:
        return tuple(
            slice(int(p - m), int(p - m + f)) for p, m, f in zip(pos, self.margin, self.fov, strict=True)
        )

    def _inside(self, pos: Position) -> bool:
        """Whole FOV inside the subvolume: ``pos - margin >= 0`` and ``pos + margin < shape``."""
        return all(
            p - m >= 0 and p + m < s for p, m, s in zip(pos, self.margin.tolist(), self.shape, strict=True)
        )

    def _quantize(self, pos: Position) -> Position:
        assert self._start is not None
        step = np.maximum(self.deltas, 1)
        rel = np.asarray(pos) - np.asarray(self._start)
        key = (rel + self.deltas // 2) // step
        return (int(key[0]), int(key[1]), int(key[2]))


def validate_raw(raw: object, config: FFNConfig) -> None:
    """Raise InputError unless ``raw`` is a 3-D uint8/float (z, y, x) array at least one FOV large."""
    if not isinstance(raw, np.ndarray):
        raise InputError(f"raw must be a numpy array (z, y, x), got {type(raw).__name__}")
    if raw.ndim != 3:
        raise InputError(f"raw must be 3-D (z, y, x), got {raw.ndim}-D with shape {raw.shape}")
    if raw.dtype != np.uint8 and not np.issubdtype(raw.dtype, np.floating):
        raise InputError(f"raw must be uint8 or float (raw intensities), got dtype {raw.dtype}")
    if any(s < f for s, f in zip(raw.shape, config.fov_zyx, strict=True)):
        raise InputError(
            f"the subvolume {tuple(raw.shape)} (z, y, x) is smaller than the model's field of view "
            f"{config.fov_zyx}"
        )
