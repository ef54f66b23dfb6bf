"""The simulated proofreader: its answers on constructed volumes, its mistakes, and whole sessions that work a
queue of tasks pointing at errors injected into a synthetic EM volume's ground truth, fixing them."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from connectomix.errors import InputError
from connectomix.evaluate import InjectedError, evaluate, perturb_segmentation
from connectomix.flag import Task
from connectomix.proofread.edits import EditLog
from connectomix.proofread.queue import TaskQueue
from connectomix.proofread.simulate import (
    ProofreaderModel,
    SimulatedClock,
    SimulationReport,
    decide,
    simulate,
)
from connectomix.volume import ArrayVolume, open_volume
from connectomix.volume.synthetic import make_synthetic

SHAPE = (24, 32, 96)  # (z, y, x) of the constructed volumes


def write_zarr(path: Path, array: np.ndarray) -> str:
    url = f"zarr://{path}"
    volume = open_volume(url, "w", shape=array.shape, dtype=array.dtype, chunks=(32, 32, 32))
    volume.write(volume.bounds, array)
    return url


def merge_task(a: int, b: int, point_a: tuple, point_b: tuple, score: float = 1.0) -> Task:
    """A merge task between ``a`` and ``b`` (a < b) with one point (x, y, z) in each."""
    return Task.create(
        "merge", point_a, (a, b), score, evidence={"points_xyz": [list(point_a), list(point_b)]}
    )


def split_task(segment: int, point: tuple, score: float = 1.0) -> Task:
    return Task.create("split", point, (segment,), score)


def at(array: np.ndarray, point_xyz) -> int:
    x, y, z = point_xyz
    return int(array[z, y, x])


def three_bodies() -> np.ndarray:
    """Ground truth: body 1 at x < 40, body 2 at 40 ≤ x < 64, body 3 at x ≥ 64 (so 1 is the largest)."""
    gt = np.zeros(SHAPE, np.uint64)
    gt[..., :40], gt[..., 40:64], gt[..., 64:] = 1, 2, 3
    return gt


# -- decide() on constructed volumes ---------------------------------------------------------------------
def test_merge_task_on_two_pieces_of_one_body_merges() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :20], seg[..., 20:40] = 11, 12  # body 1 falsely split at x = 20
    decision = decide(merge_task(11, 12, (19, 10, 10), (20, 10, 10)), seg, gt)
    assert decision.action == "merge" and decision.segment_ids == (11, 12)
    assert decision.points_xyz == ((19, 10, 10), (20, 10, 10)) and not decision.flipped
    # without evidence points the task's ids are used
    bare = Task.create("merge", (19, 10, 10), (11, 12), 1.0)
    assert decide(bare, seg, gt).action == "merge"


def test_merge_task_on_two_bodies_is_correct() -> None:
    gt = three_bodies()
    decision = decide(merge_task(1, 2, (39, 5, 5), (40, 5, 5)), gt, gt)
    assert decision.action == "correct" and decision.segment_ids == (1, 2)
    assert "differ" in decision.reason
    # mostly-one-body segments that are *majority* different bodies stay apart even with some overlap
    seg = gt.copy()
    seg[..., 30:40] = 2  # segment 2 now holds a slab of body 1, but mostly body 2
    assert decide(merge_task(1, 2, (29, 5, 5), (30, 5, 5)), seg, gt).action == "correct"


def test_split_task_on_segment_covering_two_bodies_splits_between_them() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :64] = 7  # bodies 1 and 2 falsely merged into segment 7
    decision = decide(split_task(7, (40, 16, 12)), seg, gt)
    assert decision.action == "split" and decision.segment_ids == (7,)
    ((source,), (sink,)) = decision.sources_xyz, decision.sinks_xyz
    assert at(gt, source) == 1 and at(gt, sink) == 2  # the larger body gets the source
    assert at(seg, source) == 7 and at(seg, sink) == 7
    # deep inside: at least 5 voxels from the other body and inside the window around the task
    assert source[0] <= 35 and sink[0] >= 45


def test_split_task_on_one_body_is_correct() -> None:
    gt = three_bodies()
    assert decide(split_task(3, (80, 16, 12)), gt, gt).action == "correct"
    # a sliver of another body below min_split_fraction is not worth a split
    seg = gt.copy()
    seg[..., 62:] = 3  # segment 3 takes 2 columns of body 2: 2 / 34 of its voxels
    decision = decide(split_task(3, (80, 16, 12)), seg, gt)
    assert decision.action == "correct" and decision.reason == "one ground-truth body"
    assert decide(split_task(3, (80, 16, 12)), seg, gt, ProofreaderModel(min_split_fraction=0.05)).action == (
        "split"
    )


def test_unassigned_gap_inside_one_body_is_merged_across() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :18], seg[..., 18:23], seg[..., 23:40] = 11, 0, 12  # body 1 stopped early: a gap at x 18-22
    task = Task.create("unassigned", (20, 10, 10), (), 1.0)
    decision = decide(task, seg, gt)
    assert decision.action == "merge" and set(decision.segment_ids) == {11, 12}
    (xa, ya, za), (xb, yb, zb) = decision.points_xyz
    assert seg[za, ya, xa] == decision.segment_ids[0] and seg[zb, yb, xb] == decision.segment_ids[1]
    assert abs(xa - 20) <= 3 and abs(xb - 20) <= 3  # the voxels nearest the task's point
    # a gap between two different bodies is not merged across (without painting it is left as it is)
    seg = gt.copy()
    seg[..., 38:42] = 0
    between = Task.create("unassigned", (40, 10, 10), (), 1.0)
    assert decide(between, seg, gt, ProofreaderModel(paint_unassigned=False)).action == "correct"
    assert decide(between, seg, gt).action == "paint"
    # gap_reach 0: unassigned tasks are never acted on
    seg = gt.copy()
    seg[..., :18], seg[..., 18:23], seg[..., 23:40] = 11, 0, 12
    assert decide(task, seg, gt, ProofreaderModel(gap_reach=0)).action == "correct"
    with pytest.raises(InputError, match="gap_reach"):
        ProofreaderModel(gap_reach=-1)


def test_unassigned_part_of_a_body_is_painted_into_its_segment() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., 30:40] = 0  # body 1's segment stopped early at x = 30
    task = Task.create("unassigned", (33, 10, 10), (), 1.0)
    decision = decide(task, seg, gt)
    assert decision.action == "paint" and decision.segment_ids == (1,)
    box, mask = decision.paint_box, decision.paint_mask
    assert box is not None and mask is not None and mask.shape == tuple(box.shape)
    painted = np.zeros(gt.shape, bool)
    painted[box.to_slices()] = mask
    assert painted.any() and np.all(gt[painted] == 1) and np.all(seg[painted] == 0)
    assert decide(task, seg, gt, ProofreaderModel(paint_unassigned=False)).action == "correct"


def test_task_whose_segments_were_already_merged_is_correct() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :40] = 99  # the pieces 11 and 12 the task was made for were merged into 99 since
    decision = decide(merge_task(11, 12, (19, 10, 10), (20, 10, 10)), seg, gt)
    assert decision.action == "correct" and decision.segment_ids == (99, 99)
    assert "no longer separate" in decision.reason
    bare = Task.create("merge", (19, 10, 10), (11, 12), 1.0)
    assert decide(bare, seg, gt).action == "correct"
    # a split task whose segment is gone is judged on the segment now at its point
    assert decide(split_task(7, (20, 10, 10)), seg, gt).action == "correct"


def test_decide_reads_volumes_in_global_coordinates() -> None:
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :64] = 7
    offset_zyx = (5, 0, 100)
    seg_volume = ArrayVolume(seg, voxel_offset=offset_zyx)
    gt_volume = ArrayVolume(gt, voxel_offset=offset_zyx)
    decision = decide(split_task(7, (140, 16, 17)), seg_volume, gt_volume)
    assert decision.action == "split"
    (source,), (sink,) = decision.sources_xyz, decision.sinks_xyz
    assert 100 <= source[0] < 140 <= sink[0] < 164 and 5 <= source[2] < 29
    # a task outside the volume is left alone
    assert decide(split_task(7, (5, 5, 5)), seg_volume, gt_volume).action == "correct"
    with pytest.raises(InputError, match="differ"):
        decide(split_task(7, (40, 16, 12)), seg[:-1], gt)


def test_model_validates_its_parameters() -> None:
    ProofreaderModel(seconds_per_task=0.0, jitter=0.0, error_rate=1.0, majority=1.0)
    for bad in (
        {"seconds_per_task": -1.0},
        {"seconds_per_task": math.nan},
        {"seconds_per_task": math.inf},
        {"jitter": -0.1},
        {"error_rate": -0.01},
        {"error_rate": 1.5},
        {"error_rate": math.nan},
        {"majority": 0.0},
        {"majority": 1.2},
        {"min_split_fraction": 0.5},
        {"min_split_fraction": 0.0},
        {"min_split_voxels": 0},
    ):
        with pytest.raises(InputError):
            ProofreaderModel(**bad)


# -- simulate() on a constructed volume ----------------------------------------------------------------------
def constructed_session(tmp_path: Path, error_rate: float, users: int = 1):
    """Seg: body 1 falsely split (11 | 12 at x = 20), bodies 2 and 3 falsely merged (20); three tasks: the
    merge of 11 and 12, the split of 20, and a merge of 12 with 20 (correct as is)."""
    gt = three_bodies()
    seg = gt.copy()
    seg[..., :20], seg[..., 20:40], seg[..., 40:] = 11, 12, 20
    boundary = np.zeros(SHAPE, np.float32)
    boundary[..., 63:65] = 1.0  # the membrane between bodies 2 and 3
    workspace = tmp_path / f"ws-{error_rate}-{users}"
    db = f"sqlite:///{tmp_path / f'cx-{error_rate}-{users}.db'}"
    seg_url = write_zarr(tmp_path / f"seg-{error_rate}-{users}.zarr", seg)
    boundary_url = write_zarr(tmp_path / f"boundary-{error_rate}-{users}.zarr", boundary)
    clock = SimulatedClock()
    queue = TaskQueue(db, clock=clock)
    tasks = [
        merge_task(11, 12, (19, 10, 10), (20, 10, 10), score=3.0),
        split_task(20, (64, 16, 12), score=2.0),
        merge_task(12, 20, (39, 10, 10), (40, 10, 10), score=1.0),
    ]
    assert queue.enqueue_many(tasks) == 3
    log = EditLog.create(db, workspace, seg_url, boundary_url=boundary_url, chunks_zyx=(32, 32, 32))
    model = ProofreaderModel(seconds_per_task=20.0, jitter=0.0, error_rate=error_rate)
    report = simulate(queue, log, gt, users=users, model=model, clock=clock, seed=1)
    return report, queue, log, gt, seg


def test_error_rate_zero_answers_every_task_right(tmp_path) -> None:
    report, queue, log, gt, _ = constructed_session(tmp_path, 0.0)
    with log:
        assert report.flipped == 0 and report.edits == 2 and report.tasks == 3
        assert report.actions == Counter({"merge": 1, "split": 1, "correct": 1})
        assert [(e.operation, e.user) for e in log.edits()] == [("merge", "sim1"), ("split", "sim1")]
        final = log.read()
        # every ground-truth body is now exactly one segment and no segment spans two bodies
        assert evaluate(final, gt, min_overlap=1).vi == pytest.approx(0.0, abs=1e-9)
        assert report.simulated_seconds == 60.0 and report.per_user == Counter({"sim1": 3})
        assert (report.start_version, report.end_version) == (0, 2)
    results = {t.key: t.result for t in queue.history("sim1")}
    assert sorted(r["action"] for r in results.values()) == ["correct", "merge", "split"]
    assert all(r["simulated"] and not r["flipped"] and r["seconds"] == 20.0 for r in results.values())
    queue.dispose()


def test_error_rate_one_flips_every_answer(tmp_path) -> None:
    report, queue, log, gt, seg = constructed_session(tmp_path, 1.0)
    with log:
        # the merge and the split are missed; the "correct" merge task becomes a false merge
        assert report.flipped == 3 and report.edits == 1 and report.tasks == 3
        assert report.actions == Counter({"correct": 2, "merge": 1})
        (edit,) = log.edits()
        assert edit.operation == "merge" and set(edit.parent_ids) == {12, 20}
        assert evaluate(log.read(), gt).vi > evaluate(seg, gt).vi  # mistakes make it worse
    reasons = sorted(r.result["reason"] for r in queue.history("sim1"))
    assert reasons == ["mistake: false merge", "mistake: missed", "mistake: missed"]
    queue.dispose()


def test_simulate_validates_its_arguments(tmp_path) -> None:
    gt = three_bodies()
    queue = TaskQueue(tmp_path / "cx.db")
    log = EditLog.create(tmp_path / "cx.db", tmp_path / "ws", write_zarr(tmp_path / "s.zarr", gt))
    with log:
        for users in (0, -2, 1.5, True):
            with pytest.raises(InputError, match="users"):
                simulate(queue, log, gt, users=users)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="max_tasks"):
            simulate(queue, log, gt, max_tasks=-1)
        with pytest.raises(InputError, match="does not match"):
            simulate(queue, log, gt[:, :, :-1])
        report = simulate(queue, log, gt)  # an empty queue: nothing happens, no time passes
        assert report.tasks == 0 and report.simulated_seconds == 0.0 and report.to_dict()["users"] == 1
    queue.dispose()


# -- simulate() end to end: injected errors in a synthetic volume -------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    """A synthetic EM volume (exact ground truth and boundary map) with 5 false merges and 5 false splits."""
    volume = make_synthetic((40, 96, 96), seed=2)
    perturbed = perturb_segmentation(volume.gt, n_merges=5, n_splits=5, seed=0, min_size=400)
    return volume, perturbed


def error_tasks(seg: np.ndarray, errors: list[InjectedError]) -> list[Task]:
    """One task per injected error, as flagging would make it: a split task on a false merge, a merge task
    (with a point on either side of the cut) on the two pieces of a false split."""
    tasks = []
    for error in errors:
        if error.kind == "merge":
            tasks.append(split_task(error.segment_ids[0], error.point_xyz, score=2.0))
            continue
        first, second = error.segment_ids
        x, y, z = error.point_xyz
        assert seg[z, y, x] == first
        steps = np.vstack([np.eye(3), -np.eye(3)]).astype(int).tolist()
        neighbours = [(x + dx, y + dy, z + dz) for dx, dy, dz in steps]
        inside = [p for p in neighbours if all(0 <= v < s for v, s in zip(p, seg.shape[::-1], strict=True))]
        other = next(p for p in inside if at(seg, p) == second)
        tasks.append(merge_task(first, second, (x, y, z), other, score=2.0))
    return tasks


def decoy_tasks(seg: np.ndarray, errors: list[InjectedError], count: int) -> list[Task]:
    """``count`` tasks where nothing is wrong, alternately a merge task between two touching untouched
    bodies (at their first contact along x) and a split task on an untouched body."""
    touched = {int(i) for e in errors for i in e.segment_ids}
    low, high = seg[..., :-1], seg[..., 1:]
    z, y, x = np.nonzero(low != high)
    merges: dict[tuple[int, int], Task] = {}
    splits: dict[int, Task] = {}
    for zi, yi, xi in zip(z.tolist(), y.tolist(), x.tolist(), strict=True):
        a, b = int(low[zi, yi, xi]), int(high[zi, yi, xi])
        if a in touched or b in touched or (min(a, b), max(a, b)) in merges:
            continue
        pa, pb = (xi, yi, zi), (xi + 1, yi, zi)
        merges[min(a, b), max(a, b)] = merge_task(min(a, b), max(a, b), *((pa, pb) if a < b else (pb, pa)))
        splits.setdefault(a, split_task(a, pa))
    assert len(merges) >= count // 2 and len(splits) >= count - count // 2, (len(merges), len(splits))
    return list(merges.values())[: count // 2] + list(splits.values())[: count - count // 2]


def run_session(
    tmp_path: Path, db: str, synthetic, *, error_rate: float = 0.0, seed: int = 0, users: int = 3
):
    volume, perturbed = synthetic
    seg = perturbed.segmentation
    tmp_path.mkdir(parents=True, exist_ok=True)
    tag = f"{error_rate}-{seed}-{users}"
    seg_url = write_zarr(tmp_path / f"seg-{tag}.zarr", seg)
    boundary_url = write_zarr(tmp_path / f"boundary-{tag}.zarr", volume.boundary)
    tasks = error_tasks(seg, perturbed.injected) + decoy_tasks(seg, perturbed.injected, 8)
    clock = SimulatedClock()
    queue = TaskQueue(db, clock=clock)
    assert queue.enqueue_many(tasks) == len(tasks)
    log = EditLog.create(
        db, tmp_path / f"ws-{tag}", seg_url, boundary_url=boundary_url, chunks_zyx=(32, 32, 32)
    )
    model = ProofreaderModel(seconds_per_task=30.0, jitter=0.0, error_rate=error_rate)
    report = simulate(queue, log, volume.gt, users=users, model=model, clock=clock, seed=seed)
    return tasks, queue, log, report


def vi(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    scores = evaluate(seg, gt)
    return scores.vi_split, scores.vi_merge


def test_simulated_session_fixes_injected_errors(database_url, tmp_path, synthetic) -> None:
    volume, perturbed = synthetic
    tasks, queue, log, report = run_session(tmp_path, database_url, synthetic)
    with log:
        n = len(tasks)
        assert n == 18 and report.tasks == n and report.conflicts == 0
        # every task completed exactly once, by one of the three simulated users
        stats = queue.stats()
        assert (stats.done, stats.depth, stats.claimed, stats.skipped) == (n, 0, 0, 0)
        completed = Counter(e.task_id for e in queue.events() if e.event == "completed")
        assert len(completed) == n and set(completed.values()) == {1}
        history = {user: queue.history(user) for user in ("sim1", "sim2", "sim3")}
        assert sorted(t.key for h in history.values() for t in h) == sorted(t.key for t in tasks)
        assert (
            {user: len(h) for user, h in history.items()}
            == report.per_user
            == {"sim1": 6, "sim2": 6, "sim3": 6}
        )
        # users work in parallel: 18 tasks of 30 s by 3 users take 180 simulated seconds, not 540
        assert report.simulated_seconds == pytest.approx(n * 30.0 / 3)
        assert stats.handling_p50_s == pytest.approx(30.0) and stats.handling_p95_s == pytest.approx(30.0)
        # the edits are in the log, made by the simulated users, one per merge / split answer
        edits = log.edits()
        assert len(edits) == report.edits == report.actions["merge"] + report.actions["split"]
        assert {e.user for e in edits} <= {"sim1", "sim2", "sim3"} and len({e.user for e in edits}) >= 2
        # the answers: every false split merged, most false merges split; decoys left alone
        by_key = {t.key: t for h in history.values() for t in h}
        errors_fixed = Counter(by_key[t.key].result["action"] for t in tasks[:10])
        decoys = Counter(by_key[t.key].result["action"] for t in tasks[10:])
        assert errors_fixed["merge"] == 5 and errors_fixed["split"] >= 4, errors_fixed
        assert decoys == Counter({"correct": 8}), decoys
        # and the segmentation is closer to the ground truth in both directions
        before = vi(perturbed.segmentation, volume.gt)
        after = vi(log.read(), volume.gt)
        assert after[0] < before[0] and after[1] < before[1], (before, after)
        assert sum(after) < 0.1 * sum(before), (before, after)  # measured: 0.712 → 0.012 bits
    queue.dispose()


def test_simulation_is_deterministic_and_mistakes_cost_accuracy(tmp_path, synthetic) -> None:
    volume, perturbed = synthetic
    runs: dict[str, tuple[SimulationReport, np.ndarray]] = {}
    for name, error_rate, seed in (("a", 0.0, 7), ("b", 0.0, 7), ("noisy", 0.4, 7)):
        db = f"sqlite:///{tmp_path / f'{name}.db'}"
        _, queue, log, report = run_session(tmp_path / name, db, synthetic, error_rate=error_rate, seed=seed)
        with log:
            runs[name] = (report, log.read())
        queue.dispose()
    (a, seg_a), (b, seg_b), (noisy, seg_noisy) = runs["a"], runs["b"], runs["noisy"]
    assert a.decisions == b.decisions and a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(seg_a, seg_b)
    assert noisy.flipped > 0 and noisy.to_dict()["flipped"] == noisy.flipped
    assert sum(r["flipped"] for r in noisy.decisions) == noisy.flipped
    vi_before = sum(vi(perturbed.segmentation, volume.gt))
    vi_clean, vi_noisy = sum(vi(seg_a, volume.gt)), sum(vi(seg_noisy, volume.gt))
    assert vi_clean < vi_noisy, (vi_clean, vi_noisy)
    assert vi_noisy != vi_before


def test_max_tasks_and_jittered_durations(tmp_path, synthetic) -> None:
    volume, perturbed = synthetic
    seg_url = write_zarr(tmp_path / "seg.zarr", perturbed.segmentation)
    db = f"sqlite:///{tmp_path / 'cx.db'}"
    clock = SimulatedClock(start=1000.0)
    queue = TaskQueue(db, clock=clock)  # simulate() finds the queue's simulated clock by itself
    tasks = error_tasks(perturbed.segmentation, perturbed.injected)
    queue.enqueue_many(tasks)
    with EditLog.create(db, tmp_path / "ws", seg_url) as log:
        report = simulate(queue, log, volume.gt, users=2, max_tasks=4, seed=3)
        assert report.tasks == 4 and queue.stats().done == 4 and queue.stats().depth == len(tasks) - 4
        assert queue.stats().claimed == 0  # nobody holds a task when the simulation stops
        seconds = [r["seconds"] for r in report.decisions]
        assert len(set(seconds)) == 4 and all(5.0 < s < 180.0 for s in seconds)  # log-normal around 30 s
        # two users in parallel: the run lasts as long as the busier user's tasks, not their sum
        per_user = Counter()
        for record in report.decisions:
            per_user[record["user"]] += record["seconds"]
        assert report.simulated_seconds <= max(per_user.values()) + 1e-6 < sum(seconds)
        assert clock() == pytest.approx(1000.0 + report.simulated_seconds)
    queue.dispose()
