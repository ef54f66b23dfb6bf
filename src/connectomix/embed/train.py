"""Contrastive training of the SegCLR encoder (NT-Xent on positive skeleton-node pairs), resumable.

One step draws ``batch_pairs`` positive pairs (:func:`~connectomix.embed.pairs.sample_pairs`) from the
training volumes, cuts two augmented views of each (:mod:`connectomix.embed.augment`: the shift moves the
cutout centre, then grey-level change, pooling, flips and axis permutation), runs the encoder and the
projection head on the ``2 · batch_pairs`` cutouts and minimises NT-Xent (SimCLR): with ``z`` the
L2-normalised projections and τ the temperature (0.1),
``loss = mean_i −log( exp(z_i·z_j(i)/τ) / Σ_{k≠i} exp(z_i·z_k/τ) )`` where ``j(i)`` is the other view of
``i``'s pair; every other cutout of the batch is a negative.

Determinism and resuming: the model is initialised from ``torch.manual_seed(seed)``; step ``k`` draws all its
randomness from ``numpy.random.default_rng([seed, k])`` (counter-based), so a checkpoint needs only the
weights (with BatchNorm statistics), the optimiser state and the step to continue exactly; it also stores
torch's RNG state (restored on resume) and the losses. Checkpoints ``step-NNNNNNNN/`` hold
``model.safetensors`` and ``state.pt``, written to a temporary folder and renamed; a rerun with the same
``checkpoint_dir`` continues from the newest one. Same inputs, seed and thread count (fp32) give the same
weights, interrupted or not.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from connectomix.checkpoints import (
    load_optimizer_state,
    read_checkpoint,
    resume_source,
    write_checkpoint,
)
from connectomix.embed.augment import (
    Augmentation,
    flip_and_permute,
    grey_level,
    permutable_axes,
    random_shifts,
)
from connectomix.embed.cutouts import compose, read_sources
from connectomix.embed.model import EncoderConfig, SegCLREncoder, load_state, save_encoder
from connectomix.embed.pairs import DEFAULT_MIN_VOXELS, SkeletonGraph, sample_pairs, skeletonize_segments
from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.segment.precision import Precision, resolve_precision
from connectomix.volume.base import Volume
from connectomix.volume.box import Box

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "connectomix-segclr-train/1"
#: Maximum path distance between the two nodes of a positive pair (SegCLR used a few µm on H01).
DEFAULT_MAX_PAIR_DISTANCE_NM = 1000.0


@dataclass(frozen=True)
class TrainingVolume:
    """One training region: EM and labels (volumes of one shape), the box cutouts may see (None: all of
    it), and the skeletons of its segments."""

    name: str
    raw: Volume
    labels: Volume
    graph: SkeletonGraph
    limit: Box | None = None

    @classmethod
    def prepare(
        cls,
        name: str,
        raw: Volume,
        labels: Volume,
        *,
        box: Box | None = None,
        min_voxels: int = DEFAULT_MIN_VOXELS,
        skeleton_params: dict[str, Any] | None = None,
    ) -> TrainingVolume:
        """Skeletonise the segments of ``labels`` inside ``box`` (default: everything); cutouts will be
        confined to ``box`` (zero outside it), so a held-out part of the volume is never seen."""
        if raw.shape != labels.shape:
            raise InputError(
                f"{name}: EM {raw.shape} and labels {labels.shape} must have one (z, y, x) shape"
            )
        graph = skeletonize_segments(labels, box=box, min_voxels=min_voxels, skeleton_params=skeleton_params)
        if graph.n_nodes == 0:
            raise InputError(f"{name}: no segment of at least {min_voxels} voxels to train on")
        return cls(name, raw, labels, graph, None if box is None else box.intersect(labels.bounds))


@dataclass
class TrainResult:
    """The trained model and what happened: total steps, per-step losses, where the last checkpoint is."""

    model: SegCLREncoder
    step: int
    losses: np.ndarray
    seconds: float
    resumed_from: int | None = None
    checkpoint: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def nt_xent(projections: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent of ``(2n, d)`` projections whose rows ``i`` and ``i + n`` are the two views of pair ``i``."""
    if projections.ndim != 2 or projections.shape[0] % 2 or projections.shape[0] < 2:
        raise InputError(f"NT-Xent needs (2n, d) projections, got {tuple(projections.shape)}")
    z = functional.normalize(projections.float(), dim=1)
    n = z.shape[0] // 2
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return functional.cross_entropy(logits, targets)


