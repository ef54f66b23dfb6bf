"""Google FFN TensorFlow checkpoints → ConvStack3D: name mapping, kernel layout, errors, real-data sanity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.segment.models import FFNConfig, load_model
from connectomix.segment.tf_import import (
    import_tf_checkpoint,
    import_tf_to_safetensors,
    read_tf_checkpoint,
    tf_variable_names,
)
from connectomix.tfcheckpoint import write_tensor_bundle

CKPT = "reference/google_ffn_fib25/model.ckpt-27465036"
TINY = FFNConfig(depth=3, width=4, fov_zyx=(7, 7, 7), deltas_zyx=(2, 2, 2))


@pytest.fixture(scope="module")
def google(testdata: Path) -> Path:
    return testdata / CKPT


def _tiny_tf_weights(config: FFNConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in TensorFlow layout ([kz, ky, kx, in, out]) under Google's names."""
    rng = np.random.default_rng(seed)
    w = config.width
    shapes = {"conv0_a": (3, 3, 3, 2, w), "conv0_b": (3, 3, 3, w, w), "conv_lom": (1, 1, 1, w, 1)}
    for i in range(1, config.depth):
        shapes[f"conv{i}_a"] = shapes[f"conv{i}_b"] = (3, 3, 3, w, w)
    tensors = {"global_step": np.array(12, np.int64)}
    for layer, shape in shapes.items():
        tensors[f"seed_update/{layer}/weights"] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        tensors[f"seed_update/{layer}/biases"] = (rng.standard_normal(shape[-1]) * 0.1).astype(np.float32)
        tensors[f"seed_update/{layer}/weights/Adam"] = np.zeros(shape, np.float32)  # an optimizer slot
    return tensors


def _tf_conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TensorFlow's conv3d, SAME padding, stride 1: x [z, y, x, in], w [kz, ky, kx, in, out] → [z, y, x, out],
    ``out[z, y, x, o] = Σ w[dz, dy, dx, i, o] · x[z + dz − pz, y + dy − py, x + dx − px, i] + b[o]``."""
    kz, ky, kx = w.shape[:3]
    pad = np.pad(x, [(kz // 2,) * 2, (ky // 2,) * 2, (kx // 2,) * 2, (0, 0)])
    out = np.zeros((*x.shape[:3], w.shape[-1]), np.float64)
    Z, Y, X = x.shape[:3]
    for dz in range(kz):
        for dy in range(ky):
            for dx in range(kx):
                out += pad[dz : dz + Z, dy : dy + Y, dx : dx + X] @ w[dz, dy, dx]
    return out + b


def _tf_convstack(
    tensors: dict[str, np.ndarray], depth: int, image: np.ndarray, seed: np.ndarray
) -> np.ndarray:
    """Google's convstack_3d forward pass on (z, y, x) arrays, channels last, written from its definition."""

    def conv(name: str, x: np.ndarray) -> np.ndarray:
        return _tf_conv_same(x, tensors[f"seed_update/{name}/weights"], tensors[f"seed_update/{name}/biases"])

    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    net = np.stack([image, seed], axis=-1)  # tf.concat([input_patches, input_seed], 4)
    net = conv("conv0_b", relu(conv("conv0_a", net)))
    for i in range(1, depth):
        net = net + conv(f"conv{i}_b", relu(conv(f"conv{i}_a", relu(net))))
    return seed + conv("conv_lom", relu(net))[..., 0]


def test_google_checkpoint_imports(google: Path) -> None:
    model, summary = read_tf_checkpoint(google, FFNConfig())
    assert summary.n_parameters == 638_433 == sum(p.numel() for p in model.parameters())
    assert summary.n_tensors == 50 and summary.global_step == 27465036
    assert summary.ignored == [
        "filter_coordinates_close_to_boundary/fraction",
        "filter_out_bounds_coordinates/fraction",
        "filter_out_bounds_coordinates_1/fraction",
        "global_step",
    ]
    assert not model.training


