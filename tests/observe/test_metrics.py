"""Metrics: names and labels, values from a real workspace database, the dashboard's queries, /metrics."""

from __future__ import annotations

import urllib.request

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from connectomix.errors import InputError
from connectomix.flag.tasks import Task
from connectomix.observe.collector import QUEUE_BUCKETS
from connectomix.observe.dashboard import dashboard, metric_family, panel_queries, queried_series
from connectomix.observe.exporter import build_registry, exposition, serve_metrics
from connectomix.observe.metrics import (
    METRIC_NAMES,
    REGISTRY,
    STAGE_SECONDS,
    STREAM_CHUNKS,
    STREAM_LATENCY,
    record_block,
)
from connectomix.observe.store import record_scores, record_throughput, store_values
from connectomix.proofread.queue import TaskQueue
from connectomix.run.ledger import BlockLedger
from connectomix.volume import Box


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Scores:
    vi_split, vi_merge, vi, arand, n_split_bodies, n_merging_segments = 0.6, 0.3, 0.9, 0.07, 12, 5


def tasks(n: int) -> list[Task]:
    return [Task.create("merge", (10 * k, 5, 5), (k + 1, k + 2), 1.0 - k / 100) for k in range(n)]


def samples(registry) -> dict[str, list]:
    """Series name → [(labels, value), …] of a registry's exposition (parsed like Prometheus does)."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


@pytest.fixture
def workspace(tmp_path):
    """A workspace database with queue history, recorded scores and a run ledger; the process metrics used."""
    url = f"sqlite:///{tmp_path / 'cx.db'}"
    clock = Clock()
    queue = TaskQueue(url, clock=clock, lease_seconds=7200.0)
    queue.enqueue_many(tasks(5))
    clock.now += 40.0  # tasks wait 40 s, 100 s and 4000 s before their first claim
    first = queue.claim("ana")
    clock.now += 30.0  # handled in 30 s
    queue.complete(first.id, "ana", {"answer": "merge"})
    clock.now += 30.0
    second = queue.claim("ben")
    clock.now += 3900.0
    queue.complete(second.id, "ben", {"answer": "correct"})
    queue.claim("ana")  # held: claimed, not done
    queue.dispose()
    record_scores(url, Scores(), segmentation="zarr://seg.zarr")
    with BlockLedger(url, "segment:demo", {"x": 1}) as ledger:
        ledger.record_done(0, Box((0, 0, 0), (8, 8, 8)), attempts=1, seconds=0.5)
        ledger.record_failed(1, Box((8, 0, 0), (16, 8, 8)), attempts=3, error="ValueError: no", worker=None)
    # every labelled process metric gets a series
    record_block("segment:demo", 0.5, 512)
    record_throughput(url, "segment", 1000, 2.0)
    STAGE_SECONDS.labels(stage="segment").observe(3.0)
    STREAM_LATENCY.observe(1.5)
    STREAM_CHUNKS.labels(outcome="done").inc()
    return url, clock


def test_metric_names_follow_prometheus_conventions():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert name.startswith("connectomix_") and name == name.lower(), name
    types = {family.name: family.type for family in REGISTRY.collect()}
    for name, kind in types.items():
        if kind == "counter":
            assert f"{name}_total" in METRIC_NAMES, name  # counters end in _total
        if kind == "histogram":
            assert name.endswith("_seconds"), name  # durations in base units
    assert {"connectomix_vi_bits", "connectomix_edge_errors", "connectomix_queue_depth"} <= set(METRIC_NAMES)
    assert "connectomix_throughput_voxels_per_second" in METRIC_NAMES


def test_workspace_metrics_come_from_the_database(workspace):
    url, clock = workspace
    found = samples(build_registry(url, clock=clock))
    # queue: 5 tasks, 2 done, 1 claimed, 2 queued; waits of the 3 claimed tasks 40 s, 100 s and 4,000 s
    assert found["connectomix_queue_depth"] == [({}, 2.0)]
    states = {labels["state"]: value for labels, value in found["connectomix_queue_tasks"]}
    assert states == {"queued": 2.0, "claimed": 1.0, "done": 2.0, "skipped": 0.0}
    waits = dict(
        (labels["le"], value) for labels, value in found["connectomix_queue_task_wait_seconds_bucket"]
    )
    assert waits["30"] == 0 and waits["60"] == 1 and waits["120"] == 2 and waits["3600"] == 2
    assert waits["7200"] == 3 and waits["+Inf"] == 3 and len(waits) == len(QUEUE_BUCKETS) + 1
    assert found["connectomix_queue_task_wait_seconds_count"] == [({}, 3.0)]
    assert found["connectomix_queue_task_wait_seconds_sum"] == [({}, pytest.approx(4140.0))]
    assert found["connectomix_queue_task_handling_seconds_count"] == [({}, 2.0)]
    assert found["connectomix_queue_task_handling_seconds_sum"] == [({}, pytest.approx(3930.0))]
    # quality recorded by a run
    vi = {labels["kind"]: value for labels, value in found["connectomix_vi_bits"]}
    assert vi == {"split": 0.6, "merge": 0.3, "total": 0.9}
    assert found["connectomix_arand"] == [({"segmentation": "zarr://seg.zarr"}, 0.07)]
    errors = {labels["kind"]: value for labels, value in found["connectomix_edge_errors"]}
    assert errors == {"split": 12.0, "merge": 5.0}
    assert found["connectomix_throughput_voxels_per_second"] == [({"stage": "segment"}, 500.0)]
    # the run ledger
    blocks = {(labels["run"], labels["status"]): value for labels, value in found["connectomix_run_blocks"]}
    assert blocks == {("segment:demo", "done"): 1.0, ("segment:demo", "failed"): 1.0}
    # once its lease (2 h) has run out, the claimed task counts as queued again
    clock.now += 8000
    later = samples(build_registry(url, clock=clock))
    assert later["connectomix_queue_depth"] == [({}, 3.0)]
    assert {labels["state"]: value for labels, value in later["connectomix_queue_tasks"]}["claimed"] == 0


def test_stored_values_are_replaced_and_checked(tmp_path):
    url = f"sqlite:///{tmp_path / 'cx.db'}"
    store_values(url, [("connectomix_arand", {"segmentation": "a"}, 0.5)])
    store_values(url, [("connectomix_arand", {"segmentation": "a"}, 0.25)])
    assert samples(build_registry(url))["connectomix_arand"] == [({"segmentation": "a"}, 0.25)]
    with pytest.raises(InputError, match="not a stored metric"):
        store_values(url, [("connectomix_queue_depth", {}, 1.0)])
    with pytest.raises(InputError, match="needs a number"):
        store_values(url, [("connectomix_arand", {}, "high")])


def test_an_unreadable_database_keeps_the_process_metrics(tmp_path):
    broken = tmp_path / "cx.db"
    broken.write_text("this is not a database")
    found = samples(build_registry(f"sqlite:///{broken}"))
    assert found["connectomix_exporter_errors_total"] == [({}, 1.0)]
    assert "connectomix_cache_hit_ratio" in found and "connectomix_queue_depth" not in found


def test_the_dashboard_queries_only_metrics_the_exporter_serves(workspace):
    url, _ = workspace
    board = dashboard()
    assert board["uid"] == "connectomix-overview" and board["schemaVersion"] >= 30
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Proofreading queue", "Throughput", "Quality", "Learner"]
    queries = panel_queries(board)
    assert len(queries) >= 20
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["type"] == "prometheus", panel["title"]
    served = set(samples(build_registry(url)))
    queried = queried_series(board)
    assert {metric_family(s) for s in queried} <= set(METRIC_NAMES)
    # learner metrics appear once a registry exists; everything else is served by this workspace now
    missing = {s for s in queried if s not in served and "learner" not in s}
    assert not missing, missing


def test_learner_metrics_from_the_weights_registry(tmp_path):
    from connectomix.learn.registry import WeightsRegistry
    from connectomix.segment.models import FFNConfig, build_model

    url = f"sqlite:///{tmp_path / 'cx.db'}"
    registry = WeightsRegistry(url, tmp_path / "ws", user="ana")
    registry.add_base(build_model(FFNConfig(depth=2, width=4, fov_zyx=(9, 9, 9))), name="fib25")
    registry.dispose()
    found = samples(build_registry(url))
    assert found["connectomix_learner_models"] == [
        ({"name": "fib25", "kind": "base", "status": "promoted"}, 1.0)
    ]
    assert "connectomix_learner_fit_duration_seconds_count" in found


def test_the_standalone_exporter_serves_http_on_loopback(workspace):
    url, _ = workspace
    with serve_metrics(0, database=url) as (host, port):  # real time: the held lease has expired
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
    assert "connectomix_queue_depth 3.0" in text
    with pytest.raises(InputError, match="port must be"), serve_metrics(70000, database=url):
        pass


def test_the_web_app_serves_metrics_to_admins_only(tmp_path):
    from tests.proofread.test_web_api import build_workspace  # the proofreading fixture's workspace

    from connectomix.proofread.web import create_app

    world = build_workspace(tmp_path, f"sqlite:///{tmp_path / 'cx.db'}")
    app = create_app(world["db"], world["workspace"], edit_log="seg")
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        proofreader = {"Authorization": f"Bearer {world['tokens']['alice']}"}
        assert client.get("/metrics", headers=proofreader).status_code == 403
        admin = {"Authorization": f"Bearer {world['tokens']['root']}"}
        response = client.get("/metrics", headers=admin)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        assert "connectomix_queue_depth 3.0" in response.text
        assert "/metrics" in client.get("/openapi.json").json()["paths"]
