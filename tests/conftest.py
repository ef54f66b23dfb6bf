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
