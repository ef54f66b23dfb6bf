"""Streaming ingest: chunks arrive in a folder as the microscope writes them; each becomes queued tasks.

The acquisition is a grid of chunks of ``chunk_zyx`` voxels over an extent ``shape_zyx``. A chunk arrives as
one file in the watched folder named ``z<Z>_y<Y>_x<X>.npy`` (or ``.tif`` / ``.tiff``), where Z, Y, X is the
global voxel offset of its first voxel (a multiple of the chunk size); the array is uint8, (z, y, x), of the
chunk's shape (smaller at the extent's far faces). Writers should write under another name and rename (an
atomic arrival); files whose size or mtime still changes are left for the next poll in any case.

For every new chunk, in order of arrival, :class:`ChunkPipeline` (which may run on a Dask worker):

1. reads the chunk and writes it into the workspace's ``raw.zarr`` (the growing mosaic);
2. segments it (the baseline watershed, or an FFN model file) and writes the labels into ``seg.zarr`` with
   ids made unique per chunk (``chunk_index << 32 | local_id``; chunks are not reconciled with each other
   here: ``cx segment run`` over ``raw.zarr`` afterwards gives the reconciled segmentation);
3. flags it (:func:`~connectomix.flag.flag_volume` on the segmentation and its probability map; the
   baseline's map is :func:`~connectomix.flag.disagreement_probability`), with the top fraction lowered by
   :func:`~connectomix.proofread.queue.backpressure_fraction` while the queue is deep;
4. enqueues the tasks (idempotent by task key).

The driver records each finished chunk in the run ledger (:mod:`connectomix.run.ledger`, run name
``stream:<folder>``), observes its latency (file mtime → tasks enqueued) in
``connectomix_stream_chunk_latency_seconds``, and never holds more than ``max_in_flight`` chunks in work:
when the pipeline falls behind, new files simply wait in the folder (bounded memory; the folder is the
buffer). A stream killed and started again skips the recorded chunks and redoes only those in flight, whose
steps are idempotent (same zarr chunks, same task keys), so no chunk is lost or done twice in the queue.

Why polling and not inotify: acquisition folders are often on network file systems (NFS, SMB, Lustre),
where inotify sees no remote writes; a directory scan every ``poll_seconds`` works everywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connectomix.errors import CorruptDataError, InputError
from connectomix.observe.metrics import STAGE_SECONDS, STREAM_CHUNKS, STREAM_LATENCY, record_block
from connectomix.run.executors import InProcessExecutor, executor_workers
from connectomix.run.ledger import BlockLedger
from connectomix.volume.box import Box, Triple

CHUNK_NAME = re.compile(r"^z(\d+)_y(\d+)_x(\d+)\.(npy|tif|tiff)$")


@dataclass(frozen=True)
class StreamConfig:
    """What a stream is: the watched folder, the acquisition grid, where outputs go and how tasks are made.

    ``shape_zyx`` and ``chunk_zyx`` in voxels (z, y, x); ``resolution_nm_zyx`` in nm; ``workspace`` holds
    ``raw.zarr`` and ``seg.zarr`` of the stream; ``database`` is the queue and ledger URL (or SQLite path).
    ``model``: ``"baseline"`` or an FFN ``.safetensors`` file. ``top_fraction`` and ``max_tasks_per_chunk``
    as in :func:`~connectomix.flag.flag_volume`; ``backpressure_limit``: queue depth beyond which the top
    fraction shrinks.
    """

    watch_dir: Path
    workspace: Path
    database: str
    shape_zyx: Triple
    chunk_zyx: Triple
    resolution_nm_zyx: tuple[float, float, float] = (10.0, 10.0, 10.0)
    model: str = "baseline"
    top_fraction: float = 0.01
    max_tasks_per_chunk: int = 10
    backpressure_limit: int = 1000

    def __post_init__(self) -> None:
        for name in ("shape_zyx", "chunk_zyx"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or any(v < 1 for v in value):
                raise InputError(f"{name} must be 3 positive sizes (voxels), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if not 0 < self.top_fraction <= 1:
            raise InputError(f"top_fraction must be in (0, 1], got {self.top_fraction!r}")
        object.__setattr__(self, "watch_dir", Path(self.watch_dir))
        object.__setattr__(self, "workspace", Path(self.workspace))

    @property
    def grid_zyx(self) -> Triple:
        return tuple(-(-s // c) for s, c in zip(self.shape_zyx, self.chunk_zyx, strict=True))  # type: ignore[return-value]

    @property
    def raw_url(self) -> str:
        return f"zarr://{self.workspace / 'raw.zarr'}"

    @property
    def seg_url(self) -> str:
        return f"zarr://{self.workspace / 'seg.zarr'}"

    def params(self) -> dict[str, Any]:
        """The parameters that define the stream's run (its ledger refuses others)."""
        return {
            "watch_dir": str(self.watch_dir.resolve()),
            "shape_zyx": list(self.shape_zyx),
            "chunk_zyx": list(self.chunk_zyx),
            "resolution_nm_zyx": list(self.resolution_nm_zyx),
            "model": self.model,
            "workspace": str(self.workspace.resolve()),
        }

    def chunk_box(self, offset_zyx: Triple) -> Box:
        """The box of the chunk whose first voxel is ``offset_zyx`` (checked against the grid)."""
        if any(o % c for o, c in zip(offset_zyx, self.chunk_zyx, strict=True)):
            raise InputError(f"chunk offset {offset_zyx} (z, y, x) is not on the {self.chunk_zyx} grid")
        if any(o >= s for o, s in zip(offset_zyx, self.shape_zyx, strict=True)):
            raise InputError(f"chunk offset {offset_zyx} (z, y, x) lies outside the extent {self.shape_zyx}")
        stop = [min(o + c, s) for o, c, s in zip(offset_zyx, self.chunk_zyx, self.shape_zyx, strict=True)]
        return Box(offset_zyx, stop)

    def chunk_index(self, box: Box) -> int:
        """C-order index of ``box`` on the chunk grid."""
        position = [b // c for b, c in zip(box.start, self.chunk_zyx, strict=True)]
        return int(np.ravel_multi_index(position, self.grid_zyx))


@dataclass(frozen=True)
class Arrival:
    """A chunk file seen in the folder: its path, box, grid index and arrival time (file mtime, Unix s)."""

    path: Path
    box: Box
    index: int
    arrived_at: float


def read_chunk(path: Path, box: Box) -> np.ndarray:
    """The chunk's array (uint8, (z, y, x)), checked against the box it must fill."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            import tifffile

            array = tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"{path}: cannot read the chunk ({exc})") from exc
    if array.dtype != np.uint8:
        raise InputError(f"{path}: chunk must be uint8, got {array.dtype}")
    if array.shape != box.shape:
        raise InputError(f"{path}: chunk has shape {array.shape}, expected {box.shape} (z, y, x) for {box}")
    return np.ascontiguousarray(array)


@dataclass
class ChunkPipeline:
    """Segment → flag → enqueue for one chunk; picklable, so it can run on a Dask worker.

    Returns counters: ``tasks`` found, ``new`` tasks enqueued, ``segments``, ``top_fraction`` used, and the
    queue ``depth`` after enqueueing.
    """

    config: StreamConfig
    _segmenter: Any = field(default=None, repr=False)

    def _segment(self, raw: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        from connectomix.flag import disagreement_probability
        from connectomix.segment.baseline import boundary_from_raw
        from connectomix.segment.blockwise import baseline_segmenter, ffn_segmenter

        if self._segmenter is None:
            if self.config.model == "baseline":
                self._segmenter = baseline_segmenter()
            else:
                from connectomix.segment.models import load_model

                self._segmenter = ffn_segmenter(load_model(self.config.model))
        (output,) = self._segmenter([raw], [box], self.config.resolution_nm_zyx)
        segmentation = np.asarray(output.segmentation)
        if output.probability is not None:
            probability = np.asarray(output.probability)
        else:
            boundary = boundary_from_raw(raw, self.config.resolution_nm_zyx)
            probability = disagreement_probability(segmentation, boundary)
        return segmentation, probability

    def __call__(self, arrival: Arrival) -> dict[str, Any]:
        import fastremap

        from connectomix.flag import flag_volume
        from connectomix.proofread.queue import TaskQueue, backpressure_fraction

        config = self.config
        raw = read_chunk(arrival.path, arrival.box)
        raw_volume, seg_volume = _outputs(config)
        raw_volume.write(arrival.box, raw)
        segmentation, probability = self._segment(raw, arrival.box)
        labels, _ = fastremap.renumber(np.asarray(segmentation, np.uint64), preserve_zero=True)
        labels = labels.astype(np.uint64)
        labels[labels > 0] |= np.uint64(arrival.index) << np.uint64(32)
        seg_volume.write(arrival.box, labels)
        queue = TaskQueue(config.database)
        try:
            fraction = backpressure_fraction(
                queue.depth(),
                base_fraction=config.top_fraction,
                limit=config.backpressure_limit,
                min_fraction=min(1e-4, config.top_fraction),
            )
            tasks = flag_volume(
                labels,
                probability,
                resolution_nm_xyz=config.resolution_nm_zyx[::-1],
                top_fraction=fraction,
                max_tasks_per_chunk=config.max_tasks_per_chunk,
                offset_zyx=arrival.box.start,
            )
            new = queue.enqueue_many(tasks)
            depth = queue.depth()
        finally:
            queue.dispose()
        return {
            "tasks": len(tasks),
            "new": int(new),
            "segments": int(np.count_nonzero(np.unique(labels))),
            "top_fraction": fraction,
            "depth": int(depth),
        }


def _outputs(config: StreamConfig) -> tuple[Any, Any]:
    """The stream's raw and segmentation zarr volumes over the whole extent (created on first use)."""
    from connectomix.volume import open_volume

    return tuple(
        open_volume(
            url,
            "a",
            shape=config.shape_zyx,
            dtype=dtype,
            chunks=config.chunk_zyx,
            resolution=config.resolution_nm_zyx,
            kind=kind,
        )
        for url, dtype, kind in (
            (config.raw_url, np.uint8, "image"),
            (config.seg_url, np.uint64, "segmentation"),
        )
    )  # type: ignore[return-value]


@dataclass
class StreamResult:
    """What one :func:`run_stream` call did (chunks and tasks, latency seconds, wall seconds)."""

    chunks_done: int = 0
    chunks_skipped: int = 0
    chunks_failed: int = 0
    tasks_new: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, np.float64)
        return {
            "chunks_done": self.chunks_done,
            "chunks_skipped": self.chunks_skipped,
            "chunks_failed": self.chunks_failed,
            "tasks_new": self.tasks_new,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_s": float(np.percentile(lat, 95)) if lat.size else None,
            "errors": dict(self.errors),
            "seconds": self.seconds,
        }


