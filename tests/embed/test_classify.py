"""Embedding classifiers: OOD detection of held-out classes, SNGP distance awareness, calibration, I/O."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from connectomix.embed.classify import (
    ClassifierConfig,
    EmbeddingClassifier,
    auroc,
    dempster_shafer_uncertainty,
    expected_calibration_error,
    reliability_bins,
    variance_adjusted_logits,
)
from connectomix.embed.classify.networks import BoundedSpectralNorm, bounded_linear
from connectomix.errors import InputError, NotFoundError

TRAIN_CLASSES = (0, 1, 2, 3, 4)  # classes 5, 6, 7 are never seen in training


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (set before the module-scoped models are trained: results depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clusters(seed: int, n_per_class: int = 300, dim: int = 64, n_classes: int = 8):
    """Cell-type-like embeddings: per class a mean, a 6-d class-specific manifold, isotropic noise.

    Class means are N(0, 0.3²) per dimension; within a class, 6 latent factors of spread 2 plus unit
    noise — overlapping, not separable by any single coordinate (accuracy ~0.98, not 1).
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n_classes):
        mean = rng.normal(0, 0.3, dim)
        basis = rng.normal(0, 1, (dim, 6)) / math.sqrt(6)
        latent = rng.normal(size=(n_per_class, 6)) * 2.0
        xs.append(mean + latent @ basis.T + rng.normal(0, 1.0, (n_per_class, dim)))
        ys.append(np.full(n_per_class, 10 + k))  # labels need not start at 0
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    order = rng.permutation(len(x))
    return x[order], y[order]


@pytest.fixture(scope="module")
def split():
    x, y = clusters(0)
    seen = np.isin(y, [10 + k for k in TRAIN_CLASSES])
    xi, yi, xo = x[seen], y[seen], x[~seen]
    n_train = len(xi) * 2 // 3
    return xi[:n_train], yi[:n_train], xi[n_train:], yi[n_train:], xo


@pytest.fixture(scope="module")
def sngp(split):
    x_train, y_train, *_ = split
    return EmbeddingClassifier(ClassifierConfig(kind="sngp", epochs=30, seed=0)).fit(x_train, y_train)


def test_sngp_flags_held_out_classes(split, sngp):
    _, _, x_test, y_test, x_ood = split
    inside, outside = sngp.predict(x_test), sngp.predict(x_ood)
    assert (inside.labels == y_test).mean() > 0.9
    score = auroc(inside.ood_score, outside.ood_score)
    assert score > 0.85, f"Dempster-Shafer AUROC on held-out classes {score:.3f} (measured 0.92 at seed 0)"
    np.testing.assert_allclose(inside.probabilities.sum(axis=1), 1.0, rtol=1e-9)
    assert set(np.unique(inside.labels)) <= {10, 11, 12, 13, 14}


def test_mlp_trains_and_scores(split):
    x_train, y_train, x_test, y_test, x_ood = split
    mlp = EmbeddingClassifier(ClassifierConfig(kind="mlp", epochs=30, seed=0)).fit(x_train, y_train)
    inside, outside = mlp.predict(x_test), mlp.predict(x_ood)
    assert (inside.labels == y_test).mean() > 0.9
    assert np.all(inside.variance == 0)
    assert auroc(inside.ood_score, outside.ood_score) > 0.7  # the MLP baseline: measured 0.86
    ece = expected_calibration_error(inside.probabilities, np.searchsorted(mlp.classes, y_test))
    assert 0 <= ece < 0.1


def test_sngp_variance_grows_with_distance(split, sngp):
    x_train, _, x_test, _, _ = split
    direction = np.random.default_rng(1).normal(size=x_train.shape[1])
    direction /= np.linalg.norm(direction)
    scale = float(np.linalg.norm(x_train.std(axis=0)))  # ~ the data's overall spread
    variances = [float(sngp.predict(x_test + r * scale * direction).variance.mean()) for r in (0, 0.5, 1, 2)]
    assert all(b > a for a, b in itertools.pairwise(variances)), variances
    assert (
        variances[-1] > 0.85 and variances[0] < 0.6
    )  # far away: back to the prior (1); measured 0.43 → 0.91