class _Batches:
    """Step ``k``'s batch of ``2 · batch_pairs`` augmented cutouts, from ``default_rng([seed, k])``."""

    def __init__(
        self,
        volumes: Sequence[TrainingVolume],
        config: EncoderConfig,
        *,
        batch_pairs: int,
        max_distance_nm: float,
        augmentation: Augmentation,
        seed: int,
    ) -> None:
        self.volumes, self.config, self.batch_pairs = list(volumes), config, batch_pairs
        self.max_distance_nm, self.aug, self.seed = max_distance_nm, augmentation, seed
        self.axes = [
            permutable_axes(config, v.graph.resolution_nm_zyx) if augmentation.permute else ()
            for v in self.volumes
        ]
        nodes = np.array([v.graph.n_nodes for v in self.volumes], dtype=np.float64)
        self.volume_weights = nodes / nodes.sum()

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        which = rng.choice(len(self.volumes), size=self.batch_pairs, p=self.volume_weights)
        views: list[np.ndarray] = [np.empty(0)] * (2 * self.batch_pairs)
        for v in range(len(self.volumes)):
            slots = np.flatnonzero(which == v)
            if len(slots) == 0:
                continue
            volume = self.volumes[v]
            pairs = sample_pairs(volume.graph, len(slots), rng, max_distance_nm=self.max_distance_nm)
            for view, nodes in enumerate((pairs.a, pairs.b)):
                centres = volume.graph.nodes_zyx[nodes] + random_shifts(
                    rng, len(nodes), self.aug.shift_voxels
                )
                ids = volume.graph.node_segment_ids[nodes]
                em, mask = read_sources(
                    volume.raw, volume.labels, centres, ids, self.config.source_size_zyx, limit=volume.limit
                )
                if self.aug.grey:
                    em = grey_level(
                        em,
                        rng,
                        scale=self.aug.grey_scale,
                        shift=self.aug.grey_shift,
                        gamma_log2=self.aug.gamma_log2,
                    )
                cutouts = flip_and_permute(
                    compose(em, mask, self.config), rng, flips=self.aug.flips, axes=self.axes[v]
                )
                for slot, cutout in zip(slots, cutouts, strict=True):
                    views[slot + view * self.batch_pairs] = cutout
        return np.stack(views)


