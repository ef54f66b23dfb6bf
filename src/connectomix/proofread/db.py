"""The workspace database: one SQLAlchemy engine (a SQLite file by default, PostgreSQL for many users) and
versioned schemas.

Each component (``queue``, ``edits``, ``users``, …) owns its tables and an ordered list of migrations;
:meth:`Database.ensure_schema` applies the ones a database has not seen yet, inside one transaction, and
records the component's version in ``cx_schema``. Concurrent openers (several processes) are serialised: on
PostgreSQL by a transaction-scoped advisory lock, on SQLite by ``BEGIN IMMEDIATE``. SQLite files run in WAL
mode with a busy timeout, so readers never block the writer and writers queue instead of failing.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connectomix.errors import CorruptDataError, InputError

Migration = Callable[[Connection], None]
Dialect = Literal["sqlite", "postgresql"]

#: How long a SQLite writer waits for the write lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 60.0

_SCHEMA = sa.Table(
    "cx_schema",
    sa.MetaData(),
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def database_url(target: str | Path | None) -> str:
    """A SQLAlchemy URL for ``target``: a URL as is, a path as a SQLite file, None as the configured one."""
    if target is None:
        from connectomix.config import get_settings

        return get_settings().resolved_database_url
    text = str(target)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


class Database:
    """An open workspace database. Use :meth:`begin` for a transaction; close with :meth:`dispose`."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise InputError(
                f"not a database URL: {url!r} (expected sqlite:///FILE, postgresql://HOST/DB or a file path)"
            ) from exc
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise InputError(f"unsupported database {backend!r} in {url!r}: expected sqlite or postgresql")
        self.dialect: Dialect = backend  # type: ignore[assignment]
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(
                url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}
            )
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            sa.event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed when the block ends, rolled back when it raises.

        On SQLite the transaction takes the write lock at once (``BEGIN IMMEDIATE``), so read-then-write
        sequences such as claiming a task cannot interleave between processes.
        """
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.OperationalError as exc:
            raise CorruptDataError(f"database {self.safe_url} failed: {_first_line(exc)}") from exc

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for messages)."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def ensure_schema(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply ``migrations[v:]`` where ``v`` is the component's recorded version; returns the new version.

        A database whose recorded version is newer than the code's raises :class:`CorruptDataError`
        (written by a newer connectomix) instead of guessing.
        """
        with self.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": zlib.crc32(b"connectomix-schema")},
                )
            _SCHEMA.create(connection, checkfirst=True)
            row = connection.execute(
                sa.select(_SCHEMA.c.version).where(_SCHEMA.c.component == component)
            ).first()
            version = 0 if row is None else int(row[0])
            if version > len(migrations):
                raise CorruptDataError(
                    f"database {self.safe_url} has schema {component!r} version {version}, newer than this "
                    f"connectomix knows ({len(migrations)}); upgrade connectomix"
                )
            for migration in migrations[version:]:
                migration(connection)
            if row is None:
                connection.execute(_SCHEMA.insert().values(component=component, version=len(migrations)))
            elif version != len(migrations):
                connection.execute(
                    _SCHEMA.update().where(_SCHEMA.c.component == component).values(version=len(migrations))
                )
        return len(migrations)

    def schema_version(self, component: str) -> int:
        """The recorded schema version of ``component`` (0 when it has never been created)."""
        with self.engine.connect() as connection:
            if not sa.inspect(connection).has_table("cx_schema"):
                return 0
            row = connection.execute(
                sa.select(_SCHEMA.c.version).where(_SCHEMA.c.component == component)
            ).first()
        return 0 if row is None else int(row[0])

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()


def open_database(target: str | Path | Database | None = None) -> Database:
    """The database at ``target`` (a URL, a SQLite file path, an open :class:`Database`, or None for the
    configured one: ``CX_DATABASE_URL`` or ``<workspace>/connectomix.db``)."""
    if isinstance(target, Database):
        return target
    return Database(database_url(target))


def _sqlite_on_connect(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # pysqlite's own transaction handling is off (isolation_level=None); take the write lock up front.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


__all__: list[str] = ["Database", "Migration", "database_url", "open_database"]
