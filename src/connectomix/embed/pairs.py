"""Skeletons of every segment and SegCLR's positive pairs: two nodes of one segment close along its skeleton.

:func:`skeletonize_segments` runs kimimaro (TEASAR, via :func:`connectomix.evaluate.erl.skeletonize`) on the
labels of a box, with the volume's resolution as anisotropy, and returns all skeletons as one graph
(:class:`SkeletonGraph`): node positions in global voxel coordinates (z, y, x) and in nm, edges weighted by
their length in nm. Node ids are global and stable: the linear index of the node's voxel in a
``(z, y, x)`` grid of the volume's shape (``node_id = (z · Y + y) · X + x`` after subtracting the volume's
voxel offset), so the same node found when skeletonising a different box gets the same id.

:func:`sample_pairs` draws positive pairs: distinct segments (as far as there are enough; weighted by their
node count), a uniformly random anchor node in each and a partner uniformly among the nodes of the same
segment whose **path distance along the skeleton** from the anchor is at most ``max_distance_nm``
(Dijkstra, scipy). Negatives are the other pairs of the batch (NT-Xent), hence the distinct segments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import dijkstra

from connectomix.errors import InputError
from connectomix.evaluate.erl import skeletonize
from connectomix.volume.base import ArrayVolume, Volume
from connectomix.volume.box import Box

#: Segments with fewer voxels (inside the skeletonised box) get no skeleton (kimimaro's dust threshold).
DEFAULT_MIN_VOXELS = 1000


@dataclass(frozen=True)
class SkeletonGraph:
    """Skeletons of many segments as one graph.

    ``segment_ids`` ``(K,)`` uint64; ``node_segment`` ``(N,)`` index into ``segment_ids``; ``nodes_zyx``
    ``(N, 3)`` int64 global voxel coordinates; ``node_ids`` ``(N,)`` uint64 (see the module docstring);
    ``edges`` ``(M, 2)`` node indices; ``resolution_nm_zyx`` nm per voxel.
    """

    segment_ids: np.ndarray
    node_segment: np.ndarray
    nodes_zyx: np.ndarray
    node_ids: np.ndarray
    edges: np.ndarray
    resolution_nm_zyx: tuple[float, float, float]

    @property
    def n_nodes(self) -> int:
        return len(self.node_segment)

    @property
    def nodes_nm_zyx(self) -> np.ndarray:
        return self.nodes_zyx * np.asarray(self.resolution_nm_zyx)

    @property
    def node_segment_ids(self) -> np.ndarray:
        """The segment id of every node, ``(N,)`` uint64."""
        return self.segment_ids[self.node_segment]

    @cached_property
    def adjacency(self) -> scipy.sparse.csr_matrix:
        """Symmetric sparse ``(N, N)`` matrix of edge lengths in nm."""
        u, v = self.edges[:, 0], self.edges[:, 1]
        length = np.linalg.norm(self.nodes_nm_zyx[u] - self.nodes_nm_zyx[v], axis=1)
        length = np.maximum(length, 1e-6)  # an explicit zero would read as "no edge"
        n = self.n_nodes
        matrix = scipy.sparse.coo_matrix((np.r_[length, length], (np.r_[u, v], np.r_[v, u])), shape=(n, n))
        return matrix.tocsr()

    @cached_property
    def segment_nodes(self) -> list[np.ndarray]:
        """Node indices of each segment, in ``segment_ids`` order."""
        order = np.argsort(self.node_segment, kind="stable")
        bounds = np.searchsorted(self.node_segment[order], np.arange(len(self.segment_ids) + 1))
        return [order[bounds[k] : bounds[k + 1]] for k in range(len(self.segment_ids))]

    def path_distances(self, sources: np.ndarray, limit_nm: float = np.inf) -> np.ndarray:
        """``(len(sources), N)`` path distances in nm along the skeletons (inf beyond ``limit_nm`` and
        between segments)."""
        sources = np.asarray(sources, dtype=np.int64)
        if len(sources) == 0:
            return np.zeros((0, self.n_nodes))
        return np.atleast_2d(dijkstra(self.adjacency, directed=False, indices=sources, limit=limit_nm))

    def subset(self, keep: np.ndarray) -> SkeletonGraph:
        """The graph of the nodes where ``keep`` is true (edges between kept nodes only)."""
        keep = np.asarray(keep, dtype=bool)
        index = np.full(self.n_nodes, -1, dtype=np.int64)
        index[keep] = np.arange(int(keep.sum()))
        edges = index[self.edges]
        edges = edges[(edges >= 0).all(axis=1)]
        used = np.unique(self.node_segment[keep])
        remap = np.full(len(self.segment_ids), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return SkeletonGraph(
            segment_ids=self.segment_ids[used],
            node_segment=remap[self.node_segment[keep]],
            nodes_zyx=self.nodes_zyx[keep],
            node_ids=self.node_ids[keep],
            edges=edges,
            resolution_nm_zyx=self.resolution_nm_zyx,
        )


def node_ids_for(nodes_zyx: np.ndarray, volume_bounds: Box) -> np.ndarray:
    """Stable node ids: the linear index of each (z, y, x) voxel in the grid of ``volume_bounds``."""
    local = np.asarray(nodes_zyx, dtype=np.int64) - np.asarray(volume_bounds.start)
    shape = np.asarray(volume_bounds.shape, dtype=np.int64)
    if np.any(local < 0) or np.any(local >= shape):
        raise InputError(f"skeleton nodes lie outside the volume {volume_bounds}")
    return np.ravel_multi_index(local.T, tuple(int(s) for s in shape)).astype(np.uint64)


def skeletonize_segments(
    labels: Volume | np.ndarray,
    *,
    box: Box | None = None,
    resolution_nm_zyx: tuple[float, float, float] | None = None,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    skeleton_params: Mapping[str, Any] | None = None,
) -> SkeletonGraph:
    """Skeletonise every segment of ``labels`` inside ``box`` (default: the whole volume) with kimimaro.

    Only ``box`` is read (through the volume, i.e. its chunk cache). Segments with fewer than
    ``min_voxels`` voxels inside the box get no skeleton. ``skeleton_params`` are passed on to
    :func:`connectomix.evaluate.erl.skeletonize` (kimimaro keywords; ``teasar_params`` lengths in nm).
    """
    volume = labels if isinstance(labels, Volume) else ArrayVolume(np.asarray(labels))
    resolution = tuple(float(r) for r in (resolution_nm_zyx or volume.resolution))
    if resolution_nm_zyx is None and not isinstance(labels, Volume):
        raise InputError("resolution_nm_zyx (nm per voxel, z, y, x) is needed when labels is a numpy array")
    box = volume.bounds if box is None else box.intersect(volume.bounds)
    if box.empty:
        raise InputError(f"box {box} does not overlap the labels {volume.bounds}")
    array = volume.read(box)
    if array.dtype.kind not in "iu":
        raise InputError(f"labels must be integer segment ids, got dtype {array.dtype}")
    params = {"dust_threshold": int(min_voxels), **dict(skeleton_params or {})}
    found = skeletonize(array, resolution_nm_zyx=resolution, skeleton_params=params)
    nodes = found.node_voxels_zyx(array.shape) + np.asarray(box.start, dtype=np.int64)
    nodes, edges, node_segment = _dedupe(nodes, found.edges, found.node_skeleton)
    return SkeletonGraph(
        segment_ids=found.gt_ids.astype(np.uint64),
        node_segment=node_segment,
        nodes_zyx=nodes,
        node_ids=node_ids_for(nodes, volume.bounds),
        edges=edges,
        resolution_nm_zyx=resolution,  # type: ignore[arg-type]
    )


def _dedupe(
    nodes: np.ndarray, edges: np.ndarray, node_segment: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge nodes of one segment that round to the same voxel (node ids must be unique per segment)."""
    key = np.concatenate([node_segment[:, None], nodes], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    if len(first) == len(nodes):
        return nodes, edges, node_segment
    order = np.sort(first)  # keep the original order of first occurrences
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    new_index = rank[inverse.reshape(-1)]
    edges = new_index[edges]
    edges = np.unique(np.sort(edges[edges[:, 0] != edges[:, 1]], axis=1), axis=0)
    return nodes[order], edges.reshape(-1, 2), node_segment[order]


@dataclass(frozen=True)
class Pairs:
    """Positive pairs: node indices ``a`` and ``b`` of one segment, their path distance in nm."""

    a: np.ndarray
    b: np.ndarray
    distance_nm: np.ndarray


def sample_pairs(
    graph: SkeletonGraph,
    n_pairs: int,
    rng: np.random.Generator,
    *,
    max_distance_nm: float,
    min_distance_nm: float = 0.0,
) -> Pairs:
    """``n_pairs`` positive pairs (see the module docstring); deterministic for a given ``rng`` state.

    A partner is drawn from the nodes with ``min_distance_nm ≤ path distance ≤ max_distance_nm`` other
    than the anchor; where there is none (a one-node skeleton) the anchor is paired with itself (its two
    views then differ by augmentation only).
    """
    if n_pairs < 1:
        raise InputError(f"n_pairs must be ≥ 1, got {n_pairs}")
    if not 0 <= min_distance_nm <= max_distance_nm:
        raise InputError(
            f"need 0 ≤ min_distance_nm ≤ max_distance_nm, got {min_distance_nm} and {max_distance_nm}"
        )
    if graph.n_nodes == 0:
        raise InputError("no skeleton nodes to sample pairs from (every segment below the size threshold?)")
    counts = np.bincount(graph.node_segment, minlength=len(graph.segment_ids)).astype(np.float64)
    weights = counts / counts.sum()
    distinct = min(n_pairs, int(np.count_nonzero(counts)))
    segments = rng.choice(len(counts), size=distinct, replace=False, p=weights)
    if distinct < n_pairs:
        segments = np.r_[segments, rng.choice(len(counts), size=n_pairs - distinct, p=weights)]
    members = graph.segment_nodes
    anchors = np.array([members[s][rng.integers(len(members[s]))] for s in segments], dtype=np.int64)
    distances = graph.path_distances(anchors, limit_nm=max_distance_nm)
    partners = np.empty(n_pairs, dtype=np.int64)
    for i, anchor in enumerate(anchors):
        row = distances[i]
        ok = np.flatnonzero((row >= min_distance_nm) & (row <= max_distance_nm))
        ok = ok[ok != anchor]
        partners[i] = ok[rng.integers(len(ok))] if len(ok) else anchor
    return Pairs(a=anchors, b=partners, distance_nm=distances[np.arange(n_pairs), partners])
