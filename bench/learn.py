"""Benchmark: continual learning with Google's FIB-25 FFN on FIB-25 ``training_sample2``.

1. **Fit time**: :meth:`~connectomix.learn.ContinualLearner.fit` on 50 patches × 3 epochs (the learner as
   ``cx loop`` configures it: LoRA rank 4 on the last 4 module groups, batch 4, 2 FOVs per example, no
   replay), in fp32 and in bf16 autocast. The patches are ground-truth patches of region A of
   :data:`~connectomix.learn.loop.FIB25_REGIONS` (what a corrected task gives: EM plus a validated label
   field around a place). On a CPU without native bf16 (emulated there, about 90× slower than fp32) the bf16
   fit is skipped unless ``--bf16-steps N`` asks to time N steps of the same plan; its total is then
   *projected* from the measured seconds per step, and the JSON says so.
2. **Streaming latency**: a :class:`~connectomix.learn.StreamingLearner` runs in its background thread
   while 4 simulated proofreaders complete the flagged tasks of region A of a ``cx loop`` set-up
   (``--stream-data``: ``synthetic``, the demo's loop, by default, or ``fib25-ts2``) on the wall clock (a real
   queue and edit log in SQLite); the learner is the loop's (its LoRA, learning rate, FOVs and epochs), and
   every region is segmented with the loop's context. Each round of ``--min-tasks`` tasks is fitted,
   registered and gated on VI of the loop's region B. Reported: seconds from each task's completion to the
   promotion of an adapter trained on it (median, max), and per round.
3. **Adapter size on disk**: the safetensors file of the fitted adapter next to the base model's file.
4. **VI against corrections**: the curve of a ``cx loop --data fib25-ts2`` report (``--loop-json``, default
   ``bench/results/loop_fib25_context.json``), drawn to ``bench/results/learn_curve.png``.

The roadmap's targets are for a GPU: 50 patches × 3 epochs in under 2 minutes, 30 minutes from edit to
served adapter. This script reports what the CPU it runs on achieves beside them.

Run from the repository root: ``.venv/bin/python bench/learn.py`` (about 30 minutes on 2 cores).
Results go to ``bench/results/learn.json``; parts left out with ``--skip`` keep their earlier results there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connectomix.learn import ContinualLearner, StreamingLearner, WeightsRegistry, save_adapter
from connectomix.learn.continual import default_lora_config
from connectomix.learn.loop import FIB25_REGIONS, LoopSettings, RegionSegmenter, fib25_data
from connectomix.learn.replay import ground_truth_patches
from connectomix.segment.inference import InferenceOptions
from connectomix.segment.models import save_model
from machine import machine

RESULTS = Path(__file__).resolve().parent / "results"


def fit_time(base, data, args) -> dict:
    raw_a = data.raw[FIB25_REGIONS.a.to_slices()]
    gt_a = data.gt[FIB25_REGIONS.a.to_slices()]
    patches = ground_truth_patches(raw_a, gt_a, base.config, n=args.patches, seed=0)
    out: dict = {
        "patches": len(patches),
        "epochs": args.epochs,
        "patch_shape_zyx": list(patches[0].raw.shape),
    }
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not native and args.bf16_steps == 0:
            out["bf16"] = {"precision": "bf16", "native": False, "skipped": "no native bf16 on this CPU"}
            print("fit bf16: skipped (emulated bf16 on this CPU; --bf16-steps N to time N steps)", flush=True)
            continue
        learner = ContinualLearner(base, precision=precision, max_fovs_per_example=2, seed=0)
        # emulated bf16: the same plan (same seed), cut after `cap` steps; fp32 ran it whole
        cap = None if precision == "fp32" or native else args.bf16_steps
        planned = out["fp32"]["steps"] if cap is not None else 0
        fit = learner.fit(patches, epochs=args.epochs, max_steps=cap)
        per_step = fit.seconds / max(fit.steps, 1)
        row = {
            "precision": precision,
            "steps": fit.steps,
            "fovs": fit.fovs,
            "seconds": fit.seconds,
            "seconds_per_step": per_step,
            "first_loss": float(fit.losses[0]),
            "last_loss": float(fit.losses[-10:].mean()),
            "native": precision == "fp32" or native,
        }
        if cap is not None:
            row.update(projected=True, planned_steps=planned, seconds_projected=per_step * planned)
        out[precision] = row
        print(
            f"fit {precision}: {fit.steps} steps in {fit.seconds:.1f} s ({per_step:.2f} s/step)"
            + (f", projected {per_step * planned:.0f} s for {planned} steps" if cap is not None else ""),
            flush=True,
        )
        if precision == "fp32":
            out["adapter"] = learner.adapter
    return out


def adapter_size(base, adapter, workdir: Path) -> dict:
    adapter_file = save_adapter(adapter, workdir / "adapter.safetensors")
    base_file = save_model(base, workdir / "base.safetensors")
    a, b = adapter_file.stat().st_size, base_file.stat().st_size
    parameters = sum(t.numel() for t in adapter.tensors.values())
    print(f"adapter {a / 1024:.1f} KiB ({parameters} parameters) vs base {b / 1024:.1f} KiB", flush=True)
    return {"adapter_bytes": a, "base_bytes": b, "adapter_parameters": parameters, "ratio": a / b}


def stream_setup(name: str):
    """``(base, data, options, settings)`` of the loop the streaming part runs: ``cx loop --data NAME``'s."""
    if name == "synthetic":
        from connectomix.learn.synthetic_loop import synthetic_loop_data, synthetic_settings

        base, data, options = synthetic_loop_data(precision="fp32")
        return base, data, options, synthetic_settings()
    base, data = fib25_data()
    return base, data, InferenceOptions(precision="fp32"), LoopSettings()


