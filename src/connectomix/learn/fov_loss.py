"""Held-out per-FOV loss: the FFN training objective measured on validated patches, without training.

:func:`fov_loss` runs a model on training examples drawn from ``patches`` the way
:class:`~connectomix.learn.continual.ContinualLearner` draws them (centres in each patch's centre ids,
balanced over the same-label-fraction bins; recurrent FOV moves with the face-max policy from a
single-voxel seed), but without augmentation, without gradients and from a fixed seed, so that two models
are compared on the same examples. It answers "does this adapter fit held-out ground truth better, FOV by
FOV?" in seconds, where segmenting a region takes minutes. It does **not** answer whether the adapter
segments better: on FIB-25 a fit on region A's ground truth lowered A's per-FOV loss and raised A's VI
(``bench/learn_transfer.py``, README), so the registry's gate stays a VI measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from connectomix.errors import InputError
from connectomix.learn.continual import _Centres, _masked_loss, stream_batch
from connectomix.learn.patches import Patch
from connectomix.segment.models import FFNModel
from connectomix.segment.precision import Precision, resolve_precision
from connectomix.segment.training import _Stream, make_example, training_radius


@dataclass(frozen=True)
class FovLoss:
    """``loss``: mean per-voxel sigmoid cross-entropy against the soft targets (0.95 / 0.05) over all FOVs
    (voxels labelled 0 left out in patches that are not ground truth); ``fovs``: fields of view evaluated;
    ``examples``: examples drawn; ``fovs_per_example``: how far the model's own moves carried it (at most
    ``max_fovs_per_example``: a model that moves less also stops objects sooner at inference)."""

    loss: float
    fovs: int
    examples: int
    fovs_per_example: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "fovs": self.fovs,
            "examples": self.examples,
            "fovs_per_example": self.fovs_per_example,
        }


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _advance(
    model: FFNModel, active: list[tuple[Patch, _Stream]], fast: str, device: torch.device
) -> tuple[float, int]:
    """One forward pass over the current FOVs of ``active``; updates their canvases and queues and returns
    (summed per-voxel loss, voxels counted)."""
    image, canvas, target, known = stream_batch(active, model.config)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast == "bf16"):
        logits, log_variance = model.predict(
            torch.from_numpy(image[:, None]).to(device), torch.from_numpy(canvas[:, None]).to(device)
        )
    voxels = int(known.sum())
    target_t = torch.from_numpy(target[:, None]).to(device)
    total = float(_masked_loss(model, logits, log_variance, target_t, known)) * voxels
    for (_, s), pred in zip(active, logits.detach().float().cpu().numpy()[:, 0], strict=True):
        s.update(pred, model.config)
    return total, voxels


def fov_loss(
    model: FFNModel,
    patches: Sequence[Patch],
    *,
    examples_per_patch: int = 3,
    max_fovs_per_example: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    precision: Precision = "fp32",
) -> FovLoss:
    """The training loss of ``model`` on ``examples_per_patch`` un-augmented examples of every patch.

    Every choice (centres) comes from ``numpy.random.default_rng([seed, 31])``, so the same patches and seed
    give the same examples for any model; the models' own predictions decide the moves, as in training.
    ``batch_size`` streams advance in one forward pass (it does not change the result beyond float
    rounding). ``precision``: ``fp32`` or ``bf16`` autocast (``auto``: bf16 where native).
    """
    if not isinstance(model, FFNModel):
        raise InputError(f"fov_loss needs an FFNModel, got {type(model).__name__}")
    per_patch = _int_at_least("examples_per_patch", examples_per_patch, 1)
    max_fovs = _int_at_least("max_fovs_per_example", max_fovs_per_example, 1)
    batch = _int_at_least("batch_size", batch_size, 1)
    patches = list(patches)
    if not patches:
        raise InputError("fov_loss needs at least one patch")
    for p in patches:
        if not isinstance(p, Patch):
            raise InputError(f"fov_loss takes Patch objects, got {type(p).__name__}")
    config = model.config
    device = next(model.parameters()).device
    fast = resolve_precision(precision, device)
    rng = np.random.default_rng([int(seed), 31])
    radius = training_radius(config)

    streams: list[tuple[Patch, _Stream]] = []
    for patch in patches:
        centres = _Centres(patch, radius)
        for _ in range(per_patch):
            centre = centres.draw(rng)
            if centre is None:
                continue
            example = make_example(patch.raw, patch.labels, centre, config, augment=False)
            streams.append((patch, _Stream.start(len(streams), example)))
    if not streams:
        raise InputError("no patch has a centre an example can be drawn at (patches too small?)")

    was_training = model.training
    model.eval()
    total, voxels, fovs = 0.0, 0, 0
    live = list(streams)
    try:
        with torch.no_grad():
            while live:
                chunk = live[:batch]
                active = [(p, s) for p, s in chunk if s.next_offset(config, max_fovs) is not None]
                if active:
                    total_k, voxels_k = _advance(model, active, fast, device)
                    total, voxels, fovs = total + total_k, voxels + voxels_k, fovs + len(active)
                # a stream leaves when its own moves are used up or it reached max_fovs_per_example
                live = [(p, s) for p, s in live if s.queue and s.visited < max_fovs]
    finally:
        model.train(was_training)
    return FovLoss(
        loss=total / max(voxels, 1),
        fovs=fovs,
        examples=len(streams),
        fovs_per_example=fovs / len(streams),
    )


__all__ = ["FovLoss", "fov_loss"]
