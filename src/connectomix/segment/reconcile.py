"""Global id reconciliation: one id per object across independently segmented, overlapping subvolumes.

Google's FFN segments one subvolume at a time and has no way to give an object that continues from one
subvolume into the next a single id. Here every block is segmented with context: its *core* (the blocks'
cores tile the requested box without overlap) padded by an *overlap* on each side, so neighbouring blocks
both segment the voxels around their shared face. Reconciliation then works on those shared voxels only:

1. **Pairs.** For every pair of blocks whose padded subvolumes intersect (the 26-neighbourhood on the block
   grid: faces, edges and corners) take the region both segmented, ``subvolume_A ∩ subvolume_B`` (z, y, x
   voxels), less ``border_trim`` of the overlap at each subvolume's inner border (default half: the
   compared voxels had at least half the overlap as context in both blocks).
2. **Contingency.** Count, over that region, the voxels of every pair ``(a, b)`` of a nonzero id in block A
   and a nonzero id in block B (:func:`overlap_counts`), and each id's own voxel count there (``n_a``,
   ``n_b``).
3. **Links** (:func:`match_overlap`, :class:`ReconcileParams`). Link ``(a, b)`` when
   ``n_ab ≥ min_overlap_voxels`` (default 10) and ``score ≥ min_fraction`` (default 0.5), where ``score``
   is the intersection over union within the region, ``n_ab / (n_a + n_b − n_ab)`` (``measure="iou"``,
   the default), or the overlap relative to the smaller object's extent there, ``n_ab / min(n_a, n_b)``
   (``measure="smaller"``). With IoU above one half every id links to at most one id of the neighbour,
   so reconciliation never creates a merge that neither block made (an object split in one block stays
   split). ``"smaller"`` forgives splits but propagates merges: a merged segment in one block links every
   piece it covers in the next. Measured with the baseline watershed on a synthetic 64 x 96 x 96 volume
   (overlap 16, two block shapes): IoU gave ARAND 0.17-0.22 against ground truth, ``"smaller"``
   0.15-0.22 (0.15-0.39 without the border trim); one whole-volume run 0.33.
4. **Components.** Every (block, local id) is a node; links are edges; connected components
   (:func:`scipy.sparse.csgraph.connected_components`) are the global objects (:func:`resolve_global_ids`).
5. **Ids.** Components that own voxels of some core are numbered ``1..N`` in the order of their first node
   (block index, then local id), so the ids depend only on the blocks' results, never on the order in
   which blocks were processed or on a resumed run. The result is one lookup table per block
   (local id -> global id, uint64, entry 0 -> 0).

With ``min_overlap_voxels=1, min_fraction=0`` and no trim (:meth:`ReconcileParams.any_overlap`) the rule is
exact for any segmenter that is consistent with one global partition (e.g. connected components of a fixed
mask) and an overlap of at least one voxel: two voxels of one true object are joined by a path, each step of
which lies inside some block's subvolume together with its neighbour, so both blocks label it with ids that
share a voxel and are linked. Real segmenters disagree near subvolume borders; the default rule ignores
small accidental overlaps and never joins two objects that both blocks keep apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import fastremap
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from connectomix.errors import InputError

Measure = Literal["smaller", "iou"]


@dataclass(frozen=True)
class ReconcileParams:
    """When two ids of neighbouring blocks are the same object (see the module docstring).

    ``min_overlap_voxels`` is a voxel count; ``min_fraction`` is in [0, 1] and applies to ``measure``:
    ``"iou"`` = intersection over union of the two ids within the compared region, ``"smaller"`` =
    overlap / voxels of the smaller of the two ids there.
    """

    min_overlap_voxels: int = 10
    min_fraction: float = 0.5
    measure: Measure = "iou"
    #: Fraction of the overlap left out of the comparison at each subvolume's inner border (those voxels had
    #: the least context in one of the two blocks); at most ``overlap - 1`` voxels are left out.
    border_trim: float = 0.5

    def __post_init__(self) -> None:
        if int(self.min_overlap_voxels) < 1:
            raise InputError(f"min_overlap_voxels must be at least 1 voxel, got {self.min_overlap_voxels!r}")
        if not 0.0 <= float(self.min_fraction) <= 1.0:
            raise InputError(f"min_fraction must be in [0, 1], got {self.min_fraction!r}")
        if not 0.0 <= float(self.border_trim) <= 1.0:
            raise InputError(f"border_trim must be in [0, 1], got {self.border_trim!r}")
        if self.measure not in ("smaller", "iou"):
            raise InputError(f"measure must be 'smaller' or 'iou', got {self.measure!r}")

    @classmethod
    def any_overlap(cls) -> ReconcileParams:
        """Link any two ids that share a voxel: exact for segmenters consistent with a global partition."""
        return cls(min_overlap_voxels=1, min_fraction=0.0, border_trim=0.0)


@dataclass(frozen=True)
class Links:
    """Linked id pairs between two blocks: ``ids_a[k]`` (block A) is ``ids_b[k]`` (block B).

    ``overlaps[k]`` is their shared voxel count and ``scores[k]`` the measure that was compared.
    """

    ids_a: np.ndarray
    ids_b: np.ndarray
    overlaps: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids_a)


def overlap_counts(
    labels_a: np.ndarray, labels_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contingency of two label arrays of one region (0 ignored).

    Returns ``(ids_a, ids_b, n_ab, n_a, n_b)``: every pair of nonzero ids that share voxels with its
    voxel count, and each id's own voxel count in the region (so ``n_a[k]`` belongs to ``ids_a[k]``).
    Ids must be below 2^32.
    """
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.shape != b.shape:
        raise InputError(f"label arrays must have one shape, got {a.shape} and {b.shape}")
    empty = np.zeros(0, np.uint64)
    a = a.ravel()
    b = b.ravel()
    both = (a != 0) & (b != 0)
    if not both.any():
        return empty, empty, empty.astype(np.int64), empty.astype(np.int64), empty.astype(np.int64)
    a_both = a[both].astype(np.uint64)
    b_both = b[both].astype(np.uint64)
    if int(a_both.max()) >= 1 << 32 or int(b_both.max()) >= 1 << 32:
        raise InputError("overlap_counts needs ids below 2^32 (local ids of one block)")
    keys, n_ab = fastremap.unique((a_both << np.uint64(32)) | b_both, return_counts=True)
    ids_a = keys >> np.uint64(32)
    ids_b = keys & np.uint64(0xFFFFFFFF)
    n_a = _counts_of(a, ids_a)
    n_b = _counts_of(b, ids_b)
    return ids_a, ids_b, n_ab.astype(np.int64), n_a, n_b


