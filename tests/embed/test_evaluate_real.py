"""Evaluation: retrieval and merge scores (definitions), a tiny real-data run, flags into the task queue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectomix.embed.evaluate import (
    merge_pairs,
    merge_scores,
    merge_tasks,
    retrieval,
    roc_auc,
    size_matched,
    touching_pairs,
)
from connectomix.embed.merge_detector import DetectorTraining
from connectomix.embed.realdata import RealEvaluation, run_real_evaluation
from connectomix.embed.records import EmbeddingTable
from connectomix.proofread.queue import TaskQueue

pytestmark = pytest.mark.usefixtures("one_thread")


def _table(segments, positions, embeddings) -> EmbeddingTable:
    n = len(segments)
    return EmbeddingTable(
        np.asarray(segments, np.uint64),
        np.arange(n),
        np.asarray(positions, float),
        np.asarray(embeddings, np.float32),
    )


def test_retrieval_excludes_nearby_nodes_of_the_same_body():
    # body 1: nodes at x = 0, 50, 500 voxels (10 nm: 0, 0.5, 5 µm); body 2: x = 1000, 1050
    positions = [[0, 0, 0], [50, 0, 0], [500, 0, 0], [1000, 0, 0], [1050, 0, 0]]
    embeddings = [[0.0], [0.0], [1.0], [1.1], [5.0]]
    result = retrieval(_table([1, 1, 1, 2, 2], positions, embeddings), (10, 10, 10), exclude_nm=1000)
    # queries: nodes 0, 1 (their far body-1 partner is node 2) and node 2; body 2 has no node beyond 1 µm
    assert result.n_queries == 3
    # node 0 → nearest allowed is node 2 (1.0) over node 3 (1.1): hit; node 1 likewise; node 2 → node 3 (miss)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.chance == pytest.approx((1 / 3 + 1 / 3 + 2 / 4) / 3)


def test_two_clusters_score_high_and_auc():
    rng = np.random.default_rng(0)
    rows, segments, positions = [], [], []
    for seg in range(1, 21):  # 10 merged-like segments (two clouds), 10 single clouds
        n = 20
        base = rng.normal(size=(n, 8))
        if seg <= 10:
            base[: n // 2] += 6.0
        rows.append(base)
        segments += [seg] * n
        positions.append(rng.uniform(0, 100, (n, 3)))
    table = _table(segments, np.concatenate(positions), np.concatenate(rows))
    scores = merge_scores(table, min_nodes=6)
    merged = [s for s in scores if s.segment_id <= 10]
    single = [s for s in scores if s.segment_id > 10]
    assert min(s.score for s in merged) > max(s.score for s in single)
    assert roc_auc([s.score for s in merged], [s.score for s in single]) == 1.0
    assert roc_auc([1, 2], [1, 2]) == 0.5
    assert len(size_matched(merged[:3], single)) == 3
    tasks = merge_tasks(merged, table, (10.0, 10.0, 10.0), threshold=0.0, top_k=4)
    assert len(tasks) == 4 and all(t.kind == "split" for t in tasks)
    assert [t.score for t in tasks] == sorted((s.score for s in merged), reverse=True)[:4]
    task = tasks[0]
    assert task.evidence["sources_xyz"][0] == list(task.point_xyz)
    assert task.evidence["sinks_xyz"][0] != task.evidence["sources_xyz"][0]
    assert task.point_nm_xyz == tuple(10.0 * v for v in task.point_xyz)


def test_touching_pairs_and_merging():
    labels = np.zeros((4, 6, 6), np.uint64)
    labels[:, :, :3], labels[:, :, 3:] = 5, 9
    labels[:, 5, :] = 0
    pairs = touching_pairs(labels, min_contact=1)
    assert pairs.tolist() == [[5, 9, 4 * 5]]
    merged, which = merge_pairs(labels, pairs, max_pairs=3)
    assert which == {5: (5, 9)} and set(np.unique(merged).tolist()) == {0, 5}


def test_tiny_real_run_is_above_chance_and_flags_go_to_the_queue(testdata, tmp_path: Path):
    settings = RealEvaluation(
        steps=20,
        batch_pairs=8,
        gala=("gala-train",),
        train_box=((60, 0, 0), (125, 160, 160)),
        eval_box=((125, 40, 40), (185, 200, 200)),
        spacing_nm=120.0,
        n_merges=15,
        flag_fpr=0.9,  # flags most merged segments: this checks the plumbing into the queue
        precision="fp32",
        detector=DetectorTraining(n_draws=1, n_merges=10, max_true_nodes=150, epochs=1),
    )
    report, tasks = run_real_evaluation(settings)
    assert report["training"]["steps"] == 20
    for name in ("random-init", "trained"):
        found = report["results"][name]["retrieval"]
        assert found["n_queries"] > 100
        assert found["accuracy"] > 2 * found["chance"], (name, found)
        merge = report["results"][name]["merge"]
        assert merge["n_merged"] >= 5 and 0.0 <= merge["auc"] <= 1.0
        parts = report["results"][name]["merge_signal"]["parts"]  # both bodies of each merge got nodes
        assert parts["n_merged"] >= 3 and parts["n_true"] > 10
        assert 0.0 <= parts["auc_parts_vs_halves"] <= 1.0 and 0.0 < parts["median_r2_parts"] < 1.0
    head = report["results"]["trained"]["merge_head"]  # trained on the z < 125 half only
    assert head["n_merged"] == report["results"]["trained"]["merge"]["n_merged"]
    assert 0.0 <= head["auc"] <= 1.0 and 0.0 <= head["auc_size_matched"] <= 1.0
    nodes = head["contact_nodes"]
    assert nodes["n_near"] > 0 and nodes["n_true"] > 100 and 0.0 <= nodes["auc_near_vs_true"] <= 1.0
    assert "merge_head" not in report["results"]["random-init"]
    fitted = report["merge_detector"]  # fine-tuned on the z < 125 half only, scored like the head
    assert fitted["n_positive"] > 0 and fitted["n_negative"] > 150 and len(fitted["losses"]) == 1
    detector = report["results"]["merge-detector"]["merge_head"]
    assert detector["n_merged"] == head["n_merged"] and detector["contact_nodes"]["n_near"] > 0
    assert 0.0 <= detector["auc_size_matched"] <= 1.0
    assert report["seconds"]["merge_head"] > 0
    assert "_merge" not in report["results"]["trained"] and "_head" not in report["results"]["trained"]
    flags = report["flags"]  # the threshold is set on the training half's true bodies
    assert flags["threshold_from"] == "true bodies of the training half"
    assert 0.0 <= flags["false_positive_rate_evaluation"] <= 1.0
    assert report["seconds"]["threshold"] > 0
    assert tasks, "with a threshold at the 10th percentile of true bodies most merged segments are flagged"
    assert all(t.kind == "split" and len(t.segment_ids) == 1 for t in tasks)
    assert all(t.evidence["method"] == "segclr-2means" for t in tasks)
    queue = TaskQueue(tmp_path / "queue.db")
    assert queue.enqueue_many(tasks) == len(tasks)
    assert queue.enqueue_many(tasks) == 0  # stable keys: flagging again adds nothing
    first = queue.claim("alice")
    assert first is not None and first.task.kind == "split"
    assert first.task.score == pytest.approx(max(t.score for t in tasks))
    queue.dispose()
