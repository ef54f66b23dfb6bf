"""Benchmark: a learned boundary map (3-D U-Net) vs the raw-derived one, in the baseline watershed.

Trains :class:`connectomix.segment.unet.BoundaryUNet` from scratch, in this process, with a fixed seed and
step count, on

* gala ``train`` (raw + gt, (50, 100, 200) voxels), and
* FIB-25 ``training_sample2`` **without the evaluation crop**: ts2 z ∈ [0, 75) and z ∈ [175, 250) as two
  separate volumes (the crop ``[75:175]³`` is never seen, not even its x/y neighbourhood within z 75–175),

then segments with :func:`connectomix.segment.baseline.segment_baseline` (default :class:`BaselineParams`)
and scores with :func:`connectomix.evaluate.evaluate` (VI split/merge in bits, ARAND):

* ``ts2 held-out`` (validation: ts2 z [75, 175), y [175, 250), all x; in neither the training data nor the
  crop): raw-derived vs U-Net boundary;
* ``fib25-crop100`` (= ts2 ``[75:175]³``): raw-derived boundary vs U-Net boundary;
* ``gala-test``: raw-derived vs U-Net vs the bundled ``gala-test/boundary`` (gala's ``p1`` classifier map).

Each on the whole volume and on its interior (a 16-voxel border excluded; the segmentation is computed on
the whole volume, then cropped). Also reported per boundary map: ROC AUC against the ground-truth boundary
voxels (:func:`~connectomix.segment.unet.boundary_targets`), seconds to make the map and to segment, and the
U-Net prediction time in bf16 (channels-last autocast) vs fp32 on the crop. Run:
``.venv/bin/python bench/boundary.py`` (about 8 minutes on 2 cores: ~6 training, ~2 evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machine import machine

REPO = Path(__file__).resolve().parents[1]
BORDER = 16
CROP = (75, 175)  # fib25-crop100 = ts2[75:175]³
RES = (10.0, 10.0, 10.0)
#: Held out from training and disjoint from the crop: ts2 z [75, 175), y [175, 250), all x.
VAL_REGION = (slice(75, 175), slice(175, 250), slice(None))
VALIDATION = "ts2 held-out"
TEST_SETS = ("fib25-crop100", "gala-test")


def interior(array: np.ndarray) -> np.ndarray:
    return array[tuple(slice(BORDER, s - BORDER) for s in array.shape)]


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive`` (Mann-Whitney U from ranks, ties averaged)."""
    from scipy.stats import rankdata

    ranks = rankdata(score.ravel())
    pos = positive.ravel()
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from connectomix.evaluate import evaluate

    whole = evaluate(seg, gt)
    inner = evaluate(interior(seg), interior(gt))
    return {
        "vi_split": whole.vi_split,
        "vi_merge": whole.vi_merge,
        "vi": whole.vi,
        "arand": whole.arand,
        "interior_vi_split": inner.vi_split,
        "interior_vi_merge": inner.vi_merge,
        "interior_vi": inner.vi,
        "interior_arand": inner.arand,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: about 6 minutes)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patch", default="48,48,48", help="training patch Z,Y,X (voxels)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--balance", type=float, default=1.0, help="class balancing of the loss, 0..1")
    parser.add_argument("--gala-share", type=float, default=0.5, help="fraction of patches from gala-train")
    parser.add_argument("--model-out", type=Path, default=None, help="also save the trained model here")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "boundary.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from connectomix.segment.baseline import BaselineParams, boundary_from_raw, segment_baseline
    from connectomix.segment.unet import (
        BoundaryUNetConfig,
        boundary_targets,
        count_parameters,
        predict_boundary,
        save_boundary_model,
        train_boundary_unet,
    )
    from connectomix.volume import open_volume
    from connectomix.volume.datasets import data_dir

    console = Console(width=160)
    if data_dir() is None:
        console.print(
            "skipped: real data not found (set CX_DATA_DIR or place shared/testdata beside the repository)"
        )
        return 0

    # -- training data: gala-train and ts2 without the crop's z range ---------------------------------------
    ts2_raw, ts2_gt = open_volume("fib25-ts2/raw").read(), open_volume("fib25-ts2/gt").read()
    lo, hi = CROP
    volumes = [
        ("gala-train", open_volume("gala-train/raw").read(), open_volume("gala-train/gt").read()),
        (f"fib25-ts2 z[0:{lo})", ts2_raw[:lo], ts2_gt[:lo]),
        (f"fib25-ts2 z[{hi}:250)", ts2_raw[hi:], ts2_gt[hi:]),
    ]
    patch = tuple(int(v) for v in args.patch.split(","))
    # each dataset drawn equally often: gala-train half the patches, the two ts2 slabs a quarter each
    weights = [args.gala_share, (1 - args.gala_share) / 2, (1 - args.gala_share) / 2]
    config = BoundaryUNetConfig(features=args.features, levels=args.levels)
    console.print(
        f"training {args.steps} steps × {args.batch_size} patches {patch} on "
        + ", ".join(f"{name} {raw.shape}" for name, raw, _ in volumes)
    )
    start = time.perf_counter()
    model, losses = train_boundary_unet(
        [(raw, gt) for _, raw, gt in volumes],
        config=config,
        steps=args.steps,
        batch_size=args.batch_size,
        patch_zyx=patch,
        lr=args.lr,
        seed=args.seed,
        precision="bf16",
        volume_weights=weights,
        balance=args.balance,
        progress=True,
    )
    train_seconds = time.perf_counter() - start
    window = min(25, len(losses))
    console.print(
        f"trained in {train_seconds:.0f} s ({train_seconds / max(args.steps, 1):.2f} s/step); "
        f"loss {losses[:window].mean():.3f} (first {window}) → {losses[-window:].mean():.3f} (last {window})"
    )
    if args.model_out is not None:
        save_boundary_model(model, args.model_out, metadata={"trained_steps": str(args.steps)})

    # -- evaluation ------------------------------------------------------------------------------------------
    params = BaselineParams()
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}

    def run(
        dataset: str, method: str, raw: np.ndarray, gt: np.ndarray, bmap: np.ndarray, seconds: float
    ) -> None:
        start = time.perf_counter()
        result = segment_baseline(raw, boundary=bmap, resolution_nm_zyx=RES, params=params)
        seg_seconds = time.perf_counter() - start
        row = {
            "dataset": dataset,
            "boundary": method,
            "boundary_auc": auc(bmap, boundary_targets(gt)),
            "boundary_seconds": seconds,
            "segment_seconds": seg_seconds,
            "n_segments": result.n_segments,
        } | score(result.segmentation, gt)
        rows.append(row)
        console.print(
            f"  {dataset} {method}: VI {row['vi']:.3f} ARAND {row['arand']:.3f}; "
            f"interior VI {row['interior_vi']:.3f} ARAND {row['interior_arand']:.3f}"
        )

    evaluation = [
        (VALIDATION, ts2_raw[VAL_REGION], ts2_gt[VAL_REGION]),
        *((name, open_volume(f"{name}/raw").read(), open_volume(f"{name}/gt").read()) for name in TEST_SETS),
    ]
    for dataset, raw, gt in evaluation:
        tick = time.perf_counter()
        derived = boundary_from_raw(raw, RES, params)
        run(dataset, "raw-derived", raw, gt, derived, time.perf_counter() - tick)
        tick = time.perf_counter()
        learned = predict_boundary(raw, model, precision="bf16")
        unet_seconds = time.perf_counter() - tick
        run(dataset, "U-Net (ours)", raw, gt, learned, unet_seconds)
        if dataset == "gala-test":
            run(dataset, "gala p1 (bundled)", raw, gt, open_volume("gala-test/boundary").read(), 0.0)
        if dataset == "fib25-crop100":
            # prediction speed, bf16 vs fp32: one warm-up call each (oneDNN builds its kernels), then the
            # best of 3; and the tiled map (default tiles) vs one pass over the whole crop
            maps = {}
            for precision in ("bf16", "fp32"):
                predict_boundary(raw, model, precision=precision)
                times = []
                for _ in range(3):
                    tick = time.perf_counter()
                    maps[precision] = predict_boundary(raw, model, precision=precision)
                    times.append(time.perf_counter() - tick)
                timing[f"{precision}_seconds"] = min(times)
            timing["bf16_vs_fp32_max_abs_diff"] = float(np.abs(maps["fp32"] - maps["bf16"]).max())
            whole = predict_boundary(raw, model, patch_zyx=raw.shape, precision="fp32")
            timing["tiled_vs_one_pass_max_abs_diff_fp32"] = float(np.abs(maps["fp32"] - whole).max())
            timing["tiled_vs_one_pass_interior_max_abs_diff_fp32"] = float(
                np.abs(interior(maps["fp32"]) - interior(whole)).max()
            )
            timing["voxels"] = raw.size

    table = Table(
        title="Baseline watershed with raw-derived vs learned boundary maps (VI in bits; lower is better)"
    )
    for column in (
        "dataset",
        "boundary",
        "AUC",
        "VI split",
        "VI merge",
        "VI",
        "ARAND",
        "int. VI split",
        "int. VI merge",
        "int. VI",
        "int. ARAND",
        "segments",
        "map s",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["dataset"], r["boundary"], f"{r['boundary_auc']:.3f}", f"{r['vi_split']:.3f}",
            f"{r['vi_merge']:.3f}", f"{r['vi']:.3f}", f"{r['arand']:.3f}", f"{r['interior_vi_split']:.3f}",
            f"{r['interior_vi_merge']:.3f}", f"{r['interior_vi']:.3f}", f"{r['interior_arand']:.3f}",
            str(r["n_segments"]), f"{r['boundary_seconds']:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"U-Net ({count_parameters(model):,} parameters) on the 100³ crop: "
        f"bf16 {timing['bf16_seconds']:.2f} s, "
        f"fp32 {timing['fp32_seconds']:.2f} s (bf16 {timing['fp32_seconds'] / timing['bf16_seconds']:.2f}× "
        f"faster, max |Δ| {timing['bf16_vs_fp32_max_abs_diff']:.4f}); tiled vs one pass (fp32) max |Δ| "
        f"{timing['tiled_vs_one_pass_max_abs_diff_fp32']:.4f} (interior "
        f"{timing['tiled_vs_one_pass_interior_max_abs_diff_fp32']:.4f})"
    )

    report = {
        "benchmark": "boundary",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "training": {
            "volumes": {name: list(raw.shape) for name, raw, _ in volumes},
            "excluded_region_zyx": [list(CROP)] * 3,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "patch_zyx": list(patch),
            "lr": args.lr,
            "seed": args.seed,
            "precision": "bf16",
            "volume_weights": weights,
            "balance": args.balance,
            "config": dataclasses.asdict(config),
            "parameters": count_parameters(model),
            "seconds": train_seconds,
            "loss_first": float(losses[:window].mean()),
            "loss_last": float(losses[-window:].mean()),
        },
        "baseline_params": dataclasses.asdict(params),
        "interior_border_voxels": BORDER,
        "results": rows,
        "prediction": timing,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    tmp_json.replace(args.json)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
