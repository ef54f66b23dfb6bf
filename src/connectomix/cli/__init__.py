"""The ``cx`` command: parses arguments, calls the library, prints. One sub-command group per stage.

Every error a user can cause ends as one line on stderr (``error: …``) and a non-zero exit status;
set ``CX_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.analyze import analyze_app
from connectomix.cli.embed import embed_app
from connectomix.cli.flag import flag_command
from connectomix.cli.learn import lineage_command, list_command, loop_command, rollback_command
from connectomix.cli.model import model_app
from connectomix.cli.ops import metrics_app, plan_command, runs_command, stream_command
from connectomix.cli.parsing import (
    DbOption,
    WorkspaceOption,
    parse_triple,
    resolve_workspace_and_db,
    write_json,
)
from connectomix.cli.proofread import proofread_app
from connectomix.cli.segment import segment_app
from connectomix.cli.serve import serve_command, users_app
from connectomix.errors import CxError

app = typer.Typer(
    name="cx",
    help="connectomix: EM volume → segmentation → proofreading → learning → wiring diagram.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Volumes: list the named datasets, inspect any volume URL, import into zarr.")
app.add_typer(data_app, name="data", no_args_is_help=True)
app.add_typer(model_app, name="model", no_args_is_help=True)
model_app.command("list")(list_command)
model_app.command("lineage")(lineage_command)
model_app.command("rollback")(rollback_command)
app.add_typer(segment_app, name="segment", no_args_is_help=True)
app.command("flag")(flag_command)
app.add_typer(proofread_app, name="proofread", no_args_is_help=True)
app.command("serve")(serve_command)
app.add_typer(users_app, name="users", no_args_is_help=True)
app.add_typer(embed_app, name="embed", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze", no_args_is_help=True)
app.add_typer(metrics_app, name="metrics", no_args_is_help=True)
app.command("stream")(stream_command)
app.command("plan")(plan_command)
app.command("runs")(runs_command)
app.command("loop")(loop_command)

console = Console()


def _version_callback(value: bool) -> None:
    if value:
        from connectomix import __version__

        print(f"connectomix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """connectomix: EM volume → segmentation → proofreading → learning → wiring diagram."""


# -- cx data ----------------------------------------------------------------------------------------------
@data_app.command("list")
def data_list() -> None:
    """List the named datasets (usable anywhere a volume URL is accepted)."""
    from connectomix.volume.datasets import data_dir, list_datasets

    table = Table(title=f"datasets (data folder: {data_dir() or 'not found; set CX_DATA_DIR'})")
    table.add_column("name", no_wrap=True)
    table.add_column("resolution nm (x,y,z)", no_wrap=True)
    table.add_column("available", no_wrap=True)
    table.add_column("description")
    for info in list_datasets():
        res = ",".join(f"{r:g}" for r in reversed(info.resolution_nm_zyx))
        table.add_row(info.name, res, "yes" if info.available else "no", info.description)
    console.print(table)


@data_app.command("info")
def data_info(
    url: Annotated[str, typer.Argument(help="Volume URL or dataset name, e.g. fib25-ts2/raw")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a volume's shape, dtype, resolution, chunks and offset."""
    from connectomix.volume import open_volume

    volume = open_volume(url)
    info = volume.describe()
    info["shape_xyz"] = list(reversed(volume.shape))
    info["resolution_nm_xyz"] = list(volume.resolution_xyz)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=url, show_header=False)
    for key, value in info.items():
        table.add_row(key, str(value))
    console.print(table)


@data_app.command("import")
def data_import(
    source: Annotated[str, typer.Argument(help="Any readable volume URL or dataset name.")],
    destination: Annotated[str, typer.Argument(help="zarr://PATH to create.")],
    chunks: Annotated[str, typer.Option(help="Chunk shape Z,Y,X of the new volume.")] = "64,64,64",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing destination.")] = False,
) -> None:
    """Copy a volume into zarr v3, chunk by chunk, with progress; atomic (temporary name, then rename)."""
    from connectomix.volume.transfer import import_volume

    volume = import_volume(
        source, destination, chunks_zyx=parse_triple(chunks, "--chunks"), overwrite=overwrite
    )
    console.print(
        f"imported {source} → {destination}: shape (z,y,x) {volume.shape}, {volume.dtype}, "
        f"chunks {volume.chunks}, resolution nm (z,y,x) {volume.resolution}"
    )


