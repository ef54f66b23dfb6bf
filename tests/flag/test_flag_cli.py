"""``cx flag`` end to end: volumes on disk → tasks in a SQLite queue; one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.volume import open_volume


def run_cx(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def write_zarr(path: Path, array: np.ndarray) -> str:
    url = f"zarr://{path}"
    volume = open_volume(
        url, "w", shape=array.shape, dtype=array.dtype, chunks=(32, 32, 32), resolution=(40, 8, 8)
    )
    volume.write(volume.bounds, array)
    return url


@pytest.fixture
def volumes(tmp_path) -> tuple[str, str]:
    """A 64³ segmentation (two segments touching at x = 32, one unexplored hole) and its uint8 map."""
    seg = np.full((64, 64, 64), 2**62 + 1, np.uint64)
    seg[:, :, 32:] = 2**62 + 2
    prob = np.full(seg.shape, 255, np.uint8)
    prob[20:30, 20:30, 29:35] = 128  # uncertain contact: a merge task
    seg[40:46, 40:46, 8:14] = 0
    prob[40:46, 40:46, 8:14] = 0  # never explored, unassigned: an unassigned task
    return write_zarr(tmp_path / "seg.zarr", seg), write_zarr(tmp_path / "prob.zarr", prob)


# -- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--top-fraction", "2"], ["--top-fraction must be in (0, 1]"]),
        (["--max-per-chunk", "0"], ["--max-per-chunk"]),
        (["--chunk", "64,64"], ["--chunk"]),
        (["--box", "0,0,0:1,1"], ["--box"]),
        (["--backpressure-limit", "0"], ["--backpressure-limit"]),
        (["--top-fraction", "abc"], ["--top-fraction"]),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, capsys, volumes, extra, fragments):
    seg, prob = volumes
    code, _, err = run_cx(capsys, "flag", seg, prob, "--queue", str(tmp_path / "q.db"), *extra)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "q.db").exists()  # nothing written for bad input


def test_missing_volume_and_mismatched_grids(tmp_path, capsys, volumes):
    seg, _ = volumes
    code, _, err = run_cx(
        capsys, "flag", seg, f"zarr://{tmp_path / 'nope.zarr'}", "--queue", str(tmp_path / "q.db")
    )
    assert_one_line_error(code, err, "nope.zarr")
    small = write_zarr(tmp_path / "small.zarr", np.ones((8, 8, 8), np.uint8))
    code, _, err = run_cx(capsys, "flag", seg, small, "--queue", str(tmp_path / "q.db"))
    assert_one_line_error(code, err, "PROB covers", "expected the same grid")
    floats = write_zarr(tmp_path / "f.zarr", np.full((64, 64, 64), 2.0, np.float32))
    code, _, err = run_cx(capsys, "flag", seg, floats, "--queue", str(tmp_path / "q.db"))
    assert_one_line_error(code, err, "[0, 1]")


# -- happy path ---------------------------------------------------------------------------------------------
def test_flag_enqueues_once_and_reports(tmp_path, capsys, volumes):
    queue_module = pytest.importorskip("connectomix.proofread.queue")
    seg, prob = volumes
    db = tmp_path / "q.db"
    out = tmp_path / "flag.json"
    code, stdout, err = run_cx(capsys, "flag", seg, prob, "--queue", str(db), "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    kinds = sorted(t["kind"] for t in report["tasks"])
    assert kinds == ["merge", "unassigned"]
    assert report["counts"]["merge"] == {"tasks": 1, "new": 1}
    assert report["queue_depth_before"] == 0 and report["queue_depth_after"] == 2
    merge = next(t for t in report["tasks"] if t["kind"] == "merge")
    assert merge["segment_ids"] == [str(2**62 + 1), str(2**62 + 2)]
    assert merge["point_nm_xyz"] == [
        8.0 * merge["point_xyz"][0],
        8.0 * merge["point_xyz"][1],
        40.0 * merge["point_xyz"][2],
    ]
    assert "merge" in stdout and "already queued" in stdout

    queue = queue_module.TaskQueue(str(db))
    try:
        assert queue.depth() == 2
        claimed = queue.claim("ann")
        assert claimed is not None and claimed.key in {t["key"] for t in report["tasks"]}
    finally:
        queue.dispose()

    # flagging again finds the same tasks, all already queued
    code, _, err = run_cx(capsys, "flag", seg, prob, "--queue", str(db), "--json", str(out))
    assert code == 0, err
    again = json.loads(out.read_text())
    assert [t["key"] for t in again["tasks"]] == [t["key"] for t in report["tasks"]]
    assert all(c["new"] == 0 for c in again["counts"].values())


def test_backpressure_shrinks_the_fraction(tmp_path, capsys, volumes):
    pytest.importorskip("connectomix.proofread.queue")
    seg, prob = volumes
    db, out = tmp_path / "q.db", tmp_path / "flag.json"
    assert run_cx(capsys, "flag", seg, prob, "--queue", str(db))[0] == 0  # depth 2 afterwards
    code, _, err = run_cx(
        capsys, "flag", seg, prob, "--queue", str(db), "--backpressure-limit", "1", "--json", str(out)
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["top_fraction_in_force"] == pytest.approx(0.01 / 2)
