"""Figures for reports: EM slices with ground-truth and segmentation overlays.

Rendering uses matplotlib's object API (:class:`matplotlib.figure.Figure` with the Agg canvas), never
``pyplot``, so it holds no global state and works without a display. Files are written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from connectomix.errors import InputError

#: Opacity of the label colours over the EM image.
OVERLAY_ALPHA = 0.45


def label_colors(labels: np.ndarray) -> np.ndarray:
    """A deterministic RGB colour (float32 in [0.15, 1]) per voxel from a hash of its id; id 0 is black.

    The colour depends only on the id (a 64-bit multiplicative hash), so one id has the same colour in
    every panel, figure and run.
    """
    ids = np.asarray(labels).astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        h = ids * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    rgb = np.stack(
        [((h >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.float32) for shift in (0, 8, 16)], axis=-1
    )
    rgb = np.float32(0.15) + rgb * np.float32(0.85 / 255.0)
    rgb[ids == 0] = 0.0
    return rgb


def _overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB image: the grey EM with label colours blended on top (id 0 left as plain EM)."""
    base = np.repeat(gray[..., None], 3, axis=-1)
    colors = label_colors(labels)
    alpha = np.where(labels[..., None] != 0, np.float32(OVERLAY_ALPHA), np.float32(0.0))
    return (1 - alpha) * base + alpha * colors


def _normalise(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        return image
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def slice_figure(
    raw: np.ndarray,
    gt: np.ndarray,
    seg: np.ndarray,
    out_png: Path | str,
    *,
    z: int | None = None,
    title: str = "",
) -> Path:
    """Write a PNG with three panels of one z-slice: EM, ground truth over EM, segmentation over EM.

    Parameters
    ----------
    raw, gt, seg
        ``(z, y, x)`` arrays of one shape: the EM image and two label volumes (id 0 = unlabelled,
        shown without colour).
    out_png
        Where to write the PNG (written to a temporary file in the same folder, then renamed).
    z
        The slice index (default: the middle slice).
    title
        Figure title.

    Returns the path written.
    """
    raw = np.asarray(raw)
    gt = np.asarray(gt)
    seg = np.asarray(seg)
    if raw.ndim != 3:
        raise InputError(f"raw must be a 3-D (z, y, x) array, got shape {raw.shape}")
    if gt.shape != raw.shape or seg.shape != raw.shape:
        raise InputError(
            f"raw, gt and seg must have one (z, y, x) shape, got {raw.shape}, {gt.shape} and {seg.shape}"
        )
    if gt.dtype.kind not in "iub" or seg.dtype.kind not in "iub":
        raise InputError(f"gt and seg must be integer label arrays, got {gt.dtype} and {seg.dtype}")
    if raw.shape[0] == 0 or raw.shape[1] == 0 or raw.shape[2] == 0:
        raise InputError(f"cannot draw an empty volume of shape {raw.shape}")
    if z is None:
        z = raw.shape[0] // 2
    if not 0 <= z < raw.shape[0]:
        raise InputError(f"z must be in 0..{raw.shape[0] - 1}, got {z}")
    out_png = Path(out_png)
    if not out_png.parent.is_dir():
        raise InputError(f"output folder {out_png.parent} does not exist")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gray = _normalise(raw[z])
    panels = [
        ("EM", np.repeat(gray[..., None], 3, axis=-1)),
        (f"ground truth ({_count(gt[z])} ids in slice)", _overlay(gray, gt[z])),
        (f"segmentation ({_count(seg[z])} ids in slice)", _overlay(gray, seg[z])),
    ]
    height, width = gray.shape
    panel_w = 4.0
    panel_h = max(1.0, panel_w * height / max(width, 1))
    fig = Figure(figsize=(3 * panel_w, panel_h + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, image) in zip(axes, panels, strict=True):
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title or f"z = {z}", fontsize=10)
    fig.tight_layout()

    fd, tmp = tempfile.mkstemp(prefix=f".{out_png.name}.", suffix=".tmp.png", dir=out_png.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        Path(tmp).replace(out_png)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_png


def _count(labels: np.ndarray) -> int:
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))
