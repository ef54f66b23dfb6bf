"""Aggregation along skeletons: exact means on hand-made skeletons, path vs Euclidean, a real neuron."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from osteoid import Skeleton
from scipy.sparse.csgraph import dijkstra

from connectomix.embed.aggregate import (
    MICRONS_RADIUS_NM,
    aggregate_embeddings,
    match_nodes,
    skeleton_graph,
)
from connectomix.errors import InputError


def line(n: int, step: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.stack([np.arange(n) * step, np.zeros(n), np.zeros(n)], axis=1)
    return vertices, np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)


def test_line_means_are_exact():
    vertices, edges = line(6)
    values = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], dtype=np.float32)
    agg = aggregate_embeddings(values, 1000.0, vertices_xyz_nm=vertices, edges=edges)
    # node 0: {0, 1}; nodes 1..4: {i-1, i, i+1} (a node at exactly R counts); node 5: {4, 5}
    expected = np.array([0.5, 1, 2, 3, 4, 4.5])
    np.testing.assert_allclose(agg.embeddings[:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(agg.embeddings[:, 1], expected * 10, rtol=1e-6)
    np.testing.assert_array_equal(agg.counts, [2, 3, 3, 3, 3, 2])
    zero = aggregate_embeddings(values, 0.0, vertices_xyz_nm=vertices, edges=edges)
    np.testing.assert_array_equal(zero.embeddings, values)


def test_y_branch_with_embeddings_on_a_subset():
    #        4
    #        3
    # 6  5   0   1   2      (1 µm steps; arm 0-3-4 goes up in y)
    vertices = np.array(
        [[0, 0, 0], [1000, 0, 0], [2000, 0, 0], [0, 1000, 0], [0, 2000, 0], [-1000, 0, 0], [-2000, 0, 0]],
        dtype=np.float64,
    )
    edges = np.array([[0, 1], [1, 2], [0, 3], [3, 4], [0, 5], [5, 6]])
    embedded = np.array([2, 4, 6, 0])
    values = np.array([[2.0, 0], [4.0, 0], [6.0, 0], [0.0, 1]], dtype=np.float32)
    agg = aggregate_embeddings(values, 2000.0, vertices_xyz_nm=vertices, edges=edges, embedded_nodes=embedded)
    # node 1 reaches 0, 2 (1 µm), 3, 5 (2 µm): embedded 0 and 2
    np.testing.assert_allclose(agg.embeddings[1], [1.0, 0.5])
    # node 3 (not embedded) reaches 0, 4 (1 µm), 1, 5 (2 µm): embedded 0 and 4
    np.testing.assert_allclose(agg.embeddings[3], [2.0, 0.5])
    # node 0 reaches every node within 2 µm: all four embeddings
    np.testing.assert_allclose(agg.embeddings[0], [3.0, 0.25])
    np.testing.assert_array_equal(agg.counts, [4, 2, 2, 2, 2, 2, 2])
    small = aggregate_embeddings(
        values, 500.0, vertices_xyz_nm=vertices, edges=edges, embedded_nodes=embedded
    )
    assert small.counts[1] == 0 and np.all(np.isnan(small.embeddings[1]))  # nothing embedded within R


def test_path_distance_not_euclidean():
    """A U: the two arms' tips are 1 µm apart in space but 9 µm apart along the skeleton."""
    bottom = [[x, 0, 0] for x in range(0, 5000, 1000)]
    top = [[x, 1000, 0] for x in range(4000, -1000, -1000)]
    vertices = np.array(bottom + top, dtype=np.float64)
    edges = np.stack([np.arange(9), np.arange(1, 10)], axis=1)
    values = np.eye(10, dtype=np.float32)
    agg = aggregate_embeddings(values, 1500.0, vertices_xyz_nm=vertices, edges=edges)
    expected0 = np.zeros(10)
    expected0[[0, 1]] = 0.5  # nodes 8 and 9 are within 1.5 µm in space but not along the path
    np.testing.assert_allclose(agg.embeddings[0], expected0, atol=1e-7)
    expected4 = np.zeros(10)
    expected4[[3, 4, 5]] = 1 / 3
    np.testing.assert_allclose(agg.embeddings[4], expected4, atol=1e-7)
    # The Euclidean neighbourhood would have mixed the arms:
    euclid = np.linalg.norm(vertices[:, None] - vertices[None], axis=2) <= 1500
    assert euclid[0, 9] and euclid[0, 8]


