"""A simulated proofreader: answers queued tasks from ground truth, at a set pace and error rate.

The rules are those of a careful human with the ground truth in mind:

* **merge task** (segments ``a`` and ``b`` meeting at an uncertain boundary): merge when both belong mostly
  to the same ground-truth body (each one's majority body is the same, and it holds at least
  ``majority`` of each segment's labelled voxels);
* **split task** (one segment with an uncertain interior): split when the segment holds two ground-truth
  bodies of at least ``min_split_fraction`` of its labelled voxels (and ``min_split_voxels``) each, with
  one seed deep inside each of the two largest (the voxel farthest from the body's boundary within the
  segment), so the cut follows the ground-truth boundary wherever the edit's watershed can see it;
* **unassigned task** (an unassigned region with an uncertain fringe, the FFN's way of stopping early): the
  segments within ``gap_reach`` voxels of the task's point are looked at; when two of them belong mostly to
  the same ground-truth body (as for a merge task), the two largest such are merged across the gap;
  otherwise, when the largest of them belongs mostly to one body, the unassigned voxels of that body in the
  window that touch the segment are painted into it (``paint_unassigned``; the FFN stopped early);
* anything else is marked correct as it is.

Only a window of :data:`WINDOW_HALF_XYZ` voxels around the task's point is looked at, as a person looks at
the neighbourhood of the point a task shows them.

With probability ``error_rate`` the answer is flipped (an edit becomes "correct as is"; "correct" on a merge
task between two current segments becomes a false merge), so the closed loop can be tested against
imperfect proofreaders. Segments are looked up in the **current version** of the edit log when the
proofreader finishes the task, so a task whose segments an earlier edit already changed is judged on what
the proofreader would see then.

Time is simulated: every task takes ``seconds_per_task`` (log-normally jittered by ``jitter``) and ``users``
proofreaders work in parallel, as a discrete-event simulation: each one claims a task as soon as they are
free and completes it ``seconds`` later, in order of simulated time. A :class:`SimulatedClock` shared with
the queue (``TaskQueue(clock=...)``) makes the queue's waits and handling times come out in simulated
seconds; the whole run takes about ``tasks * seconds_per_task / users`` simulated seconds.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from connectomix.errors import ConflictError, InputError, NotFoundError
from connectomix.progress import track
from connectomix.volume.box import Box, xyz_to_zyx

Action = Literal["merge", "split", "paint", "correct"]
Point = tuple[int, int, int]

#: Half-size (voxels, x, y, z) of the window around a task in which segments are compared with ground truth.
WINDOW_HALF_XYZ = (48, 48, 48)


@dataclass(frozen=True)
class ProofreaderModel:
    """How a simulated proofreader behaves.

    ``seconds_per_task``: simulated seconds per task (median); ``jitter``: sigma of the log-normal factor
    on it (0 = every task takes exactly ``seconds_per_task``); ``error_rate``: probability in [0, 1] that
    an answer is flipped; ``majority``: fraction of each segment's labelled voxels its majority body must
    hold for a merge; ``min_split_fraction`` / ``min_split_voxels``: how much of a segment the second body
    must hold for a split; ``gap_reach``: how far (voxels, Chebyshev) from an unassigned task's point the
    segments on either side of the gap are looked for (0: unassigned tasks are always correct as they are);
    ``paint_unassigned``: whether an unassigned region of one segment's body is painted into it.
    """

    seconds_per_task: float = 30.0
    jitter: float = 0.3
    error_rate: float = 0.0
    majority: float = 0.5
    min_split_fraction: float = 0.1
    min_split_voxels: int = 50
    gap_reach: int = 8
    paint_unassigned: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds_per_task) and self.seconds_per_task >= 0):
            raise InputError(f"seconds_per_task must be a finite number >= 0, got {self.seconds_per_task}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise InputError(f"jitter must be a finite number >= 0, got {self.jitter}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise InputError(f"error_rate is a probability in [0, 1], got {self.error_rate}")
        if not 0.0 < self.majority <= 1.0:
            raise InputError(f"majority must be in (0, 1], got {self.majority}")
        if not 0.0 < self.min_split_fraction < 0.5:
            raise InputError(f"min_split_fraction must be in (0, 0.5), got {self.min_split_fraction}")
        if isinstance(self.min_split_voxels, bool) or not (
            isinstance(self.min_split_voxels, int | np.integer) and self.min_split_voxels >= 1
        ):
            raise InputError(f"min_split_voxels must be an integer >= 1, got {self.min_split_voxels!r}")
        if isinstance(self.gap_reach, bool) or not (
            isinstance(self.gap_reach, int | np.integer) and self.gap_reach >= 0
        ):
            raise InputError(f"gap_reach must be an integer >= 0 voxels, got {self.gap_reach!r}")


@dataclass(frozen=True)
class Decision:
    """What the proofreader does with one task; points are voxels (x, y, z), global coordinates."""

    action: Action
    segment_ids: tuple[int, ...] = ()
    points_xyz: tuple[Point, ...] = ()
    sources_xyz: tuple[Point, ...] = ()
    sinks_xyz: tuple[Point, ...] = ()
    reason: str = ""
    flipped: bool = False
    paint_box: Box | None = None  # global (z, y, x), with paint_mask of its shape
    paint_mask: np.ndarray | None = None


@dataclass
class SimulationReport:
    """What a simulated session did. Seconds are simulated.

    ``tasks``: tasks completed; ``actions``: completed tasks by action; ``edits``: merges and splits made
    in the edit log; ``conflicts``: completions the queue refused; ``flipped``: answers flipped by the
    error rate; ``per_user``: tasks completed by each simulated proofreader (``sim1``, ``sim2``, ...);
    ``decisions``: one JSON-able record per completed task, in completion order; ``users``: proofreaders
    simulated; ``start_version`` / ``end_version``: the edit log's version before and after (None when the
    edit log does not say).
    """

    tasks: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    edits: int = 0
    conflicts: int = 0
    flipped: int = 0
    simulated_seconds: float = 0.0
    per_user: Counter[str] = field(default_factory=Counter)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    users: int = 0
    start_version: int | None = None
    end_version: int | None = None

    @property
    def simulated_hours(self) -> float:
        return self.simulated_seconds / 3600.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-task decisions)."""
        return {
            "tasks": self.tasks,
            "actions": dict(self.actions),
            "edits": self.edits,
            "conflicts": self.conflicts,
            "flipped": self.flipped,
            "simulated_seconds": self.simulated_seconds,
            "simulated_hours": self.simulated_hours,
            "per_user": dict(self.per_user),
            "users": self.users,
            "start_version": self.start_version,
            "end_version": self.end_version,
        }


