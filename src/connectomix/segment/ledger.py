"""Resume bookkeeping for block-wise runs: a small SQLite file in the run's work directory.

The ledger (``<workdir>/ledger.sqlite``, WAL journal) holds two tables:

``meta(key, value)``
    ``param_hash`` (SHA-256 of the run's parameters as canonical JSON), ``params`` (that JSON), ``created_at``
    and ``status`` (``running`` or ``complete``).
``blocks(idx, box, status, n_objects, seconds, finished_at, counters, core_ids, error)``
    One row per block that finished (``status='done'``) or whose segmentation raised (``'failed'``, with the
    error text). ``idx`` is the block's C-order index on the block grid; ``box`` is JSON
    ``{"core": [start_zyx, stop_zyx], "subvolume": [start_zyx, stop_zyx]}`` in global voxels;
    ``seconds`` is the wall time the block took; ``finished_at`` is ISO 8601 UTC; ``counters`` is the
    segmenter's counters as JSON; ``core_ids`` is the local ids present in the block's core (little-endian
    uint32 bytes).

A block is recorded as done only after its scratch output has been written, in one transaction, so a run
interrupted at any point can be resumed: blocks recorded as done are skipped. A run with different
parameters must not reuse the ledger: :meth:`Ledger.open` raises :class:`InputError` on a hash mismatch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connectomix.errors import CorruptDataError, InputError
from connectomix.volume.box import Box

LEDGER_NAME = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    idx INTEGER PRIMARY KEY,
    box TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    n_objects INTEGER,
    seconds REAL,
    finished_at TEXT NOT NULL,
    counters TEXT,
    core_ids BLOB,
    error TEXT
);
"""


def param_hash(params: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``params`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(_canonical(params).encode()).hexdigest()


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _box_json(core: Box, subvolume: Box) -> str:
    return json.dumps(
        {
            "core": [list(core.start), list(core.stop)],
            "subvolume": [list(subvolume.start), list(subvolume.stop)],
        }
    )


@dataclass(frozen=True)
class BlockRecord:
    """A finished block as the ledger holds it (boxes in global (z, y, x) voxels, seconds wall time)."""

    index: int
    core: Box
    subvolume: Box
    n_objects: int
    seconds: float
    finished_at: str
    counters: dict[str, float] = field(default_factory=dict)
    core_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))


class Ledger:
    """The ledger of one block-wise run (see the module docstring). Use as a context manager."""

    def __init__(self, path: Path, params: dict[str, Any]) -> None:
        """Open or create the ledger at ``path`` for a run with ``params`` (JSON-serialisable).

        Raises :class:`InputError` when the file belongs to a run with other parameters.
        """
        self.path = Path(path)
        self.params = params
        self.hash = param_hash(params)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CorruptDataError(f"{self.path}: not a usable ledger database ({exc})") from None
        stored = self.get_meta("param_hash")
        if stored is None:
            with self._db:
                self._db.execute("BEGIN")
                self._set_meta("param_hash", self.hash)
                self._set_meta("params", _canonical(params))
                self._set_meta("created_at", _now())
                self._set_meta("status", "running")
        elif stored != self.hash:
            differences = self._differences(params)
            self.close()
            raise InputError(
                f"{self.path.parent}: this work directory holds a run with other parameters "
                f"({differences}); delete the work directory or use a new output path"
            )

    # -- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def set_status(self, status: str) -> None:
        """Set the run's status (``running`` or ``complete``)."""
        with self._db:
            self._db.execute("BEGIN")
            self._set_meta("status", status)

    @property
    def status(self) -> str:
        return self.get_meta("status") or "running"

    def _differences(self, params: dict[str, Any]) -> str:
        try:
            old = json.loads(self.get_meta("params") or "{}")
        except json.JSONDecodeError:
            return "unreadable stored parameters"
        new = json.loads(_canonical(params))
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not keys:
            return "parameter hash differs"
        return "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in keys[:4])

    # -- blocks -----------------------------------------------------------------------------------------
    def record_done(
        self,
        index: int,
        core: Box,
        subvolume: Box,
        *,
        n_objects: int,
        seconds: float,
        counters: dict[str, float],
        core_ids: np.ndarray,
    ) -> None:
        """Record that block ``index`` finished (call after its scratch output is written)."""
        ids = np.ascontiguousarray(core_ids, dtype="<u4")
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO blocks (idx, box, status, n_objects, seconds, finished_at, counters,"
                " core_ids, error) VALUES (?, ?, 'done', ?, ?, ?, ?, ?, NULL)",
                (
                    int(index),
                    _box_json(core, subvolume),
                    int(n_objects),
                    float(seconds),
                    _now(),
                    json.dumps({k: float(v) for k, v in counters.items()}, sort_keys=True),
                    ids.tobytes(),
                ),
            )

    def record_failed(self, index: int, core: Box, subvolume: Box, error: str) -> None:
        """Record that segmenting block ``index`` raised ``error`` (a later run retries it)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO blocks (idx, box, status, finished_at, error) "
                "VALUES (?, ?, 'failed', ?, ?)",
                (int(index), _box_json(core, subvolume), _now(), error),
            )

    def finished(self) -> dict[int, BlockRecord]:
        """Every block recorded as done, by index."""
        rows = self._db.execute(
            "SELECT idx, box, n_objects, seconds, finished_at, counters, core_ids FROM blocks "
            "WHERE status = 'done' ORDER BY idx"
        ).fetchall()
        records: dict[int, BlockRecord] = {}
        for idx, box_text, n_objects, seconds, finished_at, counters, core_ids in rows:
            boxes = json.loads(box_text)
            records[int(idx)] = BlockRecord(
                index=int(idx),
                core=Box(*boxes["core"]),
                subvolume=Box(*boxes["subvolume"]),
                n_objects=int(n_objects),
                seconds=float(seconds),
                finished_at=str(finished_at),
                counters=json.loads(counters) if counters else {},
                core_ids=np.frombuffer(core_ids or b"", dtype="<u4").astype(np.uint32),
            )
        return records

    def failures(self) -> dict[int, str]:
        """Blocks whose last attempt raised, with the error text."""
        rows = self._db.execute("SELECT idx, error FROM blocks WHERE status = 'failed'").fetchall()
        return {int(i): str(e) for i, e in rows}

    # -- life cycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
