"""Flood-filling network models, their configuration, and safetensors model files.

Tensors are ``(batch, channel, z, y, x)``. Every model takes the normalised EM image and the current seed
logits (each ``(B, 1, z, y, x)`` over the field of view) and returns updated seed logits of the same shape:
the network's output **added to the input seed logits**, as in Google's ``convstack_3d``. Models with an
uncertainty head also return a per-voxel log-variance (see :mod:`connectomix.segment.inception`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from connectomix.errors import InputError, NotFoundError

Arch = Literal["convstack", "inception"]
CONFIG_KEY = "connectomix_ffn_config"


@dataclass(frozen=True)
class FFNConfig:
    """What an FFN model is: architecture, size, field of view and movement step, image normalisation.

    ``fov_zyx`` and ``deltas_zyx`` are voxels in (z, y, x). Images are normalised as
    ``(raw - image_mean) / image_stddev`` (Google's FIB-25 model: 128 and 33).
    """

    arch: Arch = "convstack"
    depth: int = 12
    width: int = 32
    fov_zyx: tuple[int, int, int] = (33, 33, 33)
    deltas_zyx: tuple[int, int, int] = (8, 8, 8)
    image_mean: float = 128.0
    image_stddev: float = 33.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ("convstack", "inception"):
            raise InputError(f"unknown FFN architecture {self.arch!r}: expected 'convstack' or 'inception'")
        if self.depth < 1 or self.width < 1:
            raise InputError(
                f"FFN depth and width must be positive, got depth {self.depth}, width {self.width}"
            )
        for name in ("fov_zyx", "deltas_zyx"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3 or any(v < 0 for v in value):
                raise InputError(f"{name} must be 3 non-negative sizes (z, y, x), got {value}")
            object.__setattr__(self, name, value)
        if any(f % 2 == 0 or f < 1 for f in self.fov_zyx):
            raise InputError(
                f"the field of view must be odd on every axis (a centre voxel), got {self.fov_zyx}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FFNConfig:
        data = json.loads(text)
        data["fov_zyx"] = tuple(data["fov_zyx"])
        data["deltas_zyx"] = tuple(data["deltas_zyx"])
        return cls(**data)


class FFNModel(nn.Module):
    """Base class: ``forward(image, seed) -> logits``; ``predict`` also returns the uncertainty, if any."""

    config: FFNConfig
    has_uncertainty: bool = False

    def predict(self, image: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Updated seed logits and, for models with an uncertainty head, per-voxel log-variance."""
        return self(image, seed), None


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first parameter: what its network computes in outside autocast."""
    return next(module.parameters()).dtype


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2, bias=True)


class ResidualModule(nn.Module):
    """``x + conv_b(relu(conv_a(relu(x))))`` with 3³ SAME convolutions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv_a = _conv(width, width, 3)
        self.conv_b = _conv(width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_b(torch.relu(self.conv_a(torch.relu(x))))


class ConvStack3D(FFNModel):
    """The same function as Google's ``convstack_3d.ConvStack3DFFNModel``.

    ``conv0_a`` (3³, ReLU) → ``conv0_b`` (3³, linear) → (depth − 1) residual modules → ReLU → 1³ conv
    (``conv_lom``) → one logit channel, added to the input seed logits. With depth 12 and width 32 it has
    638,433 parameters, like Google's FIB-25 checkpoint.
    """

    def __init__(self, config: FFNConfig | None = None) -> None:
        super().__init__()
        self.config = config or FFNConfig()
        width = self.config.width
        self.conv0_a = _conv(2, width, 3)
        self.conv0_b = _conv(width, width, 3)
        self.residual = nn.ModuleList(ResidualModule(width) for _ in range(self.config.depth - 1))
        self.conv_lom = _conv(width, 1, 1)

    def forward(self, image: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        # The network runs in its weights' dtype (bf16 weights: a bf16 pass without autocast); the update is
        # added to the seed in the seed's dtype, so fp32 seed logits keep fp32 accumulation.
        x = torch.cat([image, seed], dim=1).to(weight_dtype(self))
        x = self.conv0_b(torch.relu(self.conv0_a(x)))
        for module in self.residual:
            x = module(x)
        update = self.conv_lom(torch.relu(x))
        return seed + update.to(seed.dtype)


def build_model(config: FFNConfig) -> FFNModel:
    """A freshly initialised model of ``config.arch``."""
    if config.arch == "convstack":
        return ConvStack3D(config)
    from connectomix.segment.inception import InceptionFFN

    return InceptionFFN(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: FFNModel, path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """Write the weights (fp32) and the config to a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to(torch.float32).contiguous().cpu() for name, t in model.state_dict().items()
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={CONFIG_KEY: model.config.to_json(), **(metadata or {})})
    tmp.replace(path)
    return path


def load_model(path: Path | str, device: str | torch.device = "cpu") -> FFNModel:
    """Read a model written by :func:`save_model` (config from the file's metadata)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no such model file {str(path)!r} (expected a .safetensors written by cx)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors model file ({exc})") from None
    if CONFIG_KEY not in metadata:
        raise InputError(
            f"{path}: safetensors file has no {CONFIG_KEY!r} metadata (not an FFN model from cx)"
        )
    model = build_model(FFNConfig.from_json(metadata[CONFIG_KEY]))
    load_state(model, tensors, source=str(path))
    return model.to(device).eval()


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model``, with one-line errors for missing, extra or mis-shaped tensors."""
    from connectomix.checkpoints import load_tensors

    load_tensors(model, tensors, source, what="model")
