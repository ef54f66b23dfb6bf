"""The learner's anchor term (connectomix.learn.continual.anchor_loss): keep what the base gets right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.learn.continual import ContinualLearner, anchor_loss
from connectomix.learn.lora import apply_adapter, merge_and_remove_lora
from connectomix.segment.models import FFNConfig, FFNModel, build_model
from connectomix.segment.training import make_example

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), image_mean=128, image_stddev=30)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patches(small_config, small_gt_patches):
    assert small_config == CONFIG
    return small_gt_patches


def base_model() -> FFNModel:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def test_anchor_loss_counts_only_known_voxels_the_base_gets_right() -> None:
    target = torch.tensor([0.95, 0.95, 0.05, 0.05]).reshape(1, 1, 1, 1, 4)
    base = torch.tensor([2.0, -1.0, -3.0, 0.5]).reshape(1, 1, 1, 1, 4)  # right, wrong, right, wrong
    logits = torch.tensor([1.0, 5.0, -1.0, 9.0]).reshape(1, 1, 1, 1, 4)
    known = np.ones((1, 1, 1, 4), dtype=bool)
    # right voxels 0 and 2: ((1 - 2)² + (-1 + 3)²) / 2
    assert float(anchor_loss(logits, base, target, known)) == pytest.approx(2.5)
    known[0, 0, 0, 2] = False
    assert float(anchor_loss(logits, base, target, known)) == pytest.approx(1.0)
    assert float(anchor_loss(base, base, target, known)) == 0.0
    known[:] = False
    nothing = anchor_loss(logits.requires_grad_(), base, target, known)
    assert float(nothing.detach()) == 0.0
    nothing.backward()  # no known voxel: zero loss, and the step still works


def _drift(model: FFNModel, base: FFNModel, patches) -> float:
    """Mean |logit - base logit| over the FOVs of a few fixed examples (first FOV, seeded centre)."""
    rng = np.random.default_rng(1)
    images, canvases = [], []
    for patch in patches:
        centre = np.array(patch.labels.shape) // 2
        example = make_example(patch.raw, patch.labels, centre, CONFIG, rng, augment=False)
        lo = (np.array(example.image.shape) - np.array(CONFIG.fov_zyx)) // 2
        window = tuple(slice(a, a + f) for a, f in zip(lo, CONFIG.fov_zyx, strict=True))
        images.append(example.image[window])
        canvas = np.full(CONFIG.fov_zyx, -2.0, dtype=np.float32)
        canvas[tuple(f // 2 for f in CONFIG.fov_zyx)] = 2.0
        canvases.append(canvas)
    image = torch.from_numpy(np.stack(images)[:, None])
    canvas = torch.from_numpy(np.stack(canvases)[:, None])
    with torch.no_grad():
        return float((model.predict(image, canvas)[0] - base.predict(image, canvas)[0]).abs().mean())


def _fitted(anchor_weight: float, patches) -> FFNModel:
    learner = ContinualLearner(base_model(), seed=7, lr=1e-2, batch_size=2, anchor_weight=anchor_weight)
    fit = learner.fit(patches, epochs=2)
    model = base_model()
    apply_adapter(model, fit.adapter)
    merge_and_remove_lora(model)
    return model.eval()


def test_a_strong_anchor_keeps_the_fitted_model_closer_to_the_base(patches) -> None:
    base = base_model()
    free, anchored = _fitted(0.0, patches), _fitted(20.0, patches)
    free_drift, anchored_drift = _drift(free, base, patches), _drift(anchored, base, patches)
    assert anchored_drift > 0  # the anchored fit still learns
    assert anchored_drift < 0.7 * free_drift


@pytest.mark.parametrize("weight", [-1.0, float("nan"), True, "1"])
def test_bad_anchor_weights_are_refused(weight) -> None:
    with pytest.raises(InputError, match="anchor_weight must be a number >= 0"):
        ContinualLearner(base_model(), anchor_weight=weight)
