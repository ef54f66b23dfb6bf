"""A merge detector fine-tuned from a SegCLR encoder: does a node's cutout show a false merge?

The frozen SegCLR embeddings hold almost no trace of a merge (:mod:`connectomix.embed.merge_signal`: on
FIB-25 a merge's two bodies lie closer in embedding space than two halves of one true body, and a head on
the frozen embeddings finds the *bodies* that get merged, not the contact). Contrastive training on true
segments never shows the encoder an object with a membrane through it, so nothing makes it keep that
evidence. The detector therefore fine-tunes a copy of a trained encoder, with a linear head on its
embedding, to the downstream task, as SegCLR's authors fine-tune for theirs:

* **training nodes** (:func:`detector_training_set`) come from a training region only: ``n_draws`` draws of
  ``n_merges`` synthetic merges (:meth:`~connectomix.embed.evaluate.Region.synthetic_merges`), each merged
  segment skeletonised and sampled every ``spacing_nm``; nodes within ``near_nm`` of the contact between
  its two bodies (:func:`~connectomix.embed.merges.contact_distances`) are positives, their cutouts cut from
  the merged segmentation; nodes farther than ``far_nm`` from it are negatives (half as many as the
  positives), and so are up to ``max_true_nodes`` nodes of the region's true bodies;
* **fine-tuning** (:func:`fine_tune_detector`): all weights, AdamW, class-balanced binary cross-entropy,
  random flips of the three axes, seeded;
* **scores**: a node's probability is the head's sigmoid on the fine-tuned embedding, a segment's the
  largest over its nodes (:meth:`MergeDetector.scores`, the same contract as
  :class:`~connectomix.embed.merges.MergeHead`, so :func:`~connectomix.embed.evaluate.evaluate_encoders`
  and :func:`~connectomix.embed.evaluate.merge_tasks` take it as they take a head).

Cutouts are ``(N, C, z, y, x)`` float32 as :func:`~connectomix.embed.cutouts.read_cutouts` makes them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from connectomix.embed.cutouts import read_cutouts
from connectomix.embed.evaluate import MergeScore, Region
from connectomix.embed.infer import sample_nodes
from connectomix.embed.merges import contact_distances, max_probability_scores
from connectomix.embed.model import SegCLREncoder
from connectomix.embed.pairs import SkeletonGraph, skeletonize_segments
from connectomix.embed.records import EmbeddingTable
from connectomix.errors import InputError
from connectomix.volume.base import Volume

READ_BATCH = 64  # cutouts read at once: a lite source cutout is 132³ voxels, so this bounds memory


@dataclass(frozen=True)
class DetectorTraining:
    """How the training nodes are drawn and the detector fine-tuned (see the module docstring)."""

    n_draws: int = 4
    n_merges: int = 40
    near_nm: float = 400.0
    far_nm: float = 1300.0
    max_true_nodes: int = 2500
    spacing_nm: float = 100.0
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_draws", "n_merges", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.near_nm <= self.far_nm:
            raise InputError(f"need 0 < near_nm <= far_nm, got {self.near_nm} and {self.far_nm}")


class MergeDetector(nn.Module):
    """A copy of a SegCLR encoder and a linear head on its embedding: ``forward`` gives one merge logit per
    cutout, ``(N,)``."""

    def __init__(self, encoder: SegCLREncoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.head = nn.Linear(encoder.config.embedding_dim, 1)

    def forward(self, cutouts: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(cutouts)).squeeze(1)

    def node_probabilities(self, table: EmbeddingTable) -> np.ndarray:
        """``(N,)`` merge probability of each row of ``table`` (embeddings of :attr:`encoder`)."""
        if len(table) == 0:
            return np.zeros(0)
        with torch.no_grad():
            logits = self.head(torch.from_numpy(np.ascontiguousarray(table.embeddings, np.float32)))
        return torch.sigmoid(logits.squeeze(1)).numpy().astype(np.float64)

    def scores(self, table: EmbeddingTable, *, min_nodes: int = 6, seed: int = 0) -> list[MergeScore]:
        """Per segment with at least ``min_nodes`` rows: its largest node probability."""
        return max_probability_scores(table, self.node_probabilities(table), min_nodes=min_nodes, seed=seed)


def _read(
    raw: Volume, seg: Volume, centres: np.ndarray, ids: np.ndarray, encoder: SegCLREncoder
) -> np.ndarray:
    parts = [
        read_cutouts(raw, seg, centres[i : i + READ_BATCH], ids[i : i + READ_BATCH], encoder.config)
        for i in range(0, len(ids), READ_BATCH)
    ]
    shape = (0, len(encoder.config.inputs), *encoder.config.input_size_zyx)
    return np.concatenate(parts) if parts else np.zeros(shape, np.float32)


def _nodes(graph: SkeletonGraph, spacing_nm: float) -> tuple[np.ndarray, np.ndarray]:
    chosen = sample_nodes(graph, spacing_nm)
    return graph.nodes_zyx[chosen], graph.node_segment_ids[chosen]


def detector_training_set(
    encoder: SegCLREncoder, region: Region, settings: DetectorTraining | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(cutouts (N, C, z, y, x) float32, labels (N,) float32)`` of the module docstring, from ``region``."""
    s = settings or DetectorTraining()
    rng = np.random.default_rng([s.seed, 23])
    labels = region.gt.read()
    centres, ids = _nodes(skeletonize_segments(region.gt), s.spacing_nm)
    pick = rng.choice(len(ids), size=min(len(ids), s.max_true_nodes), replace=False)
    xs = [_read(region.raw, region.gt, centres[pick], ids[pick], encoder)]
    ys = [np.zeros(len(pick), np.float32)]
    for draw in range(s.n_draws):
        merged_seg, merged = region.synthetic_merges(n_merges=s.n_merges, seed=s.seed + 2000 + draw)
        centres, ids = _nodes(skeletonize_segments(merged_seg), s.spacing_nm)
        keep = np.isin(ids, np.fromiter(merged.keys(), dtype=np.uint64))
        centres, ids = centres[keep], ids[keep]
        rows = EmbeddingTable(
            ids, np.arange(len(ids)), centres[:, ::-1].astype(np.float64), np.zeros((len(ids), 1), np.float32)
        )
        distance = contact_distances(
            rows,
            labels,
            merged,
            voxel_offset_zyx=region.gt.voxel_offset,
            resolution_nm_zyx=region.gt.resolution,
        )
        near = np.flatnonzero(distance < s.near_nm)
        far = np.flatnonzero(np.isfinite(distance) & (distance > s.far_nm))
        far = rng.choice(far, size=min(len(far), len(near) // 2), replace=False)
        for chosen, label in ((near, 1.0), (far, 0.0)):
            xs.append(_read(region.raw, merged_seg, centres[chosen], ids[chosen], encoder))
            ys.append(np.full(len(chosen), label, np.float32))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not (0 < y.sum() < len(y)):
        raise InputError(
            f"the detector needs nodes near merge contacts and others; {region.gt.url} gave "
            f"{int(y.sum())} near a contact of {len(y)}"
        )
    return x, y


@dataclass
class DetectorFit:
    """A fine-tuned detector, its mean loss per epoch and the seconds the fit took."""

    detector: MergeDetector
    losses: list[float]
    seconds: float
    n_positive: int
    n_negative: int


def fine_tune_detector(
    encoder: SegCLREncoder, cutouts: np.ndarray, labels: np.ndarray, settings: DetectorTraining | None = None
) -> DetectorFit:
    """Fine-tune a :class:`MergeDetector` (a copy of ``encoder``; the original is untouched) on labelled
    cutouts (:func:`detector_training_set`), fp32, seeded."""
    s = settings or DetectorTraining()
    if len(cutouts) != len(labels):
        raise InputError(f"{len(cutouts)} cutouts for {len(labels)} labels")
    positive = float(labels.sum())
    if not 0 < positive < len(labels):
        raise InputError("the detector needs both merge (1) and other (0) cutouts")
    rng = np.random.default_rng([s.seed, 29])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        detector = MergeDetector(encoder)
    optimiser = torch.optim.AdamW(detector.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    balance = torch.tensor((len(labels) - positive) / positive)
    started, losses = time.perf_counter(), []
    detector.train()
    try:
        for _ in range(s.epochs):
            order, epoch = rng.permutation(len(labels)), []
            for start in range(0, len(order), s.batch_size):
                rows = order[start : start + s.batch_size]
                batch = cutouts[rows]
                flip = tuple(2 + a for a in range(3) if rng.random() < 0.5)
                if flip:
                    batch = np.flip(batch, axis=flip)
                logits = detector(torch.from_numpy(np.ascontiguousarray(batch)))
                loss = functional.binary_cross_entropy_with_logits(
                    logits, torch.from_numpy(labels[rows]), pos_weight=balance
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                epoch.append(float(loss.detach()))
            losses.append(float(np.mean(epoch)))
    finally:
        detector.eval()
    return DetectorFit(
        detector, losses, time.perf_counter() - started, int(positive), int(len(labels) - positive)
    )


__all__ = ["DetectorFit", "DetectorTraining", "MergeDetector", "detector_training_set", "fine_tune_detector"]
