"""Executors and block-wise runs: in-process and Dask give the same output; killed runs resume exactly."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connectomix.errors import BlockFailedError, InputError
from connectomix.run.blockwise import BlockTask, run_blockwise
from connectomix.run.executors import InProcessExecutor, open_executor
from connectomix.run.ledger import BlockLedger, run_summaries
from connectomix.segment.blockwise import baseline_segmenter, segment_volume
from connectomix.segment.ledger import LEDGER_NAME
from connectomix.volume import Box, open_volume

HERE = Path(__file__).resolve().parent
RAW = "synthetic://raw?shape=64,96,96&seed=7"  # 2 x 3 x 3 = 18 blocks of 32³


@pytest.fixture(scope="module")
def dask_pool():
    """One local Dask cluster (2 worker processes on 127.0.0.1) for the tests of this module."""
    with open_executor("dask", workers=2) as (executor, info):
        assert info.kind == "dask" and info.workers == 2
        assert info.scheduler.startswith("tcp://127.0.0.1:")
        yield executor


# -- executors ------------------------------------------------------------------------------------------
def test_in_process_executor_runs_in_order_and_captures_errors():
    executor = InProcessExecutor()
    calls: list[int] = []
    futures = [executor.submit(calls.append, k) for k in range(3)]
    assert calls == [0, 1, 2] and all(f.done() for f in futures)
    failing = executor.submit(int, "not a number")
    assert isinstance(failing.exception(), ValueError)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(calls.append, 3)


def test_bad_executor_arguments_are_refused():
    with pytest.raises(InputError, match="unknown executor 'spark'"), open_executor("spark"):
        pass
    with (
        pytest.raises(InputError, match="--scheduler needs --executor dask"),
        open_executor("inprocess", scheduler="tcp://127.0.0.1:1"),
    ):
        pass
    with pytest.raises(InputError, match="tcp://HOST:PORT"), open_executor("dask", scheduler="127.0.0.1"):
        pass


# -- a real block task: baseline watershed per block ----------------------------------------------------
class BaselineBlocks:
    """Segment RAW[box] with the baseline watershed and write it into OUT[box] (ids offset per block)."""

    def __init__(self, raw_url: str, out_url: str, fail_once: Path | None = None, always_fail: int = -1):
        self.raw_url, self.out_url = raw_url, out_url
        self.fail_once, self.always_fail = fail_once, always_fail

    def __call__(self, box: Box) -> dict[str, int]:
        from connectomix.segment.baseline import segment_baseline

        raw = open_volume(self.raw_url)
        corner = int(np.ravel_multi_index(box.start, raw.shape))
        if corner == self.always_fail:
            raise ValueError("this block is broken")
        if self.fail_once is not None and corner == 0 and not self.fail_once.exists():
            self.fail_once.touch()
            raise OSError("transient read error")
        result = segment_baseline(raw.read(box), resolution_nm_zyx=raw.resolution)
        labels = result.segmentation.astype(np.uint64)
        labels[labels > 0] += np.uint64(corner) << np.uint64(20)
        open_volume(self.out_url, "a").write(box, labels)
        return {"segments": int(result.n_segments)}


def new_output(path: Path) -> str:
    url = f"zarr://{path}"
    open_volume(url, "w", shape=(64, 96, 96), dtype=np.uint64, chunks=(32, 32, 32), kind="segmentation")
    return url


def blocks() -> list[Box]:
    return Box.from_shape((64, 96, 96)).split((32, 32, 32))


def test_block_task_resumes_and_refuses_other_parameters(tmp_path):
    db = f"sqlite:///{tmp_path / 'cx.db'}"
    out = new_output(tmp_path / "out.zarr")
    task = BlockTask("blocks:baseline", blocks(), BaselineBlocks(RAW, out), params={"raw": RAW})
    first = run_blockwise(task, database=db, progress=False)
    assert (first.n_blocks, first.n_skipped, first.n_processed) == (18, 0, 18)
    assert all(r["segments"] > 0 for r in first.results.values())
    labels = open_volume(out).read()
    assert len(np.unique(labels >> np.uint64(20))) == 18  # every block wrote its own ids
    again = run_blockwise(task, database=db, progress=False)
    assert (again.n_skipped, again.n_processed) == (18, 0)
    assert again.results == first.results
    other = BlockTask("blocks:baseline", blocks(), BaselineBlocks(RAW, out), params={"raw": "elsewhere"})
    with pytest.raises(InputError, match=r"exists .* with other parameters"):
        run_blockwise(other, database=db, progress=False)
    assert run_blockwise(other, database=db, restart=True, progress=False).n_processed == 18
    (summary,) = run_summaries(db)
    assert summary["name"] == "blocks:baseline" and summary["done"] == 18 and summary["status"] == "complete"


@pytest.mark.parametrize("engine", ["inprocess", "dask"])
def test_retries_and_a_failing_block_named_with_its_box(tmp_path, engine, request):
    executor = request.getfixturevalue("dask_pool") if engine == "dask" else None
    db = f"sqlite:///{tmp_path / 'cx.db'}"
    out = new_output(tmp_path / "out.zarr")
    flaky = BlockTask(
        "blocks:flaky", blocks(), BaselineBlocks(RAW, out, fail_once=tmp_path / "failed"), retries=1
    )
    result = run_blockwise(flaky, database=db, executor=executor, progress=False)
    assert result.n_retried == 1 and result.n_processed == 18

    broken_corner = int(np.ravel_multi_index((32, 32, 64), (64, 96, 96)))
    broken = BlockTask(
        "blocks:broken", blocks(), BaselineBlocks(RAW, out, always_fail=broken_corner), retries=2
    )
    with pytest.raises(
        BlockFailedError, match=r"1 of 18 blocks failed after 3 attempts: block 14 Box\("
    ) as info:
        run_blockwise(broken, database=db, executor=executor, progress=False)
    assert "this block is broken" in str(info.value) and "(32, 32, 64)" in str(info.value)
    with BlockLedger(
        db, "blocks:broken", {"blocks": [[list(b.start), list(b.stop)] for b in blocks()]}
    ) as ledger:
        records = ledger.records()
    assert len(records) == 18 and records[14].status == "failed" and records[14].attempts == 3
    assert "ValueError: this block is broken" in records[14].error
    assert sum(r.status == "done" for r in records.values()) == 17


def test_dask_and_in_process_segmentation_are_identical(tmp_path, dask_pool):
    raw = open_volume(RAW)
    runs = {}
    for name, executor in (("inprocess", None), ("dask", dask_pool)):
        result = segment_volume(
            raw,
            f"zarr://{tmp_path / name}.zarr",
            baseline_segmenter(),
            block_shape_zyx=32,
            overlap_zyx=8,
            progress=False,
            executor=executor,
        )
        runs[name] = open_volume(result.out_url).read()
    assert np.array_equal(runs["inprocess"], runs["dask"])
    assert len(np.unique(runs["dask"])) > 20


# -- kill and resume ------------------------------------------------------------------------------------
def run_killable(
    what: str, engine: str, out: str, db: str, counter: Path, kill_at: int
) -> subprocess.CompletedProcess:
    """Run tests/run/killable.py in its own process group; afterwards kill whatever it left behind."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "killable.py"), what, engine, RAW, out, db, str(counter), str(kill_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):  # Dask workers of a killed driver: stop the group
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("engine", ["inprocess", "dask"])
def test_segmentation_killed_midway_resumes_to_the_identical_output(tmp_path, engine):
    reference = segment_volume(
        open_volume(RAW),
        f"zarr://{tmp_path / 'ref.zarr'}",
        baseline_segmenter(),
        block_shape_zyx=32,
        overlap_zyx=8,
        progress=False,
    )
    out = f"zarr://{tmp_path / 'seg.zarr'}"
    counter = tmp_path / "calls"
    killed = run_killable("segment", engine, out, "unused", counter, kill_at=9)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with sqlite3.connect(tmp_path / "seg.zarr.work" / LEDGER_NAME) as ledger:
        (done,) = ledger.execute("SELECT COUNT(*) FROM blocks WHERE status = 'done'").fetchone()
    assert 0 < done < 18
    resumed = run_killable("segment", engine, out, "unused", counter, kill_at=0)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {done} of 18" in resumed.stdout
    assert np.array_equal(open_volume(out).read(), open_volume(reference.out_url).read())


