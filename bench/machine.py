"""What machine a benchmark ran on (shared by the torch benchmarks; run them as ``python bench/NAME.py``)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """Platform, CPU model, torch threads and versions, for a benchmark's JSON."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
