"""A small 3-D U-Net that predicts membrane (boundary) probability from EM, for the baseline watershed.

The baseline segmenter (:mod:`connectomix.segment.baseline`) turns a boundary map in [0, 1] into segments.
Its default map is the smoothed darkness of the raw image; this module learns the map from ground truth
instead. Arrays are numpy ``(z, y, x)`` volumes in voxels; tensors are ``(batch, channel, z, y, x)``.

Network (:class:`BoundaryUNet`)
-------------------------------
``levels`` down-sampling steps (2×2×2 max pooling, or ``pool_zyx`` per axis for anisotropic voxels) with
``features · 2^level`` channels; every level is two 3³ convolutions with ReLU, **same padding** (zeros), no
normalisation layer (so a voxel's output depends on its neighbourhood only, not on statistics of the patch:
tiled and whole-volume predictions agree away from tile borders). Up-sampling is a 1³ convolution at the
coarse level followed by nearest-neighbour ×2 (the same as nearest up-sampling then a 1³ convolution, at an
eighth of the cost), concatenated with the skip connection. A final 1³ convolution gives one boundary
*logit* per voxel. The default (12 features, 2 levels) has 180,901 parameters and a receptive field of 41
voxels (a few more at some positions of the pooling grid). Inputs of any size are accepted:
:meth:`BoundaryUNet.forward` pads each axis at its end to a multiple of ``pool^levels`` (edge values) and
crops the output back.

Input normalisation (:func:`normalize_image`): ``"standardize"`` (default) subtracts the mean and divides by
the standard deviation of the *whole array given* (a training volume, or the subvolume handed to
:func:`predict_boundary`), which makes FIB-25 (grey-level sd ≈ 33) and the gala crops (sd ≈ 55) look alike;
``"fixed"`` uses ``(raw - image_mean) / image_stddev`` of the config.

Targets (:func:`boundary_targets`)
----------------------------------
A voxel is boundary when its label is 0 or one of its 6 neighbours inside the volume has another label;
so an interface between two touching cells is two voxels thick, and unlabelled gaps (gala's 0) are
boundary. ``dilate`` grows the mask by that many 6-connected steps (0 by default).

Training (:func:`train_boundary_unet`)
--------------------------------------
Each step draws ``batch_size`` random patches of ``patch_zyx`` voxels (a volume with probability proportional
to its voxel count unless ``volume_weights`` says otherwise, then a uniform corner), augments them (each axis
flipped with probability ½, y and x swapped with probability ½, intensity ``x · g + o`` with ``g`` and ``o``
uniform in ``1 ± jitter`` and ``± jitter`` in normalised units), and minimises **class-balanced** binary
cross-entropy: boundary and interior voxels of the batch each carry half the loss. Adam, learning rate
``lr`` decayed by a cosine to ``lr / 10`` at the last step. All randomness comes from ``seed`` (weights via
a forked torch generator, sampling via ``numpy.random.default_rng(seed)``), so a run is repeatable.
Because of the class balancing the output is not a calibrated probability: it is ≈ 0.5 where boundary and
interior are equally *likely after reweighting*, i.e. the map is fatter than the true membranes (on FIB-25
about 18 % of voxels above 0.5 where 12 % are boundary targets). ``balance`` < 1 blends in the plain
voxel-mean loss and thins the map. It moves the watershed's operating point like ``BaselineParams``'
thresholds do: in single 1,500-step runs (``bench/boundary.py``) full balance gave fewer merges on the
FIB-25 crop and more splits on gala-test, ``balance=0`` the reverse; both maps score a higher boundary AUC
than the raw-derived one. The default is full balance.

Prediction (:func:`predict_boundary`)
-------------------------------------
Each axis is cut into the fewest tiles of at most about ``patch_zyx`` voxels that overlap by at least
``overlap_zyx``, shrunk to the smallest multiple of ``pool^levels`` that still covers the axis; tile starts
are multiples of ``pool^levels``, so the pooling grid of every tile is aligned with the volume's and a voxel
far from tile faces gets exactly the value a single pass over the whole volume would give. The normalised
volume is mirror-padded at its far end to the tiles' extent. Tiles run ``batch_size`` at a time; each
tile's sigmoid output is weighted by a window that is ~0 over the outer ``(overlap - overlap // 4) // 2``
voxels of each inner face (where zero padding changes the output: with the default network the error is
≤ 0.05 at 12 voxels from a tile face and < 1e-3 beyond 16), then rises linearly over ``overlap // 4``
voxels to 1 (faces on the volume border keep weight 1); the weighted sum divided by the summed weights is
a cross-fade in the middle of each overlap, with no seams. Measured on the FIB-25 crop with the defaults
(96³ tiles, overlap 32): tiled vs one pass differ by at most 0.02 (1e-4 for two of three trained models)
16 voxels or more from the volume's faces (at the far faces tiles see mirrored context where a single pass
sees zeros); overlap 16 gives differences up to 0.07. On CPU the network runs in bf16 autocast with
``channels_last_3d`` tensors where the CPU has native bf16 (``precision="auto"``, the default; on an
AMX/AVX-512 Xeon about twice as fast as fp32 and within 0.01 of it; see
``bench/boundary.py``), or in fp32.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional

from connectomix.errors import InputError, NotFoundError
from connectomix.progress import track
from connectomix.segment.models import load_state
from connectomix.segment.precision import Precision, resolve_precision
from connectomix.volume.labels import label_interfaces

Normalization = Literal["standardize", "fixed"]
IntTriple = tuple[int, int, int]
#: safetensors metadata key holding the :class:`BoundaryUNetConfig` as JSON.
CONFIG_KEY = "connectomix_boundary_unet_config"
#: Memory format of the network's tensors on CPU (channels-last is 1.5–3× faster for 3-D convolutions).
MEMORY_FORMAT = torch.channels_last_3d
#: Default tile size and minimum tile overlap of :func:`predict_boundary` (voxels, (z, y, x)).
DEFAULT_PATCH_ZYX: IntTriple = (96, 96, 96)
DEFAULT_OVERLAP_ZYX: IntTriple = (32, 32, 32)


# ---------------------------------------------------------------------------------------------------------
# configuration and network
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundaryUNetConfig:
    """What a boundary U-Net is: width, depth, pooling per axis (z, y, x) and input normalisation.

    ``features`` channels at full resolution, doubled at each of ``levels`` down-sampling steps;
    ``pool_zyx`` the pooling factor per axis at every step (1 or 2; e.g. (1, 2, 2) for 40×8×8 nm voxels);
    ``normalization`` see :func:`normalize_image` (``image_mean`` / ``image_stddev`` are grey levels used by
    ``"fixed"``).
    """

    features: int = 12
    levels: int = 2
    pool_zyx: IntTriple = (2, 2, 2)
    normalization: Normalization = "standardize"
    image_mean: float = 128.0
    image_stddev: float = 33.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.features) < 1 or int(self.levels) < 0:
            raise InputError(
                f"U-Net features must be ≥ 1 and levels ≥ 0, got {self.features} and {self.levels}"
            )
        pool = tuple(int(p) for p in self.pool_zyx)
        if len(pool) != 3 or any(p not in (1, 2) for p in pool):
            raise InputError(f"pool_zyx must be 3 factors of 1 or 2 (z, y, x), got {tuple(self.pool_zyx)}")
        object.__setattr__(self, "pool_zyx", pool)
        if self.normalization not in ("standardize", "fixed"):
            raise InputError(f"normalization must be 'standardize' or 'fixed', got {self.normalization!r}")
        if not self.image_stddev > 0:
            raise InputError(f"image_stddev must be positive, got {self.image_stddev!r}")

    @property
    def multiple_zyx(self) -> IntTriple:
        """Input sizes that need no padding are multiples of this per axis: ``pool ** levels``."""
        return tuple(p**self.levels for p in self.pool_zyx)  # type: ignore[return-value]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BoundaryUNetConfig:
        data = json.loads(text)
        data["pool_zyx"] = tuple(data.get("pool_zyx", (2, 2, 2)))
        return cls(**data)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class BoundaryUNet(nn.Module):
    """``forward(image (B, 1, z, y, x), normalised) -> boundary logits (B, 1, z, y, x)``; see the module."""

    def __init__(self, config: BoundaryUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or BoundaryUNetConfig()
        f, levels = self.config.features, self.config.levels
        widths = [f * 2**level for level in range(levels + 1)]
        self.encoders = nn.ModuleList(
            _double_conv(1 if level == 0 else widths[level - 1], widths[level]) for level in range(levels + 1)
        )
        # ups[l] maps level l + 1 to level l; decoders[l] merges it with the skip of level l.
        self.ups = nn.ModuleList(nn.Conv3d(widths[level + 1], widths[level], 1) for level in range(levels))
        self.decoders = nn.ModuleList(
            _double_conv(2 * widths[level], widths[level]) for level in range(levels)
        )
        self.head = nn.Conv3d(f, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 5 or image.shape[1] != 1:
            raise InputError(f"expected a (batch, 1, z, y, x) image tensor, got shape {tuple(image.shape)}")
        shape = image.shape[2:]
        pad = [(-s) % m for s, m in zip(shape, self.config.multiple_zyx, strict=True)]
        if any(pad):
            # F.pad takes (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi); pad at the end of each axis only.
            image = functional.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        pool = self.config.pool_zyx
        skips = []
        x = image
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = functional.max_pool3d(x, pool, pool)
            x = encoder(x)
            skips.append(x)
        for level in reversed(range(self.config.levels)):
            x = functional.interpolate(self.ups[level](x), scale_factor=pool, mode="nearest")
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
        logits = self.head(x)
        if any(pad):
            logits = logits[:, :, : shape[0], : shape[1], : shape[2]]
        return logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_fingerprint(model: BoundaryUNet) -> str:
    """A short hash of the config and the weights (identifies a model in block-wise run fingerprints)."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------------------
