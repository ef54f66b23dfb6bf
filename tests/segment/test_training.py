"""FFN training: centre sampling, examples, augmentation, recurrent moves, the loop, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.checkpoints import latest_checkpoint
from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.segment.models import ConvStack3D, FFNConfig, build_model, load_model, save_model
from connectomix.segment.training import (
    TARGET_OFF,
    TARGET_ON,
    compute_partitions,
    face_moves,
    make_example,
    sample_training_centres,
    train,
    training_radius,
)
from connectomix.volume.synthetic import make_synthetic

TINY = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny convolutions: one thread is fastest, and several spin-wait badly on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def volume():
    return make_synthetic((48, 64, 64), seed=0)


@pytest.fixture(scope="module")
def cube():
    return make_synthetic((48, 48, 48), seed=0)


def _tiny_model(seed: int = 0, config: FFNConfig = TINY) -> ConvStack3D:
    torch.manual_seed(seed)
    model = build_model(config)
    assert isinstance(model, ConvStack3D)
    return model


# ---------------------------------------------------------------------------------------------------------
# centre sampling
# ---------------------------------------------------------------------------------------------------------
def test_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 5, (5, 6, 7)), np.ones((4, 4, 4), np.int64))[:19, :22, :25]
    radius = (3, 4, 2)
    for stride in (1, 3):
        parts = compute_partitions(labels, radius, stride=stride)
        assert parts.stride == stride and len(parts.coords_zyx) > 0
        for c, f in zip(parts.coords_zyx, parts.fraction, strict=True):
            cube = labels[tuple(slice(ci - ri, ci + ri + 1) for ci, ri in zip(c, radius, strict=True))]
            assert f == pytest.approx((cube == labels[tuple(c)]).mean(), abs=1e-6)
        assert np.all(labels[tuple(parts.coords_zyx.T)] != 0)


def test_sampled_centres_respect_border_nonzero_and_balance(volume):
    labels = volume.gt.copy()
    labels[:, :, :20] = 0  # some background, which is never a centre
    radius = np.asarray(training_radius(TINY))
    parts = compute_partitions(labels, radius)
    present, sizes = np.unique(parts.bin, return_counts=True)
    n = 13 * len(present)
    centres = sample_training_centres(labels, TINY, n=n, seed=3)
    assert centres.shape == (n, 3) and centres.dtype == np.int64
    assert np.all(centres >= radius) and np.all(centres < np.asarray(labels.shape) - radius)
    assert np.all(labels[tuple(centres.T)] != 0)
    # Bin of each sampled centre, looked up among the candidates.
    index = {tuple(c): b for c, b in zip(parts.coords_zyx.tolist(), parts.bin.tolist(), strict=True)}
    counts = np.bincount([index[tuple(c)] for c in centres.tolist()], minlength=len(parts.bin) + 20)
    assert len(present) >= 5
    for b, size in zip(present, sizes, strict=True):
        assert counts[b] == 13, (b, size)
    # Same seed, same centres; another seed, others.
    assert np.array_equal(centres, sample_training_centres(labels, TINY, n=n, seed=3))
    assert not np.array_equal(centres, sample_training_centres(labels, TINY, n=n, seed=4))
    # Uneven n: counts per bin differ by at most one.
    odd = sample_training_centres(labels, TINY, n=n + 5, seed=1)
    per_bin = np.bincount([index[tuple(c)] for c in odd.tolist()])[present]
    assert per_bin.max() - per_bin.min() <= 1 and per_bin.sum() == n + 5


def test_sampling_rejects_volumes_without_centres():
    with pytest.raises(InputError, match="too small"):
        sample_training_centres(np.ones((10, 30, 30), np.uint32), TINY, n=4)
    with pytest.raises(InputError, match="label 0"):
        sample_training_centres(np.zeros((20, 20, 20), np.uint32), TINY, n=4)


# ---------------------------------------------------------------------------------------------------------
# examples and augmentation
# ---------------------------------------------------------------------------------------------------------
def test_example_target_is_the_centre_object_softened(volume):
    labels = volume.gt.copy()
    labels[20:30] = 0
    centre = (24 - 5, 32, 32)
    ex = make_example(volume.raw, labels, centre, TINY, np.random.default_rng(0))
    side = 9 + 2 * 2
    assert ex.image.shape == ex.labels.shape == ex.target.shape == (side, side, side)
    assert ex.labels[side // 2, side // 2, side // 2] == ex.centre_label == labels[centre]
    inside = (ex.labels == ex.centre_label) & (ex.labels != 0)
    assert np.array_equal(ex.target, np.where(inside, TARGET_ON, TARGET_OFF).astype(np.float32))
    assert 0 < inside.mean() < 1


def test_augmentation_keeps_image_and_labels_aligned():
    shape = (20, 21, 22)
    labels = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) + 1
    raw = (labels % 251).astype(np.uint8)  # the image is a function of the label: alignment is checkable
    centre = (10, 10, 11)
    seen_flips, seen_axes = set(), set()
    for k in range(40):
        for isotropic in (False, True):
            ex = make_example(raw, labels, centre, TINY, np.random.default_rng(k), isotropic=isotropic)
            image = ex.image * TINY.image_stddev + TINY.image_mean
            np.testing.assert_allclose(image, (ex.labels % 251).astype(np.float32), atol=1e-3)
            # Reproduce the transform on the plain cut: flips first, then the transpose.
            r = training_radius(TINY)
            cut = labels[tuple(slice(c - ri, c + ri + 1) for c, ri in zip(centre, r, strict=True))]
            flips = tuple(a for a in range(3) if ex.flips_zyx[a])
            expected = np.flip(cut, flips).transpose(ex.axes) if flips else cut.transpose(ex.axes)
            assert np.array_equal(ex.labels, expected)
            assert ex.centre_label == labels[centre]
            if not isotropic:
                assert ex.axes[0] == 0  # z never swaps with anisotropic voxels
            seen_flips.add(ex.flips_zyx)
            seen_axes.add((isotropic, ex.axes))
    assert len(seen_flips) == 8
    assert (False, (0, 2, 1)) in seen_axes
    assert any(iso and axes[0] != 0 for iso, axes in seen_axes)


def test_face_moves_follow_the_face_maximum():
    logits = np.full((9, 9, 9), -3.0, np.float32)
    logits[4, 4, 6] = 5.0  # +x face (delta 2), at the face centre
    logits[2, 5, 3] = 4.0  # -z face, off-centre within the face
    logits[4, 8, 4] = 9.0  # outside the ±delta cube: ignored
    moves = face_moves(logits, (2, 2, 2))
    assert moves == [(5.0, (0, 0, 2)), (4.0, (-2, 1, -1))]


# ---------------------------------------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------------------------------------
def test_training_reduces_the_loss(cube):
    model = _tiny_model()
    # Adam: plain SGD at lr 1e-3 (Google's setting) needs far more than 60 steps to move.
    result = train(
        model, cube.raw, cube.gt, steps=60, optimizer="adam", lr=1e-3, n_centres=512, progress=False
    )
    assert result.step == 60 and len(result.losses) == 60
    assert result.fovs == 240 and result.examples >= 4
    first, last = result.losses[:10].mean(), result.losses[-10:].mean()
    assert last < 0.8 * first, (first, last)
    assert np.array_equal(result.losses, result.bce)  # no uncertainty head: the objective is the BCE


def test_resume_equals_an_uninterrupted_run(cube, tmp_path):
    kwargs = dict(batch_size=2, optimizer="adam", lr=1e-3, seed=5, n_centres=64, progress=False)
    straight = train(_tiny_model(0), cube.raw, cube.gt, steps=8, **kwargs)

    ckpt = tmp_path / "ckpt"
    first = train(
        _tiny_model(0), cube.raw, cube.gt, steps=4, checkpoint_dir=ckpt, checkpoint_every=2, **kwargs
    )
    assert first.checkpoint == ckpt / "step-00000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000002", "step-00000004"]
    # A differently initialised model: the checkpoint's weights replace its own.
    resumed = train(
        _tiny_model(1), cube.raw, cube.gt, steps=8, checkpoint_dir=ckpt, checkpoint_every=2, **kwargs
    )
    assert resumed.resumed_from == 4 and resumed.step == 8
    assert np.array_equal(resumed.losses, straight.losses)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert latest_checkpoint(ckpt) == ckpt / "step-00000008"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000006", "step-00000008"]
    # The checkpoint's weights are an ordinary model file.
    loaded = load_model(ckpt / "step-00000008" / "model.safetensors")
    assert torch.equal(loaded.conv_lom.weight, straight.model.conv_lom.weight)
    # Asking for more steps than done continues; as many as done does nothing.
    again = train(_tiny_model(2), cube.raw, cube.gt, steps=8, checkpoint_dir=ckpt, **kwargs)
    assert again.resumed_from == 8 and np.array_equal(again.losses, straight.losses)


def test_bad_checkpoints_give_clear_errors(cube, tmp_path):
    kwargs = dict(batch_size=1, n_centres=16, progress=False)
    ckpt = tmp_path / "ckpt"
    train(_tiny_model(), cube.raw, cube.gt, steps=1, checkpoint_dir=ckpt, **kwargs)
    with pytest.raises(NotFoundError, match="no such training checkpoint"):
        train(_tiny_model(), cube.raw, cube.gt, steps=2, resume=tmp_path / "missing", **kwargs)
    with pytest.raises(InputError, match="different model config"):
        other = _tiny_model(config=FFNConfig(depth=3, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2)))
        train(other, cube.raw, cube.gt, steps=2, checkpoint_dir=ckpt, **kwargs)
    with pytest.raises(InputError, match="training settings"):
        train(_tiny_model(), cube.raw, cube.gt, steps=2, checkpoint_dir=ckpt, **{**kwargs, "batch_size": 2})
    state = ckpt / "step-00000001" / "state.pt"
    state.write_bytes(b"not a torch file")
    with pytest.raises(CorruptDataError, match="unreadable"):
        train(_tiny_model(), cube.raw, cube.gt, steps=2, checkpoint_dir=ckpt, **kwargs)
    state.unlink()
    with pytest.raises(CorruptDataError, match=r"state\.pt is missing"):
        train(_tiny_model(), cube.raw, cube.gt, steps=2, checkpoint_dir=ckpt, **kwargs)
    # resume=False starts afresh and overwrites.
    fresh = train(_tiny_model(), cube.raw, cube.gt, steps=1, checkpoint_dir=ckpt, resume=False, **kwargs)
    assert fresh.resumed_from is None and (ckpt / "step-00000001" / "state.pt").is_file()


def test_bf16_training_runs(cube):
    result = train(
        _tiny_model(),
        cube.raw,
        cube.gt,
        steps=3,
        batch_size=2,
        precision="bf16",
        n_centres=16,
        progress=False,
    )
    assert np.all(np.isfinite(result.losses))
    assert next(result.model.parameters()).dtype == torch.float32


def test_fine_tune_a_loaded_model_training_only_the_head(cube, tmp_path):
    path = save_model(_tiny_model(), tmp_path / "m.safetensors")
    model = load_model(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(
        model,
        cube.raw,
        cube.gt,
        steps=3,
        batch_size=2,
        optimizer="adam",
        train_last=1,
        n_centres=16,
        progress=False,
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv_lom.weight", "conv_lom.bias"}
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    with pytest.raises(InputError, match="train_last"):
        train(model, cube.raw, cube.gt, steps=1, train_last=99, progress=False)


def test_training_input_errors(cube):
    model = _tiny_model()
    with pytest.raises(InputError, match="same"):
        train(model, cube.raw[:-1], cube.gt, steps=1)
    with pytest.raises(InputError, match="integer"):
        train(model, cube.raw, cube.gt.astype(np.float32), steps=1)
    with pytest.raises(InputError, match="optimizer"):
        train(model, cube.raw, cube.gt, steps=1, optimizer="rmsprop", n_centres=16)  # type: ignore[arg-type]
