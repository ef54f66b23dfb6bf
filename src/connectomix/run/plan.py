"""Capacity planning: how many FFN steps, device hours, bytes and dollars a volume will take.

Every number comes from an explicit :class:`PlanAssumptions` field, printed with the plan, so a user can see
and override each one. The defaults are measurements, and say where they come from:

* **steps per voxel** 1.651e-3: Google's FIB-25 run of its FFN over the whole of ``training_sample2``
  (25,799 network steps for 250³ voxels, counters stored in Google's published result);
* **ms per step** by device: ``p100`` 11.9 ms (the same published run: 308 s of prediction for 25,799 steps
  on one P100); ``cpu-2core`` from ``bench/ffn.py`` on a 2-core AMD EPYC with AVX512-BF16, 2026-12-06
  (fp32 and bf16 with channels-last, one canvas); other devices only when given (``--ms-per-step h100=…``);
* **block overhead** ``((block + 2·overlap) / block)³`` with the defaults of ``cx segment run`` (128³ cores,
  24-voxel context): the extra steps spent in overlapping context;
* **storage**: raw uint8 (1 byte/voxel) over its compression ratio, segmentation uint64 (8 bytes/voxel) over
  its ratio, the uint8 probability map over its ratio, embeddings at SegCLR's published density (about 4
  billion 64-float embeddings for H01's roughly 1 mm³);
* **prices** per device hour: assumptions (list prices vary by provider and year); override with ``--price``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from connectomix.errors import InputError

#: Whole adult mouse brain, about 500 mm³ (a round figure; published estimates are 415-510 mm³).
MOUSE_BRAIN_UM3 = 500.0 * 1e9
MM3_UM3 = 1e9


@dataclass(frozen=True)
class PlanAssumptions:
    """Inputs of a capacity plan (see the module docstring for their sources). Units in the names."""

    steps_per_voxel: float = 25_799 / 250**3
    ms_per_step: Mapping[str, float] = field(
        default_factory=lambda: {"cpu-2core-fp32": 96.4, "cpu-2core-bf16": 48.1, "p100": 308_000 / 25_799}
    )
    price_per_hour_usd: Mapping[str, float] = field(
        default_factory=lambda: {"cpu-2core-fp32": 0.07, "cpu-2core-bf16": 0.07, "p100": 1.46}
    )
    block_zyx: tuple[int, int, int] = (128, 128, 128)
    overlap_zyx: tuple[int, int, int] = (24, 24, 24)
    raw_compression: float = 1.3
    segmentation_compression: float = 50.0
    probability_compression: float = 3.0
    embeddings_per_um3: float = 4e9 / MM3_UM3
    embedding_bytes: float = 64 * 4 + 4 * 8  # 64 float32 values + node id and x, y, z

    def __post_init__(self) -> None:
        numbers = {
            "steps_per_voxel": self.steps_per_voxel,
            "raw_compression": self.raw_compression,
            "segmentation_compression": self.segmentation_compression,
            "probability_compression": self.probability_compression,
            "embedding_bytes": self.embedding_bytes,
        }
        for name, value in numbers.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        for name, table in (
            ("ms_per_step", self.ms_per_step),
            ("price_per_hour_usd", self.price_per_hour_usd),
        ):
            for device, value in table.items():
                if not (math.isfinite(value) and value >= 0):
                    raise InputError(f"{name}[{device!r}] must be a non-negative number, got {value!r}")

    @property
    def block_overhead(self) -> float:
        """Network steps per voxel of the block-wise run over those of one big subvolume."""
        factor = 1.0
        for b, o in zip(self.block_zyx, self.overlap_zyx, strict=True):
            factor *= (b + 2 * o) / b
        return factor


@dataclass(frozen=True)
class DeviceEstimate:
    """Compute for one device type: hours on one device, and the cost at its hourly price."""

    device: str
    ms_per_step: float
    device_hours: float
    cost_usd: float | None


@dataclass(frozen=True)
class Plan:
    """A capacity plan for a volume of ``size_um_xyz`` µm at ``resolution_nm_xyz`` nm."""

    name: str
    size_um_xyz: tuple[float, float, float]
    resolution_nm_xyz: tuple[float, float, float]
    voxels: float
    network_steps: float
    devices: list[DeviceEstimate]
    storage_bytes: dict[str, float]
    assumptions: PlanAssumptions

    @property
    def volume_mm3(self) -> float:
        return math.prod(self.size_um_xyz) / MM3_UM3

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["assumptions"]["ms_per_step"] = dict(self.assumptions.ms_per_step)
        data["assumptions"]["price_per_hour_usd"] = dict(self.assumptions.price_per_hour_usd)
        data["assumptions"]["block_overhead"] = self.assumptions.block_overhead
        data["volume_mm3"] = self.volume_mm3
        return data


def _positive_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    items = tuple(float(v) for v in values)
    if len(items) != 3 or not all(math.isfinite(v) and v > 0 for v in items):
        raise InputError(f"{name} must be 3 positive numbers (x, y, z), got {tuple(values)!r}")
    return items  # type: ignore[return-value]


def plan_volume(
    size_um_xyz: Sequence[float],
    resolution_nm_xyz: Sequence[float],
    assumptions: PlanAssumptions | None = None,
    *,
    name: str = "volume",
) -> Plan:
    """Estimate steps, device hours, storage and cost for a volume (sizes in µm, resolution in nm, x-y-z)."""
    a = assumptions or PlanAssumptions()
    size = _positive_triple(size_um_xyz, "size_um_xyz")
    resolution = _positive_triple(resolution_nm_xyz, "resolution_nm_xyz")
    voxels = math.prod(s * 1000.0 / r for s, r in zip(size, resolution, strict=True))
    steps = voxels * a.steps_per_voxel * a.block_overhead
    devices = []
    for device, ms in sorted(a.ms_per_step.items()):
        hours = steps * ms / 1000.0 / 3600.0
        price = a.price_per_hour_usd.get(device)
        devices.append(DeviceEstimate(device, ms, hours, None if price is None else hours * price))
    storage = {
        "raw": voxels * 1.0 / a.raw_compression,
        "segmentation": voxels * 8.0 / a.segmentation_compression,
        "probability": voxels * 1.0 / a.probability_compression,
        "embeddings": math.prod(size) * a.embeddings_per_um3 * a.embedding_bytes,
    }
    return Plan(name, size, resolution, voxels, steps, devices, storage, a)


def presets(resolution_nm_xyz: Sequence[float], assumptions: PlanAssumptions | None = None) -> list[Plan]:
    """Plans for a 1 mm³ cube (a mouse cortex column block) and a whole mouse brain (~500 mm³ as a cube)."""
    side = MOUSE_BRAIN_UM3 ** (1.0 / 3.0)
    return [
        plan_volume((1000.0, 1000.0, 1000.0), resolution_nm_xyz, assumptions, name="1 mm³ cube"),
        plan_volume((side, side, side), resolution_nm_xyz, assumptions, name="whole mouse brain (500 mm³)"),
    ]


def parse_device_values(items: Sequence[str], name: str) -> dict[str, float]:
    """``["h100=2.5", …]`` → ``{"h100": 2.5}``; a one-line InputError for anything else."""
    values: dict[str, float] = {}
    for item in items:
        device, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not sep or not device.strip() or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} takes DEVICE=NUMBER (e.g. h100=3.5), got {item!r}")
        values[device.strip()] = value
    return values


def human_bytes(n: float) -> str:
    """Bytes in decimal units (kB, MB, …, EB), as storage is sold."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000.0
    return f"{n:.1f} EB"  # pragma: no cover


__all__ = [
    "MOUSE_BRAIN_UM3",
    "DeviceEstimate",
    "Plan",
    "PlanAssumptions",
    "human_bytes",
    "parse_device_values",
    "plan_volume",
    "presets",
]