def save_boundary_model(
    model: BoundaryUNet, path: Path | str, metadata: dict[str, str] | None = None
) -> Path:
    """Write the weights (fp32) and the config (JSON in the metadata) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to(torch.float32).cpu().contiguous() for name, t in model.state_dict().items()
    }
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={**(metadata or {}), CONFIG_KEY: model.config.to_json()})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_boundary_model(path: Path | str) -> BoundaryUNet:
    """Read a model written by :func:`save_boundary_model` (on CPU, in eval mode)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            f"no such boundary model file {str(path)!r} (expected a .safetensors written by cx)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors model file ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise InputError(f"{path}: no {CONFIG_KEY!r} metadata (not a boundary U-Net written by cx)")
    try:
        config = BoundaryUNetConfig.from_json(metadata[CONFIG_KEY])
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: malformed {CONFIG_KEY!r} metadata ({exc})") from None
    model = BoundaryUNet(config)
    load_state(model, tensors, source=str(path))
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# data: normalisation and targets
# ---------------------------------------------------------------------------------------------------------
def _check_image(raw: np.ndarray, name: str = "raw") -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 3:
        raise InputError(f"{name} must be a 3-D (z, y, x) array, got shape {raw.shape}")
    if raw.dtype.kind not in "uif" or raw.size == 0:
        raise InputError(f"{name} must be a non-empty numeric image, got dtype {raw.dtype} shape {raw.shape}")
    return raw


