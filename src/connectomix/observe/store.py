"""Numbers that runs leave in the workspace database for the exporter: VI, ARAND, edge errors, throughput.

A batch run (``cx evaluate --record``, the learning loop, a streaming run) ends long before Prometheus next
scrapes, so it writes its latest numbers into ``cx_metric_values(name, labels, value, updated_at)`` (schema
component ``metrics``); :mod:`connectomix.observe.collector` serves them as gauges from any process.
``labels`` is canonical JSON of the label set (sorted keys), so one row per series; writing again replaces
the value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connectomix.errors import InputError
from connectomix.observe.metrics import WORKSPACE_METRICS
from connectomix.proofread.db import Database, open_database

_metadata = sa.MetaData()

VALUES = sa.Table(
    "cx_metric_values",
    _metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("labels", sa.String(1000), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

#: The stored gauges (a subset of the workspace metrics).
STORED = (
    "connectomix_vi_bits",
    "connectomix_arand",
    "connectomix_edge_errors",
    "connectomix_throughput_voxels_per_second",
)


def _migration_1(connection: Connection) -> None:
    VALUES.create(connection)


MIGRATIONS = [_migration_1]


def _labels_json(labels: Mapping[str, str]) -> str:
    for key, value in labels.items():
        if not key.isidentifier() or not isinstance(value, str):
            raise InputError(f"metric labels must be name → string, got {key!r}: {value!r}")
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def store_values(database: str | Database | None, values: list[tuple[str, Mapping[str, str], float]]) -> None:
    """Write ``(name, labels, value)`` rows in one transaction (replacing earlier values of each series)."""
    for name, _, value in values:
        if name not in STORED:
            raise InputError(f"{name!r} is not a stored metric (expected one of {', '.join(STORED)})")
        if not isinstance(value, int | float):
            raise InputError(f"metric {name} needs a number, got {value!r}")
    db = open_database(database)
    try:
        db.ensure_schema("metrics", MIGRATIONS)
        now = time.time()
        with db.begin() as connection:
            for name, labels, value in values:
                key = _labels_json(labels)
                where = (VALUES.c.name == name) & (VALUES.c.labels == key)
                connection.execute(VALUES.delete().where(where))
                connection.execute(
                    VALUES.insert().values(name=name, labels=key, value=float(value), updated_at=now)
                )
    finally:
        if not isinstance(database, Database):
            db.dispose()


def record_scores(database: str | Database | None, scores: Any, *, segmentation: str) -> None:
    """Store an evaluation's VI (split, merge, total; bits), ARAND and edge-error counts for the exporter.

    ``scores`` is a :class:`connectomix.evaluate.Scores` (or anything with its attributes); ``segmentation``
    names what was scored (a URL or a run name) and becomes the ``segmentation`` label.
    """
    base = {"segmentation": str(segmentation)}
    store_values(
        database,
        [
            ("connectomix_vi_bits", {**base, "kind": "split"}, float(scores.vi_split)),
            ("connectomix_vi_bits", {**base, "kind": "merge"}, float(scores.vi_merge)),
            ("connectomix_vi_bits", {**base, "kind": "total"}, float(scores.vi)),
            ("connectomix_arand", base, float(scores.arand)),
            ("connectomix_edge_errors", {**base, "kind": "split"}, float(scores.n_split_bodies)),
            ("connectomix_edge_errors", {**base, "kind": "merge"}, float(scores.n_merging_segments)),
        ],
    )


def record_throughput(database: str | Database | None, stage: str, voxels: int, seconds: float) -> None:
    """Store the voxels per second of a whole run of ``stage`` (wall ``seconds``) for the exporter."""
    if not seconds > 0:
        raise InputError(f"a run's wall time must be positive, got {seconds!r} s")
    store_values(
        database,
        [("connectomix_throughput_voxels_per_second", {"stage": str(stage)}, float(voxels) / seconds)],
    )


def stored_values(db: Database) -> list[tuple[str, dict[str, str], float]]:
    """Every stored series (empty when nothing was recorded yet)."""
    with db.engine.connect() as connection:
        if not sa.inspect(connection).has_table(VALUES.name):
            return []
        rows = connection.execute(sa.select(VALUES.c.name, VALUES.c.labels, VALUES.c.value)).all()
    return [(r.name, json.loads(r.labels), float(r.value)) for r in rows if r.name in WORKSPACE_METRICS]


__all__ = ["STORED", "record_scores", "record_throughput", "store_values", "stored_values"]
