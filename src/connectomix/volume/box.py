"""Voxel bounding boxes and the one place where (x, y, z) and (z, y, x) are converted.

In memory every volume is a numpy array indexed ``(z, y, x)``. Neuroglancer, CloudVolume, SegCLR rows and
points shown to users are ``(x, y, z)``. Only the functions here (and a file format's own reader) swap the
order; everything else names its arguments ``*_zyx`` or ``*_xyz`` so the order is visible.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from connectomix.errors import InputError

Triple = tuple[int, int, int]
FloatTriple = tuple[float, float, float]


def _triple(values: Sequence[int] | int, name: str) -> Triple:
    if isinstance(values, int | np.integer):
        return (int(values),) * 3
    items = tuple(values)
    if len(items) != 3:
        raise InputError(f"{name} must have 3 values (z, y, x), got {len(items)}: {items!r}")
    return (int(items[0]), int(items[1]), int(items[2]))


def check_resolution(resolution_nm: Sequence[float], name: str = "resolution_nm_zyx") -> FloatTriple:
    """Validate a voxel size: 3 finite positive numbers in nm (order as given). Raises InputError."""
    try:
        values = tuple(float(r) for r in resolution_nm)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 positive numbers (nm), got {resolution_nm!r}") from None
    if len(values) != 3 or not all(np.isfinite(r) and r > 0 for r in values):
        raise InputError(f"{name} must be 3 positive numbers (nm), got {resolution_nm!r}")
    return values  # type: ignore[return-value]


def xyz_to_zyx(values_xyz: Sequence[float]) -> tuple:
    """Reverse an (x, y, z) triple (point, size or resolution) into (z, y, x)."""
    items = tuple(values_xyz)
    if len(items) != 3:
        raise InputError(f"expected 3 values (x, y, z), got {len(items)}: {items!r}")
    return items[::-1]


def zyx_to_xyz(values_zyx: Sequence[float]) -> tuple:
    """Reverse a (z, y, x) triple into (x, y, z)."""
    items = tuple(values_zyx)
    if len(items) != 3:
        raise InputError(f"expected 3 values (z, y, x), got {len(items)}: {items!r}")
    return items[::-1]


def points_xyz_to_zyx(points_xyz: np.ndarray) -> np.ndarray:
    """Convert an ``(N, 3)`` array of (x, y, z) points to (z, y, x) columns (a copy)."""
    points = np.asarray(points_xyz)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"expected an (N, 3) array of (x, y, z) points, got shape {points.shape}")
    return points[:, ::-1].copy()


def points_zyx_to_xyz(points_zyx: np.ndarray) -> np.ndarray:
    """Convert an ``(N, 3)`` array of (z, y, x) points to (x, y, z) columns (a copy)."""
    points = np.asarray(points_zyx)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"expected an (N, 3) array of (z, y, x) points, got shape {points.shape}")
    return points[:, ::-1].copy()


@dataclass(frozen=True, slots=True)
class Box:
    """A half-open voxel box ``[start, stop)`` in (z, y, x) order. Voxel units; see ``to_nm`` for nm."""

    start: Triple
    stop: Triple

    def __init__(self, start: Sequence[int], stop: Sequence[int]) -> None:
        start_t = _triple(start, "start")
        stop_t = _triple(stop, "stop")
        if any(b < a for a, b in zip(start_t, stop_t, strict=True)):
            raise InputError(f"box stop {stop_t} must not be below start {start_t} on any axis (z, y, x)")
        object.__setattr__(self, "start", start_t)
        object.__setattr__(self, "stop", stop_t)

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_shape(cls, shape_zyx: Sequence[int], offset_zyx: Sequence[int] = (0, 0, 0)) -> Box:
        """The box of an array of ``shape_zyx`` placed at ``offset_zyx``."""
        shape = _triple(shape_zyx, "shape")
        offset = _triple(offset_zyx, "offset")
        return cls(offset, tuple(o + s for o, s in zip(offset, shape, strict=True)))

    @classmethod
    def from_xyz(cls, start_xyz: Sequence[int], stop_xyz: Sequence[int]) -> Box:
        """A box given by (x, y, z) corners, as Neuroglancer and CloudVolume write them."""
        return cls(xyz_to_zyx(start_xyz), xyz_to_zyx(stop_xyz))

    @classmethod
    def around(cls, center_zyx: Sequence[int], size_zyx: Sequence[int] | int) -> Box:
        """The box of ``size_zyx`` whose centre voxel is ``center_zyx`` (size//2 before the centre)."""
        center = _triple(center_zyx, "center")
        size = _triple(size_zyx, "size")
        start = tuple(c - s // 2 for c, s in zip(center, size, strict=True))
        return cls.from_shape(size, start)

    # -- properties -----------------------------------------------------------------------------------
    @property
    def shape(self) -> Triple:
        """Extent in voxels, (z, y, x)."""
        return (self.stop[0] - self.start[0], self.stop[1] - self.start[1], self.stop[2] - self.start[2])

    @property
    def size(self) -> int:
        """Number of voxels."""
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    @property
    def start_xyz(self) -> Triple:
        return zyx_to_xyz(self.start)

    @property
    def stop_xyz(self) -> Triple:
        return zyx_to_xyz(self.stop)

    @property
    def shape_xyz(self) -> Triple:
        return zyx_to_xyz(self.shape)

    def to_slices(self, origin_zyx: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array whose first voxel sits at ``origin_zyx``."""
        origin = _triple(origin_zyx, "origin")
        return tuple(  # type: ignore[return-value]
            slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, origin, strict=True)
        )

    def to_nm(self, resolution_zyx: Sequence[float]) -> tuple[FloatTriple, FloatTriple]:
        """Corners in nanometres, (z, y, x), for voxel size ``resolution_zyx`` nm."""
        res = tuple(float(r) for r in resolution_zyx)
        return (
            tuple(a * r for a, r in zip(self.start, res, strict=True)),  # type: ignore[return-value]
            tuple(b * r for b, r in zip(self.stop, res, strict=True)),
        )

    # -- algebra --------------------------------------------------------------------------------------
    def intersect(self, other: Box) -> Box:
        """The overlap of two boxes (an empty box at ``self.start`` clipped if they do not overlap)."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        stop = tuple(max(s, e) for s, e in zip(start, stop, strict=True))
        return Box(start, stop)

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        start = tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(max(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, stop)

    def pad(self, amount_zyx: Sequence[int] | int) -> Box:
        """Grow by ``amount`` voxels on both sides of each axis (negative shrinks, never below empty)."""
        amount = _triple(amount_zyx, "padding")
        start = tuple(a - p for a, p in zip(self.start, amount, strict=True))
        stop = tuple(max(b + p, s) for b, p, s in zip(self.stop, amount, start, strict=True))
        return Box(start, stop)

    def translate(self, offset_zyx: Sequence[int]) -> Box:
        offset = _triple(offset_zyx, "offset")
        return Box(
            tuple(a + o for a, o in zip(self.start, offset, strict=True)),
            tuple(b + o for b, o in zip(self.stop, offset, strict=True)),
        )

    def contains(self, other: Box) -> bool:
        """True if ``other`` lies wholly inside this box."""
        return all(a <= c for a, c in zip(self.start, other.start, strict=True)) and all(
            d <= b for b, d in zip(self.stop, other.stop, strict=True)
        )

    def contains_point(self, point_zyx: Sequence[int]) -> bool:
        p = _triple(point_zyx, "point")
        return all(a <= v < b for a, v, b in zip(self.start, p, self.stop, strict=True))

    # -- chunk grids ----------------------------------------------------------------------------------
    def chunk_indices(self, chunk_shape_zyx: Sequence[int], grid_origin_zyx: Sequence[int] = (0, 0, 0)):
        """Index ranges (per axis) of the chunks of a grid anchored at ``grid_origin`` that touch this box."""
        chunk = _triple(chunk_shape_zyx, "chunk shape")
        if any(c <= 0 for c in chunk):
            raise InputError(f"chunk shape must be positive on every axis, got {chunk}")
        origin = _triple(grid_origin_zyx, "grid origin")
        if self.empty:
            return (range(0), range(0), range(0))
        return tuple(
            range((a - o) // c, -(-(b - o) // c))
            for a, b, o, c in zip(self.start, self.stop, origin, chunk, strict=True)
        )

    def iter_chunks(
        self,
        chunk_shape_zyx: Sequence[int],
        grid_origin_zyx: Sequence[int] = (0, 0, 0),
        clip: bool = True,
    ) -> Iterator[Box]:
        """Chunks of a grid anchored at ``grid_origin`` that touch this box, in C (z, y, x) order.

        With ``clip`` each chunk is intersected with this box (the parts to read or write); without, whole
        grid chunks are returned.
        """
        chunk = _triple(chunk_shape_zyx, "chunk shape")
        origin = _triple(grid_origin_zyx, "grid origin")
        for index in itertools.product(*self.chunk_indices(chunk, origin)):
            start = tuple(o + i * c for o, i, c in zip(origin, index, chunk, strict=True))
            whole = Box.from_shape(chunk, start)
            yield whole.intersect(self) if clip else whole

    def split(self, block_shape_zyx: Sequence[int]) -> list[Box]:
        """Tile this box into blocks of ``block_shape`` anchored at its start (edge blocks are smaller)."""
        return list(self.iter_chunks(block_shape_zyx, self.start, clip=True))

    def __repr__(self) -> str:
        return f"Box(start={self.start}, stop={self.stop})"
