"""``cx proofread``: the versioned edit log from the command line (init, log, merge, split, undo, redo,
lineage, materialise) and the simulated proofreader (simulate).

The workspace and database come from the settings (``CX_WORKSPACE``, ``CX_DATABASE_URL``, ``cx.toml``), or
``--workspace DIR`` / ``--db URL``; with ``--workspace`` alone the database is ``DIR/connectomix.db`` unless
one is configured. Points are ``X,Y,Z`` voxels; segment ids are decimal integers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import DbOption, WorkspaceOption, resolve_workspace_and_db
from connectomix.errors import InputError

if TYPE_CHECKING:
    from connectomix.proofread.edits import Edit, EditLog

proofread_app = typer.Typer(
    help="Proofreading edits: a versioned log of merges and splits with undo, redo and id lineage."
)
console = Console()

NameOption = Annotated[str, typer.Option("--name", help="Name of the edit log in the workspace.")]
UserOption = Annotated[str, typer.Option("--user", help="Who makes the edit (recorded in the log).")]


def _open(workspace: Path | None, db: str | None, name: str) -> EditLog:
    from connectomix.proofread.edits import EditLog

    directory, url = resolve_workspace_and_db(workspace, db)
    return EditLog.open(url, directory, name)


def _parse_id(text: str, what: str) -> int:
    from connectomix.proofread.versions import check_id

    try:
        return check_id(int(text.strip()), what)
    except ValueError:
        raise InputError(f"{what} must be a positive integer id, got {text!r}") from None


def _parse_point(text: str, what: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} must be 3 comma-separated integers X,Y,Z (voxels), got {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values):
        raise InputError(f"{what} must be 3 integers X,Y,Z ≥ 0 (voxels), got {text!r}")
    return values  # type: ignore[return-value]


def _report(edit: Edit) -> None:
    new = ", ".join(str(i) for i in edit.new_ids) or "-"
    old = ", ".join(str(i) for i in edit.parent_ids) or "-"
    console.print(f"{edit.operation} (edit {edit.id}, version {edit.version}): {old} → {new}")


@proofread_app.command("init")
def init_command(
    segmentation: Annotated[str, typer.Argument(help="Segmentation volume URL or dataset (version 0).")],
    raw: Annotated[str | None, typer.Option("--raw", help="EM volume that splits follow.")] = None,
    boundary: Annotated[
        str | None,
        typer.Option("--boundary", help="Boundary map (high on membranes) for splits; beats --raw."),
    ] = None,
    name: NameOption = "seg",
    chunks: Annotated[str, typer.Option(help="Chunk shape Z,Y,X of the versioned volume.")] = "64,64,64",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Import a segmentation as version 0 of a new edit log."""
    from connectomix.cli.parsing import parse_triple
    from connectomix.proofread.edits import EditLog

    directory, url = resolve_workspace_and_db(workspace, db)
    chunk_shape = parse_triple(chunks, "--chunks")
    with EditLog.create(
        url,
        directory,
        segmentation,
        raw_url=raw,
        boundary_url=boundary,
        name=name,
        chunks_zyx=chunk_shape,
        progress=True,
    ) as log:
        console.print(
            f"edit log {log.name!r}: version 0 of {segmentation}, shape (z,y,x) {log.grid.shape}, "
            f"chunks {log.grid.chunks}; current volume {log.current_url}"
        )


