"""``cx embed``: morphology embeddings (SegCLR-compatible): convert between formats, train, run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from connectomix.cli.embed_model import run_command, train_command

embed_app = typer.Typer(help="Morphology embeddings (SegCLR-compatible): convert, train, run, flag merges.")
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


# -- cx embed flag ----------------------------------------------------------------------------------------
@embed_app.command("flag")
def flag_command(
    embeddings: Annotated[
        str,
        typer.Argument(
            help="Embedding store: parquet://FILE or csvzip://DIR?num_shards=N&bytewidth=8|64[&unit=…]"
        ),
    ],
    queue: Annotated[
        str, typer.Option("--queue", help="Task queue database: a SQLite file path or a SQLAlchemy URL.")
    ],
    top_k: Annotated[
        int, typer.Option(help="Enqueue at most this many segments, the highest R² first.")
    ] = 100,
    threshold: Annotated[
        float, typer.Option(help="Only segments whose 2-means R² is at least this (in [0, 1]).")
    ] = 0.0,
    min_nodes: Annotated[int, typer.Option(help="Score only segments with this many nodes or more.")] = 6,
    resolution: Annotated[
        str | None,
        typer.Option(help="Voxel size X,Y,Z in nm of the task points [the store's; required for nm stores]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the 2-means restarts.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the tasks and counts as JSON.")
    ] = None,
) -> None:
    """Flag likely merges from stored embeddings: segments whose node embeddings split into two clusters
    (2-means R²) become split tasks in the proofreading queue."""
    from connectomix.cli.parsing import write_json
    from connectomix.embed.convert import open_store, parse_embedding_url, parse_resolution
    from connectomix.embed.merge_flags import flag_merges
    from connectomix.errors import InputError
    from connectomix.proofread.queue import TaskQueue

    source = parse_embedding_url(embeddings)
    res = parse_resolution(resolution, "--resolution") if resolution is not None else None
    _, coordinates = open_store(source, None, False)
    if coordinates is None:
        raise InputError(
            f"{embeddings}: the store does not record its coordinate unit; add &unit=nm or "
            "&resolution=X,Y,Z to the csvzip:// URL"
        )
    flags = flag_merges(
        lambda: open_store(source, coordinates, True)[0],
        coordinates,
        resolution_nm_xyz=res,
        threshold=threshold,
        top_k=top_k,
        min_nodes=min_nodes,
        seed=seed,
    )
    task_queue = TaskQueue(queue)
    try:
        depth_before = task_queue.depth()
        new = task_queue.enqueue_many(flags.tasks)
        depth_after = task_queue.depth()
    finally:
        task_queue.dispose()
    best = f", R² {flags.tasks[0].score:.3f} … {flags.tasks[-1].score:.3f}" if flags.tasks else ""
    print(
        f"scored {flags.segments_scored:,} of {flags.segments_read:,} segments ({flags.rows:,} rows); "
        f"{len(flags.tasks)} split tasks{best}; {new} new in the queue (depth {depth_before} → {depth_after})"
    )
    if json_out is not None:
        write_json(
            json_out,
            {
                "embeddings": embeddings,
                "queue": queue,
                "threshold": threshold,
                "top_k": top_k,
                "min_nodes": min_nodes,
                "segments_read": flags.segments_read,
                "segments_scored": flags.segments_scored,
                "rows": flags.rows,
                "new_in_queue": new,
                "queue_depth_before": depth_before,
                "queue_depth_after": depth_after,
                "tasks": [t.to_dict() for t in flags.tasks],
            },
        )
