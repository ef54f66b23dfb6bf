"""Benchmark: FFN inference speed and quality on the FIB-25 crop, fp32 vs bf16 vs batched, and the baseline.

Google's FIB-25 checkpoint is imported from ``../shared/testdata`` (no TensorFlow) and run on the crop
``[75:175]³`` of FIB-25 ``training_sample2`` with Google's FIB-25 settings. Modes, all in this process:

* ``fp32 b1``: one canvas at a time, fp32 (our reference);
* ``bf16 b1``: one canvas, bf16 autocast, channels-last (only where the CPU has native bf16: an AVX2-only
  CPU emulates it about 90× slower than fp32; there the fast modes below run in fp32);
* ``compiled``: as ``bf16 b1`` with the network through ``torch.compile`` (Inductor, frozen weights); the
  one-off compilation is timed separately (``compile_seconds``) on a small warm-up crop;
* ``bf16 batched``: the crop cut into 2×2×2 overlapping subvolumes advanced together (batch 8) and
  reconciled into one segmentation (block-wise path);
* ``context`` (not in the default set; ``--modes context``): bf16 on the larger ``[50:200]³`` and scored on
  the same crop, so that objects near the crop's faces see the context Google's full-volume run had;
* ``baseline``: the watershed baseline on the same crop.

Reported per mode: FFN steps, ms per step, steps per voxel, end-to-end voxels/s, VI (split/merge) and ARAND
against ground truth on the crop interior (a 16-voxel border excluded, where seeds lack context), and the
interior ARAND between ours and Google's published segmentation of the full volume. A micro-benchmark
gives ms per field of view at batch 1/4/8 for fp32, bf16 autocast and bf16 weights.

Google's own code: its time on the issue's Xeon is quoted (TensorFlow 2.21, 2 cores: 251.5 s for 726 steps
on this crop) and used for a ratio only on that CPU model. With ``--tf-python PY`` (a Python with
TensorFlow; TensorFlow is not part of connectomix's set-up) the same network runs in TensorFlow on this
machine (``bench/ffn_tf.py``: Google's checkpoint through TensorFlow's reader, its output checked against
ours), and "× TF network" is our voxels/s against Google's step count (our fp32 takes exactly Google's steps
on this crop) times TensorFlow's ms per step: a same-machine lower bound of our speed-up over Google's code,
which also pays a session call and Python canvas logic per step. Run:
``.venv/bin/python bench/ffn.py [--tf-python /path/to/tf/python]`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machine import machine

REPO = Path(__file__).resolve().parents[1]
CROP = (slice(75, 175),) * 3
BORDER = 16
GOOGLE_TF = {
    "seconds": 251.5,
    "steps": 726,
    "voxels": 100**3,
    "cpu": "Intel(R) Xeon(R) Processor",
    "source": "issue #3, measured with TensorFlow 2.21 on 2 cores of this CPU",
}


PEER_TOLERANCE = 1e-3  # logits; fp32 TensorFlow and fp32 torch agree to ~1e-5 on this network

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}


def micro(model: torch.nn.Module, repeats: int, precisions: tuple[str, ...]) -> list[dict[str, Any]]:
    """ms per 33³ field of view of one forward pass, per precision, memory layout and batch size.

    This is the measurement behind ``connectomix.segment.inference.MEMORY_FORMAT``.
    """
    rows = []
    for (precision, layout), batch in itertools.product(itertools.product(precisions, LAYOUTS), (1, 4, 8)):
        fmt = LAYOUTS[layout]
        net = copy.deepcopy(model).to(memory_format=fmt)  # the caller's model stays as it is
        image = torch.randn(batch, 1, 33, 33, 33).contiguous(memory_format=fmt)
        seed = torch.randn(batch, 1, 33, 33, 33).contiguous(memory_format=fmt)
        # "bf16": autocast over fp32 weights (the engine's way); "bf16 weights": the weights cast to bf16
        net = net.to(torch.bfloat16 if precision == "bf16 weights" else torch.float32)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        with torch.inference_mode(), ctx:
            net(image, seed)
            start = time.perf_counter()
            for _ in range(repeats):
                net(image, seed)
            seconds = (time.perf_counter() - start) / repeats
        rows.append(
            {"precision": precision, "layout": layout, "batch": batch, "ms_per_fov": 1000 * seconds / batch}
        )
    return rows


def interior(array: np.ndarray) -> np.ndarray:
    return array[(slice(BORDER, -BORDER),) * 3]


def score(seg: np.ndarray, gt: np.ndarray, google: np.ndarray) -> dict[str, float]:
    from connectomix.evaluate import evaluate

    vs_gt = evaluate(interior(seg), interior(gt))
    vs_google = evaluate(interior(seg), interior(google))
    return {
        "vi_split": vs_gt.vi_split,
        "vi_merge": vs_gt.vi_merge,
        "vi": vs_gt.vi,
        "arand": vs_gt.arand,
        "arand_vs_google": vs_google.arand,
    }


def tensorflow_peer(
    python: str, checkpoint: Path, model: torch.nn.Module, raw: np.ndarray, repeats: int
) -> dict[str, Any]:
    """Run ``bench/ffn_tf.py`` under ``python`` on a real field of view of ``raw`` and return its report.

    The reference is our fp32 forward pass on the crop's central 33³ FOV with a fresh seed as the engine
    starts one (``InferenceOptions``' init activation at the centre, its pad value elsewhere), so the peer's
    output check is on real EM, not noise. A peer whose logits differ from ours by more than
    ``PEER_TOLERANCE`` is not the same network, and no ratio is taken against it.
    """
    from scipy.special import logit

    from connectomix.segment.inference import InferenceOptions

    start = InferenceOptions()
    config = model.config
    centre = [n // 2 for n in raw.shape]
    fov = tuple(slice(c - f // 2, c + f // 2 + 1) for c, f in zip(centre, config.fov_zyx, strict=True))
    image = ((raw[fov].astype(np.float32) - config.image_mean) / config.image_stddev).astype(np.float32)
    seed = np.full(image.shape, logit(start.pad_value), dtype=np.float32)
    seed[tuple(f // 2 for f in config.fov_zyx)] = logit(start.init_activation)
    with torch.inference_mode():
        logits = model(torch.from_numpy(image)[None, None], torch.from_numpy(seed)[None, None])
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.npz"
        np.savez(reference, image=image, seed=seed, logits=logits[0, 0].numpy())
        command = [python, str(REPO / "bench" / "ffn_tf.py"), str(checkpoint), str(reference)]
        done = subprocess.run(
            [*command, "--repeats", str(repeats)], capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise SystemExit(f"the TensorFlow peer ({python}) failed: {last}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["max_abs_diff_vs_ours"] > PEER_TOLERANCE:
        raise SystemExit(
            f"the TensorFlow peer's logits differ from ours by {report['max_abs_diff_vs_ours']:.3g} "
            f"(expected at most {PEER_TOLERANCE}): not the same network"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "ffn.json")
    parser.add_argument("--repeats", type=int, default=5, help="forward passes per micro-benchmark row")
    parser.add_argument("--modes", default="fp32,bf16,compiled,batched,baseline")
    parser.add_argument(
        "--tf-python", help="a Python with TensorFlow: time Google's network in TensorFlow on this machine"
    )
    parser.add_argument("--tf-repeats", type=int, default=30, help="TensorFlow forward passes to time")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from connectomix.segment.baseline import segment_baseline
    from connectomix.segment.blockwise import ffn_segmenter, segment_volume
    from connectomix.segment.inference import InferenceOptions, segment_subvolume
    from connectomix.segment.models import FFNConfig
    from connectomix.segment.precision import resolve_precision
    from connectomix.segment.tf_import import import_tf_checkpoint
    from connectomix.volume import ArrayVolume, open_volume
    from connectomix.volume.datasets import data_dir

    console = Console(width=160)
    root = data_dir()
    if root is None:
        console.print(
            "skipped: real data not found (set CX_DATA_DIR or place shared/testdata beside the repository)"
        )
        return 0
    checkpoint = root / "reference" / "google_ffn_fib25" / "model.ckpt-27465036"
    model = import_tf_checkpoint(checkpoint, FFNConfig())
    raw = open_volume("fib25-ts2/raw").read()[CROP].copy()
    gt = open_volume("fib25-ts2/gt").read()[CROP].copy()
    google = open_volume("fib25-ts2/google-ffn").read()[CROP].astype(np.uint64)
    n_voxels = raw.size

    modes = args.modes.split(",")
    # The fast modes run in bf16 only where the CPU has it natively (an AVX2-only CPU emulates bf16 ~90×
    # slower than fp32; see connectomix.segment.precision), else in fp32.
    fast = resolve_precision("auto")
    if "bf16" in modes and fast != "bf16":
        console.print("  bf16 b1 skipped: this CPU has no native bf16; the fast modes run in fp32")
        modes.remove("bf16")
    precisions = ("fp32", "bf16", "bf16 weights") if fast == "bf16" else ("fp32",)
    micro_rows = micro(model, args.repeats, precisions) if args.repeats > 0 else []
    for row in micro_rows:
        console.print(
            f"  micro {row['precision']} {row['layout']} batch {row['batch']}: {row['ms_per_fov']:.1f} ms/FOV"
        )
    results: list[dict[str, Any]] = []
    if "fp32" in modes or "bf16" in modes:
        for precision in ("fp32", "bf16"):
            if precision not in modes:
                continue
            options = InferenceOptions(precision=precision, batch_size=1)  # type: ignore[arg-type]
            start = time.perf_counter()
            result = segment_subvolume(raw, model, options)
            seconds = time.perf_counter() - start
            steps = result.counters.steps
            results.append(
                {"mode": f"{precision} b1", "steps": steps, "seconds": seconds}
                | score(result.segmentation, gt, google)
            )
            console.print(f"  {precision} b1: {steps} steps in {seconds:.1f} s")
    if "compiled" in modes:
        options = InferenceOptions(precision=fast, batch_size=1, compile=True)
        start = time.perf_counter()
        segment_subvolume(raw[:40, :40, :40].copy(), model, options)  # compiles (Inductor caches on disk)
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = segment_subvolume(raw, model, options)
        seconds = time.perf_counter() - start
        steps = result.counters.steps
        results.append(
            {
                "mode": f"{fast} b1 compiled",
                "steps": steps,
                "seconds": seconds,
                "compile_seconds": compile_seconds,
            }
            | score(result.segmentation, gt, google)
        )
        console.print(f"  {fast} compiled: {steps} steps, {seconds:.1f} s (+{compile_seconds:.1f} s compile)")
    if "batched" in modes:
        options = InferenceOptions(precision=fast, batch_size=8)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            blockwise = segment_volume(
                ArrayVolume(raw, resolution=(10, 10, 10)),
                f"zarr://{tmp}/seg.zarr",
                ffn_segmenter(model, options),
                block_shape_zyx=(50, 50, 50),
                overlap_zyx=(24, 24, 24),
                batch_blocks=8,
                progress=False,
            )
            seconds = time.perf_counter() - start
            seg = open_volume(f"zarr://{tmp}/seg.zarr").read()
        steps = int(blockwise.counters.get("steps", 0))
        results.append(
            {"mode": f"{fast} batched (8 subvolumes)", "steps": steps, "seconds": seconds}
            | score(seg, gt, google)
        )
        console.print(f"  {fast} batched: {steps} steps in {seconds:.1f} s")
    if "context" in modes:
        # The same crop scored, but segmented inside the larger [50:200]³ so that objects near the crop see
        # the context Google's full-volume run had.
        options = InferenceOptions(precision=fast, batch_size=1)
        big = open_volume("fib25-ts2/raw").read()[(slice(50, 200),) * 3].copy()
        start = time.perf_counter()
        result = segment_subvolume(big, model, options)
        seconds = time.perf_counter() - start
        seg = result.segmentation[(slice(25, 125),) * 3]
        row = {"mode": f"{fast} b1, run on [50:200]³", "steps": result.counters.steps, "seconds": seconds}
        row |= score(seg, gt, google)
        row["voxels"] = big.size
        results.append(row)
        console.print(f"  {fast} context: {result.counters.steps} steps in {seconds:.1f} s")
    if "baseline" in modes:
        start = time.perf_counter()
        base = segment_baseline(raw, resolution_nm_zyx=(10, 10, 10))
        seconds = time.perf_counter() - start
        results.append(
            {"mode": "baseline (watershed)", "steps": 0, "seconds": seconds}
            | score(base.segmentation, gt, google)
        )
    google_row = {"mode": "Google FFN (published, full volume)", "steps": None, "seconds": None} | score(
        google, gt, google
    )
    for row in results:
        voxels = row.setdefault("voxels", n_voxels)
        row["voxels_per_second"] = voxels / row["seconds"]
        row["ms_per_step"] = 1000 * row["seconds"] / row["steps"] if row["steps"] else None
        row["steps_per_voxel"] = row["steps"] / voxels if row["steps"] else None
    reference = next((r for r in results if r["mode"] == "fp32 b1"), None)
    tf_peer = None
    if args.tf_python:
        tf_peer = tensorflow_peer(args.tf_python, checkpoint, model, raw, args.tf_repeats)
        console.print(
            f"  TensorFlow {tf_peer['tensorflow']} network, batch 1: {tf_peer['ms_per_step']:.1f} ms/step "
            f"(max |TF − ours| = {tf_peer['max_abs_diff_vs_ours']:.2e} logits)"
        )
        # Google's step count on this crop: our fp32 takes the same steps (726, as Google's code did)
        tf_peer["steps"] = reference["steps"] if reference else GOOGLE_TF["steps"]
        tf_peer["seconds"] = tf_peer["steps"] * tf_peer["ms_per_step"] / 1000
        tf_peer["voxels_per_second"] = n_voxels / tf_peer["seconds"]
    google_vps = GOOGLE_TF["voxels"] / GOOGLE_TF["seconds"]
    # Google's time was taken on one CPU model; a ratio against it only means something on that model.
    same_cpu = machine()["cpu"] == GOOGLE_TF["cpu"]
    for row in results:
        row["speedup_vs_fp32_b1"] = (
            row["voxels_per_second"] / reference["voxels_per_second"] if reference else None
        )
        row["speedup_vs_google_tf"] = row["voxels_per_second"] / google_vps if same_cpu else None
        row["speedup_vs_tf_network"] = (
            row["voxels_per_second"] / tf_peer["voxels_per_second"] if tf_peer else None
        )

    table = Table(title="FFN on FIB-25 ts2 crop [75:175]³ (interior scores, 16-voxel border excluded)")
    columns = (
        "mode",
        "steps",
        "ms/step",
        "voxels/s",
        "× fp32 b1",
        "× Google TF",
        "× TF network",
        "VI split",
        "VI merge",
        "ARAND",
        "ARAND vs Google",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in [*results, google_row]:

        def fmt(key: str, spec: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return "—" if value is None else format(value, spec)

        table.add_row(
            row["mode"], fmt("steps", "d"), fmt("ms_per_step", ".1f"), fmt("voxels_per_second", ",.0f"),
            fmt("speedup_vs_fp32_b1", ".2f"), fmt("speedup_vs_google_tf", ".2f"),
            fmt("speedup_vs_tf_network", ".2f"), fmt("vi_split", ".3f"),
            fmt("vi_merge", ".3f"), fmt("arand", ".3f"), fmt("arand_vs_google", ".3f"),
        )  # fmt: skip
    console.print(table)
    google_ms = 1000 * GOOGLE_TF["seconds"] / GOOGLE_TF["steps"]
    console.print(
        f"Google's TensorFlow code on {GOOGLE_TF['cpu']} (quoted): {google_vps:,.0f} voxels/s, "
        f"{google_ms:.0f} ms/step" + ("" if same_cpu else " (another CPU model: no ratio against it)")
    )

    report = {
        "benchmark": "ffn",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "crop_zyx": [[75, 175]] * 3,
        "interior_border_voxels": BORDER,
        "micro": micro_rows,
        "results": results,
        "google_published": google_row,
        "google_tf_quoted": GOOGLE_TF,
        "google_tf_quoted_same_cpu": same_cpu,
        "tensorflow_network_on_this_machine": tf_peer,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    tmp_json.replace(args.json)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
