"""Injected errors: merges of touching bodies, splits across a body's long axis, their recorded locations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.evaluate import contingency, evaluate, merging_segments, split_bodies
from connectomix.evaluate.perturb import error_interfaces, perturb_segmentation
from connectomix.volume import open_volume


def zyx(point_xyz) -> tuple[int, int, int]:
    x, y, z = point_xyz
    return (z, y, x)


def face_neighbours(labels: np.ndarray, point_zyx) -> set[int]:
    out = set()
    for axis in range(3):
        for step in (-1, 1):
            q = list(point_zyx)
            q[axis] += step
            if 0 <= q[axis] < labels.shape[axis]:
                out.add(int(labels[tuple(q)]))
    return out


def blocks() -> np.ndarray:
    """Four 20 x 20 x 40 bodies (ids 10, 20, 30, 40) tiling a 20 x 40 x 80 volume (z, y, x)."""
    gt = np.zeros((20, 40, 80), np.uint32)
    gt[:, :20, :40], gt[:, :20, 40:], gt[:, 20:, :40], gt[:, 20:, 40:] = 10, 20, 30, 40
    return gt


def test_one_merge_and_one_split_on_blocks():
    gt = blocks()
    result = perturb_segmentation(gt, n_merges=1, n_splits=1, seed=3, min_size=1000)
    seg = result.segmentation
    assert seg.dtype == np.uint64 and seg.shape == gt.shape
    (split,), (merge,) = result.splits, result.merges
    # the split: one body, two fresh ids, cut across its long (x) axis, both pieces sizeable
    (body,) = split.gt_ids
    pieces = seg[gt == body]
    assert set(np.unique(pieces).tolist()) == set(split.segment_ids)
    assert min(split.segment_ids) > gt.max()
    sizes = [int((seg == s).sum()) for s in split.segment_ids]
    assert sizes == [8000, 8000]
    cut = zyx(split.point_xyz)
    assert seg[cut] == split.segment_ids[0] and split.segment_ids[1] in face_neighbours(seg, cut)
    assert split.box.contains_point(cut)
    # the merge: two touching bodies (not the split one), one fresh id, located on their contact
    a, b = merge.gt_ids
    assert body not in merge.gt_ids
    assert np.all(seg[(gt == a) | (gt == b)] == merge.segment_ids[0])
    contact = zyx(merge.point_xyz)
    assert gt[contact] == a and b in face_neighbours(gt, contact)
    assert merge.box.contains_point(contact)
    # untouched bodies keep their ids
    (other,) = {10, 20, 30, 40} - {body, a, b}
    assert np.all(seg[gt == other] == other)
    json.dumps([e.to_dict() for e in result.injected])
    assert result.points_xyz().shape == (2, 3)


def test_same_seed_same_result_other_seed_differs():
    gt = _random_bodies()
    first = perturb_segmentation(gt, n_merges=3, n_splits=3, seed=0, min_size=50)
    again = perturb_segmentation(gt, n_merges=3, n_splits=3, seed=0, min_size=50)
    other = perturb_segmentation(gt, n_merges=3, n_splits=3, seed=1, min_size=50)
    assert np.array_equal(first.segmentation, again.segmentation) and first.injected == again.injected
    assert [e.gt_ids for e in other.injected] != [e.gt_ids for e in first.injected]


def _random_bodies() -> np.ndarray:
    """A Voronoi tessellation of a 48³ cube into 40 bodies (every body touches several others)."""
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 48, size=(40, 3))
    grid = np.indices((48, 48, 48)).reshape(3, -1).T
    nearest = np.argmin(((grid[:, None, :] - seeds[None]) ** 2).sum(axis=2), axis=1)
    return (nearest + 1).reshape(48, 48, 48).astype(np.uint64)


def test_errors_are_exactly_what_evaluation_sees():
    gt = _random_bodies()
    result = perturb_segmentation(gt, n_merges=4, n_splits=5, seed=2, min_size=100)
    table = contingency(result.segmentation, gt)
    assert sorted(merging_segments(table, min_overlap=1)) == sorted(e.segment_ids[0] for e in result.merges)
    assert sorted(split_bodies(table, min_overlap=1)) == sorted(e.gt_ids[0] for e in result.splits)
    unchanged = perturb_segmentation(gt, n_merges=0, n_splits=0, seed=0)
    assert np.array_equal(unchanged.segmentation, gt) and unchanged.injected == []


def test_error_interfaces_mark_only_the_injected_contacts_and_cuts():
    gt = blocks()
    result = perturb_segmentation(gt, n_merges=1, n_splits=1, seed=3, min_size=1000)
    mask = error_interfaces(result, gt)
    (split,), (merge,) = result.splits, result.merges
    a, b = merge.gt_ids
    expected = np.zeros(gt.shape, bool)
    for first, second in ((a, b), tuple(split.segment_ids)):
        labels = gt if first == a else result.segmentation
        for axis in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            face = ((labels[tuple(lo)] == first) & (labels[tuple(hi)] == second)) | (
                (labels[tuple(lo)] == second) & (labels[tuple(hi)] == first)
            )
            expected[tuple(lo)] |= face
            expected[tuple(hi)] |= face
    assert mask.sum() > 0 and np.array_equal(mask, expected)


def test_merges_across_unlabelled_seams_need_max_gap():
    gt = np.zeros((10, 10, 21), np.uint32)
    gt[:, :, :10], gt[:, :, 11:] = 1, 2  # a one-voxel 0 seam at x = 10
    with pytest.raises(InputError, match="only 0 of 1 merges"):
        perturb_segmentation(gt, n_merges=1, n_splits=0, seed=0, min_size=100)
    result = perturb_segmentation(gt, n_merges=1, n_splits=0, seed=0, min_size=100, max_gap=1)
    (merge,) = result.merges
    assert np.all(result.segmentation == merge.segment_ids[0])  # both bodies and the bridged seam
    assert error_interfaces(result, gt)[:, :, 9:12].all()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_merges": 3}, "only 2 of 3 merges"),
        ({"n_splits": 5}, "only 4 of 5 splits"),
        ({"n_merges": -1}, "must be ≥ 0"),
        ({"max_gap": -1}, "max_gap"),
        ({"min_size": 9000, "n_splits": 1}, "splits possible"),
    ],
)
def test_impossible_requests_raise_input_error(kwargs, fragment):
    args = {"n_merges": 0, "n_splits": 0, "seed": 0, "min_size": 1000, **kwargs}
    with pytest.raises(InputError, match=fragment):
        perturb_segmentation(blocks(), **args)


def test_bad_ground_truth_raises_input_error():
    with pytest.raises(InputError, match="3-D"):
        perturb_segmentation(np.zeros((4, 4), np.uint32), n_merges=0, n_splits=0, seed=0)
    with pytest.raises(InputError, match="integer ids"):
        perturb_segmentation(np.zeros((4, 4, 4), np.float32), n_merges=0, n_splits=0, seed=0)
    with pytest.raises(InputError, match="non-negative"):
        perturb_segmentation(-np.ones((4, 4, 4), np.int32), n_merges=0, n_splits=0, seed=0)


def test_fib25_crop(testdata):
    gt = open_volume("fib25-crop100/gt").read()
    result = perturb_segmentation(gt, n_merges=6, n_splits=6, seed=0, min_size=300)
    assert len(result.merges) == 6 and len(result.splits) == 6
    used = [g for e in result.injected for g in e.gt_ids]
    assert len(used) == len(set(used)) == 18
    for merge in result.merges:
        a, b = merge.gt_ids
        point = zyx(merge.point_xyz)
        assert gt[point] == a and b in face_neighbours(gt, point)
    for split in result.splits:
        assert all((result.segmentation == s).sum() >= 300 for s in split.segment_ids)
    scores = evaluate(result.segmentation, gt, min_overlap=300)
    assert scores.n_merging_segments == 6 and scores.n_split_bodies == 6
    assert scores.vi_merge > 0 and scores.vi_split > 0