class SimulatedClock:
    """A clock that only moves when told to (unix-like seconds); pass it to ``TaskQueue(clock=...)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, float(seconds))


# -- judging one task ---------------------------------------------------------------------------------------
def _window(point_xyz: Sequence[int], bounds: Box) -> Box:
    """The box of ``WINDOW_HALF_XYZ`` around a point (x, y, z), clipped to ``bounds`` (z, y, x)."""
    size_zyx = [2 * h + 1 for h in xyz_to_zyx(WINDOW_HALF_XYZ)]
    return Box.around(xyz_to_zyx([int(v) for v in point_xyz]), size_zyx).intersect(bounds)


def _majority(gt: np.ndarray, mask: np.ndarray) -> tuple[int, float, int]:
    """(majority ground-truth body, its fraction, labelled voxels) of ``mask``'s voxels; gt 0 is ignored."""
    labels = gt[mask]
    labels = labels[labels != 0]
    if labels.size == 0:
        return 0, 0.0, 0
    ids, counts = np.unique(labels, return_counts=True)
    best = int(np.argmax(counts))
    return int(ids[best]), float(counts[best] / labels.size), int(labels.size)


def _deepest_point(mask: np.ndarray, offset_zyx: Sequence[int]) -> Point:
    """The voxel of ``mask`` farthest from its boundary, as a global (x, y, z) point."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    z, y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return (int(x + offset_zyx[2]), int(y + offset_zyx[1]), int(z + offset_zyx[0]))


def _bounds(volume: Any) -> Box:
    bounds = getattr(volume, "bounds", None)
    return bounds if isinstance(bounds, Box) else Box.from_shape(volume.shape)


def decide(
    task: Any, segmentation: Any, ground_truth: Any, model: ProofreaderModel | None = None
) -> Decision:
    """The correct answer to ``task`` (a :class:`~connectomix.flag.tasks.Task`) given ``ground_truth``.

    ``segmentation`` is the current segmentation and ``ground_truth`` the true labels, each a
    :class:`~connectomix.volume.Volume` (or anything with ``shape`` and ``read(box)`` of global (z, y, x)
    boxes) or a (z, y, x) array, of one shape; only a window of :data:`WINDOW_HALF_XYZ` around the task's
    point is read. The error rate is not applied here (see :func:`simulate`).
    """
    model = model or ProofreaderModel()
    seg_volume = _as_volume(segmentation)
    gt_volume = _as_volume(ground_truth)
    if tuple(seg_volume.shape) != tuple(gt_volume.shape):
        raise InputError(
            f"segmentation shape {tuple(seg_volume.shape)} and ground truth shape "
            f"{tuple(gt_volume.shape)} (z, y, x) differ; expected one grid"
        )
    seg_bounds, gt_bounds = _bounds(seg_volume), _bounds(gt_volume)
    box = _window(task.point_xyz, seg_bounds)
    ids_of_task = tuple(int(i) for i in task.segment_ids)
    if box.empty:
        return Decision("correct", ids_of_task, reason="the task's point lies outside the volume")
    seg = np.asarray(seg_volume.read(box))
    shift = tuple(g - s for g, s in zip(gt_bounds.start, seg_bounds.start, strict=True))
    gt = np.asarray(gt_volume.read(box.translate(shift)))
    start_zyx = tuple(box.start)

    def id_at(point: Sequence[int]) -> int:
        x, y, z = (int(v) for v in point)
        zyx = (z - start_zyx[0], y - start_zyx[1], x - start_zyx[2])
        if any(c < 0 or c >= s for c, s in zip(zyx, seg.shape, strict=True)):
            return 0
        return int(seg[zyx])

    if task.kind == "merge":
        points = [tuple(int(v) for v in p) for p in task.evidence.get("points_xyz", [])]
        if len(points) == 2:
            ids = [id_at(p) for p in points]  # what the task's two points show now
        else:
            points = []
            ids = [i if np.any(seg == i) else 0 for i in ids_of_task[:2]]
        if len(ids) != 2 or 0 in ids:
            return Decision("correct", tuple(ids), reason="a segment of the task is no longer there")
        if ids[0] == ids[1]:
            return Decision("correct", tuple(ids), reason="the two segments are no longer separate")
        body_a, frac_a, _ = _majority(gt, seg == ids[0])
        body_b, frac_b, _ = _majority(gt, seg == ids[1])
        if body_a != 0 and body_a == body_b and min(frac_a, frac_b) >= model.majority:
            return Decision(
                "merge",
                (ids[0], ids[1]),
                points_xyz=tuple(points),  # type: ignore[arg-type]
                reason=f"both mostly body {body_a}",
            )
        return Decision("correct", (ids[0], ids[1]), reason=f"bodies {body_a} and {body_b} differ")
    if task.kind == "split":
        # The task's segment if it is still there, else whatever the task's point shows now.
        segment = ids_of_task[0] if ids_of_task and np.any(seg == ids_of_task[0]) else id_at(task.point_xyz)
        if segment == 0:
            return Decision("correct", (), reason="no segment at the task's point")
        mask = seg == segment
        labels = gt[mask]
        labels = labels[labels != 0]
        if labels.size == 0:
            return Decision("correct", (segment,), reason="no ground truth under the segment")
        body_ids, body_counts = np.unique(labels, return_counts=True)
        order = np.argsort(-body_counts, kind="stable")
        big = [
            int(body_ids[i])
            for i in order[:2]
            if body_counts[i] >= model.min_split_fraction * labels.size
            and body_counts[i] >= model.min_split_voxels
        ]
        if len(big) < 2:
            return Decision("correct", (segment,), reason="one ground-truth body")
        source = _deepest_point(mask & (gt == big[0]), start_zyx)
        sink = _deepest_point(mask & (gt == big[1]), start_zyx)
        return Decision(
            "split",
            (segment,),
            sources_xyz=(source,),
            sinks_xyz=(sink,),
            reason=f"bodies {big[0]} and {big[1]}",
        )
    if task.kind == "unassigned" and model.gap_reach > 0:
        return _across_gap(task, seg, gt, start_zyx, model)
    return Decision("correct", ids_of_task, reason=f"{task.kind} task")


def _across_gap(
    task: Any, seg: np.ndarray, gt: np.ndarray, start_zyx: Sequence[int], model: ProofreaderModel
) -> Decision:
    """An unassigned task: merge the two largest segments near the point that are one ground-truth body."""
    x, y, z = (int(v) for v in task.point_xyz)
    centre = np.array([z, y, x]) - np.asarray(start_zyx)
    near = tuple(slice(max(0, int(c) - model.gap_reach), int(c) + model.gap_reach + 1) for c in centre)
    ids, counts = np.unique(seg[near], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    by_body: dict[int, list[int]] = {}
    for i in order:
        segment = int(ids[i])
        if segment == 0:
            continue
        body, fraction, _ = _majority(gt, seg == segment)
        if body != 0 and fraction >= model.majority:
            by_body.setdefault(body, []).append(segment)
    pairs = [(body, segs[:2]) for body, segs in by_body.items() if len(segs) >= 2]
    if not pairs:
        if model.paint_unassigned and by_body:
            return _paint(seg, gt, start_zyx, by_body)
        return Decision("correct", (), reason="no ground-truth body on both sides of the gap")
    body, (a, b) = pairs[0]
    points = []
    for segment in (a, b):  # the voxel of each segment nearest the task's point
        coords = np.argwhere(seg == segment)
        nearest = coords[int(np.argmin(((coords - centre) ** 2).sum(axis=1)))]
        points.append(tuple(int(v) for v in (nearest + np.asarray(start_zyx))[::-1]))
    return Decision(
        "merge",
        (a, b),
        points_xyz=tuple(points),
        reason=f"both sides of the gap are body {body}",  # type: ignore[arg-type]
    )


def _paint(
    seg: np.ndarray, gt: np.ndarray, start_zyx: Sequence[int], by_body: dict[int, list[int]]
) -> Decision:
    """Paint the unassigned voxels of the largest nearby segment's body that touch it (26-connected)."""
    body, segments = next(iter(by_body.items()))
    segment = segments[0]
    candidate = (seg == 0) & (gt == body)
    pieces, _ = ndimage.label(candidate | (seg == segment), structure=np.ones((3, 3, 3), bool))
    touching = np.unique(pieces[seg == segment])
    mask = candidate & np.isin(pieces, touching[touching != 0])
    if not mask.any():
        return Decision("correct", (segment,), reason=f"no unassigned voxel of body {body} beside it")
    box = Box.from_shape(seg.shape, tuple(int(v) for v in start_zyx))
    return Decision(
        "paint",
        (segment,),
        reason=f"{int(mask.sum())} unassigned voxels of body {body}",
        paint_box=box,
        paint_mask=mask,
    )