def test_skeleton_object_and_batches_agree():
    vertices, edges = line(9, 700.0)
    skeleton = Skeleton(vertices.astype(np.float32), edges.astype(np.uint32))
    values = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    a = aggregate_embeddings(values, 1500.0, skeleton=skeleton)
    b = aggregate_embeddings(values, 1500.0, vertices_xyz_nm=vertices, edges=edges, batch_size=2)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-6)
    with pytest.raises(InputError, match="either skeleton or"):
        aggregate_embeddings(values, 1.0, skeleton=skeleton, vertices_xyz_nm=vertices, edges=edges)
    with pytest.raises(InputError, match="radius preset"):
        aggregate_embeddings(values, "5um", skeleton=skeleton)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="edges must index vertices"):
        aggregate_embeddings(values, 1.0, vertices_xyz_nm=vertices, edges=[[0, 99]])
    with pytest.raises(InputError, match=r"embeddings must have shape \(9, D\)"):
        aggregate_embeddings(values[:3], 1.0, skeleton=skeleton)


def test_real_neuron_against_independent_distances(testdata):
    """A hemibrain DA1 lPN skeleton (SWC, 8 nm voxels): 25 µm means vs distances from the parent column."""
    swc = testdata / "morphology/navis_hemibrain_DA1_lPN/swc/722817260.swc"
    rows = np.array(
        [line.split() for line in swc.read_text().splitlines() if line.strip() and not line.startswith("#")],
        dtype=np.float64,
    )
    ids, parents = rows[:, 0].astype(np.int64), rows[:, 6].astype(np.int64)
    vertices = rows[:, 2:5] * 8.0  # voxels → nm
    index = {v: i for i, v in enumerate(ids)}
    child = np.array([i for i, p in enumerate(parents) if p != -1])
    parent = np.array([index[p] for p in parents if p != -1])
    edges = np.stack([child, parent], axis=1)
    rng = np.random.default_rng(0)
    embedded = np.sort(rng.choice(len(ids), size=len(ids) // 10, replace=False))  # sampled nodes only
    values = rng.normal(size=(len(embedded), 64)).astype(np.float32)
    agg = aggregate_embeddings(values, "25um", vertices_xyz_nm=vertices, edges=edges, embedded_nodes=embedded)
    assert agg.radius_nm == MICRONS_RADIUS_NM
    # Independent check: full (unlimited) Dijkstra on a graph built here from the parent column.
    lengths = np.linalg.norm(vertices[child] - vertices[parent], axis=1)
    graph = sp.coo_matrix((lengths, (child, parent)), shape=(len(ids),) * 2).tocsr()
    probes = rng.choice(len(ids), size=6, replace=False)
    distances = dijkstra(graph, directed=False, indices=probes)
    for row, node in zip(distances, probes, strict=True):
        inside = row[embedded] <= 25_000.0
        assert agg.counts[node] == inside.sum() > 0
        np.testing.assert_allclose(agg.embeddings[node], values[inside].mean(axis=0), rtol=1e-5, atol=1e-6)
    euclid_counts = (
        np.linalg.norm(vertices[probes][:, None] - vertices[embedded][None], axis=2) <= 25_000
    ).sum(1)
    assert np.all(euclid_counts >= agg.counts[probes]) and np.any(euclid_counts > agg.counts[probes])
    # An unbounded radius gives the mean of all embeddings (one connected neuron).
    everything = aggregate_embeddings(
        values, 1e12, vertices_xyz_nm=vertices, edges=edges, embedded_nodes=embedded
    )
    np.testing.assert_allclose(everything.embeddings[0], values.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_match_nodes_and_zero_length_edges():
    vertices = np.array([[0, 0, 0], [0, 0, 0], [100, 0, 0]], dtype=np.float64)
    graph = skeleton_graph(vertices, [[0, 1], [1, 2], [1, 2]])  # a zero-length edge and a duplicate
    assert graph.nnz == 2
    d = dijkstra(graph, directed=False, indices=[0])
    np.testing.assert_allclose(d[0], [0, 0, 100])
    np.testing.assert_array_equal(match_nodes(vertices, [[100.4, 0, 0], [0, 0, 0.2]]), [2, 0])
    with pytest.raises(InputError, match="farther than 1 nm"):
        match_nodes(vertices, [[50, 0, 0]])
