"""Aggregate node embeddings along a skeleton: the mean over the nodes within a path distance R.

SegCLR's aggregated releases replace each node's embedding by the mean of the embeddings within a radius
along the skeleton (10 µm for H01, 25 µm for MICrONS). The distance is the path length through the
skeleton's edges, not the straight line: two branches that pass close in space but join far away do not
mix. Embeddings usually exist on a subset of the nodes (the sampled ones); the mean is over the embedded
nodes within R, and it is defined at every node, embedded or not.

Implementation: Dijkstra (``scipy.sparse.csgraph.dijkstra`` with ``limit=R``) from the embedded nodes in
batches; since path distance is symmetric, each batch row lists the nodes that receive that embedding.
Cost ≈ (embedded nodes) × (skeleton nodes) distance entries, in batches of bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from connectomix.errors import InputError

#: Radii of Google's aggregated releases, nm.
RADIUS_PRESETS_NM: dict[str, float] = {"10um": 10_000.0, "25um": 25_000.0}
H01_RADIUS_NM = RADIUS_PRESETS_NM["10um"]
MICRONS_RADIUS_NM = RADIUS_PRESETS_NM["25um"]
#: Relative slack on R so a node at exactly R (up to summation rounding of edge lengths) counts as within.
_RADIUS_SLACK = 1e-9


@dataclass(frozen=True)
class Aggregated:
    """Aggregated embeddings at every skeleton node.

    Attributes
    ----------
    embeddings
        (N, D) float32: mean embedding of the embedded nodes within R of each node (NaN where none is).
    counts
        (N,) int64: how many embedded nodes were averaged at each node.
    radius_nm
        The radius used.
    """

    embeddings: NDArray[np.float32]
    counts: NDArray[np.int64]
    radius_nm: float


def skeleton_arrays(skeleton: Any) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """``(vertices_xyz_nm (N, 3), edges (E, 2))`` of a kimimaro/CloudVolume/osteoid ``Skeleton``.

    Such skeletons keep ``vertices`` in physical units (nm) in x, y, z order and ``edges`` as vertex
    index pairs.
    """
    if not (hasattr(skeleton, "vertices") and hasattr(skeleton, "edges")):
        raise InputError(f"expected a Skeleton with .vertices and .edges, got {type(skeleton).__name__}")
    return np.asarray(skeleton.vertices, dtype=np.float64), np.asarray(skeleton.edges, dtype=np.int64)


def skeleton_graph(vertices_xyz_nm: Any, edges: Any) -> sp.csr_matrix:
    """Sparse undirected graph of a skeleton, weighted by each edge's Euclidean length in nm.

    Zero-length edges (repeated vertices) are kept as edges of length 0.
    """
    vertices = np.asarray(vertices_xyz_nm, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise InputError(f"vertices_xyz_nm must have shape (N, 3), got {vertices.shape}")
    if not np.all(np.isfinite(vertices)):
        raise InputError("vertices_xyz_nm must be finite")
    pairs = np.asarray(edges)
    if pairs.size == 0:
        pairs = np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise InputError(
            f"edges must be an (E, 2) integer array of vertex indices, got {pairs.dtype} {pairs.shape}"
        )
    n = len(vertices)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise InputError(f"edges must index vertices 0..{n - 1}, got values {pairs.min()}..{pairs.max()}")
    pairs = pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int64)
    lengths = np.linalg.norm(vertices[pairs[:, 0]] - vertices[pairs[:, 1]], axis=1)
    # Store each edge once in the upper triangle; dijkstra(directed=False) uses both directions. A duplicate
    # edge keeps its shortest length (csr construction would sum duplicates, so reduce first).
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    key = lo * n + hi
    order = np.lexsort((lengths, key))
    first = np.concatenate([[True], key[order][1:] != key[order][:-1]]) if len(order) else np.zeros(0, bool)
    keep = order[first]
    return sp.csr_matrix((lengths[keep], (lo[keep], hi[keep])), shape=(n, n))


def resolve_radius(radius: float | str) -> float:
    """A radius in nm from a number or a preset name (``"10um"`` H01, ``"25um"`` MICrONS)."""
    if isinstance(radius, str):
        if radius not in RADIUS_PRESETS_NM:
            raise InputError(f"radius preset must be one of {', '.join(RADIUS_PRESETS_NM)}, got {radius!r}")
        return RADIUS_PRESETS_NM[radius]
    value = float(radius)
    if not np.isfinite(value) or value < 0:
        raise InputError(f"radius must be a non-negative number of nm, got {radius!r}")
    return value


def aggregate_embeddings(
    embeddings: Any,
    radius_nm: float | Literal["10um", "25um"],
    *,
    skeleton: Any = None,
    vertices_xyz_nm: Any = None,
    edges: Any = None,
    embedded_nodes: Any = None,
    batch_size: int = 256,
) -> Aggregated:
    """Mean of the embeddings within path distance ``radius_nm`` along the skeleton, at every node.

    Parameters
    ----------
    embeddings
        (M, D) embeddings: one per skeleton node (M = N) when ``embedded_nodes`` is None, else one per entry
        of ``embedded_nodes``.
    radius_nm
        Path-distance radius in nm (inclusive), or a preset: ``"10um"`` (H01) or ``"25um"`` (MICrONS).
    skeleton
        A kimimaro/CloudVolume ``Skeleton`` (vertices in nm); or give ``vertices_xyz_nm`` and ``edges``.
    vertices_xyz_nm, edges
        (N, 3) node positions in nm, x, y, z order, and (E, 2) vertex index pairs.
    embedded_nodes
        (M,) indices of the skeleton nodes that carry the embeddings (distinct).
    batch_size
        Dijkstra sources per batch (memory ≈ batch_size × N × 8 bytes).

    Returns
    -------
    Aggregated
        (N, D) means (NaN where no embedded node is within R) and (N,) counts.

    Examples
    --------
    >>> line = np.array([[0, 0, 0], [1000, 0, 0], [2000, 0, 0]], float)
    >>> agg = aggregate_embeddings(np.eye(3, dtype=np.float32), 1000.0, vertices_xyz_nm=line,
    ...                            edges=[[0, 1], [1, 2]])
    >>> agg.embeddings[1].tolist()  # nodes 0, 1, 2 are all within 1 µm of node 1
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    if skeleton is not None:
        if vertices_xyz_nm is not None or edges is not None:
            raise InputError("give either skeleton or vertices_xyz_nm and edges, not both")
        vertices_xyz_nm, edges = skeleton_arrays(skeleton)
    elif vertices_xyz_nm is None or edges is None:
        raise InputError("aggregation needs a skeleton, or vertices_xyz_nm and edges")
    graph = skeleton_graph(vertices_xyz_nm, edges)
    n = graph.shape[0]
    radius = resolve_radius(radius_nm)
    values = np.asarray(embeddings, dtype=np.float32)
    if embedded_nodes is None:
        sources = np.arange(n)
    else:
        sources = np.asarray(embedded_nodes)
        if sources.ndim != 1 or not np.issubdtype(sources.dtype, np.integer):
            raise InputError(
                f"embedded_nodes must be a 1-D integer array, got {sources.dtype} {sources.shape}"
            )
        if sources.size and (sources.min() < 0 or sources.max() >= n):
            raise InputError(f"embedded_nodes must index nodes 0..{n - 1}")
        if len(np.unique(sources)) != len(sources):
            raise InputError("embedded_nodes must be distinct")
    if values.ndim != 2 or len(values) != len(sources):
        raise InputError(f"embeddings must have shape ({len(sources)}, D), got {values.shape}")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    limit = radius * (1 + _RADIUS_SLACK)
    sums = np.zeros((n, values.shape[1]), dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    for start in range(0, len(sources), batch_size):
        batch = sources[start : start + batch_size]
        distances = dijkstra(graph, directed=False, indices=batch, limit=limit)
        rows, targets = np.nonzero(distances <= limit)
        # within[t, b] = 1 when target t is within R of source b: sums += within @ embeddings[batch].
        within = sp.csr_matrix((np.ones(len(rows)), (targets, rows)), shape=(n, len(batch)), dtype=np.float64)
        sums += within @ values[start : start + batch_size].astype(np.float64)
        counts += np.bincount(targets, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / counts[:, None]).astype(np.float32)
    return Aggregated(means, counts, radius)


def match_nodes(vertices_xyz_nm: Any, positions_xyz_nm: Any, tolerance_nm: float = 1.0) -> NDArray[np.int64]:
    """Index of the skeleton vertex at each embedding position (nearest, within ``tolerance_nm``).

    Use it to place CSV-ZIP rows (positions converted to nm) on a skeleton before aggregating.
    """
    vertices = np.asarray(vertices_xyz_nm, dtype=np.float64)
    positions = np.asarray(positions_xyz_nm, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions_xyz_nm must have shape (M, 3), got {positions.shape}")
    if len(vertices) == 0:
        raise InputError("the skeleton has no vertices")
    distance, index = cKDTree(vertices).query(positions)
    far = distance > tolerance_nm
    if far.any():
        k = int(np.argmax(far))
        raise InputError(
            f"{int(far.sum())} embedding positions are farther than {tolerance_nm:g} nm from every skeleton "
            f"vertex (first: {tuple(positions[k].tolist())}, {distance[k]:.1f} nm away)"
        )
    return np.asarray(index, dtype=np.int64)
