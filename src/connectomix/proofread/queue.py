"""The proofreading task queue: flagged tasks wait here until a proofreader claims, finishes or skips them.

A proofreader *claims* the most urgent task (highest priority, then oldest) and holds it under a *lease*
for ``lease_seconds``; :meth:`TaskQueue.heartbeat` extends the lease while they work and
:meth:`TaskQueue.complete` stores their result. A lease that runs out puts the task back: the next claim by
anyone takes it over (an ``expired`` event records whose lease it was), and the old holder's late
``complete`` is refused with :class:`~connectomix.errors.ConflictError`. A skipped task is never offered
to the same proofreader again but goes back to the others, until ``max_skips`` different people have
skipped it; then it is set aside for good (state ``skipped``).

Every change is one transaction, safe across processes and machines: on PostgreSQL a claim locks its row
with ``SELECT … FOR UPDATE SKIP LOCKED`` (concurrent claimers take different tasks without waiting on each
other); on SQLite the transaction holds the database's write lock from its start (``BEGIN IMMEDIATE``).
Completing, heartbeating and skipping are conditional updates (``WHERE state = 'claimed' AND claimed_by =
:user AND lease_expires >= :now``), so a task is completed at most once, by the holder of a live lease.

Every step is written to an append-only event log (``enqueued``, ``claimed``, ``heartbeat``, ``completed``,
``skipped``, ``expired``, ``released``) that gives each proofreader's history and the audit trail. All times
are unix seconds from the queue's ``clock`` (injectable, so tests and simulations can move time).

Tables (schema component ``queue``): ``queue_tasks``, ``queue_events``, ``queue_skips``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from connectomix.errors import ConflictError, InputError, NotFoundError
from connectomix.proofread.db import Database, open_database

if TYPE_CHECKING:
    from connectomix.flag.tasks import Task

TaskState = Literal["queued", "claimed", "done", "skipped"]
EventKind = Literal["enqueued", "claimed", "heartbeat", "completed", "skipped", "expired", "released"]

#: Longest task key, proofreader name and task kind the tables hold (characters).
KEY_LENGTH, USER_LENGTH, KIND_LENGTH = 200, 200, 32

_metadata = sa.MetaData()

TASKS = sa.Table(
    "queue_tasks",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(KEY_LENGTH), nullable=False, unique=True),
    sa.Column("kind", sa.String(KIND_LENGTH), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON: Task.to_dict()
    sa.Column("priority", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_by", sa.String(USER_LENGTH)),
    sa.Column("lease_seconds", sa.Float),  # length of the current lease; heartbeats renew by this much
    sa.Column("lease_expires", sa.Float),
    sa.Column("enqueued_at", sa.Float, nullable=False),
    sa.Column("first_claimed_at", sa.Float),
    sa.Column("claimed_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("result", sa.Text),  # JSON
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # The claim query: WHERE state = 'queued' ORDER BY priority DESC, enqueued_at, id LIMIT 1.
    sa.Index("ix_queue_tasks_claim", "state", sa.desc("priority"), "enqueued_at", "id"),
    # The lease sweep: WHERE state = 'claimed' AND lease_expires < now.
    sa.Index("ix_queue_tasks_lease", "state", "lease_expires"),
)

EVENTS = sa.Table(
    "queue_events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("queue_tasks.id"), nullable=False),
    sa.Column("user", sa.String(USER_LENGTH)),  # None for enqueued
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("lease_expires", sa.Float),  # the lease granted (claimed, heartbeat) or that ran out (expired)
    sa.Index("ix_queue_events_task", "task_id", "id"),
    sa.Index("ix_queue_events_user", "user", "at"),
)

SKIPS = sa.Table(
    "queue_skips",
    _metadata,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("queue_tasks.id"), primary_key=True),
    sa.Column("user", sa.String(USER_LENGTH), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
)


def _migration_1(connection: Connection) -> None:
    for table in (TASKS, EVENTS, SKIPS):
        table.create(connection)


MIGRATIONS = [_migration_1]


@runtime_checkable
class TaskLike(Protocol):
    """What the queue needs of a task (:class:`connectomix.flag.tasks.Task` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def score(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class QueuedTask:
    """A task as the queue holds it. Times are unix seconds; ``payload`` is the task's ``to_dict()``."""

    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    priority: float
    state: TaskState
    claimed_by: str | None
    lease_expires: float | None
    enqueued_at: float
    first_claimed_at: float | None
    claimed_at: float | None
    completed_at: float | None
    result: dict[str, Any] | None
    attempts: int

    @functools.cached_property
    def task(self) -> Task:
        """The flagged task, rebuilt from ``payload`` (:meth:`connectomix.flag.tasks.Task.from_dict`)."""
        from connectomix.flag.tasks import Task

        return Task.from_dict(self.payload)


@dataclass(frozen=True)
class TaskEvent:
    """One line of the queue's event log (``user`` is None for ``enqueued``)."""

    id: int
    task_id: int
    user: str | None
    event: EventKind
    at: float
    lease_expires: float | None


@dataclass(frozen=True)
class QueueStats:
    """Counts by state and, over done tasks, percentiles of waits and handling times (seconds)."""

    depth: int  # queued, including claimed tasks whose lease has run out
    claimed: int  # held under a live lease
    done: int
    skipped: int
    wait_p50_s: float | None  # enqueue -> first claim
    wait_p95_s: float | None
    handling_p50_s: float | None  # (last) claim -> complete
    handling_p95_s: float | None


class TaskQueue:
    """The task queue in a workspace database (a :class:`Database`, a URL, a SQLite path, or None for the
    configured one). ``lease_seconds`` is the default lease; ``clock`` returns unix seconds; a task skipped
    by ``max_skips`` different proofreaders is set aside for good.

    ``aging_per_hour`` (default 0: strict priority) adds that much priority per hour a task has waited, so
    low-priority tasks are not starved by a steady stream of urgent ones: a claim takes the task with the
    highest ``priority + aging_per_hour * hours_waited``. Strict priority uses an index; with aging a claim
    ranks every queued task (fine for the thousands of tasks backpressure keeps; see
    :func:`backpressure_fraction`)."""

    def __init__(
        self,
        db: Database | str | Path | None = None,
        *,
        lease_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
        max_skips: int = 3,
        aging_per_hour: float = 0.0,
    ) -> None:
        _check_lease(lease_seconds)
        if not (math.isfinite(aging_per_hour) and aging_per_hour >= 0):
            raise InputError(f"aging_per_hour must be a number >= 0, got {aging_per_hour}")
        if max_skips < 1:
            raise InputError(f"max_skips must be at least 1, got {max_skips}")
        self.db = open_database(db)
        self.lease_seconds = float(lease_seconds)
        self.clock = clock
        self.max_skips = int(max_skips)
        self.aging_per_hour = float(aging_per_hour)
        self._statements = _Statements(locking=self.db.dialect == "postgresql", aging=self.aging_per_hour)
        self.db.ensure_schema("queue", MIGRATIONS)

    # -- adding ---------------------------------------------------------------------------------------
    def enqueue(self, task: TaskLike, *, priority: float | None = None) -> bool:
        """Add ``task`` unless a task with its key is already queued (in any state); True if it was new.
        ``priority`` defaults to ``task.score`` (higher is claimed first)."""
        return self.enqueue_many([task], priority=priority) == 1

    def enqueue_many(self, tasks: Iterable[TaskLike], *, priority: float | None = None) -> int:
        """Add every task whose key is not in the queue yet (one transaction); returns how many were new."""
        rows: dict[str, dict[str, Any]] = {}
        for task in tasks:
            row = _task_row(task, priority)
            rows.setdefault(row["key"], row)
        if not rows:
            return 0
        insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        new = 0
        with self.db.begin() as connection:
            now = self.clock()
            # In key order, so concurrent enqueuers of overlapping batches lock keys in the same order
            # (PostgreSQL would otherwise deadlock them on each other's uncommitted keys).
            batch = [{**rows[k], "state": "queued", "enqueued_at": now, "attempts": 0} for k in sorted(rows)]
            for start in range(0, len(batch), 500):
                statement = insert(TASKS).on_conflict_do_nothing(index_elements=["key"]).returning(TASKS.c.id)
                ids = [row.id for row in connection.execute(statement, batch[start : start + 500])]
                if ids:
                    connection.execute(
                        EVENTS.insert(),
                        [{"task_id": i, "user": None, "event": "enqueued", "at": now} for i in ids],
                    )
                new += len(ids)
        return new

    # -- working on tasks -----------------------------------------------------------------------------
    def claim(self, user: str, *, lease_seconds: float | None = None) -> QueuedTask | None:
        """The most urgent task ``user`` has not skipped, now held by ``user`` until the lease runs out;
        None when nothing is waiting. Tasks whose lease ran out are taken over (an ``expired`` event)."""
        _check_user(user)
        lease = self.lease_seconds if lease_seconds is None else _check_lease(lease_seconds)
        statements = self._statements
        with self.db.begin() as connection:
            now = self.clock()
            self._expire_leases(connection, now)
            task_id = connection.execute(statements.next_task, {"user": user, "now": now}).scalar()
            if task_id is None:
                return None
            expires = now + lease
            values = {"task_id": task_id, "user": user, "lease": lease, "expires": expires, "now": now}
            row = connection.execute(statements.claim, values).one()
            _log(connection, task_id, user, "claimed", now, expires)
        return _queued_task(row)

    def heartbeat(self, task_id: int, user: str) -> float:
        """Renew ``user``'s lease on the task by its length; returns the new expiry (unix seconds)."""
        with self.db.begin() as connection:
            now = self.clock()
            row = self._if_held(connection, self._statements.heartbeat, task_id, user, now)
            _log(connection, task_id, user, "heartbeat", now, row.lease_expires)
        return float(row.lease_expires)

    def complete(self, task_id: int, user: str, result: Mapping[str, Any]) -> QueuedTask:
        """Finish the task ``user`` holds, storing ``result`` (JSON-able). A task completes once only."""
        try:
            text = json.dumps(dict(result), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"result of task {task_id} must be a JSON-able mapping: {exc}") from exc
        with self.db.begin() as connection:
            now = self.clock()
            row = self._if_held(connection, self._statements.complete, task_id, user, now, result_json=text)
            _log(connection, task_id, user, "completed", now)
        return _queued_task(row)

    def skip(self, task_id: int, user: str) -> QueuedTask:
        """Give the task back without doing it. It is never offered to ``user`` again; it goes back to
        the others, or is set aside for good (state ``skipped``) once ``max_skips`` people skipped it."""
        with self.db.begin() as connection:
            now = self.clock()
            self._if_held(connection, self._statements.held, task_id, user, now)  # locks; changes nothing
            skip_row = {"task_id": task_id, "user": user, "at": now}
            insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
            connection.execute(insert(SKIPS).values(skip_row).on_conflict_do_nothing())
            skippers = connection.execute(
                sa.select(sa.func.count()).select_from(SKIPS).where(SKIPS.c.task_id == task_id)
            ).scalar_one()
            state = "skipped" if skippers >= self.max_skips else "queued"
            row = connection.execute(
                TASKS.update()
                .where(TASKS.c.id == task_id)
                .values(state=state, claimed_by=None, lease_expires=None)
                .returning(*TASKS.c)
            ).one()
            _log(connection, task_id, user, "skipped", now)
        return _queued_task(row)

    def release(self, task_id: int, user: str) -> QueuedTask:
        """Give the task back untouched (e.g. the proofreader logs out): queued again for everyone."""
        with self.db.begin() as connection:
            now = self.clock()
            row = self._if_held(connection, self._statements.release, task_id, user, now)
            _log(connection, task_id, user, "released", now)
        return _queued_task(row)

    # -- reading --------------------------------------------------------------------------------------
    def get(self, task_id: int) -> QueuedTask:
        """The task with this id; :class:`NotFoundError` if there is none."""
        with self.db.engine.connect() as connection:
            row = connection.execute(sa.select(TASKS).where(TASKS.c.id == task_id)).first()
        if row is None:
            raise NotFoundError(f"no task {task_id} in the queue")
        return _queued_task(row)

    def get_by_key(self, key: str) -> QueuedTask:
        """The task with this key; :class:`NotFoundError` if there is none."""
        with self.db.engine.connect() as connection:
            row = connection.execute(sa.select(TASKS).where(TASKS.c.key == key)).first()
        if row is None:
            raise NotFoundError(f"no task with key {key!r} in the queue")
        return _queued_task(row)

    def history(self, user: str, *, limit: int = 100) -> list[QueuedTask]:
        """The tasks ``user`` has claimed, most recently claimed first (each task once, as it is now)."""
        last = sa.func.max(EVENTS.c.at).label("last")
        touched = (
            sa.select(EVENTS.c.task_id, last)
            .where(EVENTS.c.user == user, EVENTS.c.event == "claimed")
            .group_by(EVENTS.c.task_id)
            .subquery()
        )
        query = (
            sa.select(TASKS)
            .join(touched, touched.c.task_id == TASKS.c.id)
            .order_by(touched.c.last.desc(), TASKS.c.id.desc())
            .limit(limit)
        )
        with self.db.engine.connect() as connection:
            return [_queued_task(row) for row in connection.execute(query)]

    def events(self, task_id: int | None = None, *, user: str | None = None) -> list[TaskEvent]:
        """The event log in order, for one task and/or one user (everything when both are None)."""
        query = sa.select(EVENTS).order_by(EVENTS.c.id)
        if task_id is not None:
            query = query.where(EVENTS.c.task_id == task_id)
        if user is not None:
            query = query.where(EVENTS.c.user == user)
        with self.db.engine.connect() as connection:
            return [TaskEvent(**row._asdict()) for row in connection.execute(query)]

    def completions(self, after: int = 0, *, limit: int | None = None) -> list[tuple[int, QueuedTask]]:
        """Tasks completed after the ``completed`` event with id ``after``, oldest first, as
        ``(event_id, task)`` pairs: pass the last event id back as ``after`` to poll for new ones without
        missing or repeating any (event ids only grow)."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InputError(f"after must be an event id >= 0, got {after!r}")
        query = (
            sa.select(EVENTS.c.id.label("event_id"), *TASKS.c)
            .join(TASKS, TASKS.c.id == EVENTS.c.task_id)
            .where(EVENTS.c.event == "completed", EVENTS.c.id > after)
            .order_by(EVENTS.c.id)
        )
        if limit is not None:
            query = query.limit(int(limit))
        with self.db.engine.connect() as connection:
            return [(int(row.event_id), _queued_task(row)) for row in connection.execute(query)]

    def depth(self) -> int:
        """How many tasks wait to be claimed (queued, or claimed under a lease that has run out)."""
        now = self.clock()
        with self.db.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).where(_waiting(now))).scalar_one())

    def stats(self) -> QueueStats:
        """Counts by state and wait / handling-time percentiles over done tasks (seconds)."""
        now = self.clock()
        expired = sa.and_(TASKS.c.state == "claimed", TASKS.c.lease_expires < now)
        state = sa.case((expired, sa.literal("queued")), else_=TASKS.c.state).label("bucket")
        with self.db.engine.connect() as connection:
            grouped = connection.execute(sa.select(state, sa.func.count()).group_by(state))
            counts: dict[str, int] = {str(name): int(n) for name, n in grouped}
            done = sa.select(
                TASKS.c.first_claimed_at - TASKS.c.enqueued_at, TASKS.c.completed_at - TASKS.c.claimed_at
            ).where(TASKS.c.state == "done")
            durations = np.array(connection.execute(done).all(), dtype=np.float64).reshape(-1, 2)
        waits, handling = _percentiles(durations[:, 0]), _percentiles(durations[:, 1])
        return QueueStats(
            depth=int(counts.get("queued", 0)),
            claimed=int(counts.get("claimed", 0)),
            done=int(counts.get("done", 0)),
            skipped=int(counts.get("skipped", 0)),
            wait_p50_s=waits[0],
            wait_p95_s=waits[1],
            handling_p50_s=handling[0],
            handling_p95_s=handling[1],
        )

    def dispose(self) -> None:
        """Close the database's pooled connections."""
        self.db.dispose()

    # -- internals --------------------------------------------------------------------------------------
    def _expire_leases(self, connection: Connection, now: float) -> None:
        """Put tasks whose lease ran out back in the queue, logging an ``expired`` event for the holder."""
        rows = connection.execute(self._statements.expired, {"now": now}).all()
        if not rows:
            return
        connection.execute(
            TASKS.update()
            .where(TASKS.c.id.in_([r.id for r in rows]))
            .values(state="queued", claimed_by=None, lease_expires=None)
        )
        connection.execute(
            EVENTS.insert(),
            [
                {"task_id": r.id, "user": r.claimed_by, "event": "expired", "at": now, "lease_expires": r[2]}
                for r in rows
            ],
        )

    @staticmethod
    def _if_held(
        connection: Connection,
        statement: sa.Executable,
        task_id: int,
        user: str,
        now: float,
        **params: Any,
    ) -> sa.Row[Any]:
        """Run ``statement`` (an update or select of the task under :data:`_HELD`, returning its row) if
        ``user`` holds a live lease on the task; else raise why not. Atomic: the condition is the WHERE."""
        row = connection.execute(statement, {"task_id": task_id, "user": user, "now": now, **params}).first()
        if row is not None:
            return row
        current = connection.execute(sa.select(TASKS).where(TASKS.c.id == task_id)).first()
        raise _not_held(task_id, user, now, current)


# -- the backpressure rule ------------------------------------------------------------------------------
def backpressure_fraction(
    depth: int, *, base_fraction: float = 0.01, limit: int = 1000, min_fraction: float = 1e-4
) -> float:
    """The fraction of most-uncertain voxels that flagging should turn into tasks when ``depth`` tasks wait.

    While the queue holds at most ``limit`` tasks the fraction is ``base_fraction``. Beyond that it shrinks
    in proportion, ``base_fraction * limit / depth`` (never below ``min_fraction``): flagging keeps only the
    most uncertain places (its entropy threshold rises) so new work arrives roughly ``limit / depth`` as
    fast. As proofreaders drain the queue the fraction grows back, and it is ``base_fraction`` again once
    the depth is back at ``limit``. The rule has no memory, so the same depth always gives the same fraction.

    Choosing ``limit``: when flagging offers ``r`` times what the team can do, the queue settles near
    ``r * limit`` tasks, and a task waits about depth / (tasks the team does per hour). So ``limit`` is best
    sized to the team (a fraction of an hour of its work), not fixed; ``bench/task_queue.py`` simulates a day.

    >>> backpressure_fraction(500), backpressure_fraction(2000), backpressure_fraction(10**7)
    (0.01, 0.005, 0.0001)
    """
    if depth < 0:
        raise InputError(f"queue depth must be >= 0, got {depth}")
    if not 0 < base_fraction <= 1:
        raise InputError(f"base_fraction must be in (0, 1], got {base_fraction}")
    if limit < 1:
        raise InputError(f"limit must be at least 1 task, got {limit}")
    if not 0 < min_fraction <= base_fraction:
        raise InputError(f"min_fraction must be in (0, base_fraction={base_fraction}], got {min_fraction}")
    if depth <= limit:
        return float(base_fraction)
    return float(max(min_fraction, base_fraction * limit / depth))


# -- statements -----------------------------------------------------------------------------------------
#: The task :task_id is held by :user under a lease alive at :now.
_HELD = sa.and_(
    TASKS.c.id == sa.bindparam("task_id"),
    TASKS.c.state == "claimed",
    TASKS.c.claimed_by == sa.bindparam("user"),
    TASKS.c.lease_expires >= sa.bindparam("now"),
)
_INSERT_EVENT = EVENTS.insert()


class _Statements:
    """The statements of the hot paths, built once per queue (they differ by dialect and aging)."""

    def __init__(self, *, locking: bool, aging: float) -> None:
        now = sa.bindparam("now", type_=sa.Float)
        rank: sa.ColumnElement[float] = TASKS.c.priority
        if aging:
            rank = TASKS.c.priority + (now - TASKS.c.enqueued_at) * (aging / 3600.0)
        skipped_by_user = sa.exists().where(
            SKIPS.c.task_id == TASKS.c.id, SKIPS.c.user == sa.bindparam("user")
        )
        self.next_task = (
            sa.select(TASKS.c.id)
            .where(TASKS.c.state == "queued", ~skipped_by_user)
            .order_by(rank.desc(), TASKS.c.enqueued_at, TASKS.c.id)
            .limit(1)
        )
        self.claim = (
            TASKS.update()
            .where(TASKS.c.id == sa.bindparam("task_id"), TASKS.c.state == "queued")
            .values(
                state="claimed",
                claimed_by=sa.bindparam("user"),
                lease_seconds=sa.bindparam("lease"),
                lease_expires=sa.bindparam("expires"),
                claimed_at=now,
                first_claimed_at=sa.func.coalesce(TASKS.c.first_claimed_at, now),
                attempts=TASKS.c.attempts + 1,
            )
            .returning(*TASKS.c)
        )
        self.expired = sa.select(TASKS.c.id, TASKS.c.claimed_by, TASKS.c.lease_expires).where(
            TASKS.c.state == "claimed", TASKS.c.lease_expires < now
        )
        self.held = sa.select(TASKS).where(_HELD)
        held = TASKS.update().where(_HELD).returning(*TASKS.c)
        self.heartbeat = held.values(lease_expires=now + TASKS.c.lease_seconds)
        self.complete = held.values(
            state="done", completed_at=now, lease_expires=None, result=sa.bindparam("result_json")
        )
        self.release = held.values(state="queued", claimed_by=None, lease_expires=None)
        if locking:  # PostgreSQL: row locks; SQLite's transaction holds the database's write lock already
            self.next_task = self.next_task.with_for_update(skip_locked=True)
            self.expired = self.expired.order_by(TASKS.c.id).with_for_update(skip_locked=True)
            self.held = self.held.with_for_update()


# -- helpers --------------------------------------------------------------------------------------------
def _waiting(now: float) -> sa.ColumnElement[bool]:
    expired = sa.and_(TASKS.c.state == "claimed", TASKS.c.lease_expires < now)
    return sa.or_(TASKS.c.state == "queued", expired)


def _log(
    connection: Connection,
    task_id: int,
    user: str | None,
    event: EventKind,
    at: float,
    lease_expires: float | None = None,
) -> None:
    values = {"task_id": task_id, "user": user, "event": event, "at": at, "lease_expires": lease_expires}
    connection.execute(_INSERT_EVENT, values)


def _not_held(task_id: int, user: str, now: float, row: sa.Row[Any] | None) -> Exception:
    if row is None:
        return NotFoundError(f"no task {task_id} in the queue")
    if row.state == "done":
        return ConflictError(f"task {task_id} was already completed by {row.claimed_by or 'someone'}")
    if row.state == "skipped":
        return ConflictError(f"task {task_id} was set aside after {row.attempts} attempts (skipped)")
    if row.state == "claimed" and row.claimed_by != user and row.lease_expires >= now:
        return ConflictError(f"task {task_id} is claimed by someone else")
    if row.state == "claimed" and row.claimed_by == user:
        return ConflictError(f"lease on task {task_id} expired {now - row.lease_expires:.1f} s ago")
    return ConflictError(
        f"task {task_id} is not claimed by {user!r} (its lease expired or it was given back)"
    )


def _task_row(task: TaskLike, priority: float | None) -> dict[str, Any]:
    key, kind = getattr(task, "key", None), getattr(task, "kind", None)
    if not isinstance(key, str) or not 0 < len(key) <= KEY_LENGTH:
        raise InputError(f"a task needs a key of 1 to {KEY_LENGTH} characters, got {key!r}")
    if not isinstance(kind, str) or not 0 < len(kind) <= KIND_LENGTH:
        raise InputError(f"task {key}: kind must be a short string, got {kind!r}")
    value = float(task.score if priority is None else priority)
    if not math.isfinite(value):
        raise InputError(f"task {key}: priority must be a finite number, got {value}")
    try:
        payload = json.dumps(task.to_dict(), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"task {key}: to_dict() must give JSON-able data: {exc}") from exc
    return {"key": key, "kind": kind, "payload": payload, "priority": value}


def _queued_task(row: sa.Row[Any]) -> QueuedTask:
    return QueuedTask(
        id=int(row.id),
        key=row.key,
        kind=row.kind,
        payload=json.loads(row.payload),
        priority=float(row.priority),
        state=row.state,
        claimed_by=row.claimed_by,
        lease_expires=row.lease_expires,
        enqueued_at=float(row.enqueued_at),
        first_claimed_at=row.first_claimed_at,
        claimed_at=row.claimed_at,
        completed_at=row.completed_at,
        result=None if row.result is None else json.loads(row.result),
        attempts=int(row.attempts),
    )


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


def _check_user(user: str) -> None:
    if not isinstance(user, str) or not 0 < len(user) <= USER_LENGTH:
        raise InputError(f"a proofreader name must be 1 to {USER_LENGTH} characters, got {user!r}")


def _check_lease(seconds: float) -> float:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise InputError(f"lease_seconds must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


__all__ = [
    "QueueStats",
    "QueuedTask",
    "TaskEvent",
    "TaskLike",
    "TaskQueue",
    "backpressure_fraction",
]
