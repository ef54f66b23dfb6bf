"""Correction patches from a real proofreading session (queue + edit log + simulated proofreaders), the
queue's completion cursor, and the streaming learner picking up tasks completed while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from connectomix.errors import InputError
from connectomix.evaluate import perturb_segmentation
from connectomix.flag import Task
from connectomix.learn.continual import ContinualLearner
from connectomix.learn.patches import patches_from_tasks
from connectomix.learn.registry import WeightsRegistry
from connectomix.learn.replay import ground_truth_patches
from connectomix.learn.streaming import StreamingLearner
from connectomix.proofread.edits import EditLog
from connectomix.proofread.queue import TaskQueue
from connectomix.proofread.simulate import ProofreaderModel, simulate
from connectomix.segment.models import FFNConfig, FFNModel, build_model
from connectomix.segment.training import _loss, _Stream, make_example
from connectomix.volume import open_volume
from connectomix.volume.synthetic import make_synthetic

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2), image_mean=128, image_stddev=30)
PATCH = (21, 29, 29)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def session_data():
    """A synthetic volume and its ground truth with 6 false merges and 6 false splits injected."""
    volume = make_synthetic((40, 96, 96), seed=2, resolution_nm_zyx=(20.0, 20.0, 20.0))
    perturbed = perturb_segmentation(volume.gt, n_merges=6, n_splits=6, seed=0, min_size=300)
    return volume, perturbed


def error_tasks(seg: np.ndarray, perturbed) -> list[Task]:
    """A split task on every false merge, a merge task (a point on either side) on every false split."""
    tasks = []
    for error in perturbed.injected:
        if error.kind == "merge":
            tasks.append(Task.create("split", error.point_xyz, (error.segment_ids[0],), 2.0))
            continue
        first, second = error.segment_ids
        x, y, z = error.point_xyz
        other = next(
            (x + dx, y + dy, z + dz)
            for dx, dy, dz in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
            if 0 <= z + dz < seg.shape[0] and 0 <= y + dy < seg.shape[1] and 0 <= x + dx < seg.shape[2]
            and seg[z + dz, y + dy, x + dx] == second
        )  # fmt: skip
        a, b = sorted((first, second))
        points = (
            [list(error.point_xyz), list(other)] if first < second else [list(other), list(error.point_xyz)]
        )
        tasks.append(Task.create("merge", error.point_xyz, (a, b), 2.0, evidence={"points_xyz": points}))
    return tasks


def open_session(tmp_path: Path, session_data, *, wall_clock: bool = False):
    volume, perturbed = session_data
    seg = perturbed.segmentation
    url = f"zarr://{tmp_path / 'seg.zarr'}"
    out = open_volume(url, "w", shape=seg.shape, dtype=seg.dtype, chunks=(32, 32, 32))
    out.write(out.bounds, seg)
    db = f"sqlite:///{tmp_path / 'cx.db'}"
    queue = TaskQueue(db) if wall_clock else TaskQueue(db, clock=lambda: 1_700_000_000.0)
    tasks = error_tasks(seg, perturbed)
    assert queue.enqueue_many(tasks) == len(tasks) == 12
    log = EditLog.create(db, tmp_path / "ws", url, chunks_zyx=(32, 32, 32))
    return volume, queue, log, db


PROOFREADER = ProofreaderModel(seconds_per_task=0.0, jitter=0.0, error_rate=0.0)


def test_completions_cursor_and_patches_from_corrected_tasks(tmp_path, session_data) -> None:
    volume, queue, log, _ = open_session(tmp_path, session_data)
    assert queue.completions(0) == []
    simulate(queue, log, volume.gt, users=2, model=PROOFREADER, max_tasks=5, seed=0)
    first = queue.completions(0)
    assert len(first) == 5 and [e for e, _ in first] == sorted(e for e, _ in first)
    cursor = first[-1][0]
    assert queue.completions(cursor) == []
    simulate(queue, log, volume.gt, users=2, model=PROOFREADER, seed=1)
    rest = queue.completions(cursor)
    assert len(rest) == 7 and {t.key for _, t in first}.isdisjoint(t.key for _, t in rest)
    assert len(queue.completions(0, limit=3)) == 3
    with pytest.raises(InputError, match="event id"):
        queue.completions(-1)

    done = [t for _, t in first + rest]
    patches = patches_from_tasks(done, log, volume.raw, CONFIG, shape_zyx=PATCH)
    current = log.read()
    assert len(patches) == 12
    edited = 0
    for patch, task in zip(patches, done, strict=True):
        assert patch.task_key == task.key and patch.source == "correction"
        assert patch.labels.shape == PATCH and patch.box.shape == PATCH
        np.testing.assert_array_equal(patch.labels, current[patch.box.to_slices()])
        np.testing.assert_array_equal(patch.raw, volume.raw[patch.box.to_slices()])
        x, y, z = task.task.point_xyz
        assert int(current[z, y, x]) in patch.centre_ids  # the segment the proofreader checked
        if task.result.get("edit_id") is not None:
            edited += 1
            assert patch.edit_ids == (int(task.result["edit_id"]),)
    assert edited >= 10  # every injected error was edited away (error rate 0)
    # a merge fix leaves one segment across both evidence points; its patch centres on it
    merge = next(p for p, t in zip(patches, done, strict=True) if t.task.kind == "merge" and p.edit_ids)
    assert len(merge.centre_ids) >= 1
    log.close()
    queue.dispose()


def base_model() -> FFNModel:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def held_out_loss(patches):
    """``evaluate(model)``: the FFN loss on fixed, un-augmented examples of validated patches."""

    def evaluate(model: FFNModel) -> float:
        rng = np.random.default_rng(0)
        total = 0.0
        for patch in patches:
            centre = np.argwhere(patch.centre_mask(CONFIG))[0]
            stream = _Stream.start(
                0, make_example(patch.raw, patch.labels, centre, CONFIG, rng, augment=False)
            )
            stream.next_offset(CONFIG, 1)
            window = stream.window(CONFIG)
            tensors = [torch.from_numpy(a[window][None, None]) for a in (stream.example.image, stream.canvas)]
            target = torch.from_numpy(stream.example.target[window][None, None])
            with torch.no_grad():
                logits, log_var = model.predict(*tensors)
                total += float(_loss(model, logits, log_var, target)[0])
        return total / len(patches)

    return evaluate


def wait_for(condition, streaming: StreamingLearner, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert streaming.report.errors == []
        assert time.monotonic() < deadline, "timed out waiting for the streaming learner"
        time.sleep(0.05)


def test_streaming_learner_picks_up_tasks_completed_while_it_runs(tmp_path, session_data) -> None:
    volume, queue, log, db = open_session(tmp_path, session_data, wall_clock=True)
    base = base_model()
    registry = WeightsRegistry(db, tmp_path / "ws", user="stream-test")
    base_entry = registry.add_base(base, name="stream")
    validation = ground_truth_patches(volume.raw, volume.gt, CONFIG, n=4, seed=9, shape_zyx=PATCH)
    learner = ContinualLearner(base, seed=0, lr=3e-3, batch_size=2, max_fovs_per_example=2)
    streaming = StreamingLearner(
        queue, log, volume.raw, learner, registry, base_entry, held_out_loss(validation),
        region="held-out ground-truth patches", min_tasks=4, poll_seconds=0.05, epochs=2, shape_zyx=PATCH,
    )  # fmt: skip
    with streaming:
        wait_for(streaming.idle.is_set, streaming)
        assert streaming.report.rounds == []  # nothing completed yet: no round
        simulate(queue, log, volume.gt, users=2, model=PROOFREADER, max_tasks=4, seed=0)
        wait_for(lambda: len(streaming.report.rounds) == 1, streaming)
        simulate(queue, log, volume.gt, users=2, model=PROOFREADER, max_tasks=4, seed=1)
        wait_for(lambda: len(streaming.report.rounds) == 2, streaming)
        simulate(queue, log, volume.gt, users=1, model=PROOFREADER, max_tasks=1, seed=2)
        wait_for(lambda: streaming.report.tasks_seen == 9, streaming)
    report = streaming.report
    assert report.errors == [] and report.tasks_seen == 9
    first, second = report.rounds
    assert len(first.tasks) == 4 and len(second.tasks) == 4 and set(first.tasks).isdisjoint(second.tasks)
    completed = [t.key for _, t in queue.completions(0)]
    assert len(completed) == 9 and set(first.tasks) | set(second.tasks) == set(completed[:8])
    # the ninth waits for more (min_tasks = 4) until a forced round takes it
    third = streaming.run_once(force=True)
    assert third is not None and third.tasks == completed[8:]
    # lineage: each adapter names the tasks it was trained on and descends from the one before
    lineage = registry.lineage(third.entry_id)
    assert lineage["base"] == base_entry.id and lineage["parents"] == [second.entry_id]
    assert sorted(lineage["tasks"]) == sorted(third.tasks)
    assert sorted(lineage["all_tasks"]) == sorted(completed)
    # the held-out loss went down, so the first adapter was promoted and its tasks have a latency
    assert first.promoted and first.scores["candidate"] < first.scores["served"]
    assert set(first.tasks) <= set(report.latencies_s)
    assert all(0 <= s < 120 for s in report.latencies_s.values())
    served = registry.promoted("stream")
    assert served is not None and served.id in {first.entry_id, second.entry_id, third.entry_id}
    log.close()
    queue.dispose()
    registry.dispose()
