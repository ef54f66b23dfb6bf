"""Serving the metrics: a registry with the process and workspace metrics, and a standalone HTTP exporter.

``cx metrics serve --port 9464`` runs :func:`serve_metrics` for batch runs and streaming: Prometheus scrapes
``http://127.0.0.1:9464/metrics``. The web app serves the same registry at ``/metrics``
(:mod:`connectomix.proofread.web.app`). Both bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from connectomix.errors import InputError
from connectomix.observe.collector import WorkspaceCollector
from connectomix.observe.metrics import REGISTRY
from connectomix.proofread.db import Database

#: The port ``cx metrics serve`` listens on by default (Prometheus' registry of exporter ports lists 9464
#: for OpenTelemetry-style exporters; any free port works).
DEFAULT_PORT = 9464


class _ProcessMetrics(Collector):
    """Forwards the process registry's samples (so one registry serves both kinds)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def build_registry(database: str | Database | None = None, *, clock: Any = None) -> CollectorRegistry:
    """A registry of this process's metrics and the workspace database's (read at every scrape).

    ``clock`` (Unix seconds; default ``time.time``) decides which task leases have expired.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(WorkspaceCollector(database, clock=clock))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's samples in the Prometheus text format."""
    return generate_latest(registry)


@contextlib.contextmanager
def serve_metrics(
    port: int = DEFAULT_PORT, *, database: str | Database | None = None, host: str = "127.0.0.1"
) -> Iterator[tuple[str, int]]:
    """Serve ``/metrics`` on ``host:port`` (port 0 picks a free one) until the context ends.

    Yields the address actually bound, ``(host, port)``.
    """
    from prometheus_client import start_http_server

    if not 0 <= int(port) < 65536:
        raise InputError(f"port must be 0 … 65535, got {port!r}")
    registry = build_registry(database)
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        yield host, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


__all__ = ["DEFAULT_PORT", "build_registry", "exposition", "serve_metrics"]