@pytest.mark.parametrize("engine", ["inprocess", "dask"])
def test_block_task_killed_midway_resumes_to_the_identical_output(tmp_path, engine):
    db = f"sqlite:///{tmp_path / 'cx.db'}"
    reference = tmp_path / "ref.zarr"
    ref = run_killable(
        "blocks", "inprocess", f"zarr://{reference}", f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "rc", 0
    )
    assert ref.returncode == 0, ref.stderr
    out = f"zarr://{tmp_path / 'out.zarr'}"
    killed = run_killable("blocks", engine, out, db, tmp_path / "calls", kill_at=7)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (summary,) = run_summaries(db)
    assert summary["status"] == "running" and 0 < summary["done"] < 18
    resumed = run_killable("blocks", engine, out, db, tmp_path / "calls", kill_at=0)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {summary['done']} of 18" in resumed.stdout
    assert np.array_equal(open_volume(out).read(), open_volume(f"zarr://{reference}").read())


class KillWorkerOnce:
    """The baseline segmenter; kills its Dask worker the first time it gets the block at (0, 0, 32)."""

    fingerprint = "baseline-kill-worker"

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, raws, boxes, resolution_nm_zyx):
        if boxes[0].start == (0, 0, 24) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return baseline_segmenter()(raws, boxes, resolution_nm_zyx)


def test_a_killed_dask_worker_does_not_change_the_output(tmp_path, dask_pool):
    raw = open_volume(RAW)
    common = dict(block_shape_zyx=32, overlap_zyx=8, batch_blocks=1, progress=False)
    reference = segment_volume(raw, f"zarr://{tmp_path / 'ref.zarr'}", baseline_segmenter(), **common)
    marker = tmp_path / "killed"
    result = segment_volume(
        raw,
        f"zarr://{tmp_path / 'seg.zarr'}",
        KillWorkerOnce(marker),
        executor=dask_pool,
        retries=1,
        **common,
    )
    assert marker.exists()  # a worker really died mid-run
    assert np.array_equal(open_volume(result.out_url).read(), open_volume(reference.out_url).read())
