"""Box: construction, algebra, (x, y, z) <-> (z, y, x) conversion and chunk grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.volume.box import (
    Box,
    points_xyz_to_zyx,
    points_zyx_to_xyz,
    xyz_to_zyx,
    zyx_to_xyz,
)


# -- construction -----------------------------------------------------------------------------------------
def test_construction_and_shape() -> None:
    box = Box((1, 2, 3), (4, 6, 8))
    assert box.start == (1, 2, 3) and box.stop == (4, 6, 8)
    assert box.shape == (3, 4, 5)
    assert box.size == 60
    assert not box.empty
    assert Box((0, 0, 0), (0, 5, 5)).empty
    assert Box(2, 5) == Box((2, 2, 2), (5, 5, 5))  # a scalar means the same value on every axis
    assert isinstance(box.start[0], int)


def test_numpy_integers_become_ints() -> None:
    box = Box(np.array([1, 2, 3]), np.array([2, 3, 4]))
    assert box == Box((1, 2, 3), (2, 3, 4))
    assert all(type(v) is int for v in box.start + box.stop)


@pytest.mark.parametrize(
    ("start", "stop"),
    [((0, 0, 5), (1, 1, 4)), ((3, 0, 0), (2, 9, 9))],
)
def test_stop_below_start_is_rejected(start, stop) -> None:
    with pytest.raises(InputError, match="below start"):
        Box(start, stop)


@pytest.mark.parametrize(("start", "stop"), [((0, 0), (1, 1, 1)), ((0, 0, 0), (1, 1, 1, 1))])
def test_wrong_length_is_rejected(start, stop) -> None:
    with pytest.raises(InputError, match="3 values"):
        Box(start, stop)


def test_from_shape_and_around() -> None:
    assert Box.from_shape((2, 3, 4), (10, 20, 30)) == Box((10, 20, 30), (12, 23, 34))
    assert Box.from_shape((2, 3, 4)) == Box((0, 0, 0), (2, 3, 4))
    odd = Box.around((10, 10, 10), 5)
    assert odd == Box((8, 8, 8), (13, 13, 13))
    assert odd.contains_point((10, 10, 10))
    even = Box.around((10, 20, 30), (4, 2, 1))
    assert even == Box((8, 19, 30), (12, 21, 31))


# -- xyz <-> zyx ---------------------------------------------------------------------------------------------
def test_from_xyz_and_xyz_properties() -> None:
    box = Box.from_xyz(start_xyz=(1, 2, 3), stop_xyz=(11, 12, 13))
    assert box.start == (3, 2, 1) and box.stop == (13, 12, 11)
    assert box.start_xyz == (1, 2, 3)
    assert box.stop_xyz == (11, 12, 13)
    asym = Box((0, 0, 0), (1, 2, 3))
    assert asym.shape_xyz == (3, 2, 1)


def test_triple_conversion() -> None:
    assert xyz_to_zyx((4, 8, 40)) == (40, 8, 4)
    assert zyx_to_xyz((40, 8, 4)) == (4, 8, 40)
    with pytest.raises(InputError):
        xyz_to_zyx((1, 2))
    with pytest.raises(InputError):
        zyx_to_xyz((1, 2, 3, 4))


def test_points_xyz_to_zyx() -> None:
    points_xyz = np.array([[1, 2, 3], [4, 5, 6]])
    points_zyx = points_xyz_to_zyx(points_xyz)
    assert points_zyx.tolist() == [[3, 2, 1], [6, 5, 4]]
    points_zyx[0, 0] = 99
    assert points_xyz[0, 2] == 3  # a copy, not a view
    assert np.array_equal(points_zyx_to_xyz(points_xyz_to_zyx(points_xyz)), points_xyz)
    assert points_xyz_to_zyx(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("shape", [(3,), (2, 2), (4, 3, 1), (3, 4)])
def test_points_bad_shape(shape) -> None:
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        points_xyz_to_zyx(np.zeros(shape))
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        points_zyx_to_xyz(np.zeros(shape))


# -- slices and nm -------------------------------------------------------------------------------------------
def test_to_slices_with_origin() -> None:
    box = Box((10, 20, 30), (12, 25, 31))
    assert box.to_slices() == (slice(10, 12), slice(20, 25), slice(30, 31))
    assert box.to_slices((10, 20, 30)) == (slice(0, 2), slice(0, 5), slice(0, 1))
    array = np.arange(5 * 10 * 10).reshape(5, 10, 10)
    origin = (8, 18, 25)
    cut = array[box.to_slices(origin)]
    assert cut.shape == box.shape
    assert cut[0, 0, 0] == array[2, 2, 5]


def test_to_nm() -> None:
    start_nm, stop_nm = Box((1, 2, 3), (4, 5, 6)).to_nm((40, 4, 4))
    assert start_nm == (40.0, 8.0, 12.0)
    assert stop_nm == (160.0, 20.0, 24.0)


# -- algebra -------------------------------------------------------------------------------------------------
def test_intersect_overlapping() -> None:
    a = Box((0, 0, 0), (10, 10, 10))
    b = Box((5, -5, 8), (15, 5, 20))
    assert a.intersect(b) == Box((5, 0, 8), (10, 5, 10))
    assert a.intersect(b) == b.intersect(a)
    assert a.intersect(a) == a


def test_intersect_disjoint_is_empty() -> None:
    a = Box((0, 0, 0), (10, 10, 10))
    far = Box((20, 0, 0), (30, 10, 10))
    overlap = a.intersect(far)
    assert overlap.empty and overlap.size == 0
    touching = a.intersect(Box((10, 0, 0), (12, 10, 10)))  # half-open: sharing a face is no overlap
    assert touching.empty


def test_union() -> None:
    a = Box((0, 5, 0), (2, 6, 1))
    b = Box((-1, 0, 3), (1, 2, 4))
    assert a.union(b) == Box((-1, 0, 0), (2, 6, 4))
    assert a.union(b).contains(a) and a.union(b).contains(b)


def test_pad() -> None:
    box = Box((5, 5, 5), (10, 10, 10))
    assert box.pad(2) == Box((3, 3, 3), (12, 12, 12))
    assert box.pad((1, 0, 2)) == Box((4, 5, 3), (11, 10, 12))
    assert box.pad(-1) == Box((6, 6, 6), (9, 9, 9))
    shrunk = box.pad(-4)  # more than half the size: empty, not an error
    assert shrunk.empty
    with pytest.raises(InputError):
        box.pad((1, 2))


def test_translate() -> None:
    box = Box((0, 1, 2), (3, 4, 5))
    moved = box.translate((10, -1, 0))
    assert moved == Box((10, 0, 2), (13, 3, 5))
    assert moved.shape == box.shape


def test_contains() -> None:
    outer = Box((0, 0, 0), (10, 10, 10))
    assert outer.contains(Box((0, 0, 0), (10, 10, 10)))
    assert outer.contains(Box((2, 3, 4), (5, 6, 7)))
    assert not outer.contains(Box((2, 3, 4), (5, 6, 11)))
    assert not outer.contains(Box((-1, 3, 4), (5, 6, 7)))
    assert outer.contains_point((9, 9, 9))
    assert not outer.contains_point((10, 0, 0))  # stop is exclusive
    assert not outer.contains_point((0, -1, 0))


# -- chunk grids ---------------------------------------------------------------------------------------------
def test_chunk_indices() -> None:
    box = Box((5, 0, 17), (20, 8, 18))
    assert box.chunk_indices((8, 8, 8)) == (range(0, 3), range(0, 1), range(2, 3))
    # Grid anchored at (1, -4, 0): z chunks start at 1, 9, 17; y chunks at -4, 4.
    assert box.chunk_indices((8, 8, 8), (1, -4, 0)) == (range(0, 3), range(0, 2), range(2, 3))
    assert Box((0, 0, 0), (0, 4, 4)).chunk_indices((2, 2, 2)) == (range(0), range(0), range(0))
    with pytest.raises(InputError):
        box.chunk_indices((8, 0, 8))


@pytest.mark.parametrize(
    ("box", "chunk", "origin"),
    [
        (Box((3, 5, 7), (29, 22, 40)), (8, 6, 10), (1, 2, 3)),
        (Box((-7, 0, 2), (9, 13, 5)), (4, 5, 16), (-2, 3, 0)),
        (Box((0, 0, 0), (16, 16, 16)), (8, 8, 8), (0, 0, 0)),
    ],
)
def test_iter_chunks_covers_box_exactly_once(box: Box, chunk, origin) -> None:
    chunks = list(box.iter_chunks(chunk, origin))
    assert sum(c.size for c in chunks) == box.size
    count = np.zeros(box.shape, dtype=np.int32)
    for c in chunks:
        assert box.contains(c) and not c.empty
        count[c.to_slices(box.start)] += 1
        # each clipped chunk lies inside one grid cell
        cell = tuple((s - o) // n for s, o, n in zip(c.start, origin, chunk, strict=True))
        last = tuple((e - 1 - o) // n for e, o, n in zip(c.stop, origin, chunk, strict=True))
        assert cell == last
    assert np.all(count == 1)
    assert len(chunks) == np.prod([len(r) for r in box.chunk_indices(chunk, origin)])


def test_iter_chunks_unclipped_are_whole_grid_cells() -> None:
    box = Box((3, 5, 7), (29, 22, 40))
    for c in box.iter_chunks((8, 6, 10), (1, 2, 3), clip=False):
        assert c.shape == (8, 6, 10)
        assert all((s - o) % n == 0 for s, o, n in zip(c.start, (1, 2, 3), (8, 6, 10), strict=True))
        assert not c.intersect(box).empty
    starts = [c.start for c in box.iter_chunks((8, 6, 10), (1, 2, 3), clip=False)]
    assert starts == sorted(starts)  # C order: z slowest


def test_split() -> None:
    box = Box((10, 10, 10), (25, 20, 13))
    blocks = box.split((8, 10, 2))
    assert blocks[0] == Box((10, 10, 10), (18, 20, 12))  # anchored at the box start, not at 0
    assert sum(b.size for b in blocks) == box.size
    assert len(blocks) == 2 * 1 * 2
    assert blocks[-1] == Box((18, 10, 12), (25, 20, 13))
    for a, b in itertools.combinations(blocks, 2):
        assert a.intersect(b).empty
