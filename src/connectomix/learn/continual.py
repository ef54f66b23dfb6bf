"""The continual learner: fit a LoRA adapter on corrected patches mixed with replay.

:class:`ContinualLearner` wraps a frozen base FFN with LoRA layers (:mod:`connectomix.learn.lora`) on the
last modules of the network and trains only those, with the FFN training procedure of
:mod:`connectomix.segment.training` (examples of ``fov + 2·delta`` voxels around a centre, augmented;
recurrent FOV moves with the face-max policy; sigmoid cross-entropy on soft targets, or the heteroscedastic
loss for models with an uncertainty head). What is new here is where examples come from:

* every correction :class:`~connectomix.learn.patches.Patch` gives ``examples_per_patch`` examples per epoch,
  centred in its ``centre_ids`` (the segments the proofreader checked), balanced over the same-label-fraction
  bins of :func:`~connectomix.segment.training.compute_partitions` so boundary-near centres are not swamped;
* a share ``replay_fraction`` of all examples comes from the :class:`~connectomix.learn.replay.ReplayBuffer`
  (earlier ground truth, confident predictions, earlier corrections);
* in correction and confident patches, voxels labelled 0 (left unassigned by the segmentation, never checked)
  are *unknown*, not background: they are left out of the loss, so a gap the proofreader merged across does
  not teach the model to stop at it. In ground-truth patches 0 is validated background and is trained on.

Why LoRA on the *last* modules only (default: the last 4 module groups, :func:`default_lora_config`): the
gradient then stops there, so the backward pass costs a fraction of full fine-tuning on a CPU, and a few
hundred corrections cannot move the early feature extractors far from what the base learned on millions of
examples. Any :class:`~connectomix.learn.lora.LoRAConfig` may be passed instead.

Deterministic given ``seed``: fit ``k`` of a learner draws every choice from
``numpy.random.default_rng([seed, 21, k])`` and seeds torch (dropout) from it; the same patches, buffer and
seed give bit-identical adapters on the same machine and thread count.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from connectomix.errors import InputError
from connectomix.learn.lora import (
    Adapter,
    LoRAConfig,
    add_lora,
    apply_adapter,
    extract_adapter,
    load_adapter_state,
    lora_parameters,
)
from connectomix.learn.patches import Patch
from connectomix.learn.replay import ReplayBuffer
from connectomix.segment.models import FFNConfig, FFNModel
from connectomix.segment.precision import Precision, resolve_precision
from connectomix.segment.training import (
    _loss,
    _Stream,
    compute_partitions,
    make_example,
    module_groups,
    training_radius,
)


def default_lora_config(
    model: FFNModel,
    *,
    last: int | None = None,
    rank: int = 4,
    alpha: float = 8.0,
    dropout: float = 0.0,
) -> LoRAConfig:
    """A LoRA config adapting every Conv3d in the last ``last`` of the model's module groups
    (:func:`~connectomix.segment.training.module_groups`: for ``ConvStack3D`` the last residual modules and
    the output convolution); ``None``: the last 4, or all of a smaller model's."""
    groups = module_groups(model)
    if last is None:
        last = min(4, len(groups))
    if not 1 <= last <= len(groups):
        raise InputError(f"last must be in 1…{len(groups)} for this model, got {last}")
    chosen = {id(m) for g in groups[-last:] for m in g.modules() if isinstance(m, nn.Conv3d)}
    targets = tuple(name for name, m in model.named_modules() if id(m) in chosen)
    return LoRAConfig(rank=rank, alpha=alpha, dropout=dropout, targets=targets)


