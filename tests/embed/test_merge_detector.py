"""The fine-tuned merge detector: it learns what marks a merged cutout, leaves its source encoder alone,
scores segments as a merge head does, and refuses unusable training data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectomix.embed.evaluate import roc_auc
from connectomix.embed.merge_detector import DetectorTraining, fine_tune_detector
from connectomix.embed.model import EncoderConfig
from connectomix.embed.records import EmbeddingTable
from connectomix.embed.train import build_encoder
from connectomix.errors import InputError

TINY = EncoderConfig(input_size_zyx=(17, 17, 17), channels=(4, 8, 8, 8))


pytestmark = pytest.mark.usefixtures("one_thread")


def _cutouts(rng: np.random.Generator, n: int, merged: bool) -> np.ndarray:
    """A bright tube along x; a merged cutout has a second tube touching it across a dark membrane (the
    plane y = 8), a true one has the second tube a few voxels away, outside the mask."""
    x = np.zeros((n, 1, 17, 17, 17), np.float32)
    zz, yy = np.meshgrid(np.arange(17), np.arange(17), indexing="ij")
    for i in range(n):
        z0 = rng.integers(6, 11)
        first = (zz - z0) ** 2 + (yy - 5) ** 2 < 9
        x[i, 0][first] = 0.7
        if merged:
            second = (zz - z0) ** 2 + (yy - 11) ** 2 < 9
            x[i, 0][second] = 0.7
            x[i, 0, :, 8, :] = np.where(x[i, 0, :, 8, :] > 0, 0.15, 0.0)
        x[i] += rng.normal(0, 0.05, size=x[i].shape).astype(np.float32)
    return x


def test_detector_learns_the_merge_and_leaves_the_encoder_untouched():
    rng = np.random.default_rng(0)
    encoder = build_encoder(TINY, 0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = np.concatenate([_cutouts(rng, 96, True), _cutouts(rng, 96, False)])
    y = np.r_[np.ones(96), np.zeros(96)].astype(np.float32)
    settings = DetectorTraining(epochs=8, batch_size=16, lr=1e-3, seed=1)
    fit = fine_tune_detector(encoder, x, y, settings)
    assert len(fit.losses) == 8 and fit.losses[-1] < fit.losses[0]
    assert (fit.n_positive, fit.n_negative) == (96, 96)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    test_merged, test_true = _cutouts(rng, 20, True), _cutouts(rng, 20, False)
    with torch.no_grad():
        logit_merged = fit.detector(torch.from_numpy(test_merged)).numpy()
        logit_true = fit.detector(torch.from_numpy(test_true)).numpy()
    assert roc_auc(logit_merged, logit_true) > 0.9
    # scores of a table of the detector's own embeddings: one per segment, the largest node probability
    with torch.no_grad():
        emb = fit.detector.encoder(torch.from_numpy(np.concatenate([test_merged, test_true]))).numpy()
    ids = np.repeat(np.arange(1, 9, dtype=np.uint64), 5)
    table = EmbeddingTable(ids, np.arange(40), rng.uniform(0, 50, (40, 3)), emb.astype(np.float32))
    scores = fit.detector.scores(table, min_nodes=5)
    probability = fit.detector.node_probabilities(table)
    assert [s.segment_id for s in scores] == list(range(1, 9))
    largest = [probability[5 * k : 5 * k + 5].max() for k in range(8)]
    assert [s.score for s in scores] == pytest.approx(largest)
    assert np.mean([s.score for s in scores[:4]]) > np.mean([s.score for s in scores[4:]])


def test_detector_refuses_one_class_or_mismatched_training_data():
    encoder = build_encoder(TINY, 0)
    x = np.zeros((4, 1, 17, 17, 17), np.float32)
    with pytest.raises(InputError, match="both merge"):
        fine_tune_detector(encoder, x, np.zeros(4, np.float32))
    with pytest.raises(InputError, match="cutouts for"):
        fine_tune_detector(encoder, x, np.ones(3, np.float32))
    with pytest.raises(InputError, match="near_nm"):
        DetectorTraining(near_nm=2000.0, far_nm=1000.0)
    with pytest.raises(InputError, match="epochs"):
        DetectorTraining(epochs=0)
