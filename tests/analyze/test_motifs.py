"""Triad and dyad census: equal to networkx on random graphs of several densities, whatever the input type."""

from __future__ import annotations

from math import comb

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from connectomix.analyze.graph import ConnectivityGraph
from connectomix.analyze.motifs import TRIAD_NAMES, BinaryDigraph, dyad_census, triad_census
from connectomix.errors import InputError


@pytest.mark.parametrize(
    ("n", "p", "seed"),
    [(40, 0.02, 0), (40, 0.1, 1), (30, 0.3, 2), (25, 0.6, 3), (20, 0.9, 4), (12, 1.0, 5), (7, 0.0, 6)],
)
def test_census_equals_networkx(n: int, p: float, seed: int) -> None:
    graph = nx.gnp_random_graph(n, p, seed=seed, directed=True)
    expected = nx.triadic_census(graph)
    assert triad_census(graph) == expected
    # tiny wedge blocks: the block-wise enumeration gives the same counts
    assert triad_census(graph, max_wedges=5) == expected
    assert sum(expected.values()) == comb(n, 3) and list(triad_census(graph)) == list(TRIAD_NAMES)


def test_census_on_a_sparse_graph_with_hubs_and_reciprocity() -> None:
    """Scale-free-ish degrees (a few hubs) plus many reciprocated edges: every class occurs."""
    rng = np.random.default_rng(7)
    n = 300
    src = rng.integers(0, n, 2500)
    dst = (rng.pareto(1.2, 2500) * 5).astype(int) % n
    back = rng.random(2500) < 0.3
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    graph.add_edges_from(zip(dst[back].tolist(), src[back].tolist(), strict=True))
    graph.remove_edges_from(nx.selfloop_edges(graph))
    expected = nx.triadic_census(graph)
    assert all(count > 0 for count in expected.values())
    assert triad_census(graph) == expected


def test_input_types_agree_and_self_loops_and_weights_are_ignored() -> None:
    graph = nx.gnp_random_graph(35, 0.15, seed=11, directed=True)
    expected = nx.triadic_census(graph)
    dense = nx.to_numpy_array(graph, nodelist=range(35)) * 3  # weights do not matter
    np.fill_diagonal(dense, 1)  # nor do self-loops
    assert triad_census(dense) == expected
    assert triad_census(sp.csr_array(dense)) == expected
    pre, post = np.nonzero(dense)
    cg = ConnectivityGraph.from_edges(pre, post, dense[pre, post].astype(int), nodes=None)
    missing = set(range(35)) - set(pre) - set(post)
    assert not missing  # all nodes are endpoints here, so the node sets agree
    assert triad_census(cg) == expected


def test_dyad_census() -> None:
    graph = nx.gnp_random_graph(50, 0.2, seed=3, directed=True)
    dyads = dyad_census(graph)
    mutual = sum(1 for a, b in graph.edges if a < b and graph.has_edge(b, a))
    assert dyads.mutual == mutual
    assert 2 * dyads.mutual + dyads.asymmetric == graph.number_of_edges()
    assert dyads.mutual + dyads.asymmetric + dyads.null == comb(50, 2)
    assert dyads.reciprocity == pytest.approx(nx.overall_reciprocity(graph))


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="directed"):
        triad_census(nx.path_graph(4))
    with pytest.raises(InputError, match="square"):
        triad_census(np.zeros((3, 4)))
    with pytest.raises(InputError, match="node indices"):
        BinaryDigraph.from_arrays(3, [0, 5], [1, 2])
    with pytest.raises(InputError, match="expected a ConnectivityGraph"):
        triad_census("graph")
