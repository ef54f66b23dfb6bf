"""Encoder inputs: EM and segment-mask cutouts around skeleton nodes, read through the volumes' chunk cache.

A cutout around a node covers ``config.source_size_zyx`` voxels of the source volumes (``input_size ·
downsample``), centred on the node (``size // 2`` voxels before it, :meth:`Box.around`). It is read with
``Volume.read`` (so chunked volumes go through the shared :class:`~connectomix.volume.cache.ChunkCache` and
only the chunks it touches are loaded), outside the volume — or outside an optional ``limit`` box, which
keeps training cutouts from seeing held-out data — it is 0. The EM is scaled to [0, 1] (uint8 / 255, as
SegCLR), the mask is ``segmentation == segment id``; then each is mean-pooled by ``downsample`` and the
named channels are stacked: ``em``, ``mask`` and ``masked_em`` = pool(em · mask).

Arrays are ``(N, C, z, y, x)`` float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional

from connectomix.embed.model import EncoderConfig
from connectomix.errors import InputError
from connectomix.volume.base import Volume
from connectomix.volume.box import Box


def read_clipped(volume: Volume, box: Box, limit: Box | None = None) -> np.ndarray:
    """``volume.read(box)`` with 0 outside the volume and outside ``limit`` (if given)."""
    if limit is None:
        return volume.read(box, fill_value=0)
    inside = box.intersect(limit)
    out = np.zeros(box.shape, dtype=volume.dtype)
    if not inside.empty:
        out[inside.to_slices(box.start)] = volume.read(inside, fill_value=0)
    return out


def em_as_float(array: np.ndarray) -> np.ndarray:
    """EM intensities as float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats clipped to [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array, 0.0, 1.0).astype(np.float32, copy=False)
    raise InputError(f"EM must be uint8, uint16 or float in [0, 1], got dtype {array.dtype}")


def mean_pool(array: np.ndarray, factor_zyx: Sequence[int]) -> np.ndarray:
    """Mean over non-overlapping ``factor_zyx`` blocks of the last three axes (sizes must divide)."""
    fz, fy, fx = (int(f) for f in factor_zyx)
    if (fz, fy, fx) == (1, 1, 1):
        return array
    *lead, z, y, x = array.shape
    if z % fz or y % fy or x % fx:
        raise InputError(f"cannot pool shape {(z, y, x)} by {(fz, fy, fx)}: sizes must be multiples")
    # torch's average pooling: the exact block mean, ~4× faster than a numpy reduction over strided axes
    flat = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(-1, 1, z, y, x)
    pooled = functional.avg_pool3d(flat, (fz, fy, fx))
    return pooled.reshape(*lead, z // fz, y // fy, x // fx).numpy()


def read_sources(
    raw: Volume,
    seg: Volume,
    centres_zyx: np.ndarray,
    segment_ids: np.ndarray,
    size_zyx: Sequence[int],
    *,
    limit: Box | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """EM (float32 in [0, 1]) and mask (float32 0/1) cutouts ``(N, z, y, x)`` of ``size_zyx`` source voxels
    centred on ``centres_zyx`` (``(N, 3)`` global voxel coordinates, (z, y, x)), for ``segment_ids``."""
    centres = np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
    ids = np.asarray(segment_ids, dtype=np.uint64).reshape(-1)
    if len(ids) != len(centres):
        raise InputError(f"{len(centres)} centres but {len(ids)} segment ids")
    if raw.shape != seg.shape or raw.voxel_offset != seg.voxel_offset:
        raise InputError(
            f"EM {raw.shape} at {raw.voxel_offset} and segmentation {seg.shape} at {seg.voxel_offset} "
            "must cover the same voxels (z, y, x)"
        )
    size = tuple(int(s) for s in size_zyx)
    em = np.empty((len(ids), *size), dtype=np.float32)
    mask = np.empty((len(ids), *size), dtype=np.float32)
    for i, (centre, segment) in enumerate(zip(centres, ids, strict=True)):
        box = Box.around(tuple(int(v) for v in centre), size)
        em[i] = em_as_float(read_clipped(raw, box, limit))
        mask[i] = read_clipped(seg, box, limit) == segment
    return em, mask


def compose(em: np.ndarray, mask: np.ndarray, config: EncoderConfig) -> np.ndarray:
    """Pool source cutouts ``(N, z, y, x)`` by ``config.downsample_zyx`` and stack ``config.inputs`` into
    ``(N, C, z', y', x')`` float32."""
    if em.shape != mask.shape or em.shape[1:] != config.source_size_zyx:
        raise InputError(
            f"cutouts {em.shape[1:]} / {mask.shape[1:]} do not match the config's source size "
            f"{config.source_size_zyx} (z, y, x)"
        )
    makers: dict[str, Callable[[], np.ndarray]] = {
        "em": lambda: mean_pool(em, config.downsample_zyx),
        "mask": lambda: mean_pool(mask, config.downsample_zyx),
        "masked_em": lambda: mean_pool(em * mask, config.downsample_zyx),
    }
    return np.stack([makers[name]() for name in config.inputs], axis=1).astype(np.float32, copy=False)


def read_cutouts(
    raw: Volume,
    seg: Volume,
    centres_zyx: np.ndarray,
    segment_ids: np.ndarray,
    config: EncoderConfig,
    *,
    limit: Box | None = None,
) -> np.ndarray:
    """Network inputs ``(N, C, z, y, x)`` at ``centres_zyx`` of ``segment_ids`` (not augmented)."""
    em, mask = read_sources(raw, seg, centres_zyx, segment_ids, config.source_size_zyx, limit=limit)
    return compose(em, mask, config)
