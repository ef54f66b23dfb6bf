"""The continual learner, its patches and its replay buffer, on a synthetic EM volume with exact labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.learn.continual import ContinualLearner, default_lora_config
from connectomix.learn.lora import LoRAConv3d
from connectomix.learn.patches import Patch, box_inside, patch_shape
from connectomix.learn.replay import ReplayBuffer, confident_patches, ground_truth_patches
from connectomix.segment.models import FFNConfig, FFNModel, build_model
from connectomix.segment.training import _loss, _Stream, make_example
from connectomix.volume.box import Box
from connectomix.volume.synthetic import make_synthetic

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), image_mean=128, image_stddev=30)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def volume():
    return make_synthetic((40, 64, 64), seed=5, resolution_nm_zyx=(20.0, 20.0, 20.0))


def base_model(seed: int = 0) -> FFNModel:
    torch.manual_seed(seed)
    return build_model(CONFIG).eval()


def adapter_tensors(learner: ContinualLearner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.adapter.tensors.items()}


def test_patch_shape_and_box_inside() -> None:
    assert patch_shape(CONFIG) == (9 + 4 + 32,) * 3
    bounds = Box((0, 0, 0), (40, 64, 64))
    box = box_inside((1, 63, 30), (20, 20, 20), bounds)
    assert box == Box((0, 44, 20), (20, 64, 40))  # shifted inside, not shrunk
    with pytest.raises(InputError, match="does not fit"):
        box_inside((0, 0, 0), (50, 20, 20), bounds)


def test_patch_validation(volume) -> None:
    raw, gt = volume.raw[:20, :20, :20], volume.gt[:20, :20, :20]
    box = Box.from_shape((20, 20, 20))
    with pytest.raises(InputError, match="nonzero centre id"):
        Patch(raw, gt, (0,), box)
    with pytest.raises(InputError, match="one shape"):
        Patch(raw, gt[:10], (1,), box)
    with pytest.raises(InputError, match="source"):
        Patch(raw, gt, (int(gt[10, 10, 10]),), box, source="guess")  # type: ignore[arg-type]


def test_ground_truth_patches_centre_on_real_segments(volume) -> None:
    patches = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=5, seed=1, shape_zyx=(24, 32, 32))
    assert len(patches) == 5
    for patch in patches:
        assert patch.source == "ground-truth" and patch.raw.shape == (24, 32, 32)
        np.testing.assert_array_equal(patch.labels, volume.gt[patch.box.to_slices()])
        assert patch.centre_mask(CONFIG).any()
    again = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=5, seed=1, shape_zyx=(24, 32, 32))
    assert [p.box for p in again] == [p.box for p in patches]


def test_confident_patches_skip_uncertain_boxes_and_leave_flagged_places_unknown(volume) -> None:
    seg = volume.gt
    prob = np.full(seg.shape, 250, np.uint8)  # confident everywhere …
    prob[:, :32, :32] = 128  # … except one quadrant at p = 0.5
    shape = (16, 16, 16)
    patches = confident_patches(volume.raw, seg, prob, CONFIG, n=20, seed=0, shape_zyx=shape)
    assert len(patches) == 20
    uncertain = Box((0, 0, 0), (40, 32, 32))
    for patch in patches:
        assert patch.source == "confident"
        # at most a fifth of a box may be uncertain, and without flagged places every label is kept
        assert patch.box.intersect(uncertain).size <= 0.2 * patch.box.size
        np.testing.assert_array_equal(patch.labels, seg[patch.box.to_slices()])
        assert patch.centre_mask(CONFIG).any()
    point = (20, 48, 48)
    near = confident_patches(
        volume.raw, seg, prob, CONFIG, n=20, seed=0, shape_zyx=shape, avoid_zyx=[point], avoid_radius=4
    )
    cube = Box((16, 44, 44), (25, 53, 53))  # the 4-voxel neighbourhood of the flagged point
    assert any(p.box.contains_point(point) for p in near)  # a box holding a flagged place is still used …
    for patch in near:
        overlap = patch.box.intersect(cube)
        if overlap.size:  # … with the place's neighbourhood left unknown, the rest as segmented
            assert not patch.labels[overlap.to_slices(patch.box.start)].any()
        kept = patch.labels != 0
        np.testing.assert_array_equal(patch.labels[kept], seg[patch.box.to_slices()][kept])
    with pytest.raises(InputError, match="avoid_radius"):
        confident_patches(volume.raw, seg, prob, CONFIG, n=1, avoid_radius=-1)


def test_confident_patches_survive_flagged_places_as_dense_as_fib25(volume) -> None:
    # FIB-25's region A of the loop has one flagged place per ~6,000 voxels; at that density the default
    # radius still leaves boxes with 30 % of their labels, where a 16-voxel radius left none.
    seg = volume.gt
    prob = np.full(seg.shape, 250, np.uint8)
    rng = np.random.default_rng(3)
    points = rng.integers(0, seg.shape, size=(seg.size // 6000, 3))
    shape = (24, 32, 32)
    dense = confident_patches(volume.raw, seg, prob, CONFIG, n=10, seed=0, shape_zyx=shape, avoid_zyx=points)
    assert len(dense) == 10
    assert all(p.info["known_fraction"] >= 0.3 for p in dense)
    wide = confident_patches(
        volume.raw, seg, prob, CONFIG, n=10, seed=0, shape_zyx=shape, avoid_zyx=points, avoid_radius=16
    )
    assert wide == []


def test_replay_buffer_is_a_seeded_reservoir(volume) -> None:
    patches = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=30, seed=2, shape_zyx=(16, 16, 16))
    buffer = ReplayBuffer(capacity=10, seed=3)
    buffer.extend(patches)
    assert len(buffer) == 10 and buffer.seen == 30
    assert buffer.counts() == {"ground-truth": 10}
    twin = ReplayBuffer(capacity=10, seed=3)
    twin.extend(patches)
    assert [p.box for p in twin.patches] == [p.box for p in buffer.patches]
    # a reservoir keeps later patches too, not only the first ten
    assert any(p is q for p in buffer.patches for q in patches[10:])
    sample = buffer.sample(25, np.random.default_rng(0))
    assert len(sample) == 25 and all(any(s is p for p in buffer.patches) for s in sample)
    with pytest.raises(InputError):
        ReplayBuffer(capacity=0)


def test_default_lora_config_adapts_the_last_modules() -> None:
    model = base_model()
    config = default_lora_config(model, last=1, rank=2)
    assert config.rank == 2 and config.targets and all("conv" in t or "out" in t for t in config.targets)
    with pytest.raises(InputError, match="last must be"):
        default_lora_config(model, last=99)


def test_fit_is_deterministic_and_lowers_the_loss_on_its_patches(volume) -> None:
    patches = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=6, seed=4, shape_zyx=(24, 32, 32))
    base = base_model()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    first = ContinualLearner(base, seed=7, lr=3e-3, batch_size=2, max_fovs_per_example=2)
    fit = first.fit(patches, epochs=3)
    second = ContinualLearner(base, seed=7, lr=3e-3, batch_size=2, max_fovs_per_example=2)
    second.fit(patches, epochs=3)
    other = ContinualLearner(base, seed=8, lr=3e-3, batch_size=2, max_fovs_per_example=2)
    other.fit(patches, epochs=3)

    a, b, c = adapter_tensors(first), adapter_tensors(second), adapter_tensors(other)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: bit-identical adapter
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed: another adapter
    assert fit.steps > 0 and fit.examples == 18 and fit.replay_examples == 0 and fit.fovs >= fit.steps
    # the base is untouched and the learner's model has LoRA layers on the chosen convolutions only
    assert all(torch.equal(base_state[k], v) for k, v in base.state_dict().items())
    assert any(isinstance(m, LoRAConv3d) for m in first.model.modules())

    # the adapter fits its patches: lower loss than the base on fixed examples drawn from them
    def loss_of(model: FFNModel) -> float:
        rng = np.random.default_rng(0)
        total = 0.0
        for patch in patches:
            centres = np.argwhere(patch.centre_mask(CONFIG))
            for centre in centres[:: max(1, len(centres) // 4)][:4]:
                example = make_example(patch.raw, patch.labels, centre, CONFIG, rng, augment=False)
                stream = _Stream.start(0, example)
                assert stream.next_offset(CONFIG, 1) == (0, 0, 0)
                window = stream.window(CONFIG)
                image = torch.from_numpy(example.image[window][None, None])
                seed = torch.from_numpy(stream.canvas[window][None, None])
                target = torch.from_numpy(example.target[window][None, None])
                with torch.no_grad():
                    logits, log_var = model.predict(image, seed)
                    total += float(_loss(model, logits, log_var, target)[0])
        return total

    assert loss_of(first.model) < loss_of(base)


def test_replay_mixing_and_continuing_from_an_adapter(volume) -> None:
    corrections = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=4, seed=5, shape_zyx=(24, 32, 32))
    replay = ReplayBuffer(seed=0)
    replay.extend(ground_truth_patches(volume.raw, volume.gt, CONFIG, n=8, seed=6, shape_zyx=(24, 32, 32)))
    learner = ContinualLearner(base_model(), replay=replay, replay_fraction=0.5, batch_size=2, seed=1)
    fit = learner.fit(corrections, epochs=2, examples_per_patch=2)
    assert fit.examples == 16 and fit.replay_examples == 16  # f / (1 - f) = 1 replay per correction
    assert learner.fits == 1
    resumed = ContinualLearner(base_model(), adapter=fit.adapter, seed=1)
    np.testing.assert_array_equal(
        resumed.adapter.tensors[next(iter(fit.adapter.tensors))].numpy(),
        fit.adapter.tensors[next(iter(fit.adapter.tensors))].numpy(),
    )


def test_restore_continues_from_a_given_adapter_or_the_start(volume) -> None:
    patches = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=4, seed=5, shape_zyx=(24, 32, 32))
    learner = ContinualLearner(base_model(), lr=3e-3, batch_size=2, max_fovs_per_example=2, seed=2)
    start = adapter_tensors(learner)
    first = learner.fit(patches, epochs=1).adapter
    learner.fit(patches, epochs=1)
    assert any(not torch.equal(learner.adapter.tensors[k], first.tensors[k]) for k in start)
    learner.restore(first)  # a rejected second fit: go back to the first
    assert all(torch.equal(learner.adapter.tensors[k], first.tensors[k]) for k in start)
    learner.restore()  # nothing promoted yet: back to the starting state, whose outputs are the base's
    assert all(torch.equal(learner.adapter.tensors[k], start[k]) for k in start)
    image = torch.from_numpy(((volume.raw[:9, :9, :9] - 128.0) / 30.0).astype(np.float32))[None, None]
    seed = torch.zeros_like(image)
    with torch.no_grad():
        torch.testing.assert_close(learner.model(image, seed), base_model()(image, seed), rtol=0, atol=0)
    other = ContinualLearner(base_model(), default_lora_config(base_model(), last=1, rank=2), seed=2)
    with pytest.raises(InputError, match="another LoRA config"):
        learner.restore(other.adapter)


def test_bad_arguments_raise_one_line_errors(volume) -> None:
    base = base_model()
    with pytest.raises(InputError, match="replay_fraction"):
        ContinualLearner(base, replay_fraction=1.0)
    with pytest.raises(InputError, match="lr"):
        ContinualLearner(base, lr=-1)
    with pytest.raises(InputError, match="batch_size"):
        ContinualLearner(base, batch_size=0)
    with pytest.raises(InputError, match="FFNModel"):
        ContinualLearner(torch.nn.Conv3d(1, 1, 1))  # type: ignore[arg-type]
    learner = ContinualLearner(base)
    with pytest.raises(InputError, match="at least one patch"):
        learner.fit([])
    with pytest.raises(InputError, match="epochs"):
        learner.fit(
            ground_truth_patches(volume.raw, volume.gt, CONFIG, n=1, shape_zyx=(24, 32, 32)), epochs=0
        )
    with pytest.raises(InputError, match="Patch objects"):
        learner.fit([np.zeros((3, 3, 3))])  # type: ignore[list-item]


def test_unknown_voxels_are_left_out_of_the_loss() -> None:
    from connectomix.learn.continual import _masked_loss

    model = base_model()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 5, 5, 5, generator=g)
    target = (torch.rand(2, 1, 5, 5, 5, generator=g) > 0.5).float() * 0.9 + 0.05
    everything = np.ones((2, 5, 5, 5), bool)
    assert torch.equal(
        _masked_loss(model, logits, None, target, everything), _loss(model, logits, None, target)[0]
    )
    known = np.zeros((2, 5, 5, 5), bool)
    known[0, :2] = True
    per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = per_voxel[0, 0, :2].mean()
    assert torch.allclose(_masked_loss(model, logits, None, target, known), expected)
