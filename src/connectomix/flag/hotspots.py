"""Hot spots of one chunk → candidate tasks: cluster the hot voxels, classify each cluster, score it.

Works on one *window*: a chunk's core box plus a margin of context (both global (z, y, x) boxes). Only hot
voxels inside the core are clustered (cc3d, 26-connected), so every hot voxel belongs to exactly one chunk;
the margin lets a cluster on the core's border see the segments beyond it. A cluster that crosses a chunk
border becomes one piece per chunk; non-maximum suppression (:mod:`connectomix.flag.ranking`) folds such
duplicates together.

Each cluster's *neighbourhood* is the cluster dilated by ``reach`` voxels (26-connected). Classification:

1. **unassigned** if at least half of the cluster's entropy mass lies on voxels with segment id 0;
2. **split** of the dominant segment ``d`` (the id carrying most of the cluster's mass) if at least half of
   the mass on segmented voxels lies in ``d``'s *interior* (voxels whose whole ``(2 reach + 1)³`` cube is
   ``d``, i.e. more than ``reach`` voxels (Chebyshev) from any other id or 0); its suggested seeds
   (``sources_xyz``, ``sinks_xyz``) come later, from :func:`split_seeds`, for the tasks that are kept;
3. **merge** of segment pairs that touch inside the neighbourhood: 6-connected face contacts, counted after
   filling unassigned seams of at most ``GAP_VOXELS`` voxels with the nearest id (FFN leaves thin 0 seams
   between objects). The pair with the most faces gives a task, and so does each pair with at least half as
   many (at most ``MAX_PAIRS``), each scored on the cluster voxels within ``reach`` of its own contact;
4. otherwise unassigned if the neighbourhood holds unassigned voxels, else split of ``d``.

**Score** = entropy mass (sum of the per-voxel entropy in bits over the cluster voxels that count: all of
them for unassigned, the segmented ones for a split, those within ``reach`` of the pair's contact for a
merge) x ``log1p(size)``, the size in voxels (over the whole flagged region) of: the smaller segment of a
merge pair (an error between two big segments costs more when missed), the segment of a split, the largest
neighbouring segment of an unassigned region (or the cluster itself when it has no neighbour).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import edt
import numpy as np
from scipy import ndimage

from connectomix.flag.tasks import Task, TaskKind
from connectomix.volume.box import Box

CUBE = np.ones((3, 3, 3), dtype=bool)
#: Unassigned seams at most this thick (voxels) between two segments still count as contact.
GAP_VOXELS = 2
#: At most this many merge tasks come from one cluster.
MAX_PAIRS = 3
#: A pair needs at least this many contact faces to be a merge candidate.
MIN_CONTACT_FACES = 3
#: Context around a cluster's bounding box used for split seeds (voxels per side).
SEED_PAD = 8


@dataclass(frozen=True)
class SizeTable:
    """Segment sizes in voxels over the flagged region: sorted ``ids`` (uint64) and their ``counts``."""

    ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def merge(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> SizeTable:
        """Sum (ids, counts) pairs from several chunks into one table (id 0 dropped)."""
        if not parts:
            return cls(np.empty(0, np.uint64), np.empty(0, np.int64))
        ids = np.concatenate([np.asarray(p[0], np.uint64) for p in parts])
        counts = np.concatenate([np.asarray(p[1], np.int64) for p in parts])
        unique, inverse = np.unique(ids, return_inverse=True)
        total = np.bincount(inverse.ravel(), weights=counts, minlength=unique.size).astype(np.int64)
        keep = unique != 0
        return cls(unique[keep], total[keep])

    def lookup(self, segment_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Sizes of ``segment_ids`` (0 for ids not in the table)."""
        query = np.asarray(segment_ids, dtype=np.uint64).ravel()
        if self.ids.size == 0:
            return np.zeros(query.size, np.int64)
        pos = np.clip(np.searchsorted(self.ids, query), 0, self.ids.size - 1)
        return np.where(self.ids[pos] == query, self.counts[pos], 0).astype(np.int64)


@dataclass(frozen=True)
class HotspotParams:
    """Knobs of the per-window analysis (voxels)."""

    threshold: float
    min_cluster_voxels: int = 10
    reach: int = 2
    interior_fraction: float = 0.5
    unassigned_fraction: float = 0.5
    resolution_nm_xyz: tuple[float, float, float] = (8.0, 8.0, 8.0)


