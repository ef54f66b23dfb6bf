"""Community structure: ARI against its pair-counting definition, SBM recovery of planted blocks, and the
larva mushroom body classes."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from connectomix.analyze.community import (
    _block_matrix,
    adjusted_rand_index,
    dcsbm_log_likelihood,
    fit_dcsbm,
    leiden,
    louvain,
)
from connectomix.analyze.datasets import load_dataset
from connectomix.analyze.graph import ConnectivityGraph


def ari_by_pairs(a, b) -> float:
    """ARI from the four pair counts (Hubert & Arabie), O(n²): an independent reference."""
    pairs = list(combinations(range(len(a)), 2))
    same_a = np.array([a[i] == a[j] for i, j in pairs])
    same_b = np.array([b[i] == b[j] for i, j in pairs])
    n11 = np.sum(same_a & same_b)
    n10, n01 = np.sum(same_a & ~same_b), np.sum(~same_a & same_b)
    n00 = len(pairs) - n11 - n10 - n01
    return 2 * (n00 * n11 - n01 * n10) / ((n00 + n01) * (n01 + n11) + (n00 + n10) * (n10 + n11))


def test_ari_matches_the_pair_counting_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 5, 60)
        assert adjusted_rand_index(a, b) == pytest.approx(ari_by_pairs(a, b))
    a = rng.integers(0, 3, 40)
    assert adjusted_rand_index(a, (a + 1) % 3) == pytest.approx(1.0)  # renaming does not matter
    assert adjusted_rand_index(list("KKPPOO"), [0, 0, 1, 1, 1, 2]) == pytest.approx(4 / 9)


def planted(seed: int = 0) -> tuple[ConnectivityGraph, np.ndarray]:
    """Directed SBM, 3 blocks of 40, dense within blocks and a one-way 0 → 1 pattern."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1, 2], 40)
    p = np.array([[0.3, 0.2, 0.02], [0.02, 0.3, 0.02], [0.02, 0.02, 0.3]])
    adjacency = rng.random((120, 120)) < p[truth][:, truth]
    np.fill_diagonal(adjacency, False)
    pre, post = np.nonzero(adjacency)
    return ConnectivityGraph.from_edges(pre, post, rng.integers(1, 5, pre.size)), truth


def test_sbm_recovers_planted_blocks_deterministically() -> None:
    graph, truth = planted()
    fit = fit_dcsbm(graph, 3, seed=1, restarts=3)
    assert adjusted_rand_index(truth, fit.labels) == pytest.approx(1.0)
    again = fit_dcsbm(graph, 3, seed=1, restarts=3)
    np.testing.assert_array_equal(fit.labels, again.labels)
    assert fit.log_likelihood == pytest.approx(dcsbm_log_likelihood(fit.block_edges))
    assert adjusted_rand_index(truth, louvain(graph, seed=0)) > 0.9
    assert adjusted_rand_index(truth, leiden(graph, seed=0)) > 0.9


def test_larva_mushroom_body_classes(testdata) -> None:
    graph = load_dataset("larva-mb-left")
    truth = graph.nodes["cell_type"].to_numpy()
    fit = fit_dcsbm(graph, 4, seed=0)
    codes = np.unique(truth, return_inverse=True)[1]
    truth_ll = dcsbm_log_likelihood(_block_matrix(graph.adjacency().astype(float), codes, 4))
    assert fit.log_likelihood >= truth_ll  # the fit is at least as likely as the known classes
    sbm_ari = adjusted_rand_index(truth, fit.labels)
    louvain_ari = adjusted_rand_index(truth, louvain(graph, seed=0))
    # the classes are not assortative communities: the block model finds them better than modularity
    assert sbm_ari > 0.25 and sbm_ari > louvain_ari
    np.testing.assert_array_equal(louvain(graph, seed=0), louvain(graph, seed=0))
