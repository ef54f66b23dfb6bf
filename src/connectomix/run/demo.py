"""The end-to-end path as it stands: data → baseline segmentation → evaluation → report.

``run_demo`` writes into ``out_dir``: ``raw.zarr``, ``gt.zarr``, ``seg.zarr`` (zarr v3, (z, y, x)),
``report.json`` and ``slice.png`` (EM, ground truth and segmentation of the middle z-slice side by side).
It grows as later stages (FFN, flagging, proofreading, learning) land.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connectomix.errors import InputError, NotFoundError
from connectomix.evaluate import evaluate
from connectomix.report.figures import slice_figure
from connectomix.segment.baseline import BaselineParams, segment_baseline
from connectomix.volume import open_volume

#: datasets with raw and gt layers the demo can run on, and an optional published reference layer.
DEMO_DATASETS: dict[str, str | None] = {
    "fib25-crop100": None,
    "fib25-ts2": "google-ffn",
    "gala-train": None,
    "gala-test": None,
}


def load_demo_data(
    data: str, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Raw (uint8) and ground truth (uint64), both (z, y, x), and the voxel size in nm (z, y, x)."""
    if data == "synthetic":
        from connectomix.volume.synthetic import make_synthetic

        if size < 32:
            raise InputError(f"--size must be at least 32 voxels for the synthetic demo, got {size}")
        volume = make_synthetic((size, size, size), seed=seed)
        return volume.raw, volume.gt, tuple(volume.resolution_nm_zyx)  # type: ignore[return-value]
    if data not in DEMO_DATASETS:
        raise NotFoundError(
            f"unknown demo data {data!r}: expected 'synthetic' or one of {', '.join(DEMO_DATASETS)}"
        )
    raw = open_volume(f"{data}/raw")
    gt = open_volume(f"{data}/gt")
    return raw.read(), gt.read().astype(np.uint64), raw.resolution


def _save(path: Path, array: np.ndarray, resolution: tuple[float, float, float]) -> None:
    volume = open_volume(f"zarr://{path}", "w", shape=array.shape, dtype=array.dtype, resolution=resolution)
    volume.write(volume.bounds, array)


def _demo_loop(workdir: Path, seed: int, log: Any) -> dict[str, Any]:
    """The short synthetic loop, or why it did not run."""
    from connectomix.learn.loop import run_loop
    from connectomix.learn.synthetic_loop import synthetic_loop_data, synthetic_settings

    try:
        # fp32 on every CPU: the demo's numbers are then the same on every machine (measured identical on a
        # 2-core AMD EPYC and a 2-core Xeon), where bf16 autocast depends on the CPU's kernels (on the AMX
        # Xeon the bf16 loop is 4× faster, but its adapter did not pass the gate).
        base, data, options = synthetic_loop_data(seed=seed, precision="fp32")
    except NotFoundError as exc:
        return {"loop_skipped": str(exc)}
    settings = synthetic_settings(seed)
    if (workdir / "workspace.db").is_file():
        # An earlier demo's loop workspace (its edit log, queue and registry): the demo starts it afresh,
        # as it rewrites its volumes, instead of failing on the edit log that already exists.
        import shutil

        shutil.rmtree(workdir)
    result = run_loop(base, data, workdir, settings, options=options, precision="fp32", log=log)
    return {"loop": result}


def run_demo(
    data: str = "synthetic",
    out_dir: Path = Path("cx-demo"),
    size: int = 128,
    seed: int = 0,
    params: BaselineParams | None = None,
    loop: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Run the demo and return the report (also written to ``out_dir/report.json``).

    With ``loop`` (synthetic data only) the report also holds ``loop``: the short closed learning loop of
    :mod:`connectomix.learn.synthetic_loop` (Google's FIB-25 model adapted to a synthetic volume from up to 30
    corrected tasks; VI on a held-out region before and after), or ``loop_skipped`` with the reason where
    Google's checkpoint is absent."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    raw, gt, resolution = load_demo_data(data, size, seed)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    result = segment_baseline(raw, resolution_nm_zyx=resolution, params=params)
    seconds["segment"] = time.perf_counter() - start
    seg = result.segmentation

    start = time.perf_counter()
    scores = evaluate(seg, gt)
    seconds["evaluate"] = time.perf_counter() - start

    for name, array in (("raw", raw), ("gt", gt), ("seg", seg)):
        _save(out_dir / f"{name}.zarr", array, resolution)
    figure = slice_figure(raw, gt, seg, out_dir / "slice.png", title=f"{data}: EM | ground truth | baseline")

    report: dict[str, Any] = {
        "data": data if data != "synthetic" else f"synthetic (seed {seed})",
        "shape_zyx": list(raw.shape),
        "resolution_nm_zyx": list(resolution),
        "segmenter": "baseline (boundary → seeded watershed → size filter)",
        "n_segments": int(result.n_segments),
        "n_gt_bodies": int(np.count_nonzero(np.unique(gt))),
        "scores": scores.to_dict(),
        "seconds": seconds,
        "paths": {
            "report": str(out_dir / "report.json"),
            "figure": str(figure),
            "raw": str(out_dir / "raw.zarr"),
            "gt": str(out_dir / "gt.zarr"),
            "seg": str(out_dir / "seg.zarr"),
        },
        "machine": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if loop and data == "synthetic":
        report.update(_demo_loop(out_dir / "loop", seed, log))
    reference_layer = DEMO_DATASETS.get(data)
    if reference_layer is not None:
        reference = open_volume(f"{data}/{reference_layer}").read()
        report["reference"] = {
            "name": f"{data}/{reference_layer}",
            "scores": evaluate(reference, gt).to_dict(),
        }
    # Error lists can be long; keep the report readable (counts stay in scores).
    for key in ("split_bodies", "merging_segments"):
        report["scores"].pop(key, None)
        if "reference" in report:
            report["reference"]["scores"].pop(key, None)
    tmp = out_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out_dir / "report.json")
    return report
