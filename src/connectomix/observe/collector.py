"""Workspace metrics, read from the workspace database at every scrape (:mod:`connectomix.observe.metrics`).

The queue's wait and handling-time histograms are computed from the task table itself (enqueue, first
claim, claim and completion times), so they count every task whichever process handled it, and their
counts only grow (tasks are never deleted). Tables that do not exist yet (nothing queued, nothing scored)
give no samples rather than errors; a database that cannot be read gives no workspace samples for that
scrape and counts ``connectomix_exporter_errors_total``, so Prometheus keeps the process metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from connectomix.observe.metrics import WORKSPACE_METRICS
from connectomix.observe.store import stored_values
from connectomix.proofread.db import Database, open_database
from connectomix.volume.cache import shared_cache

log = logging.getLogger(__name__)

#: Bucket bounds of the queue time histograms, seconds (10 s … 1 day).
QUEUE_BUCKETS = (
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    4 * 3600.0,
    8 * 3600.0,
    86400.0,
)


def _histogram(name: str, values: np.ndarray) -> HistogramMetricFamily:
    values = values[np.isfinite(values)]
    counts = np.searchsorted(np.sort(values), QUEUE_BUCKETS, side="right")
    buckets = [(f"{b:g}", float(c)) for b, c in zip(QUEUE_BUCKETS, counts, strict=True)]
    buckets.append(("+Inf", float(values.size)))
    family = HistogramMetricFamily(name, WORKSPACE_METRICS[name])
    family.add_metric([], buckets, sum_value=float(values.sum()))
    return family


class WorkspaceCollector(Collector):
    """A prometheus-client collector over one workspace database (SQLite file or PostgreSQL URL)."""

    def __init__(self, database: str | Database | None = None, *, clock: Any = None) -> None:
        self.db = open_database(database)
        self._clock = clock
        self.errors = 0

    def describe(self) -> list[Any]:
        return []  # collected on demand; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        yield from self._cache()
        try:
            families = list(self._queue()) + list(self._stored()) + list(self._runs()) + list(self._learner())
        except Exception as exc:  # storage trouble must not break the scrape of the process metrics
            self.errors += 1
            log.warning("workspace metrics unavailable: %s", exc)
            families = []
        errors = CounterMetricFamily(
            "connectomix_exporter_errors", WORKSPACE_METRICS["connectomix_exporter_errors_total"]
        )
        errors.add_metric([], float(self.errors))
        yield from families
        yield errors

    # -- sources ----------------------------------------------------------------------------------------
    def _tables(self, connection: sa.Connection) -> set[str]:
        return set(sa.inspect(connection).get_table_names())

    def _queue(self) -> Iterator[Any]:
        with self.db.engine.connect() as connection:
            if "queue_tasks" not in self._tables(connection):
                return
            now = self._now()
            rows = connection.execute(
                sa.text(
                    "SELECT state, lease_expires, enqueued_at, first_claimed_at, claimed_at, completed_at "
                    "FROM queue_tasks"
                )
            ).all()
        states = {"queued": 0, "claimed": 0, "done": 0, "skipped": 0}
        waits, handling = [], []
        for state, lease, enqueued, first_claim, claimed, completed in rows:
            if state == "claimed" and lease is not None and lease < now:
                state = "queued"  # an expired lease is back in the queue
            states[state] = states.get(state, 0) + 1
            if first_claim is not None:
                waits.append(first_claim - enqueued)
            if state == "done" and completed is not None and claimed is not None:
                handling.append(completed - claimed)
        depth = GaugeMetricFamily("connectomix_queue_depth", WORKSPACE_METRICS["connectomix_queue_depth"])
        depth.add_metric([], float(states["queued"]))
        tasks = GaugeMetricFamily(
            "connectomix_queue_tasks", WORKSPACE_METRICS["connectomix_queue_tasks"], labels=["state"]
        )
        for state, count in sorted(states.items()):
            tasks.add_metric([state], float(count))
        yield depth
        yield tasks
        yield _histogram("connectomix_queue_task_wait_seconds", np.asarray(waits, np.float64))
        yield _histogram("connectomix_queue_task_handling_seconds", np.asarray(handling, np.float64))

    def _stored(self) -> Iterator[Any]:
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, labels, value in stored_values(self.db):
            series.setdefault(name, []).append((labels, value))
        for name, items in series.items():
            keys = sorted({k for labels, _ in items for k in labels})
            family = GaugeMetricFamily(name, WORKSPACE_METRICS[name], labels=keys)
            for labels, value in items:
                family.add_metric([labels.get(k, "") for k in keys], value)
            yield family

    def _runs(self) -> Iterator[Any]:
        with self.db.engine.connect() as connection:
            if "cx_run_blocks" not in self._tables(connection):
                return
            rows = connection.execute(
                sa.text(
                    "SELECT r.name, b.status, COUNT(*) FROM cx_run_blocks b "
                    "JOIN cx_runs r ON r.id = b.run_id GROUP BY r.name, b.status"
                )
            ).all()
        family = GaugeMetricFamily(
            "connectomix_run_blocks", WORKSPACE_METRICS["connectomix_run_blocks"], labels=["run", "status"]
        )
        for name, status, count in rows:
            family.add_metric([str(name), str(status)], float(count))
        yield family

    def _learner(self) -> Iterator[Any]:
        with self.db.engine.connect() as connection:
            if "registry_models" not in self._tables(connection):
                return
            counts = connection.execute(
                sa.text(
                    "SELECT name, kind, status, COUNT(*) FROM registry_models GROUP BY name, kind, status"
                )
            ).all()
            served = connection.execute(
                sa.text(
                    "SELECT name, gate_metric, gate_score FROM registry_models "
                    "WHERE status = 'promoted' AND gate_score IS NOT NULL"
                )
            ).all()
        models = GaugeMetricFamily(
            "connectomix_learner_models",
            WORKSPACE_METRICS["connectomix_learner_models"],
            labels=["name", "kind", "status"],
        )
        for name, kind, status, count in counts:
            models.add_metric([str(name), str(kind), str(status)], float(count))
        score = GaugeMetricFamily(
            "connectomix_learner_gate_score",
            WORKSPACE_METRICS["connectomix_learner_gate_score"],
            labels=["name", "metric"],
        )
        for name, metric, value in served:
            score.add_metric([str(name), str(metric or "")], float(value))
        yield models
        yield score

    def _cache(self) -> Iterator[Any]:
        stats = shared_cache().stats
        hits = CounterMetricFamily(
            "connectomix_cache_hits", WORKSPACE_METRICS["connectomix_cache_hits_total"]
        )
        hits.add_metric([], float(stats.hits))
        misses = CounterMetricFamily(
            "connectomix_cache_misses", WORKSPACE_METRICS["connectomix_cache_misses_total"]
        )
        misses.add_metric([], float(stats.misses))
        ratio = GaugeMetricFamily(
            "connectomix_cache_hit_ratio", WORKSPACE_METRICS["connectomix_cache_hit_ratio"]
        )
        ratio.add_metric([], float(stats.hit_rate))
        held = GaugeMetricFamily("connectomix_cache_bytes", WORKSPACE_METRICS["connectomix_cache_bytes"])
        held.add_metric([], float(shared_cache().nbytes))
        yield from (hits, misses, ratio, held)

    def _now(self) -> float:
        import time

        return float(self._clock()) if self._clock is not None else time.time()


__all__ = ["QUEUE_BUCKETS", "WorkspaceCollector"]
