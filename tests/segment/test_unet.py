"""The boundary U-Net: shapes, targets, training, tiled prediction, model files, block-wise use, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.cli import main
from connectomix.errors import InputError, NotFoundError
from connectomix.segment.blockwise import baseline_segmenter, segment_volume
from connectomix.segment.unet import (
    BoundaryUNet,
    BoundaryUNetConfig,
    balanced_bce,
    boundary_targets,
    load_boundary_model,
    model_fingerprint,
    predict_boundary,
    save_boundary_model,
    train_boundary_unet,
)
from connectomix.volume import ArrayVolume, open_volume
from connectomix.volume.synthetic import make_synthetic

TINY = BoundaryUNetConfig(features=4, levels=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions: one thread is several times faster than two here (no oversubscription)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic((32, 48, 48), seed=0)


@pytest.fixture(scope="module")
def trained(synthetic, one_thread):
    """A small U-Net trained for 60 steps on the synthetic volume, and its losses."""
    return train_boundary_unet(
        [(synthetic.raw, synthetic.gt)],
        config=BoundaryUNetConfig(features=8, levels=2),
        steps=60,
        batch_size=2,
        patch_zyx=(16, 32, 32),
        lr=3e-3,
        seed=0,
        precision="auto",  # bf16 where the CPU has it natively; emulated bf16 would take minutes here
    )


# -- network -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 7, 9), (12, 16, 20), (1, 1, 1), (17, 4, 33)])
def test_output_has_the_input_shape_for_any_size(shape):
    torch.manual_seed(0)
    model = BoundaryUNet(TINY).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, *shape))
    assert out.shape == (2, 1, *shape)
    assert torch.isfinite(out).all()


def test_anisotropic_pooling_and_config_round_trip():
    config = BoundaryUNetConfig(features=4, levels=2, pool_zyx=(1, 2, 2), normalization="fixed")
    assert config.multiple_zyx == (1, 4, 4)
    assert BoundaryUNetConfig.from_json(config.to_json()) == config
    with torch.inference_mode():
        assert BoundaryUNet(config)(torch.zeros(1, 1, 3, 10, 6)).shape == (1, 1, 3, 10, 6)
    with pytest.raises(InputError, match="pool_zyx"):
        BoundaryUNetConfig(pool_zyx=(3, 2, 2))
    with pytest.raises(InputError, match="normalization"):
        BoundaryUNetConfig(normalization="minmax")  # type: ignore[arg-type]


# -- targets and loss ----------------------------------------------------------------------------------------
def test_boundary_targets_on_a_hand_made_volume():
    labels = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 0]]], dtype=np.uint64)  # (1, 3, 4)
    expected = np.array([[[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]], dtype=bool)
    assert np.array_equal(boundary_targets(labels), expected)
    # one big object: no boundary; its border with the volume is not a boundary either
    assert not boundary_targets(np.ones((3, 4, 5), np.int32)).any()
    # a single 0 voxel in the middle, dilated once: the voxel, its 6 neighbours, then one 6-step more
    lone = np.ones((7, 7, 7), np.uint32)
    lone[3, 3, 3] = 0
    assert boundary_targets(lone).sum() == 7
    assert boundary_targets(lone, dilate=1).sum() == 25
    with pytest.raises(InputError, match="integer"):
        boundary_targets(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError, match="3-D"):
        boundary_targets(np.zeros((2, 2), np.int32))


def test_balanced_bce_weights_both_classes_equally():
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])
    logits = torch.tensor([0.0, -20.0, -20.0, -20.0])  # interior perfect, boundary at p = 0.5
    assert float(balanced_bce(logits, targets)) == pytest.approx(0.5 * np.log(2), rel=1e-4)


# -- training ------------------------------------------------------------------------------------------------
def test_training_reduces_the_loss(trained):
    _, losses = trained
    assert losses.shape == (60,) and np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()


def test_prediction_finds_the_true_boundaries(trained, synthetic):
    model, _ = trained
    prob = predict_boundary(synthetic.raw, model, precision="bf16")
    assert prob.shape == synthetic.raw.shape and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    truth = boundary_targets(synthetic.gt)
    assert prob[truth].mean() > prob[~truth].mean() + 0.3
    assert np.corrcoef(prob.ravel(), synthetic.boundary.ravel())[0, 1] > 0.5


def test_training_is_deterministic(synthetic):
    # Patches of 16³ keep the coarsest level at 4³: with native bf16 (AVX512-BF16), oneDNN's weight
    # gradients of a 3³ convolution over an axis only 2 voxels long are not bit-reproducible run to run.
    runs = [
        train_boundary_unet(
            [(synthetic.raw, synthetic.gt)],
            config=TINY,
            steps=3,
            batch_size=1,
            patch_zyx=(16, 16, 16),
            seed=5,
        )
        for _ in range(2)
    ]
    assert np.array_equal(runs[0][1], runs[1][1])
    assert model_fingerprint(runs[0][0]) == model_fingerprint(runs[1][0])
    other = train_boundary_unet(
        [(synthetic.raw, synthetic.gt)], config=TINY, steps=3, batch_size=1, patch_zyx=(16, 16, 16), seed=6
    )
    assert model_fingerprint(other[0]) != model_fingerprint(runs[0][0])


def test_training_rejects_bad_inputs(synthetic):
    raw, gt = synthetic.raw, synthetic.gt
    with pytest.raises(InputError, match="does not match"):
        train_boundary_unet([(raw, gt[:, :-1])], config=TINY, steps=1)
    with pytest.raises(InputError, match="multiple"):
        train_boundary_unet([(raw, gt)], config=TINY, steps=1, patch_zyx=(10, 16, 16))
    with pytest.raises(InputError, match="smaller than the patch"):
        train_boundary_unet([(raw, gt)], config=TINY, steps=1, patch_zyx=(64, 16, 16))
    with pytest.raises(InputError, match="no training volumes"):
        train_boundary_unet([], config=TINY, steps=1)
    with pytest.raises(InputError, match="precision"):
        train_boundary_unet([(raw, gt)], config=TINY, steps=1, patch_zyx=(8, 16, 16), precision="fp16")  # type: ignore[arg-type]


# -- tiled prediction ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::connectomix.segment.precision.EmulatedBF16Warning")
def test_tiled_prediction_matches_one_pass_without_seams(trained, synthetic):
    model, _ = trained
    raw = np.tile(synthetic.raw, (1, 2, 2))  # (32, 96, 96)
    one_pass = predict_boundary(raw, model, patch_zyx=raw.shape, precision="fp32")
    tiled = predict_boundary(raw, model, patch_zyx=(32, 64, 64), overlap_zyx=(0, 32, 32), precision="fp32")
    small = predict_boundary(raw, model, patch_zyx=(16, 48, 48), overlap_zyx=(8, 32, 32), precision="fp32")
    # away from the far faces (where tiles see mirrored context and one pass sees zero padding) and away
    # from z, where 16-voxel tiles overlapping by 8 are smaller than the receptive field
    inner = (slice(None), slice(0, 76), slice(0, 76))
    assert np.abs(tiled - one_pass)[inner].max() < 0.01
    assert np.abs(small - one_pass)[(slice(None), *inner[1:])].mean() < 0.02
    # no seams: the tiled map is as smooth across the tile step (y = 32) as anywhere else
    jump = np.abs(np.diff(tiled[:, :76, :76], axis=1)).mean(axis=(0, 2))
    assert jump[31] < 2 * np.median(jump)
    # bf16 on one small tile (an AVX2-only CPU emulates bf16, far slower than fp32)
    small_raw = raw[:16, :48, :48]
    bf16 = predict_boundary(small_raw, model, patch_zyx=small_raw.shape, precision="bf16")
    fp32 = predict_boundary(small_raw, model, patch_zyx=small_raw.shape, precision="fp32")
    assert np.abs(bf16 - fp32).max() < 0.05


def test_predict_rejects_bad_options(trained, synthetic):
    model, _ = trained
    with pytest.raises(InputError, match="smaller than patch"):
        predict_boundary(synthetic.raw, model, patch_zyx=(16, 16, 16), overlap_zyx=(16, 8, 8))
    with pytest.raises(InputError, match="precision"):
        predict_boundary(synthetic.raw, model, precision="int8")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="3-D"):
        predict_boundary(synthetic.raw[0], model)


# -- model files ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(trained, synthetic, tmp_path):
    model, _ = trained
    path = save_boundary_model(model, tmp_path / "sub" / "unet.safetensors", metadata={"note": "test"})
    loaded = load_boundary_model(path)
    assert loaded.config == model.config
    assert model_fingerprint(loaded) == model_fingerprint(model)
    raw = synthetic.raw[:16, :32, :32]
    assert np.array_equal(
        predict_boundary(raw, loaded, precision="fp32"), predict_boundary(raw, model, precision="fp32")
    )
    assert [p.name for p in path.parent.iterdir()] == ["unet.safetensors"]  # no temporary left behind


def test_load_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no such boundary model"):
        load_boundary_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="safetensors"):
        load_boundary_model(junk)
    from connectomix.segment.models import FFNConfig, build_model, save_model

    ffn = save_model(
        build_model(FFNConfig(depth=1, width=2, fov_zyx=(3, 3, 3))), tmp_path / "ffn.safetensors"
    )
    with pytest.raises(InputError, match="not a boundary U-Net"):
        load_boundary_model(ffn)


# -- block-wise and CLI --------------------------------------------------------------------------------------
def test_blockwise_fingerprint_names_the_model(trained, synthetic, tmp_path):
    model, _ = trained
    plain = baseline_segmenter()
    learned = baseline_segmenter(boundary_model=model)
    assert plain.fingerprint.startswith("baseline:") and "boundary-unet" not in plain.fingerprint
    assert model_fingerprint(model) in learned.fingerprint
    assert baseline_segmenter(boundary_model=model, precision="fp32").fingerprint != learned.fingerprint
    result = segment_volume(
        ArrayVolume(synthetic.raw, resolution=(10, 10, 10)),
        f"zarr://{tmp_path}/seg.zarr",
        learned,
        block_shape_zyx=(32, 24, 24),
        overlap_zyx=(0, 8, 8),
        progress=False,
    )
    seg = open_volume(result.out_url).read()
    assert seg.shape == synthetic.raw.shape and result.n_objects_after > 1
    with pytest.raises(InputError, match="BoundaryUNet"):
        baseline_segmenter(boundary_model=object())


def test_a_map_without_boundaries_gives_one_segment_without_warnings(recwarn):
    from connectomix.segment.baseline import segment_baseline

    raw = np.full((16, 32, 32), 150, np.uint8)
    result = segment_baseline(raw, boundary=np.zeros(raw.shape, np.float32))  # e.g. an untrained U-Net
    assert result.n_segments == 1 and np.all(result.segmentation == 1)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_train_boundary_then_segment(tmp_path, capsys):
    raw, gt = "synthetic://raw?shape=24,40,40&seed=2", "synthetic://gt?shape=24,40,40&seed=2"
    model = tmp_path / "unet.safetensors"
    code, out, err = run(
        capsys, "segment", "train-boundary", raw, gt, raw, gt, "--box", "0,0,0:40,40,20", "--box", "all",
        "--out", str(model), "--steps", "3", "--batch-size", "1", "--patch", "16,32,32", "--features", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "boundary model" in " ".join(out.split()) and model.is_file()  # rich may wrap the line
    assert load_boundary_model(model).config.features == 4
    report = tmp_path / "run.json"
    code, out, err = run(
        capsys, "segment", "run", raw, "--model", "baseline", "--boundary-model", str(model),
        "--out", f"zarr://{tmp_path}/seg.zarr", "--block", "24,40,40", "--overlap", "0,0,0",
        "--json", str(report),
    )  # fmt: skip
    assert code == 0, err
    seg = open_volume(f"zarr://{tmp_path}/seg.zarr").read()
    assert seg.shape == (24, 40, 40) and seg.max() >= 1
    assert str(model) in report.read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    raw = "synthetic://raw?shape=16,32,32"
    cases = [
        ("segment", "run", raw, "--model", "baseline", "--boundary-model",
         str(tmp_path / "missing.safetensors"), "--out", f"zarr://{tmp_path}/a.zarr"),
        ("segment", "run", raw, "--model", "ffn.safetensors", "--boundary-model", "unet.safetensors",
         "--out", f"zarr://{tmp_path}/b.zarr"),
        ("segment", "train-boundary", raw, "synthetic://gt?shape=16,32,40", "--out", str(tmp_path / "m")),
        ("segment", "train-boundary", raw, "--out", str(tmp_path / "m")),
        ("segment", "train-boundary", raw, "synthetic://gt?shape=16,32,32", "--box", "all", "--box", "all",
         "--out", str(tmp_path / "m")),
    ]  # fmt: skip
    for args in cases:
        code, _, err = run(capsys, *args)
        assert code == 1, (args, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
