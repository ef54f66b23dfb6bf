"""Expected run length (ERL): how far, on average, one can walk along a neuron before hitting an error.

ERL is the skeleton-based score of Januszewski et al. 2018 (Nature Methods, "High-precision automated
reconstruction of neurons with flood-filling networks"). The ground-truth bodies are skeletonised
(kimimaro TEASAR); each skeleton edge is then classified by the segment ids found at its two end nodes:

``omitted``  either end lies in segment 0 (unsegmented);
``split``    the ends lie in two different nonzero segments;
``merged``   both ends lie in one segment that is a *merger*: it covers at least ``merge_threshold_nodes``
             skeleton nodes of each of two or more ground-truth bodies;
``correct``  otherwise (both ends in the same, non-merging, nonzero segment).

Removing every non-correct edge cuts the skeletons into *runs* (connected pieces of correct edges). With
``L_r`` the length of run r, ERL = Σ_r L_r² / Σ_skeletons length, in nm: the expected length of the run
that contains a point picked uniformly along the ground-truth skeletons. A merging segment contributes no
run at all, which is how ERL punishes merges. ``max_erl_nm`` is the same with every edge correct (the ERL
of a perfect segmentation; the skeletons' own connected pieces are the runs).

This module implements the algorithm itself (funlib.evaluate works on networkx graphs and groups runs by
segment rather than by connected piece; nothing scores kimimaro skeletons directly); the edge
classification and the run lengths are vectorised over all skeletons at once.

Axes: arrays are (z, y, x). kimimaro names its axes (x, y, z) and scales vertex i of axis k by
``anisotropy[k]``; we pass it the free transposed view ``gt.T`` (x, y, z) with the resolution in (x, y, z)
order, and turn its vertices back into (z, y, x) nm at once. Vertices sit on voxel positions
(``index * resolution``, no half-voxel offset), so ``rint(vertex / resolution)`` is their voxel index.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from connectomix.errors import InputError
from connectomix.evaluate.contingency import DEFAULT_BLOCK_SHAPE, Labels
from connectomix.volume.base import Volume
from connectomix.volume.box import Box, points_xyz_to_zyx, zyx_to_xyz

#: TEASAR parameters for ~10 nm neurites (lengths in nm): invalidation ball = 1.5 × radius + 300 nm.
DEFAULT_TEASAR_PARAMS: dict[str, float] = {
    "scale": 1.5,
    "const": 300,
    "pdrf_scale": 100000,
    "pdrf_exponent": 4,
    "soma_acceptance_threshold": 3500,
    "soma_detection_threshold": 750,
    "soma_invalidation_const": 300,
    "soma_invalidation_scale": 2,
}

#: Other ``kimimaro.skeletonize`` arguments; ``dust_threshold`` is in voxels (smaller pieces get no skeleton).
DEFAULT_SKELETON_PARAMS: dict[str, Any] = {
    "dust_threshold": 1000,
    "fix_branching": True,
    "fix_borders": True,
    "parallel": 1,
}

#: Skeleton nodes of one body a segment must cover before it counts as reaching into that body.
DEFAULT_MERGE_THRESHOLD_NODES = 5

EDGE_CLASSES = ("correct", "split", "merged", "omitted")


@dataclass(frozen=True)
class Skeletons:
    """The ground-truth skeletons as one graph: nodes of all skeletons concatenated.

    ``gt_ids[k]`` is the body of skeleton k; ``node_skeleton[i]`` the skeleton of node i;
    ``nodes_nm_zyx`` (N, 3) node positions in nm, (z, y, x); ``edges`` (M, 2) node indices.
    """

    gt_ids: np.ndarray
    node_skeleton: np.ndarray
    nodes_nm_zyx: np.ndarray
    edges: np.ndarray
    resolution_nm_zyx: tuple[float, float, float]

    @property
    def node_gt(self) -> np.ndarray:
        """The ground-truth body id of every node."""
        return self.gt_ids[self.node_skeleton]

    def edge_lengths_nm(self) -> np.ndarray:
        u, v = self.edges[:, 0], self.edges[:, 1]
        return np.linalg.norm(self.nodes_nm_zyx[u] - self.nodes_nm_zyx[v], axis=1)

    def node_voxels_zyx(self, shape_zyx: Sequence[int]) -> np.ndarray:
        """(N, 3) integer voxel indices (z, y, x) of the nodes, clipped to ``shape_zyx``."""
        res = np.asarray(self.resolution_nm_zyx, dtype=np.float64)
        index = np.rint(self.nodes_nm_zyx / res).astype(np.int64)
        return np.clip(index, 0, np.asarray(shape_zyx) - 1)


def skeletonize(
    gt: Labels,
    *,
    resolution_nm_zyx: Sequence[float] | None = None,
    skeleton_params: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Skeletons:
    """Skeletonise every nonzero body of ``gt`` with kimimaro (the whole volume is read into memory).

    ``skeleton_params`` overrides :data:`DEFAULT_SKELETON_PARAMS` (any ``kimimaro.skeletonize`` keyword);
    its ``"teasar_params"`` entry is merged into :data:`DEFAULT_TEASAR_PARAMS` (lengths in nm). With
    ``{"parallel": n}`` for n > 1 kimimaro starts worker processes by *spawning*, so a script calling this
    must guard its entry point with ``if __name__ == "__main__":``.
    """
    import kimimaro

    resolution = _resolution(gt, resolution_nm_zyx)
    array = gt.read() if isinstance(gt, Volume) else np.asarray(gt)
    if array.ndim != 3:
        raise InputError(f"GT: expected a 3-D (z, y, x) array, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise InputError(f"GT: expected integer labels, got {array.dtype}")
    if array.size == 0:
        raise InputError(f"GT is empty (shape {array.shape}): nothing to skeletonise")
    if array.dtype.kind == "i" and array.min() < 0:
        raise InputError(f"GT: labels must be non-negative, found {int(array.min())}")

    params = dict(DEFAULT_SKELETON_PARAMS)
    teasar = dict(DEFAULT_TEASAR_PARAMS)
    for key, value in (skeleton_params or {}).items():
        if key == "teasar_params":
            teasar.update(value)
        else:
            params[key] = value
    params.setdefault("progress", progress and sys.stderr.isatty())
    found = kimimaro.skeletonize(
        array.T, teasar_params=teasar, anisotropy=zyx_to_xyz(resolution), **params
    )  # (x, y, z) view; vertices come back in (x, y, z) nm

    gt_ids, node_skel, nodes, edges = [], [], [], []
    offset = 0
    for k, (label, skeleton) in enumerate(sorted(found.items())):
        vertices = np.asarray(skeleton.vertices, dtype=np.float64)
        gt_ids.append(int(label))
        node_skel.append(np.full(len(vertices), k, dtype=np.int64))
        nodes.append(points_xyz_to_zyx(vertices))
        edges.append(np.asarray(skeleton.edges, dtype=np.int64).reshape(-1, 2) + offset)
        offset += len(vertices)
    return Skeletons(
        gt_ids=np.asarray(gt_ids, dtype=np.uint64),
        node_skeleton=np.concatenate(node_skel) if node_skel else np.zeros(0, np.int64),
        nodes_nm_zyx=np.concatenate(nodes) if nodes else np.zeros((0, 3)),
        edges=np.concatenate(edges) if edges else np.zeros((0, 2), np.int64),
        resolution_nm_zyx=resolution,
    )


def _resolution(volume: Labels, resolution_nm_zyx: Sequence[float] | None) -> tuple[float, float, float]:
    if resolution_nm_zyx is None:
        if isinstance(volume, Volume):
            return volume.resolution
        raise InputError("resolution_nm_zyx (nm per voxel, z, y, x) is needed when GT is a numpy array")
    res = tuple(float(r) for r in resolution_nm_zyx)
    if len(res) != 3 or not all(r > 0 for r in res):
        raise InputError(f"resolution_nm_zyx must be 3 positive sizes in nm (z, y, x), got {res}")
    return res  # type: ignore[return-value]


@dataclass
class ERLResult:
    """ERL of a segmentation: lengths in nm; edge counts per class (see the module docstring)."""

    erl_nm: float
    max_erl_nm: float
    total_length_nm: float
    n_skeletons: int
    n_edges: int
    n_correct_edges: int
    n_split_edges: int
    n_merged_edges: int
    n_omitted_edges: int
    merge_threshold_nodes: int
    merging_segment_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def erl_fraction(self) -> float:
        """ERL as a fraction of the best achievable (``erl_nm / max_erl_nm``)."""
        return self.erl_nm / self.max_erl_nm if self.max_erl_nm else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ids as strings)."""
        return {
            "erl_nm": self.erl_nm,
            "max_erl_nm": self.max_erl_nm,
            "erl_fraction": None if math.isnan(self.erl_fraction) else self.erl_fraction,
            "total_length_nm": self.total_length_nm,
            "n_skeletons": self.n_skeletons,
            "n_edges": self.n_edges,
            "n_correct_edges": self.n_correct_edges,
            "n_split_edges": self.n_split_edges,
            "n_merged_edges": self.n_merged_edges,
            "n_omitted_edges": self.n_omitted_edges,
            "merge_threshold_nodes": self.merge_threshold_nodes,
            "merging_segment_ids": [str(i) for i in self.merging_segment_ids],
        }


