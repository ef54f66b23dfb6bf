"""Per-voxel entropy, the FFN quantisation, unexplored voxels, and the streaming top-fraction threshold."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.flag import (
    TopFraction,
    binary_entropy,
    dequantize_probability,
    entropy_map,
    normalize_uncertainty,
)
from connectomix.segment.canvas import quantize_probability


def test_binary_entropy_values():
    p = np.array([0.0, 1.0, 0.5, 0.11, 0.89, np.nan], np.float32)
    h = binary_entropy(p)
    assert h.dtype == np.float32
    assert h[0] == 0.0 and h[1] == 0.0  # exactly: a certain voxel is never hot
    assert h[2] == pytest.approx(1.0)
    assert h[3] == pytest.approx(0.4999, abs=1e-3) and h[4] == pytest.approx(h[3], abs=1e-6)
    assert np.isnan(h[5])


def test_dequantize_inverts_google_quantisation_within_a_bin():
    p = np.linspace(0, 1, 10001, dtype=np.float32)
    q = quantize_probability(p)
    back = dequantize_probability(q)
    assert np.abs(back - p).max() <= 0.5 / 254 + 1e-6
    assert np.isnan(dequantize_probability(np.zeros(3, np.uint8))).all()
    with pytest.raises(InputError, match="uint8"):
        dequantize_probability(np.zeros(3, np.uint16))


def test_uint8_and_float_maps_give_the_same_entropy():
    rng = np.random.default_rng(0)
    q = rng.integers(1, 256, size=(8, 9, 10)).astype(np.uint8)
    seg = np.ones(q.shape, np.uint64)
    from_uint8 = entropy_map(seg, q)
    from_float = entropy_map(seg, dequantize_probability(q))
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)


def test_unexplored_voxels_are_maximal_only_where_unassigned():
    seg = np.array([[[0, 0, 5, 5]]], np.uint64)
    prob = np.array([[[0, 255, 0, 128]]], np.uint8)  # unexplored, certain, unexplored, p≈0.5
    ent = entropy_map(seg, prob)
    np.testing.assert_allclose(ent.ravel(), [1.0, 0.0, 0.0, 1.0], atol=1e-4)
    ent = entropy_map(seg, np.array([[[np.nan, 1.0, np.nan, 0.5]]], np.float32))
    np.testing.assert_allclose(ent.ravel(), [1.0, 0.0, 0.0, 1.0], atol=1e-6)


def test_uncertainty_is_monotone_and_combines_with_probability_by_maximum():
    lv = np.array([-20.0, -2.0, 0.0, 3.0, np.nan], np.float32)
    u = normalize_uncertainty(lv)
    assert np.all(np.diff(u[:4]) > 0) and u[2] == pytest.approx(0.5) and np.isnan(u[4])
    seg = np.array([[[1, 1, 1, 1, 0]]], np.uint64)
    prob = np.array([[[0.5, 1.0, 1.0, 1.0, 1.0]]], np.float32)
    both = entropy_map(seg, prob, lv.reshape(seg.shape))
    # the last voxel: explored and certain by the probability map, so not "never explored"
    np.testing.assert_allclose(both.ravel(), [1.0, u[1], 0.5, u[3], 0.0], atol=1e-5)
    only_unc = entropy_map(seg, None, lv.reshape(seg.shape))
    np.testing.assert_allclose(only_unc.ravel()[:4], u[:4])


@pytest.mark.parametrize(
    ("prob", "fragment"),
    [
        (np.full((1, 1, 4), 1.5, np.float32), "must lie in \\[0, 1\\]"),
        (np.ones((1, 1, 4), np.int32), "uint8 \\(FFN quantisation"),
        (np.ones((1, 1, 3), np.float32), "does not match segmentation shape"),
    ],
)
def test_bad_maps_raise_input_error(prob, fragment):
    with pytest.raises(InputError, match=fragment):
        entropy_map(np.ones((1, 1, 4), np.uint64), prob)


def test_entropy_map_needs_a_map():
    with pytest.raises(InputError, match="probability map or an uncertainty map"):
        entropy_map(np.ones((2, 2, 2), np.uint64))
    with pytest.raises(InputError, match="log-variance"):
        entropy_map(np.ones((2, 2, 2), np.uint64), None, np.ones((2, 2, 2), np.uint8))


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.2, 1.0])
def test_top_fraction_fed_in_chunks_is_exact(fraction):
    rng = np.random.default_rng(1)
    values = rng.random(50_000).astype(np.float32)
    values[:5000] = np.round(values[:5000], 2)  # ties
    top = TopFraction(fraction, values.size)
    for part in np.array_split(values, 37):
        top.add(part)
    k = int(np.ceil(fraction * values.size))
    assert top.threshold() == np.sort(values)[::-1][k - 1]
    assert (values >= top.threshold()).sum() >= k


def test_top_fraction_rejects_bad_fractions():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(InputError, match="top fraction"):
            TopFraction(bad, 10)
