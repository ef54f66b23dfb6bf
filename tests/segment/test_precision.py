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
