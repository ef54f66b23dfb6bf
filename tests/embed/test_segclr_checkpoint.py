"""SegCLR TF1 checkpoints → SegCLREncoder: checked against an independent numpy model of Google's graph.

The reference below evaluates the legacy graph as TensorFlow does, on an (x, y, z, channel) array with
kernels ``[k_x, k_y, k_z, in, out]``, SAME padding (odd voxel at the end), BN with moving statistics,
dense kernels ``[in, out]``. The checkpoint is written with the tensor-bundle writer under the TF1 names;
the imported model must give the same embedding for the same tissue given as a (z, y, x) array.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from connectomix.embed.model import EncoderConfig, SegCLREncoder, load_encoder
from connectomix.embed.tf_import import (
    export_segclr_checkpoint,
    import_segclr_to_safetensors,
    read_segclr_checkpoint,
    tf_variable_names,
)
from connectomix.errors import InputError, NotFoundError
from connectomix.tfcheckpoint import write_tensor_bundle

WIDTHS = (3, 4, 4, 5)
CONFIG = EncoderConfig(input_size_zyx=(9, 11, 13), channels=WIDTHS, embedding_dim=6, projection_dim=3)
B = "base_model_0/resnet18"


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- Google's graph, in numpy
def _pad(n: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def tf_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    k = w.shape[:3]
    pads = [_pad(n, kk, stride) for n, kk in zip(x.shape[:3], k, strict=True)]
    xp = np.pad(x, [*pads, (0, 0)])
    out = [-(-n // stride) for n in x.shape[:3]]
    acc = np.zeros((*out, w.shape[-1]))
    for i, j, m in itertools.product(*(range(kk) for kk in k)):
        patch = xp[
            i : i + stride * (out[0] - 1) + 1 : stride,
            j : j + stride * (out[1] - 1) + 1 : stride,
            m : m + stride * (out[2] - 1) + 1 : stride,
        ]
        acc += patch @ w[i, j, m]
    return acc + b


def tf_maxpool(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    pads = [_pad(n, k, s) for n in x.shape[:3]]
    xp = np.pad(x, [*pads, (0, 0)], constant_values=-np.inf)
    out = [-(-n // s) for n in x.shape[:3]]
    best = np.full((*out, x.shape[-1]), -np.inf)
    for i, j, m in itertools.product(range(k), repeat=3):
        best = np.maximum(
            best,
            xp[
                i : i + s * (out[0] - 1) + 1 : s,
                j : j + s * (out[1] - 1) + 1 : s,
                m : m + s * (out[2] - 1) + 1 : s,
            ],
        )
    return best


def tf_bn(x: np.ndarray, t: dict[str, np.ndarray], scope: str) -> np.ndarray:
    g, b, m, v = (t[f"{scope}/{n}"] for n in ("gamma", "beta", "moving_mean", "moving_variance"))
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def google_graph(t: dict[str, np.ndarray], x_xyzc: np.ndarray, projection: bool = False) -> np.ndarray:
    x = tf_conv(x_xyzc, t[f"{B}/stage_1/conv1/kernel"], t[f"{B}/stage_1/conv1/bias"], 2)
    x = tf_maxpool(tf_bn(x, t, f"{B}/stage_1/bn1"))
    for s in range(4):
        for letter in "ab":
            scope = f"{B}/stage_{s + 2}/block_{letter}"
            stride = 2 if (s > 0 and letter == "a") else 1
            y = x
            for j, st in enumerate((stride, 1)):
                y = tf_conv(y, t[f"{scope}/conv_{j}/kernel"], t[f"{scope}/conv_{j}/bias"], st)
                y = tf_bn(relu(y), t, f"{scope}/bn_{j}")
            if letter == "a":
                short = tf_conv(
                    x, t[f"{scope}/shortcut_conv/kernel"], t[f"{scope}/shortcut_conv/bias"], stride
                )
                short = tf_bn(short, t, f"{scope}/shortcut_bn")
            else:
                short = x
            x = relu(y + short)
    h = x.mean(axis=(0, 1, 2))
    heads = ["bottleneck_head_0", *(["projection_head_0_0"] if projection else [])]
    for head in heads:
        for i in range(3):
            h = tf_bn(h @ t[f"{head}/nl_{i}/dense/kernel"], t, f"{head}/nl_{i}/nl_{i}_bn")
            if i < 2:
                h = relu(h)
    return h


def google_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in TensorFlow layouts under the legacy names, plus the extras a real run holds."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {"global_step": np.array(4242, np.int64)}

    def conv(scope: str, k: int, cin: int, cout: int) -> None:
        tensors[f"{scope}/kernel"] = (rng.standard_normal((k, k, k, cin, cout)) / np.sqrt(k**3 * cin)).astype(
            np.float32
        )
        tensors[f"{scope}/bias"] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        tensors[f"{scope}/kernel/Momentum"] = np.zeros((k, k, k, cin, cout), np.float32)

    def bn(scope: str, n: int, renorm: bool = False) -> None:
        tensors[f"{scope}/gamma"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        tensors[f"{scope}/beta"] = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        tensors[f"{scope}/moving_mean"] = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        tensors[f"{scope}/moving_variance"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
        if renorm:
            tensors[f"{scope}/renorm_mean"] = np.zeros(n, np.float32)
            tensors[f"{scope}/renorm_stddev"] = np.ones(n, np.float32)

    conv(f"{B}/stage_1/conv1", 7, 1, WIDTHS[0])
    bn(f"{B}/stage_1/bn1", WIDTHS[0])
    width = WIDTHS[0]
    for s, out in enumerate(WIDTHS):
        for letter in "ab":
            scope = f"{B}/stage_{s + 2}/block_{letter}"
            conv(f"{scope}/conv_0", 3, width if letter == "a" else out, out)
            conv(f"{scope}/conv_1", 3, out, out)
            bn(f"{scope}/bn_0", out, renorm=True)
            bn(f"{scope}/bn_1", out, renorm=True)
            if letter == "a":
                conv(f"{scope}/shortcut_conv", 1, width, out)
                bn(f"{scope}/shortcut_bn", out, renorm=True)
        width = out
    for head, dims in (("bottleneck_head_0", (5, 5, 5, 6)), ("projection_head_0_0", (6, 6, 6, 3))):
        for i in range(3):
            tensors[f"{head}/nl_{i}/dense/kernel"] = rng.standard_normal((dims[i], dims[i + 1])).astype(
                np.float32
            )
            bn(f"{head}/nl_{i}/nl_{i}_bn", dims[i + 1])
    return tensors


# --------------------------------------------------------------------------------------------- tests
@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    tensors = google_tensors()
    return write_tensor_bundle(tmp_path / "model.ckpt-4242", tensors), tensors


def test_imported_model_computes_googles_graph(checkpoint):
    prefix, tensors = checkpoint
    model, summary = read_segclr_checkpoint(prefix)
    assert summary.config.channels == WIDTHS and summary.config.embedding_dim == 6
    assert summary.config.projection_dim == 3 and summary.has_projection
    assert summary.global_step == 4242
    assert "global_step" in summary.ignored
    assert any(n.endswith("renorm_mean") for n in summary.ignored)
    assert any(n.endswith("/Momentum") for n in summary.ignored)
    rng = np.random.default_rng(5)
    tissue_zyx = rng.random((2, 9, 11, 13)).astype(np.float32)
    with torch.inference_mode():
        x = torch.from_numpy(tissue_zyx[:, None])
        ours = model(x).numpy()
        ours_projection = model.project(model(x)).numpy()
    for b in range(2):
        tissue_xyz = tissue_zyx[b].transpose(2, 1, 0)[..., None]  # Google's (x, y, z, channel) cutout
        np.testing.assert_allclose(ours[b], google_graph(tensors, tissue_xyz), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(
            ours_projection[b], google_graph(tensors, tissue_xyz, projection=True), rtol=2e-4, atol=2e-4
        )


def test_kernel_axes_are_transposed_not_flipped(tmp_path: Path):
    """A stem kernel with one tap at k_x = +1 (TF layout) shifts along the last (x) axis of our arrays."""
    tensors = google_tensors()
    kernel = np.zeros_like(tensors[f"{B}/stage_1/conv1/kernel"])
    kernel[4, 3, 3, 0, :] = 1.0  # centre is (3, 3, 3); +1 along Google's first axis, x
    tensors[f"{B}/stage_1/conv1/kernel"] = kernel
    tensors[f"{B}/stage_1/conv1/bias"][:] = 0
    model, _ = read_segclr_checkpoint(write_tensor_bundle(tmp_path / "shift", tensors))
    x = torch.zeros(1, 1, 9, 11, 13)
    x[0, 0, 4, 4, 7] = 1.0  # (z, y, x)
    with torch.inference_mode():
        out = model.backbone.stem.conv(x)[0, 0]
    # stride 2, SAME pad 3 on each side of x (13 → 7): out[z', y', x'] reads x[2x' - 3 + 4] → x' = 3
    assert out.nonzero().tolist() == [[2, 2, 3]]


def test_export_import_round_trip_and_safetensors(tmp_path: Path, checkpoint):
    prefix, _ = checkpoint
    model, _ = read_segclr_checkpoint(prefix)
    again_prefix = export_segclr_checkpoint(model, tmp_path / "again" / "model.ckpt-7", global_step=7)
    again, summary = read_segclr_checkpoint(again_prefix)
    assert summary.global_step == 7 and summary.ignored == ["global_step"]
    x = torch.rand(3, 1, 9, 11, 13)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    result = import_segclr_to_safetensors(prefix, tmp_path / "enc.safetensors", config=summary.config)
    loaded = load_encoder(result.out_path)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    assert set(tf_variable_names(CONFIG)) <= set(google_tensors())


def test_inference_export_without_projection_head(tmp_path: Path):
    tensors = {k: v for k, v in google_tensors().items() if not k.startswith("projection_head")}
    model, summary = read_segclr_checkpoint(write_tensor_bundle(tmp_path / "infer", tensors))
    assert not summary.has_projection
    assert model(torch.rand(1, 1, 9, 11, 13)).shape == (1, 6)


def test_clear_errors(tmp_path: Path):
    tensors = google_tensors()
    missing = dict(tensors)
    del missing[f"{B}/stage_3/block_b/bn_1/moving_variance"]
    with pytest.raises(InputError, match="stage_3/block_b/bn_1/moving_variance"):
        read_segclr_checkpoint(write_tensor_bundle(tmp_path / "missing", missing))
    bad = dict(tensors)
    bad[f"{B}/stage_4/block_b/conv_1/kernel"] = np.zeros((3, 3, 3, 4, 5), np.float32)
    with pytest.raises(InputError, match=r"stage_4/block_b/conv_1/kernel has shape \(3, 3, 3, 4, 5\)"):
        read_segclr_checkpoint(write_tensor_bundle(tmp_path / "bad", bad))
    with pytest.raises(InputError, match="not a SegCLR"):
        read_segclr_checkpoint(
            write_tensor_bundle(tmp_path / "ffn", {"seed_update/conv0_a/weights": np.zeros(3, np.float32)})
        )
    with pytest.raises(InputError, match="does not match the config"):
        read_segclr_checkpoint(
            write_tensor_bundle(tmp_path / "ok", tensors), config=EncoderConfig(channels=(3, 4, 4, 6))
        )
    with pytest.raises(NotFoundError):
        read_segclr_checkpoint(tmp_path / "nothing-here")


def test_full_size_names_cover_the_model():
    names = tf_variable_names(EncoderConfig())
    assert names[f"{B}/stage_5/block_a/shortcut_conv/kernel"] == "backbone.stages.3.0.shortcut_conv.weight"
    assert names["bottleneck_head_0/nl_2/nl_2_bn/moving_variance"] == "head.layers.2.bn.running_var"
    state = SegCLREncoder(EncoderConfig()).state_dict()
    assert set(names.values()) == {k for k in state if not k.endswith("num_batches_tracked")}