@dataclass(frozen=True)
class HotClusters:
    """The hot voxels of a chunk core, clustered: ``labels`` over the whole window (0 in the margin and on
    cold voxels), ``counts`` per label, ``objects`` (bounding slices per label, window coordinates)."""

    labels: np.ndarray
    counts: np.ndarray
    objects: list[tuple[slice, ...] | None]


def hot_clusters(entropy: np.ndarray, window: Box, core: Box, threshold: float) -> HotClusters | None:
    """Cluster (cc3d, 26-connected) the voxels of ``core`` with entropy ≥ ``threshold`` and > 0."""
    ent = np.asarray(entropy, dtype=np.float32)
    core_in_window = core.to_slices(window.start)
    hot_core = ent[core_in_window] >= np.float32(threshold)
    hot_core &= ent[core_in_window] > 0
    if not hot_core.any():
        return None
    core_labels, n = cc3d.connected_components(hot_core, connectivity=26, return_N=True)
    labels = np.zeros(ent.shape, dtype=np.int64)
    labels[core_in_window] = core_labels
    counts = np.bincount(core_labels.ravel(), minlength=n + 1)
    return HotClusters(labels, counts, ndimage.find_objects(labels))


def window_tasks(
    segmentation: np.ndarray,
    entropy: np.ndarray,
    window: Box,
    core: Box,
    sizes: SizeTable,
    params: HotspotParams,
) -> list[tuple[Task, int]]:
    """Candidate tasks for the hot voxels of ``core``, each with the index of its cluster in
    :func:`hot_clusters` (for :func:`split_seeds`); arrays cover ``window`` ((z, y, x), global boxes).

    Split tasks come without ``sources_xyz``/``sinks_xyz``: those cost a distance transform each and are
    computed by :func:`split_seeds` for the tasks that survive ranking."""
    seg = np.asarray(segmentation, dtype=np.uint64)
    ent = np.asarray(entropy, dtype=np.float32)
    clusters = hot_clusters(ent, window, core, params.threshold)
    if clusters is None:
        return []
    tasks: list[tuple[Task, int]] = []
    for index, found in enumerate(clusters.objects, start=1):
        if found is None or clusters.counts[index] < params.min_cluster_voxels:
            continue
        cluster = _cut_out(index, found, clusters.labels, seg, ent, window, 2 * params.reach, params.reach)
        tasks.extend((task, index) for task in _cluster_tasks(cluster, sizes, params))
    return tasks


def split_seeds(
    segmentation: np.ndarray,
    entropy: np.ndarray,
    window: Box,
    core: Box,
    params: HotspotParams,
    wanted: dict[int, int],
) -> dict[int, tuple[list[list[int]], list[list[int]]]]:
    """Suggested split seeds ``(sources_xyz, sinks_xyz)`` (global voxels) for the clusters ``wanted``
    (cluster index → segment id) of this window, as numbered by :func:`hot_clusters`."""
    seg = np.asarray(segmentation, dtype=np.uint64)
    ent = np.asarray(entropy, dtype=np.float32)
    clusters = hot_clusters(ent, window, core, params.threshold)
    out: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
    if clusters is None:
        return out
    for index, segment in wanted.items():
        found = clusters.objects[index - 1] if index <= len(clusters.objects) else None
        if found is None:
            continue
        cluster = _cut_out(index, found, clusters.labels, seg, ent, window, SEED_PAD, 0)
        sources, sinks = _split_seeds(cluster, cluster.seg == np.uint64(segment))
        out[index] = ([_xyz(cluster, s) for s in sources], [_xyz(cluster, s) for s in sinks])
    return out


# -- one cluster ----------------------------------------------------------------------------------------
@dataclass
class _Cluster:
    """A cluster cut out with context: arrays over ``box`` (window coordinates), ``mask`` = its voxels."""

    box: tuple[slice, slice, slice]
    origin_zyx: np.ndarray  # global (z, y, x) of the box's first voxel
    seg: np.ndarray
    ent: np.ndarray
    mask: np.ndarray
    neighbourhood: np.ndarray


