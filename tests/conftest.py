"""Shared fixtures: the real test data (skipped with a reason when absent) and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectomix.volume.cache import ChunkCache, set_shared_cache

REPO_ROOT = Path(__file__).resolve().parents[1]


def find_testdata() -> Path | None:
    """``$CX_DATA_DIR`` or ``../shared/testdata`` beside the repository, if present."""
    env = os.environ.get("CX_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "testdata")
    for candidate in candidates:
        if (candidate / "README.md").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The real data folder; tests using it skip where it is absent."""
    path = find_testdata()
    if path is None:
        pytest.skip(
            "real test data not found: set CX_DATA_DIR or place shared/testdata beside the repository"
        )
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test gets its own shared chunk cache so counters and contents do not leak between tests."""
    cache = ChunkCache(max_bytes=256 << 20)
    set_shared_cache(cache)
    yield cache
    set_shared_cache(None)


POSTGRES_URL = os.environ.get("CX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url():
    """A PostgreSQL URL with an empty schema of its own (dropped afterwards); skips where no server answers.

    Each test gets a fresh PostgreSQL schema (via ``options=-csearch_path=…``) so tests never see each
    other's tables and the shared ``test`` database is left as it was.
    """
    import uuid

    import sqlalchemy as sa

    try:
        admin = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with admin.begin() as connection:
            schema = f"cx_test_{uuid.uuid4().hex[:12]}"
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # any driver or connection failure means: no usable server here
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each database test runs on a SQLite file and on PostgreSQL (skipped where no server answers)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cx.db'}"
    return request.getfixturevalue("postgres_url")
