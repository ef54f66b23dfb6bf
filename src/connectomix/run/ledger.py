"""The run ledger: which blocks of a block-wise run are finished, in the workspace database.

Two tables (component ``runs`` of the workspace schema, :mod:`connectomix.proofread.db`):

``cx_runs(id, name, param_hash, params, status, created_at, updated_at)``
    One row per named run. ``param_hash`` is the SHA-256 of the run's parameters as canonical JSON; opening
    a run by name with other parameters is refused (a run never mixes two configurations' blocks).
``cx_run_blocks(run_id, block, status, attempts, box, seconds, finished_at, worker, error, result)``
    One row per block that finished (``done``) or failed its last attempt (``failed``): ``block`` is the
    block's index in the task's list, ``box`` JSON ``[start_zyx, stop_zyx]`` in voxels, ``seconds`` the wall
    time of the successful attempt, ``finished_at`` Unix seconds, ``worker`` where it ran, ``error`` the
    last failure (type and message), ``result`` the block's JSON result.

A block is recorded as done only after its ``process`` function returned, which is after its output was
written; so a run killed at any moment and started again redoes at most the blocks in flight. Writes are
single-row transactions, safe from many processes (SQLite WAL, or PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connectomix.errors import InputError, NotFoundError
from connectomix.proofread.db import Database, open_database
from connectomix.volume.box import Box

RunStatus = Literal["running", "complete", "failed"]
NAME_LENGTH = 200

_metadata = sa.MetaData()

RUNS = sa.Table(
    "cx_runs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False, unique=True),
    sa.Column("param_hash", sa.String(64), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

BLOCKS = sa.Table(
    "cx_run_blocks",
    _metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("cx_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("block", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("box", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float),
    sa.Column("finished_at", sa.Float, nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.Text),
)


def _migration_1(connection: Connection) -> None:
    for table in (RUNS, BLOCKS):
        table.create(connection)


MIGRATIONS = [_migration_1]


def param_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``params`` as canonical JSON (sorted keys; non-JSON values as ``str``)."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()


def canonical_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)


def box_json(box: Box) -> str:
    return json.dumps([list(box.start), list(box.stop)])


@dataclass(frozen=True)
class BlockRecord:
    """One block as the ledger holds it (box in (z, y, x) voxels, seconds wall time)."""

    block: int
    status: Literal["done", "failed"]
    attempts: int
    box: Box
    seconds: float | None
    finished_at: float
    worker: str | None
    error: str | None
    result: dict[str, Any] | None


class BlockLedger:
    """The record of one named run in the workspace database.

    Opening a name that exists with the same parameters resumes it; with other parameters raises
    :class:`InputError` unless ``restart`` (which forgets the old run's blocks).
    """

    def __init__(
        self,
        database: str | Database | None,
        name: str,
        params: Mapping[str, Any],
        *,
        restart: bool = False,
    ) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= NAME_LENGTH:
            raise InputError(f"a run name must be 1 to {NAME_LENGTH} characters, got {name!r}")
        self.db = open_database(database)
        self._owns_db = not isinstance(database, Database)
        self.db.ensure_schema("runs", MIGRATIONS)
        self.name = name
        self.params = dict(params)
        self.param_hash = param_hash(self.params)
        now = time.time()
        with self.db.begin() as connection:
            row = connection.execute(sa.select(RUNS).where(RUNS.c.name == name)).first()
            if row is not None and (restart or row.param_hash != self.param_hash):
                if not restart:
                    raise InputError(
                        f"run {name!r} exists in {self.db.safe_url} with other parameters; start it again "
                        "with restart (cx: --restart) or give the run another name"
                    )
                connection.execute(BLOCKS.delete().where(BLOCKS.c.run_id == row.id))
                connection.execute(RUNS.delete().where(RUNS.c.id == row.id))
                row = None
            if row is None:
                self.run_id = int(
                    connection.execute(
                        RUNS.insert().values(
                            name=name,
                            param_hash=self.param_hash,
                            params=canonical_json(self.params),
                            status="running",
                            created_at=now,
                            updated_at=now,
                        )
                    ).inserted_primary_key[0]
                )
            else:
                self.run_id = int(row.id)

    # -- reading ----------------------------------------------------------------------------------------
    def records(self) -> dict[int, BlockRecord]:
        """Every recorded block (done or failed), by block index."""
        with self.db.engine.connect() as connection:
            rows = connection.execute(sa.select(BLOCKS).where(BLOCKS.c.run_id == self.run_id)).all()
        return {int(row.block): _record(row) for row in rows}

    def finished(self) -> dict[int, BlockRecord]:
        """The blocks recorded as done, by block index."""
        return {k: r for k, r in self.records().items() if r.status == "done"}

    def status(self) -> RunStatus:
        with self.db.engine.connect() as connection:
            value = connection.execute(sa.select(RUNS.c.status).where(RUNS.c.id == self.run_id)).scalar()
        if value is None:
            raise NotFoundError(f"run {self.name!r} was deleted from {self.db.safe_url}")
        return value  # type: ignore[no-any-return]

    # -- writing ----------------------------------------------------------------------------------------
    def record_done(
        self,
        block: int,
        box: Box,
        *,
        attempts: int,
        seconds: float,
        worker: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """Record ``block`` as done (replacing a failed record of an earlier run)."""
        self._upsert(
            block,
            status="done",
            attempts=int(attempts),
            box=box_json(box),
            seconds=float(seconds),
            finished_at=time.time(),
            worker=worker,
            error=None,
            result=None if result is None else json.dumps(dict(result), default=str),
        )

    def record_failed(self, block: int, box: Box, *, attempts: int, error: str, worker: str | None) -> None:
        """Record that ``block`` failed its last allowed attempt with ``error``."""
        self._upsert(
            block,
            status="failed",
            attempts=int(attempts),
            box=box_json(box),
            seconds=None,
            finished_at=time.time(),
            worker=worker,
            error=error,
            result=None,
        )

    def set_status(self, status: RunStatus) -> None:
        with self.db.begin() as connection:
            connection.execute(
                RUNS.update().where(RUNS.c.id == self.run_id).values(status=status, updated_at=time.time())
            )

    def _upsert(self, block: int, **values: Any) -> None:
        key = (BLOCKS.c.run_id == self.run_id) & (BLOCKS.c.block == int(block))
        with self.db.begin() as connection:
            exists = connection.execute(sa.select(BLOCKS.c.block).where(key)).first() is not None
            if exists:
                connection.execute(BLOCKS.update().where(key).values(**values))
            else:
                connection.execute(BLOCKS.insert().values(run_id=self.run_id, block=int(block), **values))
            connection.execute(RUNS.update().where(RUNS.c.id == self.run_id).values(updated_at=time.time()))

    def close(self) -> None:
        if self._owns_db:
            self.db.dispose()

    def __enter__(self) -> BlockLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(row: sa.Row[Any]) -> BlockRecord:
    start, stop = json.loads(row.box)
    return BlockRecord(
        block=int(row.block),
        status=row.status,
        attempts=int(row.attempts),
        box=Box(start, stop),
        seconds=None if row.seconds is None else float(row.seconds),
        finished_at=float(row.finished_at),
        worker=row.worker,
        error=row.error,
        result=None if row.result is None else json.loads(row.result),
    )


def run_summaries(database: str | Database | None) -> list[dict[str, Any]]:
    """Every run in the database: name, status, blocks done and failed, total block seconds."""
    db = open_database(database)
    try:
        db.ensure_schema("runs", MIGRATIONS)
        with db.engine.connect() as connection:
            done = sa.func.sum(sa.case((BLOCKS.c.status == "done", 1), else_=0))
            failed = sa.func.sum(sa.case((BLOCKS.c.status == "failed", 1), else_=0))
            query = (
                sa.select(
                    RUNS.c.name,
                    RUNS.c.status,
                    sa.func.coalesce(done, 0).label("done"),
                    sa.func.coalesce(failed, 0).label("failed"),
                    sa.func.coalesce(sa.func.sum(BLOCKS.c.seconds), 0.0).label("seconds"),
                )
                .select_from(RUNS.outerjoin(BLOCKS, BLOCKS.c.run_id == RUNS.c.id))
                .group_by(RUNS.c.id, RUNS.c.name, RUNS.c.status)
                .order_by(RUNS.c.id)
            )
            rows = connection.execute(query).all()
    finally:
        if not isinstance(database, Database):
            db.dispose()
    return [
        {
            "name": r.name,
            "status": r.status,
            "done": int(r.done),
            "failed": int(r.failed),
            "seconds": float(r.seconds),
        }
        for r in rows
    ]


__all__ = ["BLOCKS", "RUNS", "BlockLedger", "BlockRecord", "param_hash", "run_summaries"]
