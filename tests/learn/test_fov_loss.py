"""Held-out per-FOV loss (connectomix.learn.fov_loss) on a synthetic EM volume with exact labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.learn.continual import ContinualLearner
from connectomix.learn.fov_loss import fov_loss
from connectomix.learn.lora import apply_adapter, merge_and_remove_lora
from connectomix.segment.models import FFNConfig, FFNModel, build_model

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), image_mean=128, image_stddev=30)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patches(small_config, small_gt_patches):
    assert small_config == CONFIG
    return small_gt_patches


def base_model(seed: int = 0) -> FFNModel:
    torch.manual_seed(seed)
    return build_model(CONFIG).eval()


def test_same_seed_same_examples_and_batching_does_not_change_the_loss(patches) -> None:
    model = base_model()
    one = fov_loss(model, patches, examples_per_patch=2, max_fovs_per_example=3, batch_size=1)
    again = fov_loss(model, patches, examples_per_patch=2, max_fovs_per_example=3, batch_size=1)
    batched = fov_loss(model, patches, examples_per_patch=2, max_fovs_per_example=3, batch_size=5)
    other_seed = fov_loss(model, patches, examples_per_patch=2, max_fovs_per_example=3, seed=9)
    assert one == again
    assert one.examples == 12 and 1.0 <= one.fovs_per_example <= 3.0 and one.fovs == batched.fovs
    assert batched.loss == pytest.approx(one.loss, rel=1e-5)
    assert other_seed.loss != one.loss
    # a soft-target cross-entropy can never go below the entropy of the 0.95 / 0.05 targets
    floor = -(0.95 * np.log(0.95) + 0.05 * np.log(0.05))
    assert one.loss > floor
    assert not model.training


def test_a_fit_on_the_patches_lowers_their_loss_and_a_broken_model_raises_it(patches) -> None:
    base = base_model()
    before = fov_loss(base, patches, examples_per_patch=3, max_fovs_per_example=2)
    fit = ContinualLearner(base, seed=7, lr=3e-3, batch_size=2, max_fovs_per_example=2).fit(patches, epochs=3)
    fitted = base_model()
    apply_adapter(fitted, fit.adapter)
    merge_and_remove_lora(fitted)
    after = fov_loss(fitted, patches, examples_per_patch=3, max_fovs_per_example=2)
    assert after.loss < before.loss

    broken = base_model()
    with torch.no_grad():  # the output layer says "inside" everywhere, whatever the image
        broken.conv_lom.weight.zero_()
        broken.conv_lom.bias.fill_(6.0)
    assert fov_loss(broken, patches, examples_per_patch=3, max_fovs_per_example=2).loss > 2 * before.loss


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"examples_per_patch": 0}, "examples_per_patch must be an integer >= 1"),
        ({"max_fovs_per_example": 1.5}, "max_fovs_per_example must be an integer >= 1"),
        ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(patches, kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        fov_loss(base_model(), patches, **kwargs)


def test_bad_inputs(patches) -> None:
    with pytest.raises(InputError, match="at least one patch"):
        fov_loss(base_model(), [])
    with pytest.raises(InputError, match="Patch objects"):
        fov_loss(base_model(), [np.zeros((3, 3, 3))])  # type: ignore[list-item]
    with pytest.raises(InputError, match="needs an FFNModel"):
        fov_loss(torch.nn.Conv3d(1, 1, 1), patches)  # type: ignore[arg-type]


def test_uniform_centre_sampling_fits_deterministically_and_bad_values_are_refused(patches) -> None:
    base = base_model()
    fits = [
        ContinualLearner(base, seed=3, lr=3e-3, batch_size=2, centre_sampling=sampling).fit(patches, epochs=1)
        for sampling in ("uniform", "uniform", "balanced")
    ]
    tensors = [f.adapter.tensors for f in fits]
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert any(not torch.equal(tensors[0][k], tensors[2][k]) for k in tensors[0])
    with pytest.raises(InputError, match="centre_sampling must be 'balanced' or 'uniform'"):
        ContinualLearner(base, centre_sampling="random")
