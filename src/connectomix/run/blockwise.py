"""Block-wise tasks on an executor, with resume, retries and errors that name their box.

A :class:`BlockTask` is declared, the way daisy declares one: a name, the blocks (boxes in (z, y, x)
voxels), a ``process`` function that does one block and writes its output, the parameters that define
the run, and how many times a failing block is retried. :func:`run_blockwise` sends the blocks that the
run's ledger (:mod:`connectomix.run.ledger`, in the workspace database) does not list as done to an
executor (:mod:`connectomix.run.executors`), keeps at most ``max_in_flight`` of them running, records
each one as it finishes, resubmits a failing block up to ``retries`` times and, when every block has had
its chance, raises :class:`~connectomix.errors.BlockFailedError` naming the boxes that still fail. A run
killed at any point (a worker, or the whole process) and started again skips the finished blocks.

``process(box)`` must be idempotent (writing the same chunks again gives the same result), picklable for
Dask (a module-level function or a dataclass instance with ``__call__``), and return ``None`` or a small
JSON-able dict (counters), which the ledger keeps.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any

from connectomix.errors import BlockFailedError, InputError
from connectomix.observe.metrics import STAGE_SECONDS, record_block
from connectomix.observe.store import record_throughput
from connectomix.progress import is_terminal
from connectomix.proofread.db import Database
from connectomix.run.executors import InProcessExecutor, executor_workers
from connectomix.run.ledger import BlockLedger
from connectomix.volume.box import Box

ProcessBlock = Callable[[Box], Mapping[str, Any] | None]


@dataclass(frozen=True)
class BlockTask:
    """A block-wise job: ``process`` is called once per box (until it succeeds or runs out of retries).

    ``params`` define the run (hashed into the ledger: a run with other parameters is a different run).
    ``retries``: extra attempts a failing block gets (0 = fail at the first error).
    """

    name: str
    boxes: Sequence[Box]
    process: ProcessBlock
    params: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 2

    def __post_init__(self) -> None:
        if not callable(self.process):
            raise InputError(f"process must be callable, got {type(self.process).__name__}")
        if int(self.retries) < 0:
            raise InputError(f"retries must be ≥ 0, got {self.retries!r}")
        if not all(isinstance(b, Box) for b in self.boxes):
            raise InputError("boxes must be Box objects ((z, y, x) voxels)")


@dataclass
class BlockRunResult:
    """What :func:`run_blockwise` did: block counts, failed attempts that a retry then fixed, seconds."""

    name: str
    n_blocks: int
    n_skipped: int
    n_processed: int
    n_retried: int
    seconds: float
    results: dict[int, dict[str, Any] | None]

    @property
    def blocks_per_second(self) -> float:
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def timed_call(process: ProcessBlock, box: Box) -> tuple[dict[str, Any] | None, float, str]:
    """Run ``process(box)`` on the worker; returns its result, its wall seconds and where it ran."""
    tick = time.perf_counter()
    result = process(box)
    return (None if result is None else dict(result)), time.perf_counter() - tick, _where()


def run_blockwise(
    task: BlockTask,
    *,
    database: str | Database | None = None,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    restart: bool = False,
    progress: bool = True,
) -> BlockRunResult:
    """Run ``task``'s unfinished blocks on ``executor`` (default: in-process), recording each in the ledger.

    Raises :class:`BlockFailedError` (after every other block was done) when blocks still fail after
    ``task.retries`` retries; their boxes and last errors are in the message and in the ledger.
    """
    executor = executor or InProcessExecutor()
    limit = int(max_in_flight) if max_in_flight is not None else 2 * executor_workers(executor)
    if limit < 1:
        raise InputError(f"max_in_flight must be ≥ 1, got {max_in_flight!r}")
    boxes = list(task.boxes)
    params = {"blocks": [[list(b.start), list(b.stop)] for b in boxes], **dict(task.params)}
    start = time.perf_counter()
    with BlockLedger(database, task.name, params, restart=restart) as ledger:
        done = ledger.finished()
        todo = [i for i in range(len(boxes)) if i not in done]
        results: dict[int, dict[str, Any] | None] = {i: r.result for i, r in done.items()}
        attempts = {i: 0 for i in todo}
        failures: dict[int, str] = {}
        retried = 0
        pending: dict[Future[Any], int] = {}
        queue = list(reversed(todo))  # pop() takes blocks in order

        def submit() -> None:
            while queue and len(pending) < limit:
                index = queue.pop()
                attempts[index] += 1
                pending[executor.submit(timed_call, task.process, boxes[index])] = index

        bar = _Progress(task.name, len(todo), progress)
        try:
            submit()
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    try:
                        result, seconds, worker = future.result()
                    except Exception as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        if attempts[index] <= task.retries:
                            retried += 1
                            queue.append(index)
                        else:
                            failures[index] = error
                            ledger.record_failed(
                                index, boxes[index], attempts=attempts[index], error=error, worker=None
                            )
                            bar.advance()
                        continue
                    ledger.record_done(
                        index,
                        boxes[index],
                        attempts=attempts[index],
                        seconds=seconds,
                        worker=worker,
                        result=result,
                    )
                    record_block(task.name, seconds, boxes[index].size)
                    results[index] = result
                    bar.advance()
                submit()
        finally:
            bar.close()
            for future in pending:
                future.cancel()
        elapsed = time.perf_counter() - start
        stage = task.name.split(":", 1)[0]
        STAGE_SECONDS.labels(stage=stage).observe(elapsed)
        if todo and elapsed > 0:
            voxels = sum(boxes[i].size for i in todo if i not in failures)
            record_throughput(ledger.db, stage, voxels, elapsed)
        if failures:
            ledger.set_status("failed")
            listed = "; ".join(f"block {i} {boxes[i]!r}: {failures[i]}" for i in sorted(failures)[:5])
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            raise BlockFailedError(
                f"{task.name}: {len(failures)} of {len(boxes)} blocks failed after "
                f"{task.retries + 1} attempts: {listed}{more}"
            )
        ledger.set_status("complete")
    return BlockRunResult(
        name=task.name,
        n_blocks=len(boxes),
        n_skipped=len(done),
        n_processed=len(todo),
        n_retried=retried,
        seconds=elapsed,
        results=results,
    )


class _Progress:
    """A rich progress bar for a loop that advances out of order (quiet when not on a terminal)."""

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        self._progress = None
        if enabled and is_terminal() and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["BlockRunResult", "BlockTask", "run_blockwise", "timed_call"]
