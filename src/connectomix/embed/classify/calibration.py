"""Calibration of a classifier's probabilities: reliability-diagram bins and expected calibration error.

Equal-width confidence bins over [0, 1] (15 by default, as in Guo et al. 2017 and the SNGP papers); a
prediction's confidence is its largest class probability, and it is correct when that class is the label.
Bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (a confidence of exactly 0 goes to the first bin).
ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from connectomix.errors import InputError


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram.

    Attributes
    ----------
    edges
        (n_bins + 1,) bin edges over [0, 1].
    counts
        (n_bins,) predictions per bin.
    confidence
        (n_bins,) mean confidence per bin (NaN where empty).
    accuracy
        (n_bins,) fraction correct per bin (NaN where empty).
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    confidence: NDArray[np.float64]
    accuracy: NDArray[np.float64]

    @property
    def ece(self) -> float:
        """Expected calibration error of these bins."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] / total * gaps))


def _confidence_and_correct(probabilities: Any, labels: Any) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    probs = np.asarray(probabilities, dtype=np.float64)
    target = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise InputError(f"probabilities must have shape (N, K) with N ≥ 1, got {probs.shape}")
    if target.shape != (probs.shape[0],) or not np.issubdtype(target.dtype, np.integer):
        raise InputError(
            f"labels must be ({probs.shape[0]},) integer class indices, got {target.dtype} {target.shape}"
        )
    if target.min() < 0 or target.max() >= probs.shape[1]:
        raise InputError(f"labels must be class indices in 0..{probs.shape[1] - 1}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise InputError("probabilities must be finite and in [0, 1]")
    return probs.max(axis=1), probs.argmax(axis=1) == target


def reliability_bins(probabilities: Any, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Reliability-diagram statistics in ``n_bins`` equal-width confidence bins.

    Parameters
    ----------
    probabilities
        (N, K) class probabilities.
    labels
        (N,) true class indices in 0..K-1.
    n_bins
        Number of equal-width bins over [0, 1].
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins!r}")
    confidence, correct = _confidence_and_correct(probabilities, labels)
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_confidence, accuracy)


def expected_calibration_error(probabilities: Any, labels: Any, n_bins: int = 15) -> float:
    """ECE of (N, K) probabilities against (N,) class indices, ``n_bins`` equal-width bins (default 15)."""
    return reliability_bins(probabilities, labels, n_bins).ece
