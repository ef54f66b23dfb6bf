"""``cx embed train`` and ``cx embed run``: train a SegCLR encoder, embed every segment of a volume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import parse_box_xyz, parse_triple, write_json

console = Console()
PRECISION_HELP = "fp32, bf16 (autocast) or auto (bf16 where the hardware has it natively)."


def _encoder_config(
    preset_name: str,
    input_size: str | None,
    channels: str | None,
    width: float | None,
    downsample: str | None,
    inputs: str | None,
):
    from dataclasses import replace

    from connectomix.embed.model import preset
    from connectomix.errors import InputError

    config = preset(preset_name)
    if input_size:
        config = replace(config, input_size_zyx=parse_triple(input_size, "--input-size"))
    if downsample:
        config = replace(config, downsample_zyx=parse_triple(downsample, "--downsample"))
    if channels:
        try:
            widths = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise InputError(f"--channels must be 4 comma-separated widths, got {channels!r}") from None
        config = replace(config, channels=widths)  # type: ignore[arg-type]  # checked by EncoderConfig
    if width is not None:
        config = config.with_width(width)
    if inputs:
        config = replace(config, inputs=tuple(s.strip() for s in inputs.split(",")))
    return config


def _training_volume(name: str, raw: str, gt: str, box: str | None, min_voxels: int):
    from connectomix.embed.train import TrainingVolume
    from connectomix.volume import open_volume

    region = parse_box_xyz(box) if box else None
    return TrainingVolume.prepare(name, open_volume(raw), open_volume(gt), box=region, min_voxels=min_voxels)


def train_command(
    raw: Annotated[str, typer.Argument(help="EM volume URL or dataset (uint8), e.g. fib25-ts2/raw.")],
    gt: Annotated[str, typer.Argument(help="Label volume URL or dataset (segment ids), e.g. fib25-ts2/gt.")],
    out: Annotated[Path, typer.Option(help="safetensors encoder file to write at the end.")],
    box: Annotated[
        str | None, typer.Option(help="Train on X0,Y0,Z0:X1,Y1,Z1 of RAW/GT only (voxels).")
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option(help="Another training volume: 'RAW GT' or 'RAW GT X0,Y0,Z0:X1,Y1,Z1' (repeatable)."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="lite (33³ at 2× downsampling, 16…128 ch) or full (129³).")
    ] = "lite",
    input_size: Annotated[str | None, typer.Option(help="Network input Z,Y,X voxels.")] = None,
    downsample: Annotated[str | None, typer.Option(help="Cutout mean-pooling factor Z,Y,X.")] = None,
    channels: Annotated[
        str | None, typer.Option(help="Widths of the four stages, e.g. 16,32,64,128.")
    ] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier on the channels.")] = None,
    inputs: Annotated[
        str | None, typer.Option(help="Input channels: em, mask, masked_em (comma list).")
    ] = None,
    init: Annotated[Path | None, typer.Option(help="Start from this encoder (fine-tuning).")] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps in all (a resumed run continues).")] = 1000,
    batch_pairs: Annotated[int, typer.Option(help="Positive pairs per step (2× cutouts).")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    temperature: Annotated[float, typer.Option(help="NT-Xent temperature.")] = 0.1,
    max_distance_nm: Annotated[
        float, typer.Option(help="Max path distance of a positive pair, nm.")
    ] = 1000.0,
    min_voxels: Annotated[int, typer.Option(help="Skip segments smaller than this (voxels).")] = 1000,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Switch every augmentation off.")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Resumable checkpoints [OUT.ckpt/].")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and of every random choice.")] = 0,
) -> None:
    """Train a SegCLR encoder contrastively (NT-Xent) on skeleton-node pairs (resumable)."""
    from connectomix.embed.augment import NO_AUGMENTATION, Augmentation
    from connectomix.embed.model import load_encoder, save_encoder
    from connectomix.embed.train import train_encoder
    from connectomix.errors import InputError
    from connectomix.segment.precision import check_precision

    check_precision(precision)
    volumes = [_training_volume(raw, raw, gt, box, min_voxels)]
    for item in add or []:
        parts = item.split()
        if len(parts) not in (2, 3):
            raise InputError(f"--add must be 'RAW GT' or 'RAW GT X0,Y0,Z0:X1,Y1,Z1', got {item!r}")
        extra_box = parts[2] if len(parts) == 3 else None
        volumes.append(
            _training_volume(f"{parts[0]}#{len(volumes)}", parts[0], parts[1], extra_box, min_voxels)
        )
    model = load_encoder(init) if init is not None else None
    config = (
        None
        if model is not None
        else _encoder_config(preset, input_size, channels, width, downsample, inputs)
    )
    ckpt = checkpoint_dir or out.with_name(out.name + ".ckpt")
    result = train_encoder(
        volumes,
        config,
        model=model,
        steps=steps,
        batch_pairs=batch_pairs,
        lr=lr,
        temperature=temperature,
        max_distance_nm=max_distance_nm,
        augmentation=NO_AUGMENTATION if no_augment else Augmentation(),
        seed=seed,
        checkpoint_dir=ckpt,
        checkpoint_every=checkpoint_every,
        precision=precision,  # type: ignore[arg-type]
    )
    save_encoder(result.model, out, metadata={"steps": str(result.step), "training": json.dumps(result.meta)})
    table = Table(title=f"SegCLR encoder → {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("training volumes", ", ".join(f"{v.name} ({v.graph.n_nodes} nodes)" for v in volumes))
    table.add_row(
        "steps (resumed from)", f"{result.step} ({result.resumed_from if result.resumed_from else '-'})"
    )
    if len(result.losses):
        head = result.losses[: min(20, len(result.losses))].mean()
        tail = result.losses[-min(20, len(result.losses)) :].mean()
        table.add_row("NT-Xent first → last 20 steps", f"{head:.3f} → {tail:.3f}")
    table.add_row("seconds this run", f"{result.seconds:.1f}")
    table.add_row("checkpoints", str(ckpt))
    console.print(table)


def _load_model(model: str, input_size: str | None, downsample: str | None, inputs: str | None):
    from dataclasses import replace

    from connectomix.embed.model import EncoderConfig, load_encoder
    from connectomix.embed.tf_import import read_segclr_checkpoint
    from connectomix.errors import InputError

    path = Path(model)
    if path.suffix == ".safetensors":
        encoder = load_encoder(path)
        changes = {}
        if input_size:
            changes["input_size_zyx"] = parse_triple(input_size, "--input-size")
        if downsample:
            changes["downsample_zyx"] = parse_triple(downsample, "--downsample")
        if changes:  # the weights do not depend on the input size or the pooling
            encoder.config = replace(encoder.config, **changes)  # type: ignore[arg-type]
        if inputs and tuple(s.strip() for s in inputs.split(",")) != encoder.config.inputs:
            raise InputError(
                f"--inputs {inputs} differs from the encoder's {','.join(encoder.config.inputs)}"
            )
        return encoder
    base = EncoderConfig()
    if input_size:
        base = replace(base, input_size_zyx=parse_triple(input_size, "--input-size"))
    if downsample:
        base = replace(base, downsample_zyx=parse_triple(downsample, "--downsample"))
    if inputs:
        base = replace(base, inputs=tuple(s.strip() for s in inputs.split(",")))
    encoder, _ = read_segclr_checkpoint(model, None)
    config = replace(
        encoder.config,
        input_size_zyx=base.input_size_zyx,
        downsample_zyx=base.downsample_zyx,
        inputs=base.inputs if inputs else encoder.config.inputs,
    )
    if config.in_channels != encoder.config.in_channels:
        raise InputError(
            f"--inputs names {config.in_channels} channels, the checkpoint takes {encoder.config.in_channels}"
        )
    encoder.config = config  # the weights do not depend on the input size or the pooling
    return encoder


def run_command(
    seg: Annotated[str, typer.Argument(help="Segmentation volume URL or dataset (segment ids).")],
    raw: Annotated[str, typer.Argument(help="EM volume URL or dataset (uint8), aligned with SEG.")],
    model: Annotated[
        str, typer.Option(help="Encoder: a .safetensors from cx, or a SegCLR TF checkpoint prefix.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder: parts/, embeddings.parquet, csvzip/.")],
    spacing_nm: Annotated[float, typer.Option(help="About one node per this many nm of skeleton.")] = 100.0,
    min_voxels: Annotated[
        int, typer.Option(help="Skip segments smaller than this (voxels per block).")
    ] = 1000,
    block: Annotated[str, typer.Option(help="Block size Z,Y,X (voxels) for skeletonising.")] = "256,256,256",
    margin: Annotated[int, typer.Option(help="Context voxels around each block when skeletonising.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Cutouts per forward pass.")] = 32,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    input_size: Annotated[str | None, typer.Option(help="Override the network input Z,Y,X.")] = None,
    downsample: Annotated[str | None, typer.Option(help="Override the cutout pooling factor Z,Y,X.")] = None,
    inputs: Annotated[str | None, typer.Option(help="Input channel names of a TF checkpoint.")] = None,
    num_shards: Annotated[int, typer.Option(help="CSV-ZIP shards (H01/MICrONS: 10000).")] = 10_000,
    bytewidth: Annotated[
        int, typer.Option(help="CSV-ZIP shard hash bytewidth: 8 (new) or 64 (H01/MICrONS).")
    ] = 8,
    csvzip: Annotated[bool, typer.Option(help="Also write the CSV-ZIP release.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON here.")] = None,
) -> None:
    """Embed every segment: skeletonise, sample nodes, cut cutouts, embed; Parquet + CSV-ZIP; resumable."""
    from connectomix.embed.csvzip import check_layout
    from connectomix.embed.infer import Embedder, embed_volume
    from connectomix.segment.precision import check_precision
    from connectomix.volume import open_volume

    check_precision(precision)
    if csvzip:
        check_layout(num_shards, bytewidth)
    encoder = _load_model(model, input_size, downsample, inputs)
    embedder = Embedder(
        encoder,
        open_volume(raw),
        open_volume(seg),
        batch_size=batch_size,
        precision=check_precision(precision),
    )
    summary = embed_volume(
        embedder,
        out,
        spacing_nm=spacing_nm,
        min_voxels=min_voxels,
        block_zyx=parse_triple(block, "--block"),
        margin=margin,
        num_shards=num_shards,
        bytewidth=bytewidth,
        write_csvzip=csvzip,
    )
    table = Table(title=f"embeddings of {seg} → {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("segments / rows", f"{summary.n_segments} / {summary.n_rows} ({summary.new_rows} new)")
    table.add_row("blocks", str(summary.n_blocks))
    table.add_row("precision", summary.precision)
    rate = summary.stats["cutouts"] / max(summary.stats["embed_s"] + summary.stats["read_s"], 1e-9)
    table.add_row("embeddings / s (cutting + network)", f"{rate:.1f}")
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("parquet", str(summary.parquet))
    table.add_row("csv-zip", str(summary.csvzip) if summary.csvzip else "-")
    console.print(table)
    if json_out is not None:
        payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.__dict__.items()}
        write_json(json_out, payload)
