"""Applying edits to an edit log's storage: one transaction per edit (lock the log's row, repair
current.zarr after a crash, record the edit, its chunk changes, segment index and lineage rows, rewrite the
touched chunks of current.zarr, commit), and the queries the operations build on.

:mod:`connectomix.proofread.edits` plans each operation (what to change); this module makes a plan durable.
See :mod:`connectomix.proofread.versions` for the tables, the files and the crash-safety protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connectomix.errors import CorruptDataError, NotFoundError
from connectomix.proofread.db import Database
from connectomix.proofread.versions import (
    MAX_ID,
    Grid,
    LogFiles,
    Triple,
    chunk_changes,
    chunk_ids,
    chunks_at,
    decode_chunk,
    edit_logs,
    edits,
    encode_chunk,
    id_from_db,
    id_to_db,
    lineage,
    segment_chunks,
)

Operation = Literal["merge", "split", "paint", "undo", "redo"]


@dataclass(frozen=True)
class Edit:
    """One entry of the log. ``version`` is the version this edit created; ids are uint64 as Python ints.

    ``new_ids`` became current and ``parent_ids`` stopped being current (undo: the reverted edit's parents
    come back, its new ids go). ``undone`` is True for a merge or split that an undo reverted (and no redo
    re-applied); ``inputs`` holds the operation's arguments (ids as strings, points as [x, y, z] voxels).
    """

    id: int
    version: int
    operation: Operation
    user: str
    time: float
    inputs: dict[str, Any]
    new_ids: tuple[int, ...]
    parent_ids: tuple[int, ...]
    undone: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (ids as strings)."""
        return {
            "id": self.id,
            "version": self.version,
            "operation": self.operation,
            "user": self.user,
            "time": self.time,
            "inputs": self.inputs,
            "new_ids": [str(i) for i in self.new_ids],
            "parent_ids": [str(i) for i in self.parent_ids],
            "undone": self.undone,
        }


@dataclass(frozen=True)
class Lineage:
    """Where an id came from and what replaced it, over the edits in effect (sorted ids)."""

    segment_id: int
    ancestors: tuple[int, ...]
    descendants: tuple[int, ...]
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment_id": str(self.segment_id),
            "ancestors": [str(i) for i in self.ancestors],
            "descendants": [str(i) for i in self.descendants],
            "current": self.current,
        }


@dataclass
class Change:
    """One chunk an edit rewrites: its index (z, y, x) and whole contents before and after."""

    index: Triple
    before: np.ndarray
    after: np.ndarray


@dataclass
class Plan:
    """What an edit does, computed under the log's lock before anything is written."""

    operation: Operation
    inputs: dict[str, Any]
    new_ids: tuple[int, ...]
    parent_ids: tuple[int, ...]
    changes: list[Change]
    next_id: int
    links: list[tuple[int, int]] = field(default_factory=list)  # (parent, child)
    target_id: int | None = None
    target_undone: bool | None = None


@dataclass(frozen=True)
class State:
    """The locked log row: current version and the next free segment id."""

    version: int
    next_id: int


