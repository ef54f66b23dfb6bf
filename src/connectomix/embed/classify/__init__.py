"""Classifiers on embeddings (torch): a residual MLP and an SNGP classifier with out-of-distribution scores,
plus calibration metrics.

- :class:`EmbeddingClassifier` / :class:`ClassifierConfig` (``classifier``): fit/predict/save/load.
- ``ood``: variance-adjusted logits, Dempster–Shafer uncertainty, AUROC.
- ``calibration``: expected calibration error and reliability-diagram bins.
"""

from connectomix.embed.classify.calibration import (
    ReliabilityBins,
    expected_calibration_error,
    reliability_bins,
)
from connectomix.embed.classify.classifier import ClassifierConfig, EmbeddingClassifier, Prediction
from connectomix.embed.classify.ood import (
    MEAN_FIELD_FACTOR,
    auroc,
    dempster_shafer_uncertainty,
    max_probability_uncertainty,
    variance_adjusted_logits,
)

__all__ = [
    "MEAN_FIELD_FACTOR",
    "ClassifierConfig",
    "EmbeddingClassifier",
    "Prediction",
    "ReliabilityBins",
    "auroc",
    "dempster_shafer_uncertainty",
    "expected_calibration_error",
    "max_probability_uncertainty",
    "reliability_bins",
    "variance_adjusted_logits",
]