@proofread_app.command("log")
def log_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (ids as strings).")] = False,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """List the edits, oldest first."""
    with _open(workspace, db, name) as log:
        edits = log.edits()
        version = log.version
    if as_json:
        print(json.dumps({"name": name, "version": version, "edits": [e.to_dict() for e in edits]}, indent=2))
        return
    table = Table(title=f"edit log {name!r}: version {version}")
    for column in ("version", "edit", "operation", "user", "replaced", "new ids", "undone"):
        table.add_column(column)
    for edit in edits:
        table.add_row(
            str(edit.version),
            str(edit.id),
            edit.operation,
            edit.user,
            ", ".join(map(str, edit.parent_ids)),
            ", ".join(map(str, edit.new_ids)),
            "yes" if edit.undone else "",
        )
    console.print(table)


@proofread_app.command("merge")
def merge_command(
    a: Annotated[str, typer.Argument(help="First segment id.")],
    b: Annotated[str, typer.Argument(help="Second segment id.")],
    user: UserOption,
    point: Annotated[
        list[str] | None, typer.Option("--point", help="X,Y,Z in A, then X,Y,Z in B (optional, checked).")
    ] = None,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Merge two segments into a new id."""
    points = [_parse_point(p, "--point") for p in point or []]
    with _open(workspace, db, name) as log:
        _report(log.merge(_parse_id(a, "A"), _parse_id(b, "B"), user=user, points_xyz=points))


