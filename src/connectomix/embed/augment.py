"""SegCLR's training augmentations: random shift, per-axis flips, axis permutation, grey-level change.

* **Shift**: the cutout centre moves by up to ``±shift_voxels`` source voxels per axis (uniform integers).
* **Grey level** (EM only, before masking and pooling, as it is pointwise):
  ``clip(x · (1 + U(−0.25, 0.25)) + U(−0.25, 0.25), 0, 1) ** 2**U(−1, 1)``, one draw per cutout.
* **Flips**: each axis reversed with probability ½.
* **Axis permutation**: a uniformly random permutation of the axes in ``permutable_axes`` (those whose
  network voxels have the same size in nm and whose input sizes are equal; all three for isotropic data, y
  and x for sectioned EM).

All take a ``numpy.random.Generator``; arrays are ``(…, z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from connectomix.embed.model import EncoderConfig
from connectomix.errors import InputError


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to apply and how strongly (SegCLR's defaults)."""

    shift_voxels: int = 4
    flips: bool = True
    permute: bool = True
    grey: bool = True
    grey_scale: float = 0.25
    grey_shift: float = 0.25
    gamma_log2: float = 1.0

    def __post_init__(self) -> None:
        if self.shift_voxels < 0:
            raise InputError(f"shift_voxels must be ≥ 0, got {self.shift_voxels}")
        if min(self.grey_scale, self.grey_shift, self.gamma_log2) < 0:
            raise InputError("grey-level ranges must be ≥ 0")

    def to_dict(self) -> dict:
        return asdict(self)


NO_AUGMENTATION = Augmentation(shift_voxels=0, flips=False, permute=False, grey=False)


def permutable_axes(config: EncoderConfig, resolution_nm_zyx: Sequence[float]) -> tuple[int, ...]:
    """Axes (0 = z, 1 = y, 2 = x) that may be permuted among themselves: the largest group with equal network
    voxel size (``resolution · downsample``, within 1 %) and equal input size; y and x win ties."""
    voxel = [float(r) * d for r, d in zip(resolution_nm_zyx, config.downsample_zyx, strict=True)]
    groups: list[list[int]] = []
    for axis in (2, 1, 0):
        for group in groups:
            other = group[0]
            same_size = config.input_size_zyx[axis] == config.input_size_zyx[other]
            if same_size and abs(voxel[axis] - voxel[other]) <= 0.01 * max(voxel[axis], voxel[other]):
                group.append(axis)
                break
        else:
            groups.append([axis])
    best = max(groups, key=len)
    return tuple(sorted(best)) if len(best) > 1 else ()


def random_shifts(rng: np.random.Generator, n: int, shift_voxels: int) -> np.ndarray:
    """``(n, 3)`` integer offsets (z, y, x) uniform in ``[-shift_voxels, shift_voxels]``."""
    if shift_voxels == 0:
        return np.zeros((n, 3), dtype=np.int64)
    return rng.integers(-shift_voxels, shift_voxels + 1, size=(n, 3), dtype=np.int64)


def grey_level(
    em: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: float = 0.25,
    shift: float = 0.25,
    gamma_log2: float = 1.0,
) -> np.ndarray:
    """SegCLR's grey-level change of ``(N, z, y, x)`` EM in [0, 1], one random draw per cutout."""
    n = em.shape[0]
    a = np.asarray(rng.uniform(-scale, scale, size=n), dtype=np.float32)
    b = np.asarray(rng.uniform(-shift, shift, size=n), dtype=np.float32)
    g = np.exp2(rng.uniform(-gamma_log2, gamma_log2, size=n)).astype(np.float32)
    expand = (slice(None),) + (None,) * (em.ndim - 1)
    out = np.clip(em * (1 + a[expand]) + b[expand], 0.0, 1.0)
    return np.power(out, g[expand], dtype=np.float32)


def flip_and_permute(
    cutouts: np.ndarray, rng: np.random.Generator, *, flips: bool, axes: tuple[int, ...]
) -> np.ndarray:
    """Randomly flip each spatial axis and permute ``axes`` of every ``(N, C, z, y, x)`` cutout."""
    out = np.empty_like(cutouts)
    for i in range(cutouts.shape[0]):
        item: np.ndarray = cutouts[i]
        if flips:
            reverse = [1 + a for a in range(3) if rng.random() < 0.5]
            if reverse:
                item = np.flip(item, axis=tuple(reverse))
        if len(axes) > 1:
            order = list(range(3))
            for src, dst in zip(axes, rng.permutation(axes), strict=True):
                order[src] = int(dst)
            item = item.transpose(0, *(1 + a for a in order))
        out[i] = item
    return out