def streaming_latency(args, workdir: Path) -> dict:
    from connectomix.flag import flag_volume
    from connectomix.proofread.edits import EditLog
    from connectomix.proofread.queue import TaskQueue
    from connectomix.proofread.simulate import ProofreaderModel, simulate
    from connectomix.volume import open_volume

    base, data, options, loop = stream_setup(args.stream_data)
    regions = data.regions  # A: queue, edit log, patches; B: the gate
    segmenter = RegionSegmenter(data, options, loop.context_zyx(base.config.fov_zyx))
    raw_a = np.ascontiguousarray(data.raw[regions.a.to_slices()])
    seg_a, prob_a = segmenter.segment(base, regions.a)
    seg_seconds = segmenter.seconds
    res_xyz = tuple(float(v) for v in data.resolution_nm_zyx[::-1])
    tasks = flag_volume(  # flagged as cx loop flags region A
        seg_a,
        prob_a,
        resolution_nm_xyz=res_xyz,
        top_fraction=loop.top_fraction,
        chunk_zyx=(loop.flag_chunk,) * 3,
        nms_radius_voxels=loop.flag_nms_radius,
    )[: args.tasks]
    db = f"sqlite:///{workdir / 'stream.db'}"
    queue = TaskQueue(db)  # wall clock: latencies are real seconds
    for rank, task in enumerate(tasks):
        queue.enqueue(task, priority=float(len(tasks) - rank))
    url = f"zarr://{workdir / 'seg_a.zarr'}"
    volume = open_volume(url, "w", shape=raw_a.shape, dtype=np.uint64, resolution=data.resolution_nm_zyx)
    volume.write(volume.bounds, seg_a.astype(np.uint64))
    edit_log = EditLog.create(db, workdir / "ws", url, name="stream-a")
    registry = WeightsRegistry(db, workdir / "ws", user="bench")
    base_entry = registry.add_base(base, name=data.name)
    gt_a = np.ascontiguousarray(data.gt[regions.a.to_slices()])

    def vi_on_validation(model) -> float:
        return segmenter.score(model, regions.b)["vi"]

    learner = ContinualLearner(  # the loop's learner (replay: the default share of earlier rounds' patches)
        base,
        default_lora_config(base, last=loop.lora_last, rank=loop.lora_rank),
        lr=loop.lr,
        max_fovs_per_example=loop.max_fovs_per_example,
        precision="fp32",
        seed=loop.seed,
    )
    epochs = args.stream_epochs or loop.epochs
    streaming = StreamingLearner(
        queue, edit_log, raw_a, learner, registry, base_entry, vi_on_validation,
        region={"data": data.name, "region": "B", **regions.to_dict()["B"]}, min_tasks=args.min_tasks,
        poll_seconds=0.5, epochs=epochs,
    )  # fmt: skip
    model = ProofreaderModel(seconds_per_task=0.0, jitter=0.0)
    with streaming:
        for _ in range(args.rounds):  # proofreaders finish a batch of tasks, then go on while it learns
            simulate(queue, edit_log, gt_a, users=4, model=model, max_tasks=args.min_tasks, seed=0)
            target, deadline = len(streaming.report.rounds) + 1, time.monotonic() + args.round_timeout
            while len(streaming.report.rounds) < target and not streaming.report.errors:
                if time.monotonic() > deadline:  # e.g. a batch of tasks that gave no patch
                    print(f"no round within {args.round_timeout} s", flush=True)
                    break
                time.sleep(0.5)
    report = streaming.report
    latencies = list(report.latencies_s.values())
    out = {
        "data": data.name,
        "regions": regions.to_dict(),
        "context_voxels_zyx": list(segmenter.context_zyx),
        "region_a_segment_seconds": seg_seconds,
        "tasks": len(tasks),
        "min_tasks": args.min_tasks,
        "epochs": epochs,
        "lr": loop.lr,
        "validation": "VI on the loop's region B",
        "rounds": [
            {
                "tasks": len(r.tasks),
                "patches": r.patches,
                "fit_seconds": r.fit["seconds"],
                "round_seconds": r.finished - r.started,
                "promoted": r.promoted,
                "vi_candidate": r.scores["candidate"],
                "vi_served": r.scores["served"],
            }
            for r in report.rounds
        ],
        "latency_s": {
            "median": statistics.median(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
            "n": len(latencies),
        },
        "pending_tasks": len(report.pending),
        "errors": report.errors,
    }
    for r in out["rounds"]:
        print(
            f"stream round: {r['tasks']} tasks, fit {r['fit_seconds']:.0f} s, "
            f"round {r['round_seconds']:.0f} s, VI {r['vi_candidate']:.3f} vs {r['vi_served']:.3f} → "
            f"{'promoted' if r['promoted'] else 'rejected'}",
            flush=True,
        )
    edit_log.close()
    queue.dispose()
    registry.dispose()
    return out


def curve(loop_json: Path) -> dict | None:
    if not loop_json.is_file():
        print(f"no loop report at {loop_json}: run cx loop --data fib25-ts2 --json {loop_json}", flush=True)
        return None
    report = json.loads(loop_json.read_text())
    rows = report["curve"]
    xs = [r["corrections"] for r in rows]
    served = [r["vi_c_served"] for r in rows]
    candidate = [r["vi_c_candidate"] for r in rows]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(xs, served, "o-", label="served model (after the gate on B)")
    ax.plot(xs[1:], candidate[1:], "s--", label="latest adapter (candidate)")
    ax.set_xlabel("corrected tasks (region A)")
    ax.set_ylabel("VI on held-out region C (bits)")
    ax.set_title(f"cx loop on {report['data']}")
    ax.legend()
    ax.grid(alpha=0.3)
    png = RESULTS / "learn_curve.png"
    figure.savefig(png)
    return {
        "source": str(loop_json.relative_to(loop_json.parents[2]))
        if len(loop_json.parents) > 2
        else str(loop_json),
        "png": str(png.relative_to(RESULTS.parent.parent)),
        "corrections": xs,
        "vi_c_served": served,
        "vi_c_candidate": candidate,
        "vi_before": report["vi_before"],
        "vi_after": report["vi_after"],
        "vi_drop_fraction": report["vi_drop_fraction"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--bf16-steps", type=int, default=0, help="steps of an emulated-bf16 fit to time (0: skip it there)"
    )
    parser.add_argument(
        "--stream-data", choices=["synthetic", "fib25-ts2"], default="synthetic", help="the loop streamed"
    )
    parser.add_argument("--tasks", type=int, default=80, help="flagged tasks queued for streaming")
    parser.add_argument("--min-tasks", type=int, default=15, help="tasks per streaming round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream-epochs", type=int, default=0, help="epochs per round (0: the loop's)")
    parser.add_argument("--round-timeout", type=float, default=900.0, help="seconds to wait for a round")
    parser.add_argument("--loop-json", type=Path, default=RESULTS / "loop_fib25_context.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["fit", "stream", "curve"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    # parts skipped this time keep their earlier results (each part carries its own date and machine)
    previous = RESULTS / "learn.json"
    out: dict = json.loads(previous.read_text()) if previous.is_file() else {}
    stamp = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine()}
    out.update(stamp)
    out["targets_gpu"] = {"fit_50x3_seconds": 120, "streaming_latency_seconds": 1800}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "fit" not in args.skip:
            base, data = fib25_data()
            fit = fit_time(base, data, args)
            out["adapter_size"] = adapter_size(base, fit.pop("adapter"), workdir)
            out["fit"] = {**fit, **stamp}
        if "stream" not in args.skip:
            out["streaming"] = {**streaming_latency(args, workdir), **stamp}
    if "curve" not in args.skip:
        out["curve"] = curve(args.loop_json)
    _table(out)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learn.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench/learn.py — {out['machine']['cpu']}, {out['machine']['threads']} threads")
    table.add_column("measure")
    table.add_column("this CPU", justify="right")
    table.add_column("GPU target", justify="right")
    fit = out.get("fit")
    if fit:
        for precision in ("fp32", "bf16"):
            row = fit[precision]
            if "skipped" in row:
                table.add_row(
                    f"fit {fit['patches']} patches × {fit['epochs']} epochs, bf16", row["skipped"], "< 120 s"
                )
                continue
            seconds = row.get("seconds_projected", row["seconds"])
            note = " (projected, emulated bf16)" if row.get("projected") else ""
            table.add_row(
                f"fit {fit['patches']} patches × {fit['epochs']} epochs, {precision}",
                f"{seconds:.0f} s{note}",
                "< 120 s",
            )
    stream = out.get("streaming")
    if stream and stream["latency_s"]["median"] is not None:
        table.add_row(
            "edit → promoted adapter (median / max)",
            f"{stream['latency_s']['median']:.0f} / {stream['latency_s']['max']:.0f} s",
            "< 1800 s",
        )
    elif stream:  # no adapter was promoted: say so, with what each round took
        rounds = ", ".join(
            f"{r['round_seconds']:.0f} s ({'promoted' if r['promoted'] else 'rejected'})"
            for r in stream["rounds"]
        )
        table.add_row("edit → promoted adapter", f"none promoted; rounds: {rounds or 'none'}", "< 1800 s")
    size = out.get("adapter_size")
    if size:
        table.add_row(
            "adapter on disk (base model)",
            f"{size['adapter_bytes'] / 1024:.0f} KiB ({size['base_bytes'] / 1024:.0f} KiB)",
            "",
        )
    if out.get("curve"):
        c = out["curve"]
        table.add_row("VI on C before → after", f"{c['vi_before']:.3f} → {c['vi_after']:.3f}", "−15 %")
    Console().print(table)


if __name__ == "__main__":
    raise SystemExit(main())
