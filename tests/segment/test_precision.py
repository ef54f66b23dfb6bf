"""Precision choice: ``auto`` picks bf16 only where the device has it natively; emulated bf16 warns."""

from __future__ import annotations

import warnings

import pytest
import torch

from connectomix.errors import InputError
from connectomix.segment.precision import (
    EmulatedBF16Warning,
    check_precision,
    native_bf16,
    resolve_precision,
)


def test_unknown_precision_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="precision must be fp32, bf16 or auto, got 'fp16'"):
        check_precision("fp16")
    with pytest.raises(InputError):
        resolve_precision(None)


def test_auto_follows_the_hardware_and_never_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
        assert resolve_precision("fp32", "cpu") == "fp32"


def test_native_bf16_agrees_with_the_cpu_flags() -> None:
    # oneDNN's bf16 path needs at least AVX-512; an AVX2-only CPU has none.
    if not torch.cpu._is_avx512_supported():
        assert not native_bf16("cpu")
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert native_bf16("cpu")
    assert native_bf16("cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def test_explicit_bf16_is_kept_and_warns_only_where_emulated() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", "cpu") == "bf16"
    emulated = [w for w in caught if issubclass(w.category, EmulatedBF16Warning)]
    assert bool(emulated) == (not native_bf16("cpu"))
    if emulated:
        assert "far slower than fp32" in str(emulated[0].message)


@pytest.mark.parametrize("arch", ["convstack", "inception"])
def test_models_compute_in_their_weights_dtype_and_add_to_the_seed_in_its_dtype(arch: str) -> None:
    """A network cast to bf16 takes fp32 image and seed, runs in bf16 and returns fp32 logits whose update
    matches the fp32 network to bf16 rounding."""
    from connectomix.segment.models import FFNConfig, build_model

    torch.manual_seed(0)
    config = FFNConfig(arch=arch, depth=2, width=8, fov_zyx=(9, 9, 9))
    fp32 = build_model(config).eval()
    bf16 = build_model(config).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    image, seed = torch.rand(1, 1, 9, 9, 9), torch.randn(1, 1, 9, 9, 9) * 3
    with torch.inference_mode():
        reference, out = fp32(image, seed), bf16(image, seed)
    assert out.dtype == torch.float32
    update_ref, update = reference - seed, out - seed
    assert not torch.equal(update, update_ref)  # it really ran in bf16
    assert torch.allclose(update, update_ref, atol=0.05 * float(update_ref.abs().max()) + 1e-3)
