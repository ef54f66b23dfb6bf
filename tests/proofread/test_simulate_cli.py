"""``cx proofread simulate``: simulated proofreaders work the workspace's queue from the command line, the
edits land in the edit log and the VI against the ground truth drops; bad input is one line of error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from connectomix.cli import app, main
from connectomix.errors import InputError
from connectomix.flag import Task
from connectomix.proofread.edits import EditLog
from connectomix.proofread.queue import TaskQueue
from connectomix.volume import open_volume

SHAPE = (24, 32, 96)  # (z, y, x)


def write_zarr(path: Path, array: np.ndarray) -> str:
    url = f"zarr://{path}"
    volume = open_volume(url, "w", shape=array.shape, dtype=array.dtype, chunks=(32, 32, 32))
    volume.write(volume.bounds, array)
    return url


@pytest.fixture
def setup(tmp_path):
    """Ground truth: bodies 1 (x < 40), 2 (40 ≤ x < 64), 3 (x ≥ 64) with membranes between them. The
    segmentation splits body 1 at x = 20 (segments 11, 12) and merges bodies 2 and 3 (segment 20)."""
    gt = np.zeros(SHAPE, np.uint64)
    gt[..., :40], gt[..., 40:64], gt[..., 64:] = 1, 2, 3
    seg = gt.copy()
    seg[..., :20], seg[..., 20:40], seg[..., 40:] = 11, 12, 20
    boundary = np.zeros(SHAPE, np.float32)
    boundary[..., 39:41] = boundary[..., 63:65] = 1.0
    urls = {
        "gt": write_zarr(tmp_path / "gt.zarr", gt),
        "seg": write_zarr(tmp_path / "seg.zarr", seg),
        "boundary": write_zarr(tmp_path / "boundary.zarr", boundary),
        "small_gt": write_zarr(tmp_path / "small.zarr", gt[:, :, :64]),
    }
    where = ["--workspace", str(tmp_path / "ws"), "--db", str(tmp_path / "ws" / "cx.db")]
    return urls, where, tmp_path / "ws" / "cx.db", gt


def tasks() -> list[Task]:
    """The false split of body 1, the false merge of 2 and 3, and a merge task that is correct as is."""
    return [
        Task.create(
            "merge", (19, 10, 10), (11, 12), 3.0, evidence={"points_xyz": [[19, 10, 10], [20, 10, 10]]}
        ),
        Task.create("split", (64, 16, 12), (20,), 2.0),
        Task.create(
            "merge", (39, 10, 10), (12, 20), 1.0, evidence={"points_xyz": [[39, 10, 10], [40, 10, 10]]}
        ),
    ]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_simulate_works_the_queue_and_reports(setup) -> None:
    urls, where, db, gt = setup
    code, out = invoke(
        "proofread", "init", urls["seg"], "--boundary", urls["boundary"], "--chunks", "32,32,32", *where
    )
    assert code == 0, out
    queue = TaskQueue(db)
    assert queue.enqueue_many(tasks()) == 3
    queue.dispose()

    # one task, as a table: the most urgent (the false split of body 1) is merged
    code, out = invoke("proofread", "simulate", "--gt", urls["gt"], "--max-tasks", "1", *where)
    assert code == 0, out
    for label in ("tasks", "actions", "edits", "flipped", "simulated hours", "tasks / user", "VI"):
        assert label in out, out
    assert "merge 1" in out and "sim1 1" in out
    with EditLog.open(db, db.parent) as log:
        assert [(e.operation, e.user) for e in log.edits()] == [("merge", "sim1")]

    # the rest by two users, as JSON
    code, out = invoke(
        "proofread",
        "simulate",
        "--gt",
        urls["gt"],
        "--users",
        "2",
        "--seconds-per-task",
        "45",
        "--seed",
        "4",
        "--json",
        *where,
    )
    assert code == 0, out
    report = json.loads(out)
    assert report["tasks"] == 2 and report["edits"] == 1 and report["flipped"] == 0
    assert report["actions"] == {"split": 1, "correct": 1}
    assert report["per_user"] == {"sim1": 1, "sim2": 1} and report["users"] == 2
    assert (report["start_version"], report["end_version"]) == (1, 2)
    # in parallel: the run lasts as long as the longer of the two tasks (jittered around 45 s)
    seconds = [d["seconds"] for d in report["decisions"]]
    assert report["simulated_seconds"] == pytest.approx(max(seconds))
    assert report["simulated_hours"] == pytest.approx(report["simulated_seconds"] / 3600)
    assert all(10.0 < s < 200.0 for s in seconds)
    # VI before is the version at the start of this run (body 2 + 3 merged), after is exact
    assert report["vi_before"]["merge"] > 0.5 and report["vi_before"]["split"] == pytest.approx(0.0, abs=1e-9)
    assert report["vi_after"]["total"] == pytest.approx(0.0, abs=1e-9)

    # the database holds it all: every task done once, the edits by the simulated users
    queue = TaskQueue(db)
    stats = queue.stats()
    assert (stats.done, stats.depth, stats.claimed) == (3, 0, 0)
    done_by = {t.key: t.claimed_by for user in ("sim1", "sim2") for t in queue.history(user)}
    assert sorted(done_by) == sorted(t.key for t in tasks())
    queue.dispose()
    with EditLog.open(db, db.parent) as log:
        assert [e.operation for e in log.edits()] == ["merge", "split"] and log.version == 2
        assert {e.user for e in log.edits()} <= {"sim1", "sim2"}
        final = log.read()
    assert len(np.unique(final)) == 3
    for body in (1, 2, 3):
        assert len(np.unique(final[gt == body])) == 1

    # nothing left: a second run does nothing and says so
    code, out = invoke("proofread", "simulate", "--gt", urls["gt"], "--json", *where)
    assert code == 0 and json.loads(out)["tasks"] == 0


def test_simulate_with_mistakes(setup) -> None:
    urls, where, db, _ = setup
    assert invoke("proofread", "init", urls["seg"], "--boundary", urls["boundary"], *where)[0] == 0
    queue = TaskQueue(db)
    queue.enqueue_many(tasks())
    queue.dispose()
    code, out = invoke("proofread", "simulate", "--gt", urls["gt"], "--error-rate", "1", "--json", *where)
    assert code == 0, out
    report = json.loads(out)
    # every answer flipped: both real errors missed, the correct merge task merged by mistake
    assert report["flipped"] == 3 and report["actions"] == {"correct": 2, "merge": 1}
    assert report["vi_after"]["total"] > report["vi_before"]["total"]


def test_flag_then_simulate(setup, capsys, tmp_path) -> None:
    """`cx flag` fills the workspace's queue from a disagreement map; the simulated proofreaders fix both
    errors and leave everything else alone."""
    import edt

    from connectomix.volume.labels import label_interfaces

    urls, where, db, _ = setup
    seg = open_volume(urls["seg"]).read()
    boundary = open_volume(urls["boundary"]).read()
    inside = np.clip(edt.edt(~label_interfaces(seg), black_border=False) / 2.0, 0.0, 1.0)
    prob_url = write_zarr(tmp_path / "prob.zarr", (0.5 * (1.0 - boundary) + 0.5 * inside).astype(np.float32))
    assert main(["proofread", "init", urls["seg"], "--boundary", urls["boundary"], *where]) == 0
    assert main(["flag", urls["seg"], prob_url, "--queue", str(db), "--top-fraction", "0.05"]) == 0
    capsys.readouterr()
    queue = TaskQueue(db)
    flagged = queue.stats().depth
    kinds = {t.kind for t in queue_tasks(queue)}
    queue.dispose()
    assert flagged >= 2 and {"merge", "split"} <= kinds, kinds
    code, out = invoke("proofread", "simulate", "--gt", urls["gt"], "--users", "3", "--json", *where)
    assert code == 0, out
    report = json.loads(out)
    assert report["tasks"] == flagged and report["actions"]["merge"] >= 1 and report["actions"]["split"] >= 1
    assert report["vi_before"]["total"] > 0.5, report  # measured: 0.99 bits → 0
    assert report["vi_after"]["total"] == pytest.approx(0.0, abs=1e-9), report
    queue = TaskQueue(db)
    assert queue.stats().done == flagged and queue.stats().depth == 0
    queue.dispose()


def queue_tasks(queue: TaskQueue) -> list:
    """Every task in the queue (read through its event log)."""
    ids = sorted({e.task_id for e in queue.events()})
    return [queue.get(i) for i in ids]


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_simulate_bad_input_is_one_line(setup, capsys, tmp_path) -> None:
    urls, where, _, _ = setup

    def cx(*args: str) -> tuple[int, str]:
        code = main(["proofread", "simulate", *args, *where])
        return code, capsys.readouterr().err

    assert_one_line_error(*cx("--gt", urls["gt"]), "no edit log named 'seg'")
    assert main(["proofread", "init", urls["seg"], *where]) == 0
    capsys.readouterr()
    assert_one_line_error(*cx(), "--gt")  # required
    assert_one_line_error(*cx("--gt", f"zarr://{tmp_path / 'missing.zarr'}"), "missing.zarr")
    assert_one_line_error(*cx("--gt", urls["small_gt"]), "shape", "(24, 32, 64)", "(24, 32, 96)")
    assert_one_line_error(*cx("--gt", urls["gt"], "--users", "0"), "--users", "at least 1")
    assert_one_line_error(*cx("--gt", urls["gt"], "--error-rate", "1.5"), "--error-rate", "[0, 1]")
    assert_one_line_error(*cx("--gt", urls["gt"], "--error-rate", "-0.1"), "--error-rate")
    assert_one_line_error(*cx("--gt", urls["gt"], "--seconds-per-task", "-3"), "--seconds-per-task")
    assert_one_line_error(*cx("--gt", urls["gt"], "--max-tasks", "0"), "--max-tasks")
    assert_one_line_error(*cx("--gt", urls["gt"], "--users", "two"), "--users")
    # and through typer's runner the same errors are the package's own, one line each
    result = CliRunner().invoke(app, ["proofread", "simulate", "--gt", urls["gt"], "--users", "0", *where])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert "\n" not in str(result.exception)