def _cut_out(
    index: int,
    found: tuple[slice, ...],
    labels: np.ndarray,
    seg: np.ndarray,
    ent: np.ndarray,
    window: Box,
    pad: int,
    reach: int,
) -> _Cluster:
    """Cluster ``index`` with ``pad`` voxels of context (clipped to the window) and its neighbourhood."""
    box = tuple(
        slice(max(s.start - pad, 0), min(s.stop + pad, dim)) for s, dim in zip(found, seg.shape, strict=True)
    )
    mask = labels[box] == index
    return _Cluster(
        box=box,  # type: ignore[arg-type]
        origin_zyx=np.array([window.start[k] + box[k].start for k in range(3)], dtype=np.int64),
        seg=seg[box],
        ent=ent[box],
        mask=mask,
        neighbourhood=ndimage.binary_dilation(mask, CUBE, iterations=reach) if reach > 0 else mask,
    )


def _cluster_tasks(cluster: _Cluster, sizes: SizeTable, params: HotspotParams) -> list[Task]:
    mask = cluster.mask
    em = cluster.ent[mask]
    sm = cluster.seg[mask]
    mass = float(em.sum(dtype=np.float64))
    if mass <= 0:
        return []
    zero_mass = float(em[sm == 0].sum(dtype=np.float64))
    base = _base_evidence(cluster, em, mass, zero_mass, params)
    if zero_mass >= params.unassigned_fraction * mass:
        return [_unassigned_task(cluster, mass, base, sizes, params)]

    nonzero = sm != 0
    ids, inverse = np.unique(sm[nonzero], return_inverse=True)
    id_mass = np.bincount(inverse.ravel(), weights=em[nonzero], minlength=ids.size)
    dominant = int(ids[int(np.argmax(id_mass))])
    interior = ndimage.binary_erosion(
        cluster.seg == np.uint64(dominant), CUBE, iterations=params.reach, border_value=1
    )
    interior_mass = float(cluster.ent[mask & interior].sum(dtype=np.float64))
    segmented_mass = mass - zero_mass
    base["interior_fraction"] = round(interior_mass / segmented_mass, 4)
    if interior_mass >= params.interior_fraction * segmented_mass:
        return [_split_task(cluster, dominant, interior, segmented_mass, base, sizes, params)]

    merges = _merge_tasks(cluster, base, sizes, params)
    if merges:
        return merges
    if (cluster.seg[cluster.neighbourhood] == 0).any():
        return [_unassigned_task(cluster, mass, base, sizes, params)]
    return [_split_task(cluster, dominant, interior, segmented_mass, base, sizes, params)]


def _base_evidence(
    cluster: _Cluster, em: np.ndarray, mass: float, zero_mass: float, params: HotspotParams
) -> dict:
    coords = np.argwhere(cluster.mask)
    lo = coords.min(axis=0) + cluster.origin_zyx
    hi = coords.max(axis=0) + cluster.origin_zyx + 1
    return {
        "entropy_mass": round(mass, 4),
        "voxels": int(em.size),
        "mean_entropy": round(mass / em.size, 4),
        "max_entropy": round(float(em.max()), 4),
        "unassigned_fraction": round(zero_mass / mass, 4),
        "bbox_xyz": [lo[::-1].tolist(), hi[::-1].tolist()],
        "threshold": round(float(params.threshold), 6),
    }