def test_fit_is_deterministic_and_save_load_round_trips(tmp_path, split, sngp):
    x_train, y_train, x_test, *_ = split
    again = EmbeddingClassifier(ClassifierConfig(kind="sngp", epochs=30, seed=0)).fit(x_train, y_train)
    a, b = sngp.predict(x_test), again.predict(x_test)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.variance, b.variance)
    other = EmbeddingClassifier(ClassifierConfig(kind="sngp", epochs=2, seed=1)).fit(x_train, y_train)
    assert not np.array_equal(other.predict(x_test).logits, a.logits)
    path = sngp.save(tmp_path / "clf")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = EmbeddingClassifier.load(path)
    c = loaded.predict(x_test)
    np.testing.assert_allclose(c.logits, a.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c.variance, a.variance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(c.labels, a.labels)
    with pytest.raises(InputError, match="already exists"):
        sngp.save(path)
    with pytest.raises(NotFoundError):
        EmbeddingClassifier.load(tmp_path / "nothing")


def test_bad_inputs():
    clf = EmbeddingClassifier()
    with pytest.raises(InputError, match="not trained"):
        clf.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="at least 2 classes"):
        clf.fit(np.zeros((4, 3), np.float32), np.zeros(4, int))
    with pytest.raises(InputError, match=r"labels must be \(4,\) integers"):
        clf.fit(np.zeros((4, 3), np.float32), np.zeros(3, int))


def test_ece_on_a_hand_made_example():
    # confidences 0.9, 0.9 (one right), 0.6 (right), 0.3 (wrong) in 3 classes; 5 bins of width 0.2
    probabilities = np.array(
        [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.3, 0.35, 0.35]], dtype=np.float64
    )
    probabilities[3] = [0.4, 0.3, 0.3]  # confidence 0.4 → bin (0.2, 0.4]
    labels = np.array([0, 0, 0, 1])
    # bin (0.8, 1]: 2 predictions, accuracy 0.5, confidence 0.9 → gap 0.4
    # bin (0.4, 0.6]: 1, accuracy 1, confidence 0.6 → gap 0.4; bin (0.2, 0.4]: 1, accuracy 0, conf 0.4 → 0.4
    expected = 2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.4
    assert expected_calibration_error(probabilities, labels, n_bins=5) == pytest.approx(expected)
    bins = reliability_bins(probabilities, labels, n_bins=5)
    np.testing.assert_array_equal(bins.counts, [0, 1, 1, 0, 2])
    np.testing.assert_allclose(bins.accuracy[[1, 2, 4]], [0, 1, 0.5])
    np.testing.assert_allclose(bins.confidence[[1, 2, 4]], [0.4, 0.6, 0.9])
    assert np.isnan(bins.accuracy[0])
    # perfectly calibrated: 15 default bins, confidence 0.75, 3 of 4 right
    calibrated = np.tile([[0.75, 0.25]], (4, 1))
    assert expected_calibration_error(calibrated, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    with pytest.raises(InputError, match="class indices"):
        expected_calibration_error(calibrated, np.array([0, 0, 0, 2]))


def test_ood_formulas():
    logits = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    ds = dempster_shafer_uncertainty(logits)
    assert ds[0] == pytest.approx(0.5)  # K / (K + K·e^0)
    assert ds[1] == pytest.approx(3 / (3 + math.exp(10) + 2))
    adjusted = variance_adjusted_logits(logits, np.array([0.0, 8 / math.pi]))
    np.testing.assert_allclose(adjusted[1], logits[1] / math.sqrt(2))
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and auroc([1, 1], [1, 1]) == 0.5


def test_bounded_spectral_norm_caps_the_norm():
    torch.manual_seed(0)
    layer = bounded_linear(32, 32, bound=0.95, n_power_iterations=1)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(10.0)  # σ far above the bound
    layer.train()
    for _ in range(20):
        layer(torch.zeros(1, 32))  # power iterations run in training mode
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert float(sigma) == pytest.approx(0.95, rel=1e-3)
    small = torch.eye(8) * 0.5  # already below the bound: unchanged
    assert torch.allclose(BoundedSpectralNorm(small, 0.95)(small), small)
