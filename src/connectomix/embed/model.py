"""The SegCLR encoder: a post-activation 3-D ResNet-18, an embedding head and a projection head.

Architecture (Dorkenwald et al., SegCLR; Google's legacy TensorFlow 1 graph, re-written):

* **Stem**: conv 7³ stride 2 → BatchNorm (no ReLU) → max-pool 3³ stride 2.
* **Four stages** of two basic blocks with ``channels`` (64, 128, 256, 512 in the full model). A block is
  ``conv 3³ → ReLU → BN → conv 3³ → ReLU → BN``, plus the shortcut, then ``ReLU``. Every conv is followed by
  **ReLU then BatchNorm** (post-activation, unlike torchvision's conv → BN → ReLU). The first block of each
  stage has a 1×1×1 conv + BN shortcut (no ReLU on it) and strides 2 in its first conv, except the first
  stage (stride 1, right after the pool); the second block's shortcut is the identity.
* **Global average pool** → ``channels[-1]`` features (512).
* **Embedding ("bottleneck") head**: ``head_layers`` Dense → BN layers with ReLU between them; the middle
  layers keep the input width, the last gives ``embedding_dim``: 512 → 512 → 512 → **64**.
* **Projection head** (training only): the same on the embedding, 64 → 64 → 64 → 16.

Dense layers followed by BN have no bias (the BN's beta is the bias), as in Google's ``linear_layer``; convs
have biases. BatchNorm uses ε = 1e-5 and TensorFlow decay 0.9 (torch momentum 0.1). Google's blocks use
batch *re*-normalisation while training; at inference it is plain BatchNorm with the moving averages, which
is what this module computes in eval mode (training here uses ordinary BatchNorm).

Padding is TensorFlow's ``SAME`` (output ``ceil(n / stride)``, the extra voxel of an odd total padding at the
end), so imported checkpoints compute the same function for every input size. Spatial sizes for a 129³
input: 65 (stem) → 33 (pool) → 33 → 17 → 9 → 5 → pooled.

Axes: tensors are ``(batch, channel, z, y, x)``, connectomix's memory order. Google feeds its cutouts as
``(x, y, z)``; the conversion happens in exactly one place, the checkpoint import
(:mod:`connectomix.embed.tf_import` transposes the kernels' spatial axes), so the same weights give the
same embedding of the same tissue. Input channels are named (:data:`INPUT_CHANNELS`): ``em`` (uint8 / 255),
``mask`` (1 inside the segment, 0 outside) and ``masked_em`` (``em · mask``); Google's released models
take one channel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from connectomix.errors import InputError, NotFoundError

INPUT_CHANNELS: tuple[str, ...] = ("em", "mask", "masked_em")
CONFIG_KEY = "connectomix_segclr_config"
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch's convention; TensorFlow decay 0.9
IntTriple = tuple[int, int, int]


@dataclass(frozen=True)
class EncoderConfig:
    """What a SegCLR encoder is.

    ``input_size_zyx``: cutout size fed to the network, voxels (z, y, x). ``downsample_zyx``: the cutout is
    cut at ``input_size · downsample`` voxels of the source volume and mean-pooled by this integer factor, so
    one network voxel is ``downsample · resolution`` nm. ``channels``: widths of the stem and the four
    stages. ``inputs``: named input channels (see :data:`INPUT_CHANNELS`). ``embedding_dim`` and
    ``projection_dim``: outputs of the two heads, each ``head_layers`` / ``projection_layers`` deep.
    """

    input_size_zyx: IntTriple = (129, 129, 129)
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    inputs: tuple[str, ...] = ("masked_em",)
    embedding_dim: int = 64
    projection_dim: int = 16
    head_layers: int = 3
    projection_layers: int = 3
    downsample_zyx: IntTriple = (1, 1, 1)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size_zyx)
        if len(size) != 3 or any(v < 1 for v in size):
            raise InputError(f"input_size_zyx must be 3 positive sizes (z, y, x), got {self.input_size_zyx}")
        down = tuple(int(v) for v in self.downsample_zyx)
        if len(down) != 3 or any(v < 1 for v in down):
            raise InputError(f"downsample_zyx must be 3 positive integers, got {self.downsample_zyx}")
        channels = tuple(int(c) for c in self.channels)
        if len(channels) != 4 or any(c < 1 for c in channels):
            raise InputError(f"channels must be 4 positive widths (stem/stage 1 … 4), got {self.channels}")
        inputs = tuple(str(c) for c in self.inputs)
        unknown = [c for c in inputs if c not in INPUT_CHANNELS]
        if not inputs or unknown or len(set(inputs)) != len(inputs):
            raise InputError(
                f"inputs must be distinct names from {', '.join(INPUT_CHANNELS)}, got {self.inputs}"
            )
        for name in ("embedding_dim", "projection_dim", "head_layers", "projection_layers"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        object.__setattr__(self, "input_size_zyx", size)
        object.__setattr__(self, "downsample_zyx", down)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "inputs", inputs)

    @property
    def in_channels(self) -> int:
        return len(self.inputs)

    @property
    def source_size_zyx(self) -> IntTriple:
        """Voxels of the source volume one cutout covers, (z, y, x)."""
        return tuple(s * d for s, d in zip(self.input_size_zyx, self.downsample_zyx, strict=True))  # type: ignore[return-value]

    def with_width(self, multiplier: float) -> EncoderConfig:
        """The same config with every channel width scaled by ``multiplier`` (rounded, at least 1)."""
        if not multiplier > 0:
            raise InputError(f"width multiplier must be positive, got {multiplier}")
        return replace(self, channels=tuple(max(1, round(c * multiplier)) for c in self.channels))  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderConfig:
        try:
            data = json.loads(text)
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise InputError(f"not a SegCLR encoder config ({exc}): {text[:120]}") from None


#: ``full``: SegCLR as published (129³, 64…512 channels). ``lite``: trains on a 2-core CPU: 33³ network
#: voxels at 4× downsampling (a 132³-voxel cutout: 40 nm network voxels and a 1.3 µm field of view at 10 nm,
#: close to SegCLR's 32–40 nm), channels 16/32/64/128. On FIB-25 the 4× field of view gave clearly better
#: same-body retrieval than 2× (0.34 vs 0.24 after 600 steps; bench/embed.py).
PRESETS: dict[str, EncoderConfig] = {
    "full": EncoderConfig(),
    "lite": EncoderConfig(input_size_zyx=(33, 33, 33), channels=(16, 32, 64, 128), downsample_zyx=(4, 4, 4)),
}


def preset(name: str, **overrides: Any) -> EncoderConfig:
    """A named config (:data:`PRESETS`) with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise InputError(f"unknown encoder preset {name!r}: expected one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------
def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one axis: output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel: int, stride: int) -> tuple[list[int], bool]:
    per_axis = [same_padding(int(n), kernel, stride) for n in x.shape[2:]]
    symmetric = all(a == b for a, b in per_axis)
    flat = [v for a, b in reversed(per_axis) for v in (a, b)]  # functional.pad wants the last axis first
    return flat, symmetric


