"""Community structure: Louvain (networkx), Leiden (igraph + leidenalg), a degree-corrected stochastic
block model fit, and the adjusted Rand index against known cell classes.

All functions take a :class:`~connectomix.analyze.graph.ConnectivityGraph` and return one integer label per
node (node order), deterministic in ``seed``. Edges are weighted by synapse count; direction is kept
(directed modularity for Louvain and Leiden, a directed block model for the SBM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from connectomix.analyze.graph import ConnectivityGraph
from connectomix.errors import InputError, UnsupportedError


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. in order of first appearance (so equal partitions compare equal)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def louvain(graph: ConnectivityGraph, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Louvain communities (``networkx.community.louvain_communities``, directed modularity, synapse
    weights)."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(range(graph.n_nodes))
    g.add_weighted_edges_from(
        zip(
            graph.edges["pre"].tolist(),
            graph.edges["post"].tolist(),
            graph.edges["synapses"].tolist(),
            strict=True,
        )
    )
    communities = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
    labels = np.zeros(graph.n_nodes, np.int64)
    for label, members in enumerate(communities):
        labels[list(members)] = label
    return _relabel(labels)


def leiden(graph: ConnectivityGraph, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden communities (leidenalg, RB-configuration / modularity with ``resolution``, directed)."""
    try:
        import igraph
        import leidenalg
    except ImportError:
        raise UnsupportedError(
            "Leiden needs the igraph and leidenalg packages: pip install leidenalg"
        ) from None
    g = igraph.Graph(
        n=graph.n_nodes,
        edges=list(zip(graph.edges["pre"].tolist(), graph.edges["post"].tolist(), strict=True)),
        directed=True,
    )
    partition = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=graph.edges["synapses"].astype(float).tolist(),
        resolution_parameter=resolution,
        seed=seed,
        n_iterations=-1,
    )
    return _relabel(np.asarray(partition.membership, dtype=np.int64))


# -- stochastic block model ---------------------------------------------------------------------------------
# Written here rather than taken from graph-tool (not on PyPI) or graspologic (heavy, pins old scipy /
# sklearn): what is needed is the directed degree-corrected SBM likelihood of Karrer & Newman (2011), fitted
# by seeded greedy single-node moves with restarts, which takes under a hundred lines with numpy.
def _xlogx(values: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values, dtype=np.float64)
    positive = values > 0
    out[positive] = values[positive] * np.log(values[positive])
    return out


def dcsbm_log_likelihood(block_edges: np.ndarray) -> float:
    """Directed degree-corrected SBM profile log-likelihood (Karrer & Newman 2011, eq. 9 made directed):
    ``Σ_rs m_rs log(m_rs / (κ⁺_r κ⁻_s))``, with ``m_rs`` the weight from block ``r`` to block ``s`` and
    ``κ⁺_r``/``κ⁻_s`` the blocks' total out-/in-weights. Equals ``Σ f(m) − Σ f(κ⁺) − Σ f(κ⁻)``,
    ``f(x) = x log x``."""
    m = np.asarray(block_edges, dtype=np.float64)
    return float(_xlogx(m).sum() - _xlogx(m.sum(axis=1)).sum() - _xlogx(m.sum(axis=0)).sum())


@dataclass(frozen=True)
class SBMFit:
    """The best partition found, its log-likelihood and the block-to-block weight matrix."""

    labels: np.ndarray
    log_likelihood: float
    block_edges: np.ndarray
    sweeps: int


def _block_matrix(adjacency: Any, labels: np.ndarray, k: int) -> np.ndarray:
    coo = adjacency.tocoo()
    m = np.zeros((k, k))
    np.add.at(m, (labels[coo.row], labels[coo.col]), coo.data)
    return m


