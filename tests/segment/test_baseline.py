"""The baseline seeded-watershed segmenter on synthetic and real (FIB-25) EM."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from connectomix.errors import InputError
from connectomix.segment import BaselineParams, boundary_from_raw, segment_baseline
from connectomix.volume.synthetic import make_synthetic


def _scores(gt: np.ndarray, seg: np.ndarray) -> tuple[float, float]:
    split, merge = variation_of_information(gt, seg)
    arand = adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
    return float(split + merge), float(arand)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic((96, 96, 96), seed=0)


@pytest.fixture(scope="module")
def result(synthetic):
    return segment_baseline(synthetic.raw)


def test_output_is_consecutive_uint64_with_no_tiny_segments(synthetic, result):
    seg = result.segmentation
    assert seg.shape == synthetic.raw.shape
    assert seg.dtype == np.uint64
    ids = np.unique(seg)
    assert ids[0] == 1  # every voxel labelled
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert result.n_segments == len(ids)
    assert result.n_seeds >= result.n_segments
    sizes = np.bincount(seg.ravel())[1:]
    assert sizes.min() >= BaselineParams().min_size_voxels
    assert result.boundary.dtype == np.float32
    assert result.boundary.min() >= 0.0 and result.boundary.max() <= 1.0
    assert result.seconds > 0


def test_good_on_synthetic_and_much_better_than_trivial(synthetic, result):
    # measured: VI 1.97, ARAND 0.36 (seed 0, 96³); all-one: VI 4.59, ARAND 0.89
    vi, arand = _scores(synthetic.gt, result.segmentation)
    assert vi < 2.4
    assert arand < 0.5
    vi_one, arand_one = _scores(synthetic.gt, np.ones_like(synthetic.gt))
    assert vi < vi_one - 2.0
    assert arand < arand_one - 0.3


def test_deterministic(synthetic, result):
    again = segment_baseline(synthetic.raw)
    assert np.array_equal(again.segmentation, result.segmentation)


def test_uses_a_given_boundary_map(synthetic, result):
    # the exact membrane map gives a better result than the map computed from the raw image
    ideal = segment_baseline(synthetic.raw, boundary=synthetic.boundary)
    np.testing.assert_array_equal(ideal.boundary, synthetic.boundary)
    vi_ideal, _ = _scores(synthetic.gt, ideal.segmentation)
    vi_raw, _ = _scores(synthetic.gt, result.segmentation)
    assert vi_ideal < vi_raw
    assert not np.array_equal(ideal.segmentation, result.segmentation)


def test_boundary_from_raw_is_high_on_dark_membranes(synthetic):
    bmap = boundary_from_raw(synthetic.raw)
    assert bmap.dtype == np.float32
    assert bmap[synthetic.boundary > 0.8].mean() > bmap[synthetic.boundary < 0.1].mean() + 0.3


def test_anisotropic_volume_runs():
    vol = make_synthetic((16, 64, 64), seed=1, resolution_nm_zyx=(40, 8, 8))
    res = segment_baseline(vol.raw, resolution_nm_zyx=(40, 8, 8))
    vi, _ = _scores(vol.gt, res.segmentation)
    vi_one, _ = _scores(vol.gt, np.ones_like(vol.gt))
    assert vi < vi_one


def test_bad_input_raises_input_error(synthetic):
    with pytest.raises(InputError, match="3-D"):
        segment_baseline(synthetic.raw[0])
    with pytest.raises(InputError, match="shape"):
        segment_baseline(synthetic.raw, boundary=synthetic.boundary[:10])
    with pytest.raises(InputError, match="resolution"):
        segment_baseline(synthetic.raw, resolution_nm_zyx=(10, 10))
    with pytest.raises(InputError, match="threshold"):
        BaselineParams(threshold=1.5)


def test_real_fib25_crop(testdata):
    """FIB-25 training_sample2 crop [75:175]³ (40 bodies): measured VI 1.58, ARAND 0.09."""
    path = testdata / "em" / "neuroproof_fib_medulla_ts2_crop100.h5"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with h5py.File(path, "r") as f:
        raw = f["raw"][:]
        gt = f["gt_bodies"][:]
    result = segment_baseline(raw, resolution_nm_zyx=(10, 10, 10))
    vi, arand = _scores(gt, result.segmentation)
    assert vi < 1.9
    assert arand < 0.2
    vi_one, _ = _scores(gt, np.ones_like(gt))  # 2.66: one body fills half the crop
    assert vi < vi_one - 0.7
