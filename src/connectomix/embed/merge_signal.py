"""Is there merge information in the embeddings at all? Two diagnostics beside the merge-detection AUC.

A merge score (:func:`~connectomix.embed.evaluate.merge_scores`, :class:`~connectomix.embed.merges.MergeHead`)
can only work if the embeddings of a falsely merged segment carry a trace of the merge. These measure that
trace directly, with the ground truth of the synthetic merges, so a failed AUC can be told apart from a
badly chosen score:

* **Part separation** (:func:`part_separation`): how far apart, in embedding space, the two true bodies of
  each merged segment lie: ``R² = 1 − W / T`` of the split of its node embeddings into the nodes of body
  ``a`` and of body ``b`` (the oracle split, not 2-means). Its peer is the same statistic on every true body
  cut into two spatial halves (along the principal axis of its node positions, the two parts in a
  proportion drawn from the merged segments' own): a two-part object that is not a merge. ROC AUC of parts
  against halves: 0.5 means a merge's two bodies differ no more than two halves of one body, so no
  clustering of the embeddings can find it; above 0.5, body identity survives the merge.
* **Contact nodes** (:func:`contact_node_auc`): a per-node merge classifier's probabilities (a
  :class:`~connectomix.embed.merges.MergeHead` trained elsewhere) on nodes of merged segments within
  ``near_nm`` of the contact between their bodies, against all nodes of true bodies; and, as the control,
  nodes of merged segments farther than ``far_nm`` from any contact (whose cutouts cannot see the partner)
  against the same true nodes. A head that found the contact gives near ≫ 0.5 and far ≈ 0.5; far > 0.5
  means it learned which bodies get merged (their size, their neighbourhood), not the merge.

Embeddings are standardised per dimension with the true bodies' moments, as the merge scores are.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from connectomix.embed.evaluate import embedding_stats, roc_auc, split_r2
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError


def part_labels(
    table: EmbeddingTable,
    labels: np.ndarray,
    merged: Mapping[int, tuple[int, int]],
    *,
    voxel_offset_zyx: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Per row of ``table`` (embeddings of a merged segmentation): 0 if its node lies in body ``a`` of its
    segment's ``merged = {segment id: (a, b)}`` entry, 1 if in body ``b``, -1 otherwise (segment not merged,
    node in neither body). ``labels``: the ground-truth ``(z, y, x)`` array whose first voxel is
    ``voxel_offset_zyx`` in the table's global voxels (positions ``(x, y, z)``)."""
    voxel = np.rint(table.positions_xyz[:, ::-1]).astype(np.int64) - np.asarray(voxel_offset_zyx, np.int64)
    inside = np.all((voxel >= 0) & (voxel < np.asarray(labels.shape)), axis=1)
    if not inside.all():
        row = int(np.flatnonzero(~inside)[0])
        where = table.positions_xyz[row].tolist()
        raise InputError(f"row {row} at (x, y, z) {where} lies outside the labels")
    body = labels[tuple(voxel.T)].astype(np.uint64)
    out = np.full(len(table), -1, dtype=np.int64)
    for segment, (a, b) in merged.items():
        rows = table.segment_ids == np.uint64(segment)
        out[rows & (body == np.uint64(a))] = 0
        out[rows & (body == np.uint64(b))] = 1
    return out


def _halves(positions: np.ndarray, fraction: float) -> np.ndarray:
    """0/1 split of node positions: the ``fraction`` of nodes farthest along the principal axis are 1."""
    centred = positions - positions.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    return (along > np.quantile(along, 1.0 - fraction)).astype(np.int64)


def part_separation(
    true_table: EmbeddingTable,
    merged_table: EmbeddingTable,
    parts: np.ndarray,
    *,
    min_nodes: int = 6,
    seed: int = 0,
) -> dict[str, Any]:
    """Part separation of the module docstring. ``parts``: :func:`part_labels` of ``merged_table``'s rows.
    Segments with fewer than ``min_nodes`` rows, or merged ones with nodes in only one body, are skipped."""
    if len(parts) != len(merged_table):
        raise InputError(f"{len(parts)} part labels for {len(merged_table)} rows")
    mean, std = embedding_stats(true_table)
    merged_r2, fractions = [], []
    z_merged = (merged_table.embeddings - mean) / std
    for start, stop in itertools.pairwise(merged_table.run_starts()):
        split = parts[start:stop]
        if stop - start < min_nodes or not (np.any(split == 0) and np.any(split == 1)):
            continue
        keep = split >= 0
        merged_r2.append(split_r2(z_merged[start:stop][keep], split[keep]))
        fractions.append(float(np.mean(split[keep] == 1)))
    halves_r2 = []
    if fractions:
        rng = np.random.default_rng([seed, 17])
        z_true = (true_table.embeddings - mean) / std
        for start, stop in itertools.pairwise(true_table.run_starts()):
            if stop - start < min_nodes:
                continue
            fraction = fractions[int(rng.integers(len(fractions)))]
            halves = _halves(true_table.positions_xyz[start:stop], fraction)
            if halves.min() != halves.max():
                halves_r2.append(split_r2(z_true[start:stop], halves))
    return {
        "auc_parts_vs_halves": roc_auc(merged_r2, halves_r2),
        "median_r2_parts": float(np.median(merged_r2)) if merged_r2 else float("nan"),
        "median_r2_halves": float(np.median(halves_r2)) if halves_r2 else float("nan"),
        "n_merged": len(merged_r2),
        "n_true": len(halves_r2),
    }


def contact_node_auc(
    node_probabilities_true: np.ndarray,
    node_probabilities_merged: np.ndarray,
    distances_nm: np.ndarray,
    *,
    near_nm: float = 500.0,
    far_nm: float = 1500.0,
) -> dict[str, Any]:
    """Contact-node AUCs of the module docstring, from a head's per-node probabilities on true and on
    merged rows and the merged rows' :func:`~connectomix.embed.merges.contact_distances` (nm)."""
    if len(distances_nm) != len(node_probabilities_merged):
        raise InputError(f"{len(distances_nm)} contact distances for {len(node_probabilities_merged)} rows")
    near = distances_nm < near_nm
    far = np.isfinite(distances_nm) & (distances_nm > far_nm)
    return {
        "auc_near_vs_true": roc_auc(node_probabilities_merged[near], node_probabilities_true),
        "auc_far_vs_true": roc_auc(node_probabilities_merged[far], node_probabilities_true),
        "near_nm": near_nm,
        "far_nm": far_nm,
        "n_near": int(near.sum()),
        "n_far": int(far.sum()),
        "n_true": len(node_probabilities_true),
    }


__all__ = ["contact_node_auc", "part_labels", "part_separation"]
