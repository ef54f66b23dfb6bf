"""``cx model``: import Google FFN checkpoints, show what a model file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import parse_triple

model_app = typer.Typer(
    help="FFN models and the weights registry: import TF checkpoints, inspect, versions, lineage, rollback."
)
console = Console()


@model_app.command("import-tf")
def import_tf(
    checkpoint: Annotated[str, typer.Argument(help="TF checkpoint prefix, .index file or its folder.")],
    out: Annotated[Path, typer.Option(help="safetensors file to write.")],
    arch: Annotated[str, typer.Option(help="Architecture (Google FFN: convstack).")] = "convstack",
    depth: Annotated[int, typer.Option(help="Number of conv modules (FIB-25: 12).")] = 12,
    width: Annotated[int, typer.Option(help="Features per conv (FIB-25: 32).")] = 32,
    fov: Annotated[str, typer.Option(help="Field of view Z,Y,X in voxels.")] = "33,33,33",
    deltas: Annotated[str, typer.Option(help="Movement step Z,Y,X in voxels.")] = "8,8,8",
) -> None:
    """Convert a Google FFN TensorFlow checkpoint into a connectomix safetensors model (no TensorFlow)."""
    from connectomix.segment.models import FFNConfig
    from connectomix.segment.tf_import import import_tf_to_safetensors

    config = FFNConfig(
        arch=arch,  # type: ignore[arg-type]
        depth=depth,
        width=width,
        fov_zyx=parse_triple(fov, "--fov"),
        deltas_zyx=parse_triple(deltas, "--deltas", minimum=0),
    )
    summary = import_tf_to_safetensors(checkpoint, config, out)
    console.print(
        f"imported {summary.n_tensors} tensors, {summary.n_parameters:,} parameters "
        f"(global step {summary.global_step}) → {summary.out_path}"
    )
    if summary.ignored:
        console.print(f"ignored (not model weights): {', '.join(summary.ignored)}")


@model_app.command("info")
def info(
    model: Annotated[Path, typer.Argument(help="A safetensors model written by cx.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a model file's architecture, field of view, movement step and parameter count."""
    from dataclasses import asdict

    from connectomix.segment.models import count_parameters, load_model

    loaded = load_model(model)
    payload = {
        **asdict(loaded.config),
        "parameters": count_parameters(loaded),
        "uncertainty": loaded.has_uncertainty,
    }
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    table = Table(title=str(model), show_header=False)
    for key, value in payload.items():
        table.add_row(key, str(value))
    console.print(table)
