"""Out-of-distribution scores from logits and predictive variance (SNGP), and AUROC to measure them.

- Mean-field variance adjustment: ``logit / sqrt(1 + λ·var)`` with λ = π/8 (the probit approximation of
  the softmax under a Gaussian posterior over logits), per sample.
- Dempster–Shafer uncertainty: ``K / (K + Σ_k exp(logit_k))`` — near 1 when all logits are small (no class
  has evidence), near 0 when one class has strong evidence. Computed as ``sigmoid(log K − logsumexp)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, logsumexp, softmax
from scipy.stats import rankdata

from connectomix.errors import InputError

#: λ of the mean-field approximation.
MEAN_FIELD_FACTOR = math.pi / 8


def variance_adjusted_logits(
    logits: Any, variance: Any, factor: float = MEAN_FIELD_FACTOR
) -> NDArray[np.float64]:
    """``logits / sqrt(1 + factor · variance)``: (N, K) logits, (N,) predictive variances."""
    values = np.asarray(logits, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    if values.ndim != 2 or var.shape != (values.shape[0],):
        raise InputError(f"logits must be (N, K) and variance (N,), got {values.shape} and {var.shape}")
    if np.any(var < 0):
        raise InputError("predictive variance must be non-negative")
    return values / np.sqrt(1.0 + factor * var)[:, None]


def dempster_shafer_uncertainty(logits: Any) -> NDArray[np.float64]:
    """``K / (K + Σ exp(logits))`` per row of (N, K) logits, in (0, 1); higher = more out-of-distribution."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 1:
        raise InputError(f"logits must have shape (N, K), got {values.shape}")
    return expit(math.log(values.shape[1]) - logsumexp(values, axis=1))


def max_probability_uncertainty(logits: Any) -> NDArray[np.float64]:
    """``1 − max softmax(logits)`` per row: the classic baseline OOD score."""
    return 1.0 - softmax(np.asarray(logits, dtype=np.float64), axis=1).max(axis=1)


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve for telling ``scores_out`` (positives) from ``scores_in`` by score.

    The Mann–Whitney statistic: the probability that an out-of-distribution sample scores higher than an
    in-distribution one, ties counting one half.
    """
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise InputError("auroc needs at least one in- and one out-of-distribution score")
    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[a.size :].sum() - b.size * (b.size + 1) / 2
    return float(u / (a.size * b.size))
