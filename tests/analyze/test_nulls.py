"""Null models keep exactly what they claim: edge count; in/out degrees; mutual degrees, reciprocal pairs."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.analyze.datasets import load_dataset
from connectomix.analyze.motifs import BinaryDigraph, as_digraph, dyad_census
from connectomix.analyze.nulls import (
    degree_preserving,
    erdos_renyi,
    randomise,
    reciprocity_preserving,
    split_reciprocal,
)
from connectomix.errors import InputError


@pytest.fixture(scope="module")
def graph(testdata) -> BinaryDigraph:
    """C. elegans chemical synapses (Varshney): 279 nodes, 2,194 edges, 233 reciprocal pairs."""
    return as_digraph(load_dataset("celegans-varshney"))


def degrees(g: BinaryDigraph) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(g.src, minlength=g.n), np.bincount(g.dst, minlength=g.n)


def mutual_degrees(g: BinaryDigraph) -> np.ndarray:
    _, _, lo, hi = split_reciprocal(g)
    return np.bincount(np.concatenate([lo, hi]), minlength=g.n)


def assert_simple(g: BinaryDigraph) -> None:
    assert not np.any(g.src == g.dst)
    assert np.unique(g.keys()).size == g.n_edges


def test_erdos_renyi_keeps_nodes_and_edges(graph) -> None:
    random = erdos_renyi(graph, np.random.default_rng(0))
    assert (random.n, random.n_edges) == (graph.n, graph.n_edges)
    assert_simple(random)
    # far fewer reciprocal pairs than C. elegans: 2194² / (279·278) / 2 ≈ 31 expected
    assert dyad_census(random).mutual < 80


def test_degree_preserving_keeps_every_degree(graph) -> None:
    random, stats = degree_preserving(graph, np.random.default_rng(1), swaps_per_edge=10)
    assert_simple(random)
    for before, after in zip(degrees(graph), degrees(random), strict=True):
        np.testing.assert_array_equal(before, after)
    assert stats.proposed == 10 * graph.n_edges and 0.3 * stats.proposed < stats.accepted
    kept = np.intersect1d(graph.keys(), random.keys()).size
    assert kept < 0.2 * graph.n_edges  # well mixed
    assert dyad_census(random).mutual < dyad_census(graph).mutual


def test_reciprocity_preserving_keeps_degrees_and_mutual_pairs(graph) -> None:
    random, stats = reciprocity_preserving(graph, np.random.default_rng(2), swaps_per_edge=10)
    assert_simple(random)
    for before, after in zip(degrees(graph), degrees(random), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(mutual_degrees(graph), mutual_degrees(random))
    assert dyad_census(random).mutual == dyad_census(graph).mutual == 233
    assert stats.accepted > 0.2 * stats.proposed
    assert np.intersect1d(graph.keys(), random.keys()).size < 0.3 * graph.n_edges
    # the mutual pairs themselves moved
    _, _, lo0, hi0 = split_reciprocal(graph)
    _, _, lo1, hi1 = split_reciprocal(random)
    assert np.intersect1d(lo0 * graph.n + hi0, lo1 * graph.n + hi1).size < 0.5 * lo0.size


@pytest.mark.parametrize("null", ["erdos-renyi", "degree", "reciprocity"])
def test_deterministic_by_seed(graph, null) -> None:
    a = randomise(graph, null, np.random.default_rng(5))
    b = randomise(graph, null, np.random.default_rng(5))
    c = randomise(graph, null, np.random.default_rng(6))
    np.testing.assert_array_equal(a.keys(), b.keys())
    assert not np.array_equal(a.keys(), c.keys())


def test_zero_swaps_is_the_identity_and_bad_arguments(graph) -> None:
    same, stats = degree_preserving(graph, np.random.default_rng(0), swaps_per_edge=0)
    np.testing.assert_array_equal(same.keys(), graph.keys())
    assert stats.proposed == stats.accepted == 0
    with pytest.raises(InputError, match="null model"):
        randomise(graph, "configuration", np.random.default_rng(0))
    with pytest.raises(InputError, match="swaps per edge"):
        degree_preserving(graph, np.random.default_rng(0), swaps_per_edge=-1)
    full = BinaryDigraph.from_arrays(3, [0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1])
    with pytest.raises(InputError, match="do not fit"):
        erdos_renyi(BinaryDigraph(2, full.src, full.dst), np.random.default_rng(0))
