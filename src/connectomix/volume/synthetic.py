"""Synthetic EM-like volumes with exact ground truth.

:func:`make_synthetic` grows random branching neurite trees in physical space (nm), packs them densely
like neuropil, and renders an image that looks like FIB-SEM of neuropil: dark membranes at every label
boundary, textured cytoplasm with a per-cell mean intensity, dark mitochondria with darker outlines,
point-spread blur and signal-dependent noise. Every array is indexed ``(z, y, x)``; every physical size
is in nanometres; anisotropic voxels (e.g. ``resolution_nm_zyx=(40, 8, 8)``) are supported because the
geometry lives in nm, not in voxels.

How the geometry is made
------------------------
1. **Trees.** Each neurite is a tree: a main branch through a random point (grown both ways until it
   leaves the volume plus a margin), child branches (some long, some short spine-like with a head) and
   grandchildren. A branch is a persistent random walk: its tangent is the start direction plus smoothed
   noise, so it curves gently. Its radius tapers along the branch, varies smoothly and has occasional
   varicosities. Calibres are mixed: a few thick trees (radius 150–300 nm), many thin ones (~40–120 nm).
   Trees are added until the summed tube volume reaches ``fill`` of the box (unless ``n_neurites`` fixes
   their number).
2. **Dense packing.** Every voxel goes to the tube with the smallest *scaled* distance
   ``|p - centreline| / radius`` (a multiplicatively weighted Voronoi diagram of the tubes), so space is
   split between neighbours in proportion to their calibre and there is no extracellular space. It is
   computed with two feature transforms (:func:`scipy.ndimage.distance_transform_edt`) on a coarse grid
   (~20 nm) and refined at full resolution near label boundaries, where each voxel picks among the
   candidate centreline points of its eight surrounding coarse voxels; boundaries are therefore smooth
   at full resolution.
3. **Exact labels.** Labels are split into 6-connected components (cc3d); fragments smaller than
   ``min_fragment`` are merged into the neighbouring component they touch most; the rest keep their own
   ids. So **every ground-truth id is exactly one 6-connected object** (hence also one 26-connected
   object), ids are ``1..N`` and **there is no background (no 0)**: the volume is densely packed.

How the image is made
---------------------
Cytoplasm: a per-cell mean drawn from N(152, 12) clipped to 120–185, fine texture (12 nm correlation),
coarse texture with sparse dark clouds (40 nm), and slow shading (plane waves of ~1 µm wavelength).
Membranes: ≈ 72 (varying slowly along the membrane) blended in with a Gaussian profile of FWHM
``membrane_width_nm`` around each label interface; after blur and noise the mean on gt boundaries is
≈ 92 and inside ≈ 135 (FIB-25: 99 vs 134). Mitochondria: ≈ 100 with texture, ≈ 70 outlines. Then a
Gaussian point-spread of ``blur`` nm (sigma), Poisson-like noise (standard deviation ``noise`` at
intensity 150, scaling with √intensity) and rounding to uint8.

Membranes are measured from the voxels on either side of a label interface (distance plus half the finest
voxel size), so with anisotropic voxels both sections next to an interface parallel to the sections are
darkened (like a smeared oblique membrane in serial-section EM).

The ``synthetic://`` URL scheme (see :func:`open_synthetic`) gives the layers as volumes; a generation is
cached so the raw and ground-truth layers of one URL family come from the same run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cc3d
import fastremap
import numpy as np
from scipy import ndimage

from connectomix.errors import InputError, UnsupportedError
from connectomix.volume.base import ArrayVolume, Volume, VolumeKind
from connectomix.volume.box import check_resolution
from connectomix.volume.labels import label_interfaces

FloatTriple = tuple[float, float, float]
IntTriple = tuple[int, int, int]

#: Spacing of the coarse grid the tube partition is computed on (nm); refined at full resolution.
COARSE_NM = 20.0
#: Margin (nm) around the volume inside which branches are grown, so neurites enter from outside.
MARGIN_NM = 300.0
#: Target mitochondria per cubic micrometre when ``n_mitochondria`` is None.
MITO_PER_UM3 = 2.0
#: Radii above this count as this much towards ``fill`` (so a few thick trees do not fill the volume).
FILL_RADIUS_CAP_NM = 120.0
LAYERS = ("raw", "gt", "boundary", "mito")


@dataclass(frozen=True)
class SyntheticVolume:
    """One generated volume. All arrays are ``(z, y, x)`` and share one shape.

    Attributes
    ----------
    raw
        uint8 EM-like image (dark membranes, bright textured cytoplasm).
    gt
        uint64 ground-truth ids ``1..N``; each id is one 6-connected object; no background (0 absent).
    boundary
        float32 in [0, 1]: the exact membrane profile (≈ 0.9 on the voxels either side of a label
        interface, falling off as a Gaussian of FWHM ``membrane_width_nm``): an ideal boundary map.
    mito
        bool mask of mitochondria (inside neurites; they are part of their neurite's gt id).
    resolution_nm_zyx
        voxel size in nm, (z, y, x).
    seed
        the seed used.
    n_trees
        how many neurite trees were grown (before clipping splits them into several ids).
    """

    raw: np.ndarray
    gt: np.ndarray
    boundary: np.ndarray
    mito: np.ndarray
    resolution_nm_zyx: FloatTriple
    seed: int
    n_trees: int

    @property
    def shape(self) -> IntTriple:
        return self.raw.shape  # type: ignore[return-value]

    @property
    def n_ids(self) -> int:
        return int(self.gt.max())


@dataclass
class _Nodes:
    """Centreline points of all branches: position (nm, z/y/x), radius (nm), unit tangent, tree id."""

    pos: np.ndarray  # (N, 3) float64
    radius: np.ndarray  # (N,) float64
    tangent: np.ndarray  # (N, 3) float64
    tree: np.ndarray  # (N,) int64, 1-based

    @staticmethod
    def concat(parts: Sequence[_Nodes]) -> _Nodes:
        return _Nodes(
            np.concatenate([p.pos for p in parts]),
            np.concatenate([p.radius for p in parts]),
            np.concatenate([p.tangent for p in parts]),
            np.concatenate([p.tree for p in parts]),
        )


# ---------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------
def make_synthetic(
    shape_zyx: Sequence[int] = (128, 128, 128),
    *,
    seed: int = 0,
    resolution_nm_zyx: Sequence[float] = (10.0, 10.0, 10.0),
    n_neurites: int | None = None,
    membrane_width_nm: float = 28.0,
    noise: float = 8.0,
    n_mitochondria: int | None = None,
    blur: float = 10.0,
    fill: float = 0.9,
    min_fragment: int | None = None,
) -> SyntheticVolume:
    """Generate an EM-like volume with exact ground truth.

    Parameters
    ----------
    shape_zyx
        Volume size in voxels (z, y, x); any size ≥ 1 per axis.
    seed
        Seed of every random choice (``numpy.random.default_rng``); same inputs give identical arrays.
    resolution_nm_zyx
        Voxel size in nm (z, y, x). Geometry is generated in nm, so tubes are round in nm.
    n_neurites
        Number of neurite trees; ``None`` adds trees until their summed tube volume reaches ``fill``.
    membrane_width_nm
        Full width at half maximum of the dark membrane profile (nm).
    noise
        Noise standard deviation (grey levels) at intensity 150; Poisson-like (scales with √intensity)
        plus a small signal-independent part.
    n_mitochondria
        Number of mitochondria; ``None`` gives about 2 per µm³.
    blur
        Point-spread sigma in nm (per axis converted to voxels; axes where it is below 0.25 voxel skip it).
    fill
        Target summed tube volume as a fraction of the box when ``n_neurites`` is None (before packing).
    min_fragment
        Connected pieces smaller than this many voxels merge into a neighbour; default: the voxel count
        of a (40 nm)³ cube, at least 4.
    """
    shape = _check_shape(shape_zyx)
    res = check_resolution(resolution_nm_zyx)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in (("membrane_width_nm", membrane_width_nm), ("noise", noise), ("blur", blur)):
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number ≥ 0, got {value!r}")
    if not 0 < fill <= 2:
        raise InputError(f"fill must be in (0, 2], got {fill!r}")
    if n_neurites is not None and n_neurites < 1:
        raise InputError(f"n_neurites must be ≥ 1 or None, got {n_neurites!r}")
    if n_mitochondria is not None and n_mitochondria < 0:
        raise InputError(f"n_mitochondria must be ≥ 0 or None, got {n_mitochondria!r}")

    rng = np.random.default_rng(int(seed))
    extent = np.asarray(shape, float) * np.asarray(res)
    nodes, n_trees = _grow_forest(rng, extent, res, n_neurites, fill)
    labels = _pack(nodes, shape, res)
    voxel_nm3 = float(np.prod(res))
    if min_fragment is None:
        min_fragment = max(4, round(40.0**3 / voxel_nm3))
    gt = _exact_labels(labels, int(min_fragment))
    boundary = _membrane_profile(gt, res, membrane_width_nm)

    volume_um3 = float(np.prod(extent)) / 1e9
    if n_mitochondria is None:
        n_mitochondria = round(MITO_PER_UM3 * volume_um3)
    mito, mito_outline = _mitochondria(rng, nodes, gt, boundary, res, int(n_mitochondria))
    raw = _render(rng, gt, boundary, mito, mito_outline, res, noise=noise, blur=blur)
    return SyntheticVolume(
        raw=raw,
        gt=gt,
        boundary=boundary,
        mito=mito,
        resolution_nm_zyx=res,
        seed=int(seed),
        n_trees=n_trees,
    )


def open_synthetic(parsed: Any, mode: str, spec: Any = None) -> Volume:
    """Open ``synthetic://LAYER?shape=Z,Y,X&seed=S&resolution=X,Y,Z`` as a read-only in-memory volume.

    ``LAYER`` is one of ``raw`` (uint8 image), ``gt`` (uint64 segmentation), ``boundary`` (float32 image),
    ``mito`` (uint8 0/1 image). Query: ``shape=Z,Y,X`` voxels or ``size=N`` (N,N,N; default 128³),
    ``seed=S`` (default 0), ``resolution=X,Y,Z`` nm in Neuroglancer's x, y, z order (default 10,10,10);
    optional ``neurites=N``, ``mitochondria=N``, ``noise=F``. One generation is cached (per parameter
    set), so all layers of one parameter set come from the same run.
    """
    url = getattr(parsed, "url", str(parsed))
    if mode != "r":
        raise UnsupportedError(f"{url}: synthetic volumes are read-only; open with mode 'r', got {mode!r}")
    layer = str(parsed.path).strip("/").lower()
    if layer not in LAYERS:
        raise InputError(
            f"{url}: expected a synthetic layer {', '.join(LAYERS)} (synthetic://raw?...), got {layer!r}"
        )
    query: dict[str, str] = dict(parsed.query)
    allowed = {"shape", "size", "seed", "resolution", "neurites", "mitochondria", "noise"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise InputError(
            f"{url}: unknown synthetic parameter(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(allowed))}"
        )
    if "shape" in query and "size" in query:
        raise InputError(f"{url}: give either shape=Z,Y,X or size=N, not both")
    shape: IntTriple = (128, 128, 128)
    if "shape" in query:
        shape = _parse_ints(url, "shape", query["shape"], 3)  # type: ignore[assignment]
    elif "size" in query:
        (n,) = _parse_ints(url, "size", query["size"], 1)
        shape = (n, n, n)
    seed = _parse_ints(url, "seed", query["seed"], 1, minimum=0)[0] if "seed" in query else 0
    res = parsed.resolution_override() if "resolution" in query else (10.0, 10.0, 10.0)
    neurites = _parse_ints(url, "neurites", query["neurites"], 1)[0] if "neurites" in query else None
    mitos = (
        _parse_ints(url, "mitochondria", query["mitochondria"], 1, minimum=0)[0]
        if "mitochondria" in query
        else None
    )
    noise = _parse_float(url, "noise", query["noise"]) if "noise" in query else 8.0
    if max(shape) > 2048 or math.prod(shape) > 1024**3:
        raise InputError(
            f"{url}: synthetic volumes are generated in memory; expected at most 1024³ voxels, got {shape}"
        )
    vol = _cached_synthetic(shape, seed, tuple(float(r) for r in res), neurites, mitos, noise)
    array = {"raw": vol.raw, "gt": vol.gt, "boundary": vol.boundary, "mito": vol.mito.view(np.uint8)}[layer]
    canonical = _canonical_url(layer, shape, seed, vol.resolution_nm_zyx, neurites, mitos, noise)
    kind: VolumeKind = "segmentation" if layer == "gt" else "image"
    return ArrayVolume(array, url=canonical, resolution=vol.resolution_nm_zyx, kind=kind)


# ---------------------------------------------------------------------------------------------------------
# argument checks and URL helpers
# ---------------------------------------------------------------------------------------------------------
def _check_shape(shape_zyx: Sequence[int]) -> IntTriple:
    try:
        items = tuple(int(s) for s in shape_zyx)
    except (TypeError, ValueError):
        raise InputError(f"shape_zyx must be 3 positive integers (z, y, x), got {shape_zyx!r}") from None
    if len(items) != 3 or any(s < 1 for s in items):
        raise InputError(f"shape_zyx must be 3 positive integers (z, y, x), got {shape_zyx!r}")
    return items  # type: ignore[return-value]


def _parse_ints(url: str, name: str, text: str, count: int, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or any(v < minimum for v in values):
        what = "an integer" if count == 1 else f"{count} integers separated by commas"
        raise InputError(f"{url}: {name} must be {what} ≥ {minimum}, got {text!r}")
    return values


def _parse_float(url: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{url}: {name} must be a number ≥ 0, got {text!r}")
    return value


def _canonical_url(
    layer: str,
    shape: IntTriple,
    seed: int,
    res_zyx: FloatTriple,
    neurites: int | None,
    mitos: int | None,
    noise: float,
) -> str:
    z, y, x = shape
    rz, ry, rx = res_zyx
    url = f"synthetic://{layer}?shape={z},{y},{x}&seed={seed}&resolution={rx:g},{ry:g},{rz:g}"
    if neurites is not None:
        url += f"&neurites={neurites}"
    if mitos is not None:
        url += f"&mitochondria={mitos}"
    if noise != 8.0:
        url += f"&noise={noise:g}"
    return url


@functools.lru_cache(maxsize=4)
def _cached_synthetic(
    shape: IntTriple,
    seed: int,
    res: FloatTriple,
    neurites: int | None,
    mitos: int | None,
    noise: float,
) -> SyntheticVolume:
    vol = make_synthetic(
        shape, seed=seed, resolution_nm_zyx=res, n_neurites=neurites, n_mitochondria=mitos, noise=noise
    )
    for array in (vol.raw, vol.gt, vol.boundary, vol.mito):
        array.setflags(write=False)  # shared by every volume opened from the cache
    return vol


# ---------------------------------------------------------------------------------------------------------
# geometry: trees
# ---------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, axis: int) -> np.ndarray:
    """White noise smoothed along ``axis`` with a Gaussian of ``sigma`` samples, rescaled to unit std."""
    white = rng.standard_normal(shape)
    if sigma < 0.5:
        return white
    smooth = ndimage.gaussian_filter1d(white, sigma, axis=axis, mode="reflect", truncate=3.0)
    return smooth * math.sqrt(2.0 * math.sqrt(math.pi) * sigma)


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _grow_branches(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: np.ndarray,
    r_start: np.ndarray,
    r_end: np.ndarray,
    tree: np.ndarray,
    head: np.ndarray,
    step: float,
    lo: np.ndarray,
    hi: np.ndarray,
) -> _Nodes:
    """Grow a batch of branches (persistent random walks) and return their nodes inside [lo, hi] (nm).

    ``head`` > 0 adds a terminal bulb of that relative size (spine heads); every branch also gets smooth
    radius variation and up to two varicosities.
    """
    b = len(start)
    n = max(2, math.ceil(float(length.max()) / step) + 1)
    s = np.arange(n) * step  # arc length of each node (nm)
    persistence_nm = 450.0
    wiggle = rng.uniform(0.25, 0.6, size=(b, 1, 1))
    bend = _smooth_noise(rng, (b, n, 3), persistence_nm / step, axis=1)
    tangent = direction[:, None, :] + wiggle * bend
    tangent /= np.maximum(np.linalg.norm(tangent, axis=2, keepdims=True), 1e-12)
    pos = start[:, None, :] + np.cumsum(tangent * step, axis=1) - tangent[:, :1, :] * step

    frac = np.clip(s[None, :] / np.maximum(length[:, None], step), 0.0, 1.0)
    radius = r_start[:, None] + (r_end - r_start)[:, None] * frac
    radius = radius * np.exp(0.12 * _smooth_noise(rng, (b, n), 120.0 / step, axis=1))
    # varicosities: Gaussian bumps along the branch
    n_bumps = 2
    centres = rng.uniform(0, 1, size=(b, n_bumps)) * length[:, None]
    amps = rng.uniform(0.2, 0.6, size=(b, n_bumps)) * (rng.random((b, n_bumps)) < 0.35)
    widths = rng.uniform(40.0, 90.0, size=(b, n_bumps))
    bumps = amps[:, :, None] * np.exp(
        -0.5 * ((s[None, None, :] - centres[:, :, None]) / widths[:, :, None]) ** 2
    )
    radius = radius * (1.0 + bumps.sum(axis=1))
    # spine heads: a bulb at the tip
    tip = np.exp(-0.5 * ((s[None, :] - length[:, None]) / 50.0) ** 2)
    radius = radius * (1.0 + head[:, None] * tip)

    valid = s[None, :] <= length[:, None]
    valid &= np.all((pos >= lo) & (pos <= hi), axis=2)
    return _Nodes(
        pos[valid],
        radius[valid],
        tangent[valid],
        np.broadcast_to(tree[:, None], (b, n))[valid].astype(np.int64),
    )


def _grow_trees(
    rng: np.random.Generator, first_id: int, count: int, extent: np.ndarray, step: float
) -> tuple[_Nodes, np.ndarray]:
    """Grow ``count`` trees with ids ``first_id..``; returns their nodes and each tree's main radius."""
    lo = np.full(3, -MARGIN_NM)
    hi = extent + MARGIN_NM
    diag = float(np.linalg.norm(hi - lo))
    ids = np.arange(first_id, first_id + count)
    thick = rng.random(count) < 0.1
    r0 = np.where(
        thick,
        rng.uniform(180.0, 350.0, count),
        np.clip(rng.lognormal(math.log(80.0), 0.4, count), 40.0, 180.0),
    )
    centre = rng.uniform(0.0, 1.0, (count, 3)) * extent
    direction = _random_unit(rng, count)
    # main branch: both ways from a point inside the volume, tapering outwards
    taper = rng.uniform(0.7, 1.0, (2, count))
    main = _grow_branches(
        rng,
        np.concatenate([centre, centre]),
        np.concatenate([direction, -direction]),
        np.full(2 * count, diag),
        np.concatenate([r0, r0]),
        np.concatenate([r0 * taper[0], r0 * taper[1]]),
        np.concatenate([ids, ids]),
        np.zeros(2 * count),
        step,
        lo,
        hi,
    )
    parts = [main]
    parents = main
    for generation in (1, 2):
        per_tree_rate = np.where(thick, 4.0, 1.2) / generation
        n_children = rng.poisson(per_tree_rate)
        # pick parent nodes uniformly among each tree's nodes in this generation
        order = np.argsort(parents.tree, kind="stable")
        tree_sorted = parents.tree[order]
        starts = np.searchsorted(tree_sorted, ids)
        ends = np.searchsorted(tree_sorted, ids, side="right")
        has = ends > starts
        n_children = np.where(has, n_children, 0)
        total = int(n_children.sum())
        if total == 0:
            break
        owner = np.repeat(np.arange(count), n_children)
        pick = starts[owner] + (rng.random(total) * (ends - starts)[owner]).astype(np.int64)
        node = order[np.minimum(pick, ends[owner] - 1)]
        t = parents.tangent[node]
        u = _random_unit(rng, total)
        u -= (u * t).sum(axis=1, keepdims=True) * t
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        angle = np.deg2rad(rng.uniform(35.0, 85.0, total))
        child_dir = np.cos(angle)[:, None] * t + np.sin(angle)[:, None] * u
        spine = rng.random(total) < 0.35
        length = np.where(spine, rng.uniform(150.0, 500.0, total), rng.uniform(500.0, 2500.0, total))
        r_start = np.maximum(parents.radius[node] * rng.uniform(0.4, 0.75, total), 30.0)
        r_start = np.where(spine, np.maximum(r_start * 0.6, 25.0), r_start)
        r_end = r_start * rng.uniform(0.55, 0.9, total)
        head = np.where(spine, rng.uniform(1.0, 2.2, total), 0.0)
        children = _grow_branches(
            rng, parents.pos[node], child_dir, length, r_start, r_end, ids[owner], head, step, lo, hi
        )
        parts.append(children)
        parents = children
    return _Nodes.concat(parts), r0


def _grow_forest(
    rng: np.random.Generator, extent: np.ndarray, res: FloatTriple, n_neurites: int | None, fill: float
) -> tuple[_Nodes, int]:
    """All nodes of the trees that pack the volume; trees are added in batches until ``fill`` is met."""
    coarse = _coarse_spacing(res)
    step = 0.5 * float(min(coarse))
    volume = float(np.prod(extent))
    if n_neurites is not None:
        nodes, _ = _grow_trees(rng, 1, int(n_neurites), extent, step)
        return nodes, int(n_neurites)
    parts: list[_Nodes] = []
    total = 0.0
    next_id = 1
    batch = max(4, round(volume / 1e9 * 12))
    for _ in range(64):
        nodes, _ = _grow_trees(rng, next_id, batch, extent, step)
        inside = np.all((nodes.pos >= 0) & (nodes.pos <= extent), axis=1)
        tube = np.bincount(
            nodes.tree[inside] - next_id,
            weights=math.pi * np.minimum(nodes.radius[inside], FILL_RADIUS_CAP_NM) ** 2 * step,
            minlength=batch,
        )
        cum = total + np.cumsum(tube)
        if cum[-1] >= fill * volume:
            keep = int(np.searchsorted(cum, fill * volume)) + 1
            parts.append(_select_trees(nodes, next_id, next_id + keep))
            next_id += keep
            break
        parts.append(nodes)
        total = float(cum[-1])
        next_id += batch
    return _Nodes.concat(parts), next_id - 1


def _select_trees(nodes: _Nodes, first: int, stop: int) -> _Nodes:
    keep = (nodes.tree >= first) & (nodes.tree < stop)
    return _Nodes(nodes.pos[keep], nodes.radius[keep], nodes.tangent[keep], nodes.tree[keep])


# ---------------------------------------------------------------------------------------------------------
# geometry: dense packing
# ---------------------------------------------------------------------------------------------------------
def _coarse_spacing(res: FloatTriple) -> np.ndarray:
    factor = np.maximum(1, np.round(COARSE_NM / np.asarray(res))).astype(int)
    return np.asarray(res) * factor


def _pack(nodes: _Nodes, shape: IntTriple, res: FloatTriple) -> np.ndarray:
    """Tree id of every voxel: the tube minimising ``distance / radius`` (see the module docstring)."""
    res_a = np.asarray(res)
    spacing = _coarse_spacing(res)
    factor = np.round(spacing / res_a).astype(int)
    grid = tuple(int(v) for v in -(-np.asarray(shape) // factor))
    # rasterise centre lines; where several nodes share a voxel the thinnest wins (thin tubes survive)
    cell = np.floor(nodes.pos / spacing).astype(np.int64)
    ok = np.all((cell >= 0) & (cell < np.asarray(grid)), axis=1)
    if not ok.any():  # degenerate: no centre line inside; use the node nearest the centre
        centre = np.asarray(shape) * res_a / 2
        nearest = int(np.argmin(np.linalg.norm(nodes.pos - centre, axis=1)))
        ok[nearest] = True
        cell[nearest] = np.clip(cell[nearest], 0, np.asarray(grid) - 1)
    node_ids = np.flatnonzero(ok)
    flat = np.ravel_multi_index(tuple(cell[node_ids].T), grid)
    order = np.lexsort((nodes.radius[node_ids], flat))
    flat_sorted = flat[order]
    first = np.ones(len(order), bool)
    first[1:] = flat_sorted[1:] != flat_sorted[:-1]
    node_at = np.full(grid, -1, np.int64)
    node_at.ravel()[flat_sorted[first]] = node_ids[order[first]]

    centres = [(np.arange(g) + 0.5) * sp for g, sp in zip(grid, spacing, strict=True)]

    def scaled_sq(candidate: np.ndarray) -> np.ndarray:
        d2 = np.zeros(grid)
        for axis in range(3):
            c = centres[axis].reshape([-1 if a == axis else 1 for a in range(3)])
            d2 += (c - nodes.pos[candidate, axis]) ** 2
        return d2 / nodes.radius[candidate] ** 2

    idx = ndimage.distance_transform_edt(
        node_at < 0, sampling=spacing, return_distances=False, return_indices=True
    )
    n1 = node_at[tuple(idx)]
    f1 = scaled_sq(n1)
    inside = f1 <= 1.0
    idx = ndimage.distance_transform_edt(
        ~inside, sampling=spacing, return_distances=False, return_indices=True
    )
    n2 = n1[tuple(idx)]
    del idx
    f2 = scaled_sq(n2)
    best = np.where(f1 <= f2, n1, n2)
    lab_c = nodes.tree[best]

    # full resolution: each voxel looks at the best nodes of its 8 surrounding coarse voxels
    lo_hi = []
    for axis in range(3):
        u = (np.arange(shape[axis]) + 0.5) * res_a[axis] / spacing[axis] - 0.5
        lo = np.clip(np.floor(u).astype(np.int64), 0, grid[axis] - 1)
        lo_hi.append((lo, np.minimum(lo + 1, grid[axis] - 1)))
    padded = np.pad(lab_c, [(0, 1)] * 3, mode="edge")
    uniform = np.ones(grid, bool)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                uniform &= padded[dz : dz + grid[0], dy : dy + grid[1], dx : dx + grid[2]] == lab_c
    lo_ix = np.ix_(lo_hi[0][0], lo_hi[1][0], lo_hi[2][0])
    labels = lab_c[lo_ix]
    band = np.nonzero(~uniform[lo_ix])
    if band[0].size:
        # per coarse voxel: its best node's position (nm) and 1/radius², gathered by flat coarse index
        flat_best = best.ravel()
        node_z = nodes.pos[flat_best, 0].astype(np.float32)
        node_y = nodes.pos[flat_best, 1].astype(np.float32)
        node_x = nodes.pos[flat_best, 2].astype(np.float32)
        node_w = (1.0 / nodes.radius[flat_best] ** 2).astype(np.float32)
        p = [((band[a] + 0.5) * res_a[a]).astype(np.float32) for a in range(3)]
        corner = [[lo_hi[a][k][band[a]] for k in (0, 1)] for a in range(3)]
        corner[0] = [c * (grid[1] * grid[2]) for c in corner[0]]
        corner[1] = [c * grid[2] for c in corner[1]]
        best_f = np.full(band[0].size, np.inf, np.float32)
        best_flat = np.zeros(band[0].size, np.int64)
        for dz in (0, 1):
            for dy in (0, 1):
                base = corner[0][dz] + corner[1][dy]
                for dx in (0, 1):
                    flat = base + corner[2][dx]
                    f = np.square(p[0] - node_z[flat])
                    f += np.square(p[1] - node_y[flat])
                    f += np.square(p[2] - node_x[flat])
                    f *= node_w[flat]
                    better = f < best_f
                    best_f[better] = f[better]
                    best_flat[better] = flat[better]
        labels[band] = lab_c.ravel()[best_flat]
    return labels


def _exact_labels(labels: np.ndarray, min_fragment: int) -> np.ndarray:
    """Ids ``1..N``, each one 6-connected component; small fragments join their most-touching neighbour."""
    cc = cc3d.connected_components(labels, connectivity=6, out_dtype=np.uint64)
    sizes = np.bincount(cc.ravel())
    small = sizes < min_fragment
    small[0] = False
    if small.any():
        pairs_a: list[np.ndarray] = []
        pairs_b: list[np.ndarray] = []
        for axis in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis] = slice(None, -1)
            hi[axis] = slice(1, None)
            a, b = cc[tuple(lo)], cc[tuple(hi)]
            touch = a != b
            a, b = a[touch], b[touch]
            involved = small[a] | small[b]
            a, b = a[involved], b[involved]
            pairs_a += [a, b]
            pairs_b += [b, a]
        src = np.concatenate(pairs_a)
        dst = np.concatenate(pairs_b)
        keep = small[src] & ~small[dst]
        src, dst = src[keep], dst[keep]
        target = np.arange(len(sizes), dtype=np.uint64)
        if src.size:
            key = src * np.uint64(len(sizes)) + dst
            uniq, counts = np.unique(key, return_counts=True)
            u_src, u_dst = uniq // np.uint64(len(sizes)), uniq % np.uint64(len(sizes))
            # per source, the destination with most contacts (ties: smallest id)
            order = np.lexsort((u_dst, -counts, u_src))
            u_src, u_dst = u_src[order], u_dst[order]
            first = np.ones(len(u_src), bool)
            first[1:] = u_src[1:] != u_src[:-1]
            target[u_src[first]] = u_dst[first]
        cc = target[cc]
    cc, _ = fastremap.renumber(cc, in_place=True, preserve_zero=True)
    return cc.astype(np.uint64, copy=False)


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------


def _membrane_profile(gt: np.ndarray, res: FloatTriple, width_nm: float) -> np.ndarray:
    """Gaussian membrane profile in [0, 1] of FWHM ``width_nm`` around label interfaces (float32).

    The distance of a voxel centre to the interface is its distance to the nearest voxel on either side
    of an interface plus half a voxel. With anisotropic voxels the labels are first repeated along the
    coarse axes to the finest voxel size and the profile is averaged back over each thick voxel (partial
    volume), so a section next to an interface parallel to the sections is only partly darkened.
    """
    import edt

    if width_nm <= 0:
        return np.zeros(gt.shape, np.float32)
    res_a = np.asarray(res)
    factor = np.maximum(1, np.round(res_a / res_a.min())).astype(int)
    fine = gt
    for axis in range(3):
        if factor[axis] > 1:
            fine = np.repeat(fine, factor[axis], axis=axis)
    fine_res = tuple(float(r) for r in res_a / factor)
    interface = label_interfaces(fine)
    if not interface.any():
        return np.zeros(gt.shape, np.float32)
    dist = edt.edt(~interface, anisotropy=fine_res, black_border=False, parallel=0)
    del interface
    dist += np.float32(0.5 * min(fine_res))
    sigma = width_nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    dist *= np.float32(1.0 / sigma)
    np.square(dist, out=dist)
    dist *= np.float32(-0.5)
    np.exp(dist, out=dist)
    if np.any(factor > 1):
        z, y, x = gt.shape
        fz, fy, fx = (int(f) for f in factor)
        dist = dist.reshape(z, fz, y, fy, x, fx).mean(axis=(1, 3, 5), dtype=np.float32)
    return np.ascontiguousarray(dist, dtype=np.float32)


def _mitochondria(
    rng: np.random.Generator,
    nodes: _Nodes,
    gt: np.ndarray,
    boundary: np.ndarray,
    res: FloatTriple,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of mitochondria (ellipsoids along thick neurites) and of their dark outlines."""
    mito = np.zeros(gt.shape, bool)
    outline = np.zeros(gt.shape, bool)
    if count == 0:
        return mito, outline
    res_a = np.asarray(res)
    extent = np.asarray(gt.shape) * res_a
    inside = np.all((nodes.pos >= 0) & (nodes.pos < extent), axis=1)
    candidates = np.flatnonzero(inside & (nodes.radius >= 70.0))
    if candidates.size == 0:
        candidates = np.flatnonzero(inside)
    if candidates.size == 0:
        return mito, outline
    weights = nodes.radius[candidates] ** 2
    chosen = rng.choice(candidates, size=count, replace=True, p=weights / weights.sum())
    import edt

    clearance = 25.0  # nm of cytoplasm kept between a mitochondrion and the cell membrane
    for node in chosen:
        c = nodes.pos[node]
        t = nodes.tangent[node]
        half_len = rng.uniform(120.0, 350.0)
        half_wid = max(30.0, nodes.radius[node] * rng.uniform(0.4, 0.65))
        reach = max(half_len, half_wid) + 4 * res_a
        lo = np.maximum(np.floor((c - reach) / res_a).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach) / res_a).astype(int) + 1, gt.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(lo[a], hi[a]) for a in range(3))
        centre = tuple(np.clip((c / res_a).astype(int), 0, np.asarray(gt.shape) - 1))
        own = gt[box] == gt[centre]
        dist = edt.edt(own, anisotropy=res, black_border=False)
        room = float(dist[tuple(np.asarray(centre) - lo)]) - clearance
        half_wid = min(half_wid, room)
        if half_wid < 25.0:
            continue  # no room in this neurite here
        half_len = max(half_len, 1.3 * half_wid)
        axes = [(np.arange(lo[a], hi[a]) + 0.5) * res_a[a] - c[a] for a in range(3)]
        dz, dy, dx = np.meshgrid(*axes, indexing="ij")
        along = dz * t[0] + dy * t[1] + dx * t[2]
        perp2 = np.maximum(dz**2 + dy**2 + dx**2 - along**2, 0.0)
        q = np.sqrt((along / half_len) ** 2 + perp2 / half_wid**2)
        body = own & (q <= 1.0) & (dist >= clearance)
        body = cc3d.largest_k(body, k=1, connectivity=6) > 0 if body.any() else body
        rim = body & ((q >= 1.0 - 15.0 / half_wid) | (dist < clearance + 15.0))
        mito[box] |= body
        outline[box] |= rim
    return mito, outline


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], res_a: np.ndarray, corr_nm: float
) -> np.ndarray:
    """Gaussian random field (float32, mean 0, std ≈ 1) with correlation length ``corr_nm`` (nm, sigma).

    Long correlations are drawn on a grid up to 4x coarser (nearest-upsampled: the steps are small
    compared with the field's smooth variation and vanish in the point-spread blur).
    """
    factor = np.maximum(1, np.minimum(4, np.floor(corr_nm / (3.0 * res_a)))).astype(int)
    small = tuple(int(v) for v in -(-np.asarray(shape) // factor))
    field = rng.standard_normal(small, dtype=np.float32)
    sigma = corr_nm / (res_a * factor)
    ndimage.gaussian_filter(field, sigma, output=field, truncate=3.0)
    field *= np.float32(math.sqrt(math.prod(2.0 * math.sqrt(math.pi) * max(s, 0.3) for s in sigma)))
    if np.any(factor > 1):
        field = field[np.ix_(*[np.arange(n) // f for n, f in zip(shape, factor, strict=True)])]
    return field


def _render(
    rng: np.random.Generator,
    gt: np.ndarray,
    boundary: np.ndarray,
    mito: np.ndarray,
    mito_outline: np.ndarray,
    res: FloatTriple,
    *,
    noise: float,
    blur: float,
) -> np.ndarray:
    """The EM-like uint8 image (see the module docstring for the intensity model)."""
    res_a = np.asarray(res)
    n_ids = int(gt.max())
    cell_mean = np.clip(rng.normal(152.0, 12.0, n_ids + 1), 120.0, 185.0).astype(np.float32)
    image = cell_mean[gt]
    # fine texture (organelles, vesicles): smoothed noise with ~12 nm correlation
    texture = _smooth_field(rng, gt.shape, res_a, 12.0)
    image += np.float32(7.0) * texture
    # coarse texture with sparse dark clouds (ER, vesicle clusters), ~40 nm correlation
    clouds = _smooth_field(rng, gt.shape, res_a, 40.0)
    image += np.float32(6.0) * clouds
    np.subtract(clouds, np.float32(0.8), out=clouds)
    np.maximum(clouds, np.float32(0.0), out=clouds)
    image -= np.float32(45.0) * clouds
    del clouds
    # slow shading: a few random plane waves (~1 µm wavelength)
    grids = [((np.arange(n) + 0.5) * r).astype(np.float32) for n, r in zip(gt.shape, res_a, strict=True)]
    for _ in range(3):
        k = _random_unit(rng, 1)[0] * (2 * math.pi / rng.uniform(700.0, 1600.0))
        phase = rng.uniform(0, 2 * math.pi)
        amp = np.float32(rng.uniform(2.0, 4.0))
        wave = (
            grids[0][:, None, None] * np.float32(k[0])
            + grids[1][None, :, None] * np.float32(k[1])
            + grids[2][None, None, :] * np.float32(k[2])
            + np.float32(phase)
        )
        image += amp * np.cos(wave)
    # mitochondria: darker matrix with texture (cristae), dark double-membrane outline
    if mito.any():
        image[mito] = np.float32(100.0) + np.float32(16.0) * texture[mito]
        image[mito_outline] = np.float32(70.0)
    del texture
    # membranes: darkness varies slowly along the membrane
    level = _smooth_field(rng, gt.shape, res_a, 60.0)
    level *= np.float32(8.0)
    level += np.float32(72.0)
    level -= image
    level *= boundary
    image += level
    del level
    # point spread
    sigma_blur = blur / res_a
    sigma_blur = np.where(sigma_blur >= 0.25, sigma_blur, 0.0)
    if sigma_blur.any():
        ndimage.gaussian_filter(image, sigma_blur, output=image, truncate=3.0)
    # Poisson-like noise: variance grows with intensity; `noise` is the std at intensity 150
    if noise > 0:
        gain = (noise**2 * 0.85) / 150.0
        read = noise**2 * 0.15
        sd = np.sqrt(np.maximum(image, 0.0) * np.float32(gain) + np.float32(read))
        image += sd * rng.standard_normal(gt.shape, dtype=np.float32)
    np.clip(image, 0, 255, out=image)
    return np.rint(image).astype(np.uint8)
