"""Streaming ingest: chunks written by the test while the stream runs, a restart in the middle, bad chunks."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.errors import InputError
from connectomix.proofread.queue import TaskQueue
from connectomix.run.ledger import run_summaries
from connectomix.run.stream import StreamConfig, run_stream
from connectomix.volume import open_volume

SHAPE = (64, 128, 128)  # 1 x 2 x 2 chunks of 64³
CHUNK = (64, 64, 64)
OFFSETS = [(0, 0, 0), (0, 0, 64), (0, 64, 0), (0, 64, 64)]


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return open_volume("synthetic://raw?shape=64,128,128&seed=11").read()


def put(folder, raw, offset) -> None:
    """Write one chunk the way a microscope should: under a temporary name, then rename."""
    z, y, x = offset
    tmp = folder / f".incoming-{z}-{y}-{x}.npy"
    np.save(tmp, raw[z : z + 64, y : y + 64, x : x + 64])
    tmp.replace(folder / f"z{z}_y{y}_x{x}.npy")


def config(tmp_path) -> StreamConfig:
    watch = tmp_path / "microscope"
    watch.mkdir(exist_ok=True)
    return StreamConfig(watch, tmp_path / "ws", f"sqlite:///{tmp_path / 'cx.db'}", SHAPE, CHUNK)


def test_chunks_arriving_during_the_stream_with_a_restart_in_the_middle(tmp_path, raw):
    cfg = config(tmp_path)
    (cfg.watch_dir / "notes.txt").write_text("not a chunk")  # ignored

    def microscope(offsets):
        for offset in offsets:
            put(cfg.watch_dir, raw, offset)
            time.sleep(0.3)

    writer = threading.Thread(target=microscope, args=(OFFSETS[:3],))
    writer.start()
    first = run_stream(cfg, poll_seconds=0.1, settle_seconds=0.0, stop_after=2)  # then "restart"
    writer.join()
    assert first.chunks_done == 2 and first.chunks_failed == 0 and first.tasks_new > 0
    assert all(0 <= lat < 30 for lat in first.latencies)
    queue = TaskQueue(cfg.database)
    depth_after_first = queue.depth()
    assert depth_after_first == first.tasks_new

    put(cfg.watch_dir, raw, OFFSETS[3])
    second = run_stream(cfg, poll_seconds=0.1, settle_seconds=0.0, idle_timeout=1.0)
    assert second.chunks_skipped == 2 and second.chunks_done == 2 and second.chunks_failed == 0
    assert queue.depth() == depth_after_first + second.tasks_new

    # nothing lost, nothing done twice
    third = run_stream(cfg, poll_seconds=0.1, settle_seconds=0.0, idle_timeout=0.5)
    assert third.chunks_skipped == 4 and third.chunks_done == 0 and third.tasks_new == 0
    (run,) = run_summaries(cfg.database)
    assert run["done"] == 4 and run["failed"] == 0
    mosaic = open_volume(cfg.raw_url).read()
    assert np.array_equal(mosaic, raw)
    seg = open_volume(cfg.seg_url).read()
    chunk_of_id = {int(i) >> 32 for i in np.unique(seg) if i}
    assert chunk_of_id == {0, 1, 2, 3}  # every chunk segmented, ids unique per chunk
    queue.dispose()


def test_a_bad_chunk_is_recorded_and_the_stream_goes_on(tmp_path, raw):
    cfg = config(tmp_path)
    put(cfg.watch_dir, raw, OFFSETS[0])
    np.save(cfg.watch_dir / "z0_y0_x64.npy", np.zeros((10, 10, 10), np.uint8))  # wrong shape
    (cfg.watch_dir / "z0_y64_x0.npy").write_bytes(b"garbage")  # not an array
    result = run_stream(cfg, poll_seconds=0.1, settle_seconds=0.0, idle_timeout=0.5)
    assert result.chunks_done == 1 and result.chunks_failed == 2
    assert "expected (64, 64, 64)" in result.errors["z0_y0_x64.npy"]
    assert "cannot read the chunk" in result.errors["z0_y64_x0.npy"]
    (run,) = run_summaries(cfg.database)
    assert run["done"] == 1 and run["failed"] == 2
    put(cfg.watch_dir, raw, OFFSETS[1])  # the microscope writes the chunk again, correctly
    again = run_stream(cfg, poll_seconds=0.1, settle_seconds=0.0, idle_timeout=0.5)
    assert again.chunks_done == 1 and again.chunks_skipped == 1
    assert list(again.errors) == ["z0_y64_x0.npy"]  # a restart tries failed chunks once more
    (run,) = run_summaries(cfg.database)
    assert run["done"] == 2 and run["failed"] == 1


def test_stream_configuration_is_checked(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(InputError, match="not on the"):
        cfg.chunk_box((0, 0, 10))
    with pytest.raises(InputError, match="outside the extent"):
        cfg.chunk_box((0, 0, 128))
    with pytest.raises(InputError, match="top_fraction"):
        StreamConfig(cfg.watch_dir, cfg.workspace, cfg.database, SHAPE, CHUNK, top_fraction=2.0)


def test_cx_stream_runs_from_the_command_line(tmp_path, raw, capsys):
    watch = tmp_path / "in"
    watch.mkdir()
    put(watch, raw, OFFSETS[0])
    out = tmp_path / "stream.json"
    args = ["stream", str(watch), "--shape", "64,128,128", "--workspace", str(tmp_path / "ws")]
    code = main([*args, "--poll", "0.1", "--settle", "0", "--idle-timeout", "0.5", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(out.read_text())
    assert summary["chunks_done"] == 1 and summary["latency_p50_s"] is not None
    assert "z0_y0_x0.npy" in captured.out
    assert main(["stream", str(tmp_path / "missing"), "--shape", "64,128,128"]) == 1
    assert "does not exist" in capsys.readouterr().err