def _greedy(
    adjacency: Any, labels: np.ndarray, k: int, rng: np.random.Generator, max_sweeps: int
) -> tuple[np.ndarray, int]:
    """Move single nodes to the block that raises the likelihood most, in random order, until a sweep
    changes nothing (or ``max_sweeps``)."""
    csr, csc = adjacency.tocsr(), adjacency.tocsc()
    diag = adjacency.diagonal().astype(np.float64)
    m = _block_matrix(adjacency, labels, k)
    blocks = np.arange(k)
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        moved = 0
        for i in rng.permutation(labels.size):
            a = labels[i]
            row = slice(csr.indptr[i], csr.indptr[i + 1])
            col = slice(csc.indptr[i], csc.indptr[i + 1])
            out_to = np.bincount(labels[csr.indices[row]], weights=csr.data[row], minlength=k)
            in_from = np.bincount(labels[csc.indices[col]], weights=csc.data[col], minlength=k)
            out_to[a] -= diag[i]
            in_from[a] -= diag[i]
            base = m.copy()  # i removed from block a
            base[a, :] -= out_to
            base[:, a] -= in_from
            base[a, a] -= diag[i]
            # candidates: i added to each block b, all at once (k × k × k)
            trial = np.broadcast_to(base, (k, k, k)).copy()
            trial[blocks, blocks, :] += out_to
            trial[blocks, :, blocks] += in_from
            trial[blocks, blocks, blocks] += diag[i]
            flat = trial.reshape(k, -1)
            score = (
                _xlogx(flat).sum(axis=1)
                - _xlogx(trial.sum(axis=2)).sum(axis=1)
                - _xlogx(trial.sum(axis=1)).sum(axis=1)
            )
            best = int(np.argmax(score))
            if score[best] > score[a] + 1e-9 and np.count_nonzero(labels == a) > 1:
                labels[i] = best
                m = trial[best]
                moved += 1
        if moved == 0:
            break
    return labels, sweeps


def fit_dcsbm(
    graph: ConnectivityGraph,
    n_blocks: int,
    *,
    seed: int = 0,
    restarts: int = 5,
    max_sweeps: int = 50,
    init: np.ndarray | None = None,
) -> SBMFit:
    """Fit a directed degree-corrected stochastic block model with ``n_blocks`` blocks.

    Each of ``restarts`` runs starts from a random partition (seeded from ``seed``; or from ``init`` for
    the first run) and makes greedy single-node moves until none raises the likelihood; the best run is
    returned. Weights are synapse counts; blocks are never emptied.
    """
    if not isinstance(n_blocks, int | np.integer) or not 1 <= n_blocks <= max(graph.n_nodes, 1):
        raise InputError(f"number of blocks must be 1..{graph.n_nodes}, got {n_blocks!r}")
    if restarts < 1:
        raise InputError(f"restarts must be at least 1, got {restarts!r}")
    adjacency = graph.adjacency("synapses").astype(np.float64)
    k = int(n_blocks)
    best: SBMFit | None = None
    for run, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(restarts))):
        rng = np.random.default_rng(child)
        if run == 0 and init is not None:
            labels = _relabel(np.asarray(init)).copy()
            if labels.shape != (graph.n_nodes,) or labels.max() >= k:
                raise InputError(f"init must give each of {graph.n_nodes} nodes a block 0..{k - 1}")
        else:
            labels = rng.permutation(np.arange(graph.n_nodes) % k)
        labels, sweeps = _greedy(adjacency, labels, k, rng, max_sweeps)
        block_edges = _block_matrix(adjacency, labels, k)
        fit = SBMFit(labels, dcsbm_log_likelihood(block_edges), block_edges, sweeps)
        if best is None or fit.log_likelihood > best.log_likelihood + 1e-9:
            best = fit
    assert best is not None
    return best


# -- agreement --------------------------------------------------------------------------------------------
def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings of the same items, from their
    contingency table: 1 for identical partitions, ~0 for independent ones. Labels may be any hashables."""
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"labelings must be 1-D and equally long, got shapes {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        return 1.0
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), np.int64)
    np.add.at(table, (ia.ravel(), ib.ravel()), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) // 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (all one cluster, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


__all__ = ["SBMFit", "adjusted_rand_index", "dcsbm_log_likelihood", "fit_dcsbm", "leiden", "louvain"]