# -- cx evaluate ------------------------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_command(
    seg: Annotated[str, typer.Argument(help="Segmentation volume URL or dataset name.")],
    gt: Annotated[str, typer.Argument(help="Ground-truth volume URL or dataset name.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON here.")] = None,
    min_overlap: Annotated[
        int, typer.Option(help="Voxels an overlap needs to count as a split or merge error.")
    ] = 100,
    erl: Annotated[bool, typer.Option("--erl", help="Also compute ERL on ground-truth skeletons.")] = False,
    record: Annotated[
        bool, typer.Option("--record", help="Store the scores in the workspace database for the exporter.")
    ] = False,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Score a segmentation against ground truth: VI (split/merge, bits), ARAND, error counts, ERL."""
    from connectomix.evaluate import evaluate, expected_run_length
    from connectomix.volume import open_volume

    seg_volume, gt_volume = open_volume(seg), open_volume(gt)
    scores = evaluate(seg_volume, gt_volume, min_overlap=min_overlap, progress=True)
    payload = scores.to_dict()
    payload.update({"seg": seg, "gt": gt})
    if erl:
        result = expected_run_length(
            seg_volume.read(), gt_volume.read(), resolution_nm_zyx=gt_volume.resolution
        )
        payload["erl"] = result.to_dict()
    table = Table(title=f"{seg} vs {gt}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("vi_split", "vi_merge", "vi", "arand", "n_split_bodies", "n_merging_segments"):
        value = payload[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    if erl:
        table.add_row("erl_nm", f"{payload['erl']['erl_nm']:.0f}")
        table.add_row("max_erl_nm", f"{payload['erl']['max_erl_nm']:.0f}")
    console.print(table)
    if record:
        from connectomix.observe.store import record_scores

        _, url = resolve_workspace_and_db(workspace, db)
        record_scores(url, scores, segmentation=seg)
        console.print(f"recorded in {url} (connectomix_vi_bits, connectomix_arand, connectomix_edge_errors)")
    if json_out is not None:
        write_json(json_out, payload)


# -- cx demo ----------------------------------------------------------------------------------------------
@app.command("demo")
def demo_command(
    data: Annotated[
        str, typer.Option(help="'synthetic' or a dataset with raw and gt layers (fib25-crop100, fib25-ts2).")
    ] = "synthetic",
    out: Annotated[Path, typer.Option(help="Directory for volumes, report.json and the figure.")] = Path(
        "cx-demo"
    ),
    size: Annotated[int, typer.Option(help="Edge of the synthetic cube in voxels.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic volume.")] = 0,
    loop: Annotated[
        bool, typer.Option("--loop/--no-loop", help="Synthetic data: also run the short learning loop.")
    ] = True,
) -> None:
    """The end-to-end path: data → baseline segmentation → evaluation → report; on synthetic data also the
    closed learning loop (segment → flag → proofread → fit an adapter → gate → re-segment held-out data)."""
    from connectomix.run.demo import run_demo

    if loop and data == "synthetic":
        console.print("baseline, then the learning loop (Google's FIB-25 model on a synthetic volume) …")
    report = run_demo(data=data, out_dir=out, size=size, seed=seed, loop=loop, log=console.print)
    scores = report["scores"]
    table = Table(title=f"connectomix demo: {report['data']} {tuple(report['shape_zyx'])} voxels (z,y,x)")
    table.add_column("step")
    table.add_column("result", justify="right")
    table.add_row(
        "baseline segmentation", f"{report['n_segments']} segments in {report['seconds']['segment']:.1f} s"
    )
    table.add_row("VI split / merge (bits)", f"{scores['vi_split']:.3f} / {scores['vi_merge']:.3f}")
    table.add_row("VI total (bits)", f"{scores['vi']:.3f}")
    table.add_row("ARAND", f"{scores['arand']:.3f}")
    table.add_row(
        "split bodies / merging segments", f"{scores['n_split_bodies']} / {scores['n_merging_segments']}"
    )
    if "reference" in report:
        ref = report["reference"]["scores"]
        table.add_row(
            f"reference {report['reference']['name']} VI / ARAND", f"{ref['vi']:.3f} / {ref['arand']:.3f}"
        )
    if "loop" in report:
        result = report["loop"]
        table.add_row(
            "learning loop: corrected tasks (edits)", f"{result['corrections']} ({result['edits']})"
        )
        table.add_row(
            "learning loop: VI on held-out C before → after",
            f"{result['vi_before']:.3f} → {result['vi_after']:.3f} "
            f"({-100 * result['vi_drop_fraction']:+.1f} %)",
        )
        table.add_row("learning loop: served model", result["served"])
    elif "loop_skipped" in report:
        table.add_row("learning loop", f"skipped: {report['loop_skipped']}")
    table.add_row("report", str(report["paths"]["report"]))
    table.add_row("figure", str(report["paths"]["figure"]))
    console.print(table)


# -- entry point ------------------------------------------------------------------------------------------
def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run ``cx``; returns (and exits with) 0 on success, 1 on bad input, 2 on usage errors."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="cx")
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        code = _fail(exc.format_message() + hint, 2 if ctx is not None else exc.exit_code)
    except typer.Abort:
        code = _fail("aborted", 130)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except CxError as exc:
        code = _fail(str(exc), 1)
    except OSError as exc:
        code = _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
    except Exception as exc:
        if os.environ.get("CX_DEBUG"):
            raise
        code = _fail(f"internal error ({type(exc).__name__}: {exc}); set CX_DEBUG=1 for a traceback", 3)
    if argv is None:
        sys.exit(code)
    return code