def normalize_image(raw: np.ndarray, config: BoundaryUNetConfig) -> np.ndarray:
    """The network's float32 input for a ``(z, y, x)`` grey-level image (see the module docstring)."""
    raw = _check_image(raw)
    image = raw.astype(np.float32)
    if config.normalization == "standardize":
        mean = float(image.mean(dtype=np.float64))
        std = float(image.std(dtype=np.float64))
        if not std > 1e-6:
            std = float(config.image_stddev)
    else:
        mean, std = float(config.image_mean), float(config.image_stddev)
    image -= np.float32(mean)
    image *= np.float32(1.0 / std)
    return image


def boundary_targets(labels: np.ndarray, *, dilate: int = 0) -> np.ndarray:
    """Boolean ``(z, y, x)`` mask: label 0, or a 6-neighbour (inside the volume) with another label.

    ``dilate`` grows the mask by that many 6-connected steps. Labels are any integer (or bool) array.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3-D (z, y, x) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"labels must be an integer array (segment ids), got dtype {labels.dtype}")
    if dilate < 0:
        raise InputError(f"dilate must be ≥ 0 voxels, got {dilate}")
    mask = (labels == 0) | label_interfaces(labels)
    if dilate and mask.any():
        mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=dilate)
    return mask


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------
def _autocast(precision: Precision) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolve_precision(precision) == "bf16")


def _triple(values: Sequence[int] | int, name: str) -> IntTriple:
    if isinstance(values, int | np.integer):
        values = (int(values),) * 3
    triple = tuple(int(v) for v in values)
    if len(triple) != 3 or any(v < 1 for v in triple):
        raise InputError(f"{name} must be 3 positive sizes (z, y, x), got {tuple(values)}")
    return triple  # type: ignore[return-value]


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy where boundary (target 1) and interior voxels each carry half the loss.

    ``balance`` blends it with the plain voxel mean: ``balance · balanced + (1 - balance) · mean`` (0 gives
    calibrated probabilities, 1 full class balance). If a batch has only one class, the plain mean is used.
    ``logits`` and ``targets`` are float32 tensors of one shape.
    """
    per_voxel = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    positive = targets > 0.5
    n_pos = int(positive.sum())
    n_neg = targets.numel() - n_pos
    if n_pos == 0 or n_neg == 0 or balance == 0:
        return per_voxel.mean()
    balanced = 0.5 * per_voxel[positive].mean() + 0.5 * per_voxel[~positive].mean()
    return balance * balanced + (1.0 - balance) * per_voxel.mean()


