"""Segmentation: the baseline seeded watershed (FFN model, inference and training live beside it)."""

from connectomix.segment.baseline import BaselineParams, BaselineResult, boundary_from_raw, segment_baseline

__all__ = ["BaselineParams", "BaselineResult", "boundary_from_raw", "segment_baseline"]