def _flip(decision: Decision) -> Decision:
    """The mistaken answer: an edit is not made; a 'correct' merge task is merged anyway."""
    if decision.action in ("merge", "split", "paint"):
        return Decision("correct", decision.segment_ids, reason="mistake: missed", flipped=True)
    ids = decision.segment_ids
    if len(ids) == 2 and 0 not in ids and ids[0] != ids[1]:
        return Decision("merge", ids, reason="mistake: false merge", flipped=True)
    return decision


def _as_volume(data: Any) -> Any:
    if hasattr(data, "read") and hasattr(data, "shape"):
        return data
    from connectomix.volume import ArrayVolume

    return ArrayVolume(np.asarray(data))


class _CurrentVersion:
    """The edit log's current version as a read-only source for :func:`decide` (read straight from the
    log, never from the chunk cache, so every read sees the edits made so far)."""

    def __init__(self, edit_log: Any) -> None:
        self.log = edit_log

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.log.grid.shape
        return (int(z), int(y), int(x))

    @property
    def bounds(self) -> Box:
        bounds: Box = self.log.grid.bounds
        return bounds

    def read(self, box: Box) -> np.ndarray:
        return np.asarray(self.log.read(box))


def _version(edit_log: Any) -> int | None:
    version = getattr(edit_log, "version", None)
    return int(version) if isinstance(version, int | np.integer) else None


