"""``InceptionFFN`` ("FFN-v2"): a flood-filling network of 3-D Inception blocks with an uncertainty head.

Tensors are ``(batch, channel, z, y, x)``; the field of view is ``config.fov_zyx`` voxels. The model is a
drop-in :class:`~connectomix.segment.models.FFNModel`: ``forward(image, seed)`` returns updated seed logits
(the network's logit update **added to the input seed logits**, exactly like ``ConvStack3D``), and
``predict(image, seed)`` also returns a per-voxel log-variance ``s`` from a second head.

Architecture
------------
``stem``: 3³ conv (2 → width, activation) then 3³ conv (width → width, linear), like ``conv0_a`` and
``conv0_b`` of Google's ``convstack_3d``. Then ``config.depth`` pre-activation Inception blocks::

    h = act(norm(x))
    branch 1: 1³ conv                                  receptive field 1³
    branch 2: 1³ reduce → act → 3³ conv                 receptive field 3³
    branch 3: 1³ reduce → act → 3³ → act → 3³ conv       receptive field 5³
    branch 4: 1³ reduce → act → 3³ conv, dilation d      receptive field (2d + 1)³ (d = 3: 7³, sparse)
    x = x + proj(act(concat(branches)))                  1³ projection back to ``width``

Each branch has ``max(1, width // 4)`` channels. ``proj`` starts at zero, so every block starts as the
identity (a Fixup-style initialisation that lets deep stacks train without normalisation). Normalisation
defaults to none, because FFN inference runs batches of 1–8 where BatchNorm statistics are meaningless;
GroupNorm is available. Two 1³ heads read ``act(x)``: ``logit_head`` (the update added to the seed) and
``log_variance_head``.

``config.extra`` options (all JSON values, so they round-trip through model files):

- ``"dilation"`` (int, default 3): dilation of branch 4.
- ``"activation"``: ``"relu"`` (default) or ``"gelu"``.
- ``"norm"``: ``"none"`` (default) or ``"group"`` (GroupNorm with ``"groups"`` groups, default 4).

Uncertainty loss
----------------
:func:`heteroscedastic_bce` is the per-voxel form of the uncertainty weighting of Kendall, Gal & Cipolla,
"Multi-task learning using uncertainty to weigh losses" (CVPR 2018, eq. 10: ``L/σ² + log σ``), which is the
classification analogue of the "learned loss attenuation" of Kendall & Gal, "What uncertainties do we need in
Bayesian deep learning for computer vision?" (NeurIPS 2017, eq. 5)::

    loss = mean( exp(-s) · BCE(logits, target) + s / 2 ),   s = log σ²

For a fixed voxel the optimum is ``exp(s) = 2 · E[BCE]``: ``s`` tracks how much cross-entropy the voxel is
expected to cost, so it is high where the target is ambiguous (noisy labels, boundaries) and low where it is
predictable; with the softened 0.95/0.05 targets the cross-entropy never drops below H(0.95) = 0.199 nats,
so ``s`` is bounded below (≈ −0.92) without an extra regulariser. The logits' own optimum is unchanged (a
positive per-voxel weight), so they stay calibrated FFN predictions for inference. Kendall & Gal's
Monte-Carlo form for classification (sample ``l + σ ε``, average the probabilities) and its closed-form probit
approximation ``BCE(l / sqrt(1 + π σ²/8))`` were not chosen: they score only the expected probability, which
``l → 0`` reaches for any ``σ``, so for a binary target the variance is not identified and need not grow
where labels are noisy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from connectomix.errors import InputError
from connectomix.segment.models import FFNConfig, FFNModel, weight_dtype

#: Bounds on the log-variance inside the loss, so ``exp(-s)`` can neither overflow nor vanish.
LOG_VARIANCE_CLAMP = (-8.0, 8.0)


def _conv(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(
        in_channels, out_channels, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=True
    )


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise InputError(f"InceptionFFN activation must be 'relu' or 'gelu', got {name!r}")


def _options(config: FFNConfig) -> dict[str, Any]:
    extra: dict[str, Any] = config.extra
    dilation = int(extra.get("dilation", 3))
    norm = str(extra.get("norm", "none"))
    groups = int(extra.get("groups", 4))
    if dilation < 1:
        raise InputError(f"InceptionFFN dilation must be ≥ 1, got {dilation}")
    if norm not in ("none", "group"):
        raise InputError(f"InceptionFFN norm must be 'none' or 'group', got {norm!r}")
    if norm == "group" and (groups < 1 or config.width % groups):
        raise InputError(
            f"InceptionFFN GroupNorm needs width ({config.width}) divisible by groups ({groups})"
        )
    return {
        "dilation": dilation,
        "activation": str(extra.get("activation", "relu")),
        "norm": norm,
        "groups": groups,
    }


class InceptionBlock(nn.Module):
    """One residual 3-D Inception block of ``width`` channels (see the module docstring for its branches)."""

    def __init__(
        self, width: int, *, dilation: int = 3, activation: str = "relu", norm: str = "none", groups: int = 4
    ) -> None:
        super().__init__()
        branch = max(1, width // 4)
        self.norm: nn.Module = nn.GroupNorm(groups, width) if norm == "group" else nn.Identity()
        self.act = _activation(activation)
        self.b1 = _conv(width, branch, 1)
        self.b3_reduce = _conv(width, branch, 1)
        self.b3 = _conv(branch, branch, 3)
        self.b5_reduce = _conv(width, branch, 1)
        self.b5_a = _conv(branch, branch, 3)
        self.b5_b = _conv(branch, branch, 3)
        self.bd_reduce = _conv(width, branch, 1)
        self.bd = _conv(branch, branch, 3, dilation=dilation)
        self.proj = _conv(4 * branch, width, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act
        h = act(self.norm(x))
        branches = (
            self.b1(h),
            self.b3(act(self.b3_reduce(h))),
            self.b5_b(act(self.b5_a(act(self.b5_reduce(h))))),
            self.bd(act(self.bd_reduce(h))),
        )
        return x + self.proj(act(torch.cat(branches, dim=1)))


class InceptionHeads(nn.Module):
    """Two 1³ heads on ``act(x)``: the seed-logit update and the per-voxel log-variance."""

    def __init__(self, width: int, activation: str = "relu") -> None:
        super().__init__()
        self.act = _activation(activation)
        self.logit_head = _conv(width, 1, 1)
        self.log_variance_head = _conv(width, 1, 1)
        nn.init.zeros_(self.log_variance_head.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(x)
        return self.logit_head(h), self.log_variance_head(h)


class InceptionFFN(FFNModel):
    """FFN-v2: stem → ``config.depth`` Inception blocks → logit update (added to the seed) + log-variance.

    Inputs ``image`` and ``seed`` are ``(B, 1, z, y, x)`` (normalised image, seed logits); ``forward`` returns
    the updated seed logits ``(B, 1, z, y, x)``; :meth:`predict` returns ``(logits, log_variance)``, both
    ``(B, 1, z, y, x)``, where ``log_variance`` is ``s = log σ²`` of :func:`heteroscedastic_bce`.
    """

    has_uncertainty = True

    def __init__(self, config: FFNConfig | None = None) -> None:
        super().__init__()
        self.config = config or FFNConfig(arch="inception")
        options = _options(self.config)
        width = self.config.width
        self.stem = nn.Sequential(
            _conv(2, width, 3), _activation(options["activation"]), _conv(width, width, 3)
        )
        self.blocks = nn.ModuleList(
            InceptionBlock(
                width,
                dilation=options["dilation"],
                activation=options["activation"],
                norm=options["norm"],
                groups=options["groups"],
            )
            for _ in range(self.config.depth)
        )
        self.heads = InceptionHeads(width, options["activation"])

    def module_groups(self) -> list[nn.Module]:
        """Sub-modules in input-to-output order (stem, blocks…, heads), for freezing all but the last k."""
        return [self.stem, *self.blocks, self.heads]

    def _features(self, image: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(torch.cat([image, seed], dim=1).to(weight_dtype(self)))
        for block in self.blocks:
            x = block(x)
        return self.heads(x)

    def forward(self, image: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        update, _ = self._features(image, seed)
        return seed + update.to(seed.dtype)

    def predict(self, image: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Updated seed logits and per-voxel log-variance ``s = log σ²``, both ``(B, 1, z, y, x)``."""
        update, log_variance = self._features(image, seed)
        return seed + update.to(seed.dtype), log_variance.to(seed.dtype)


def heteroscedastic_bce(
    logits: torch.Tensor, log_variance: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Uncertainty-weighted sigmoid cross-entropy ``exp(-s) · BCE(logits, target) + s / 2`` (see module doc).

    ``logits``, ``log_variance`` (``s``) and ``target`` (probabilities in [0, 1]) share one shape; computed in
    fp32. ``reduction`` is ``"mean"`` (a scalar) or ``"none"`` (per voxel).
    """
    s = log_variance.float().clamp(*LOG_VARIANCE_CLAMP)
    bce = functional.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    loss = torch.exp(-s) * bce + 0.5 * s
    if reduction == "none":
        return loss
    if reduction != "mean":
        raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return loss.mean()
