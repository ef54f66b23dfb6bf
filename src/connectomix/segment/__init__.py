"""Segmentation.

* ``baseline``: boundary map → seeded watershed → agglomeration → size filter (no torch needed);
* ``models`` (``ConvStack3D``, ``FFNConfig``, model files), ``inception`` (``InceptionFFN`` with an
  uncertainty head), ``tf_import`` (Google checkpoints), ``seeds``/``canvas``/``inference`` (flood filling),
  ``consensus``, ``blockwise``/``reconcile``/``ledger`` (volumes of any size), ``training``.

The torch-based modules are imported from their own paths so that ``import connectomix.segment`` stays light.
"""

from connectomix.segment.baseline import BaselineParams, BaselineResult, boundary_from_raw, segment_baseline

__all__ = ["BaselineParams", "BaselineResult", "boundary_from_raw", "segment_baseline"]
