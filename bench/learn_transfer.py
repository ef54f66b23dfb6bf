"""Benchmark: does the continual learner's training improve Google's FIB-25 model when the labels are perfect?

The loop (``cx loop --data fib25-ts2``) fits LoRA adapters on proofread corrections of region A and has
made the held-out region C worse. This script removes the proofreader from the question: it fits the loop's
learner (LoRA rank 4 on the last 4 module groups, Adam, no replay) on ``--patches`` ground-truth patches of
region A and measures, for the base and the fitted model,

* the per-FOV training loss (:func:`connectomix.learn.fov_loss.fov_loss`: un-augmented examples, the model's
  own moves) on other examples of A's patches and on ground-truth patches of C, and
* VI of a segmentation of each region named in ``--vi`` (default A: the region it was trained on), segmented
  as the loop segments it (half a field of view of context; fp32 unless ``--precision``).

A learner that works lowers the loss on A; if VI on A, the data it was fitted on, does not fall with it,
the per-FOV objective does not measure what inference needs, whatever the labels.

Run from the repository root (``../shared/testdata`` needed)::

    .venv/bin/python bench/learn_transfer.py [--patches 60 --epochs 2 --lr 1e-4 --vi A]
    .venv/bin/python bench/learn_transfer.py --centre-sampling uniform --anchor-weight 1 \
        --json bench/results/learn_transfer_uniform_anchor1.json

Results go to ``bench/results/learn_transfer.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connectomix.learn.continual import ContinualLearner, default_lora_config
from connectomix.learn.fov_loss import fov_loss
from connectomix.learn.loop import RegionSegmenter, fib25_data
from connectomix.learn.lora import apply_adapter, merge_and_remove_lora
from connectomix.learn.replay import ground_truth_patches
from connectomix.segment.inference import InferenceOptions
from connectomix.segment.precision import resolve_precision
from machine import machine

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=60, help="ground-truth patches of A to fit on")
    parser.add_argument("--heldout-patches", type=int, default=40, help="ground-truth patches of C scored")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--fovs", type=int, default=4, help="FOVs per example (fit and loss)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    parser.add_argument("--vi", default="A", help="comma-separated regions to segment and score (A, B, C)")
    parser.add_argument("--centre-sampling", default="balanced", choices=["balanced", "uniform"])
    parser.add_argument(
        "--anchor-weight", type=float, default=0.0, help="the learner's anchor term (0: labels only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "learn_transfer.json")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    from connectomix.errors import NotFoundError

    try:
        base, data = fib25_data()
    except NotFoundError as error:
        console.print(f"error: {error}")
        return 2
    regions = {"A": data.regions.a, "B": data.regions.b, "C": data.regions.c}
    vi_regions = [r.strip().upper() for r in args.vi.split(",") if r.strip()]
    unknown = [r for r in vi_regions if r not in regions]
    if unknown:
        console.print(f"error: --vi takes A, B and C, got {', '.join(unknown)}")
        return 2
    precision = resolve_precision(args.precision)  # type: ignore[arg-type]
    config = base.config
    train = ground_truth_patches(
        data.raw, data.gt, config, n=args.patches, seed=args.seed, region=data.regions.a
    )
    held = ground_truth_patches(
        data.raw, data.gt, config, n=args.heldout_patches, seed=args.seed + 1, region=data.regions.c
    )

    def losses(model: torch.nn.Module) -> dict[str, dict[str, float]]:
        kw = {"max_fovs_per_example": args.fovs, "seed": args.seed + 7, "precision": precision}
        return {
            "A (fitted patches, other examples)": fov_loss(model, train, **kw).to_dict(),  # type: ignore[arg-type]
            "C (held out)": fov_loss(model, held, **kw).to_dict(),  # type: ignore[arg-type]
        }

    report: dict = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "regions_zyx": {n: [list(b.start), list(b.stop)] for n, b in regions.items()},
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tick = time.perf_counter()
    report["loss_base"] = losses(base)
    report["loss_seconds"] = time.perf_counter() - tick
    learner = ContinualLearner(
        base,
        default_lora_config(base),
        replay_fraction=0.0,
        lr=args.lr,
        max_fovs_per_example=args.fovs,
        precision=precision,
        seed=args.seed,
        centre_sampling=args.centre_sampling,
        anchor_weight=args.anchor_weight,
    )
    fit = learner.fit(train, epochs=args.epochs)
    report["fit"] = fit.to_dict()
    fitted = copy.deepcopy(base)
    apply_adapter(fitted, fit.adapter)
    merge_and_remove_lora(fitted)
    fitted.eval()
    report["loss_fitted"] = losses(fitted)

    segmenter = RegionSegmenter(
        data, InferenceOptions(precision=precision), tuple(f // 2 for f in config.fov_zyx)
    )
    report["vi"] = {}
    for name in vi_regions:
        report["vi"][name] = {
            "base": segmenter.score(base, regions[name]),
            "fitted": segmenter.score(fitted, regions[name]),
        }
    report["segment_seconds"] = segmenter.seconds

    table = Table(
        title=f"GT fit on A ({len(train)} patches, {args.epochs} epochs, lr {args.lr:g}, {precision}, "
        f"{args.centre_sampling} centres, anchor {args.anchor_weight:g})"
    )
    for col in ("measure", "base", "fitted", "change"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    for key in report["loss_base"]:
        b, f = report["loss_base"][key], report["loss_fitted"][key]
        table.add_row(
            f"per-FOV loss, {key}",
            f"{b['loss']:.4f}",
            f"{f['loss']:.4f}",
            f"{f['loss'] / b['loss'] - 1:+.1%}",
        )
        table.add_row(
            f"FOVs per example, {key}",
            f"{b['fovs_per_example']:.2f}",
            f"{f['fovs_per_example']:.2f}",
            f"{f['fovs_per_example'] - b['fovs_per_example']:+.2f}",
        )
    for name, scores in report["vi"].items():
        for kind in ("vi", "vi_split", "vi_merge"):
            b, f = scores["base"][kind], scores["fitted"][kind]
            table.add_row(f"{kind} on {name}", f"{b:.3f}", f"{f:.3f}", f"{f / b - 1:+.1%}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
