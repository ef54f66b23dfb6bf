"""A real Prometheus server (Debian's ``prometheus``) on 127.0.0.1 scrapes the exporter; the four core metrics
come back through Prometheus' query API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from connectomix.flag.tasks import Task
from connectomix.observe.exporter import serve_metrics
from connectomix.observe.store import record_scores, record_throughput
from connectomix.proofread.queue import TaskQueue

PROMETHEUS = shutil.which("prometheus")


class Scores:
    vi_split, vi_merge, vi, arand, n_split_bodies, n_merging_segments = 0.5, 0.25, 0.75, 0.1, 7, 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus not installed (Debian package 'prometheus')")
def test_prometheus_scrapes_the_four_core_metrics(tmp_path):
    url = f"sqlite:///{tmp_path / 'cx.db'}"
    queue = TaskQueue(url)
    queue.enqueue_many([Task.create("split", (k, 4, 4), (k + 1,), 0.5) for k in range(4)])
    queue.dispose()
    record_scores(url, Scores(), segmentation="seg-v1")
    record_throughput(url, "segment", 123_456, 2.0)  # 61,728 voxels/s
    with serve_metrics(0, database=url) as (host, exporter_port):
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: connectomix\n"
            f"    static_configs:\n      - targets: ['{host}:{exporter_port}']\n"
        )
        server = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            results: dict[str, list[dict]] = {}
            wanted = {
                "vi": 'connectomix_vi_bits{kind="total"}',
                "edge_errors": "connectomix_edge_errors",
                "throughput": 'connectomix_throughput_voxels_per_second{stage="segment"}',
                "queue_depth": "connectomix_queue_depth",
            }
            while time.monotonic() < deadline and len(results) < len(wanted):
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                for key, expr in wanted.items():
                    try:
                        found = query(port, expr)
                    except OSError:  # not listening yet
                        found = []
                    if found:
                        results[key] = found
                time.sleep(0.5)
            assert set(results) == set(wanted), f"Prometheus returned only {sorted(results)}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    (vi,) = results["vi"]
    assert vi["metric"]["segmentation"] == "seg-v1" and vi["metric"]["job"] == "connectomix"
    assert float(vi["value"][1]) == pytest.approx(0.75)
    edges = {r["metric"]["kind"]: float(r["value"][1]) for r in results["edge_errors"]}
    assert edges == {"split": 7.0, "merge": 3.0}
    assert float(results["throughput"][0]["value"][1]) == pytest.approx(61_728.0)
    assert float(results["queue_depth"][0]["value"][1]) == 4.0