def build_encoder(config: EncoderConfig, seed: int) -> SegCLREncoder:
    """A freshly initialised encoder; the same ``seed`` gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return SegCLREncoder(config)


def train_encoder(
    volumes: Sequence[TrainingVolume],
    config: EncoderConfig | None = None,
    *,
    model: SegCLREncoder | None = None,
    steps: int = 1000,
    batch_pairs: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    temperature: float = 0.1,
    max_distance_nm: float = DEFAULT_MAX_PAIR_DISTANCE_NM,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    resume: bool | Path | str = True,
    precision: Precision = "fp32",
    log_every: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train an encoder until it has done ``steps`` optimiser steps in all (counting resumed ones).

    Parameters
    ----------
    volumes
        Training regions (:meth:`TrainingVolume.prepare`); pairs are drawn from them in proportion to their
        skeleton nodes.
    config, model
        The architecture (a fresh model from ``seed``), or a model to fine-tune (its config is used).
    steps, batch_pairs
        Total optimiser steps; pairs per step (the batch holds twice as many cutouts).
    lr, weight_decay
        AdamW hyper-parameters.
    temperature
        NT-Xent temperature (SegCLR: 0.1).
    max_distance_nm
        Maximum path distance along the skeleton between the two nodes of a positive pair, nm.
    augmentation
        Which augmentations (default: all of SegCLR's, :class:`Augmentation`).
    seed
        Seed of the initialisation and of every random choice.
    checkpoint_dir, checkpoint_every, keep_checkpoints, resume
        Checkpoints every ``checkpoint_every`` steps and at the end; only the newest ``keep_checkpoints``
        are kept. ``resume``: True continues from the newest checkpoint in ``checkpoint_dir`` if any; a path
        continues from that checkpoint folder; False starts afresh.
    precision
        ``fp32`` (default, bit-reproducible), ``bf16`` (autocast) or ``auto``.
    log_every, progress
        Log the mean loss every ``log_every`` steps (INFO); a progress bar on a terminal.
    """
    if not volumes:
        raise InputError("no training volumes")
    if model is None:
        if config is None:
            raise InputError("pass a config or a model to train")
        model = build_encoder(config, seed)
    config = model.config
    for name, value in (
        ("steps", steps),
        ("batch_pairs", batch_pairs),
        ("checkpoint_every", checkpoint_every),
    ):
        if value < (0 if name == "steps" else 1):
            raise InputError(f"{name} must be ≥ {0 if name == 'steps' else 1}, got {value}")
    if batch_pairs < 2:
        raise InputError(f"batch_pairs must be ≥ 2 (NT-Xent needs negatives), got {batch_pairs}")
    if not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")
    augmentation = augmentation or Augmentation()
    precision = resolve_precision(precision)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = {
        "batch_pairs": batch_pairs,
        "seed": seed,
        "temperature": temperature,
        "max_distance_nm": max_distance_nm,
        "augmentation": augmentation.to_dict(),
        "volumes": [v.name for v in volumes],
    }
    model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batches = _Batches(
        volumes,
        config,
        batch_pairs=batch_pairs,
        max_distance_nm=max_distance_nm,
        augmentation=augmentation,
        seed=seed,
    )
    step, losses, resumed_from = 0, [], None
    source = resume_source(ckpt_dir, resume)
    if source is not None:
        state = load_checkpoint(source, model, opt, meta)
        step, losses, resumed_from = (
            int(state["step"]),
            [float(v) for v in state["losses"].tolist()],
            int(state["step"]),
        )
        torch.set_rng_state(state["torch_rng"])
        for group in opt.param_groups:  # this run's hyper-parameters, not the checkpoint's
            group["lr"], group["weight_decay"] = lr, weight_decay
        log.info("resumed SegCLR training from %s at step %d", source, step)

    started = time.perf_counter()
    last: Path | None = None
    model.train()
    try:
        todo = range(step + 1, steps + 1)
        for step in track(todo, "training SegCLR encoder", total=len(todo), enabled=progress):
            batch = torch.from_numpy(batches.batch(step)).contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                projections = model.project(model(batch))
            loss = nt_xent(projections, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if log_every and step % log_every == 0:
                log.info("step %d: NT-Xent %.4f", step, float(np.mean(losses[-log_every:])))
            if ckpt_dir is not None and (step % checkpoint_every == 0 or step == steps):
                last = save_checkpoint(
                    ckpt_dir, model, opt, step=step, losses=losses, meta=meta, keep=keep_checkpoints
                )
    finally:
        model.eval()
    return TrainResult(
        model=model,
        step=len(losses),
        losses=np.asarray(losses, dtype=np.float64),
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
        checkpoint=last,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------
def save_checkpoint(
    checkpoint_dir: Path,
    model: SegCLREncoder,
    opt: torch.optim.Optimizer,
    *,
    step: int,
    losses: list[float],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``checkpoint_dir/step-NNNNNNNN/`` (``model.safetensors`` + ``state.pt``) atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": model.config.to_json(),
        "meta": json.dumps(meta, sort_keys=True),
        "optimizer": opt.state_dict(),
        "losses": torch.tensor(losses, dtype=torch.float64),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": f"default_rng([seed, step]) for step > {step}",
    }
    return write_checkpoint(
        checkpoint_dir,
        step,
        lambda path: save_encoder(model, path, metadata={"step": str(step)}),
        state,
        keep=keep,
    )


def load_checkpoint(
    path: Path | str,
    model: SegCLREncoder,
    opt: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a training checkpoint folder into ``model`` (and ``opt``); return its state dict.

    :class:`NotFoundError` when the folder is missing, :class:`CorruptDataError` when a file is missing or
    unreadable, :class:`InputError` when it belongs to another model config or training setup.
    """
    state, tensors = read_checkpoint(
        path, format_tag=CHECKPOINT_FORMAT, what="SegCLR", config_json=model.config.to_json(), meta=meta
    )
    load_state(model, tensors, source=str(Path(path) / "model.safetensors"))
    if opt is not None:
        load_optimizer_state(path, opt, state)
    return state
