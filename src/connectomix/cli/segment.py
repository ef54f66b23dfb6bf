"""``cx segment``: run flood-filling segmentation block-wise on any volume, and train FFN models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import (
    DbOption,
    WorkspaceOption,
    parse_box_xyz,
    parse_triple,
    resolve_workspace_and_db,
    write_json,
)

PRECISION_HELP = "fp32, bf16 (autocast, channels-last) or auto (bf16 where the hardware has it natively)."

segment_app = typer.Typer(help="Segmentation: flood-filling networks (FFN) block-wise, training, baseline.")
console = Console()


@segment_app.command("train")
def train_command(
    raw: Annotated[str, typer.Argument(help="EM volume URL or dataset (uint8).")],
    gt: Annotated[str, typer.Argument(help="Ground-truth label volume URL or dataset.")],
    out: Annotated[Path, typer.Option(help="safetensors model file to write at the end.")],
    init: Annotated[Path | None, typer.Option(help="Start from this model (fine-tuning).")] = None,
    arch: Annotated[str, typer.Option(help="New model: convstack or inception.")] = "convstack",
    depth: Annotated[int, typer.Option(help="New model: number of modules.")] = 12,
    width: Annotated[int, typer.Option(help="New model: features per conv.")] = 32,
    fov: Annotated[str, typer.Option(help="New model: field of view Z,Y,X.")] = "33,33,33",
    deltas: Annotated[str, typer.Option(help="New model: movement step Z,Y,X.")] = "8,8,8",
    steps: Annotated[int, typer.Option(help="Optimiser steps in all (a resumed run continues).")] = 1000,
    batch_size: Annotated[int, typer.Option(help="FOVs per optimiser step.")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="sgd (Google's) or adam.")] = "sgd",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
    train_last: Annotated[int | None, typer.Option(help="Train only the last K module groups.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Resumable checkpoints here.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    box: Annotated[str | None, typer.Option(help="Train on X0,Y0,Z0:X1,Y1,Z1 only (voxels).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, augmentation, init).")] = 0,
) -> None:
    """Train a new FFN, or fine-tune one (--init), on a raw volume and its ground truth; resumable."""
    import torch

    from connectomix.errors import InputError
    from connectomix.segment.models import FFNConfig, build_model, load_model, save_model
    from connectomix.segment.precision import PRECISIONS
    from connectomix.segment.training import train
    from connectomix.volume import open_volume

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be fp32, bf16 or auto, got {precision!r}")
    if optimizer not in ("sgd", "adam"):
        raise InputError(f"--optimizer must be sgd or adam, got {optimizer!r}")
    raw_volume, gt_volume = open_volume(raw), open_volume(gt)
    if raw_volume.shape != gt_volume.shape:
        raise InputError(f"RAW shape {raw_volume.shape} does not match GT shape {gt_volume.shape}")
    region = parse_box_xyz(box) if box else None
    raw_array, labels = raw_volume.read(region), gt_volume.read(region)
    if init is not None:
        model = load_model(init)
    else:
        torch.manual_seed(seed)
        config = FFNConfig(
            arch=arch,  # type: ignore[arg-type]
            depth=depth,
            width=width,
            fov_zyx=parse_triple(fov, "--fov"),
            deltas_zyx=parse_triple(deltas, "--deltas", minimum=0),
        )
        model = build_model(config)
    result = train(
        model,
        raw_array,
        labels,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,  # type: ignore[arg-type]
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        precision=precision,  # type: ignore[arg-type]
        train_last=train_last,
    )
    save_model(result.model, out, metadata={"trained_steps": str(result.step), "trained_on": raw})
    losses = result.losses
    tail = float(losses[-min(len(losses), 50) :].mean()) if len(losses) else float("nan")
    head = float(losses[: min(len(losses), 50)].mean()) if len(losses) else float("nan")
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    console.print(
        f"trained {result.step} steps ({result.fovs} FOVs) in {result.seconds:.1f} s{resumed}; "
        f"loss {head:.3f} (first 50) → {tail:.3f} (last 50); model → {out}"
    )


@segment_app.command("train-boundary")
def train_boundary_command(
    volumes: Annotated[
        list[str],
        typer.Argument(
            help="RAW GT pairs: an EM volume (uint8) then its ground truth; repeat for more volumes."
        ),
    ],
    out: Annotated[Path, typer.Option(help="safetensors boundary model file to write.")],
    box: Annotated[
        list[str] | None,
        typer.Option(
            help="X0,Y0,Z0:X1,Y1,Z1 (voxels) per RAW GT pair, in order, or 'all'; none = whole volumes."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 2,
    patch: Annotated[str, typer.Option(help="Training patch Z,Y,X (voxels, multiples of 4).")] = "48,48,48",
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine-decayed to a tenth).")] = 2e-3,
    features: Annotated[int, typer.Option(help="Channels at full resolution.")] = 12,
    levels: Annotated[int, typer.Option(help="Down-sampling steps.")] = 2,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed (initial weights, sampling, augmentation).")] = 0,
) -> None:
    """Train a 3-D U-Net boundary predictor for --model baseline --boundary-model on RAW GT pairs."""
    from connectomix.errors import InputError
    from connectomix.segment.unet import BoundaryUNetConfig, save_boundary_model, train_boundary_unet
    from connectomix.volume import open_volume

    if len(volumes) % 2:
        raise InputError(f"expected RAW GT pairs, got {len(volumes)} volume argument(s)")
    pairs = [(volumes[k], volumes[k + 1]) for k in range(0, len(volumes), 2)]
    boxes = list(box or [])
    if boxes and len(boxes) != len(pairs):
        raise InputError(f"give one --box per RAW GT pair ({len(pairs)}) or none, got {len(boxes)}")
    from connectomix.segment.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be fp32, bf16 or auto, got {precision!r}")
    data = []
    for k, (raw, gt) in enumerate(pairs):
        raw_volume, gt_volume = open_volume(raw), open_volume(gt)
        if raw_volume.shape != gt_volume.shape:
            raise InputError(
                f"RAW {raw} shape {raw_volume.shape} does not match GT {gt} shape {gt_volume.shape}"
            )
        text = boxes[k] if boxes else "all"
        region = None if text == "all" else parse_box_xyz(text)
        data.append((raw_volume.read(region), gt_volume.read(region)))
    config = BoundaryUNetConfig(features=features, levels=levels)
    model, losses = train_boundary_unet(
        data,
        config=config,
        steps=steps,
        batch_size=batch_size,
        patch_zyx=parse_triple(patch, "--patch"),
        lr=lr,
        seed=seed,
        precision=precision,  # type: ignore[arg-type]
        progress=True,
    )
    save_boundary_model(
        model, out, metadata={"trained_steps": str(steps), "trained_on": " ".join(volumes), "seed": str(seed)}
    )
    window = min(50, len(losses))
    head = float(losses[:window].mean()) if window else float("nan")
    tail = float(losses[-window:].mean()) if window else float("nan")
    console.print(
        f"trained {steps} steps on {len(data)} volume(s); loss {head:.3f} (first {window}) → "
        f"{tail:.3f} (last {window}); boundary model → {out}"
    )


@segment_app.command("run")
def run_command(
    raw: Annotated[str, typer.Argument(help="EM volume URL or dataset (uint8), e.g. fib25-ts2/raw.")],
    model: Annotated[
        str,
        typer.Option(
            help="FFN .safetensors model, registry:NAME (served version), registry:NAME:vN, or 'baseline'."
        ),
    ],
    out: Annotated[str, typer.Option(help="Output zarr://PATH (uint64 ids); maps are written beside it.")],
    box: Annotated[str | None, typer.Option(help="Only X0,Y0,Z0:X1,Y1,Z1 (voxels, stop exclusive).")] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[
        int | None, typer.Option(help="FOVs per forward pass, across subvolumes [1 on CPU, 8 on CUDA].")
    ] = None,
    block: Annotated[str, typer.Option(help="Core block Z,Y,X in voxels.")] = "128,128,128",
    overlap: Annotated[str | None, typer.Option(help="Context Z,Y,X per side [FOV//2+delta].")] = None,
    batch_blocks: Annotated[int, typer.Option(help="Subvolumes advanced together.")] = 4,
    seed_policy: Annotated[str, typer.Option(help="peaks, grid, reverse:peaks or reverse:grid.")] = "peaks",
    min_size: Annotated[int, typer.Option(help="Reject objects smaller than this (voxels).")] = 1000,
    resume: Annotated[bool, typer.Option(help="Skip subvolumes a previous run finished.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the run report here.")] = None,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the network (faster per step; about 30 s to compile, cached on disk).",
        ),
    ] = False,
    consensus: Annotated[
        bool, typer.Option(help="Run forward and reverse seed orders and keep their split consensus.")
    ] = False,
    boundary_model: Annotated[
        Path | None,
        typer.Option(help="With --model baseline: boundary U-Net (.safetensors from train-boundary)."),
    ] = None,
    executor: Annotated[str, typer.Option(help="Where blocks run: inprocess or dask.")] = "inprocess",
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler tcp://HOST:PORT [a local cluster on 127.0.0.1].")
    ] = None,
    workers: Annotated[int, typer.Option(help="Workers of a local Dask cluster.")] = 2,
    retries: Annotated[int, typer.Option(help="With an executor: resend a failing batch this often.")] = 1,
    record: Annotated[
        bool, typer.Option("--record", help="Store the run's voxels/s in the workspace database (exporter).")
    ] = False,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Segment a volume of any size block-wise with an FFN (or the baseline), with global id reconciliation.

    Resumable: an interrupted run started again skips the subvolumes it finished.
    """
    import torch

    from connectomix.errors import InputError
    from connectomix.segment.blockwise import (
        BaselineSegmenter,
        FFNSegmenter,
        baseline_segmenter,
        ffn_segmenter,
        segment_volume,
    )
    from connectomix.segment.inference import InferenceOptions
    from connectomix.segment.models import load_model
    from connectomix.volume import open_volume

    raw_volume = open_volume(raw)
    region = parse_box_xyz(box) if box else None
    if model == "baseline" and (compile_model or consensus):
        raise InputError("--compile and --consensus apply to FFN models, not to --model baseline")
    if boundary_model is not None and model != "baseline":
        raise InputError("--boundary-model needs --model baseline (an FFN predicts no boundary map)")
    segmenter: BaselineSegmenter | FFNSegmenter
    if model == "baseline":
        segmenter = baseline_segmenter(boundary_model=boundary_model, precision=precision)
        default_overlap = (16, 16, 16)
    else:
        options = InferenceOptions(
            precision=precision,  # type: ignore[arg-type]
            device=device,
            batch_size=batch_size,
            seed_policy=seed_policy,
            min_segment_size=min_size,
            compile=compile_model,
            consensus=consensus,
        )
        if model.startswith("registry:"):
            from connectomix.cli.learn import load_registry_model

            ffn = load_registry_model(model, workspace, db)
        else:
            ffn = load_model(model, device="cpu")
        segmenter = ffn_segmenter(ffn, options)
        default_overlap = segmenter.recommended_overlap_zyx or (24, 24, 24)
    overlap_zyx = parse_triple(overlap, "--overlap", minimum=0) if overlap else default_overlap
    from connectomix.run.executors import open_executor

    with open_executor(executor, scheduler=scheduler, workers=workers) as (pool, pool_info):
        result = segment_volume(
            raw_volume,
            out,
            segmenter,
            block_shape_zyx=parse_triple(block, "--block"),
            overlap_zyx=overlap_zyx,
            box=region,
            batch_blocks=batch_blocks,
            resume=resume,
            overwrite=overwrite,
            executor=None if pool_info.kind == "inprocess" else pool,
            retries=retries,
        )
    counters = result.counters
    region_box = region or raw_volume.bounds
    voxels = region_box.size
    if record:
        from connectomix.observe.store import record_throughput

        record_throughput(resolve_workspace_and_db(workspace, db)[1], "segment", voxels, result.seconds)
    steps = counters.get("steps", 0.0)
    report = {
        "raw": raw,
        "model": model,
        "boundary_model": None if boundary_model is None else str(boundary_model),
        "out": result.out_url,
        "probability": result.probability_url,
        "uncertainty": result.uncertainty_url,
        "box_xyz": [list(region_box.start_xyz), list(region_box.stop_xyz)],
        "precision": precision,
        "device": device,
        "compile": compile_model,
        "consensus": consensus,
        "threads": torch.get_num_threads(),
        "executor": pool_info.kind,
        "workers": pool_info.workers,
        "blocks": result.n_blocks,
        "blocks_resumed": result.n_blocks_skipped,
        "objects_before_reconciliation": result.n_objects_before,
        "objects": result.n_objects_after,
        "links": result.n_links,
        "steps": steps,
        "seconds": result.seconds,
        "voxels_per_second": voxels / result.seconds if result.seconds > 0 else None,
        "counters": counters,
        "timings": result.timings,
    }
    table = Table(title=f"cx segment run: {raw} → {result.out_url}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("blocks (resumed)", f"{result.n_blocks} ({result.n_blocks_skipped})")
    table.add_row("objects (before reconciliation)", f"{result.n_objects_after} ({result.n_objects_before})")
    table.add_row("links across block borders", str(result.n_links))
    if steps:
        table.add_row("FFN steps", f"{steps:.0f} ({steps / max(result.seconds, 1e-9):.1f}/s)")
    table.add_row("voxels/s", f"{voxels / max(result.seconds, 1e-9):,.0f}")
    table.add_row("seconds", f"{result.seconds:.1f}")
    console.print(table)
    if json_out is not None:
        write_json(json_out, report)
