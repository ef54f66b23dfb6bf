"""How good are the embeddings? Same-body retrieval and merge detection on ground truth, and merge flags.

**Same-body retrieval** (:func:`retrieval`): for each node, its nearest neighbour in embedding space
(Euclidean) among all other nodes *except the nodes of its own body within* ``exclude_nm`` (**Euclidean**
distance between node positions, 1 µm by default) must belong to its own body. Only nodes whose body has
some node beyond the exclusion radius are queries. Chance is the mean, over queries, of the fraction of a
query's candidates that belong to its body.

**Merge detection** (:func:`merge_scores`): a segment that is really two bodies should have node embeddings
in two clusters. Per segment (at least ``min_nodes`` nodes), 2-means (k-means++ seeding, best of a few
restarts) on the standardised node embeddings; the score is the fraction of the embeddings' variance that
the split explains, ``R² = 1 − W / T`` (W within-cluster, T total sum of squares), in [0, 1]. The
evaluation builds false merges from ground truth (:func:`touching_pairs`, :func:`merge_pairs`: disjoint pairs
of bodies that touch, relabelled as one segment, skeletonised and embedded as such) and scores them against
the true bodies; ROC AUC by the Mann–Whitney statistic.

**Flags** (:func:`merge_tasks`): segments whose score passes a threshold become ``split`` proofreading
tasks (the segment likely holds two objects and needs a split), with the closest pair of nodes from the
two clusters as the suggested source and sink, ready for :meth:`TaskQueue.enqueue_many`.

:func:`evaluate_encoder` runs both measurements for one encoder on one labelled region.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from connectomix.embed.infer import DEFAULT_SPACING_NM, Embedder
from connectomix.embed.model import SegCLREncoder
from connectomix.embed.pairs import DEFAULT_MIN_VOXELS
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError
from connectomix.flag.tasks import Task
from connectomix.volume.base import ArrayVolume, Volume
from connectomix.volume.box import Box

DEFAULT_EXCLUDE_NM = 1000.0


# ---------------------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalResult:
    """Same-body retrieval: ``accuracy`` over ``n_queries`` queries, and its ``chance`` level."""

    accuracy: float
    chance: float
    n_queries: int
    n_nodes: int
    exclude_nm: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def retrieval(
    table: EmbeddingTable,
    resolution_nm_xyz: Sequence[float],
    *,
    bodies: np.ndarray | None = None,
    exclude_nm: float = DEFAULT_EXCLUDE_NM,
    chunk: int = 1024,
) -> RetrievalResult:
    """Same-body nearest-neighbour retrieval (see the module docstring). ``bodies``: the true body of each
    row (default: the table's segment ids, i.e. embeddings of a ground-truth segmentation); positions are
    voxels of ``resolution_nm_xyz``."""
    body = np.asarray(table.segment_ids if bodies is None else bodies)
    if len(body) != len(table):
        raise InputError(f"{len(body)} body ids for {len(table)} rows")
    positions = table.positions_xyz * np.asarray(resolution_nm_xyz, dtype=np.float64)
    emb = table.embeddings.astype(np.float64)
    sq = np.einsum("ij,ij->i", emb, emb)
    correct = chance = 0.0
    queries = 0
    for start in range(0, len(table), chunk):
        q = slice(start, start + chunk)
        d_emb = sq[q, None] + sq[None, :] - 2 * emb[q] @ emb.T
        same = body[q, None] == body[None, :]
        near = np.linalg.norm(positions[q, None, :] - positions[None, :, :], axis=2) < exclude_nm
        excluded = same & near  # includes the query itself (distance 0)
        candidates = ~excluded
        positive = same & candidates
        has_positive = positive.any(axis=1)
        d_emb[excluded] = np.inf
        nearest = np.argmin(d_emb, axis=1)
        hits = body[nearest] == body[q]
        correct += float(np.sum(hits & has_positive))
        chance += float(np.sum((positive.sum(1) / np.maximum(candidates.sum(1), 1))[has_positive]))
        queries += int(has_positive.sum())
    if queries == 0:
        return RetrievalResult(float("nan"), float("nan"), 0, len(table), exclude_nm)
    return RetrievalResult(correct / queries, chance / queries, queries, len(table), exclude_nm)


# ---------------------------------------------------------------------------------------------------------
# false merges from ground truth
# ---------------------------------------------------------------------------------------------------------
def touching_pairs(labels: np.ndarray, *, min_contact: int = 50) -> np.ndarray:
    """``(P, 3)`` int64 rows ``(a, b, contact)``: nonzero ids ``a < b`` that are face-neighbours on at least
    ``min_contact`` voxel faces of the ``(z, y, x)`` array."""
    parts = []
    for axis in range(3):
        lo = np.take(labels, np.arange(labels.shape[axis] - 1), axis=axis).ravel()
        hi = np.take(labels, np.arange(1, labels.shape[axis]), axis=axis).ravel()
        touch = (lo != hi) & (lo != 0) & (hi != 0)
        parts.append(np.stack([np.minimum(lo[touch], hi[touch]), np.maximum(lo[touch], hi[touch])], axis=1))
    both = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
    if len(both) == 0:
        return np.zeros((0, 3), np.int64)
    pairs, counts = np.unique(both, axis=0, return_counts=True)
    keep = counts >= min_contact
    return np.column_stack([pairs[keep], counts[keep]])


def merge_pairs(
    labels: np.ndarray, pairs: np.ndarray, *, max_pairs: int, seed: int = 0
) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """Relabel up to ``max_pairs`` disjoint touching pairs (random order from ``seed``; each body in at most
    one pair) as one segment with id ``a``. Returns the new labels and ``{merged id: (a, b)}``."""
    rng = np.random.default_rng([seed, 7])
    used: set[int] = set()
    merged: dict[int, tuple[int, int]] = {}
    for index in rng.permutation(len(pairs)):
        a, b = int(pairs[index, 0]), int(pairs[index, 1])
        if a in used or b in used:
            continue
        used |= {a, b}
        merged[a] = (a, b)
        if len(merged) >= max_pairs:
            break
    out = labels.copy()
    if merged:
        lut_from = np.array([b for _, b in merged.values()], dtype=labels.dtype)
        lut_to = np.array([a for a, _ in merged.values()], dtype=labels.dtype)
        hit = np.isin(out, lut_from)
        order = np.argsort(lut_from)
        out[hit] = lut_to[order][np.searchsorted(lut_from[order], out[hit])]
    return out, merged


# ---------------------------------------------------------------------------------------------------------
# merge scores
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergeScore:
    """One segment's 2-cluster split of its node embeddings: ``score`` = R² (see the module docstring);
    ``labels`` the cluster (0/1) of each of its rows, ``rows`` their indices in the scored table."""

    segment_id: int
    score: float
    rows: np.ndarray
    labels: np.ndarray


def two_means(
    points: np.ndarray, rng: np.random.Generator, restarts: int = 4, iterations: int = 30
) -> np.ndarray:
    """Cluster labels (0/1) of ``(n, d)`` points by 2-means (k-means++ seeding), best of ``restarts``."""
    best, best_w = np.zeros(len(points), dtype=np.int64), np.inf
    for _ in range(restarts):
        first = points[rng.integers(len(points))]
        d2 = np.sum((points - first) ** 2, axis=1)
        second = points[rng.choice(len(points), p=d2 / d2.sum())] if d2.sum() > 0 else first
        centres = np.stack([first, second])
        labels = np.zeros(len(points), dtype=np.int64)
        for _ in range(iterations):
            dist = np.sum((points[:, None, :] - centres[None]) ** 2, axis=2)
            new = np.argmin(dist, axis=1)
            if np.all(new == labels) and _ > 0:
                break
            labels = new
            for k in (0, 1):
                if np.any(labels == k):
                    centres[k] = points[labels == k].mean(axis=0)
        within = sum(float(np.sum((points[labels == k] - centres[k]) ** 2)) for k in (0, 1))
        if within < best_w:
            best, best_w = labels, within
    return best


def split_r2(points: np.ndarray, labels: np.ndarray) -> float:
    """``1 − W / T`` of the 0/1 split ``labels`` of ``(n, d)`` points (W within-part, T total sum of
    squares); 0 when all points are equal."""
    points = np.asarray(points, dtype=np.float64)
    total = float(np.sum((points - points.mean(axis=0)) ** 2))
    if total <= 0:
        return 0.0
    within = sum(
        float(np.sum((points[labels == k] - points[labels == k].mean(axis=0)) ** 2))
        for k in (0, 1)
        if np.any(labels == k)
    )
    return 1.0 - within / total


def merge_scores(
    table: EmbeddingTable,
    *,
    min_nodes: int = 6,
    seed: int = 0,
    standardise: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[MergeScore]:
    """R² of the 2-means split of every segment with at least ``min_nodes`` rows. Embeddings are
    standardised per dimension with ``standardise = (mean, std)`` (default: this table's own)."""
    mean, std = standardise if standardise is not None else embedding_stats(table)
    z = (table.embeddings - mean) / std
    rng = np.random.default_rng([seed, 11])
    scores = []
    bounds = table.run_starts()
    for start, stop in itertools.pairwise(bounds):
        if stop - start < min_nodes:
            continue
        points = z[start:stop].astype(np.float64)
        labels = two_means(points, rng)
        score = split_r2(points, labels)
        scores.append(MergeScore(int(table.segment_ids[start]), score, np.arange(start, stop), labels))
    return scores


def embedding_stats(table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of the table's embeddings."""
    emb = table.embeddings.astype(np.float64)
    return emb.mean(axis=0), np.maximum(emb.std(axis=0), 1e-6)


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve for scores of positives vs negatives (Mann–Whitney U, ties count ½)."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = stats.rankdata(np.r_[pos, neg])
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def size_matched(positives: Sequence[MergeScore], negatives: Sequence[MergeScore]) -> list[MergeScore]:
    """For each positive (largest first), the unused negative with the nearest number of nodes: a negative
    set whose sizes follow the positives', so that size alone does not separate them."""
    pool = sorted(negatives, key=lambda s: len(s.rows))
    sizes = [len(s.rows) for s in pool]
    used = np.zeros(len(pool), dtype=bool)
    chosen = []
    for positive in sorted(positives, key=lambda s: -len(s.rows)):
        free = np.flatnonzero(~used)
        if len(free) == 0:
            break
        best = free[np.argmin(np.abs(np.asarray(sizes)[free] - len(positive.rows)))]
        used[best] = True
        chosen.append(pool[best])
    return chosen


def merge_tasks(
    scores: Sequence[MergeScore],
    table: EmbeddingTable,
    resolution_nm_xyz: Sequence[float],
    *,
    threshold: float = 0.0,
    top_k: int | None = None,
    method: str = "segclr-2means",
) -> list[Task]:
    """``split`` tasks for the segments scoring at least ``threshold`` (the ``top_k`` best, if given).

    A task's point is the node of the first cluster closest (in space) to the second cluster;
    ``evidence["sources_xyz"]`` / ``["sinks_xyz"]`` hold that node and its nearest node of the other cluster
    (global voxels, (x, y, z)); ``evidence["method"]`` is ``method`` (the scorer: ``"segclr-2means"`` for
    :func:`merge_scores`, ``"segclr-merge-head"`` for :meth:`connectomix.embed.merges.MergeHead.scores`).
    """
    chosen = sorted((s for s in scores if s.score >= threshold), key=lambda s: (-s.score, s.segment_id))
    if top_k is not None:
        chosen = chosen[:top_k]
    res = np.asarray(resolution_nm_xyz, dtype=np.float64)
    tasks = []
    for s in chosen:
        pos = table.positions_xyz[s.rows]
        a, b = pos[s.labels == 0], pos[s.labels == 1]
        if len(a) == 0 or len(b) == 0:
            continue
        d = np.linalg.norm((a[:, None, :] - b[None, :, :]) * res, axis=2)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        source, sink = [int(v) for v in np.rint(a[i])], [int(v) for v in np.rint(b[j])]
        evidence = {
            "method": method,
            ("separation_r2" if method == "segclr-2means" else "score"): s.score,
            "cluster_sizes": [len(a), len(b)],
            "sources_xyz": [source],
            "sinks_xyz": [sink],
        }
        tasks.append(
            Task.create(
                "split", source, (s.segment_id,), s.score, resolution_nm_xyz=tuple(res), evidence=evidence
            )
        )
    return tasks


# ---------------------------------------------------------------------------------------------------------
# one encoder on one region
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Region:
    """A labelled evaluation region held in memory (global voxel offset kept): EM, labels and their box."""

    raw: ArrayVolume
    gt: ArrayVolume

    def synthetic_merges(
        self, *, n_merges: int, min_contact: int = 50, min_voxels: int = DEFAULT_MIN_VOXELS, seed: int = 0
    ) -> tuple[ArrayVolume, dict[int, tuple[int, int]]]:
        """The labels with up to ``n_merges`` disjoint touching pairs of bodies (each at least
        ``min_voxels`` voxels, ``min_contact`` shared faces) merged (:func:`merge_pairs`): the volume and
        ``{merged id: (a, b)}``."""
        labels = self.gt.read()
        sizes = dict(zip(*np.unique(labels, return_counts=True), strict=True))
        pairs = touching_pairs(labels, min_contact=min_contact)
        if len(pairs):
            pairs = pairs[[bool(sizes[a] >= min_voxels and sizes[b] >= min_voxels) for a, b, _ in pairs]]
        merged_labels, merged = merge_pairs(labels, pairs, max_pairs=n_merges, seed=seed)
        volume = ArrayVolume(
            merged_labels,
            resolution=self.gt.resolution,
            voxel_offset=self.gt.voxel_offset,
            kind="segmentation",
        )
        return volume, merged

    @classmethod
    def cut(cls, raw: Volume, gt: Volume, box: Box) -> Region:
        """Read ``box`` of both volumes (so cutouts never see outside it)."""
        box = box.intersect(gt.bounds)
        return cls(
            ArrayVolume(
                raw.read(box), resolution=raw.resolution, voxel_offset=box.start, url=f"{raw.url}[{box}]"
            ),
            ArrayVolume(
                gt.read(box),
                resolution=gt.resolution,
                voxel_offset=box.start,
                url=f"{gt.url}[{box}]",
                kind="segmentation",
            ),
        )


def _head_results(
    head: Any,
    true_table: EmbeddingTable,
    merged_table: EmbeddingTable,
    contact_nm: np.ndarray,
    min_nodes: int,
    seed: int,
) -> dict[str, Any]:
    """``{"merge_head": AUCs and contact-node AUCs, "_head": (merged scores, true scores)}`` of a merge
    head, or ``{}``. ``contact_nm``: the merged rows' distances to their merge contact."""
    from connectomix.embed.merge_signal import contact_node_auc

    if head is None:
        return {}
    true_scores = head.scores(true_table, min_nodes=min_nodes, seed=seed)
    merged_scores = head.scores(merged_table, min_nodes=min_nodes, seed=seed)
    matched = size_matched(merged_scores, true_scores)
    nodes = contact_node_auc(
        head.node_probabilities(true_table), head.node_probabilities(merged_table), contact_nm
    )
    return {
        "merge_head": {
            "auc": roc_auc([s.score for s in merged_scores], [s.score for s in true_scores]),
            "auc_size_matched": roc_auc([s.score for s in merged_scores], [s.score for s in matched]),
            "n_merged": len(merged_scores),
            "n_true": len(true_scores),
            "contact_nodes": nodes,
        },
        "_head": (merged_scores, true_scores),
    }


def evaluate_encoders(
    models: dict[str, SegCLREncoder],
    region: Region,
    *,
    spacing_nm: float = DEFAULT_SPACING_NM,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    exclude_nm: float = DEFAULT_EXCLUDE_NM,
    n_merges: int = 40,
    min_contact: int = 50,
    min_nodes: int = 6,
    batch_size: int = 64,
    precision: str = "auto",
    seed: int = 0,
    heads: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Retrieval and merge-detection AUC of each encoder on ``region`` (see the module docstring); the
    skeletons of the true and of the merged segmentation are computed once and shared. ``"merge_signal"``
    holds the part separation of :mod:`connectomix.embed.merge_signal` (is there a trace of the merge in
    the embeddings at all). ``heads`` maps an encoder's name to a
    :class:`~connectomix.embed.merges.MergeHead` trained on its embeddings elsewhere; its AUCs and
    contact-node AUCs are added as ``"merge_head"`` (and its scores as ``"_head"``).

    Returns ``{name: results}``, JSON-able except the keys starting with ``_`` (drop them before
    serialising): ``"_merge"`` holds ``(scores, table)`` of the merged segments for :func:`merge_tasks`,
    ``"_true_scores"`` the scores of the true bodies, ``"_tables"`` both embedding tables.
    """
    from connectomix.embed.merge_signal import part_labels, part_separation
    from connectomix.embed.merges import contact_distances
    from connectomix.embed.pairs import skeletonize_segments

    heads = heads or {}
    merged_seg, merged = region.synthetic_merges(
        n_merges=n_merges, min_contact=min_contact, min_voxels=min_voxels, seed=seed
    )
    labels = region.gt.read()
    true_graph = skeletonize_segments(region.gt, min_voxels=min_voxels)
    merged_graph = skeletonize_segments(merged_seg, min_voxels=min_voxels)
    resolution_xyz = region.gt.resolution_xyz
    results = {}
    for name, model in models.items():
        embedder = Embedder(model, region.raw, region.gt, batch_size=batch_size, precision=precision)  # type: ignore[arg-type]
        true_table = embedder.embed_graph(true_graph, spacing_nm=spacing_nm)
        merged_embedder = Embedder(model, region.raw, merged_seg, batch_size=batch_size, precision=precision)  # type: ignore[arg-type]
        merged_table = merged_embedder.embed_graph(
            merged_graph, spacing_nm=spacing_nm, segment_ids=merged.keys()
        )
        moments = embedding_stats(true_table)
        true_scores = merge_scores(true_table, min_nodes=min_nodes, seed=seed, standardise=moments)
        merged_scores = merge_scores(merged_table, min_nodes=min_nodes, seed=seed, standardise=moments)
        found = retrieval(true_table, resolution_xyz, exclude_nm=exclude_nm)
        matched = size_matched(merged_scores, true_scores)
        offset = region.gt.voxel_offset
        parts = part_labels(merged_table, labels, merged, voxel_offset_zyx=offset)
        contact_nm = contact_distances(
            merged_table, labels, merged, voxel_offset_zyx=offset, resolution_nm_zyx=region.gt.resolution
        )
        results[name] = {
            "retrieval": found.to_dict(),
            "merge": {
                "auc": roc_auc([s.score for s in merged_scores], [s.score for s in true_scores]),
                "auc_size_matched": roc_auc([s.score for s in merged_scores], [s.score for s in matched]),
                "auc_node_count_only": roc_auc(
                    [len(s.rows) for s in merged_scores], [len(s.rows) for s in true_scores]
                ),
                "n_merged": len(merged_scores),
                "n_true": len(true_scores),
                "min_nodes": min_nodes,
            },
            "merge_signal": {
                "parts": part_separation(true_table, merged_table, parts, min_nodes=min_nodes, seed=seed)
            },
            **_head_results(heads.get(name), true_table, merged_table, contact_nm, min_nodes, seed),
            "n_nodes": len(true_table),
            "n_segments": len(np.unique(true_table.segment_ids)),
            "embed_seconds": sum(e.stats["read_s"] + e.stats["embed_s"] for e in (embedder, merged_embedder)),
            "_merge": (merged_scores, merged_table),
            "_true_scores": true_scores,
            "_tables": (true_table, merged_table),
        }
    return results
