"""``cx loop`` (the closed learning loop, scored on held-out data) and ``cx model list|lineage|rollback``
(the weights registry)."""

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
    resolve_workspace_and_db,
    write_json,
)

console = Console()
LOOP_DATA = ("fib25-ts2", "synthetic")


def loop_command(
    data: Annotated[str, typer.Option(help="fib25-ts2 (Google's FIB-25 model) or synthetic.")] = "synthetic",
    corrections: Annotated[
        int | None, typer.Option(help="Tasks to proofread in all [200; synthetic 60].")
    ] = None,
    curve: Annotated[
        str | None,
        typer.Option(help="Task counts after which to fit and score, e.g. 50,100 [fib25: 30,60]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the learner, the proofreaders and synthetic data.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Epochs per fit [2; synthetic 3].")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the adapter's fits [1e-3; synthetic 2e-3].")
    ] = None,
    centre_sampling: Annotated[
        str | None,
        typer.Option(help="Training centres: balanced (Google's) or uniform [balanced]."),
    ] = None,
    anchor_weight: Annotated[
        float | None,
        typer.Option(help="Weight of the anchor term that keeps the base's right logits [0: off]."),
    ] = None,
    top_fraction: Annotated[
        float | None,
        typer.Option(help="Flagging: fraction of region A's voxels that are hot [0.05]."),
    ] = None,
    nms_radius: Annotated[
        float | None, typer.Option(help="Flagging: voxels between two tasks at least [10].")
    ] = None,
    context: Annotated[
        int | None,
        typer.Option(
            help="Voxels of image around each region when segmenting it [half the model's FOV; synthetic 16]."
        ),
    ] = None,
    region_a: Annotated[
        str | None, typer.Option(help="Proofread region A, X0,Y0,Z0:X1,Y1,Z1 voxels [the data's default].")
    ] = None,
    region_b: Annotated[
        str | None, typer.Option(help="Validation (gate) region B, X0,Y0,Z0:X1,Y1,Z1 [the data's default].")
    ] = None,
    region_c: Annotated[
        str | None, typer.Option(help="Held-out test region C, X0,Y0,Z0:X1,Y1,Z1 [the data's default].")
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, bf16 or auto (bf16 where the CPU has it).")] = "auto",
    json_out: Annotated[Path, typer.Option("--json", help="Write the loop report here.")] = Path(
        "cx-loop/loop.json"
    ),
    workdir: Annotated[
        Path | None, typer.Option(help="Workspace of the run (database, edit log, registry) [beside --json].")
    ] = None,
    db: DbOption = None,
) -> None:
    """Segment region A → flag → simulated proofreaders fix the top tasks → fit a LoRA adapter → gate on
    region B → re-segment held-out region C; report VI on C before and after and the curve against the
    number of corrections."""
    import dataclasses

    from connectomix.errors import InputError
    from connectomix.learn.loop import LoopSettings, curve_points, fib25_data, run_loop

    if data not in LOOP_DATA:
        raise InputError(f"--data must be one of {', '.join(LOOP_DATA)}, got {data!r}")
    if precision not in ("fp32", "bf16", "auto"):
        raise InputError(f"--precision must be fp32, bf16 or auto, got {precision!r}")
    boxes = {
        name: parse_box_xyz(text, f"--region-{name}")
        for name, text in (("a", region_a), ("b", region_b), ("c", region_c))
        if text is not None
    }
    if data == "synthetic":
        from connectomix.learn.synthetic_loop import synthetic_loop_data, synthetic_settings

        settings = synthetic_settings(seed)
    else:
        settings = LoopSettings(seed=seed)
    changes: dict[str, object] = {}
    if corrections is not None:
        changes["corrections"] = corrections
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {epochs}")
        changes["epochs"] = epochs
    if lr is not None:
        if not 0.0 < lr < 1.0:
            raise InputError(f"--lr must be a learning rate in (0, 1), got {lr}")
        changes["lr"] = lr
    if curve is not None:
        changes["curve"] = curve_points(curve)
    if centre_sampling is not None:
        if centre_sampling not in ("balanced", "uniform"):
            raise InputError(f"--centre-sampling must be balanced or uniform, got {centre_sampling!r}")
        changes["centre_sampling"] = centre_sampling
    if anchor_weight is not None:
        if not anchor_weight >= 0.0:
            raise InputError(f"--anchor-weight must be a number >= 0, got {anchor_weight}")
        changes["anchor_weight"] = anchor_weight
    if top_fraction is not None:
        if not 0.0 < top_fraction < 1.0:
            raise InputError(f"--top-fraction must be in (0, 1), got {top_fraction}")
        changes["top_fraction"] = top_fraction
    if nms_radius is not None:
        if not nms_radius >= 0.0:
            raise InputError(f"--nms-radius must be >= 0 voxels, got {nms_radius}")
        changes["flag_nms_radius"] = nms_radius
    if context is not None:
        if context < 0:
            raise InputError(f"--context must be >= 0 voxels, got {context}")
        changes["context"] = context
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    workdir = workdir or json_out.parent / f"{json_out.stem}-workspace"
    log = console.print
    if data == "synthetic":
        base, loop_data, options = synthetic_loop_data(seed=seed, precision=precision)
    else:
        base, loop_data = fib25_data()
        options = None
    if boxes:
        regions = dataclasses.replace(loop_data.regions, **boxes)  # checks that they are disjoint
        loop_data = dataclasses.replace(loop_data, regions=regions)  # checks that they are inside
    report = run_loop(
        base, loop_data, workdir, settings, options=options, precision=precision, db=db, log=log
    )
    write_json(json_out, report)
    _print_report(report, json_out)


def _print_report(report: dict, json_out: Path) -> None:
    table = Table(title=f"cx loop on {report['data']}: VI on held-out region C (bits, lower is better)")
    for column in (
        "corrections",
        "edits",
        "VI on B: candidate / served",
        "gate",
        "VI on C: candidate",
        "served",
    ):
        table.add_column(column, justify="right")
    for row in report["curve"]:
        if row["vi_c_candidate"] is None:
            table.add_row("0", "0", "", "base", "", f"{row['vi_c_served']:.3f}")
            continue
        table.add_row(
            str(row["corrections"]),
            str(row["edits"]),
            f"{row['vi_b_candidate']:.3f} / {row['vi_b_served_before']:.3f}",
            "promoted" if row["promoted"] else "rejected",
            f"{row['vi_c_candidate']:.3f}",
            f"{row['vi_c_served']:.3f}",
        )
    console.print(table)
    drop = 100.0 * report["vi_drop_fraction"]
    change = f"{drop:.1f} % lower" if drop >= 0 else f"{-drop:.1f} % higher"
    console.print(
        f"VI on C: {report['vi_before']:.3f} → {report['vi_after']:.3f} bits ({change}) after "
        f"{report['corrections']} corrected tasks; served: {report['served']}; report → {json_out}"
    )


# -- the weights registry ----------------------------------------------------------------------------------
def _registry(workspace: Path | None, db: str | None):  # type: ignore[no-untyped-def]
    from connectomix.learn.registry import WeightsRegistry

    directory, url = resolve_workspace_and_db(workspace, db)
    return WeightsRegistry(url, directory, user="cx")


def list_command(
    name: Annotated[str | None, typer.Argument(help="Only this model name.")] = None,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """The registry's versions: kind, status (served / promoted / rejected / candidate), gate scores."""
    registry = _registry(workspace, db)
    try:
        names = [name] if name else registry.names()
        table = Table(title="weights registry")
        for column in ("version", "kind", "status", "served", "gate score / served", "trained on", "size"):
            table.add_column(column)
        for model_name in names:
            served = registry.promoted(model_name)
            for entry in registry.history(model_name):
                gate = entry.gate
                table.add_row(
                    f"{entry.name}:v{entry.version}",
                    entry.kind,
                    entry.status,
                    "yes" if served is not None and served.id == entry.id else "",
                    ""
                    if gate is None
                    else f"{gate.score:.4f} / "
                    + ("—" if gate.baseline_score is None else f"{gate.baseline_score:.4f}"),
                    f"{len(entry.trained_on_tasks)} tasks, {len(entry.trained_on_edits)} edits",
                    f"{entry.size / 1024:.1f} KiB",
                )
        console.print(table)
    finally:
        registry.dispose()


def lineage_command(
    ref: Annotated[str, typer.Argument(help="A version: NAME:vN.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the lineage here.")] = None,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Where a version comes from: its base, parents, and the edits and tasks that trained it."""
    registry = _registry(workspace, db)
    try:
        lineage = registry.lineage(ref)
    finally:
        registry.dispose()
    console.print(
        f"{ref}: {lineage['kind']} ({lineage['status']}), base #{lineage['base']}, parents "
        f"{lineage['parents'] or '—'}; trained on {len(lineage['tasks'])} tasks / {len(lineage['edits'])} "
        f"edits ({len(lineage['all_tasks'])} / {len(lineage['all_edits'])} with its ancestors)"
    )
    if json_out is not None:
        write_json(json_out, lineage)


def rollback_command(
    name: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[str | None, typer.Option(help="Version to serve again, NAME:vN [the one before].")] = None,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Serve an earlier promoted version again."""
    registry = _registry(workspace, db)
    try:
        entry = registry.rollback(to, name=name)
    finally:
        registry.dispose()
    console.print(f"now serving {entry.label}")


def load_registry_model(ref: str, workspace: Path | None, db: str | None):  # type: ignore[no-untyped-def]
    """``registry:NAME`` (the served version) or ``registry:NAME:vN`` → the model, adapter merged."""
    from connectomix.errors import InputError

    spec = ref.removeprefix("registry:")
    if not spec:
        raise InputError("--model registry:NAME or registry:NAME:vN expected a model name after 'registry:'")
    registry = _registry(workspace, db)
    try:
        if ":" in spec:
            return registry.load(spec)
        return registry.load(None, name=spec)
    finally:
        registry.dispose()