def _weighted_centroid(coords: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = float(weights.sum())
    if total <= 0:
        return coords.mean(axis=0)
    return (coords * weights[:, None]).sum(axis=0) / total


def _nearest(coords: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The row of ``coords`` nearest ``target`` (first in C order on ties)."""
    d2 = ((coords - target) ** 2).sum(axis=1)
    return coords[int(np.argmin(d2))]


def _xyz(cluster: _Cluster, local_zyx: np.ndarray) -> list[int]:
    return (np.asarray(local_zyx, dtype=np.int64) + cluster.origin_zyx)[::-1].tolist()


def _size_factor(size: int) -> float:
    return float(np.log1p(max(int(size), 0)))


# -- unassigned -----------------------------------------------------------------------------------------
def _unassigned_task(
    cluster: _Cluster, mass: float, evidence: dict, sizes: SizeTable, params: HotspotParams
) -> Task:
    zero = cluster.mask & (cluster.seg == 0)
    where = zero if zero.any() else cluster.mask
    coords = np.argwhere(where)
    point = _nearest(coords, _weighted_centroid(coords, cluster.ent[where]))
    around = cluster.seg[cluster.neighbourhood]
    around = around[around != 0]
    ids, counts = np.unique(around, return_counts=True)
    order = np.lexsort((ids, -counts))[:4]
    neighbours = [int(i) for i in ids[order]]
    neighbour_sizes = sizes.lookup(neighbours) if neighbours else np.zeros(0, np.int64)
    size = int(neighbour_sizes.max()) if neighbours else int(cluster.mask.sum())
    evidence = {
        **evidence,
        "neighbour_ids": [str(i) for i in neighbours],
        "segment_sizes": {str(i): int(s) for i, s in zip(neighbours, neighbour_sizes, strict=True)},
    }
    return Task.create(
        "unassigned",
        _xyz(cluster, point),
        (),
        mass * _size_factor(size),
        resolution_nm_xyz=params.resolution_nm_xyz,
        evidence=evidence,
    )


# -- split ----------------------------------------------------------------------------------------------
def _split_task(
    cluster: _Cluster,
    segment: int,
    interior: np.ndarray,
    mass: float,
    evidence: dict,
    sizes: SizeTable,
    params: HotspotParams,
) -> Task:
    body = cluster.seg == np.uint64(segment)
    where = cluster.mask & body & interior
    if not where.any():
        where = cluster.mask & body
    coords = np.argwhere(where)
    point = _nearest(coords, _weighted_centroid(coords, cluster.ent[where]))
    size = int(sizes.lookup([segment])[0])
    evidence = {**evidence, "segment_sizes": {str(segment): size}}
    return Task.create(
        "split",
        _xyz(cluster, point),
        (segment,),
        mass * _size_factor(size),
        resolution_nm_xyz=params.resolution_nm_xyz,
        evidence=evidence,
    )


def _deepest(region: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A deep voxel of ``region``: of the voxels at least 3/4 as far from the outside (and the box edges) as
    the farthest one, the one nearest ``centre`` (first in C order on ties)."""
    depth = edt.edt(np.ascontiguousarray(region), black_border=True, parallel=1)
    coords = np.argwhere(depth >= 0.75 * float(depth.max()))
    return _nearest(coords, centre)


def _split_seeds(cluster: _Cluster, body: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seed voxels on either side of the uncertain part of ``body``: the deepest voxels of the two largest
    pieces left after removing the (1-voxel dilated) hot cluster; when that leaves one piece, the body is cut
    by the plane through the cluster's entropy-weighted centroid normal to its thinnest axis."""
    rest = body & ~ndimage.binary_dilation(cluster.mask, CUBE)
    if not rest.any():
        return [], []
    coords = np.argwhere(cluster.mask).astype(np.float64)
    weights = cluster.ent[cluster.mask].astype(np.float64)
    centre = _weighted_centroid(coords, weights)
    pieces, n = cc3d.connected_components(rest, connectivity=6, return_N=True)
    if n >= 2:
        counts = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
        largest = np.lexsort((np.arange(n), -counts))[:2] + 1
        return [_deepest(pieces == largest[0], centre)], [_deepest(pieces == largest[1], centre)]
    if coords.shape[0] < 3:
        return [_deepest(rest, centre)], []
    centred = coords - centre
    cov = (centred * weights[:, None]).T @ centred
    normal = np.linalg.eigh(cov)[1][:, 0]
    grid = np.indices(rest.shape).reshape(3, -1).T
    side = ((grid - centre) @ normal).reshape(rest.shape) >= 0
    out: list[list[np.ndarray]] = []
    for part in (rest & side, rest & ~side):
        out.append([_deepest(part, centre)] if part.any() else [])
    return out[0], out[1]


# -- merge ----------------------------------------------------------------------------------------------
def _filled(cluster: _Cluster) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment ids with unassigned seams of ≤ GAP_VOXELS filled by the nearest id, and the EDT indices."""
    zero = cluster.seg == 0
    if not zero.any() or zero.all():
        return cluster.seg, None
    dist, indices = ndimage.distance_transform_edt(zero, return_indices=True)
    nearest = cluster.seg[tuple(indices)]
    filled = np.where(zero & (dist <= GAP_VOXELS), nearest, cluster.seg)
    return filled, indices


def _contacts(filled: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face contacts between different non-zero ids, both voxels in ``inside``: ``(pairs (n, 2) ascending,
    voxel on the lower-id side (n, 3), voxel on the higher-id side (n, 3))`` in local (z, y, x)."""
    pairs, side_a, side_b = [], [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = filled[tuple(lo)], filled[tuple(hi)]
        valid = (a != b) & (a != 0) & (b != 0) & inside[tuple(lo)] & inside[tuple(hi)]
        pos_lo = np.argwhere(valid)
        if pos_lo.size == 0:
            continue
        pos_hi = pos_lo.copy()
        pos_hi[:, axis] += 1
        ids_lo, ids_hi = a[valid], b[valid]
        swap = ids_lo > ids_hi
        pairs.append(np.stack([np.where(swap, ids_hi, ids_lo), np.where(swap, ids_lo, ids_hi)], axis=1))
        side_a.append(np.where(swap[:, None], pos_hi, pos_lo))
        side_b.append(np.where(swap[:, None], pos_lo, pos_hi))
    if not pairs:
        empty = np.empty((0, 3), np.int64)
        return np.empty((0, 2), np.uint64), empty, empty
    return np.concatenate(pairs), np.concatenate(side_a), np.concatenate(side_b)


def _merge_tasks(cluster: _Cluster, base: dict, sizes: SizeTable, params: HotspotParams) -> list[Task]:
    filled, indices = _filled(cluster)
    pairs, side_a, side_b = _contacts(filled, cluster.neighbourhood)
    if pairs.shape[0] == 0:
        return []
    unique, inverse, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = np.lexsort((unique[:, 1], unique[:, 0], -counts))
    top = int(counts[order[0]])
    tasks = []
    for rank in order[:MAX_PAIRS]:
        faces = int(counts[rank])
        if faces < max(MIN_CONTACT_FACES, top / 2):
            break
        a, b = int(unique[rank, 0]), int(unique[rank, 1])
        mine = inverse == rank
        task = _merge_task(cluster, (a, b), faces, side_a[mine], side_b[mine], indices, base, sizes, params)
        if task is not None:
            tasks.append(task)
    return tasks


def _actual(cluster: _Cluster, local_zyx: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
    """A voxel that really carries the id (a seam voxel filled by the nearest id maps to that voxel)."""
    if indices is None or cluster.seg[tuple(local_zyx)] != 0:
        return local_zyx
    return indices[(slice(None), *tuple(local_zyx))]


def _merge_task(
    cluster: _Cluster,
    pair: tuple[int, int],
    faces: int,
    side_a: np.ndarray,
    side_b: np.ndarray,
    indices: np.ndarray | None,
    base: dict,
    sizes: SizeTable,
    params: HotspotParams,
) -> Task | None:
    contact = np.zeros(cluster.mask.shape, dtype=bool)
    contact[tuple(side_a.T)] = True
    contact[tuple(side_b.T)] = True
    zone = cluster.mask & ndimage.binary_dilation(contact, CUBE, iterations=params.reach)
    mass = float(cluster.ent[zone].sum(dtype=np.float64))
    if mass <= 0:
        return None
    zone_coords = np.argwhere(zone)
    centre = _weighted_centroid(zone_coords.astype(np.float64), cluster.ent[zone].astype(np.float64))
    mid = (side_a + side_b) / 2.0
    best = int(np.argmin(((mid - centre) ** 2).sum(axis=1)))
    point_a = _actual(cluster, side_a[best], indices)
    point_b = _actual(cluster, side_b[best], indices)
    pair_sizes = sizes.lookup(list(pair))
    evidence = {
        **base,
        "entropy_mass": round(mass, 4),
        "contact_faces": faces,
        "segment_sizes": {str(i): int(s) for i, s in zip(pair, pair_sizes, strict=True)},
        "points_xyz": [_xyz(cluster, point_a), _xyz(cluster, point_b)],
    }
    kind: TaskKind = "merge"
    return Task.create(
        kind,
        _xyz(cluster, point_a),
        pair,
        mass * _size_factor(int(pair_sizes.min())),
        resolution_nm_xyz=params.resolution_nm_xyz,
        evidence=evidence,
    )