def train_boundary_unet(
    volumes: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    config: BoundaryUNetConfig | None = None,
    model: BoundaryUNet | None = None,
    steps: int = 1000,
    batch_size: int = 2,
    patch_zyx: Sequence[int] | int = (48, 48, 48),
    lr: float = 2e-3,
    seed: int = 0,
    precision: Precision = "auto",
    intensity_jitter: float = 0.1,
    dilate: int = 0,
    volume_weights: Sequence[float] | None = None,
    balance: float = 1.0,
    progress: bool = False,
) -> tuple[BoundaryUNet, np.ndarray]:
    """Train a :class:`BoundaryUNet` on ``(raw, labels)`` pairs of ``(z, y, x)`` arrays; see the module doc.

    Parameters
    ----------
    volumes
        ``(raw, labels)`` pairs: a grey-level image (uint8 typical) and integer ground-truth ids of the same
        shape, each at least ``patch_zyx`` on every axis.
    config, model
        Train a new model of ``config`` (default :class:`BoundaryUNetConfig`), or continue training ``model``.
    steps, batch_size, patch_zyx, lr
        Optimiser steps, patches per step, patch size (voxels, (z, y, x)), Adam's initial learning rate.
    seed
        Seed of the initial weights, the patch sampling and the augmentation.
    precision
        ``"bf16"`` (autocast on CPU), ``"fp32"``, or ``"auto"`` (bf16 where native; see
        :mod:`connectomix.segment.precision`).
    intensity_jitter, dilate, volume_weights
        Augmentation strength, target dilation (voxels, see :func:`boundary_targets`), relative sampling
        weights of the volumes (default: their voxel counts).
    balance
        Class balancing of the loss, 0 … 1 (see :func:`balanced_bce`).
    progress
        Show a progress bar on a terminal.

    Returns
    -------
    The trained model (eval mode) and the loss of every step (float32, ``(steps,)``).
    """
    _autocast(precision)  # validates it before any work
    if model is not None and config is not None and model.config != config:
        raise InputError("give either a model to continue training or a config for a new one, not both")
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BoundaryUNet(config)
    config = model.config
    patch = _triple(patch_zyx, "patch_zyx")
    if any(p % m for p, m in zip(patch, config.multiple_zyx, strict=True)):
        raise InputError(
            f"patch_zyx {patch} must be a multiple of {config.multiple_zyx} (pool ** levels) per axis"
        )
    if not 0.0 <= balance <= 1.0:
        raise InputError(f"balance must be in [0, 1], got {balance!r}")
    if int(steps) < 0 or int(batch_size) < 1 or not lr > 0:
        raise InputError(f"need steps ≥ 0, batch_size ≥ 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    if not volumes:
        raise InputError("no training volumes given")
    images, targets = [], []
    for k, (raw, labels) in enumerate(volumes):
        raw = _check_image(raw, f"volume {k} raw")
        labels = np.asarray(labels)
        if labels.shape != raw.shape:
            raise InputError(f"volume {k}: labels shape {labels.shape} does not match raw shape {raw.shape}")
        if any(s < p for s, p in zip(raw.shape, patch, strict=True)):
            raise InputError(f"volume {k} of shape {raw.shape} is smaller than the patch {patch} (z, y, x)")
        images.append(normalize_image(raw, config))
        targets.append(boundary_targets(labels, dilate=dilate))
    weights = np.asarray(
        volume_weights if volume_weights is not None else [im.size for im in images], dtype=np.float64
    )
    if weights.shape != (len(images),) or np.any(weights < 0) or not weights.sum() > 0:
        raise InputError(f"volume_weights must be {len(images)} non-negative numbers, not all 0")
    weights /= weights.sum()

    rng = np.random.default_rng(seed)
    model.train()
    model.to(memory_format=MEMORY_FORMAT)  # type: ignore[call-overload]  # untyped overload
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.zeros(int(steps), np.float32)
    for step in track(range(int(steps)), "train boundary U-Net", int(steps), progress):
        for group in optimizer.param_groups:  # cosine decay from lr to lr / 10
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max(int(steps), 1))))
        batch_x = np.empty((batch_size, 1, *patch), np.float32)
        batch_y = np.empty((batch_size, 1, *patch), np.float32)
        for b in range(batch_size):
            k = int(rng.choice(len(images), p=weights))
            x, y = _sample_patch(images[k], targets[k], patch, rng, intensity_jitter)
            batch_x[b, 0], batch_y[b, 0] = x, y
        inputs = torch.from_numpy(batch_x).contiguous(memory_format=MEMORY_FORMAT)
        target = torch.from_numpy(batch_y)
        with _autocast(precision):
            logits = model(inputs)
        loss = balanced_bce(logits.float(), target.contiguous(memory_format=MEMORY_FORMAT), balance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = float(loss.detach())
    return model.eval(), losses


def _sample_patch(
    image: np.ndarray, target: np.ndarray, patch: IntTriple, rng: np.random.Generator, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """A random augmented ``patch`` of a normalised image and its boolean targets (float32 both)."""
    corner = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, patch, strict=True)]
    region = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
    x, y = image[region], target[region]
    flips = [axis for axis in range(3) if rng.random() < 0.5]
    if flips:
        x, y = np.flip(x, tuple(flips)), np.flip(y, tuple(flips))
    if patch[1] == patch[2] and rng.random() < 0.5:
        x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
    gain = 1.0 + jitter * (2.0 * rng.random() - 1.0)
    offset = jitter * (2.0 * rng.random() - 1.0)
    return (x * np.float32(gain) + np.float32(offset)).astype(np.float32), y.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------------------
