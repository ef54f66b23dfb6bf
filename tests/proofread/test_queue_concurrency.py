"""Eight proofreader processes work through 500 tasks under short random leases, slow hands and crashes.

Each worker claims with a random lease (0.05-0.4 s) and "works" for a random time that sometimes outlasts
it; now and then it abandons a claimed task (a crash of its browser), and one worker really dies
(``os._exit``) holding a task and is replaced. Afterwards the event log must show every task completed
exactly once, by the holder of a live lease, and no two people holding a task at once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

from connectomix.errors import ConflictError
from connectomix.proofread.queue import TaskEvent, TaskQueue

N_TASKS, N_WORKERS = 500, 8
KILLED = 3  # exit status of the worker that dies mid-way
DEADLINE_S = 180.0


class _Task:
    def __init__(self, key: str, score: float) -> None:
        self.key, self.kind, self.score = key, "merge", score

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "kind": self.kind, "score": self.score}


def _worker(url: str, user: str, seed: int, out_dir: str, die_after: int | None) -> None:
    rng = random.Random(seed)
    queue = TaskQueue(url)
    counts: Counter[str] = Counter()
    while True:
        lease = rng.uniform(0.05, 0.4)
        task = queue.claim(user, lease_seconds=lease)
        if task is None:
            stats = queue.stats()
            if stats.depth == 0 and stats.claimed == 0:
                break  # nothing waiting and no live lease that could still run out
            time.sleep(0.02)
            continue
        counts["claimed"] += 1
        if die_after is not None and counts["claimed"] == die_after:
            os._exit(KILLED)  # a real crash, holding the task
        if rng.random() < 0.05:
            counts["abandoned"] += 1  # a crash of the client: the task is just dropped
            continue
        work = lease * rng.uniform(0.1, 1.25)  # one time in five this outlasts the lease
        if rng.random() < 0.2:
            time.sleep(work / 2)
            try:
                queue.heartbeat(task.id, user)
            except ConflictError:
                counts["heartbeat_refused"] += 1
            time.sleep(work / 2)
        else:
            time.sleep(work)
        try:
            queue.complete(task.id, user, {"by": user})
            counts["completed"] += 1
        except ConflictError as exc:
            counts["refused_taken_over" if "someone else" in str(exc) else "refused_expired"] += 1
    queue.dispose()
    (Path(out_dir) / f"{user}.json").write_text(json.dumps(counts))


def _run_workers(url: str, out_dir: Path) -> int:
    """Run the workers until all exit normally, replacing the one that dies; returns how many died."""
    context = multiprocessing.get_context("spawn")

    def start(user: str, seed: int, die_after: int | None) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(url, user, seed, str(out_dir), die_after))
        process.start()
        return process

    running = {f"w{i}": start(f"w{i}", i, 15 if i == 0 else None) for i in range(N_WORKERS)}
    died, deadline = 0, time.monotonic() + DEADLINE_S
    try:
        while running:
            assert time.monotonic() < deadline, "workers did not finish in time"
            for user, process in list(running.items()):
                process.join(timeout=0.05)
                if process.exitcode is None:
                    continue
                del running[user]
                if process.exitcode == KILLED:
                    died += 1
                    running[f"{user}r"] = start(f"{user}r", 100 + died, None)
                else:
                    assert process.exitcode == 0, f"worker {user} failed with status {process.exitcode}"
    finally:
        for process in running.values():
            process.kill()
            process.join()
    return died


def _check_task_log(task_id: int, events: list[TaskEvent]) -> str:
    """Replay one task's events; assert leases never overlap and it completes once. Returns who did it."""
    assert events[0].event == "enqueued"
    holder, lease_end, previous_end, completed_by = None, 0.0, float("-inf"), None
    for event in events[1:]:
        assert completed_by is None, f"task {task_id}: {event.event} after completion"
        if event.event == "claimed":
            assert holder is None, f"task {task_id}: claimed by {event.user} while {holder} held it"
            assert event.at > previous_end, f"task {task_id}: claimed before the last lease ran out"
            holder, lease_end = event.user, event.lease_expires
        elif event.event == "heartbeat":
            assert event.user == holder and event.at <= lease_end, f"task {task_id}: bad heartbeat"
            lease_end = event.lease_expires
        elif event.event == "expired":
            assert event.user == holder and event.lease_expires == lease_end < event.at
            holder, previous_end = None, lease_end
        elif event.event == "completed":
            assert event.user == holder, f"task {task_id}: completed by {event.user}, held by {holder}"
            assert event.at <= lease_end, f"task {task_id}: completed after the lease ran out"
            completed_by = holder
        else:
            raise AssertionError(f"task {task_id}: unexpected event {event.event}")
    assert completed_by is not None, f"task {task_id} was never completed"
    return completed_by


def test_eight_processes_complete_every_task_exactly_once(database_url, tmp_path) -> None:
    rng = random.Random(0)
    queue = TaskQueue(database_url)
    assert queue.enqueue_many(_Task(f"t{i:03d}", rng.random()) for i in range(N_TASKS)) == N_TASKS

    assert _run_workers(database_url, tmp_path) == 1

    reports = {path.stem: Counter(json.loads(path.read_text())) for path in tmp_path.glob("*.json")}
    assert len(reports) == N_WORKERS  # the dead worker wrote nothing; its replacement did
    stats = queue.stats()
    assert (stats.depth, stats.claimed, stats.done, stats.skipped) == (0, 0, N_TASKS, 0)

    by_task: dict[int, list[TaskEvent]] = defaultdict(list)
    for event in queue.events():
        by_task[event.task_id].append(event)
    assert len(by_task) == N_TASKS
    completed_by = {task_id: _check_task_log(task_id, events) for task_id, events in by_task.items()}
    for task_id, user in completed_by.items():
        row = queue.get(task_id)
        assert row.state == "done" and row.claimed_by == user and row.result == {"by": user}

    # Every success a worker saw is in the log, and nothing else is (the dead worker's are in the log only).
    done_per_user = Counter(completed_by.values())
    for user, counts in reports.items():
        assert done_per_user[user] == counts["completed"], user
    total = sum(reports.values(), Counter())
    # The hard cases really happened: late completions refused, dropped and crashed tasks taken over.
    assert total["refused_taken_over"] + total["refused_expired"] > 0
    assert total["refused_taken_over"] > 0
    expired = sum(e.event == "expired" for events in by_task.values() for e in events)
    assert expired >= total["abandoned"] + 1  # every abandoned task and the dead worker's
    print(
        f"\n{database_url.split(':')[0]}: {dict(total)}, expired leases {expired}, "
        f"completions per worker {dict(sorted(done_per_user.items()))}"
    )
    queue.dispose()
