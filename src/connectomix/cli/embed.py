"""``cx embed``: morphology embeddings (SegCLR-compatible): convert between formats, train, run."""

from __future__ import annotations

from typing import Annotated

import typer

from connectomix.cli.embed_model import run_command, train_command

embed_app = typer.Typer(help="Morphology embeddings (SegCLR-compatible): convert, train, run.")
embed_app.command("train")(train_command)
embed_app.command("run")(run_command)


# -- cx embed convert -------------------------------------------------------------------------------------
@embed_app.command("convert")
def convert_command(
    source: Annotated[
        str,
        typer.Argument(
            help="csvzip://DIR?num_shards=N&bytewidth=8|64[&unit=nm|&resolution=X,Y,Z] or parquet://FILE"
        ),
    ],
    destination: Annotated[
        str, typer.Argument(help="Same URL forms; a csvzip:// destination states its sharding.")
    ],
    unit: Annotated[
        str | None,
        typer.Option(help="Coordinate unit of a CSV-ZIP source: 'nm' or 'voxel' (with --resolution)."),
    ] = None,
    resolution: Annotated[
        str | None, typer.Option(help="Voxel size X,Y,Z in nm of a CSV-ZIP source (implies --unit voxel).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing destination.")] = False,
) -> None:
    """Convert embeddings between SegCLR CSV-ZIP and Parquet (either direction), streaming, with progress."""
    from connectomix.embed.convert import convert, parse_resolution
    from connectomix.embed.records import Coordinates
    from connectomix.errors import InputError

    coordinates = None
    if unit is not None or resolution is not None:
        if unit not in (None, "nm", "voxel"):
            raise InputError(f"--unit must be 'nm' or 'voxel', got {unit!r}")
        if unit == "nm" and resolution is not None:
            raise InputError("--unit nm takes no --resolution (the resolution is the voxel size)")
        if resolution is None:
            coordinates = Coordinates("nm") if unit == "nm" else Coordinates("voxel", None)
        else:
            coordinates = Coordinates("voxel", parse_resolution(resolution, "--resolution"))
    summary = convert(source, destination, coordinates=coordinates, overwrite=overwrite, progress=True)
    print(summary.line())
