"""The Grafana dashboard shipped with connectomix (``observe/grafana/connectomix.json``) and what it queries.

Import it in Grafana (Dashboards → New → Import, or file provisioning) and pick the Prometheus data source
that scrapes ``cx metrics serve`` and the web app's ``/metrics``. Rows: proofreading queue, throughput,
quality, learner.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

_METRIC = re.compile(r"\bconnectomix_[a-z0-9_]+")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana JSON (a dict)."""
    text = resources.files("connectomix.observe").joinpath("grafana/connectomix.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def panel_queries(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(panel title, PromQL expression)`` for every query of every panel (rows included)."""
    board = board if board is not None else dashboard()
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels", []))

    walk(board.get("panels", []))
    return found


def metric_family(series: str) -> str:
    """The metric family a series name belongs to (``x_bucket`` / ``x_count`` / ``x_sum`` → ``x``)."""
    for suffix in _SERIES_SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


def queried_series(board: dict[str, Any] | None = None) -> set[str]:
    """Every ``connectomix_*`` series name the dashboard's queries use."""
    return {name for _, expr in panel_queries(board) for name in _METRIC.findall(expr)}


__all__ = ["dashboard", "metric_family", "panel_queries", "queried_series"]
