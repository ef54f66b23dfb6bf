"""``cx flag``: a segmentation and its probability/uncertainty map → proofreading tasks in the queue."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import parse_box_xyz, parse_triple, write_json

console = Console()


def flag_command(
    seg: Annotated[str, typer.Argument(help="Segmentation volume URL or dataset name (integer ids).")],
    prob: Annotated[
        str,
        typer.Argument(
            help="Probability map URL: uint8 FFN quantisation (0 = never explored) or float in [0, 1]."
        ),
    ],
    queue: Annotated[
        str, typer.Option("--queue", help="Task queue database: a SQLite file path or a SQLAlchemy URL.")
    ],
    uncertainty: Annotated[
        str | None, typer.Option(help="Uncertainty map URL (float log-variance, NaN = never explored).")
    ] = None,
    top_fraction: Annotated[
        float, typer.Option(help="Fraction of voxels that are hot (highest entropy), in (0, 1].")
    ] = 0.01,
    max_per_chunk: Annotated[int, typer.Option(help="At most this many tasks per chunk.")] = 10,
    chunk: Annotated[str, typer.Option(help="Chunk Z,Y,X (voxels) for the cap and the processing.")] = (
        "64,64,64"
    ),
    box: Annotated[str | None, typer.Option(help="Only X0,Y0,Z0:X1,Y1,Z1 (voxels, stop exclusive).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write tasks and counts as JSON.")] = None,
    backpressure_limit: Annotated[
        int | None,
        typer.Option(help="Queue depth above which the top fraction shrinks (fewer tasks while it is full)."),
    ] = None,
) -> None:
    """Flag uncertain places (possible merges, splits, unassigned regions) and enqueue them as tasks."""
    from connectomix.errors import InputError
    from connectomix.flag import flag_volume
    from connectomix.volume import open_volume

    if not 0 < top_fraction <= 1:
        raise InputError(f"--top-fraction must be in (0, 1], got {top_fraction!r}")
    if max_per_chunk < 1:
        raise InputError(f"--max-per-chunk must be at least 1, got {max_per_chunk!r}")
    if backpressure_limit is not None and backpressure_limit < 1:
        raise InputError(f"--backpressure-limit must be at least 1 task, got {backpressure_limit!r}")
    chunk_zyx = parse_triple(chunk, "--chunk")
    region = parse_box_xyz(box) if box else None
    seg_volume = open_volume(seg)
    prob_volume = open_volume(prob)
    unc_volume = open_volume(uncertainty) if uncertainty else None
    for name, volume in (("PROB", prob_volume), ("--uncertainty", unc_volume)):
        if volume is not None and volume.bounds != seg_volume.bounds:
            raise InputError(
                f"{name} covers {volume.bounds} but SEG covers {seg_volume.bounds} (z, y, x voxels); "
                "expected the same grid"
            )
    from connectomix.proofread.queue import TaskQueue, backpressure_fraction

    task_queue = TaskQueue(queue)
    try:
        depth_before = task_queue.depth()
        fraction = top_fraction
        if backpressure_limit is not None:
            fraction = backpressure_fraction(
                depth_before,
                base_fraction=top_fraction,
                limit=backpressure_limit,
                min_fraction=min(1e-4, top_fraction),
            )
        tasks = flag_volume(
            seg_volume,
            prob_volume,
            uncertainty=unc_volume,
            resolution_nm_xyz=seg_volume.resolution_xyz,
            top_fraction=fraction,
            chunk_zyx=chunk_zyx,
            max_tasks_per_chunk=max_per_chunk,
            box=region,
            progress=True,
        )
        found = Counter(t.kind for t in tasks)
        new = {kind: task_queue.enqueue_many([t for t in tasks if t.kind == kind]) for kind in sorted(found)}
        depth_after = task_queue.depth()
    finally:
        task_queue.dispose()

    title = f"cx flag {seg}: top fraction {fraction:.4g}, queue depth {depth_before} → {depth_after}"
    table = Table(title=title)
    table.add_column("kind")
    table.add_column("tasks", justify="right")
    table.add_column("new", justify="right")
    table.add_column("already queued", justify="right")
    for kind in ("merge", "split", "unassigned"):
        n_found, n_new = found.get(kind, 0), new.get(kind, 0)
        table.add_row(kind, str(n_found), str(n_new), str(n_found - n_new))
    n_new = sum(new.values())
    table.add_row("all", str(len(tasks)), str(n_new), str(len(tasks) - n_new))
    console.print(table)
    if tasks:
        console.print(f"entropy threshold {tasks[0].evidence.get('threshold', float('nan')):.4g} bits")
    if json_out is not None:
        write_json(
            json_out,
            {
                "seg": seg,
                "prob": prob,
                "uncertainty": uncertainty,
                "queue": queue,
                "top_fraction": top_fraction,
                "top_fraction_in_force": fraction,
                "queue_depth_before": depth_before,
                "queue_depth_after": depth_after,
                "counts": {
                    kind: {"tasks": found.get(kind, 0), "new": new.get(kind, 0)}
                    for kind in ("merge", "split", "unassigned")
                },
                "tasks": [t.to_dict() for t in tasks],
            },
        )
