"""The disagreement probability: certain where segmentation and boundary map agree, 0.5 where they don't."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.flag import disagreement_probability


def two_bodies() -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) = (4, 4, 20): body 1 at x < 10, body 2 at x >= 10; a membrane on x = 9 and 10."""
    gt = np.ones((4, 4, 20), np.uint32)
    gt[..., 10:] = 2
    membrane = np.zeros(gt.shape, np.float32)
    membrane[..., 9:11] = 1.0
    return gt, membrane


def test_agreement_is_certain_and_errors_are_uncertain() -> None:
    gt, membrane = two_bodies()
    agree = disagreement_probability(gt, membrane)
    assert agree.dtype == np.float32 and agree.shape == gt.shape
    np.testing.assert_allclose(agree[..., 9:11], 0.0)  # boundary in both opinions
    np.testing.assert_allclose(agree[..., :7], 1.0)  # ≥ 2 voxels inside, no membrane
    np.testing.assert_allclose(agree[..., 8], 0.75)  # 1 voxel from the interface: s = 0.5

    merged = disagreement_probability(np.ones_like(gt), membrane)  # a membrane inside one segment
    np.testing.assert_allclose(merged[..., 9:11], 0.5)
    split = disagreement_probability(gt, np.zeros_like(membrane))  # an interface where no membrane is
    np.testing.assert_allclose(split[..., 9:11], 0.5)
    unassigned = disagreement_probability(np.zeros_like(gt), np.zeros_like(membrane))
    np.testing.assert_allclose(unassigned, 0.5)  # nobody's segment: the segmentation says "not inside"


def test_bad_input_is_refused() -> None:
    gt, membrane = two_bodies()
    with pytest.raises(InputError, match="shape"):
        disagreement_probability(gt, membrane[:2])
    with pytest.raises(InputError, match="float"):
        disagreement_probability(gt, (membrane * 255).astype(np.uint8))
    with pytest.raises(InputError, match="3-D"):
        disagreement_probability(gt[0], membrane[0])
    with pytest.raises(InputError, match="saturation"):
        disagreement_probability(gt, membrane, saturation_voxels=0)
