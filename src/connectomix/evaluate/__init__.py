"""Segmentation metrics: contingency table, VI (split/merge, bits), ARAND, split/merge error lists, ERL (nm).

>>> from connectomix.evaluate import evaluate
>>> scores = evaluate(seg, gt)  # doctest: +SKIP
>>> scores.vi_split, scores.vi_merge, scores.arand  # doctest: +SKIP
"""

from connectomix.evaluate.contingency import DEFAULT_BLOCK_SHAPE, Contingency, contingency
from connectomix.evaluate.erl import (
    DEFAULT_MERGE_THRESHOLD_NODES,
    DEFAULT_SKELETON_PARAMS,
    DEFAULT_TEASAR_PARAMS,
    EDGE_CLASSES,
    ERLResult,
    Skeletons,
    classify_edges,
    erl_from_skeletons,
    expected_run_length,
    skeletonize,
)
from connectomix.evaluate.metrics import (
    DEFAULT_MIN_OVERLAP,
    Scores,
    adapted_rand,
    evaluate,
    merging_segments,
    scores_from_table,
    split_bodies,
    variation_of_information,
)
from connectomix.evaluate.perturb import (
    InjectedError,
    PerturbedSegmentation,
    error_interfaces,
    perturb_segmentation,
)

__all__ = [
    "DEFAULT_BLOCK_SHAPE",
    "DEFAULT_MERGE_THRESHOLD_NODES",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_SKELETON_PARAMS",
    "DEFAULT_TEASAR_PARAMS",
    "EDGE_CLASSES",
    "Contingency",
    "ERLResult",
    "InjectedError",
    "PerturbedSegmentation",
    "Scores",
    "Skeletons",
    "adapted_rand",
    "classify_edges",
    "contingency",
    "erl_from_skeletons",
    "error_interfaces",
    "evaluate",
    "expected_run_length",
    "merging_segments",
    "perturb_segmentation",
    "scores_from_table",
    "skeletonize",
    "split_bodies",
    "variation_of_information",
]
