"""Numeric precision of network passes: ``fp32``, ``bf16`` (autocast) or ``auto``.

bf16 autocast pays off only where the hardware multiplies bf16 natively: CUDA GPUs with bf16 support, and
CPUs whose oneDNN has a bf16 path (AVX512-BF16, AMX, or AVX-512 emulation). On an AVX2-only CPU (many AMD
EPYC machines) PyTorch falls back to a reference bf16 convolution: measured on a 2-core EPYC (torch 2.13),
one forward pass of Google's FIB-25 FFN took 30 s in bf16 against 0.34 s in fp32. ``auto`` therefore picks
bf16 only where it is native, and an explicit ``bf16`` on such a CPU still runs (same numbers) but warns.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch

from connectomix.errors import InputError

Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")


class EmulatedBF16Warning(RuntimeWarning):
    """bf16 was asked for on a device that has no native bf16 arithmetic (it runs, very slowly)."""


def check_precision(precision: object) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    return precision  # type: ignore[return-value]


@functools.cache
def _native_bf16_cpu() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` does bf16 arithmetic in hardware (or oneDNN's fast AVX-512 path)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _native_bf16_cpu()
    return False


def resolve_precision(precision: object, device: torch.device | str = "cpu") -> Literal["fp32", "bf16"]:
    """The precision to run on ``device``: ``auto`` becomes bf16 where native, else fp32.

    An explicit ``bf16`` is kept; where it is emulated an :class:`EmulatedBF16Warning` says so.
    """
    checked = check_precision(precision)
    if checked == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if checked == "bf16" and not native_bf16(device):
        warnings.warn(
            f"bf16 is emulated on this {torch.device(device).type} (no AVX512-BF16/AMX or GPU bf16): "
            "expect it to be far slower than fp32; use precision 'auto' or 'fp32'",
            EmulatedBF16Warning,
            stacklevel=2,
        )
    return checked