@proofread_app.command("split")
def split_command(
    segment: Annotated[str, typer.Argument(help="Segment id to split.")],
    source: Annotated[list[str], typer.Option("--source", help="X,Y,Z in the first part (repeatable).")],
    sink: Annotated[list[str], typer.Option("--sink", help="X,Y,Z in the second part (repeatable).")],
    user: UserOption,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Split a segment in two new ids between source and sink points (seeded watershed)."""
    sources = [_parse_point(p, "--source") for p in source]
    sinks = [_parse_point(p, "--sink") for p in sink]
    with _open(workspace, db, name) as log:
        _report(log.split(_parse_id(segment, "ID"), sources, sinks, user=user))


@proofread_app.command("undo")
def undo_command(
    user: UserOption, name: NameOption = "seg", workspace: WorkspaceOption = None, db: DbOption = None
) -> None:
    """Revert the latest merge or split still in effect (logged as its own entry)."""
    with _open(workspace, db, name) as log:
        _report(log.undo(user=user))


@proofread_app.command("redo")
def redo_command(
    user: UserOption, name: NameOption = "seg", workspace: WorkspaceOption = None, db: DbOption = None
) -> None:
    """Re-apply the most recently undone edit (same ids as before)."""
    with _open(workspace, db, name) as log:
        _report(log.redo(user=user))


@proofread_app.command("lineage")
def lineage_command(
    segment: Annotated[str, typer.Argument(help="Segment id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (ids as strings).")] = False,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Where a segment id came from, what replaced it, and whether it is current."""
    with _open(workspace, db, name) as log:
        lineage = log.lineage(_parse_id(segment, "ID"))
    if as_json:
        print(json.dumps(lineage.to_dict(), indent=2))
        return
    console.print(
        f"{lineage.segment_id}: {'current' if lineage.current else 'not current'}; "
        f"ancestors {list(lineage.ancestors)}; descendants {list(lineage.descendants)}"
    )


@proofread_app.command("materialise")
def materialise_command(
    version: Annotated[int, typer.Argument(help="Version to write (0 = the imported segmentation).")],
    out: Annotated[str, typer.Option("--out", help="zarr://PATH to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Write any version of the segmentation as a zarr volume."""
    with _open(workspace, db, name) as log:
        url = log.materialise(version, out, overwrite=overwrite)
    console.print(f"version {version} → {url}")


@proofread_app.command("simulate")
def simulate_command(
    gt: Annotated[str, typer.Option("--gt", help="Ground-truth volume URL or dataset (the log's grid).")],
    users: Annotated[int, typer.Option("--users", help="Simulated proofreaders working in parallel.")] = 1,
    seconds_per_task: Annotated[
        float, typer.Option("--seconds-per-task", help="Simulated seconds each task takes (median).")
    ] = 30.0,
    error_rate: Annotated[
        float, typer.Option("--error-rate", help="Probability in [0, 1] that an answer is wrong.")
    ] = 0.0,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", help="Stop after this many tasks (default: all queued).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the durations and mistakes.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    name: NameOption = "seg",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Work the task queue with simulated proofreaders who answer from ground truth, editing the log.

    The queue is the workspace database's (the one `cx flag --queue` fills); edits are made as users
    sim1 … simN. Time is simulated: the run takes about tasks × seconds-per-task / users simulated seconds.
    """
    import math
    import time

    from connectomix.evaluate import contingency, variation_of_information
    from connectomix.proofread.edits import EditLog
    from connectomix.proofread.queue import TaskQueue
    from connectomix.proofread.simulate import ProofreaderModel, SimulatedClock, simulate
    from connectomix.volume import open_volume

    if users < 1:
        raise InputError(f"--users must be at least 1, got {users}")
    if not 0.0 <= error_rate <= 1.0:
        raise InputError(f"--error-rate must be a probability in [0, 1], got {error_rate}")
    if not (math.isfinite(seconds_per_task) and seconds_per_task >= 0):
        raise InputError(f"--seconds-per-task must be a number >= 0, got {seconds_per_task}")
    if max_tasks is not None and max_tasks < 1:
        raise InputError(f"--max-tasks must be at least 1, got {max_tasks}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    model = ProofreaderModel(seconds_per_task=seconds_per_task, error_rate=error_rate)
    directory, url = resolve_workspace_and_db(workspace, db)
    with EditLog.open(url, directory, name) as log:
        truth = open_volume(gt)
        if truth.shape != log.grid.shape:
            raise InputError(
                f"--gt {gt} has shape {truth.shape} (z, y, x), expected the edit log's {log.grid.shape}"
            )
        if truth.bounds != log.grid.bounds:
            raise InputError(
                f"--gt {gt} covers {truth.bounds}, expected the edit log's {log.grid.bounds} (z, y, x voxels)"
            )
        before_volume = open_volume(log.current_url)
        vi_before = variation_of_information(contingency(before_volume, truth, progress=True))
        before_volume.invalidate_cache()  # the edits rewrite this file under the same URL
        clock = SimulatedClock(time.time())
        queue = TaskQueue(url, clock=clock)
        try:
            report = simulate(
                queue,
                log,
                truth,
                users=users,
                model=model,
                max_tasks=max_tasks,
                clock=clock,
                seed=seed,
                progress=True,
            )
        finally:
            queue.dispose()
        after_volume = open_volume(log.current_url)
        vi_after = variation_of_information(contingency(after_volume, truth, progress=True))
        after_volume.invalidate_cache()
    if as_json:
        payload = {
            "name": name,
            "gt": gt,
            "model": {"seconds_per_task": seconds_per_task, "error_rate": error_rate, "seed": seed},
            **report.to_dict(),
            "vi_before": {"split": vi_before[0], "merge": vi_before[1], "total": sum(vi_before)},
            "vi_after": {"split": vi_after[0], "merge": vi_after[1], "total": sum(vi_after)},
            "decisions": report.decisions,
        }
        print(json.dumps(payload, indent=2))
        return
    table = Table(
        title=f"simulated proofreading of {name!r}: {users} user(s), version "
        f"{report.start_version} → {report.end_version}"
    )
    table.add_column("")
    table.add_column("value", justify="right")
    actions = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items())) or "-"
    per_user = ", ".join(f"{k} {v}" for k, v in sorted(report.per_user.items())) or "-"
    table.add_row("tasks", str(report.tasks))
    table.add_row("actions", actions)
    table.add_row("edits", str(report.edits))
    table.add_row("flipped (mistakes)", str(report.flipped))
    table.add_row("simulated hours", f"{report.simulated_hours:.2f}")
    table.add_row("tasks / user", per_user)
    table.add_row("VI split / merge before (bits)", f"{vi_before[0]:.4f} / {vi_before[1]:.4f}")
    table.add_row("VI split / merge after (bits)", f"{vi_after[0]:.4f} / {vi_after[1]:.4f}")
    table.add_row("VI before → after (bits)", f"{sum(vi_before):.4f} → {sum(vi_after):.4f}")
    console.print(table)


__all__ = ["proofread_app"]
