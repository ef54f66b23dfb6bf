"""Circuit analysis: synapse tables, connectivity graphs, motif statistics, community structure, the bundled
real connectomes, exports and reports.

Modules: :mod:`~connectomix.analyze.synapses` (tables, attach to a segmentation, remap through the edit
log), :mod:`~connectomix.analyze.lookup` (ids and sizes from a volume), :mod:`~connectomix.analyze.graph`,
:mod:`~connectomix.analyze.export`, :mod:`~connectomix.analyze.motifs` (dyad and triad census),
:mod:`~connectomix.analyze.nulls` and :mod:`~connectomix.analyze.significance` (null models, z-scores),
:mod:`~connectomix.analyze.community`, :mod:`~connectomix.analyze.datasets`,
:mod:`~connectomix.analyze.report`.
"""

from connectomix.analyze.graph import ConnectivityGraph, cell_type_matrix
from connectomix.analyze.motifs import TRIAD_NAMES, dyad_census, triad_census
from connectomix.analyze.significance import MotifSignificance, motif_significance

__all__ = [
    "TRIAD_NAMES",
    "ConnectivityGraph",
    "MotifSignificance",
    "cell_type_matrix",
    "dyad_census",
    "motif_significance",
    "triad_census",
]
