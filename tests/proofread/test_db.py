"""The workspace database: URLs, versioned schemas, concurrent openers, WAL on SQLite."""

from __future__ import annotations

import multiprocessing

import pytest
import sqlalchemy as sa

from connectomix.errors import CorruptDataError, InputError
from connectomix.proofread.db import Database, database_url, open_database


def _create_items(connection: sa.Connection) -> None:
    connection.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(20))"))


def _add_colour(connection: sa.Connection) -> None:
    connection.execute(sa.text("ALTER TABLE items ADD COLUMN colour VARCHAR(10)"))


def test_migrations_apply_once_and_in_order(database_url) -> None:
    with open_database(database_url) as db:
        assert db.schema_version("items") == 0
        assert db.ensure_schema("items", [_create_items]) == 1
        with db.begin() as c:
            c.execute(sa.text("INSERT INTO items (id, name) VALUES (1, 'a')"))
        assert db.ensure_schema("items", [_create_items]) == 1  # nothing re-run: the table is kept
        assert db.ensure_schema("items", [_create_items, _add_colour]) == 2
        with db.begin() as c:
            assert c.execute(sa.text("SELECT name, colour FROM items")).all() == [("a", None)]
        with pytest.raises(CorruptDataError, match="newer than this connectomix"):
            db.ensure_schema("items", [_create_items])


def test_a_failing_migration_leaves_the_schema_as_it_was(database_url) -> None:
    def broken(connection: sa.Connection) -> None:
        connection.execute(sa.text("CREATE TABLE half (id INTEGER)"))
        raise RuntimeError("boom")

    with open_database(database_url) as db:
        db.ensure_schema("items", [_create_items])
        with pytest.raises(RuntimeError):
            db.ensure_schema("items", [_create_items, broken])
        assert db.schema_version("items") == 1
        assert not sa.inspect(db.engine).has_table("half")


def _open_and_migrate(url: str) -> int:
    with open_database(url) as db:
        return db.ensure_schema("items", [_create_items, _add_colour])


def test_concurrent_openers_migrate_once(database_url) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_and_migrate, [database_url] * 4) == [2] * 4


def test_sqlite_runs_in_wal_mode_and_paths_become_sqlite_urls(tmp_path) -> None:
    url = database_url(tmp_path / "sub" / "cx.db")
    assert url.startswith("sqlite:///") and url.endswith("sub/cx.db")
    with Database(url) as db, db.begin() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert (tmp_path / "sub" / "cx.db").is_file()


@pytest.mark.parametrize("url", ["mysql://localhost/x", "not a url ::"])
def test_unsupported_or_malformed_urls_are_input_errors(url) -> None:
    with pytest.raises(InputError):
        Database(url)
