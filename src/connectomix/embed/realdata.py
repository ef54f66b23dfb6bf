"""The real-data evaluation: train the lite encoder on gala and half of FIB-25, evaluate on the other half.

Training volumes: the two gala FIB-SEM medulla crops (``gala-train``, ``gala-test``; whole) and FIB-25
``training_sample2`` for ``z < split_z`` (cutouts are confined to that half). Evaluation: FIB-25 for
``z ≥ split_z`` (optionally a smaller ``eval_box`` inside it), read into memory so no cutout sees the
training half. Two encoders are measured on the same skeletons and nodes
(:func:`~connectomix.embed.evaluate.evaluate_encoders`): the trained one and, as the peer, **the same
network before training** (its random initialisation, same seed). Merge scores of the trained encoder
become ``split`` tasks (:func:`~connectomix.embed.evaluate.merge_tasks`) above the threshold that flags
``flag_fpr`` of the true bodies **of the training half** (chosen before the evaluation half is looked at, as
a lab would set it on its own validated bodies).

With ``merge_head`` the trained encoder also gets a supervised merge head
(:class:`~connectomix.embed.merges.MergeHead`), trained on synthetic merges of the **training** half of
FIB-25 only (``head_merge_seeds`` disjoint-pair draws of ``n_merges`` merges each, plus its true bodies) and
scored on the evaluation half like the 2-means R² (``results.trained.merge_head``).

With ``merge_detector`` a copy of the trained encoder is also fine-tuned into a
:class:`~connectomix.embed.merge_detector.MergeDetector` on synthetic merges of the training half only
(``detector`` settings) and evaluated as a third encoder with its own head
(``results["merge-detector"]``: its retrieval, and its merge AUCs under ``merge_head``).

:func:`run_real_evaluation` returns a JSON-able dict; the bench (``bench/embed.py``) runs it at full size and
``tests/embed/test_evaluate_real.py`` runs a tiny version.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from connectomix.embed.evaluate import (
    Region,
    embedding_stats,
    evaluate_encoders,
    merge_scores,
    merge_tasks,
)
from connectomix.embed.infer import Embedder
from connectomix.embed.merge_detector import DetectorTraining, detector_training_set, fine_tune_detector
from connectomix.embed.merges import MergeHead, contact_distances
from connectomix.embed.model import EncoderConfig, SegCLREncoder, preset
from connectomix.embed.pairs import skeletonize_segments
from connectomix.embed.records import EmbeddingTable
from connectomix.embed.train import DEFAULT_MAX_PAIR_DISTANCE_NM, TrainingVolume, build_encoder, train_encoder
from connectomix.errors import InputError
from connectomix.flag.tasks import Task
from connectomix.volume import Box, open_volume

FIB25 = "fib25-ts2"
GALA = ("gala-train", "gala-test")


@dataclass(frozen=True)
class RealEvaluation:
    """Settings of one run (defaults: the full benchmark). Boxes are (z, y, x) voxels of FIB-25."""

    config: EncoderConfig = field(default_factory=lambda: preset("lite"))
    steps: int = 800
    batch_pairs: int = 16
    lr: float = 1e-3
    max_distance_nm: float = DEFAULT_MAX_PAIR_DISTANCE_NM
    split_z: int = 125
    gala: tuple[str, ...] = GALA
    train_box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # default: z < split_z
    eval_box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # default: z ≥ split_z
    spacing_nm: float = 100.0
    exclude_nm: float = 1000.0
    n_merges: int = 40
    min_nodes: int = 6
    flag_fpr: float = 0.1
    merge_head: bool = True
    head_merge_seeds: int = 2
    merge_detector: bool = True
    detector: DetectorTraining = field(default_factory=DetectorTraining)
    seed: int = 0
    precision: str = "auto"

    def boxes(self) -> tuple[Box, Box]:
        full = open_volume(f"{FIB25}/gt").bounds
        train = Box(*self.train_box) if self.train_box else Box((0, 0, 0), (self.split_z, *full.stop[1:]))
        test = Box(*self.eval_box) if self.eval_box else Box((self.split_z, 0, 0), full.stop)
        if train.stop[0] > self.split_z or test.start[0] < self.split_z:
            raise InputError(
                f"training box {train} and evaluation box {test} must lie either side of z = {self.split_z}"
            )
        return train, test


def embed_true_bodies(model: SegCLREncoder, region: Region, s: RealEvaluation) -> EmbeddingTable:
    """Embeddings of every ground-truth body of ``region`` (skeleton nodes every ``s.spacing_nm``)."""
    embed = Embedder(model, region.raw, region.gt, precision=s.precision)  # type: ignore[arg-type]
    return embed.embed_graph(skeletonize_segments(region.gt), spacing_nm=s.spacing_nm)


def flag_threshold(true_table: EmbeddingTable, s: RealEvaluation) -> float:
    """The 2-means R² above which a fraction ``s.flag_fpr`` of the bodies in ``true_table`` lie (0 when it
    has no body of ``s.min_nodes`` nodes): the split-task threshold."""
    scores = merge_scores(
        true_table, min_nodes=s.min_nodes, seed=s.seed, standardise=embedding_stats(true_table)
    )
    return float(np.quantile([t.score for t in scores], 1 - s.flag_fpr)) if scores else 0.0


def train_merge_head(
    model: SegCLREncoder, region: Region, s: RealEvaluation, true_table: EmbeddingTable | None = None
) -> MergeHead:
    """A :class:`MergeHead` for ``model`` from ``region`` (the training half): its true bodies (``true_table``
    if already embedded) and ``s.head_merge_seeds`` draws of ``s.n_merges`` synthetic merges, embedded as
    :func:`evaluate_encoders` embeds the evaluation half."""
    true_tables = [true_table if true_table is not None else embed_true_bodies(model, region, s)]
    merged_tables, distances = [], []
    labels = region.gt.read()
    for k in range(s.head_merge_seeds):
        merged_seg, merged = region.synthetic_merges(n_merges=s.n_merges, seed=s.seed + 1000 + k)
        merged_embed = Embedder(model, region.raw, merged_seg, precision=s.precision)  # type: ignore[arg-type]
        graph = skeletonize_segments(merged_seg)
        table = merged_embed.embed_graph(graph, spacing_nm=s.spacing_nm, segment_ids=merged.keys())
        merged_tables.append(table)
        distances.append(
            contact_distances(
                table,
                labels,
                merged,
                voxel_offset_zyx=region.gt.voxel_offset,
                resolution_nm_zyx=region.gt.resolution,
            )
        )
    return MergeHead.fit(true_tables, merged_tables, distances, seed=s.seed)


def run_real_evaluation(
    settings: RealEvaluation | None = None,
    *,
    checkpoint_dir: Path | str | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], list[Task]]:
    """Train, evaluate the trained encoder and its initialisation, flag merges. Returns (report, tasks)."""
    s = settings or RealEvaluation()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    train_box, test_box = s.boxes()
    raw, gt = open_volume(f"{FIB25}/raw"), open_volume(f"{FIB25}/gt")
    volumes = [
        TrainingVolume.prepare(name, open_volume(f"{name}/raw"), open_volume(f"{name}/gt")) for name in s.gala
    ]
    volumes.append(TrainingVolume.prepare(f"{FIB25}[z<{s.split_z}]", raw, gt, box=train_box))
    seconds["prepare"] = time.perf_counter() - started

    initial = build_encoder(s.config, s.seed)
    result = train_encoder(
        volumes,
        model=build_encoder(s.config, s.seed),
        steps=s.steps,
        batch_pairs=s.batch_pairs,
        lr=s.lr,
        max_distance_nm=s.max_distance_nm,
        seed=s.seed,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    seconds["train"] = result.seconds

    heads = {}
    t0 = time.perf_counter()
    train_region = Region.cut(raw, gt, train_box)
    train_true = embed_true_bodies(result.model, train_region, s)
    threshold = flag_threshold(train_true, s)  # set on the training half, before the evaluation half is seen
    seconds["threshold"] = time.perf_counter() - t0
    if s.merge_head:
        t0 = time.perf_counter()
        heads["trained"] = train_merge_head(result.model, train_region, s, true_table=train_true)
        seconds["merge_head"] = time.perf_counter() - t0

    models = {"random-init": initial, "trained": result.model}
    detector_report = None
    if s.merge_detector:
        t0 = time.perf_counter()
        cutouts, labels = detector_training_set(result.model, train_region, s.detector)
        fit = fine_tune_detector(result.model, cutouts, labels, s.detector)
        del cutouts
        models["merge-detector"], heads["merge-detector"] = fit.detector.encoder, fit.detector
        seconds["merge_detector"] = time.perf_counter() - t0
        detector_report = {
            "losses": fit.losses,
            "fit_seconds": fit.seconds,
            "n_positive": fit.n_positive,
            "n_negative": fit.n_negative,
        }

    t0 = time.perf_counter()
    region = Region.cut(raw, gt, test_box)
    results = evaluate_encoders(
        models,
        region,
        spacing_nm=s.spacing_nm,
        exclude_nm=s.exclude_nm,
        n_merges=s.n_merges,
        min_nodes=s.min_nodes,
        precision=s.precision,
        seed=s.seed,
        heads=heads,
    )
    seconds["evaluate"] = time.perf_counter() - t0

    trained = results["trained"]
    merged_scores, merged_table = trained.pop("_merge")
    true_scores = trained.pop("_true_scores")
    flagged_true = sum(t.score >= threshold for t in true_scores)
    tasks = merge_tasks(merged_scores, merged_table, region.gt.resolution_xyz, threshold=threshold)
    for item in results.values():
        item.pop("_merge", None)
        item.pop("_true_scores", None)
        item.pop("_tables", None)
        item.pop("_head", None)
    seconds["total"] = time.perf_counter() - started
    report = {
        "settings": {**asdict(replace(s, config=None)), "config": asdict(s.config)},  # type: ignore[arg-type]
        "train_boxes": {"fib25_zyx": [list(train_box.start), list(train_box.stop)], "gala": list(s.gala)},
        "eval_box_zyx": [list(test_box.start), list(test_box.stop)],
        "training": {
            "steps": result.step,
            "loss_first_50": float(np.mean(result.losses[:50])) if len(result.losses) else None,
            "loss_last_50": float(np.mean(result.losses[-50:])) if len(result.losses) else None,
            "nodes": {v.name: v.graph.n_nodes for v in volumes},
        },
        "results": results,
        "merge_detector": detector_report,
        "flags": {
            "threshold_r2": threshold,
            "threshold_from": "true bodies of the training half",
            "false_positive_rate_target": s.flag_fpr,
            "false_positive_rate_evaluation": flagged_true / len(true_scores) if true_scores else None,
            "merged_flagged": len(tasks),
            "merged_total": len(merged_scores),
        },
        "seconds": seconds,
    }
    return report, tasks
