"""``flag_volume`` on hand-made volumes: each task kind, the threshold, the per-chunk cap, suppression,
stable and chunking-independent keys, volumes vs arrays, offsets, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.flag import Task, flag_volume
from connectomix.volume import ArrayVolume, Box

BIG_A, BIG_B = 2**60 + 3, 2**60 + 5  # ids beyond 2**53


def zyx(point_xyz) -> tuple[int, int, int]:
    x, y, z = point_xyz
    return (z, y, x)


def test_uncertain_contact_between_two_segments_is_a_merge_task():
    seg = np.full((64, 64, 64), BIG_A, np.uint64)
    seg[:, :, 32:] = BIG_B
    prob = np.ones(seg.shape, np.float32)
    prob[20:40, 20:40, 30:34] = 0.5  # a band of maximal entropy across the contact at x = 31|32
    tasks = flag_volume(seg, prob, resolution_nm_xyz=(4, 4, 40))
    assert len(tasks) == 1
    task = tasks[0]
    assert task.kind == "merge" and task.segment_ids == (BIG_A, BIG_B)
    x, y, z = task.point_xyz
    assert x == 31 and 20 <= y < 40 and 20 <= z < 40  # on the contact, on the first segment's side
    assert task.point_nm_xyz == (4.0 * x, 4.0 * y, 40.0 * z)
    a, b = task.evidence["points_xyz"]
    assert seg[zyx(a)] == BIG_A and seg[zyx(b)] == BIG_B
    assert np.abs(np.subtract(a, b)).sum() == 1  # face neighbours across the contact
    assert task.evidence["voxels"] == 20 * 20 * 4
    assert task.evidence["entropy_mass"] == pytest.approx(1600.0)
    assert task.evidence["segment_sizes"] == {str(BIG_A): 32 * 64 * 64, str(BIG_B): 32 * 64 * 64}
    assert task.score == pytest.approx(1600.0 * np.log1p(32 * 64 * 64))
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task


@pytest.mark.parametrize("through", [False, True], ids=["partial-slab", "cutting-slab"])
def test_uncertain_slab_inside_one_segment_is_a_split_task(through):
    seg = np.full((64, 64, 64), 7, np.uint64)
    seg[:, :, :4] = 0
    prob = np.ones(seg.shape, np.float32)
    span = slice(None) if through else slice(12, 52)
    prob[span, span, 30:33] = 0.5
    tasks = flag_volume(seg, prob, top_fraction=0.05, max_tasks_per_chunk=1)
    assert [t.kind for t in tasks] == ["split"]
    task = tasks[0]
    assert task.segment_ids == (7,)
    assert 30 <= task.point_xyz[0] < 33
    assert task.evidence["interior_fraction"] > 0.5
    (source,), (sink,) = task.evidence["sources_xyz"], task.evidence["sinks_xyz"]
    assert seg[zyx(source)] == 7 and seg[zyx(sink)] == 7
    assert sorted([source[0], sink[0]])[0] < 30 and sorted([source[0], sink[0]])[1] >= 33  # either side


def test_unexplored_hole_is_an_unassigned_task():
    seg = np.full((64, 64, 64), 7, np.uint64)
    seg[20:30, 22:32, 24:34] = 0
    prob = np.where(seg > 0, 255, 0).astype(np.uint8)  # FFN quantisation: 0 = never explored
    tasks = flag_volume(seg, prob)
    assert [t.kind for t in tasks] == ["unassigned"]
    task = tasks[0]
    assert task.segment_ids == ()
    assert seg[zyx(task.point_xyz)] == 0
    assert task.evidence["neighbour_ids"] == ["7"]
    assert task.evidence["unassigned_fraction"] == 1.0


def blobs_in_segment(shape, centres_zyx, probs, segment=7):
    seg = np.full(shape, segment, np.uint64)
    prob = np.ones(shape, np.float32)
    for (z, y, x), p in zip(centres_zyx, probs, strict=True):
        prob[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = p
    return seg, prob


def test_top_fraction_sets_the_threshold():
    seg, prob = blobs_in_segment((64, 64, 64), [(16, 16, 16), (40, 40, 40)], [0.5, 0.1])
    one = flag_volume(seg, prob, top_fraction=27 / seg.size)  # only the 27 voxels of entropy 1
    assert len(one) == 1 and zyx(one[0].point_xyz) == (16, 16, 16)
    assert one[0].evidence["threshold"] == pytest.approx(1.0)
    both = flag_volume(seg, prob, top_fraction=54 / seg.size)
    assert len(both) == 2 and both[0].score > both[1].score
    assert flag_volume(seg, prob, min_cluster_voxels=28) == []


def test_at_most_k_tasks_per_chunk_the_best_ones():
    rng = np.random.default_rng(0)
    grid = [(z, y, x) for z in (8, 24, 40) for y in (8, 24, 40, 56) for x in (8, 24, 40)]  # 36, 16 apart
    centres = [*grid[:12], (8, 8, 72), (8, 24, 72), (24, 8, 72)]  # 12 in chunk x 0..63, 3 in x 64..127
    probs = list(rng.uniform(0.3, 0.5, size=len(centres)))
    seg, prob = blobs_in_segment((64, 64, 128), centres, probs)
    all_tasks = flag_volume(seg, prob, max_tasks_per_chunk=100)
    assert len(all_tasks) == 15
    capped = flag_volume(seg, prob, max_tasks_per_chunk=5)
    assert len(capped) == 8
    first = [t for t in capped if t.point_xyz[0] < 64]
    expected = [t for t in all_tasks if t.point_xyz[0] < 64][:5]
    assert first == expected  # the five best of the crowded chunk
    assert [t.score for t in capped] == sorted((t.score for t in capped), reverse=True)


def test_suppression_folds_a_cluster_cut_by_a_chunk_border():
    seg = np.full((64, 64, 64), 7, np.uint64)
    prob = np.ones(seg.shape, np.float32)
    prob[24:40, 10:20, 10:13] = 0.5  # crosses the chunk border z = 32 of 32³ chunks
    kept = flag_volume(seg, prob, chunk_zyx=(32, 32, 32), top_fraction=0.02)
    assert len(kept) == 1 and kept[0].kind == "split"
    assert kept[0].evidence["suppressed"] == 1
    both = flag_volume(seg, prob, chunk_zyx=(32, 32, 32), top_fraction=0.02, nms_radius_voxels=0)
    assert len(both) == 2
    assert {t.point_xyz[2] // 32 for t in both} == {0, 1}
    whole = flag_volume(seg, prob, chunk_zyx=(64, 64, 64), top_fraction=0.02)
    assert len(whole) == 1 and "suppressed" not in whole[0].evidence


def mixed_volume() -> tuple[np.ndarray, np.ndarray]:
    """96³: segments in slabs of x, plus a merge band, a split blob and an unexplored hole, each away
    from multiples of 32 and 48 (so no cluster crosses a chunk border of the chunkings compared)."""
    _, y, x = np.indices((96, 96, 96))
    seg = (1 + x // 24 + 4 * (y // 48)).astype(np.uint64) + np.uint64(2**62)
    prob = np.full(seg.shape, 255, np.uint8)
    prob[5:12, 5:12, 21:27] = 128  # across the contact x = 23|24: merge
    prob[70:74, 60:64, 8:12] = 140  # inside a segment: split
    seg[36:41, 36:41, 52:57] = 0
    prob[36:41, 36:41, 52:57] = 0  # never explored, unassigned: unassigned
    return seg, prob


def as_dicts(tasks: list[Task]) -> list[dict]:
    return sorted((t.to_dict() for t in tasks), key=lambda d: d["key"])


def test_keys_are_stable_across_runs_and_chunkings():
    seg, prob = mixed_volume()
    reference = flag_volume(seg, prob, max_tasks_per_chunk=50)
    assert sorted(t.kind for t in reference) == ["merge", "split", "unassigned"]
    json.dumps([t.to_dict() for t in reference])  # JSON-able evidence
    assert as_dicts(flag_volume(seg.copy(), prob.copy(), max_tasks_per_chunk=50)) == as_dicts(reference)
    for chunk in [(32, 32, 32), (48, 48, 48), (96, 96, 96), (32, 48, 96)]:
        other = flag_volume(seg, prob, chunk_zyx=chunk, max_tasks_per_chunk=50)
        assert as_dicts(other) == as_dicts(reference), chunk


def test_volumes_and_offsets_give_global_coordinates():
    seg, prob = mixed_volume()
    base = flag_volume(seg, prob, max_tasks_per_chunk=50)
    offset = (100, 0, 7)
    shifted = flag_volume(seg, prob, offset_zyx=offset, max_tasks_per_chunk=50)
    from_volumes = flag_volume(
        ArrayVolume(seg, chunks=(16, 16, 16), voxel_offset=offset),
        ArrayVolume(prob, chunks=(20, 20, 20), voxel_offset=offset),
        max_tasks_per_chunk=50,
    )
    assert as_dicts(from_volumes) == as_dicts(shifted)
    moved = {
        (t.kind, t.segment_ids, (t.point_xyz[0] - 7, t.point_xyz[1], t.point_xyz[2] - 100)) for t in shifted
    }
    assert moved == {(t.kind, t.segment_ids, t.point_xyz) for t in base}
    # the volume's resolution is used when asked for
    vol = ArrayVolume(seg, resolution=(40, 4, 4))
    (task, *_) = flag_volume(vol, prob, resolution_nm_xyz=None)
    assert task.point_nm_xyz == (4.0 * task.point_xyz[0], 4.0 * task.point_xyz[1], 40.0 * task.point_xyz[2])


def test_box_restricts_the_region_but_reads_context():
    seg, prob = mixed_volume()
    box = Box((0, 0, 0), (20, 20, 40))  # holds only the merge band
    tasks = flag_volume(seg, prob, box=box, top_fraction=0.05)
    assert [t.kind for t in tasks] == ["merge"]
    assert all(box.contains_point(zyx(t.point_xyz)) for t in tasks)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prob": np.ones((4, 4, 5), np.float32)}, "covers"),
        ({"prob": None}, "probability map or an uncertainty map"),
        ({"seg": np.ones((4, 4, 4), np.float32)}, "integer ids"),
        ({"seg": -np.ones((4, 4, 4), np.int32)}, "non-negative"),
        ({"box": Box((0, 0, 0), (5, 4, 4))}, "outside the volume"),
        ({"top_fraction": 0.0}, "top fraction"),
        ({"max_tasks_per_chunk": 0}, "max tasks per chunk"),
        ({"chunk_zyx": (0, 4, 4)}, "chunk_zyx"),
        ({"resolution_nm_xyz": (0, 1, 1)}, "resolution"),
        ({"seg": np.ones((4, 4), np.uint64)}, "3-D"),
    ],
)
def test_bad_input_raises_input_error(kwargs, fragment):
    args = {"seg": np.ones((4, 4, 4), np.uint64), "prob": np.ones((4, 4, 4), np.float32)}
    args.update(kwargs)
    seg, prob = args.pop("seg"), args.pop("prob")
    with pytest.raises(InputError, match=fragment):
        flag_volume(seg, prob, **args)
