"""LoRA adapters on the FFN Conv3d layers: exactness, training, merging, targets, bf16, files, fusion."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.learn import lora as lora_module
from connectomix.learn.lora import (
    Adapter,
    LoRAConfig,
    LoRAConv3d,
    adapter_state,
    add_lora,
    apply_adapter,
    extract_adapter,
    fuse_adapters,
    load_adapter,
    load_adapter_state,
    lora_parameters,
    merge_and_remove_lora,
    merge_lora,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from connectomix.segment.models import FFNConfig, FFNModel, build_model, count_parameters, save_model

CONVSTACK = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))
INCEPTION = FFNConfig(arch="inception", depth=1, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(config: FFNConfig = CONVSTACK, seed: int = 0) -> FFNModel:
    """A model with every parameter random (InceptionFFN's zero-initialised projections too)."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model.eval()


def _inputs(size: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, size, size, size, generator=g), torch.randn(1, 1, size, size, size, generator=g)


def _randomise_b(model: nn.Module, seed: int = 2, std: float = 0.1) -> None:
    """Give every adapter a non-zero B so it changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.copy_(torch.randn(parameter.shape, generator=g) * std)


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_untrained_adapter_is_exact_and_training_touches_only_adapters():
    model = _model()
    image, seed = _inputs()
    with torch.no_grad():
        before = model(image, seed)
    names = add_lora(model, LoRAConfig(rank=2, alpha=4.0))
    assert names == sorted(names) and len(names) == 2 + 2 + 1  # conv0_a, conv0_b, 1 residual (2), conv_lom
    with torch.no_grad():
        assert torch.equal(model(image, seed), before)

    base = _base_state(model)
    params = lora_parameters(model)
    assert len(params) == 2 * len(names)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(params, lr=0.1)
    target = torch.rand_like(seed)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(torch.sigmoid(model(image, seed)), target)
        loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == ("lora_" in name), name
    model.eval()
    with torch.no_grad():
        after = model(image, seed)
    assert (after - before).abs().max() > 1e-4
    for name, tensor in model.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name]), name


@pytest.mark.parametrize("config", [CONVSTACK, INCEPTION], ids=["convstack", "inception"])
def test_merge_matches_adapter_and_unmerge_is_bit_exact(config: FFNConfig):
    model = _model(config)
    image, seed = _inputs()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(image, seed)
    add_lora(model, LoRAConfig(rank=3, alpha=6.0))
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(image, seed)
        assert (adapted - plain).abs().max() > 1e-3  # the adapter matters
        merge_lora(model)
        assert all(m.merged for m in model.modules() if isinstance(m, LoRAConv3d))
        merged = model(image, seed)
        torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
        unmerge_lora(model)
        assert torch.equal(model(image, seed), adapted)
    for name, tensor in _base_state(model).items():
        assert torch.equal(tensor, original[name.replace(".base.", ".")]), name

    # merge, then remove: plain Conv3d layers with the original names and weights, trainable again.
    merge_lora(model)
    remove_lora(model)
    assert not any(isinstance(m, LoRAConv3d) for m in model.modules())
    assert set(model.state_dict()) == set(original)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    assert all(p.requires_grad for p in model.parameters())


def test_merge_and_remove_gives_a_plain_model_with_the_adapted_function():
    model = _model()
    image, seed = _inputs()
    add_lora(model, LoRAConfig(rank=2))
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(image, seed)
    merge_and_remove_lora(model)
    assert not any(isinstance(m, LoRAConv3d) for m in model.modules())
    assert set(model.state_dict()) == set(_model().state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(image, seed), adapted, rtol=1e-5, atol=1e-5)


def test_targets_select_only_named_layers():
    model = _model()
    names = add_lora(model, LoRAConfig(targets=("residual.*.conv_b", "conv_lom")))
    assert names == ["conv_lom", "residual.0.conv_b"]
    for name, module in model.named_modules():
        if name in names:
            assert isinstance(module, LoRAConv3d)
        elif name.endswith(("conv0_a", "conv0_b", "conv_a")):
            assert type(module) is nn.Conv3d
    assert len(lora_parameters(model)) == 4

    inception = _model(INCEPTION)
    names = add_lora(inception, LoRAConfig(targets=("stem.0", "blocks.*.b3", "heads.logit_head")))
    assert names == ["blocks.0.b3", "heads.logit_head", "stem.0"]
    assert isinstance(inception.stem[0], LoRAConv3d) and type(inception.stem[2]) is nn.Conv3d

    with pytest.raises(InputError, match="already has LoRA"):
        add_lora(inception, LoRAConfig())
    with pytest.raises(InputError, match=r"\['nope\*'\] match no Conv3d"):
        add_lora(_model(), LoRAConfig(targets=("nope*",)))
    with pytest.raises(InputError, match="match no Conv3d"):
        add_lora(_model(), LoRAConfig(targets=("conv_lom", "residual.7.*")))  # one typo is enough
    fresh = _model()
    with pytest.raises(InputError):
        add_lora(fresh, LoRAConfig(targets=("residual.0",)))  # a container, not a Conv3d
    assert not any(isinstance(m, LoRAConv3d) for m in fresh.modules())  # failed call changed nothing


def test_config_validation_and_round_trip():
    config = LoRAConfig(rank=3, alpha=1.5, dropout=0.25, targets=("a.*", "b"))
    assert LoRAConfig.from_dict(config.to_dict()) == config
    assert config.scaling == 0.5
    for bad in ({"rank": 0}, {"rank": 2.5}, {"alpha": 0.0}, {"alpha": float("nan")}, {"dropout": 1.0}):
        with pytest.raises(InputError):
            LoRAConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="string"):
        LoRAConfig(targets="conv_lom")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown LoRA config fields"):
        LoRAConfig.from_dict({"rank": 2, "lr": 1.0})


def test_dropout_only_in_training():
    model = _model()
    add_lora(model, LoRAConfig(rank=2, dropout=0.5))
    _randomise_b(model, std=0.5)
    image, seed = _inputs()
    with torch.no_grad():
        eval_a, eval_b = model(image, seed), model(image, seed)
        assert torch.equal(eval_a, eval_b)
        model.train()
        torch.manual_seed(0)
        train_a = model(image, seed)
        train_b = model(image, seed)
    assert not torch.equal(train_a, train_b)
    assert not torch.equal(train_a, eval_a)
    # Without dropout the same adapter is deterministic in training mode too.
    plain = _model()
    add_lora(plain, LoRAConfig(rank=2))
    _randomise_b(plain, std=0.5)
    plain.train()
    with torch.no_grad():
        assert torch.equal(plain(image, seed), eval_a)


def test_bf16_autocast_forward_and_backward_close_to_fp32():
    config = FFNConfig(depth=1, width=8, fov_zyx=(5, 5, 5), deltas_zyx=(1, 1, 1))
    model = _model(config)
    add_lora(model, LoRAConfig(rank=2))
    _randomise_b(model, std=0.2)
    image, seed = _inputs(size=5)
    with torch.no_grad():
        reference = model(image, seed)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image, seed)
        loss = out.float().square().mean()
    loss.backward()
    assert out.dtype == torch.float32  # the model adds the update to the fp32 seed
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    assert (out - reference).abs().max() > 0  # really ran in bf16
    for parameter in lora_parameters(model):
        assert parameter.dtype == torch.float32 and parameter.grad is not None
        assert torch.isfinite(parameter.grad).all()
    merge_lora(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(image, seed), reference, rtol=0.05, atol=0.05)


def test_bf16_weights_merge_and_unmerge():
    model = _model(FFNConfig(depth=1, width=8, fov_zyx=(5, 5, 5), deltas_zyx=(1, 1, 1))).to(torch.bfloat16)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoRAConfig(rank=2))
    assert all(p.dtype == torch.bfloat16 for p in lora_parameters(model))
    _randomise_b(model)
    image, seed = (t.to(torch.bfloat16) for t in _inputs(size=5))
    with torch.no_grad():
        adapted = model(image, seed)
        merge_lora(model)
        torch.testing.assert_close(model(image, seed), adapted, rtol=0.05, atol=0.05)
    remove_lora(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_save_load_round_trip_and_size(tmp_path: Path):
    # The default FFN (depth 12, width 32: 638,433 parameters), adapted at rank 4 on every Conv3d.
    base = build_model(FFNConfig())
    assert count_parameters(base) == 638_433
    base_file = save_model(base, tmp_path / "base.safetensors")
    model = copy.deepcopy(base)
    add_lora(model, LoRAConfig(rank=4, alpha=8.0))
    _randomise_b(model)
    adapter = extract_adapter(model, {"base_sha256": "abc123", "note": "fib25 edits 1-40"})
    n_adapter = adapter.num_parameters()
    assert n_adapter == sum(p.numel() for p in lora_parameters(model))
    path = save_adapter(adapter, tmp_path / "sub" / "adapter.safetensors")
    loaded = load_adapter(path)
    assert loaded.config == adapter.config
    assert loaded.metadata == adapter.metadata
    assert set(loaded.tensors) == set(adapter.tensors)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in adapter.tensors.items())

    size, base_size = path.stat().st_size, base_file.stat().st_size
    assert 4 * n_adapter < size < 4 * n_adapter + 16_384  # fp32 tensors plus a small header
    # A is (rank, in·27) against the (out, in, 3, 3, 3) kernel: ≈ rank / width = 12.5 % of the base file.
    assert size / base_size < 0.14
    # Rank 1 on the 22 residual convs: ≈ 1/32 of each kernel, under 5 % of the base file.
    small = copy.deepcopy(base)
    add_lora(small, LoRAConfig(rank=1, targets=("residual.*",)))
    small_path = save_adapter(extract_adapter(small), tmp_path / "small.safetensors")
    assert small_path.stat().st_size / base_size < 0.05

    # Applying the loaded adapter to a fresh copy of the base gives the adapted model's function.
    fresh = copy.deepcopy(base)
    apply_adapter(fresh, loaded)
    image, seed = _inputs(size=5)
    with torch.no_grad():
        assert torch.equal(fresh(image, seed), model(image, seed))


def test_load_errors(tmp_path: Path):
    model = _model()
    add_lora(model, LoRAConfig(rank=2))
    _randomise_b(model)
    path = save_adapter(extract_adapter(model), tmp_path / "a.safetensors")
    data = path.read_bytes()

    with pytest.raises(NotFoundError, match="no such adapter file"):
        load_adapter(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="truncated or corrupt") as info:
        load_adapter(truncated)
    assert "truncated.safetensors" in str(info.value) and "\n" not in str(info.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07" * 100)
    with pytest.raises(CorruptDataError, match="truncated or corrupt"):
        load_adapter(garbage)
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])  # one tensor byte changed
    with pytest.raises(CorruptDataError, match="sha256"):
        load_adapter(flipped)
    model_file = save_model(_model(), tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="not a LoRA adapter"):
        load_adapter(model_file)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = _model()
    add_lora(model, LoRAConfig(rank=2))
    adapter = extract_adapter(model)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    good = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(lora_module, "save_file", failing_save)
    _randomise_b(model)
    with pytest.raises(OSError, match="No space"):
        save_adapter(extract_adapter(model), path)
    with pytest.raises(OSError, match="No space"):
        save_adapter(adapter, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    assert path.read_bytes() == good

    monkeypatch.undo()
    with pytest.raises(InputError, match="reserved prefix"):
        save_adapter(Adapter(adapter.config, adapter.tensors, {"connectomix_lora_config": "x"}), path)
    with pytest.raises(InputError, match="strings"):
        save_adapter(Adapter(adapter.config, adapter.tensors, {"n": 3}), path)  # type: ignore[dict-item]


def _trained_adapter(rank: int, alpha: float, seed: int, targets: tuple[str, ...] = ()) -> Adapter:
    model = _model()
    add_lora(model, LoRAConfig(rank=rank, alpha=alpha, dropout=0.1, targets=targets), seed=seed)
    _randomise_b(model, seed=seed)
    return extract_adapter(model, {"seed": str(seed)})


def test_fuse_adapters_is_the_weighted_sum_of_deltas():
    first, second = _trained_adapter(2, 4.0, seed=1), _trained_adapter(3, 1.5, seed=2)
    weights = (0.7, -0.3)
    fused = fuse_adapters([first, second], weights)
    assert fused.config.rank == 5 and fused.config.scaling == 1.0 and fused.config.dropout == 0.0
    names = first.module_names()
    assert fused.module_names() == names and list(fused.config.targets) == names
    for name in names:
        expected = weights[0] * first.delta(name) + weights[1] * second.delta(name)
        torch.testing.assert_close(fused.delta(name), expected, rtol=1e-5, atol=1e-7)

    # The fused adapter on a model equals the base weights plus the weighted deltas.
    model = _model()
    apply_adapter(model, fused)
    for name, module in model.named_modules():
        if isinstance(module, LoRAConv3d):
            expected = weights[0] * first.delta(name) + weights[1] * second.delta(name)
            torch.testing.assert_close(module.delta_weight().flatten(1), expected, rtol=1e-5, atol=1e-7)

    with pytest.raises(InputError, match="different layers"):
        fuse_adapters([first, _trained_adapter(2, 4.0, seed=3, targets=("residual.*",))], (0.5, 0.5))
    with pytest.raises(InputError, match="one weight per adapter"):
        fuse_adapters([first, second], (1.0,))
    with pytest.raises(InputError, match="at least one"):
        fuse_adapters([], ())


def test_load_adapter_state_rejects_wrong_keys_and_shapes():
    model = _model()
    add_lora(model, LoRAConfig(rank=2))
    state = adapter_state(model)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    assert "conv_lom.lora_A" in state and state["conv_lom.lora_B"].shape == (1, 2)
    before = adapter_state(model)

    missing = dict(state)
    del missing["conv0_a.lora_B"]
    with pytest.raises(InputError, match=r"missing.*conv0_a\.lora_B"):
        load_adapter_state(model, missing)
    extra = {**state, "conv9.lora_A": torch.zeros(2, 3)}
    with pytest.raises(InputError, match=r"does not have.*conv9"):
        load_adapter_state(model, extra)
    wrong = {k: (torch.ones(3, v.shape[1]) if k == "conv_lom.lora_A" else v + 1) for k, v in state.items()}
    with pytest.raises(InputError, match=r"conv_lom\.lora_A has shape \(3, 8\)"):
        load_adapter_state(model, wrong)
    assert all(torch.equal(adapter_state(model)[k], v) for k, v in before.items())  # nothing was loaded
    with pytest.raises(InputError, match="no LoRA adapters"):
        load_adapter_state(_model(), state)

    # A model merged while loading: it stays merged, with the new deltas.
    other = {k: v + 0.01 for k, v in state.items()}
    merge_lora(model)
    load_adapter_state(model, other)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRAConv3d))
    assert all(torch.equal(adapter_state(model)[k], v) for k, v in other.items())
    image, seed = _inputs()
    with torch.no_grad():
        merged = model(image, seed)
        unmerge_lora(model)
        torch.testing.assert_close(model(image, seed), merged, rtol=1e-5, atol=1e-5)


def test_apply_adapter_to_an_unfit_model_leaves_it_unchanged():
    adapter = _trained_adapter(2, 4.0, seed=1)
    inception = _model(INCEPTION)
    with pytest.raises(InputError):
        apply_adapter(inception, adapter)
    assert not any(isinstance(m, LoRAConv3d) for m in inception.modules())


def test_initialisation_is_seeded():
    a, b, c = _model(), _model(), _model()
    add_lora(a, LoRAConfig(), seed=5)
    add_lora(b, LoRAConfig(), seed=5)
    add_lora(c, LoRAConfig(), seed=6)
    sa, sb, sc = adapter_state(a), adapter_state(b), adapter_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv0_b.lora_A"], sc["conv0_b.lora_A"])
    assert all(not v.any() for k, v in sa.items() if k.endswith("lora_B"))
