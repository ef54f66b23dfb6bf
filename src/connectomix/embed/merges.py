"""A supervised merge head on node embeddings: which nodes sit at a false merge, hence which segments.

SegCLR answers downstream questions with small classifiers on its embeddings; this is the one for merge
detection. Training data are synthetic merges made from ground truth in a **training** region
(:func:`~connectomix.embed.evaluate.touching_pairs`, :func:`~connectomix.embed.evaluate.merge_pairs`),
skeletonised and embedded as one segment each, plus the true bodies of that region:

* a node of a merged segment within ``near_nm`` (Euclidean, nm) of the contact between its two bodies
  (:func:`contact_distances`) is a positive: its cutout shows both objects under one mask;
* nodes of true bodies are negatives, and so are nodes of merged segments farther than
  ``near_nm + gap_nm`` from the contact (their cutouts cannot see the partner); those in between are left out.

A residual MLP (:class:`~connectomix.embed.classify.EmbeddingClassifier`) learns ``P(near a merge contact)``
per node; a segment's score is the largest node probability (:meth:`MergeHead.scores`), returned as
:class:`~connectomix.embed.evaluate.MergeScore` rows that :func:`~connectomix.embed.evaluate.merge_tasks`
turns into ``split`` tasks. The cluster labels of each score are the 2-means split of the segment's
embeddings (as :func:`~connectomix.embed.evaluate.merge_scores`), which gives the tasks their source/sink.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from connectomix.embed.classify import ClassifierConfig, EmbeddingClassifier
from connectomix.embed.evaluate import MergeScore, two_means
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError

DEFAULT_NEAR_NM = 700.0
DEFAULT_GAP_NM = 800.0


def contact_distances(
    table: EmbeddingTable,
    labels: np.ndarray,
    merged: Mapping[int, tuple[int, int]],
    *,
    voxel_offset_zyx: Sequence[int] = (0, 0, 0),
    resolution_nm_zyx: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Per row of ``table``, the Euclidean distance in nm from its node to the nearest voxel face shared by
    the two bodies its segment merged (``merged = {segment id: (a, b)}`` ids of the ``(z, y, x)`` array
    ``labels`` whose first voxel is ``voxel_offset_zyx`` in the table's global voxels); ``inf`` for rows of
    segments not in ``merged`` or whose bodies do not touch."""
    res = np.asarray(resolution_nm_zyx, dtype=np.float64)
    faces, sides = [], []
    for axis in range(3):
        lo = np.take(labels, np.arange(labels.shape[axis] - 1), axis=axis)
        hi = np.take(labels, np.arange(1, labels.shape[axis]), axis=axis)
        touch = np.argwhere((lo != hi) & (lo != 0) & (hi != 0))
        pairs = np.stack([lo[tuple(touch.T)], hi[tuple(touch.T)]], axis=1)
        centre = touch.astype(np.float64)
        centre[:, axis] += 0.5
        faces.append(centre)
        sides.append(np.sort(pairs, axis=1))
    face_zyx = np.concatenate(faces) + np.asarray(voxel_offset_zyx, dtype=np.float64)
    face_pairs = np.concatenate(sides)
    out = np.full(len(table), np.inf)
    for segment, (a, b) in merged.items():
        rows = np.flatnonzero(table.segment_ids == np.uint64(segment))
        hit = (face_pairs[:, 0] == min(a, b)) & (face_pairs[:, 1] == max(a, b))
        if len(rows) == 0 or not hit.any():
            continue
        tree = cKDTree(face_zyx[hit] * res)
        out[rows] = tree.query(table.positions_xyz[rows, ::-1] * res)[0]
    return out


def training_set(
    true_tables: Sequence[EmbeddingTable],
    merged_tables: Sequence[EmbeddingTable],
    distances: Sequence[np.ndarray],
    *,
    near_nm: float = DEFAULT_NEAR_NM,
    gap_nm: float = DEFAULT_GAP_NM,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X (N, D) float32, y (N,) int64)``: the nodes and labels of the module docstring, from true-body
    tables and merged-segment tables with their rows' :func:`contact_distances`."""
    if len(merged_tables) != len(distances):
        raise InputError(f"{len(merged_tables)} merged tables but {len(distances)} distance arrays")
    xs, ys = [], []
    for table in true_tables:
        xs.append(table.embeddings)
        ys.append(np.zeros(len(table), np.int64))
    for table, dist in zip(merged_tables, distances, strict=True):
        if len(dist) != len(table):
            raise InputError(f"{len(dist)} contact distances for {len(table)} rows")
        keep = (dist < near_nm) | (dist > near_nm + gap_nm)
        xs.append(table.embeddings[keep])
        ys.append((dist[keep] < near_nm).astype(np.int64))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    if len(np.unique(y)) < 2:
        raise InputError(
            f"the merge head needs nodes near merge contacts and others, got labels {np.unique(y)}"
        )
    return x, y


@dataclass
class MergeHead:
    """A trained per-node merge-contact classifier (see the module docstring)."""

    classifier: EmbeddingClassifier
    near_nm: float = DEFAULT_NEAR_NM

    @classmethod
    def fit(
        cls,
        true_tables: Sequence[EmbeddingTable],
        merged_tables: Sequence[EmbeddingTable],
        distances: Sequence[np.ndarray],
        *,
        near_nm: float = DEFAULT_NEAR_NM,
        gap_nm: float = DEFAULT_GAP_NM,
        seed: int = 0,
        epochs: int = 40,
    ) -> MergeHead:
        """Train on :func:`training_set` (an MLP of width 64, ``epochs`` passes, seeded)."""
        x, y = training_set(true_tables, merged_tables, distances, near_nm=near_nm, gap_nm=gap_nm)
        config = ClassifierConfig(kind="mlp", hidden=64, epochs=epochs, seed=seed)
        return cls(EmbeddingClassifier(config).fit(x, y), near_nm)

    def node_probabilities(self, table: EmbeddingTable) -> np.ndarray:
        """``(N,)`` probability that each row's node lies within ``near_nm`` of a merge contact."""
        if len(table) == 0:
            return np.zeros(0)
        prediction = self.classifier.predict(table.embeddings)
        return prediction.probabilities[:, int(np.flatnonzero(prediction.classes == 1)[0])]

    def scores(self, table: EmbeddingTable, *, min_nodes: int = 6, seed: int = 0) -> list[MergeScore]:
        """Per segment with at least ``min_nodes`` rows: the largest node probability, in [0, 1]."""
        return max_probability_scores(table, self.node_probabilities(table), min_nodes=min_nodes, seed=seed)


def max_probability_scores(
    table: EmbeddingTable, probabilities: np.ndarray, *, min_nodes: int = 6, seed: int = 0
) -> list[MergeScore]:
    """Per segment of ``table`` with at least ``min_nodes`` rows: the largest of its rows'
    ``probabilities``; the cluster labels (the split a task suggests) are the 2-means split of its
    standardised embeddings."""
    if len(probabilities) != len(table):
        raise InputError(f"{len(probabilities)} probabilities for {len(table)} rows")
    rng = np.random.default_rng([seed, 13])
    emb = table.embeddings.astype(np.float64)
    out = []
    for start, stop in itertools.pairwise(table.run_starts()):
        if stop - start < min_nodes:
            continue
        points = emb[start:stop]
        labels = two_means((points - points.mean(0)) / np.maximum(points.std(0), 1e-6), rng)
        score = float(probabilities[start:stop].max())
        out.append(MergeScore(int(table.segment_ids[start]), score, np.arange(start, stop), labels))
    return out
