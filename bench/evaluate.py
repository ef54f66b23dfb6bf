"""Benchmark: connectomix VI + ARAND against scikit-image on real segmentations.

Cases:

1. ``fib25-ts2``: Google's published FFN segmentation of FIB-25 training_sample2 (250³) against its ground
   truth. Reported VI and ARAND must match scikit-image and Google's published numbers.
2. ``pinky40``: the 512³ MICrONS pinky40 automatic segmentation (renumbered to dense ids 1..n, because
   scikit-image sizes its sparse table by the largest id) against a deterministic corruption of itself:
   5 % of labels merged pairwise into another label, 5 % split in two by a plane through the centre of
   their bounding box (normal to its longest axis).

For each case both implementations get the same in-memory numpy arrays; our out-of-core path (both volumes
read chunk by chunk from zarr v3, decompression included) is timed as well. Reported: the scores (asserted
equal to 1e-9), wall time (best of ``--repeats``), and peak memory. Peak memory is measured in a fresh
subprocess per implementation: it loads the two arrays from ``.npy`` files and imports both libraries,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), makes one call, and reports ``VmHWM`` minus
the RSS before the call. This counts every allocation (numpy, scipy, C++ hash maps) the same way for both
(Linux only). Run from the repository root: ``python bench/evaluate.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-9
MEMORY_METHOD = "VmHWM - VmRSS around one call in a fresh subprocess (peak mark reset after loading inputs)"


# -- the two implementations --------------------------------------------------------------------------
def run_ours(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from connectomix.evaluate import evaluate

    scores = evaluate(seg, gt)
    return {"vi_split": scores.vi_split, "vi_merge": scores.vi_merge, "arand": scores.arand}


def run_skimage(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from skimage.metrics import adapted_rand_error, variation_of_information

    split, merge = variation_of_information(gt, seg)
    arand = adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
    return {"vi_split": float(split), "vi_merge": float(merge), "arand": float(arand)}


IMPLEMENTATIONS = {"connectomix": run_ours, "scikit-image": run_skimage}


def time_chunked(seg: np.ndarray, gt: np.ndarray, directory: Path, repeats: int) -> tuple[float, dict]:
    """Best time of our one-pass evaluation reading both volumes from zarr v3 (64³ chunks, zstd).

    Each repeat starts with an empty chunk cache, so decompression is part of the time.
    """
    from connectomix.evaluate import evaluate
    from connectomix.volume import ChunkCache, open_volume, set_shared_cache

    volumes = []
    for name, array in (("seg", seg), ("gt", gt)):
        volume = open_volume(f"zarr://{directory / name}.zarr", "w", shape=array.shape, dtype=array.dtype)
        volume.write(volume.bounds, array)
        volumes.append(volume)
    best, scores = float("inf"), {}
    for _ in range(repeats):
        set_shared_cache(ChunkCache(1 << 30))
        start = time.perf_counter()
        result = evaluate(*volumes)
        best = min(best, time.perf_counter() - start)
        scores = {"vi_split": result.vi_split, "vi_merge": result.vi_merge, "arand": result.arand}
    set_shared_cache(None)
    return best, scores


# -- data -----------------------------------------------------------------------------------------------
def load_cases() -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """name -> (seg, gt, description), or exit with a message where the data is absent."""
    from connectomix.volume import open_volume
    from connectomix.volume.datasets import data_dir

    if data_dir() is None:
        print("skipped: real data not found (set CX_DATA_DIR or place shared/testdata beside the repository)")
        sys.exit(0)
    import fastremap

    fib_gt = open_volume("fib25-ts2/gt").read()
    fib_seg = open_volume("fib25-ts2/google-ffn").read()
    pinky, _ = fastremap.renumber(open_volume("pinky40/seg").read(), preserve_zero=True)
    corrupted = corrupt(pinky, seed=0)
    return {
        "fib25-ts2": (fib_seg, fib_gt, "FIB-25 ts2 250³: Google FFN vs ground truth"),
        "pinky40": (corrupted, pinky, "pinky40 512³: 5 % merged + 5 % split copy vs original"),
    }


def corrupt(
    labels: np.ndarray, *, seed: int, merge_fraction: float = 0.05, split_fraction: float = 0.05
) -> np.ndarray:
    """A copy of ``labels`` (dense ids) with pairwise merges and plane splits; deterministic in ``seed``."""
    import fastremap
    from scipy.ndimage import find_objects

    rng = np.random.default_rng(seed)
    ids = fastremap.unique(labels)
    ids = ids[ids != 0]
    n_merge = round(merge_fraction * ids.size)
    merged = rng.choice(ids, size=2 * n_merge, replace=False).reshape(-1, 2)
    out = fastremap.remap(labels, {int(b): int(a) for a, b in merged}, preserve_missing_labels=True)
    untouched = np.setdiff1d(ids, merged.ravel())
    to_split = rng.choice(untouched, size=round(split_fraction * ids.size), replace=False)
    boxes = find_objects(out)
    next_id = int(out.max()) + 1
    for label in np.sort(to_split).tolist():
        box = boxes[label - 1]
        extents = [s.stop - s.start for s in box]
        axis = int(np.argmax(extents))
        centre = extents[axis] // 2
        if extents[axis] < 2:
            continue
        part = out[box]
        far = [slice(None)] * 3
        far[axis] = slice(centre, None)
        view = part[tuple(far)]
        view[view == label] = next_id
        next_id += 1
    return out


# -- measurement ----------------------------------------------------------------------------------------
def best_time(function, seg: np.ndarray, gt: np.ndarray, repeats: int) -> tuple[float, dict[str, float]]:
    best = float("inf")
    result: dict[str, float] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(seg, gt)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_memory(name: str, seg_path: Path, gt_path: Path) -> int:
    """Peak RSS growth (bytes) of one call of implementation ``name`` in a fresh subprocess."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure-memory", name, str(seg_path), str(gt_path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    return int(output.strip().splitlines()[-1])


def _measure_memory_child(name: str, seg_path: str, gt_path: str) -> None:
    import scipy.sparse  # noqa: F401  (import every library before the baseline)
    import skimage.metrics  # noqa: F401

    import connectomix.evaluate  # noqa: F401

    seg, gt = np.load(seg_path), np.load(gt_path)
    _reset_peak_rss()
    baseline = _rss_kib("VmRSS")
    IMPLEMENTATIONS[name](seg, gt)
    print(max(0, _rss_kib("VmHWM") - baseline) * 1024)


def _rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in KiB, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak excludes loading the inputs."""
    Path("/proc/self/clear_refs").write_text("5")


def machine_info() -> dict[str, object]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("connectomix", "numpy", "scipy", "scikit-image", "fastremap"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(_total_memory() / 2**30, 1),
        "versions": versions,
    }


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "evaluate.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best is kept)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--measure-memory", nargs=3, metavar=("IMPL", "SEG", "GT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        _measure_memory_child(*args.measure_memory)
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)  # the table is wide; never truncate it in logs
    cases = load_cases()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, (seg, gt, description) in cases.items():
            console.print(f"[bold]{case}[/]: {description}, shape {seg.shape}")
            row: dict[str, Any] = {"case": case, "description": description, "shape_zyx": list(seg.shape)}
            scores = {}
            for name, function in IMPLEMENTATIONS.items():
                seconds, scores[name] = best_time(function, seg, gt, args.repeats)
                row[f"{name}_seconds"] = seconds
                console.print(f"  {name}: {seconds:.3f} s  {scores[name]}")
            for key in ("vi_split", "vi_merge", "arand"):
                difference = abs(scores["connectomix"][key] - scores["scikit-image"][key])
                assert difference <= TOLERANCE, f"{case}: {key} differs from scikit-image by {difference}"
            row["scores"] = scores["connectomix"]
            row["max_abs_difference"] = max(
                abs(scores["connectomix"][k] - scores["scikit-image"][k]) for k in scores["connectomix"]
            )
            row["speedup"] = row["scikit-image_seconds"] / row["connectomix_seconds"]
            chunk_dir = Path(tmp) / f"{case}-zarr"
            chunk_dir.mkdir()
            row["connectomix_zarr_seconds"], chunked = time_chunked(seg, gt, chunk_dir, args.repeats)
            for key in ("vi_split", "vi_merge", "arand"):
                assert abs(chunked[key] - scores["scikit-image"][key]) <= TOLERANCE, f"{case}: chunked {key}"
            console.print(f"  connectomix from zarr: {row['connectomix_zarr_seconds']:.3f} s")
            if not args.no_memory:
                seg_path, gt_path = Path(tmp) / f"{case}-seg.npy", Path(tmp) / f"{case}-gt.npy"
                np.save(seg_path, seg)
                np.save(gt_path, gt)
                for name in IMPLEMENTATIONS:
                    row[f"{name}_peak_bytes"] = peak_memory(name, seg_path, gt_path)
            results.append(row)

    table = Table(title=f"VI + ARAND: connectomix vs scikit-image (best of {args.repeats})")
    columns = (
        "case",
        "vi_split",
        "vi_merge",
        "arand",
        "|Δ| max",
        "ours s",
        "skimage s",
        "speedup",
        "ours zarr s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    if not args.no_memory:
        table.add_column("ours peak MiB", justify="right")
        table.add_column("skimage peak MiB", justify="right")
    for row in results:
        s = row["scores"]
        cells = [
            str(row["case"]),
            f"{s['vi_split']:.4f}",
            f"{s['vi_merge']:.4f}",
            f"{s['arand']:.4f}",
            f"{row['max_abs_difference']:.1e}",
            f"{row['connectomix_seconds']:.3f}",
            f"{row['scikit-image_seconds']:.3f}",
            f"{row['speedup']:.1f}×",
            f"{row['connectomix_zarr_seconds']:.3f}",
        ]
        if not args.no_memory:
            cells += [
                f"{row['connectomix_peak_bytes'] / 2**20:.0f}",
                f"{row['scikit-image_peak_bytes'] / 2**20:.0f}",
            ]
        table.add_row(*cells)
    console.print(table)

    report = {
        "benchmark": "evaluate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "memory_method": MEMORY_METHOD,
        "machine": machine_info(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    tmp_json.replace(args.json)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
