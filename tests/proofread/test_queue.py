"""The proofreading task queue on SQLite and PostgreSQL: ordering, leases, skips, history, statistics."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from connectomix.errors import ConflictError, InputError, NotFoundError
from connectomix.proofread.db import open_database
from connectomix.proofread.queue import QueueStats, TaskLike, TaskQueue, backpressure_fraction


@dataclass(frozen=True)
class FakeTask:
    """The smallest object the queue accepts (see :class:`TaskLike`)."""

    key: str
    score: float = 1.0
    kind: str = "merge"
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "score": self.score, "evidence": self.evidence}


class Clock:
    """A clock the test moves by hand (unix seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(database_url, clock):
    q = TaskQueue(database_url, lease_seconds=60.0, clock=clock)
    yield q
    q.dispose()


def test_fake_task_is_task_like() -> None:
    assert isinstance(FakeTask("a"), TaskLike)


def test_enqueue_is_idempotent_by_key(queue, clock) -> None:
    assert queue.enqueue(FakeTask("a", score=1.0)) is True
    clock.advance(5)
    assert queue.enqueue(FakeTask("a", score=9.0)) is False  # same key: kept as first enqueued
    assert queue.enqueue_many([FakeTask("b"), FakeTask("a"), FakeTask("c"), FakeTask("b")]) == 2
    assert queue.enqueue_many([]) == 0
    assert queue.depth() == 3
    first = queue.get_by_key("a")
    assert first.priority == 1.0 and first.enqueued_at == clock.now - 5 and first.state == "queued"
    assert first.payload == FakeTask("a", score=1.0).to_dict()
    assert [e.event for e in queue.events(first.id)] == ["enqueued"]
    # Done tasks stay in the table, so flagging the same place again does not bring the task back.
    task = queue.claim("alice")
    queue.complete(task.id, "alice", {"answer": "merge"})
    assert queue.enqueue(FakeTask(task.key)) is False
    assert queue.depth() == 2


def test_claims_follow_priority_then_age(queue, clock) -> None:
    queue.enqueue(FakeTask("low", score=0.1))
    clock.advance(1)
    queue.enqueue_many([FakeTask("high", score=5.0), FakeTask("mid-old", score=1.0)])
    clock.advance(1)
    queue.enqueue(FakeTask("mid-new", score=1.0))
    queue.enqueue(FakeTask("override", score=0.0), priority=3.0)
    order = [queue.claim(f"user{i}").key for i in range(5)]
    assert order == ["high", "override", "mid-old", "mid-new", "low"]
    assert queue.claim("user5") is None
    assert queue.depth() == 0


def test_aging_lets_old_low_priority_tasks_overtake_new_urgent_ones(database_url, clock) -> None:
    queue = TaskQueue(database_url, clock=clock, aging_per_hour=2.0)
    queue.enqueue(FakeTask("old", score=1.0))
    clock.advance(3600)  # "old" now ranks 1 + 2 = 3
    queue.enqueue_many([FakeTask("urgent", score=3.5), FakeTask("new", score=2.5)])
    claimed = [queue.claim(f"user{i}") for i in range(3)]
    assert [task.key for task in claimed] == ["urgent", "old", "new"]
    for i, task in enumerate(claimed):
        queue.complete(task.id, f"user{i}", {})
    strict = TaskQueue(database_url, clock=clock)  # the default: priority only, however long it waited
    strict.enqueue(FakeTask("old2", score=1.0))
    clock.advance(10 * 3600)
    strict.enqueue(FakeTask("new2", score=1.5))
    assert strict.claim("user3").key == "new2"
    with pytest.raises(InputError, match="aging_per_hour"):
        TaskQueue(database_url, aging_per_hour=-1.0)
    queue.dispose()
    strict.dispose()


def test_an_expired_lease_returns_the_task_to_the_queue(queue, clock) -> None:
    queue.enqueue(FakeTask("a"))
    task = queue.claim("alice", lease_seconds=10)
    assert task.state == "claimed" and task.claimed_by == "alice" and task.lease_expires == clock.now + 10
    assert task.attempts == 1 and task.first_claimed_at == task.claimed_at == clock.now
    first_claim = clock.now
    clock.advance(9)
    assert queue.claim("bob") is None  # alice's lease still runs
    assert queue.depth() == 0 and queue.stats().claimed == 1
    clock.advance(2)
    assert queue.depth() == 1 and queue.stats().claimed == 0  # expired: counts as waiting again
    taken = queue.claim("bob")
    assert taken.id == task.id and taken.claimed_by == "bob" and taken.attempts == 2
    assert taken.first_claimed_at == first_claim and taken.claimed_at == clock.now
    with pytest.raises(ConflictError, match="claimed by someone else"):
        queue.complete(task.id, "alice", {"answer": "late"})
    with pytest.raises(ConflictError, match="claimed by someone else"):
        queue.heartbeat(task.id, "alice")
    events = queue.events(task.id)
    assert [(e.event, e.user) for e in events] == [
        ("enqueued", None),
        ("claimed", "alice"),
        ("expired", "alice"),
        ("claimed", "bob"),
    ]
    assert events[2].lease_expires == first_claim + 10 and events[2].at == clock.now
    assert queue.complete(task.id, "bob", {"answer": "merge"}).state == "done"


def test_an_expired_lease_cannot_be_used_even_before_anyone_takes_it_over(queue, clock) -> None:
    queue.enqueue(FakeTask("a"))
    task = queue.claim("alice", lease_seconds=10)
    clock.advance(10.5)
    with pytest.raises(ConflictError, match=r"lease on task \d+ expired"):
        queue.complete(task.id, "alice", {})
    with pytest.raises(ConflictError, match=r"lease on task \d+ expired"):
        queue.heartbeat(task.id, "alice")
    again = queue.claim("alice")  # anyone may take it over, the former holder too
    assert again.id == task.id and again.attempts == 2
    assert queue.complete(task.id, "alice", {}).state == "done"


def test_heartbeat_extends_the_lease_by_its_length(queue, clock) -> None:
    queue.enqueue(FakeTask("a"))
    task = queue.claim("alice", lease_seconds=10)
    clock.advance(8)
    assert queue.heartbeat(task.id, "alice") == clock.now + 10
    clock.advance(8)  # 16 s after the claim: alive only thanks to the heartbeat
    assert queue.claim("bob") is None
    assert queue.get(task.id).lease_expires == clock.now + 2
    done = queue.complete(task.id, "alice", {"answer": "split"})
    assert done.state == "done" and done.result == {"answer": "split"} and done.completed_at == clock.now
    assert [e.event for e in queue.events(task.id)] == ["enqueued", "claimed", "heartbeat", "completed"]


def test_only_the_holder_completes_and_only_once(queue, clock) -> None:
    queue.enqueue_many([FakeTask("a"), FakeTask("b", score=0.5)])
    task = queue.claim("alice")
    with pytest.raises(ConflictError, match="claimed by someone else"):
        queue.complete(task.id, "bob", {"answer": "merge"})
    unclaimed = queue.get_by_key("b")
    with pytest.raises(ConflictError, match="not claimed by 'alice'"):
        queue.complete(unclaimed.id, "alice", {})
    queue.complete(task.id, "alice", {"answer": "merge"})
    with pytest.raises(ConflictError, match="already completed by alice"):
        queue.complete(task.id, "alice", {"answer": "again"})
    with pytest.raises(ConflictError, match="already completed"):
        queue.skip(task.id, "alice")
    assert queue.get(task.id).result == {"answer": "merge"}
    assert [e.event for e in queue.events(task.id)].count("completed") == 1


def test_skipped_tasks_go_to_others_until_enough_people_skipped(database_url, clock) -> None:
    queue = TaskQueue(database_url, clock=clock, max_skips=2)
    queue.enqueue_many([FakeTask("hard", score=2.0), FakeTask("easy", score=1.0)])
    hard = queue.claim("alice")
    with pytest.raises(ConflictError):
        queue.skip(hard.id, "bob")
    assert queue.skip(hard.id, "alice").state == "queued"
    assert queue.claim("alice").key == "easy"  # never offered "hard" again
    assert queue.claim("alice") is None
    assert queue.claim("bob").key == "hard"  # but others get it
    set_aside = queue.skip(hard.id, "bob")
    assert set_aside.state == "skipped" and set_aside.claimed_by is None
    assert queue.claim("carol") is None  # two people skipped it: out of the queue
    stats = queue.stats()
    assert (stats.depth, stats.claimed, stats.done, stats.skipped) == (0, 1, 0, 1)
    queue.dispose()


def test_release_gives_the_task_back_to_everyone(queue) -> None:
    queue.enqueue(FakeTask("a"))
    task = queue.claim("alice")
    released = queue.release(task.id, "alice")
    assert released.state == "queued" and released.claimed_by is None
    assert queue.claim("alice").id == task.id


def test_history_lists_each_users_tasks_most_recent_first(queue, clock) -> None:
    queue.enqueue_many([FakeTask(k, score=s) for k, s in [("a", 4), ("b", 3), ("c", 2), ("d", 1)]])
    for user in ["alice", "bob", "alice"]:
        clock.advance(10)
        task = queue.claim(user)
        clock.advance(5)
        queue.complete(task.id, user, {"by": user})
    clock.advance(10)
    current = queue.claim("alice")
    assert [t.key for t in queue.history("alice")] == ["d", "c", "a"]
    assert [t.state for t in queue.history("alice")] == ["claimed", "done", "done"]
    assert [t.key for t in queue.history("alice", limit=1)] == [current.key]
    assert [t.key for t in queue.history("bob")] == ["b"]
    assert queue.history("nobody") == []


def test_stats_on_a_hand_made_timeline(queue, clock) -> None:
    assert queue.stats() == QueueStats(0, 0, 0, 0, None, None, None, None)
    queue.enqueue_many([FakeTask(f"t{i}", score=10 - i) for i in range(6)])  # t0 first
    waits, handling = [10.0, 20.0, 40.0], [5.0, 15.0, 25.0]
    start = clock.now
    for wait, seconds in zip(waits, handling, strict=True):
        clock.now = start + wait
        task = queue.claim("alice", lease_seconds=100)
        clock.advance(seconds)
        queue.complete(task.id, "alice", {})
    queue.claim("bob", lease_seconds=1)  # t3: its lease will have run out
    clock.advance(2)
    queue.claim("carol", lease_seconds=100)  # takes t3 over (highest priority)
    stats = queue.stats()
    assert (stats.depth, stats.claimed, stats.done, stats.skipped) == (2, 1, 3, 0)
    assert stats.wait_p50_s == pytest.approx(20.0)
    assert stats.wait_p95_s == pytest.approx(np.percentile(waits, 95))  # 38: linear interpolation
    assert stats.handling_p50_s == pytest.approx(15.0)
    assert stats.handling_p95_s == pytest.approx(24.0)
    clock.advance(200)  # carol's lease runs out too
    assert queue.stats().depth == 3 and queue.stats().claimed == 0


def test_backpressure_fraction_rises_and_falls_with_the_queue() -> None:
    depths = [0, 500, 1000, 1500, 2000, 4000, 10**6, 4000, 2000, 1000, 10]
    fractions = [backpressure_fraction(d) for d in depths]
    assert fractions[:3] == [0.01] * 3
    assert fractions[3:7] == pytest.approx([0.01 / 1.5, 0.005, 0.0025, 1e-4])  # floored at min_fraction
    assert fractions[7:] == [0.0025, 0.005, 0.01, 0.01]  # back as it drains
    assert np.all(np.diff(fractions[:7]) <= 0) and np.all(np.diff(fractions[6:]) >= 0)
    custom = {"base_fraction": 0.05, "limit": 100, "min_fraction": 0.01}
    assert backpressure_fraction(300, **custom) == pytest.approx(0.05 / 3)
    assert backpressure_fraction(1000, **custom) == 0.01
    for kwargs in ({"base_fraction": 0.0}, {"limit": 0}, {"min_fraction": 0.5}):
        with pytest.raises(InputError):
            backpressure_fraction(10, **kwargs)
    with pytest.raises(InputError):
        backpressure_fraction(-1)


def test_unknown_ids_are_not_found(queue) -> None:
    queue.enqueue(FakeTask("a"))
    for call in (
        lambda: queue.get(999),
        lambda: queue.get_by_key("nope"),
        lambda: queue.complete(999, "alice", {}),
        lambda: queue.heartbeat(999, "alice"),
        lambda: queue.skip(999, "alice"),
        lambda: queue.release(999, "alice"),
    ):
        with pytest.raises(NotFoundError, match="no task"):
            call()


def test_bad_input_is_refused(queue) -> None:
    with pytest.raises(InputError, match="proofreader name"):
        queue.claim("")
    with pytest.raises(InputError, match="lease_seconds"):
        queue.claim("alice", lease_seconds=0)
    with pytest.raises(InputError, match="priority"):
        queue.enqueue(FakeTask("nan", score=float("nan")))
    with pytest.raises(InputError, match="key"):
        queue.enqueue(FakeTask(""))
    with pytest.raises(InputError, match="JSON-able"):
        queue.enqueue(FakeTask("obj", evidence={"x": object()}))
    queue.enqueue(FakeTask("a"))
    task = queue.claim("alice")
    with pytest.raises(InputError, match="JSON-able"):
        queue.complete(task.id, "alice", {"x": {1, 2}})
    assert queue.get(task.id).state == "claimed"  # nothing half-written


def test_a_second_queue_on_the_same_database_shares_the_tasks(database_url, clock) -> None:
    with open_database(database_url) as db:
        first = TaskQueue(db, clock=clock)
        first.enqueue(FakeTask("a"))
        second = TaskQueue(db, clock=clock)  # the schema is there already: nothing re-created
        assert db.schema_version("queue") == 1
        assert second.claim("bob").key == "a"


@pytest.mark.skipif(importlib.util.find_spec("connectomix.flag") is None, reason="connectomix.flag not built")
def test_queued_task_rebuilds_the_flagged_task(queue) -> None:
    from connectomix.flag.tasks import Task

    task = Task(
        key="k1",
        kind="merge",
        point_xyz=(1, 2, 3),
        point_nm_xyz=(8.0, 16.0, 24.0),
        segment_ids=(2**63 + 1, 5),
        score=0.7,
        evidence={"voxels": 12},
    )
    queue.enqueue(task)
    claimed = queue.claim("alice")
    assert claimed.task == task and claimed.priority == pytest.approx(0.7)
