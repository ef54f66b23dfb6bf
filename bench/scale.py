"""Benchmark: block-wise throughput in-process and on a local Dask cluster of 1 and 2 workers.

Work: :func:`connectomix.run.blockwise.run_blockwise` over the 64³ blocks of FIB-25 ``training_sample2``
(250³, 10 nm; 64 blocks), each segmented on its own by the baseline watershed
(:func:`~connectomix.segment.baseline.segment_baseline`) and written into a zarr volume; every block is
recorded in a SQLite run ledger. Runs, all in this process, each on a fresh output and ledger:

* ``inprocess``: the :class:`~connectomix.run.executors.InProcessExecutor` (the peer);
* ``dask 1`` and ``dask 2``: a ``LocalCluster`` on 127.0.0.1 with 1 and 2 single-threaded worker processes
  (cluster start-up is timed separately and not included).

Reported: blocks per second, speed-up over in-process, scaling efficiency (dask 2 / (2 × dask 1)), and the
executor's overhead per block, measured with a near-empty block function (read the block, return its mean)
as (dask 1 seconds − in-process seconds) / blocks. Torch is limited to one thread per process so workers do
not oversubscribe the cores. Run: ``.venv/bin/python bench/scale.py`` (``--quick``: 32³ blocks of the 100³
crop). Results: ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SegmentBlock:
    """Baseline watershed of RAW[box] into OUT[box] (ids offset per block so blocks never collide)."""

    raw_url: str
    out_url: str

    def __call__(self, box: Any) -> dict[str, int]:
        from connectomix.segment.baseline import segment_baseline
        from connectomix.volume import open_volume

        raw = open_volume(self.raw_url)
        result = segment_baseline(raw.read(box), resolution_nm_zyx=raw.resolution)
        labels = result.segmentation.astype(np.uint64)
        labels[labels > 0] += np.uint64(int(np.ravel_multi_index(box.start, raw.shape))) << np.uint64(24)
        open_volume(self.out_url, "a").write(box, labels)
        return {"segments": int(result.n_segments)}


@dataclass(frozen=True)
class ReadBlock:
    """Near-empty work: read the block and return its mean (what is left is the executor's cost)."""

    raw_url: str

    def __call__(self, box: Any) -> dict[str, float]:
        from connectomix.volume import open_volume

        return {"mean": float(open_volume(self.raw_url).read(box).mean())}


def one_run(kind: str, workers: int, raw_url: str, block: int, work: str, tmp: Path) -> dict[str, Any]:
    from connectomix.run.blockwise import BlockTask, run_blockwise
    from connectomix.run.executors import open_executor
    from connectomix.volume import Box, open_volume

    raw = open_volume(raw_url)
    out = f"zarr://{tmp / f'{kind}{workers}-{work}.zarr'}"
    open_volume(out, "w", shape=raw.shape, dtype=np.uint64, chunks=(block,) * 3, kind="segmentation")
    process = SegmentBlock(raw_url, out) if work == "segment" else ReadBlock(raw_url)
    boxes = Box.from_shape(raw.shape).split((block,) * 3)
    tick = time.perf_counter()
    with open_executor(kind, workers=workers) as (executor, _):
        startup = time.perf_counter() - tick
        task = BlockTask(f"bench:{kind}{workers}:{work}", boxes, process, params={"raw": raw_url})
        db = f"sqlite:///{tmp / f'{kind}{workers}-{work}.db'}"
        result = run_blockwise(task, database=db, executor=executor, progress=False)
    return {
        "executor": kind,
        "workers": workers,
        "work": work,
        "blocks": len(boxes),
        "seconds": result.seconds,
        "startup_seconds": startup,
        "blocks_per_second": len(boxes) / result.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from connectomix.volume import open_volume
    from connectomix.volume.transfer import import_volume

    dataset, block = ("fib25-crop100/raw", 32) if args.quick else ("fib25-ts2/raw", 64)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        # a zarr copy, so every worker reads the same chunked store (as on a cluster)
        raw_url = f"zarr://{tmp / 'raw.zarr'}"
        import_volume(dataset, raw_url, chunks_zyx=(block,) * 3)
        shape = open_volume(raw_url).shape
        rows = []
        for work in ("segment", "read"):
            for kind, workers in (("inprocess", 1), ("dask", 1), ("dask", 2)):
                row = one_run(kind, workers, raw_url, block, work, tmp)
                rows.append(row)
                print(
                    f"{work:8s} {kind:9s} {workers} worker(s): {row['blocks_per_second']:7.2f} blocks/s "
                    f"({row['seconds']:.2f} s; start-up {row['startup_seconds']:.2f} s)",
                    flush=True,
                )
    by = {(r["work"], r["executor"], r["workers"]): r for r in rows}
    base = by[("segment", "inprocess", 1)]["blocks_per_second"]
    d1, d2 = by[("segment", "dask", 1)]["blocks_per_second"], by[("segment", "dask", 2)]["blocks_per_second"]
    n_read = by[("read", "inprocess", 1)]["blocks"]
    overhead = (by[("read", "dask", 1)]["seconds"] - by[("read", "inprocess", 1)]["seconds"]) / n_read
    summary = {
        "speedup_dask1_vs_inprocess": d1 / base,
        "speedup_dask2_vs_inprocess": d2 / base,
        "scaling_efficiency_2_workers": d2 / (2 * d1),
        "dask_overhead_ms_per_block": 1000 * overhead,
        "inprocess_ms_per_block_read_only": 1000 * by[("read", "inprocess", 1)]["seconds"] / n_read,
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"block-wise throughput: {dataset} {shape} in {block}³ blocks, baseline watershed")
    for column in ("executor", "workers", "blocks/s", "× in-process", "seconds"):
        table.add_column(column, justify="right")
    for (work, kind, workers), row in by.items():
        if work == "segment":
            table.add_row(
                kind,
                str(workers),
                f"{row['blocks_per_second']:.2f}",
                f"{row['blocks_per_second'] / base:.2f}",
                f"{row['seconds']:.2f}",
            )
    console = Console()
    console.print(table)
    console.print(
        f"scaling efficiency 2 workers: {summary['scaling_efficiency_2_workers']:.2f}; Dask overhead "
        f"{summary['dask_overhead_ms_per_block']:.1f} ms per block (read-only blocks: in-process "
        f"{summary['inprocess_ms_per_block_read_only']:.1f} ms each)"
    )
    payload = {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"dataset": dataset, "shape_zyx": list(shape), "block": block, "quick": args.quick},
        "runs": rows,
        "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