def _counts_of(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Voxel count in ``labels`` of each of ``ids`` (all present in ``labels``)."""
    uniq, counts = fastremap.unique(labels, return_counts=True)
    return counts[np.searchsorted(uniq.astype(np.uint64), ids)].astype(np.int64)


def match_overlap(labels_a: np.ndarray, labels_b: np.ndarray, params: ReconcileParams | None = None) -> Links:
    """The id pairs of two blocks' labels of one shared region that :class:`ReconcileParams` links."""
    params = params or ReconcileParams()
    ids_a, ids_b, n_ab, n_a, n_b = overlap_counts(labels_a, labels_b)
    if params.measure == "iou":
        scores = n_ab / np.maximum(n_a + n_b - n_ab, 1)
    else:
        scores = n_ab / np.maximum(np.minimum(n_a, n_b), 1)
    keep = (n_ab >= params.min_overlap_voxels) & (scores >= params.min_fraction)
    return Links(ids_a[keep], ids_b[keep], n_ab[keep], scores[keep].astype(np.float64))


def neighbour_pairs(grid_shape_zyx: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of C-order flat indices of blocks that touch (26-neighbourhood)."""
    shape = tuple(int(s) for s in grid_shape_zyx)
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]
    pairs: list[tuple[int, int]] = []
    for index in itertools.product(*(range(s) for s in shape)):
        i = int(np.ravel_multi_index(index, shape))
        for offset in offsets:
            other = tuple(p + d for p, d in zip(index, offset, strict=True))
            if all(0 <= o < s for o, s in zip(other, shape, strict=True)):
                pairs.append((i, int(np.ravel_multi_index(other, shape))))
    return sorted(pairs)


@dataclass
class GlobalIds:
    """Per-block lookup tables from local ids to global ids (uint64; ``tables[i][0] == 0``)."""

    tables: list[np.ndarray]
    #: number of global objects that own voxels of some core (ids ``1..n_objects``)
    n_objects: int
    #: number of nodes (block, local id) before reconciliation
    n_nodes: int
    #: number of links (edges) used
    n_links: int

    def relabel(self, block: int, labels: np.ndarray) -> np.ndarray:
        """Map block ``block``'s local labels to global ids (a new uint64 array)."""
        return self.tables[block][np.asarray(labels)]


def resolve_global_ids(
    n_objects: Sequence[int],
    links: Sequence[tuple[int, int, Links]],
    core_ids: Sequence[np.ndarray],
) -> GlobalIds:
    """Union the linked ids of all blocks and number the resulting objects ``1..N`` deterministically.

    Parameters
    ----------
    n_objects
        Per block, its number of local ids (local ids are ``1..n_objects[i]``).
    links
        ``(block_a, block_b, Links)`` for every compared pair of blocks.
    core_ids
        Per block, the local ids that own voxels of its core (only these receive voxels in the output,
        so only objects containing one of them are numbered; others map to their object's id anyway).
    """
    counts = np.asarray([int(n) for n in n_objects], np.int64)
    if len(core_ids) != len(counts):
        raise InputError(f"core_ids has {len(core_ids)} entries for {len(counts)} blocks")
    base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_nodes = int(base[-1])
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for block_a, block_b, pair in links:
        if len(pair) == 0:
            continue
        ids_a = pair.ids_a.astype(np.int64)
        ids_b = pair.ids_b.astype(np.int64)
        if (
            ids_a.min() < 1
            or ids_a.max() > counts[block_a]
            or ids_b.min() < 1
            or ids_b.max() > counts[block_b]
        ):
            raise InputError(f"links between blocks {block_a} and {block_b} name ids outside 1..n_objects")
        sources.append(base[block_a] + ids_a - 1)
        targets.append(base[block_b] + ids_b - 1)
    src = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    dst = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    if n_nodes:
        graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n_nodes, n_nodes))
        _, component = connected_components(graph, directed=False)
    else:
        component = np.zeros(0, np.int64)
    present = np.zeros(n_nodes, bool)
    for block, ids in enumerate(core_ids):
        ids = np.asarray(ids, np.int64)
        ids = ids[ids != 0]
        if ids.size and (ids.min() < 1 or ids.max() > counts[block]):
            raise InputError(f"core ids of block {block} lie outside 1..{counts[block]}")
        present[base[block] + ids - 1] = True
    final = np.zeros(int(component.max()) + 1 if n_nodes else 0, np.uint64)
    if n_nodes:
        # components in order of their first node; number those that own core voxels 1..N in that order
        comps, first = np.unique(component, return_index=True)
        owning = np.zeros(len(comps), bool)
        owning[component[present]] = True
        order = comps[np.argsort(first, kind="stable")]
        order = order[owning[order]]
        final[order] = np.arange(1, len(order) + 1, dtype=np.uint64)
        n_final = len(order)
    else:
        n_final = 0
    tables = [
        np.concatenate([[np.uint64(0)], final[component[base[i] : base[i + 1]]]]).astype(np.uint64)
        for i in range(len(counts))
    ]
    return GlobalIds(tables=tables, n_objects=n_final, n_nodes=n_nodes, n_links=len(src))
