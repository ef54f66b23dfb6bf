"""Shared fixtures of the learning tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny convolutions: one thread is fastest on a shared, loaded CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_config():
    """A small ConvStack3D configuration (field of view 9³, deltas 2) for learning tests."""
    from connectomix.segment.models import FFNConfig

    return FFNConfig(
        depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), image_mean=128, image_stddev=30
    )


@pytest.fixture(scope="module")
def small_gt_patches(small_config):
    """Six 24 × 32 × 32 ground-truth patches of a synthetic EM volume (20 nm voxels)."""
    from connectomix.learn.replay import ground_truth_patches
    from connectomix.volume.synthetic import make_synthetic

    volume = make_synthetic((40, 64, 64), seed=5, resolution_nm_zyx=(20.0, 20.0, 20.0))
    return ground_truth_patches(volume.raw, volume.gt, small_config, n=6, seed=4, shape_zyx=(24, 32, 32))