def scan(config: StreamConfig, settle_seconds: float, seen_sizes: dict[Path, int]) -> list[Arrival]:
    """Chunk files in the folder that are complete: matching name, size unchanged since the last scan and
    last modified at least ``settle_seconds`` ago. Sorted by arrival time. Bad names are ignored."""
    now = time.time()
    found = []
    try:
        entries = list(config.watch_dir.iterdir())
    except FileNotFoundError as exc:
        raise InputError(f"watch folder {config.watch_dir} does not exist") from exc
    for path in entries:
        match = CHUNK_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        stat = path.stat()
        previous = seen_sizes.get(path)
        seen_sizes[path] = stat.st_size
        if previous != stat.st_size or now - stat.st_mtime < settle_seconds:
            continue
        offset = (int(match[1]), int(match[2]), int(match[3]))
        box = config.chunk_box(offset)
        found.append(Arrival(path, box, config.chunk_index(box), stat.st_mtime))
    return sorted(found, key=lambda a: (a.arrived_at, a.index))


def run_stream(
    config: StreamConfig,
    *,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    poll_seconds: float = 1.0,
    settle_seconds: float = 0.5,
    stop_after: int | None = None,
    idle_timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[Arrival, Mapping[str, Any]], None] | None = None,
) -> StreamResult:
    """Watch ``config.watch_dir`` and process each new chunk (see the module docstring).

    Stops after ``stop_after`` chunks were processed in this call, when no chunk arrived for
    ``idle_timeout`` seconds with nothing in flight, when ``should_stop()`` says so, or on Ctrl-C (the
    chunks in flight are finished and recorded first). A chunk that fails (unreadable file, wrong shape) is
    recorded as failed with its error and the stream goes on; a failed chunk is tried again when its file
    changes (is rewritten), and once more by every restart of the stream.
    """
    executor = executor or InProcessExecutor()
    limit = int(max_in_flight) if max_in_flight is not None else 2 * executor_workers(executor)
    if limit < 1:
        raise InputError(f"max_in_flight must be ≥ 1, got {max_in_flight!r}")
    config.workspace.mkdir(parents=True, exist_ok=True)
    _outputs(config)  # created here, before any worker writes, so that workers only open them
    pipeline = ChunkPipeline(config)
    result = StreamResult()
    start = time.perf_counter()
    name = f"stream:{config.watch_dir.resolve()}"
    seen_sizes: dict[Path, int] = {}
    failed_sizes: dict[int, int] = {}
    pending: dict[Future[Any], Arrival] = {}
    last_arrival = time.monotonic()
    with BlockLedger(config.database, name, config.params()) as ledger:
        records = ledger.records()
        done = {i for i, r in records.items() if r.status == "done"}
        result.chunks_skipped = len(done)
        try:
            while True:
                in_work = {a.index for a in pending.values()}
                arrivals = [
                    a
                    for a in scan(config, settle_seconds, seen_sizes)
                    if a.index not in done
                    and a.index not in in_work
                    and failed_sizes.get(a.index) != seen_sizes.get(a.path)
                ]
                if arrivals:
                    last_arrival = time.monotonic()
                for arrival in arrivals:
                    if len(pending) >= limit:
                        break  # the rest wait in the folder: bounded work in flight
                    if stop_after is not None and result.chunks_done + len(pending) >= stop_after:
                        break
                    pending[executor.submit(_timed, pipeline, arrival)] = arrival
                if pending:
                    finished, _ = wait(list(pending), timeout=poll_seconds, return_when=FIRST_COMPLETED)
                    for future in finished:
                        arrival = pending.pop(future)
                        _finish(future, arrival, ledger, result, done, failed_sizes, seen_sizes, on_chunk)
                else:
                    if stop_after is not None and result.chunks_done >= stop_after:
                        break
                    if idle_timeout is not None and time.monotonic() - last_arrival > idle_timeout:
                        break
                    time.sleep(poll_seconds)
                if should_stop is not None and should_stop() and not pending:
                    break
        except KeyboardInterrupt:
            for future, arrival in list(pending.items()):
                _finish(future, arrival, ledger, result, done, failed_sizes, seen_sizes, on_chunk)
            pending.clear()
    result.seconds = time.perf_counter() - start
    return result


