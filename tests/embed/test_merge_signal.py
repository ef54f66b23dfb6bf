"""Merge-signal diagnostics: which body each node of a merge lies in, part separation, contact-node AUC."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.embed.merge_signal import contact_node_auc, part_labels, part_separation
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError


def _table(segments, positions_xyz, embeddings) -> EmbeddingTable:
    return EmbeddingTable(
        np.asarray(segments, np.uint64),
        np.arange(len(segments)),
        np.asarray(positions_xyz, float),
        np.asarray(embeddings, np.float32),
    )


def test_part_labels_name_the_body_under_each_node():
    labels = np.zeros((2, 4, 10), np.uint64)
    labels[:, :, :4], labels[:, :, 4:8], labels[:, :, 8:] = 5, 9, 7
    # global voxels start at (z, y, x) = (10, 0, 0); rows in (x, y, z)
    table = _table([5, 5, 5, 7], [[1, 1, 10], [6, 2, 11], [9, 0, 10], [9, 3, 11]], np.zeros((4, 2)))
    parts = part_labels(table, labels, {5: (5, 9)}, voxel_offset_zyx=(10, 0, 0))
    # body 5, body 9, neither (a voxel of 7 under segment 5), a segment that is not a merge
    assert parts.tolist() == [0, 1, -1, -1]
    outside = _table([5], [[1, 1, 0]], np.zeros((1, 2)))
    with pytest.raises(InputError, match="outside the labels"):
        part_labels(outside, labels, {5: (5, 9)}, voxel_offset_zyx=(10, 0, 0))


def _bodies(rng, n, shift_parts: float, gradient: float, first_id: int):
    """``n`` segments of 12 nodes along x; the last 4 nodes are body b (part 1). Embeddings: noise, plus
    ``shift_parts`` on part 1, plus ``gradient`` × position along the segment."""
    ids, pos, emb, parts = [], [], [], []
    for k in range(n):
        x = np.arange(12.0)
        part = (x >= 8).astype(np.int64)
        e = rng.normal(size=(12, 6))
        e[:, 0] += shift_parts * part + gradient * x / 11.0
        ids += [first_id + k] * 12
        pos.append(np.column_stack([x * 10, np.full(12, 3.0 * k), np.zeros(12)]))
        emb.append(e)
        parts.append(part)
    return _table(ids, np.concatenate(pos), np.concatenate(emb)), np.concatenate(parts)


def test_parts_that_differ_are_found_and_parts_that_do_not_are_not():
    rng = np.random.default_rng(0)
    true_table, _ = _bodies(rng, 30, 0.0, 0.0, 1)
    distinct, parts = _bodies(rng, 20, 4.0, 0.0, 100)
    found = part_separation(true_table, distinct, parts)
    assert found["n_merged"] == 20 and found["n_true"] == 30
    assert found["auc_parts_vs_halves"] > 0.9
    assert found["median_r2_parts"] > found["median_r2_halves"]
    # true bodies whose embedding drifts along them, merges whose two bodies look alike: the halves of one
    # body are further apart than a merge's bodies (what FIB-25's lite encoder shows)
    drifting, _ = _bodies(rng, 30, 0.0, 10.0, 1)
    alike, parts = _bodies(rng, 20, 0.0, 0.0, 100)
    assert part_separation(drifting, alike, parts)["auc_parts_vs_halves"] < 0.2
    with pytest.raises(InputError, match="part labels"):
        part_separation(true_table, alike, parts[:-1])


def test_contact_node_auc_separates_a_head_that_sees_the_contact_from_one_that_sees_the_body():
    rng = np.random.default_rng(1)
    distances = np.r_[rng.uniform(0, 400, 50), rng.uniform(2000, 3000, 50)]
    true_p = rng.uniform(0.0, 0.5, 200)
    sees_contact = np.r_[rng.uniform(0.5, 1.0, 50), rng.uniform(0.0, 0.5, 50)]
    result = contact_node_auc(true_p, sees_contact, distances)
    assert result["auc_near_vs_true"] > 0.95 and 0.35 < result["auc_far_vs_true"] < 0.65
    assert (result["n_near"], result["n_far"], result["n_true"]) == (50, 50, 200)
    sees_body = rng.uniform(0.5, 1.0, 100)  # high on every node of a merged segment
    result = contact_node_auc(true_p, sees_body, distances)
    assert result["auc_far_vs_true"] > 0.95
    with pytest.raises(InputError, match="contact distances"):
        contact_node_auc(true_p, sees_body, distances[:-1])
