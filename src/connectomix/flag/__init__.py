"""Flagging: uncertainty maps and a segmentation → ranked candidate proofreading tasks.

>>> from connectomix.flag import flag_volume
>>> tasks = flag_volume(seg, prob, resolution_nm_xyz=(8, 8, 8), top_fraction=0.01)  # doctest: +SKIP
>>> tasks[0].kind, tasks[0].point_xyz, tasks[0].segment_ids  # doctest: +SKIP

Modules: ``tasks`` (the :class:`Task` record and its stable key), ``entropy`` (per-voxel uncertainty and the
top-fraction threshold), ``hotspots`` (clusters → classified, scored candidates), ``ranking`` (non-maximum
suppression, per-chunk cap), ``flagger`` (:func:`flag_volume`, chunk-wise), ``disagreement`` (a probability
map for segmentations that have none: the disagreement between the segmentation and a boundary map).
"""

from connectomix.flag.disagreement import disagreement_probability
from connectomix.flag.entropy import (
    TopFraction,
    binary_entropy,
    dequantize_probability,
    entropy_map,
    normalize_uncertainty,
    probability_as_float,
)
from connectomix.flag.flagger import flag_volume
from connectomix.flag.ranking import cap_per_chunk, chunk_of, ranked, suppress_duplicates
from connectomix.flag.tasks import KEY_QUANTUM_VOXELS, TASK_KINDS, Task, TaskKind, task_key

__all__ = [
    "KEY_QUANTUM_VOXELS",
    "TASK_KINDS",
    "Task",
    "TaskKind",
    "TopFraction",
    "binary_entropy",
    "cap_per_chunk",
    "chunk_of",
    "dequantize_probability",
    "disagreement_probability",
    "entropy_map",
    "flag_volume",
    "normalize_uncertainty",
    "probability_as_float",
    "ranked",
    "suppress_duplicates",
    "task_key",
]
