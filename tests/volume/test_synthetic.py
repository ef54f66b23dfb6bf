"""Synthetic EM volumes: determinism, exact ground truth, EM-like intensities, anisotropy, URL access."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from connectomix.errors import InputError, UnsupportedError
from connectomix.volume import open_volume
from connectomix.volume.synthetic import make_synthetic


@pytest.fixture(scope="module")
def vol64():
    return make_synthetic((64, 64, 64), seed=7, n_mitochondria=6)


def _interfaces(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another id (both sides of every label boundary)."""
    mask = np.zeros(labels.shape, bool)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        diff = a[1:] != a[:-1]
        m[1:] |= diff
        m[:-1] |= diff
    return mask


def test_arrays_have_expected_types_and_shapes(vol64):
    assert vol64.raw.shape == vol64.gt.shape == vol64.boundary.shape == vol64.mito.shape == (64, 64, 64)
    assert vol64.raw.dtype == np.uint8
    assert vol64.gt.dtype == np.uint64
    assert vol64.boundary.dtype == np.float32
    assert vol64.mito.dtype == bool
    assert vol64.boundary.min() >= 0.0 and vol64.boundary.max() <= 1.0
    assert vol64.resolution_nm_zyx == (10.0, 10.0, 10.0)


def test_same_seed_same_arrays_and_different_seed_differs():
    a = make_synthetic((40, 40, 40), seed=11)
    b = make_synthetic((40, 40, 40), seed=11)
    c = make_synthetic((40, 40, 40), seed=12)
    assert np.array_equal(a.raw, b.raw)
    assert np.array_equal(a.gt, b.gt)
    assert np.array_equal(a.boundary, b.boundary)
    assert not np.array_equal(a.raw, c.raw)
    assert not np.array_equal(a.gt, c.gt)


def test_ids_are_consecutive_dense_and_each_one_6_connected_object(vol64):
    """Documented: no background (densely packed neuropil), ids 1..N, each id one 6-connected component."""
    gt = vol64.gt
    assert gt.min() >= 1  # no background at all
    ids = np.unique(gt)
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert len(ids) >= 5  # several neurites even in a 640 nm cube
    components = cc3d.connected_components(gt, connectivity=6)
    assert int(components.max()) == len(ids)


def test_neurites_are_packed_with_mixed_calibres():
    vol = make_synthetic((96, 96, 96), seed=2)
    sizes = np.bincount(vol.gt.ravel())[1:]
    assert len(sizes) >= 15
    # calibres vary: object sizes spread over an order of magnitude
    p10, p90 = np.percentile(sizes, [10, 90])
    assert p90 > 5 * p10
    assert sizes.max() > 3 * np.median(sizes)


def test_membranes_are_dark_and_cytoplasm_bright_like_fib25(vol64):
    boundary = _interfaces(vol64.gt)
    on = vol64.raw[boundary].mean()
    inside = vol64.raw[~boundary & ~vol64.mito].mean()
    # FIB-25: 99 on boundaries vs 134 inside
    assert 80 < on < 110
    assert 125 < inside < 165
    assert inside - on > 25
    # the boundary map is an ideal membrane map: high on interfaces, low inside
    assert vol64.boundary[boundary].mean() > 0.7
    assert vol64.boundary[~boundary].mean() < 0.3


def test_mitochondria_present_when_requested_and_darker(vol64):
    assert vol64.mito.sum() > 100
    inside = ~_interfaces(vol64.gt) & ~vol64.mito
    assert vol64.raw[vol64.mito].mean() < vol64.raw[inside].mean() - 15
    # mitochondria lie inside neurites: each mitochondrion voxel shares its id with its neighbours
    none = make_synthetic((48, 48, 48), seed=7, n_mitochondria=0)
    assert not none.mito.any()


def test_anisotropic_resolution_keeps_tubes_round_in_nm():
    """A physical cube at (40, 8, 8) nm: objects span ~5x more voxels along y/x than along z."""
    vol = make_synthetic((24, 120, 120), seed=4, resolution_nm_zyx=(40, 8, 8))
    assert vol.raw.shape == (24, 120, 120)
    assert vol.resolution_nm_zyx == (40.0, 8.0, 8.0)
    assert cc3d.connected_components(vol.gt, connectivity=6).max() == vol.gt.max()
    # labels change between neighbours far more often along z (coarse) than along x (fine)
    change_z = np.mean(vol.gt[1:] != vol.gt[:-1])
    change_x = np.mean(vol.gt[:, :, 1:] != vol.gt[:, :, :-1])
    assert change_z > 2.5 * change_x
    extents = []
    for sl in cc3d.statistics(vol.gt.astype(np.uint32))["bounding_boxes"][1:]:
        z, y, x = (s.stop - s.start for s in sl)
        if z < vol.gt.shape[0]:  # objects not clipped by the short axis
            extents.append((y + x) / 2 / z)
    assert np.median(extents) > 2.0


def test_any_shape_including_thin_slabs():
    vol = make_synthetic((3, 50, 20), seed=1)
    assert vol.raw.shape == (3, 50, 20)
    assert vol.gt.min() >= 1


def test_bad_arguments_raise_input_error():
    with pytest.raises(InputError, match="shape_zyx"):
        make_synthetic((0, 10, 10))
    with pytest.raises(InputError, match="shape_zyx"):
        make_synthetic((10, 10))
    with pytest.raises(InputError, match="resolution"):
        make_synthetic((10, 10, 10), resolution_nm_zyx=(10, -1, 10))
    with pytest.raises(InputError, match="seed"):
        make_synthetic((10, 10, 10), seed=-1)


def test_url_gives_the_same_arrays_as_make_synthetic():
    gt = open_volume("synthetic://gt?shape=32,48,64&seed=3")
    assert gt.shape == (32, 48, 64)
    assert gt.kind == "segmentation"
    expected = make_synthetic((32, 48, 64), seed=3)
    assert np.array_equal(gt.read(), expected.gt)
    raw = open_volume("synthetic://raw?shape=32,48,64&seed=3")
    assert raw.kind == "image"
    assert np.array_equal(raw.read(), expected.raw)
    assert gt.url.startswith("synthetic://gt?shape=32,48,64&seed=3")


def test_url_size_and_resolution_in_xyz_order():
    vol = open_volume("synthetic://boundary?size=24&seed=1&resolution=8,8,40")
    assert vol.shape == (24, 24, 24)
    assert vol.resolution == (40.0, 8.0, 8.0)
    assert vol.dtype == np.float32


@pytest.mark.parametrize(
    "url",
    [
        "synthetic://membranes?size=16",
        "synthetic://raw?size=0",
        "synthetic://raw?shape=16,16",
        "synthetic://raw?seed=abc",
        "synthetic://raw?size=16&colour=red",
        "synthetic://raw?resolution=8,8",
    ],
)
def test_bad_url_raises_input_error(url):
    with pytest.raises(InputError):
        open_volume(url)


def test_synthetic_is_read_only():
    with pytest.raises(UnsupportedError):
        open_volume("synthetic://raw?size=16", "r+")