def test_name_mapping_and_kernel_layout(tmp_path: Path) -> None:
    tensors = _tiny_tf_weights(TINY)
    prefix = write_tensor_bundle(tmp_path / "model.ckpt-12", tensors)
    model, summary = read_tf_checkpoint(f"{prefix}.index", TINY)
    state = model.state_dict()
    names = tf_variable_names(TINY)
    assert names["seed_update/conv2_b/weights"] == "residual.1.conv_b.weight"
    assert names["seed_update/conv_lom/biases"] == "conv_lom.bias"
    assert set(names.values()) == set(state)
    for tf_name, ours in names.items():
        expected = tensors[tf_name]
        if expected.ndim == 5:
            expected = expected.transpose(4, 3, 0, 1, 2)
        np.testing.assert_array_equal(state[ours].numpy(), expected)
    assert summary.global_step == 12 and len(summary.ignored) == 1 + 2 * TINY.depth + 1

    # the whole network against TensorFlow's conv semantics, on an input with no symmetry
    rng = np.random.default_rng(1)
    image = rng.standard_normal((5, 6, 7)).astype(np.float32)
    seed = rng.standard_normal((5, 6, 7)).astype(np.float32)
    expected = _tf_convstack(tensors, TINY.depth, image, seed)
    with torch.no_grad():
        got = model(torch.from_numpy(image)[None, None], torch.from_numpy(seed)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # …which a wrong spatial permutation does not match
    swapped = {k: v.transpose(2, 1, 0, 3, 4) if v.ndim == 5 else v for k, v in tensors.items()}
    assert np.abs(_tf_convstack(swapped, TINY.depth, image, seed) - got).max() > 1e-2


def test_errors(google: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"checkpoint has conv0…conv11 but depth 9 expects conv0…conv8"):
        import_tf_checkpoint(google, FFNConfig(depth=9))
    with pytest.raises(InputError, match=r"conv0_a/weights has shape \(3, 3, 3, 2, 32\), width 16 expects"):
        import_tf_checkpoint(google, FFNConfig(width=16))
    with pytest.raises(InputError, match="convstack_3d models; the config asks for arch 'inception'"):
        import_tf_checkpoint(google, FFNConfig(arch="inception"))
    tensors = _tiny_tf_weights(TINY)
    del tensors["seed_update/conv1_b/biases"], tensors["seed_update/conv_lom/weights"]
    prefix = write_tensor_bundle(tmp_path / "broken", tensors)
    with pytest.raises(
        InputError, match=r"missing model tensors seed_update/conv1_b/biases, .*conv_lom/weights"
    ):
        import_tf_checkpoint(prefix, TINY)
    with pytest.raises(InputError, match=r"conv0_a/weights has shape \(3, 3, 3, 2, 4\), width 8 expects"):
        import_tf_checkpoint(
            write_tensor_bundle(tmp_path / "tiny", _tiny_tf_weights(TINY)), FFNConfig(width=8, depth=3)
        )
    other = write_tensor_bundle(tmp_path / "other", {"dense/kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(InputError, match="not a Google FFN convstack_3d checkpoint"):
        import_tf_checkpoint(other, TINY)


def test_safetensors_round_trip(google: Path, tmp_path: Path) -> None:
    summary = import_tf_to_safetensors(google, FFNConfig(), tmp_path / "ffn.safetensors")
    assert summary.out_path == tmp_path / "ffn.safetensors" and summary.n_parameters == 638_433
    model = import_tf_checkpoint(google, FFNConfig())
    loaded = load_model(summary.out_path)
    assert loaded.config == FFNConfig()
    gen = torch.Generator().manual_seed(0)
    image, seed = torch.randn(2, 1, 1, 9, 9, 9, generator=gen)
    with torch.no_grad():
        assert torch.equal(model(image, seed), loaded(image, seed))
    from safetensors import safe_open

    with safe_open(str(summary.out_path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["source_checkpoint"] == "model.ckpt-27465036"
    assert metadata["source_global_step"] == "27465036"


# ------------------------------------------------------------------------------ real-data sanity (FIB-25)

R = 16  # half the 33³ field of view


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _one_step_iou(model: torch.nn.Module, raw: np.ndarray, gt: np.ndarray, centres: list) -> np.ndarray:
    """IoU of (sigmoid(first FFN step) > 0.5) with the centre's ground-truth body, per centre, in the FOV."""
    boxes = [tuple(slice(c - R, c + R + 1) for c in centre) for centre in centres]
    image = np.stack([(raw[box].astype(np.float32) - 128) / 33 for box in boxes])[:, None]
    seed = np.full(image.shape, _logit(0.05), np.float32)
    seed[:, 0, R, R, R] = _logit(0.95)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))  # the test machines are small and shared
    try:
        with torch.no_grad():
            pred = model(torch.from_numpy(image), torch.from_numpy(seed)).numpy()[:, 0] > 0  # prob > 0.5
    finally:
        torch.set_num_threads(threads)
    body = np.stack([gt[box] == gt[centre] for box, centre in zip(boxes, centres, strict=True)])
    return (pred & body).sum(axis=(1, 2, 3)) / (pred | body).sum(axis=(1, 2, 3))


@pytest.mark.slow
def test_one_step_on_fib25_follows_the_body(google: Path) -> None:
    import edt

    from connectomix.volume import open_volume

    raw = np.asarray(open_volume("fib25-ts2/raw"))
    gt = np.asarray(open_volume("fib25-ts2/gt"))
    # centres deep inside bodies (≥ 8 voxels from any other label, a full FOV from the border) whose body
    # fills less than half of the FOV, so that predicting "everything" scores poorly; distinct bodies
    dist = edt.edt(gt.astype(np.uint32), black_border=False, parallel=1)
    ok = np.zeros(gt.shape, bool)
    ok[R:-R, R:-R, R:-R] = True
    points = np.argwhere(ok & (dist >= 8) & (gt != 0))
    points = points[np.random.default_rng(0).choice(len(points), 3000, replace=False)]
    points = points[np.argsort(-dist[tuple(points.T)], kind="stable")]
    centres, fractions, bodies = [], [], set()
    for point in points:
        centre = tuple(int(v) for v in point)
        fraction = float((gt[tuple(slice(c - R, c + R + 1) for c in centre)] == gt[centre]).mean())
        if fraction < 0.5 and gt[centre] not in bodies:
            centres.append(centre)
            fractions.append(fraction)
            bodies.add(gt[centre])
        if len(centres) == 4:
            break
    assert len(centres) == 4

    model = import_tf_checkpoint(google, FFNConfig())
    iou = _one_step_iou(model, raw, gt, centres)
    print("centres (z, y, x):", centres, "body fraction of the FOV:", np.round(fractions, 3))
    print("correct import, IoU per centre:", np.round(iou, 3))
    assert iou.min() > 0.8 and iou.mean() > 0.85
    assert np.all(iou > np.array(fractions) + 0.3)  # far better than predicting the whole FOV

    # the classic bug, reshape instead of permute, destroys it: the test can fail
    wrong = import_tf_checkpoint(google, FFNConfig())
    with torch.no_grad():
        for param in wrong.parameters():
            if param.ndim == 5:
                param.copy_(param.permute(2, 3, 4, 1, 0).reshape(param.shape).clone())
    bad = _one_step_iou(wrong, raw, gt, centres[:2])
    print("reshaped kernels, IoU per centre:", np.round(bad, 3))
    assert bad.mean() < 0.3