class EditStore:
    """The storage side of one edit log: its database rows (``log_id``) and files (``files``)."""

    def __init__(self, db: Database, log_id: int, name: str, grid: Grid, root: Path) -> None:
        self.db = db
        self.log_id = log_id
        self.name = name
        self.grid = grid
        self.files = LogFiles(root, grid)

    def apply(self, build: Callable[[Connection, State], Plan], user: str) -> Edit:
        """Run one edit: lock the log, repair current.zarr if needed, plan, record, write, commit."""
        writing = False
        try:
            with self.db.begin() as connection:
                state = self.lock(connection)
                self.repair(connection, state)
                plan = build(connection, state)
                edit = self.record(connection, state, plan, user)
                self.files.write_state(state.version, [c.index for c in plan.changes])
                writing = True
                for change in plan.changes:
                    self.files.write_current_chunk(change.index, change.after)
            self.files.write_state(edit.version)
        except BaseException:
            if writing:
                self.recover()
            raise
        return edit

    def lock(self, connection: Connection) -> State:
        """Lock the log's row for this transaction (FOR UPDATE on PostgreSQL) and read its state."""
        query = sa.select(edit_logs.c.version, edit_logs.c.next_id).where(edit_logs.c.id == self.log_id)
        if self.db.dialect == "postgresql":
            query = query.with_for_update()
        row = connection.execute(query).first()
        if row is None:
            raise NotFoundError(f"edit log {self.name!r} no longer exists in {self.db.safe_url}")
        return State(int(row.version), id_from_db(int(row.next_id)))

    def repair(self, connection: Connection, state: State) -> None:
        """Make current.zarr equal the committed ``state.version`` (after a crash mid-edit)."""
        file_version, pending = self.files.read_state()
        if file_version == state.version and not pending:
            return
        if file_version < 0 or file_version > state.version:
            stale = set(self.grid.all_chunks())
        else:
            c = chunk_changes.c
            rows = connection.execute(
                sa.select(c.cz, c.cy, c.cx)
                .where(c.log_id == self.log_id, c.version > file_version, c.version <= state.version)
                .distinct()
            )
            stale = set(pending) | {(int(z), int(y), int(x)) for z, y, x in rows}
        for index, data in chunks_at(connection, self.files, self.log_id, sorted(stale), state.version):
            self.files.write_current_chunk(index, data)
        self.files.write_state(state.version)

    def recover(self) -> None:
        """After a failed edit: repair current.zarr in a new transaction (best effort)."""
        try:
            with self.db.begin() as connection:
                self.repair(connection, self.lock(connection))
        except Exception:  # best effort: the next edit repairs what is left
            return

    def record(self, connection: Connection, state: State, plan: Plan, user: str) -> Edit:
        """Insert the edit, its chunk changes, index updates and lineage links; bump the log's version."""
        version, now = state.version + 1, time.time()
        edit_id = connection.execute(
            edits.insert().values(
                log_id=self.log_id,
                version=version,
                operation=plan.operation,
                user_name=user,
                time=now,
                inputs=json.dumps(plan.inputs),
                new_ids=json.dumps([str(i) for i in plan.new_ids]),
                parent_ids=json.dumps([str(i) for i in plan.parent_ids]),
                undone=False,
                target_id=plan.target_id,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        if plan.changes:
            connection.execute(
                chunk_changes.insert(),
                [
                    {
                        "edit_id": edit_id,
                        "cz": ch.index[0],
                        "cy": ch.index[1],
                        "cx": ch.index[2],
                        "log_id": self.log_id,
                        "version": version,
                        "before": encode_chunk(ch.before),
                        "after": encode_chunk(ch.after),
                    }
                    for ch in plan.changes
                ],
            )
        self.update_index(connection, plan.changes)
        if plan.links:
            connection.execute(
                lineage.insert(),
                [
                    {"log_id": self.log_id, "parent": id_to_db(p), "child": id_to_db(c), "edit_id": edit_id}
                    for p, c in plan.links
                ],
            )
        if plan.target_id is not None:
            connection.execute(
                edits.update().where(edits.c.id == plan.target_id).values(undone=plan.target_undone)
            )
        connection.execute(
            edit_logs.update()
            .where(edit_logs.c.id == self.log_id)
            .values(version=version, next_id=id_to_db(min(plan.next_id, MAX_ID)))
        )
        return Edit(
            int(edit_id),
            version,
            plan.operation,
            user,
            now,
            plan.inputs,
            plan.new_ids,
            plan.parent_ids,
            False,
        )

    def update_index(self, connection: Connection, changes: Sequence[Change]) -> None:
        """Keep ``segment_chunks`` equal to the ids present in each chunk of the new version."""
        removed: list[dict[str, int]] = []
        added: list[dict[str, int]] = []
        for change in changes:
            before, after = chunk_ids(change.before), chunk_ids(change.after)
            z, y, x = change.index
            removed += [{"b_seg": id_to_db(i), "b_z": z, "b_y": y, "b_x": x} for i in before - after]
            added += [
                {"log_id": self.log_id, "segment_id": id_to_db(i), "cz": z, "cy": y, "cx": x}
                for i in after - before
            ]
        if removed:
            c = segment_chunks.c
            connection.execute(
                segment_chunks.delete().where(
                    c.log_id == self.log_id,
                    c.segment_id == sa.bindparam("b_seg"),
                    c.cz == sa.bindparam("b_z"),
                    c.cy == sa.bindparam("b_y"),
                    c.cx == sa.bindparam("b_x"),
                ),
                removed,
            )
        if added:
            connection.execute(segment_chunks.insert(), added)

    def target_changes(self, connection: Connection, target: Edit, restore: str) -> list[Change]:
        """Chunk changes that set ``target``'s chunks to its ``before`` (undo) or ``after`` (redo)."""
        c = chunk_changes.c
        rows = connection.execute(
            sa.select(c.cz, c.cy, c.cx, c.before, c.after)
            .where(c.edit_id == target.id)
            .order_by(c.cz, c.cy, c.cx)
        )
        changes = []
        for cz, cy, cx, before_blob, after_blob in rows:
            index = (int(cz), int(cy), int(cx))
            shape = self.grid.chunk_box(index).shape
            expected = decode_chunk(after_blob if restore == "before" else before_blob, shape)
            wanted = decode_chunk(before_blob if restore == "before" else after_blob, shape)
            current = self.files.read_current_chunk(index)
            if not np.array_equal(current, expected):
                raise CorruptDataError(
                    f"edit log {self.name!r}: chunk {index} differs from what edit {target.id} "
                    f"left; cannot {'undo' if restore == 'before' else 'redo'} it"
                )
            changes.append(Change(index, current, wanted))
        return changes

    def chunks_of(self, connection: Connection, segment: int, state: State) -> list[Triple]:
        """Chunk indices holding ``segment`` in the current version (NotFoundError if none)."""
        c = segment_chunks.c
        rows = connection.execute(
            sa.select(c.cz, c.cy, c.cx).where(c.log_id == self.log_id, c.segment_id == id_to_db(segment))
        ).all()
        if not rows:
            raise NotFoundError(f"segment {segment} does not exist in the current version ({state.version})")
        return sorted((int(z), int(y), int(x)) for z, y, x in rows)

    def exists(self, connection: Connection, segment: int) -> bool:
        """Whether ``segment`` is present in the current version."""
        c = segment_chunks.c
        query = sa.select(c.cz).where(c.log_id == self.log_id, c.segment_id == id_to_db(segment)).limit(1)
        return connection.execute(query).first() is not None

    def walk(self, connection: Connection, start: int, *, up: bool) -> set[int]:
        """Ids reachable from ``start`` through lineage links of edits in effect (parents if ``up``)."""
        src, dst = (lineage.c.child, lineage.c.parent) if up else (lineage.c.parent, lineage.c.child)
        seen: set[int] = set()
        frontier = {id_to_db(start)}
        while frontier:
            rows = connection.execute(
                sa.select(dst)
                .select_from(lineage.join(edits, lineage.c.edit_id == edits.c.id))
                .where(lineage.c.log_id == self.log_id, src.in_(sorted(frontier)), sa.not_(edits.c.undone))
            ).scalars()
            found = {int(v) for v in rows} - seen
            seen |= found
            frontier = found
        return {id_from_db(v) for v in seen}


def insert_log(
    connection: Connection,
    *,
    name: str,
    workspace: Path,
    urls: tuple[str, str | None, str | None],
    grid: Grid,
    next_id: int,
    index_rows: Sequence[tuple[int, Triple]],
) -> int:
    """Record a new log at version 0 with its segment index; returns its ``log_id``.

    ``urls``: segmentation, raw, boundary. ``index_rows``: ``(segment id, chunk index)`` pairs.
    """
    log_id = connection.execute(
        edit_logs.insert().values(
            name=name,
            workspace=str(Path(workspace).resolve()),
            segmentation_url=urls[0],
            raw_url=urls[1],
            boundary_url=urls[2],
            geometry=grid.to_json(),
            version=0,
            next_id=id_to_db(min(next_id, MAX_ID)),
            created=time.time(),
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    rows = [
        {"log_id": log_id, "segment_id": id_to_db(i), "cz": c[0], "cy": c[1], "cx": c[2]}
        for i, c in index_rows
    ]
    for start in range(0, len(rows), 10_000):
        connection.execute(segment_chunks.insert(), rows[start : start + 10_000])
    return int(log_id)


def find_row(database: Database, name: str) -> sa.Row[Any] | None:
    with database.engine.connect() as connection:
        return connection.execute(sa.select(edit_logs).where(edit_logs.c.name == name)).first()


def log_version(connection: Connection, log_id: int) -> int:
    value = connection.execute(sa.select(edit_logs.c.version).where(edit_logs.c.id == log_id)).scalar()
    if value is None:
        raise NotFoundError(f"edit log {log_id} no longer exists")
    return int(value)


def edit_from_row(row: sa.Row[Any]) -> Edit:
    return Edit(
        id=int(row.id),
        version=int(row.version),
        operation=row.operation,
        user=row.user_name,
        time=float(row.time),
        inputs=json.loads(row.inputs),
        new_ids=tuple(int(i) for i in json.loads(row.new_ids)),
        parent_ids=tuple(int(i) for i in json.loads(row.parent_ids)),
        undone=bool(row.undone),
    )


__all__ = [
    "Change",
    "Edit",
    "EditStore",
    "Lineage",
    "Operation",
    "Plan",
    "State",
    "edit_from_row",
    "find_row",
    "insert_log",
    "log_version",
]
