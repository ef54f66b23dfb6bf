"""InceptionFFN (FFN-v2): shapes, residual-on-seed, uncertainty head and loss, model files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.segment.inception import InceptionFFN, heteroscedastic_bce
from connectomix.segment.models import FFNConfig, build_model, load_model, save_model
from connectomix.segment.training import train

CONFIG = FFNConfig(arch="inception", depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny convolutions: one thread is fastest, and several spin-wait badly on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(seed: int = 0, batch: int = 2, size: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, size, generator=g), torch.randn(
        batch, 1, size, size, size, generator=g
    )


def _model(config: FFNConfig = CONFIG) -> InceptionFFN:
    torch.manual_seed(0)
    model = build_model(config)
    assert isinstance(model, InceptionFFN)
    return model


def test_shapes_and_predict():
    model = _model()
    assert model.has_uncertainty
    image, seed = _inputs()
    with torch.no_grad():
        out = model(image, seed)
        logits, log_variance = model.predict(image, seed)
    assert out.shape == logits.shape == image.shape
    assert log_variance is not None and log_variance.shape == image.shape
    assert torch.equal(out, logits)
    # Fully convolutional: any FOV size works.
    with torch.no_grad():
        assert model(*_inputs(size=13, batch=1)).shape == (1, 1, 13, 13, 13)


def test_output_is_residual_on_the_seed():
    model = _model()
    for (
        block
    ) in model.blocks:  # blocks start as the identity, but give them weight so the test means something
        torch.nn.init.normal_(block.proj.weight, std=0.1)
    with torch.no_grad():
        model.heads.logit_head.weight.zero_()
        model.heads.logit_head.bias.zero_()
        image, seed = _inputs(1)
        assert torch.equal(model(image, seed), seed)


def test_extra_options_and_errors():
    model = _model(
        FFNConfig(
            arch="inception",
            depth=1,
            width=8,
            extra={"dilation": 2, "norm": "group", "activation": "gelu", "groups": 2},
        )
    )
    assert model.blocks[0].bd.dilation == (2, 2, 2)
    assert isinstance(model.blocks[0].norm, torch.nn.GroupNorm)
    with pytest.raises(InputError, match="norm"):
        InceptionFFN(FFNConfig(arch="inception", depth=1, width=8, extra={"norm": "batch"}))
    with pytest.raises(InputError, match="activation"):
        InceptionFFN(FFNConfig(arch="inception", depth=1, width=8, extra={"activation": "tanh"}))


def test_save_load_round_trip(tmp_path):
    config = FFNConfig(
        arch="inception", depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), extra={"dilation": 2}
    )
    model = _model(config)
    for block in model.blocks:
        torch.nn.init.normal_(block.proj.weight, std=0.1)
    path = save_model(model, tmp_path / "inception.safetensors")
    loaded = load_model(path)
    assert isinstance(loaded, InceptionFFN) and loaded.config == config
    image, seed = _inputs(2)
    with torch.no_grad():
        a, sa = model.eval().predict(image, seed)
        b, sb = loaded.predict(image, seed)
    assert torch.equal(a, b) and sa is not None and sb is not None and torch.equal(sa, sb)


def test_heteroscedastic_loss_optimum_tracks_the_cross_entropy():
    logits = torch.tensor([3.0, 0.0])
    target = torch.tensor([0.95, 0.95])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    s = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        heteroscedastic_bce(logits, s, target, reduction="none").sum().backward()
        opt.step()
    np.testing.assert_allclose(s.detach().numpy(), np.log(2 * bce.numpy()), atol=1e-3)
    assert heteroscedastic_bce(logits, torch.zeros(2), target).item() == pytest.approx(bce.mean().item())
    assert math.isfinite(heteroscedastic_bce(logits, torch.full((2,), 1e6), target).item())


def test_uncertainty_is_higher_where_the_target_is_ambiguous():
    # Bright half: one clean object (target 0.95 everywhere). Dark half: every voxel is randomly object or
    # background, so the target there is a coin flip the image cannot predict.
    rng = np.random.default_rng(0)
    shape = (24, 24, 32)
    half = shape[2] // 2
    labels = np.ones(shape, np.uint32)
    labels[:, :, half:] = rng.integers(0, 2, (shape[0], shape[1], shape[2] - half))
    raw = np.full(shape, 190.0)
    raw[:, :, half:] = 70.0
    raw = np.clip(raw + rng.normal(0, 5, shape), 0, 255).astype(np.uint8)
    model = _model(FFNConfig(arch="inception", depth=1, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2)))
    result = train(model, raw, labels, steps=60, optimizer="adam", lr=3e-3, n_centres=256, progress=False)
    assert result.losses[-10:].mean() < result.losses[:10].mean()

    image = torch.from_numpy((raw.astype(np.float32) - 128.0) / 33.0)[None, None]
    seed = torch.full_like(image, math.log(0.05 / 0.95))
    with torch.no_grad():
        _, log_variance = model.predict(image, seed)
    assert log_variance is not None
    s = log_variance[0, 0].numpy()
    clean, noisy = s[4:-4, 4:-4, 4 : half - 4].mean(), s[4:-4, 4:-4, half + 4 : -4].mean()
    assert noisy > clean + 0.5, (clean, noisy)