# -- the simulation -----------------------------------------------------------------------------------------
@dataclass
class _InFlight:
    claimed: Any  # QueuedTask
    claimed_at: float
    seconds: float
    draw: float  # uniform in [0, 1): the answer is flipped when below the error rate


def simulate(
    queue: Any,
    edit_log: Any,
    ground_truth: Any,
    *,
    users: int = 1,
    model: ProofreaderModel | None = None,
    max_tasks: int | None = None,
    clock: SimulatedClock | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SimulationReport:
    """Work ``queue`` with ``users`` simulated proofreaders until it is empty or ``max_tasks`` are done.

    Each proofreader (``sim1`` … ``simN``) claims a task as soon as they are free and completes it
    ``seconds_per_task`` (jittered) simulated seconds later, all in parallel, in order of simulated time.
    On completion the task is judged with :func:`decide` against ``ground_truth`` on the edit log's current
    version, possibly flipped (``model.error_rate``), edited through ``edit_log`` (merge / split, as that
    user) and completed in the queue with the decision as its result. An edit the log refuses (e.g. a seed
    that no longer lies in the segment) completes the task as correct. ``clock``: the :class:`SimulatedClock`
    the queue reads (default: the queue's own clock when it is one); without one, the queue keeps its own
    time and only the report's ``simulated_seconds`` is simulated. At most ``max_tasks`` tasks are claimed.
    ``ground_truth``: a Volume or (z, y, x) array of the edit log's shape. Deterministic given ``seed``.
    """
    model = model or ProofreaderModel()
    if isinstance(users, bool) or not isinstance(users, int | np.integer) or users < 1:
        raise InputError(f"users must be an integer >= 1, got {users!r}")
    if max_tasks is not None and (isinstance(max_tasks, bool) or max_tasks < 0):
        raise InputError(f"max_tasks must be an integer >= 0 or None, got {max_tasks!r}")
    if clock is None and isinstance(getattr(queue, "clock", None), SimulatedClock):
        clock = queue.clock
    gt_volume = _as_volume(ground_truth)
    current = _CurrentVersion(edit_log) if hasattr(edit_log, "grid") else None
    if current is not None and tuple(current.shape) != tuple(gt_volume.shape):
        raise InputError(
            f"ground truth shape {tuple(gt_volume.shape)} does not match the edit log's "
            f"{tuple(current.shape)} (z, y, x)"
        )
    report = SimulationReport(users=int(users), start_version=_version(edit_log))
    start = clock() if clock is not None else 0.0
    steps = _work(queue, edit_log, current, gt_volume, report, int(users), model, max_tasks, clock, seed)
    total = None
    if progress:
        depth = getattr(queue, "depth", None)
        total = depth() if callable(depth) else None
        total = total if max_tasks is None or total is None else min(total, max_tasks)
    end = start
    for moment in track(steps, "simulated proofreading", total, progress):
        end = moment
    report.simulated_seconds = float(end - start)
    report.end_version = _version(edit_log)
    return report


def _work(
    queue: Any,
    edit_log: Any,
    current: _CurrentVersion | None,
    gt_volume: Any,
    report: SimulationReport,
    users: int,
    model: ProofreaderModel,
    max_tasks: int | None,
    clock: SimulatedClock | None,
    seed: int,
) -> Iterator[float]:
    """The event loop of :func:`simulate`; yields the simulated time after each completed task (and once
    at the end)."""
    rng = np.random.default_rng(seed)
    now = clock() if clock is not None else 0.0
    names = [f"sim{i + 1}" for i in range(users)]
    # (time, order, event, user): "claim" when a proofreader is free, "done" when they finish a task.
    events: list[tuple[float, int, str, str]] = [(now, i, "claim", name) for i, name in enumerate(names)]
    order = len(events)
    in_flight: dict[str, _InFlight] = {}
    claims = 0
    base_lease = float(getattr(queue, "lease_seconds", 600.0))
    while events:
        at, _, event, user = heapq.heappop(events)
        now = max(now, at)
        if clock is not None:
            clock.now = max(clock.now, now)
        if event == "claim":
            if max_tasks is not None and claims >= max_tasks:
                continue
            # Two draws per claim, whatever the error rate, so runs differing only in error_rate (or
            # jitter) see the same stream of durations and the same tasks flipped as the rate grows.
            factor = math.exp(model.jitter * float(rng.standard_normal()))
            draw = float(rng.random())
            seconds = model.seconds_per_task * factor
            # A lease that outlasts the work, so the completion is never refused for lateness.
            claimed = queue.claim(user, lease_seconds=max(base_lease, 2.0 * seconds + 60.0))
            if claimed is None:
                continue  # nothing left for this proofreader: they stop
            claims += 1
            in_flight[user] = _InFlight(claimed, now, seconds, draw)
            heapq.heappush(events, (now + seconds, order, "done", user))
            order += 1
            continue
        work = in_flight.pop(user)
        if _finish(queue, edit_log, current, gt_volume, report, model, user, work):
            yield now
        heapq.heappush(events, (now, order, "claim", user))
        order += 1
    yield now


def _finish(
    queue: Any,
    edit_log: Any,
    current: _CurrentVersion | None,
    gt_volume: Any,
    report: SimulationReport,
    model: ProofreaderModel,
    user: str,
    work: _InFlight,
) -> bool:
    """Judge, edit and complete one claimed task; False if the queue refused the completion."""
    claimed = work.claimed
    try:
        task = claimed.task
    except InputError as exc:
        decision = Decision("correct", reason=f"unreadable task: {exc}")
    else:
        if current is not None:
            decision = decide(task, current, gt_volume, model)
        else:
            from connectomix.volume import open_volume

            volume = open_volume(edit_log.current_url)
            try:
                decision = decide(task, volume, gt_volume, model)
            finally:
                volume.invalidate_cache()  # the next edit rewrites the file under the same URL
    if work.draw < model.error_rate:
        decision = _flip(decision)
    result: dict[str, Any] = {"action": decision.action}
    try:
        if decision.action == "merge":
            a, b = decision.segment_ids
            edit = edit_log.merge(a, b, user=user, points_xyz=list(decision.points_xyz))
        elif decision.action == "split":
            edit = edit_log.split(
                decision.segment_ids[0], list(decision.sources_xyz), list(decision.sinks_xyz), user=user
            )
        elif decision.action == "paint":
            assert decision.paint_box is not None and decision.paint_mask is not None
            edit = edit_log.paint(
                decision.segment_ids[0], decision.paint_box, decision.paint_mask, user=user,
                point_xyz=task.point_xyz,
            )  # fmt: skip
        else:
            edit = None
    except (InputError, ConflictError, NotFoundError) as exc:
        # The edit was not possible as judged: complete the task as correct and move on, as a person would.
        decision = Decision("correct", decision.segment_ids, reason=f"edit refused: {exc}")
        result = {"action": "correct"}
        edit = None
    if edit is not None:
        result.update(edit_id=int(edit.id), version=int(edit.version), new_ids=[str(i) for i in edit.new_ids])
    result.update(
        reason=decision.reason,
        segment_ids=[str(i) for i in decision.segment_ids],
        flipped=decision.flipped,
        seconds=work.seconds,
        simulated=True,
    )
    try:
        queue.complete(claimed.id, user, result)
    except ConflictError:
        report.conflicts += 1
        return False
    report.tasks += 1
    report.edits += int(edit is not None)
    report.actions[decision.action] += 1
    report.flipped += int(decision.flipped)
    report.per_user[user] += 1
    report.decisions.append({"task": claimed.key, "kind": claimed.kind, "user": user, **result})
    return True


__all__ = ["Decision", "ProofreaderModel", "SimulatedClock", "SimulationReport", "decide", "simulate"]