def _axis_tiles(size: int, patch: int, overlap: int, multiple: int) -> tuple[int, int, int]:
    """``(patch, step, n)`` on one axis: ``n`` tiles ``[i * step, i * step + patch)`` that cover ``size``.

    The fewest tiles of at most about ``patch`` voxels that overlap by at least ``overlap``, each shrunk to
    the smallest multiple of ``multiple`` that still covers the axis, and a step that is a multiple of it.
    """

    def up(value: int) -> int:
        return -(-value // multiple) * multiple

    if size <= patch:
        return up(size), up(size), 1
    n = -(-(size - overlap) // (patch - overlap))
    tile = up(-(-(size + (n - 1) * overlap) // n))
    while True:
        step = max(multiple, (tile - overlap) // multiple * multiple)
        if tile + (n - 1) * step >= size:
            return tile, step, n
        tile += multiple


def _window(patch: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blending weights of one tile on one axis (``overlap``: the tiles' actual overlap).

    At an inner face the weight is ~0 (1e-4) for the outer ``(overlap - r) // 2`` voxels, then rises linearly
    over ``r = overlap // 4`` voxels to 1: neighbouring tiles cross-fade in the middle of their overlap,
    away from the faces where zero padding changes a tile's output. Faces on the volume border keep weight 1.
    """
    ramp = max(1, overlap // 4)
    skip = (overlap - ramp) // 2
    d = np.arange(patch, dtype=np.float32)
    w = np.ones(patch, np.float32)
    if not first:
        w = np.minimum(w, (d + 1 - skip) / (ramp + 1))
    if not last:
        w = np.minimum(w, (patch - d - skip) / (ramp + 1))
    return np.maximum(w, np.float32(1e-4))


def predict_boundary(
    raw: np.ndarray,
    model: BoundaryUNet,
    *,
    patch_zyx: Sequence[int] | int = DEFAULT_PATCH_ZYX,
    overlap_zyx: Sequence[int] | int = DEFAULT_OVERLAP_ZYX,
    batch_size: int = 2,
    precision: Precision = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Boundary probability of a ``(z, y, x)`` EM image: float32 in [0, 1], the image's shape.

    Tiles of about ``patch_zyx`` voxels overlapping by at least ``overlap_zyx`` (both (z, y, x); overlap
    ≥ 32 keeps tiles' border effects out of the result, see the module docstring) run ``batch_size`` at a
    time and are cross-faded; ``precision`` ``"bf16"`` (autocast, CPU), ``"fp32"`` or ``"auto"``.
    """
    raw = _check_image(raw)
    config = model.config
    patch_req = _triple(patch_zyx, "patch_zyx")
    if isinstance(overlap_zyx, int | np.integer):
        overlap_zyx = (int(overlap_zyx),) * 3
    overlap = tuple(int(o) for o in overlap_zyx)
    if len(overlap) != 3 or any(o < 0 for o in overlap):
        raise InputError(f"overlap_zyx must be 3 non-negative sizes (z, y, x), got {tuple(overlap_zyx)}")
    if any(o >= p and s > p for o, p, s in zip(overlap, patch_req, raw.shape, strict=True)):
        raise InputError(
            f"overlap_zyx {overlap} must be smaller than patch_zyx {patch_req} on every axis where the image "
            f"{raw.shape} is larger than the patch"
        )
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    _autocast(precision)  # validates precision before any work

    axes = [
        _axis_tiles(s, p, o, m)
        for s, p, o, m in zip(raw.shape, patch_req, overlap, config.multiple_zyx, strict=True)
    ]
    padded = tuple(p + (n - 1) * step for p, step, n in axes)
    image = normalize_image(raw, config)
    pad = [(0, q - s) for q, s in zip(padded, raw.shape, strict=True)]
    if any(after for _, after in pad):
        image = np.pad(image, pad, mode="symmetric")
    out = np.zeros(padded, np.float32)
    total = np.zeros(padded, np.float32)
    ramps = [[_window(p, p - step, i == 0, i == n - 1) for i in range(n)] for p, step, n in axes]
    corners = [
        (iz, iy, ix) for iz in range(axes[0][2]) for iy in range(axes[1][2]) for ix in range(axes[2][2])
    ]
    batches = [corners[k : k + batch_size] for k in range(0, len(corners), batch_size)]
    model.eval()
    model.to(memory_format=MEMORY_FORMAT)  # type: ignore[call-overload]  # untyped overload
    with torch.inference_mode():
        for batch in track(batches, "predict boundary", len(batches), progress):
            regions = [
                tuple(slice(i * a[1], i * a[1] + a[0]) for i, a in zip(index, axes, strict=True))
                for index in batch
            ]
            tiles = np.stack([image[r] for r in regions])[:, None]
            inputs = torch.from_numpy(tiles).contiguous(memory_format=MEMORY_FORMAT)
            with _autocast(precision):
                logits = model(inputs)
            probs = torch.sigmoid(logits.float()).numpy()
            for index, region, prob in zip(batch, regions, probs, strict=True):
                w = (
                    ramps[0][index[0]][:, None, None]
                    * ramps[1][index[1]][None, :, None]
                    * ramps[2][index[2]][None, None, :]
                )
                out[region] += w * prob[0]
                total[region] += w
    del image
    out /= total
    result = np.ascontiguousarray(out[tuple(slice(0, s) for s in raw.shape)])
    np.clip(result, 0.0, 1.0, out=result)
    return result
