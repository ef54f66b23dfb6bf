"""Executors: where block-wise work runs. One interface, two engines.

Every stage that works block by block hands its blocks to a :class:`concurrent.futures.Executor`: the
standard library's interface (``submit(fn, *args) -> Future``), which a Dask cluster also offers through
``Client.get_executor()``. So the same code runs

* **in-process** (the default, :class:`InProcessExecutor`): each call runs at once in the calling thread,
  in submission order, so a run is exactly reproducible and tracebacks are plain; and
* **on Dask** (:func:`dask_executor`): on the cluster whose scheduler is at ``scheduler`` (``tcp://HOST:PORT``),
  or on a :class:`distributed.LocalCluster` of worker *processes* started here, bound to 127.0.0.1.

The functions sent to Dask must be picklable (module-level functions and dataclasses, not closures) and
must read their inputs from shared storage (volume URLs, the database URL), because a worker may be another
machine. :func:`open_executor` picks the engine by name; use it as a context manager so that a cluster it
started is always shut down.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from connectomix.errors import InputError

T = TypeVar("T")
ExecutorKind = Literal["inprocess", "dask"]
EXECUTOR_KINDS: tuple[str, ...] = ("inprocess", "dask")


class InProcessExecutor(Executor):
    """Runs each submitted call immediately in the calling thread; the returned future is already done.

    Exceptions are captured in the future (as a pool would), never raised by :meth:`submit`, so callers
    handle failures the same way on every executor.
    """

    workers = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to an executor that was shut down")
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # captured like a pool would; KeyboardInterrupt is re-raised
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True


@dataclass(frozen=True)
class ExecutorInfo:
    """What an opened executor is: engine, scheduler address (Dask) and number of workers."""

    kind: ExecutorKind
    workers: int
    scheduler: str | None = None
    dashboard: str | None = None


@contextlib.contextmanager
def dask_executor(
    scheduler: str | None = None,
    *,
    workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str | int = "auto",
) -> Iterator[tuple[Executor, ExecutorInfo]]:
    """A Dask executor: connected to ``scheduler``, or to a new local cluster of ``workers`` processes.

    The local cluster binds its scheduler, workers and (disabled) dashboard to 127.0.0.1 and is closed when
    the context ends, whatever happens inside. Each worker runs ``threads_per_worker`` threads (1 suits
    torch, which threads inside each call).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise InputError(
            "the dask executor needs the 'distributed' package (pip install distributed)"
        ) from exc
    if int(workers) < 1 or int(threads_per_worker) < 1:
        raise InputError(f"need workers ≥ 1 and threads_per_worker ≥ 1, got {workers}, {threads_per_worker}")
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=int(workers),
            threads_per_worker=int(threads_per_worker),
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=memory_limit,
            worker_dashboard_address=None,
            silence_logs=40,  # logging.ERROR
        )
        client = Client(cluster)
    else:
        if "://" not in scheduler:
            raise InputError(f"a Dask scheduler address looks like tcp://HOST:PORT, got {scheduler!r}")
        try:
            client = Client(scheduler, timeout=10)
        except OSError as exc:
            raise InputError(f"no Dask scheduler answers at {scheduler}: {exc}") from exc
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        info = ExecutorInfo("dask", n_workers, scheduler=client.scheduler.address)
        executor = client.get_executor(pure=False)
        yield executor, info
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def open_executor(
    kind: str = "inprocess", *, scheduler: str | None = None, workers: int = 2
) -> Iterator[tuple[Executor, ExecutorInfo]]:
    """The executor named ``kind`` (``inprocess`` or ``dask``) and its description; closed on exit."""
    if kind not in EXECUTOR_KINDS:
        raise InputError(f"unknown executor {kind!r}: expected one of {', '.join(EXECUTOR_KINDS)}")
    if kind == "inprocess":
        if scheduler is not None:
            raise InputError("--scheduler needs --executor dask")
        executor = InProcessExecutor()
        try:
            yield executor, ExecutorInfo("inprocess", 1)
        finally:
            executor.shutdown()
        return
    with dask_executor(scheduler, workers=workers) as opened:
        yield opened


def executor_workers(executor: Executor) -> int:
    """How many calls ``executor`` can run at once (1 when it does not say)."""
    for attribute in ("workers", "_max_workers"):
        value = getattr(executor, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    client = getattr(executor, "_client", None)  # distributed.ClientExecutor
    if client is not None:
        try:
            info = client.scheduler_info().get("workers", {})
            return max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))
        except Exception:  # a scheduler that does not answer: fall back to one at a time
            return 1
    return 1


__all__ = [
    "EXECUTOR_KINDS",
    "ExecutorInfo",
    "ExecutorKind",
    "InProcessExecutor",
    "dask_executor",
    "executor_workers",
    "open_executor",
]