@dataclass
class FitResult:
    """What one :meth:`ContinualLearner.fit` did. ``losses``: the objective per optimiser step;
    ``examples`` / ``replay_examples``: examples from correction patches and from the replay buffer;
    ``fovs``: fields of view trained on; ``seconds``: wall time of the fit."""

    adapter: Adapter
    steps: int
    fovs: int
    examples: int
    replay_examples: int
    losses: np.ndarray
    seconds: float
    precision: str
    edits: tuple[int, ...] = ()
    tasks: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the adapter tensors and the per-step losses)."""
        return {
            "steps": self.steps,
            "fovs": self.fovs,
            "examples": self.examples,
            "replay_examples": self.replay_examples,
            "first_loss": float(self.losses[0]) if self.losses.size else None,
            "last_loss": float(self.losses[-max(1, self.losses.size // 10) :].mean())
            if self.losses.size
            else None,
            "seconds": self.seconds,
            "precision": self.precision,
            "edits": len(self.edits),
            "tasks": len(self.tasks),
        }


class _Centres:
    """Training centres of one patch: candidates in its centre ids, grouped by same-label-fraction bin."""

    def __init__(self, patch: Patch, radius: Sequence[int], sampling: str = "balanced") -> None:
        parts = compute_partitions(patch.labels, radius, stride=1)
        labels_at = patch.labels[tuple(parts.coords_zyx.T)]
        keep = np.isin(labels_at, np.asarray(patch.centre_ids, dtype=patch.labels.dtype))
        self.coords = parts.coords_zyx[keep]
        bins = parts.bin[keep]
        if sampling == "uniform":
            self.groups = [np.arange(len(self.coords))] if len(self.coords) else []
        else:
            self.groups = [np.flatnonzero(bins == b) for b in np.unique(bins)]

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        if not self.groups:
            return None
        group = self.groups[int(rng.integers(len(self.groups)))]
        return self.coords[group[int(rng.integers(group.size))]]


class ContinualLearner:
    """Fits LoRA adapters on a frozen ``base`` FFN from correction patches plus replay.

    Parameters
    ----------
    base
        The served model (not changed: the learner trains a deep copy with LoRA layers added).
    lora
        Which layers to adapt (default :func:`default_lora_config`: the last 4 module groups, rank 4).
    replay, replay_fraction
        The buffer and the share of every fit's examples drawn from it (0 ≤ f < 1; ignored when empty).
    adapter
        An earlier adapter of this base to continue from (its config is used instead of ``lora``).
    lr, clip, batch_size, max_fovs_per_example, augment, isotropic
        Adam learning rate, elementwise gradient clip, example streams per step, FOVs per example (the
        recurrent moves of :mod:`connectomix.segment.training`), flips and axis swaps (z joins when
        ``isotropic``).
    precision
        ``fp32`` or ``bf16`` (autocast of the forward pass; LoRA weights and the loss stay fp32); ``auto``
        picks bf16 where the CPU has it natively.
    seed
        Seeds the LoRA initialisation and every fit (see the module docstring).
    centre_sampling
        ``balanced`` (Google's training: every same-label-fraction bin equally often) or ``uniform`` (every
        centre voxel equally often). Balancing over-weights centres near boundaries, where the answer is
        "stop"; on FIB-25 a short ground-truth fit harmed VI less with ``uniform`` (README).
    anchor_weight
        Weight ``λ ≥ 0`` of the *anchor* term, a learning-without-forgetting distillation that keeps what the
        base already gets right: ``λ · mean((z - z_base)²)`` over the known voxels where the frozen base's
        logit ``z_base`` is on the target's side of 0.5 (``z`` the adapted model's logit, both in logit units,
        on the same FOV). The cross-entropy on those voxels is already near its floor, so nothing else stops
        a fit driven by the voxels the base gets wrong from lowering the confidence everywhere — and a
        logit below the move threshold stops a flood fill (README). 0 (default) trains on the labels alone;
        larger values cost one extra forward pass of the base per step.
    """

    def __init__(
        self,
        base: FFNModel,
        lora: LoRAConfig | None = None,
        *,
        replay: ReplayBuffer | None = None,
        replay_fraction: float = 0.5,
        adapter: Adapter | None = None,
        lr: float = 1e-3,
        clip: float | None = 0.7,
        batch_size: int = 4,
        max_fovs_per_example: int = 4,
        augment: bool = True,
        isotropic: bool = False,
        precision: Precision = "fp32",
        seed: int = 0,
        device: str | torch.device = "cpu",
        centre_sampling: str = "balanced",
        anchor_weight: float = 0.0,
    ) -> None:
        if not isinstance(base, FFNModel):
            raise InputError(f"the continual learner needs an FFNModel, got {type(base).__name__}")
        if not 0.0 <= replay_fraction < 1.0:
            raise InputError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"lr must be a positive number, got {lr}")
        for name, value in (("batch_size", batch_size), ("max_fovs_per_example", max_fovs_per_example)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if centre_sampling not in ("balanced", "uniform"):
            raise InputError(f"centre_sampling must be 'balanced' or 'uniform', got {centre_sampling!r}")
        if isinstance(anchor_weight, bool) or not (
            isinstance(anchor_weight, int | float) and math.isfinite(anchor_weight) and anchor_weight >= 0
        ):
            raise InputError(f"anchor_weight must be a number >= 0, got {anchor_weight!r}")
        self.centre_sampling = centre_sampling
        self.anchor_weight = float(anchor_weight)
        import copy

        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model: FFNModel = copy.deepcopy(base).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if adapter is not None:
            apply_adapter(self.model, adapter)
            self.lora = adapter.config
        else:
            self.lora = lora or default_lora_config(self.model)
            add_lora(self.model, self.lora, seed=seed)
        self._start = extract_adapter(self.model)
        # the frozen base the anchor term distils from (only kept when the term is on)
        self._reference: FFNModel | None = None
        if self.anchor_weight > 0:
            self._reference = copy.deepcopy(base).to(self.device).eval()
            for p in self._reference.parameters():
                p.requires_grad_(False)
        self.config = base.config
        self.replay = replay if replay is not None else ReplayBuffer(seed=seed)
        self.replay_fraction = float(replay_fraction)
        self.lr, self.clip, self.batch_size = float(lr), clip, batch_size
        self.max_fovs = max_fovs_per_example
        self.augment, self.isotropic = augment, isotropic
        self.seed = int(seed)
        self.fits = 0
        self._radius = training_radius(self.config)
        self._centres: dict[int, _Centres] = {}

    # -- public -----------------------------------------------------------------------------------------
    @property
    def adapter(self) -> Adapter:
        """The adapter as trained so far."""
        return extract_adapter(self.model, metadata={"lora_seed": str(self.seed), "fits": str(self.fits)})

    def restore(self, adapter: Adapter | None = None) -> None:
        """Continue from ``adapter`` (None: the state the learner started from) on the next fit.

        The loop calls this when a candidate fails its gate, so that later fits build on the served
        adapter instead of the rejected one. The adapter must have the learner's LoRA config.
        """
        adapter = adapter or self._start
        if adapter.config != self.lora:
            raise InputError(
                f"cannot continue from an adapter of another LoRA config ({adapter.config} vs {self.lora})"
            )
        load_adapter_state(self.model, adapter.tensors)

    def fit(
        self,
        patches: Sequence[Patch],
        *,
        epochs: int = 3,
        examples_per_patch: int = 1,
        max_steps: int | None = None,
        progress: bool = False,
    ) -> FitResult:
        """Train the adapter on ``patches`` (correction patches) for ``epochs``, mixed with replay.

        Each epoch visits every patch ``examples_per_patch`` times in a random order and adds
        ``round(n · f / (1 - f))`` replay examples (``f`` = ``replay_fraction``) at random positions; each
        example is trained on for up to ``max_fovs_per_example`` FOVs. ``max_steps`` stops the fit early
        (a time budget). Returns the adapter after the fit (the learner keeps training it on the next call).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InputError(f"epochs must be an integer >= 1, got {epochs!r}")
        if (
            isinstance(examples_per_patch, bool)
            or not isinstance(examples_per_patch, int)
            or examples_per_patch < 1
        ):
            raise InputError(f"examples_per_patch must be an integer >= 1, got {examples_per_patch!r}")
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
        ):
            raise InputError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
        patches = list(patches)
        if not patches:
            raise InputError("fit needs at least one patch")
        for p in patches:
            if not isinstance(p, Patch):
                raise InputError(f"fit takes Patch objects, got {type(p).__name__}")
        rng = np.random.default_rng([self.seed, 21, self.fits])
        plan = self._plan(patches, epochs, examples_per_patch, rng)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**31 - 1)))
            losses, fovs = self._train(plan, rng, progress, max_steps)
        self.fits += 1
        return FitResult(
            adapter=self.adapter,
            steps=len(losses),
            fovs=fovs,
            examples=sum(1 for _, replay in plan if not replay),
            replay_examples=sum(1 for _, replay in plan if replay),
            losses=np.asarray(losses, dtype=np.float64),
            seconds=time.perf_counter() - started,
            precision=self.precision,
            edits=tuple(sorted({e for p in patches for e in p.edit_ids})),
            tasks=tuple(sorted({p.task_key for p in patches if p.task_key})),
        )

    # -- internals --------------------------------------------------------------------------------------
    def _plan(
        self, patches: list[Patch], epochs: int, per_patch: int, rng: np.random.Generator
    ) -> list[tuple[Patch, bool]]:
        plan: list[tuple[Patch, bool]] = []
        f = self.replay_fraction if len(self.replay) else 0.0
        for _ in range(epochs):
            order = [patches[int(i)] for i in rng.permutation(len(patches)) for _ in range(per_patch)]
            n_replay = round(len(order) * f / (1.0 - f))
            epoch = [(p, False) for p in order] + [(p, True) for p in self.replay.sample(n_replay, rng)]
            plan.extend(epoch[int(i)] for i in rng.permutation(len(epoch)))
        return plan

    def _centres_of(self, patch: Patch) -> _Centres:
        key = id(patch)
        if key not in self._centres:
            self._centres[key] = _Centres(patch, self._radius, self.centre_sampling)
        return self._centres[key]

    def _examples(self, plan: list[tuple[Patch, bool]], rng: np.random.Generator):  # type: ignore[no-untyped-def]
        for index, (patch, _) in enumerate(plan):
            centre = self._centres_of(patch).draw(rng)
            if centre is None:
                continue
            yield _Stream.start(
                index,
                make_example(
                    patch.raw,
                    patch.labels,
                    centre,
                    self.config,
                    rng,
                    augment=self.augment,
                    isotropic=self.isotropic,
                ),
            )

    def _train(
        self, plan: list[tuple[Patch, bool]], rng: np.random.Generator, progress: bool, max_steps: int | None
    ) -> tuple[list[float], int]:
        from connectomix.progress import track

        config, device = self.config, self.device
        params = lora_parameters(self.model)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        source = self._examples(plan, rng)
        streams: list[_Stream | None] = [next(source, None) for _ in range(self.batch_size)]
        losses: list[float] = []
        fovs = 0
        expected = max(1, len(plan) * self.max_fovs // self.batch_size)
        bar = track(itertools.count(), "fitting adapter", total=expected, enabled=progress)
        self.model.train()
        try:
            for step in bar:
                if max_steps is not None and step >= max_steps:
                    break
                active: list[tuple[int, _Stream]] = []
                for b in range(self.batch_size):
                    while streams[b] is not None and streams[b].next_offset(config, self.max_fovs) is None:  # type: ignore[union-attr]
                        streams[b] = next(source, None)
                    if streams[b] is not None:
                        active.append((b, streams[b]))  # type: ignore[arg-type]
                if not active:
                    break
                image, seed, target, known = stream_batch([(plan[s.index][0], s) for _, s in active], config)
                image_t = torch.from_numpy(image[:, None]).to(device)
                seed_t = torch.from_numpy(seed[:, None]).to(device)
                target_t = torch.from_numpy(target[:, None]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    logits, log_variance = self.model.predict(image_t, seed_t)
                loss = _masked_loss(self.model, logits, log_variance, target_t, known)
                if self._reference is not None:
                    with (
                        torch.no_grad(),
                        torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"),
                    ):
                        base_logits, _ = self._reference.predict(image_t, seed_t)
                    loss = loss + self.anchor_weight * anchor_loss(logits, base_logits, target_t, known)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip is not None:
                    torch.nn.utils.clip_grad_value_(params, self.clip)
                opt.step()
                losses.append(float(loss.detach()))
                fovs += len(active)
                predicted = logits.detach().float().cpu().numpy()[:, 0]
                for (_, s), pred in zip(active, predicted, strict=True):
                    s.update(pred, config)
        finally:
            self.model.eval()
            for p in params:
                p.requires_grad_(False)
        return losses, fovs


def stream_batch(
    active: Sequence[tuple[Patch, _Stream]], config: FFNConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The current FOV of each ``(patch, stream)``: image, seed canvas and soft target (float32) and the
    *known* voxels (bool: labelled, or anywhere in a ground-truth patch), each ``(batch, z, y, x)``."""
    windows = [s.window(config) for _, s in active]
    image = np.stack([s.example.image[w] for (_, s), w in zip(active, windows, strict=True)])
    canvas = np.stack([s.canvas[w] for (_, s), w in zip(active, windows, strict=True)])
    target = np.stack([s.example.target[w] for (_, s), w in zip(active, windows, strict=True)])
    known = np.stack(
        [
            (s.example.labels[w] != 0) | (p.source == "ground-truth")
            for (p, s), w in zip(active, windows, strict=True)
        ]
    )
    return image, canvas, target, known


def anchor_loss(
    logits: torch.Tensor, base_logits: torch.Tensor, target: torch.Tensor, known: np.ndarray
) -> torch.Tensor:
    """Mean squared logit difference ``(logits - base_logits)²`` (logit units²) over the ``known`` voxels
    (bool, ``(batch, z, y, x)``) where the base is right: ``base_logits > 0`` exactly where
    ``target > 0.5``. Zero (with a gradient) when there is no such voxel. Tensors are
    ``(batch, 1, z, y, x)``."""
    right = (base_logits.float() > 0) == (target > 0.5)
    mask = right & torch.from_numpy(known[:, None]).to(target.device)
    squared = (logits.float() - base_logits.float()) ** 2
    return (squared * mask).sum() / mask.sum().clamp_min(1)


def _masked_loss(
    model: FFNModel,
    logits: torch.Tensor,
    log_variance: torch.Tensor | None,
    target: torch.Tensor,
    known: np.ndarray,
) -> torch.Tensor:
    """The FFN training loss (:func:`~connectomix.segment.training._loss`) averaged over the ``known`` voxels
    only (bool, ``(batch, z, y, x)``); the plain loss when every voxel is known."""
    if known.all():
        return _loss(model, logits, log_variance, target)[0]
    weight = torch.from_numpy(known[:, None].astype(np.float32)).to(target.device)
    if model.has_uncertainty and log_variance is not None:
        from connectomix.segment.inception import heteroscedastic_bce

        per_voxel = heteroscedastic_bce(logits, log_variance, target, reduction="none")
    else:
        per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), target, reduction="none"
        )
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0)


__all__ = ["ContinualLearner", "FitResult", "anchor_loss", "default_lora_config"]
