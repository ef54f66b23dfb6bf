"""A chunk cache shared by every volume reader.

Chunks are kept in memory in least-recently-used order under a byte budget; optionally they are also
written to an on-disk cache (one ``.npy`` file per chunk, written under a temporary name and renamed), which
helps sources that are slow to decode (gzip'd HDF5, PNG stacks) across processes. A :class:`Prefetcher`
reads chunks ahead in a background thread so that the next ``read`` finds them in memory.

Keys are ``(volume_key, chunk_start_zyx)``; ``volume_key`` identifies a volume's content (its URL plus a
stamp of its files, or a process-local version that changes on every write), so a write or a changed file
never returns stale data. Only keys that are stable across processes go to the disk tier.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ChunkKey = tuple[str, tuple[int, int, int]]
#: volume keys that only mean something inside this process; never written to the disk tier.
LOCAL_PREFIX = "local:"


@dataclass
class CacheStats:
    """Counters since the cache was made (or ``reset_stats``)."""

    hits: int = 0
    misses: int = 0
    disk_hits: int = 0
    evictions: int = 0
    prefetched: int = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of lookups served from memory or disk (0 when nothing was looked up)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ChunkCache:
    """LRU cache of chunk arrays in memory, under ``max_bytes``, with an optional disk tier.

    Thread-safe: the prefetcher fills it from a background thread while readers use it.
    """

    def __init__(self, max_bytes: int = 1 << 30, disk_dir: Path | str | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._entries: OrderedDict[ChunkKey, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self._pending: dict[ChunkKey, threading.Event] = {}  # chunks a prefetcher is loading right now
        self.stats = CacheStats()

    # -- lookups --------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: ChunkKey) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: ChunkKey) -> np.ndarray | None:
        """The cached chunk (read-only view) or None; counts a hit or a miss."""
        with self._lock:
            array = self._entries.get(key)
            if array is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return array
        array = self._disk_get(key)
        with self._lock:
            if array is not None:
                self.stats.hits += 1
                self.stats.disk_hits += 1
                self._put_memory(key, array)
            else:
                self.stats.misses += 1
        return array

    def get_or_load(self, key: ChunkKey, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached chunk, or ``load()`` stored and returned.

        If a prefetcher is loading this chunk right now, wait for it instead of decoding it twice.
        """
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            pending.wait()
        array = self.get(key)
        if array is None:
            array = load()
            self.put(key, array)
        return array

    def put(self, key: ChunkKey, array: np.ndarray) -> None:
        """Store a chunk (it is made read-only so that no caller can change the cached copy)."""
        array = np.ascontiguousarray(array)
        array.setflags(write=False)
        with self._lock:
            self._put_memory(key, array)
        self._disk_put(key, array)

    def invalidate(self, volume_key: str) -> None:
        """Forget every chunk of one volume, in memory and on disk."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == volume_key]:
                self._bytes -= self._entries.pop(key).nbytes
        if self.disk_dir is not None:
            directory = self._disk_volume_dir(volume_key)
            if directory.is_dir():
                for path in directory.glob("*.npy"):
                    path.unlink(missing_ok=True)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = CacheStats()

    # -- memory tier ----------------------------------------------------------------------------------
    def _put_memory(self, key: ChunkKey, array: np.ndarray) -> None:
        old = self._entries.pop(key, None)  # dropped even if the new array is too big: never keep stale data
        if old is not None:
            self._bytes -= old.nbytes
        if array.nbytes > self.max_bytes:
            return
        self._entries[key] = array
        self._bytes += array.nbytes
        while self._bytes > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self.stats.evictions += 1

    # -- disk tier ------------------------------------------------------------------------------------
    def _disk_volume_dir(self, volume_key: str) -> Path:
        assert self.disk_dir is not None
        digest = hashlib.sha1(volume_key.encode()).hexdigest()[:20]
        return self.disk_dir / digest

    def _disk_path(self, key: ChunkKey) -> Path:
        volume_key, start = key
        return self._disk_volume_dir(volume_key) / f"{start[0]}_{start[1]}_{start[2]}.npy"

    def _disk_get(self, key: ChunkKey) -> np.ndarray | None:
        if self.disk_dir is None or key[0].startswith(LOCAL_PREFIX):
            return None
        path = self._disk_path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None
        array.setflags(write=False)
        return array

    def _disk_put(self, key: ChunkKey, array: np.ndarray) -> None:
        if self.disk_dir is None or key[0].startswith(LOCAL_PREFIX):
            return
        path = self._disk_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, array, allow_pickle=False)
        tmp.replace(path)


class Prefetcher:
    """Reads chunks ahead in one background thread so later reads hit the cache.

    ``submit(keys_and_loaders)`` returns at once; ``wait()`` blocks until everything submitted is cached.
    Chunks already cached are skipped; errors in the background are kept and raised by ``wait()``.
    """

    def __init__(self, cache: ChunkCache, max_workers: int = 1) -> None:
        self.cache = cache
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cx-prefetch")
        self._futures: list[Future[None]] = []

    def submit(self, items: Iterable[tuple[ChunkKey, Callable[[], np.ndarray]]]) -> int:
        """Queue chunk loads; returns how many were queued (cached or already queued ones are not)."""
        queued = 0
        cache = self.cache
        for key, load in items:
            with cache._lock:
                if key in cache._entries or key in cache._pending:
                    continue
                event = cache._pending[key] = threading.Event()
            self._futures.append(self._pool.submit(self._load, key, load, event))
            queued += 1
        return queued

    def _load(self, key: ChunkKey, load: Callable[[], np.ndarray], event: threading.Event) -> None:
        cache = self.cache
        try:
            cache.put(key, load())
            with cache._lock:
                cache.stats.prefetched += 1
        finally:
            # Readers waiting on this chunk go on; after a failure they load it themselves and see the error.
            with cache._lock:
                cache._pending.pop(key, None)
            event.set()

    def wait(self) -> None:
        """Block until every queued load has finished; re-raise the first background error."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def close(self) -> None:
        """Stop the background thread; loads that never started release their waiting readers."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self.cache._lock:
            for key in [k for k, e in self.cache._pending.items() if not e.is_set()]:
                self.cache._pending.pop(key).set()


_shared_cache: ChunkCache | None = None
_shared_lock = threading.Lock()


def shared_cache() -> ChunkCache:
    """The process-wide cache used by every volume unless given another (sized from the settings)."""
    global _shared_cache
    with _shared_lock:
        if _shared_cache is None:
            from connectomix.config import get_settings

            settings = get_settings()
            _shared_cache = ChunkCache(settings.cache_bytes, settings.disk_cache_dir)
        return _shared_cache


def set_shared_cache(cache: ChunkCache | None) -> None:
    """Replace the process-wide cache (None: make a new one from the settings on next use)."""
    global _shared_cache
    with _shared_lock:
        _shared_cache = cache
