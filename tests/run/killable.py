"""A block-wise run that kills itself part-way, for the kill-and-resume tests (run as a script).

``python killable.py segment|blocks EXECUTOR RAW_URL OUT_URL DB_URL COUNTER_FILE KILL_AT``

* ``segment``: :func:`connectomix.segment.blockwise.segment_volume` with the baseline watershed on 32³
  blocks (8-voxel context), one block per segmenter call;
* ``blocks``: :func:`connectomix.run.blockwise.run_blockwise` over 32³ blocks, each segmented by the baseline
  watershed on its own and written into OUT_URL with ids offset per block.

Every block call appends a line to COUNTER_FILE (calls run in worker processes on Dask); the call that
makes the count reach KILL_AT sends SIGKILL to the *driver* (the process running this script) before it
returns, so that block is never recorded. KILL_AT 0 = never. EXECUTOR is ``inprocess`` or ``dask`` (a local
cluster of 2 worker processes). Classes defined here are pickled by value (cloudpickle), so Dask workers
need not import this file.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def count_call(counter: Path) -> int:
    with counter.open("a") as handle:  # O_APPEND: one line per call, from any process
        handle.write("x\n")
    return len(counter.read_text().splitlines())


@dataclass
class KillingSegmenter:
    """The baseline watershed; the KILL_AT-th call kills the driver first."""

    counter: Path
    kill_at: int
    driver_pid: int
    fingerprint: str = "baseline-killable"

    def __call__(self, raws, boxes, resolution_nm_zyx):
        from connectomix.segment.blockwise import baseline_segmenter

        if count_call(self.counter) == self.kill_at:
            os.kill(self.driver_pid, signal.SIGKILL)
        return baseline_segmenter()(raws, boxes, resolution_nm_zyx)


@dataclass
class KillingBlocks:
    """One block: baseline watershed of RAW[box] written into OUT[box], ids offset by the block's corner."""

    raw_url: str
    out_url: str
    counter: Path
    kill_at: int
    driver_pid: int

    def __call__(self, box):
        from connectomix.segment.baseline import segment_baseline
        from connectomix.volume import open_volume

        raw = open_volume(self.raw_url)
        result = segment_baseline(raw.read(box), resolution_nm_zyx=raw.resolution)
        labels = result.segmentation.astype(np.uint64)
        corner = int(np.ravel_multi_index(box.start, raw.shape))
        labels[labels > 0] += np.uint64(corner) << np.uint64(20)
        if count_call(self.counter) == self.kill_at:
            os.kill(self.driver_pid, signal.SIGKILL)
        open_volume(self.out_url, "a").write(box, labels)
        return {"segments": int(result.n_segments)}


def main(argv: list[str]) -> int:
    from connectomix.run.executors import open_executor
    from connectomix.volume import Box, open_volume

    what, kind, raw_url, out_url, db_url, counter, kill_at = argv
    counter_path, kill = Path(counter), int(kill_at)
    raw = open_volume(raw_url)
    with open_executor(kind, workers=2) as (executor, info):
        pool = None if info.kind == "inprocess" else executor
        if what == "segment":
            from connectomix.segment.blockwise import segment_volume

            result = segment_volume(
                raw,
                out_url,
                KillingSegmenter(counter_path, kill, os.getpid()),
                block_shape_zyx=32,
                overlap_zyx=8,
                batch_blocks=1,
                progress=False,
                executor=pool,
            )
            print(f"skipped {result.n_blocks_skipped} of {result.n_blocks}")
        else:
            from connectomix.run.blockwise import BlockTask, run_blockwise

            open_volume(
                out_url, "a", shape=raw.shape, dtype=np.uint64, chunks=(32, 32, 32), kind="segmentation"
            )
            task = BlockTask(
                name="blocks:test",
                boxes=Box.from_shape(raw.shape).split((32, 32, 32)),
                process=KillingBlocks(raw_url, out_url, counter_path, kill, os.getpid()),
                params={"raw": raw_url, "out": out_url},
            )
            result = run_blockwise(task, database=db_url, executor=executor, progress=False)
            print(f"skipped {result.n_skipped} of {result.n_blocks}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
