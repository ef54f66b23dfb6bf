"""The SegCLR encoder: shapes (129³ → 64 with the full config), post-activation order, SAME padding, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional

from connectomix.embed.model import (
    PRESETS,
    EncoderConfig,
    PostActBlock,
    SameConv3d,
    SegCLREncoder,
    count_parameters,
    load_encoder,
    output_sizes,
    preset,
    same_padding,
    save_encoder,
)
from connectomix.errors import InputError, NotFoundError

TINY = EncoderConfig(input_size_zyx=(17, 20, 23), channels=(4, 6, 8, 10))


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d | torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


def test_full_config_embeds_a_129_cube_into_64_floats():
    config = PRESETS["full"]
    assert config.input_size_zyx == (129, 129, 129) and config.channels == (64, 128, 256, 512)
    assert output_sizes(config) == [(65,) * 3, (33,) * 3, (33,) * 3, (17,) * 3, (9,) * 3, (5,) * 3]
    torch.manual_seed(0)
    model = SegCLREncoder(config).eval()
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes[name] = tuple(output.shape)

        return hook

    hooks = [
        model.backbone.stem.register_forward_hook(record("stem")),
        model.backbone.stages[-1][1].register_forward_hook(record("s4")),
    ]
    with torch.inference_mode():
        out = model(torch.rand(1, 1, 129, 129, 129))
    for hook in hooks:
        hook.remove()
    assert out.shape == (1, 64) and torch.isfinite(out).all()
    assert shapes["stem"] == (1, 64, 33, 33, 33)
    assert shapes["s4"] == (1, 512, 5, 5, 5)
    # embedding head 512 → 512 → 512 → 64, projection 64 → 64 → 64 → 16
    assert [layer.dense.weight.shape for layer in model.head.layers] == [(512, 512), (512, 512), (64, 512)]
    assert [layer.dense.weight.shape for layer in model.projection.layers] == [(64, 64), (64, 64), (16, 64)]
    assert all(layer.dense.bias is None for layer in [*model.head.layers, *model.projection.layers])


def test_lite_config_trains_on_small_cutouts():
    config = preset("lite")
    assert config.input_size_zyx == (33, 33, 33) and config.channels == (16, 32, 64, 128)
    assert config.source_size_zyx == (132, 132, 132)
    model = SegCLREncoder(config).train()
    embedding = model(torch.rand(4, 1, 33, 33, 33))
    assert embedding.shape == (4, 64)
    assert model.project(embedding).shape == (4, 16)
    assert count_parameters(model) < count_parameters(SegCLREncoder(PRESETS["full"])) / 10


def test_every_conv_is_followed_by_relu_then_batchnorm():
    torch.manual_seed(1)
    model = SegCLREncoder(TINY).eval()
    _randomise_bn(model)
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: calls.append((name, i[0])))
        for name, module in model.backbone.named_modules()
        if not list(module.children())
    ]
    with torch.inference_mode():
        model(torch.randn(2, 1, 17, 20, 23))
    for handle in handles:
        handle.remove()
    names = [name for name, _ in calls]
    first_block = [n.split(".")[-1] for n in names if n.startswith("stages.1.0.")]
    assert first_block == [
        "conv_0",
        "relu_0",
        "bn_0",
        "conv_1",
        "relu_1",
        "bn_1",
        "shortcut_conv",
        "shortcut_bn",
        "relu",
    ]
    assert [n.split(".")[-1] for n in names if n.startswith("stages.1.1.")] == [
        "conv_0",
        "relu_0",
        "bn_0",
        "conv_1",
        "relu_1",
        "bn_1",
        "relu",
    ]
    assert names[:3] == ["stem.conv", "stem.bn", "stem.pool"]  # no ReLU in the stem
    inputs = dict(calls)
    for name, tensor in calls:
        if name.endswith(("bn_0", "bn_1")):
            assert tensor.min() >= 0, f"{name} sees negative inputs: it does not follow a ReLU"
    assert inputs["stem.bn"].min() < 0  # the stem's BN follows the conv directly
    assert count_parameters(model) > 0


def test_block_shortcut_and_residual_relu():
    block = PostActBlock(3, 5, stride=2, projection=True).eval()
    _randomise_bn(block)
    x = torch.randn(1, 3, 7, 8, 9)
    with torch.inference_mode():
        main = block.bn_1(torch.relu(block.conv_1(block.bn_0(torch.relu(block.conv_0(x))))))
        expected = torch.relu(main + block.shortcut_bn(block.shortcut_conv(x)))
        assert torch.allclose(block(x), expected)
    assert block(x).shape == (1, 5, 4, 4, 5)
    with pytest.raises(InputError):
        PostActBlock(3, 5, stride=1, projection=False)


def test_same_padding_matches_tensorflow():
    assert same_padding(129, 7, 2) == (3, 3)
    assert same_padding(64, 3, 2) == (0, 1)  # TensorFlow puts the odd voxel at the end
    assert same_padding(65, 3, 1) == (1, 1)
    assert same_padding(5, 1, 2) == (0, 0)
    conv = SameConv3d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 9, 10)
    explicit = functional.conv3d(functional.pad(x, (0, 1, 1, 1, 0, 1)), conv.weight, conv.bias, 2)
    assert torch.allclose(conv(x), explicit, atol=1e-6)
    assert conv(x).shape == (1, 3, 4, 5, 5)


def test_odd_shaped_inputs_follow_the_shape_arithmetic():
    sizes = output_sizes(TINY)
    assert sizes[0] == (9, 10, 12) and sizes[1] == (5, 5, 6) and sizes[-1] == (1, 1, 1)
    model = SegCLREncoder(TINY).eval()
    seen = []
    hook = model.backbone.stages[3][1].register_forward_hook(
        lambda m, i, o: seen.append(tuple(o.shape[2:])) and None
    )
    with torch.inference_mode():
        assert model(torch.rand(3, 1, 17, 20, 23)).shape == (3, 64)
    hook.remove()
    assert seen == [sizes[-1]]
    with pytest.raises(InputError, match="input must be"):
        model(torch.rand(3, 2, 17, 20, 23))


def test_config_validation_width_multiplier_and_json():
    with pytest.raises(InputError, match="inputs"):
        EncoderConfig(inputs=("em", "labels"))
    with pytest.raises(InputError, match="channels"):
        EncoderConfig(channels=(8, 16, 32))
    with pytest.raises(InputError, match="preset"):
        preset("huge")
    half = PRESETS["full"].with_width(0.5)
    assert half.channels == (32, 64, 128, 256)
    three = EncoderConfig(inputs=("em", "mask", "masked_em"))
    assert three.in_channels == 3
    assert EncoderConfig.from_json(three.to_json()) == three
    with pytest.raises(InputError):
        EncoderConfig.from_json('{"bogus": 1}')


def test_save_and_load_encoder(tmp_path: Path):
    torch.manual_seed(2)
    model = SegCLREncoder(TINY).eval()
    _randomise_bn(model, 3)
    path = save_encoder(model, tmp_path / "enc.safetensors", metadata={"note": "x"})
    loaded = load_encoder(path)
    assert loaded.config == TINY and not loaded.training
    x = torch.rand(2, 1, 17, 20, 23)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(NotFoundError):
        load_encoder(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(InputError):
        load_encoder(tmp_path / "junk.safetensors")
