"""The metrics connectomix exports, in one place: names, units, labels, help.

Names follow Prometheus conventions: prefix ``connectomix_``, base units in the name (``_seconds``,
``_bytes``, ``_bits``), ``_total`` for counters. Two kinds of source:

* **process metrics** (this module): counters and histograms that the running process updates as it works
  (blocks done, voxels segmented, stage durations, learner fits, stream latency), in :data:`REGISTRY`;
* **workspace metrics** (:mod:`connectomix.observe.collector`): read from the workspace database at each
  scrape, so every process, machine and the standalone exporter report the same numbers: queue depth and
  states, task wait and handling-time histograms, the latest VI and edge-error counts that runs recorded
  (:func:`connectomix.observe.store.record_scores`), run blocks, the weights registry.

:data:`METRIC_NAMES` lists every metric family the exporter serves; the Grafana dashboard's queries may use
only these (a test checks it).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# The *_created series only double the exposition; Grafana and the dashboard do not use them.
disable_created_metrics()

#: The registry of process metrics (not the global default: tests and several apps stay independent).
REGISTRY = CollectorRegistry(auto_describe=True)

_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, float("inf"))

BLOCKS_TOTAL = Counter(
    "connectomix_blocks_processed_total",
    "Blocks of block-wise runs finished by this process, by task.",
    ["task"],
    registry=REGISTRY,
)
BLOCK_SECONDS = Histogram(
    "connectomix_block_duration_seconds",
    "Wall time of one block of a block-wise run on its worker, by task.",
    ["task"],
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
VOXELS_TOTAL = Counter(
    "connectomix_voxels_processed_total",
    "Voxels processed by block-wise runs in this process, by task (rate() gives voxels per second).",
    ["task"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "connectomix_stage_duration_seconds",
    "Wall time of one run of a pipeline stage (segment, flag, stream chunk, …).",
    ["stage"],
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
STREAM_LATENCY = Histogram(
    "connectomix_stream_chunk_latency_seconds",
    "Streaming: seconds from a chunk's arrival (file time) to its tasks being in the queue.",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
STREAM_CHUNKS = Counter(
    "connectomix_stream_chunks_total",
    "Streaming: chunks processed by this process, by outcome (done, failed).",
    ["outcome"],
    registry=REGISTRY,
)
LEARNER_FIT_SECONDS = Histogram(
    "connectomix_learner_fit_duration_seconds",
    "Wall time of one adapter fit by the continual learner.",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
LEARNER_EXAMPLES = Counter(
    "connectomix_learner_examples_total",
    "Training examples (corrected patches) the continual learner has fitted on.",
    registry=REGISTRY,
)

#: Metric families served by the workspace collector (see :mod:`connectomix.observe.collector`).
WORKSPACE_METRICS: dict[str, str] = {
    "connectomix_queue_depth": "Tasks waiting in the queue (queued, or claimed with an expired lease).",
    "connectomix_queue_tasks": "Proofreading tasks by state (queued, claimed, done, skipped).",
    "connectomix_queue_task_wait_seconds": "Seconds from enqueue to first claim, over tasks claimed so far.",
    "connectomix_queue_task_handling_seconds": "Seconds from claim to completion, over completed tasks.",
    "connectomix_vi_bits": "Variation of information of a scored segmentation (kind: split, merge, total).",
    "connectomix_throughput_voxels_per_second": "Voxels per second of the latest recorded run of a stage.",
    "connectomix_arand": "Adapted Rand error of a scored segmentation (0 best, 1 worst).",
    "connectomix_edge_errors": "Split and merge error counts of a scored segmentation (kind: split, merge).",
    "connectomix_run_blocks": "Blocks of named block-wise runs in the workspace ledger, by status.",
    "connectomix_learner_models": "Weights-registry entries by model name, kind and status.",
    "connectomix_learner_gate_score": "The served entry's latest validation score, by model name and metric.",
    "connectomix_cache_hits_total": "Chunk-cache lookups served from memory or disk (this process).",
    "connectomix_cache_misses_total": "Chunk-cache lookups that had to decode the chunk (this process).",
    "connectomix_cache_hit_ratio": "Chunk-cache hits / lookups in this process (0 before any lookup).",
    "connectomix_cache_bytes": "Bytes held in this process's in-memory chunk cache.",
    "connectomix_exporter_errors_total": "Scrapes whose workspace metrics could not be read.",
}

PROCESS_METRICS: tuple[str, ...] = (
    "connectomix_blocks_processed_total",
    "connectomix_block_duration_seconds",
    "connectomix_voxels_processed_total",
    "connectomix_stage_duration_seconds",
    "connectomix_stream_chunk_latency_seconds",
    "connectomix_stream_chunks_total",
    "connectomix_learner_fit_duration_seconds",
    "connectomix_learner_examples_total",
)

#: Every metric family name the exporter serves (histograms add _bucket, _sum, _count series).
METRIC_NAMES: tuple[str, ...] = PROCESS_METRICS + tuple(WORKSPACE_METRICS)


def record_block(task: str, seconds: float, voxels: int) -> None:
    """Count one finished block of ``task`` (its worker wall time in seconds and its voxels)."""
    stage = task.split(":", 1)[0]
    BLOCKS_TOTAL.labels(task=stage).inc()
    BLOCK_SECONDS.labels(task=stage).observe(max(float(seconds), 0.0))
    VOXELS_TOTAL.labels(task=stage).inc(max(int(voxels), 0))


__all__ = [
    "BLOCKS_TOTAL",
    "BLOCK_SECONDS",
    "LEARNER_EXAMPLES",
    "LEARNER_FIT_SECONDS",
    "METRIC_NAMES",
    "PROCESS_METRICS",
    "REGISTRY",
    "STAGE_SECONDS",
    "STREAM_CHUNKS",
    "STREAM_LATENCY",
    "VOXELS_TOTAL",
    "WORKSPACE_METRICS",
    "record_block",
]
