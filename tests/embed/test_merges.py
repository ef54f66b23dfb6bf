"""The supervised merge head: contact distances, its training set, scores and split tasks."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.embed.evaluate import merge_tasks, roc_auc
from connectomix.embed.merges import MergeHead, contact_distances, training_set
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def _table(segments, positions_xyz, embeddings) -> EmbeddingTable:
    return EmbeddingTable(
        np.asarray(segments, np.uint64),
        np.arange(len(segments)),
        np.asarray(positions_xyz, float),
        np.asarray(embeddings, np.float32),
    )


def test_contact_distances_are_nm_to_the_shared_faces():
    labels = np.zeros((4, 6, 10), np.uint64)
    labels[:, :, :5], labels[:, :, 5:] = 3, 8  # the faces between them lie at x = 4.5
    labels[:, :, 9] = 0
    # global voxels: the array starts at (z, y, x) = (100, 0, 0); rows in (x, y, z)
    table = _table([3, 3, 3, 7], [[0, 2, 101], [4, 2, 101], [9, 2, 101], [0, 0, 100]], np.zeros((4, 2)))
    d = contact_distances(
        table, labels, {3: (3, 8)}, voxel_offset_zyx=(100, 0, 0), resolution_nm_zyx=(10, 4, 4)
    )
    assert d[:3] == pytest.approx([4.5 * 4, 0.5 * 4, 4.5 * 4])
    assert np.isinf(d[3])  # segment 7 is not a merge


def _segments(rng: np.random.Generator, n_segments: int, merged: bool, first_id: int):
    """Segments of 12 nodes along x (100 nm apart); in merged ones the 4 nodes within 200 nm of the contact
    carry a shifted embedding (what the head must learn), the rest look like true bodies."""
    rows, ids, pos, dist = [], [], [], []
    for k in range(n_segments):
        emb = rng.normal(size=(12, 8))
        x = np.arange(12) * 10.0
        d = np.abs(x * 10.0 - 550.0) if merged else np.full(12, np.inf)
        if merged:
            emb[d < 200] += np.r_[3.0, -3.0, np.zeros(6)]
        rows.append(emb)
        ids += [first_id + k] * 12
        pos.append(np.column_stack([x, np.full(12, 5.0 * k), np.zeros(12)]))
        dist.append(d)
    return _table(ids, np.concatenate(pos), np.concatenate(rows)), np.concatenate(dist)


def test_head_learns_contact_nodes_and_flags_merged_segments():
    rng = np.random.default_rng(0)
    true_train, _ = _segments(rng, 30, False, 1)
    merged_train, dist = _segments(rng, 30, True, 100)
    x, y = training_set([true_train], [merged_train], [dist], near_nm=200, gap_nm=300)
    # per merged segment, nodes 50, 50, 150, 150 nm from the contact are positives, the 6 at 250-450 nm are
    # left out, the 2 at 550 nm are negatives
    assert int(y.sum()) == 4 * 30 and len(y) == len(x) == 30 * 12 + 30 * 6
    head = MergeHead.fit([true_train], [merged_train], [dist], near_nm=200, gap_nm=300, epochs=30)
    true_test, _ = _segments(rng, 10, False, 1000)
    merged_test, _ = _segments(rng, 10, True, 2000)
    t, m = head.scores(true_test), head.scores(merged_test)
    assert len(t) == len(m) == 10 and all(0.0 <= s.score <= 1.0 for s in t + m)
    assert roc_auc([s.score for s in m], [s.score for s in t]) > 0.9
    probability = head.node_probabilities(merged_test)
    contact = np.tile(np.abs(np.arange(12) * 100.0 - 550.0) < 200, 10)
    assert probability[contact].mean() > probability[~contact].mean() + 0.3
    tasks = merge_tasks(m, merged_test, (10.0, 10.0, 10.0), threshold=0.5, method="segclr-merge-head")
    assert tasks and all(t.kind == "split" and t.evidence["method"] == "segclr-merge-head" for t in tasks)


def test_training_set_needs_both_classes():
    rng = np.random.default_rng(1)
    true_train, _ = _segments(rng, 3, False, 1)
    with pytest.raises(InputError, match="near merge contacts"):
        training_set([true_train], [], [])
    with pytest.raises(InputError, match="distance arrays"):
        training_set([true_train], [true_train], [])
