"""Benchmark: the proofreading task queue, its throughput under concurrent proofreaders and a simulated day.

Parts:

1. ``throughput``: N tasks are queued, then 8 proofreader processes (and, as the peer measured in the same
   run, 1 process) claim and complete them as fast as they can, on a SQLite file and on PostgreSQL
   (skipped with the reason where no server answers). Reported: tasks per second (each is one claim and
   one complete, two transactions) and the 8-process / 1-process ratio. Process start-up is not timed:
   the workers open the queue, then wait for a common start signal.
2. ``simulated day``: a discrete-event simulation driven by a fake clock (no real sleeping) of the real
   :class:`~connectomix.proofread.queue.TaskQueue` on a SQLite file. Segmentation blocks finish at random
   (Poisson) times; each block's flagging offers a burst of tasks (Poisson count, lognormal uncertainty
   scores). A fixed team of proofreaders, staffed round the clock, claims the most urgent task and handles
   it in a lognormal time (mean 60 s). With backpressure on, each block keeps only its top
   ``backpressure_fraction(depth) / base_fraction`` share of tasks by score (flagging's entropy threshold
   rises while the queue is deep). Scenarios (``--scenarios``): backpressure off or on with a given limit,
   each with strict-priority claims or with aging (``TaskQueue(aging_per_hour=...)``), since under
   strict priority a steady stream of urgent tasks can starve the least urgent ones for the whole day.
   Every scenario sees the same blocks, scores and handling times (separate random streams). Reported
   per scenario: the wait from enqueue to first claim, p50 and p95, over every task enqueued during the
   day (tasks still waiting at the end count with their wait so far, a lower bound), against the roadmap
   target p95 wait <= 2 h; also the served-only p95 from ``TaskQueue.stats()`` (blind to starved tasks),
   the depth at the end and at its highest, the proofreaders' busy share, and the share of the offered
   uncertainty (sum of scores) that was proofread.

Run from the repository root: ``python bench/task_queue.py`` (``--quick`` for a short smoke run). Results go
to ``bench/results/queue.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("CX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGET_P95_WAIT_H = 2.0


@dataclass(frozen=True)
class BenchTask:
    """A stand-in flagged task (what the queue needs: key, kind, score, to_dict)."""

    key: str
    score: float
    kind: str = "merge"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "score": self.score}


# -- part 1: throughput -----------------------------------------------------------------------------------
def _throughput_worker(url: str, user: str, ready: Any, go: Any, results: Any) -> None:
    from connectomix.proofread.queue import TaskQueue

    queue = TaskQueue(url)
    queue.depth()  # connect before the clock starts
    ready.put(user)
    go.wait()
    start, done = time.perf_counter(), 0
    while (task := queue.claim(user)) is not None:
        queue.complete(task.id, user, {"answer": "merge"})
        done += 1
    results.put((user, done, time.perf_counter() - start))
    queue.dispose()


def measure_throughput(url: str, n_tasks: int, n_workers: int) -> dict[str, Any]:
    """Tasks per second (claim + complete) with ``n_workers`` processes on a fresh queue at ``url``."""
    from connectomix.proofread.queue import TaskQueue

    queue = TaskQueue(url)
    rng = np.random.default_rng(0)
    queue.enqueue_many(BenchTask(f"t{i}", float(s)) for i, s in enumerate(rng.random(n_tasks)))
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    workers = [
        context.Process(target=_throughput_worker, args=(url, f"user{i}", ready, go, results))
        for i in range(n_workers)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    start = time.perf_counter()
    go.set()
    done = [results.get(timeout=600) for _ in workers]
    seconds = time.perf_counter() - start
    for worker in workers:
        worker.join()
    stats = queue.stats()
    queue.dispose()
    assert stats.done == n_tasks and sum(d[1] for d in done) == n_tasks, "tasks lost or done twice"
    return {
        "workers": n_workers,
        "tasks": n_tasks,
        "seconds": seconds,
        "tasks_per_second": n_tasks / seconds,
        "transactions_per_second": 2 * n_tasks / seconds,
        "per_worker": sorted(d[1] for d in done),
    }


def postgres_schema_url() -> tuple[str | None, str, Callable[[], None] | None]:
    """A URL to a fresh PostgreSQL schema and a function that drops it; None and the reason where no
    server answers."""
    import sqlalchemy as sa

    schema = f"cx_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with admin.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # any driver or connection failure means: no usable server
        return None, f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}", None

    def drop() -> None:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()

    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}", "", drop


# -- part 2: a simulated day --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayParameters:
    hours: float = 24.0
    proofreaders: int = 8
    handling_mean_s: float = 60.0
    handling_sigma: float = 0.8  # of log(handling time)
    tasks_per_hour: float = 720.0  # offered by flagging at the base fraction
    tasks_per_block: float = 60.0  # mean burst size when a block finishes
    base_fraction: float = 0.01
    lease_s: float = 3600.0

    @property
    def capacity_per_hour(self) -> float:
        return self.proofreaders * 3600.0 / self.handling_mean_s


def simulate_day(
    params: DayParameters,
    *,
    limit: int | None,
    aging_per_hour: float,
    seed: int,
    directory: Path,
    name: str,
) -> dict[str, Any]:
    """One simulated day on a fresh SQLite queue; ``limit=None`` turns backpressure off."""
    from connectomix.proofread.queue import TaskQueue, backpressure_fraction

    # Separate streams, so every scenario sees the same blocks, scores and handling times.
    arrivals, hands, rounding = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    now = [0.0]
    queue = TaskQueue(
        directory / f"{name.replace(' ', '-')}.db",
        lease_seconds=params.lease_s,
        clock=lambda: now[0],
        aging_per_hour=aging_per_hour,
    )
    end = params.hours * 3600.0
    block_rate = params.tasks_per_hour / params.tasks_per_block / 3600.0  # blocks per second
    mu = math.log(params.handling_mean_s) - params.handling_sigma**2 / 2

    events: list[tuple[float, int, str, Any]] = []
    sequence = 0

    def schedule(at: float, kind: str, data: Any) -> None:
        nonlocal sequence
        heapq.heappush(events, (at, sequence, kind, data))
        sequence += 1

    schedule(arrivals.exponential(1 / block_rate), "block", 0)
    for reader in range(params.proofreaders):
        schedule(0.0, "free", f"reader{reader}")
    idle: list[str] = []
    offered = kept = 0
    offered_score = 0.0
    busy_s = 0.0
    depth_samples: list[int] = []
    while events and events[0][0] <= end:
        at, _, kind, data = heapq.heappop(events)
        now[0] = at
        if kind == "block":
            scores = np.sort(arrivals.lognormal(0.0, 1.0, arrivals.poisson(params.tasks_per_block)))[::-1]
            offered += scores.size
            offered_score += float(scores.sum())
            depth = queue.depth()
            depth_samples.append(depth)
            if limit is not None:
                share = backpressure_fraction(depth, base_fraction=params.base_fraction, limit=limit)
                share /= params.base_fraction
                scores = scores[: math.floor(scores.size * share + rounding.random())]
            kept += queue.enqueue_many(BenchTask(f"b{data}-{i}", float(s)) for i, s in enumerate(scores))
            schedule(at + arrivals.exponential(1 / block_rate), "block", data + 1)
            for reader in idle:
                schedule(at, "free", reader)
            idle.clear()
        elif kind == "free":
            task = queue.claim(data)
            if task is None:
                idle.append(data)
            else:
                handling = float(hands.lognormal(mu, params.handling_sigma))
                busy_s += min(handling, end - at)
                schedule(at + handling, "done", (data, task.id))
        else:
            reader, task_id = data
            queue.complete(task_id, reader, {"answer": "merge"})
            schedule(at, "free", reader)
    now[0] = end
    stats = queue.stats()
    rows = _task_times(queue)
    queue.dispose()
    waits = np.where(np.isnan(rows[:, 1]), end - rows[:, 0], rows[:, 1] - rows[:, 0])
    served_score = float(np.nansum(np.where(np.isnan(rows[:, 2]), np.nan, rows[:, 3])))
    return {
        "scenario": name,
        "backpressure_limit": limit,
        "aging_per_hour": aging_per_hour,
        "offered": offered,
        "enqueued": kept,
        "done": stats.done,
        "depth_end": stats.depth,
        "depth_max": max(depth_samples, default=0),
        "wait_p50_h": float(np.percentile(waits, 50)) / 3600 if waits.size else None,
        "wait_p95_h": float(np.percentile(waits, 95)) / 3600 if waits.size else None,
        "served_wait_p50_h": None if stats.wait_p50_s is None else stats.wait_p50_s / 3600,
        "served_wait_p95_h": None if stats.wait_p95_s is None else stats.wait_p95_s / 3600,
        "handling_p50_s": stats.handling_p50_s,
        "handling_p95_s": stats.handling_p95_s,
        "utilisation": busy_s / (params.proofreaders * end),
        "uncertainty_proofread": served_score / offered_score if offered_score else None,
        "meets_target": bool(waits.size and np.percentile(waits, 95) <= TARGET_P95_WAIT_H * 3600),
    }


def _task_times(queue: Any) -> np.ndarray:
    """(enqueued_at, first_claimed_at, completed_at, priority) of every task, NaN where not yet."""
    import sqlalchemy as sa

    from connectomix.proofread.queue import TASKS

    with queue.db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(TASKS.c.enqueued_at, TASKS.c.first_claimed_at, TASKS.c.completed_at, TASKS.c.priority)
        ).all()
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "queue.json")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small numbers)")
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per throughput run")
    parser.add_argument("--workers", type=int, default=8, help="proofreader processes in the throughput run")
    parser.add_argument("--hours", type=float, default=24.0, help="length of the simulated day")
    parser.add_argument("--proofreaders", type=int, default=8)
    parser.add_argument("--tasks-per-hour", type=float, default=720.0, help="offered at the base fraction")
    parser.add_argument("--tasks-per-block", type=float, default=60.0)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["off", "off+aging", "1000", "250", "250+aging"],
        help="simulated days: backpressure 'off' or its limit (tasks), '+aging' for aging claims",
    )
    parser.add_argument("--aging", type=float, default=4.0, help="priority gained per hour waited")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    scenarios: list[tuple[int | None, float]] = []
    for scenario in args.scenarios:
        base, _, extra = scenario.partition("+")
        if not (base == "off" or base.isdigit()) or extra not in ("", "aging"):
            parser.error(f"scenario {scenario!r}: expected off or a limit, optionally +aging")
        scenarios.append((None if base == "off" else int(base), args.aging if extra == "aging" else 0.0))
    if args.quick:
        args.tasks, args.hours = min(args.tasks, 400), min(args.hours, 2.0)

    from rich.console import Console
    from rich.table import Table

    from machine import machine

    console = Console(width=160)
    throughput: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backends = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
        if args.no_postgres:
            skipped["postgresql"] = "--no-postgres"
        for backend in backends:
            for n_workers in sorted({1, args.workers}):
                if backend == "sqlite":
                    url, drop = f"sqlite:///{Path(tmp) / f'throughput-{n_workers}.db'}", None
                else:
                    url, reason, drop = postgres_schema_url()
                    if url is None:
                        skipped[backend] = reason
                        console.print(f"skipped {backend}: {reason}")
                        break
                try:
                    row = {"database": backend, **measure_throughput(url, args.tasks, n_workers)}
                finally:
                    if drop is not None:
                        drop()
                throughput.append(row)
                console.print(
                    f"  {backend} {n_workers} process(es): {row['tasks_per_second']:.0f} tasks/s "
                    f"({row['seconds']:.2f} s for {args.tasks})"
                )
        for row in throughput:
            single = next(r for r in throughput if r["database"] == row["database"] and r["workers"] == 1)
            row["vs_1_worker"] = row["tasks_per_second"] / single["tasks_per_second"]

        params = DayParameters(
            hours=args.hours,
            proofreaders=args.proofreaders,
            tasks_per_hour=args.tasks_per_hour,
            tasks_per_block=args.tasks_per_block,
        )
        console.print(
            f"simulated day: {params.hours:g} h, {params.proofreaders} proofreaders "
            f"(capacity {params.capacity_per_hour:.0f} tasks/h), flagging offers {params.tasks_per_hour:g} "
            f"tasks/h in bursts of {params.tasks_per_block:g}"
        )
        day: list[dict[str, Any]] = []
        for limit, aging in scenarios:
            name = ("off" if limit is None else f"limit {limit}") + (f" + aging {aging:g}/h" if aging else "")
            start = time.perf_counter()
            row = simulate_day(
                params, limit=limit, aging_per_hour=aging, seed=args.seed, directory=Path(tmp), name=name
            )
            row["simulation_seconds"] = time.perf_counter() - start
            day.append(row)
            console.print(f"  backpressure {name}: {row['simulation_seconds']:.1f} s")

    table = Table(title=f"queue throughput: claim + complete, {args.tasks} tasks")
    for column in ("database", "processes", "tasks/s", "transactions/s", "vs 1 process", "per process"):
        table.add_column(column, justify="right")
    for row in throughput:
        table.add_row(
            row["database"],
            str(row["workers"]),
            f"{row['tasks_per_second']:.0f}",
            f"{row['transactions_per_second']:.0f}",
            f"{row['vs_1_worker']:.2f}×",
            f"{min(row['per_worker'])}-{max(row['per_worker'])}",
        )
    console.print(table)

    table = Table(title=f"simulated {params.hours:g} h day: wait enqueue → claim (target p95 ≤ 2 h)")
    columns = ("backpressure", "offered", "enqueued", "done", "depth end", "depth max", "wait p50 h")
    columns += ("wait p95 h", "served p95 h", "busy", "uncertainty done", "target")
    for column in columns:
        table.add_column(column, justify="right")
    for row in day:
        table.add_row(
            row["scenario"],
            str(row["offered"]),
            str(row["enqueued"]),
            str(row["done"]),
            str(row["depth_end"]),
            str(row["depth_max"]),
            _hours(row["wait_p50_h"]),
            _hours(row["wait_p95_h"]),
            _hours(row["served_wait_p95_h"]),
            f"{row['utilisation']:.0%}",
            f"{row['uncertainty_proofread']:.0%}" if row["uncertainty_proofread"] is not None else "-",
            "met" if row["meets_target"] else "missed",
        )
    console.print(table)

    report = {
        "benchmark": "queue",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {**machine(), "cpu_count": os.cpu_count()},
        "throughput": throughput,
        "skipped": skipped,
        "simulated_day": {
            "parameters": {**params.__dict__, "capacity_per_hour": params.capacity_per_hour},
            "seed": args.seed,
            "target_p95_wait_h": TARGET_P95_WAIT_H,
            "wait_definition": "enqueue to first claim over every task enqueued during the day; tasks "
            "still waiting at the end count with their wait so far (a lower bound)",
            "scenarios": day,
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    tmp_json.replace(args.json)
    console.print(f"wrote {args.json}")
    return 0


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