def _timed(pipeline: ChunkPipeline, arrival: Arrival) -> tuple[dict[str, Any], float]:
    tick = time.perf_counter()
    counters = pipeline(arrival)
    return counters, time.perf_counter() - tick


def _finish(
    future: Future[Any],
    arrival: Arrival,
    ledger: BlockLedger,
    result: StreamResult,
    done: set[int],
    failed_sizes: dict[int, int],
    seen_sizes: dict[Path, int],
    on_chunk: Callable[[Arrival, Mapping[str, Any]], None] | None,
) -> None:
    try:
        counters, seconds = future.result()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        ledger.record_failed(arrival.index, arrival.box, attempts=1, error=error, worker=None)
        failed_sizes[arrival.index] = seen_sizes.get(arrival.path, -1)
        result.chunks_failed += 1
        result.errors[arrival.path.name] = error
        STREAM_CHUNKS.labels(outcome="failed").inc()
        return
    latency = max(0.0, time.time() - arrival.arrived_at)
    counters = {**counters, "latency_seconds": latency, "file": arrival.path.name}
    ledger.record_done(arrival.index, arrival.box, attempts=1, seconds=seconds, result=counters)
    done.add(arrival.index)
    result.chunks_done += 1
    result.tasks_new += int(counters.get("new", 0))
    result.latencies.append(latency)
    STREAM_LATENCY.observe(latency)
    STREAM_CHUNKS.labels(outcome="done").inc()
    STAGE_SECONDS.labels(stage="stream_chunk").observe(seconds)
    record_block("stream", seconds, arrival.box.size)
    if on_chunk is not None:
        on_chunk(arrival, counters)


__all__ = [
    "CHUNK_NAME",
    "Arrival",
    "ChunkPipeline",
    "StreamConfig",
    "StreamResult",
    "read_chunk",
    "run_stream",
]
