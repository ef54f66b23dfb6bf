"""Contrastive training: augmentations, NT-Xent, determinism by seed, resuming (on a real gala crop)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from connectomix.checkpoints import latest_checkpoint
from connectomix.embed.augment import (
    Augmentation,
    flip_and_permute,
    grey_level,
    permutable_axes,
    random_shifts,
)
from connectomix.embed.cutouts import compose, mean_pool, read_sources
from connectomix.embed.model import EncoderConfig
from connectomix.embed.train import TrainingVolume, nt_xent, train_encoder
from connectomix.errors import InputError
from connectomix.volume import Box, open_volume

TINY = EncoderConfig(input_size_zyx=(9, 9, 9), downsample_zyx=(2, 2, 2), channels=(4, 8, 8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gala(testdata) -> TrainingVolume:
    raw, gt = open_volume("gala-train/raw"), open_volume("gala-train/gt")
    return TrainingVolume.prepare("gala-train", raw, gt, box=Box((0, 0, 0), (50, 100, 120)))


# ------------------------------------------------------------------------------------------ augmentation
def test_grey_level_is_segclrs_formula():
    em = np.random.default_rng(0).random((3, 4, 5, 6)).astype(np.float32)
    out = grey_level(em, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    a, b, g = rng.uniform(-0.25, 0.25, 3), rng.uniform(-0.25, 0.25, 3), np.exp2(rng.uniform(-1, 1, 3))
    for i in range(3):
        expected = np.clip(em[i] * (1 + a[i]) + b[i], 0, 1) ** g[i]
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1 and not np.allclose(out, em)


def test_flips_and_permutations_are_rigid_transforms():
    cube = np.arange(2 * 5 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5, 5).repeat(40, axis=0)
    out = flip_and_permute(cube, np.random.default_rng(1), flips=True, axes=(0, 1, 2))
    transforms = set()
    for item in out:
        found = None
        for perm, flips in itertools.product(
            itertools.permutations(range(3)), itertools.product((0, 1), repeat=3)
        ):
            t = cube[0]
            flipped = [1 + a for a in range(3) if flips[a]]
            t = np.flip(t, axis=flipped) if flipped else t
            t = t.transpose(0, *(1 + p for p in perm))
            if np.array_equal(t, item):
                found = (perm, flips)
                break
        assert found is not None
        transforms.add(found)
    assert len(transforms) > 10  # many different ones are drawn
    yx_only = flip_and_permute(cube[:8], np.random.default_rng(2), flips=False, axes=(1, 2))
    for item in yx_only:
        assert np.array_equal(item, cube[0]) or np.array_equal(item, cube[0].transpose(0, 1, 3, 2))


def test_permutable_axes_follow_the_voxel_size():
    assert permutable_axes(TINY, (10, 10, 10)) == (0, 1, 2)
    assert permutable_axes(TINY, (40, 8, 8)) == (1, 2)
    assert permutable_axes(EncoderConfig(input_size_zyx=(17, 33, 33)), (8, 8, 8)) == (1, 2)
    assert permutable_axes(EncoderConfig(downsample_zyx=(1, 4, 4)), (40, 10, 10)) == (0, 1, 2)
    shifts = random_shifts(np.random.default_rng(0), 500, 3)
    assert shifts.min() == -3 and shifts.max() == 3


def test_cutouts_pool_and_mask(gala):
    node = int(np.argmax(gala.graph.node_segment == 0))
    centre, segment = gala.graph.nodes_zyx[node : node + 1], gala.graph.node_segment_ids[node : node + 1]
    em, mask = read_sources(gala.raw, gala.labels, centre, segment, (18, 18, 18), limit=gala.limit)
    assert mask[0, 9, 9, 9] == 1  # the node lies in its segment
    config = EncoderConfig(
        input_size_zyx=(9, 9, 9), downsample_zyx=(2, 2, 2), inputs=("em", "mask", "masked_em")
    )
    x = compose(em, mask, config)
    assert x.shape == (1, 3, 9, 9, 9)
    np.testing.assert_allclose(x[0, 2], mean_pool(em * mask, (2, 2, 2))[0])
    assert np.all(x[0, 2] <= x[0, 0] + 1e-6)


# ------------------------------------------------------------------------------------------------ NT-Xent
def test_nt_xent_matches_the_definition():
    z = torch.randn(8, 5)
    loss = nt_xent(z, 0.1)
    zn = torch.nn.functional.normalize(z, dim=1).numpy().astype(np.float64)
    sim = zn @ zn.T / 0.1
    total = 0.0
    for i in range(8):
        j = (i + 4) % 8
        others = [k for k in range(8) if k != i]
        total += -sim[i, j] + np.log(np.sum(np.exp(sim[i, others])))
    assert loss.item() == pytest.approx(total / 8, rel=1e-5)
    aligned = torch.eye(4).repeat(2, 1)  # each pair identical, pairs orthogonal
    assert nt_xent(aligned, 0.1).item() < 0.01
    assert nt_xent(torch.cat([torch.eye(4), torch.eye(4).roll(1, 0)]), 0.1).item() > 5
    with pytest.raises(InputError):
        nt_xent(torch.randn(5, 3))


# ------------------------------------------------------------------------------- determinism and resuming
def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_and_resume_is_exact(gala, tmp_path: Path):
    common = {"batch_pairs": 4, "seed": 5, "progress": False, "augmentation": Augmentation()}
    full = train_encoder([gala], TINY, steps=4, checkpoint_dir=tmp_path / "a", checkpoint_every=2, **common)
    again = train_encoder([gala], TINY, steps=4, **common)
    wa, wb = _weights(full.model), _weights(again.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["step-00000002", "step-00000004"]

    first = train_encoder([gala], TINY, steps=2, checkpoint_dir=tmp_path / "b", **common)
    assert first.resumed_from is None and latest_checkpoint(tmp_path / "b").name == "step-00000002"
    resumed = train_encoder([gala], TINY, steps=4, checkpoint_dir=tmp_path / "b", **common)
    assert resumed.resumed_from == 2 and resumed.step == 4
    np.testing.assert_array_equal(resumed.losses, full.losses)
    wr = _weights(resumed.model)
    assert all(torch.equal(wa[k], wr[k]) for k in wa)

    other = train_encoder([gala], TINY, steps=1, **{**common, "seed": 6})
    first_of_full = train_encoder([gala], TINY, steps=1, **common)
    assert other.losses[0] != first_of_full.losses[0]
    with pytest.raises(InputError, match="training settings"):
        train_encoder([gala], TINY, steps=5, checkpoint_dir=tmp_path / "b", **{**common, "batch_pairs": 3})


def test_training_rejects_bad_settings(gala):
    with pytest.raises(InputError, match="batch_pairs"):
        train_encoder([gala], TINY, steps=1, batch_pairs=1, progress=False)
    with pytest.raises(InputError, match="no training volumes"):
        train_encoder([], TINY, steps=1, progress=False)
