"""Skeletons of segments (kimimaro) and positive pairs within a path distance along the skeleton."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.embed.pairs import node_ids_for, sample_pairs, skeletonize_segments
from connectomix.errors import InputError
from connectomix.volume import ArrayVolume, Box, open_volume

RES = (10.0, 10.0, 10.0)


def tubes() -> np.ndarray:
    """Two 9-voxel-thick tubes in a (40, 48, 160) volume: 1 straight along x (140 voxels = 1.4 µm), 2 an L
    (along x, then along y)."""
    labels = np.zeros((40, 48, 160), np.uint64)
    labels[6:15, 6:15, 10:150] = 1
    labels[25:34, 6:15, 10:80] = 2
    labels[25:34, 6:45, 71:80] = 2
    return labels


@pytest.fixture(scope="module")
def graph():
    return skeletonize_segments(ArrayVolume(tubes(), resolution=RES), min_voxels=500)


def test_skeleton_nodes_lie_in_their_segment_with_global_ids(graph):
    labels = tubes()
    assert set(graph.segment_ids.tolist()) == {1, 2}
    z, y, x = graph.nodes_zyx.T
    assert np.array_equal(labels[z, y, x], graph.node_segment_ids)
    assert np.array_equal(graph.node_ids, np.ravel_multi_index((z, y, x), labels.shape).astype(np.uint64))
    keys = set(zip(graph.node_segment_ids.tolist(), graph.node_ids.tolist(), strict=True))
    assert len(keys) == graph.n_nodes
    straight = graph.segment_nodes[int(np.flatnonzero(graph.segment_ids == 1)[0])]
    ends = straight[[np.argmin(graph.nodes_zyx[straight, 2]), np.argmax(graph.nodes_zyx[straight, 2])]]
    length = graph.path_distances(ends[:1])[0, ends[1]]
    assert 1200 < length < 1450  # the tube is 1.4 µm long; TEASAR stops a little short of the caps
    assert np.isinf(
        graph.path_distances(ends[:1])[0, graph.node_segment == 1 - graph.node_segment[ends[0]]]
    ).all()


def test_node_ids_are_the_same_when_skeletonising_a_sub_box():
    volume = ArrayVolume(tubes(), resolution=RES, voxel_offset=(100, 200, 300))
    part = skeletonize_segments(volume, box=Box((100, 200, 300), (120, 248, 460)), min_voxels=500)
    assert set(part.segment_ids.tolist()) == {1}
    assert np.all(part.nodes_zyx[:, 0] < 120)
    local = part.nodes_zyx - np.array([100, 200, 300])
    assert np.array_equal(part.node_ids, np.ravel_multi_index(local.T, (40, 48, 160)).astype(np.uint64))
    with pytest.raises(InputError, match="outside"):
        node_ids_for(np.array([[0, 0, 0]]), volume.bounds)


def test_pairs_are_within_the_path_distance_and_deterministic(graph):
    rng = np.random.default_rng(3)
    pairs = sample_pairs(graph, 2, rng, max_distance_nm=300.0)
    assert set(graph.node_segment[pairs.a].tolist()) == {0, 1}  # distinct segments while there are enough
    assert np.array_equal(graph.node_segment[pairs.a], graph.node_segment[pairs.b])
    assert np.all(pairs.distance_nm <= 300.0) and np.all(pairs.distance_nm > 0)
    many = sample_pairs(graph, 50, np.random.default_rng(4), max_distance_nm=300.0, min_distance_nm=100.0)
    assert np.all((many.distance_nm >= 100.0) & (many.distance_nm <= 300.0))
    check = graph.path_distances(many.a)[np.arange(50), many.b]
    np.testing.assert_allclose(check, many.distance_nm)
    euclid = np.linalg.norm(graph.nodes_nm_zyx[many.a] - graph.nodes_nm_zyx[many.b], axis=1)
    assert np.all(euclid <= many.distance_nm + 1e-6)
    again = sample_pairs(graph, 50, np.random.default_rng(4), max_distance_nm=300.0, min_distance_nm=100.0)
    assert np.array_equal(again.a, many.a) and np.array_equal(again.b, many.b)
    with pytest.raises(InputError):
        sample_pairs(graph, 4, rng, max_distance_nm=100.0, min_distance_nm=200.0)
    with pytest.raises(InputError):
        sample_pairs(graph, 0, rng, max_distance_nm=100.0)


def test_real_labels_gala(testdata):
    gt = open_volume("gala-train/gt")
    graph = skeletonize_segments(gt)  # 10 nm isotropic, bodies of ≥ 1000 voxels
    labels = gt.read()
    z, y, x = graph.nodes_zyx.T
    assert np.array_equal(labels[z, y, x], graph.node_segment_ids)
    assert len(graph.segment_ids) > 20
    pairs = sample_pairs(graph, 16, np.random.default_rng(0), max_distance_nm=1000.0)
    assert len(set(graph.node_segment[pairs.a].tolist())) == 16
    assert np.all(pairs.distance_nm <= 1000.0)
    assert np.mean(pairs.distance_nm > 0) > 0.9