class SameConv3d(nn.Conv3d):
    """A cubic 3-D convolution with TensorFlow ``SAME`` padding (and a bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=0, bias=True)
        self.kernel, self.step = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, symmetric = _pads(x, self.kernel, self.step)
        if symmetric:
            return functional.conv3d(x, self.weight, self.bias, self.step, tuple(pads[::2][::-1]))
        return functional.conv3d(functional.pad(x, pads), self.weight, self.bias, self.step)


class SameMaxPool3d(nn.Module):
    """Max-pooling with TensorFlow ``SAME`` padding (padded voxels never win)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.step = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads, symmetric = _pads(x, self.kernel, self.step)
        if symmetric and max(pads) <= self.kernel // 2:
            return functional.max_pool3d(x, self.kernel, self.step, tuple(pads[::2][::-1]))
        return functional.max_pool3d(functional.pad(x, pads, value=-math.inf), self.kernel, self.step)


def _bn3d(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class Stem(nn.Module):
    """conv 7³ stride 2 → BN (no ReLU) → max-pool 3³ stride 2."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = SameConv3d(in_channels, channels, 7, 2)
        self.bn = _bn3d(channels)
        self.pool = SameMaxPool3d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(x)))


class PostActBlock(nn.Module):
    """``relu(bn_1(relu(conv_1(bn_0(relu(conv_0(x)))))) + shortcut(x))``; the shortcut is a 1×1×1 conv + BN
    when ``projection`` is set, else the identity."""

    def __init__(self, in_channels: int, channels: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv_0 = SameConv3d(in_channels, channels, 3, stride)
        self.relu_0 = nn.ReLU()
        self.bn_0 = _bn3d(channels)
        self.conv_1 = SameConv3d(channels, channels, 3, 1)
        self.relu_1 = nn.ReLU()
        self.bn_1 = _bn3d(channels)
        self.shortcut_conv = SameConv3d(in_channels, channels, 1, stride) if projection else None
        self.shortcut_bn = _bn3d(channels) if projection else None
        if not projection and (in_channels != channels or stride != 1):
            raise InputError("an identity shortcut needs equal widths and stride 1")
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_0(self.relu_0(self.conv_0(x)))
        y = self.bn_1(self.relu_1(self.conv_1(y)))
        shortcut = x
        if self.shortcut_conv is not None and self.shortcut_bn is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x))
        return self.relu(y + shortcut)


class ResNet18Backbone(nn.Module):
    """Stem, four stages of two :class:`PostActBlock` each, global average pool → ``(B, channels[-1])``."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.stem = Stem(in_channels, channels[0])
        stages = []
        width = channels[0]
        for index, out in enumerate(channels):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.ModuleList([PostActBlock(width, out, stride, True), PostActBlock(out, out, 1, False)])
            )
            width = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:  # type: ignore[attr-defined,union-attr]
                x = block(x)
        return x.mean(dim=(2, 3, 4))


