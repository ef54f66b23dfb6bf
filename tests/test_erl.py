"""Expected run length on synthetic tubes of known length (kimimaro skeletons)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.evaluate import Skeletons, erl_from_skeletons, expected_run_length, skeletonize
from connectomix.evaluate.erl import lookup_labels
from connectomix.volume import ArrayVolume

RESOLUTION = (10.0, 10.0, 10.0)
SHAPE = (24, 40, 160)
X_START, X_STOP = 10, 150  # tubes run along x over these voxels
BASE = 2**60  # ids above 2**53, as in real segmentations


def tubes(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Three parallel tubes (radius 4 voxels) along x, ids BASE + 1..3, in a (z, y, x) volume."""
    gt = np.zeros(shape, dtype=np.uint64)
    zz, yy = np.mgrid[: shape[0], : shape[1]]
    for k, (cz, cy) in enumerate([(6, 8), (6, 30), (17, 19)], 1):
        disk = (zz - cz) ** 2 + (yy - cy) ** 2 <= 16
        gt[disk, X_START:X_STOP] = BASE + k
    return gt


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    return tubes()


@pytest.fixture(scope="module")
def skeletons(gt: np.ndarray) -> Skeletons:
    return skeletonize(gt, resolution_nm_zyx=RESOLUTION)


def test_skeletons_span_the_tubes(skeletons: Skeletons) -> None:
    assert skeletons.gt_ids.tolist() == [BASE + 1, BASE + 2, BASE + 3]
    lengths = np.bincount(skeletons.node_skeleton[skeletons.edges[:, 0]], weights=skeletons.edge_lengths_nm())
    tube_nm = (X_STOP - X_START - 1) * RESOLUTION[2]
    np.testing.assert_allclose(lengths, tube_nm, rtol=0.05)


def test_perfect_segmentation_reaches_the_maximum(gt: np.ndarray, skeletons: Skeletons) -> None:
    result = erl_from_skeletons(gt, skeletons)
    assert result.erl_nm == result.max_erl_nm > 0
    assert result.n_correct_edges == result.n_edges and result.n_skeletons == 3
    # Three equal tubes: max ERL = sum L^2 / sum L = L.
    assert result.max_erl_nm == pytest.approx(result.total_length_nm / 3)
    relabelled = np.where(gt > 0, gt - BASE + 7, 0)  # segment ids need not equal gt ids
    assert erl_from_skeletons(relabelled, skeletons).erl_nm == pytest.approx(result.max_erl_nm)


def test_cutting_one_tube_in_half(gt: np.ndarray, skeletons: Skeletons) -> None:
    seg = gt.copy()
    half = seg[:, :, (X_START + X_STOP) // 2 :]
    half[half == BASE + 1] = 99
    result = erl_from_skeletons(seg, skeletons)
    assert result.n_split_edges == 1 and result.n_merged_edges == result.n_omitted_edges == 0
    # Runs: L/2, L/2, L, L over total 3L: ERL = (2 (L/2)^2 + 2 L^2) / 3L = 5/6 L.
    assert result.erl_nm == pytest.approx(5 / 6 * result.max_erl_nm, rel=0.01)


def test_merging_two_tubes(gt: np.ndarray, skeletons: Skeletons) -> None:
    seg = gt.copy()
    seg[seg == BASE + 2] = BASE + 1
    result = erl_from_skeletons(seg, skeletons)
    node_gt = skeletons.node_gt
    merged_tube_edges = np.isin(node_gt[skeletons.edges[:, 0]], [BASE + 1, BASE + 2]).sum()
    assert result.n_merged_edges == merged_tube_edges
    assert result.n_correct_edges == result.n_edges - merged_tube_edges
    assert result.merging_segment_ids == [BASE + 1]
    # Only the third tube keeps its run: ERL = L^2 / 3L = L / 3.
    assert result.erl_nm == pytest.approx(result.max_erl_nm / 3, rel=0.05)


def test_small_touch_below_the_merge_threshold_is_not_a_merge(gt: np.ndarray, skeletons: Skeletons) -> None:
    seg = gt.copy()
    node_voxels = skeletons.node_voxels_zyx(gt.shape)[skeletons.node_gt == BASE + 2][:2]
    seg[node_voxels[:, 0], node_voxels[:, 1], node_voxels[:, 2]] = BASE + 1  # 2 nodes of tube 2
    result = erl_from_skeletons(seg, skeletons, merge_threshold_nodes=5)
    assert result.n_merged_edges == 0 and result.merging_segment_ids == []
    assert erl_from_skeletons(seg, skeletons, merge_threshold_nodes=1).merging_segment_ids == [BASE + 1]


def test_unsegmented_is_all_omitted(gt: np.ndarray, skeletons: Skeletons) -> None:
    result = erl_from_skeletons(np.zeros_like(gt), skeletons)
    assert result.erl_nm == 0.0 and result.n_omitted_edges == result.n_edges
    data = json.loads(json.dumps(result.to_dict()))
    assert data["erl_nm"] == 0.0 and data["n_omitted_edges"] == result.n_edges


def test_end_to_end_with_volumes_and_anisotropy() -> None:
    """Resolution comes from the Volume; a z-tube and an x-tube get their lengths in nm on each axis."""
    resolution = (40.0, 8.0, 4.0)  # (z, y, x) nm
    gt = np.zeros((40, 30, 200), dtype=np.uint32)
    gt[5:35, 10:20, 95:105] = 1  # along z: 30 sections
    gt[20:24, 2:6, 20:180] = 2  # along x: 160 voxels
    gt_volume = ArrayVolume(gt, resolution=resolution)
    result = expected_run_length(
        ArrayVolume(gt.copy(), resolution=resolution), gt_volume, skeleton_params={"dust_threshold": 100}
    )
    z_nm, x_nm = 29 * 40.0, 159 * 4.0
    assert result.n_skeletons == 2
    assert result.total_length_nm == pytest.approx(z_nm + x_nm, rel=0.1)
    assert result.erl_nm == pytest.approx(result.max_erl_nm)
    assert result.max_erl_nm == pytest.approx((z_nm**2 + x_nm**2) / (z_nm + x_nm), rel=0.1)


def test_volume_lookup_equals_array_lookup(gt: np.ndarray, skeletons: Skeletons) -> None:
    voxels = skeletons.node_voxels_zyx(gt.shape)
    from_array = lookup_labels(gt, voxels)
    from_volume = lookup_labels(ArrayVolume(gt, voxel_offset=(100, 0, -5)), voxels, block_shape=(7, 9, 11))
    assert np.array_equal(from_array, from_volume)
    assert np.array_equal(from_array, skeletons.node_gt)  # nodes lie inside their own body


def test_bad_input(gt: np.ndarray) -> None:
    with pytest.raises(InputError, match="does not match GT shape"):
        expected_run_length(gt[:-1], gt, resolution_nm_zyx=RESOLUTION)
    with pytest.raises(InputError, match="resolution_nm_zyx"):
        expected_run_length(gt, gt)
    with pytest.raises(InputError, match="no body large enough"):
        expected_run_length(gt, np.zeros_like(gt), resolution_nm_zyx=RESOLUTION)
    with pytest.raises(InputError, match="expected integer labels, got float32"):
        expected_run_length(gt.astype(np.float32), gt, resolution_nm_zyx=RESOLUTION)
