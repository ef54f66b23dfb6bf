"""Slice figures: a three-panel PNG (EM, ground truth, segmentation), written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from connectomix.errors import InputError
from connectomix.report import label_colors, slice_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def volumes():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(6, 40, 50), dtype=np.uint8)
    gt = np.repeat(np.arange(5, dtype=np.uint64), 10)[None, None, :].repeat(6, 0).repeat(40, 1)
    seg = gt.copy()
    seg[:, :20] = 0  # unlabelled part
    return raw, gt, seg


def test_writes_a_png_with_three_panels(tmp_path, volumes):
    raw, gt, seg = volumes
    out = slice_figure(raw, gt, seg, tmp_path / "slice.png", title="test")
    assert out == tmp_path / "slice.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as image:
        width, height = image.size
        assert width > 2 * height > 0  # three panels side by side
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # not blank
    assert [p.name for p in tmp_path.iterdir()] == ["slice.png"]  # no temporary file left behind


def test_chosen_slice_and_overwrite(tmp_path, volumes):
    raw, gt, seg = volumes
    path = tmp_path / "s.png"
    slice_figure(raw, gt, seg, path, z=0)
    first = path.read_bytes()
    slice_figure(raw, gt, seg, path, z=5)
    assert path.read_bytes() != first


def test_colours_are_deterministic_per_id_and_zero_is_black():
    labels = np.array([0, 1, 2, 1, 2**63 + 5], dtype=np.uint64)
    colors = label_colors(labels)
    assert colors.shape == (5, 3)
    assert np.all(colors[0] == 0)
    assert np.array_equal(colors[1], colors[3])
    assert not np.array_equal(colors[1], colors[2])
    assert np.array_equal(label_colors(labels), colors)
    assert colors[1:].min() >= 0.15


def test_shape_mismatch_raises_input_error(tmp_path, volumes):
    raw, gt, seg = volumes
    with pytest.raises(InputError, match="shape"):
        slice_figure(raw, gt[:, :10], seg, tmp_path / "x.png")
    with pytest.raises(InputError, match="shape"):
        slice_figure(raw, gt, seg[:3], tmp_path / "x.png")
    with pytest.raises(InputError, match="z must be"):
        slice_figure(raw, gt, seg, tmp_path / "x.png", z=6)
    assert not (tmp_path / "x.png").exists()