class DenseBN(nn.Module):
    """Dense (no bias) → BN, optionally followed by ReLU."""

    def __init__(self, in_features: int, out_features: int, relu: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.dense(x)))


class Head(nn.Module):
    """``layers`` DenseBN layers, ReLU between them: ``in → in → … → out`` (Google's ``projection_head``)."""

    def __init__(self, in_features: int, out_features: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseBN(in_features, in_features if i < layers - 1 else out_features, relu=i < layers - 1)
            for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SegCLREncoder(nn.Module):
    """``forward(x)``: ``(B, C, z, y, x)`` float cutouts → ``(B, embedding_dim)`` embeddings;
    :meth:`project` maps embeddings to the contrastive projection (training only)."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        self.backbone = ResNet18Backbone(c.in_channels, c.channels)
        self.head = Head(c.channels[-1], c.embedding_dim, c.head_layers)
        self.projection = Head(c.embedding_dim, c.projection_dim, c.projection_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"encoder input must be (batch, {self.config.in_channels}, z, y, x), got {tuple(x.shape)}"
            )
        return self.head(self.backbone(x))

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(embedding)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_sizes(config: EncoderConfig) -> list[IntTriple]:
    """Spatial sizes (z, y, x) after the stem conv, the pool and each of the four stages."""
    sizes = [config.input_size_zyx]
    for stride in (2, 2, 1, 2, 2, 2):
        sizes.append(tuple(-(-s // stride) for s in sizes[-1]))  # type: ignore[arg-type]
    return sizes[1:]


# ---------------------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------------------
def save_encoder(model: SegCLREncoder, path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """Write the weights (fp32, including BN statistics) and the config to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    tensors = {n: t.float() if t.is_floating_point() else t for n, t in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={CONFIG_KEY: model.config.to_json(), **(metadata or {})})
    tmp.replace(path)
    return path


def load_encoder(path: Path | str, device: str | torch.device = "cpu") -> SegCLREncoder:
    """Read an encoder written by :func:`save_encoder` (config from the file's metadata), in eval mode."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no such encoder file {str(path)!r} (expected a .safetensors written by cx)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise InputError(f"{path}: no {CONFIG_KEY!r} metadata (not a SegCLR encoder written by cx)")
    model = SegCLREncoder(EncoderConfig.from_json(metadata[CONFIG_KEY]))
    load_state(model, tensors, source=str(path))
    return model.to(device).eval()


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model``, with one-line errors for missing, extra or mis-shaped tensors."""
    from connectomix.checkpoints import load_tensors

    load_tensors(model, tensors, source, what="encoder")