def lookup_labels(
    seg: Labels, voxels_zyx: np.ndarray, block_shape: Sequence[int] = DEFAULT_BLOCK_SHAPE
) -> np.ndarray:
    """The labels (uint64) of ``seg`` at (N, 3) voxel indices (z, y, x), relative to the volume's start.

    Volumes are read only in the blocks that hold a point.
    """
    if isinstance(seg, np.ndarray):
        _check_labels(seg.dtype)
        values = seg[voxels_zyx[:, 0], voxels_zyx[:, 1], voxels_zyx[:, 2]]
    else:
        _check_labels(seg.dtype)
        block = np.asarray(block_shape, dtype=np.int64)
        values = np.zeros(len(voxels_zyx), dtype=seg.dtype)
        block_index = voxels_zyx // block
        keys, inverse = np.unique(block_index, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        start = np.asarray(seg.voxel_offset)
        for k, key in enumerate(keys):
            box = Box.from_shape(block.tolist(), (start + key * block).tolist()).intersect(seg.bounds)
            data = seg.read(box)
            pick = np.flatnonzero(inverse == k)
            local = voxels_zyx[pick] - key * block
            values[pick] = data[local[:, 0], local[:, 1], local[:, 2]]
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise InputError(f"SEG: labels must be non-negative, found {int(values.min())}")
    return values.astype(np.uint64, copy=False)


def _check_labels(dtype: np.dtype) -> None:
    if dtype.kind not in "iu":
        raise InputError(f"SEG: expected integer labels, got {dtype}")


def classify_edges(
    skeletons: Skeletons, node_seg: np.ndarray, merge_threshold_nodes: int = DEFAULT_MERGE_THRESHOLD_NODES
) -> tuple[np.ndarray, np.ndarray]:
    """Each edge's class as an index into :data:`EDGE_CLASSES`, and the merging segment ids (sorted).

    Precedence: omitted, then split, then merged, then correct.
    """
    node_gt = skeletons.node_gt
    covered = node_seg != 0
    pairs = np.stack([node_seg[covered], node_gt[covered]], axis=1)
    if pairs.size:
        unique_pairs, node_counts = np.unique(pairs, axis=0, return_counts=True)
        reaching = unique_pairs[node_counts >= merge_threshold_nodes, 0]
        seg_unique, n_bodies = np.unique(reaching, return_counts=True)
        mergers = seg_unique[n_bodies >= 2]
    else:
        mergers = np.zeros(0, dtype=np.uint64)

    su, sv = node_seg[skeletons.edges[:, 0]], node_seg[skeletons.edges[:, 1]]
    omitted = (su == 0) | (sv == 0)
    split = ~omitted & (su != sv)
    merged = ~omitted & ~split & np.isin(su, mergers)
    classes = np.zeros(len(su), dtype=np.int8)  # 0 = correct
    classes[split] = 1
    classes[merged] = 2
    classes[omitted] = 3
    return classes, mergers


def _run_lengths(n_nodes: int, edges: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Total edge length of each connected piece of the graph (``edges``, (M, 2) node indices)."""
    if len(edges) == 0:
        return np.zeros(0)
    graph = scipy.sparse.coo_array(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes)
    )
    n_pieces, piece = connected_components(graph, directed=False)
    return np.bincount(piece[edges[:, 0]], weights=lengths, minlength=n_pieces)


def erl_from_skeletons(
    seg: Labels,
    skeletons: Skeletons,
    *,
    merge_threshold_nodes: int = DEFAULT_MERGE_THRESHOLD_NODES,
) -> ERLResult:
    """ERL of ``seg`` along ground-truth ``skeletons`` (from :func:`skeletonize` on the same grid)."""
    if merge_threshold_nodes < 1:
        raise InputError(f"merge_threshold_nodes must be at least 1, got {merge_threshold_nodes}")
    if len(skeletons.gt_ids) == 0:
        raise InputError("GT has no body large enough to skeletonise: ERL is undefined")
    shape = seg.shape if isinstance(seg, Volume | np.ndarray) else None
    if shape is None or len(shape) != 3:
        raise InputError(f"SEG: expected a 3-D (z, y, x) Volume or array, got shape {shape}")
    node_seg = lookup_labels(seg, skeletons.node_voxels_zyx(shape))
    classes, mergers = classify_edges(skeletons, node_seg, merge_threshold_nodes)
    lengths = skeletons.edge_lengths_nm()
    total = float(lengths.sum())
    n_nodes = len(skeletons.nodes_nm_zyx)
    correct = classes == 0
    runs = _run_lengths(n_nodes, skeletons.edges[correct], lengths[correct])
    pieces = _run_lengths(n_nodes, skeletons.edges, lengths)
    counts = np.bincount(classes, minlength=len(EDGE_CLASSES))
    return ERLResult(
        erl_nm=float(runs @ runs) / total if total else 0.0,
        max_erl_nm=float(pieces @ pieces) / total if total else 0.0,
        total_length_nm=total,
        n_skeletons=len(skeletons.gt_ids),
        n_edges=len(classes),
        n_correct_edges=int(counts[0]),
        n_split_edges=int(counts[1]),
        n_merged_edges=int(counts[2]),
        n_omitted_edges=int(counts[3]),
        merge_threshold_nodes=merge_threshold_nodes,
        merging_segment_ids=[int(i) for i in mergers],
    )


def expected_run_length(
    seg: Labels,
    gt: Labels,
    *,
    resolution_nm_zyx: Sequence[float] | None = None,
    skeleton_params: Mapping[str, Any] | None = None,
    merge_threshold_nodes: int = DEFAULT_MERGE_THRESHOLD_NODES,
    progress: bool = False,
) -> ERLResult:
    """Expected run length (nm) of segmentation ``seg`` along the skeletons of ground truth ``gt``.

    ``seg`` and ``gt`` are (z, y, x) label volumes or arrays of one shape; ``resolution_nm_zyx`` is the voxel
    size in nm (default: ``gt``'s resolution when it is a Volume). ``gt`` is read whole and skeletonised
    with kimimaro (see :func:`skeletonize` for ``skeleton_params``); ``seg`` is read only where skeleton
    nodes lie. A segment is a merger when it covers at least ``merge_threshold_nodes`` skeleton nodes of
    each of two or more bodies. To score several segmentations against one ground truth, skeletonise once
    and call :func:`erl_from_skeletons`.
    """
    seg_shape = seg.shape if isinstance(seg, Volume | np.ndarray) else None
    gt_shape = gt.shape if isinstance(gt, Volume | np.ndarray) else None
    if seg_shape is None or gt_shape is None:
        raise InputError("SEG and GT must be Volumes or numpy arrays")
    if tuple(seg_shape) != tuple(gt_shape):
        raise InputError(f"SEG shape {tuple(seg_shape)} does not match GT shape {tuple(gt_shape)}")
    _check_labels(seg.dtype)  # before the (slow) skeletonisation
    skeletons = skeletonize(
        gt, resolution_nm_zyx=resolution_nm_zyx, skeleton_params=skeleton_params, progress=progress
    )
    return erl_from_skeletons(seg, skeletons, merge_threshold_nodes=merge_threshold_nodes)
