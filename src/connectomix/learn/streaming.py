"""Streaming mode: learn in a background worker while proofreaders complete tasks.

:class:`StreamingLearner` polls the task queue (:meth:`~connectomix.proofread.queue.TaskQueue.completions`,
an event-id cursor, so no completion is missed or seen twice) and, once ``min_tasks`` new tasks are done,
turns them into correction patches (:func:`~connectomix.learn.patches.patches_from_tasks` on the edit log's
current version), fits the adapter further (:meth:`ContinualLearner.fit`), registers it as a candidate of
the served base with its lineage (the edit ids and task keys it was trained on, the previous adapter as
parent) and gates it on the validation region. The patches then join the replay buffer, so later rounds
keep rehearsing them.

For every task it records the *edit-to-promoted latency*: wall seconds from the task's completion (the
queue's ``completed_at``; the queue must run on wall-clock time for this to mean anything) to the moment an
adapter trained on it was promoted. Tasks whose adapter was rejected wait for the next promoted one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectomix.errors import InputError
from connectomix.learn.continual import ContinualLearner, FitResult
from connectomix.learn.patches import patches_from_tasks
from connectomix.learn.registry import Entry, GateResult, WeightsRegistry
from connectomix.segment.models import FFNModel


@dataclass
class StreamRound:
    """One round of the worker: the tasks it took, the fit, the registry entry and the gate's verdict."""

    tasks: list[str]
    patches: int
    fit: dict[str, Any]
    entry_id: int
    promoted: bool
    scores: dict[str, float | None]
    started: float
    finished: float


@dataclass
class StreamReport:
    """What the worker has done so far. ``latencies_s`` maps task key → seconds from completion to the
    promotion of an adapter trained on it; ``pending`` are tasks trained on but not yet in a promoted one."""

    rounds: list[StreamRound] = field(default_factory=list)
    latencies_s: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    tasks_seen: int = 0
    errors: list[str] = field(default_factory=list)


class StreamingLearner:
    """A background worker that fits, registers and gates adapters as tasks complete.

    Parameters
    ----------
    queue, edit_log, raw
        The task queue, the edit log its tasks are edited in, and the EM image (a volume or (z, y, x) array of
        the edit log's shape).
    learner
        The :class:`ContinualLearner` (its base must be the registry's ``base`` entry).
    registry, base
        Where adapters are registered, and the base entry they belong to.
    evaluate, region
        ``evaluate(model) -> float`` (lower is better, e.g. VI on a held-out validated region) and the
        region's description, for :meth:`WeightsRegistry.gate`.
    min_tasks, poll_seconds, epochs
        Tasks per round, the polling interval (seconds) and epochs per fit.
    shape_zyx
        Size of the correction patches (default :func:`~connectomix.learn.patches.patch_shape`).
    """

    def __init__(
        self,
        queue: Any,
        edit_log: Any,
        raw: Any,
        learner: ContinualLearner,
        registry: WeightsRegistry,
        base: Entry,
        evaluate: Callable[[FFNModel], float],
        *,
        region: str | dict[str, Any],
        min_tasks: int = 10,
        poll_seconds: float = 1.0,
        epochs: int = 3,
        min_improvement: float = 0.0,
        shape_zyx: tuple[int, int, int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min_tasks < 1:
            raise InputError(f"min_tasks must be >= 1, got {min_tasks}")
        if not poll_seconds > 0:
            raise InputError(f"poll_seconds must be > 0, got {poll_seconds}")
        if base.kind != "base":
            raise InputError(f"{base.label} is not a base model entry")
        self.queue, self.edit_log, self.raw = queue, edit_log, raw
        self.learner, self.registry, self.base = learner, registry, base
        self.evaluate, self.region = evaluate, region
        self.min_tasks, self.poll_seconds, self.epochs = int(min_tasks), float(poll_seconds), int(epochs)
        self.min_improvement = float(min_improvement)
        self.clock = clock
        self.shape_zyx = shape_zyx
        self.report = StreamReport()
        self._cursor = 0
        self._waiting: list[Any] = []
        self._parent: Entry | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.idle = threading.Event()

    # -- control ----------------------------------------------------------------------------------------
    def start(self) -> StreamingLearner:
        """Start the worker thread (once)."""
        if self._thread is not None:
            raise InputError("the streaming learner is already running")
        self._thread = threading.Thread(target=self._run, name="cx-streaming-learner", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> StreamReport:
        """Ask the worker to stop after its current round, wait for it and return the report."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.report

    def __enter__(self) -> StreamingLearner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_once(self, *, force: bool = False) -> StreamRound | None:
        """Poll once and, with ``min_tasks`` new completions (or any, with ``force``), run a round."""
        self._poll()
        if not self._waiting or (len(self._waiting) < self.min_tasks and not force):
            return None
        batch, self._waiting = self._waiting, []
        return self._round(batch)

    # -- the worker -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.run_once()
            except Exception as exc:  # kept for the report; the worker goes on with the next completions
                self.report.errors.append(f"{type(exc).__name__}: {exc}")
                done = None
            if done is None:
                self.idle.set()
                self._stop.wait(self.poll_seconds)
            else:
                self.idle.clear()

    def _poll(self) -> None:
        new = self.queue.completions(self._cursor)
        if new:
            self._cursor = new[-1][0]
            self._waiting.extend(task for _, task in new)
            self.report.tasks_seen += len(new)

    def _round(self, tasks: list[Any]) -> StreamRound | None:
        started = self.clock()
        patches = patches_from_tasks(
            tasks, self.edit_log, self.raw, self.learner.config, shape_zyx=self.shape_zyx
        )
        for task in tasks:
            if task.completed_at is not None:
                self.report.pending[task.key] = float(task.completed_at)
        if not patches:
            return None
        fit: FitResult = self.learner.fit(patches, epochs=self.epochs)
        entry = self.registry.add_adapter(
            fit.adapter,
            base=self.base,
            trained_on_edits=fit.edits,
            trained_on_tasks=fit.tasks,
            parents=[self._parent] if self._parent is not None else [],
            metadata={"streaming": True, "fit": fit.to_dict()},
        )
        self._parent = entry
        gate: GateResult = self.registry.gate(
            entry, self.evaluate, region=self.region, min_improvement=self.min_improvement
        )
        self.learner.replay.extend(patches)
        finished = self.clock()
        if gate.promoted:
            for key, completed in list(self.report.pending.items()):
                self.report.latencies_s[key] = finished - completed
                del self.report.pending[key]
        round_ = StreamRound(
            tasks=[t.key for t in tasks],
            patches=len(patches),
            fit=fit.to_dict(),
            entry_id=entry.id,
            promoted=bool(gate.promoted),
            scores={"candidate": gate.score, "served": gate.baseline_score},
            started=started,
            finished=finished,
        )
        with self._lock:
            self.report.rounds.append(round_)
        return round_


__all__ = ["StreamReport", "StreamRound", "StreamingLearner"]
