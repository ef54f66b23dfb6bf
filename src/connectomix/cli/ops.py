"""Operations commands: ``cx metrics serve``, ``cx stream``, ``cx plan``, ``cx runs``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import (
    DbOption,
    WorkspaceOption,
    parse_triple,
    resolve_workspace_and_db,
    write_json,
)

console = Console()
metrics_app = typer.Typer(help="Prometheus metrics: the standalone exporter for batch runs and streaming.")


@metrics_app.command("serve")
def metrics_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free port).")] = 9464,
    workspace: WorkspaceOption = None,
    db: DbOption = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds [run until Ctrl-C].")
    ] = None,
) -> None:
    """Serve /metrics (process and workspace metrics: queue, runs, quality, learner) for Prometheus."""
    from connectomix.observe.exporter import serve_metrics

    _, url = resolve_workspace_and_db(workspace, db)
    with serve_metrics(port, database=url) as (host, bound):
        console.print(f"serving metrics at http://{host}:{bound}/metrics (workspace database {url})")
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


def stream_command(
    watch_dir: Annotated[
        Path, typer.Argument(help="Folder where chunk files z<Z>_y<Y>_x<X>.npy|.tif arrive.")
    ],
    shape: Annotated[str, typer.Option(help="Extent of the acquisition Z,Y,X (voxels).")],
    chunk: Annotated[str, typer.Option(help="Chunk size Z,Y,X (voxels).")] = "64,64,64",
    resolution: Annotated[str, typer.Option(help="Voxel size X,Y,Z in nm.")] = "10,10,10",
    model: Annotated[str, typer.Option(help="'baseline' or an FFN .safetensors model.")] = "baseline",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
    top_fraction: Annotated[float, typer.Option(help="Hot fraction of voxels per chunk.")] = 0.01,
    max_per_chunk: Annotated[int, typer.Option(help="At most this many tasks per chunk.")] = 10,
    backpressure_limit: Annotated[
        int, typer.Option(help="Queue depth beyond which fewer tasks are made.")
    ] = 1000,
    executor: Annotated[str, typer.Option(help="inprocess or dask.")] = "inprocess",
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler tcp://HOST:PORT.")] = None,
    workers: Annotated[int, typer.Option(help="Workers of a local Dask cluster.")] = 2,
    max_in_flight: Annotated[int | None, typer.Option(help="Chunks in work at once [2 × workers].")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between folder scans.")] = 1.0,
    settle: Annotated[float, typer.Option(help="A file must be unchanged this many seconds.")] = 0.5,
    stop_after: Annotated[int | None, typer.Option(help="Stop after this many chunks.")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this long with no arrival (s).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Also serve /metrics on this port.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the stream's summary here.")] = None,
) -> None:
    """Watch a folder for arriving chunks; segment → flag → enqueue each; resumable after a restart."""
    import contextlib

    from connectomix.observe.exporter import serve_metrics
    from connectomix.run.executors import open_executor
    from connectomix.run.stream import StreamConfig, run_stream

    directory, url = resolve_workspace_and_db(workspace, db)
    config = StreamConfig(
        watch_dir=watch_dir,
        workspace=directory / "stream",
        database=url,
        shape_zyx=parse_triple(shape, "--shape"),
        chunk_zyx=parse_triple(chunk, "--chunk"),
        resolution_nm_zyx=tuple(_floats(resolution, "--resolution"))[::-1],  # type: ignore[arg-type]
        model=model,
        top_fraction=top_fraction,
        max_tasks_per_chunk=max_per_chunk,
        backpressure_limit=backpressure_limit,
    )
    if not watch_dir.is_dir():
        from connectomix.errors import NotFoundError

        raise NotFoundError(f"watch folder {watch_dir} does not exist")
    with contextlib.ExitStack() as stack:
        if metrics_port is not None:
            host, bound = stack.enter_context(serve_metrics(metrics_port, database=url))
            console.print(f"metrics at http://{host}:{bound}/metrics")
        pool, info = stack.enter_context(open_executor(executor, scheduler=scheduler, workers=workers))
        console.print(f"watching {watch_dir} ({info.kind}, {info.workers} worker(s)); Ctrl-C stops")

        def show(arrival: object, counters: dict) -> None:
            console.print(
                f"{counters['file']}: {counters['tasks']} tasks ({counters['new']} new), queue depth "
                f"{counters['depth']}, latency {counters['latency_seconds']:.1f} s"
            )

        result = run_stream(
            config,
            executor=pool,
            max_in_flight=max_in_flight,
            poll_seconds=poll,
            settle_seconds=settle,
            stop_after=stop_after,
            idle_timeout=idle_timeout,
            on_chunk=show,
        )
    summary = result.to_dict()
    console.print(
        f"stream: {result.chunks_done} chunks done ({result.chunks_skipped} done before, "
        f"{result.chunks_failed} failed), {result.tasks_new} new tasks"
    )
    for name, error in result.errors.items():
        console.print(f"  failed {name}: {error}")
    if json_out is not None:
        write_json(json_out, summary)


def _floats(text: str, name: str) -> list[float]:
    from connectomix.errors import InputError

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{name} must be 3 comma-separated numbers X,Y,Z, got {text!r}") from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise InputError(f"{name} must be 3 positive numbers X,Y,Z, got {text!r}")
    return values


def plan_command(
    size_um: Annotated[str, typer.Option(help="Volume size X,Y,Z in µm.")] = "1000,1000,1000",
    resolution_nm: Annotated[str, typer.Option(help="Voxel size X,Y,Z in nm.")] = "8,8,40",
    ms_per_step: Annotated[
        list[str] | None, typer.Option(help="DEVICE=MS: add or replace a device's measured ms per FFN step.")
    ] = None,
    price: Annotated[list[str] | None, typer.Option(help="DEVICE=USD: price per device hour.")] = None,
    steps_per_voxel: Annotated[
        float | None, typer.Option(help="FFN steps per voxel [Google FIB-25 run].")
    ] = None,
    presets: Annotated[bool, typer.Option(help="Also plan 1 mm³ and a whole mouse brain.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the plans here.")] = None,
) -> None:
    """Estimate network steps, compute hours per device, storage per stage and cost; prints assumptions."""
    import dataclasses

    from connectomix.run.plan import (
        PlanAssumptions,
        human_bytes,
        parse_device_values,
        plan_volume,
    )
    from connectomix.run.plan import presets as preset_plans

    assumptions = PlanAssumptions()
    changes: dict[str, object] = {}
    if ms_per_step:
        changes["ms_per_step"] = {
            **assumptions.ms_per_step,
            **parse_device_values(ms_per_step, "--ms-per-step"),
        }
    if price:
        changes["price_per_hour_usd"] = {
            **assumptions.price_per_hour_usd,
            **parse_device_values(price, "--price"),
        }
    if steps_per_voxel is not None:
        changes["steps_per_voxel"] = steps_per_voxel
    assumptions = dataclasses.replace(assumptions, **changes)  # type: ignore[arg-type]
    resolution = _floats(resolution_nm, "--resolution-nm")
    plans = [plan_volume(_floats(size_um, "--size-um"), resolution, assumptions, name="requested")]
    if presets:
        plans += [p for p in preset_plans(resolution, assumptions) if p.size_um_xyz != plans[0].size_um_xyz]
    for plan in plans:
        sx, sy, sz = plan.size_um_xyz
        table = Table(
            title=f"{plan.name}: {sx:g} × {sy:g} × {sz:g} µm ({plan.volume_mm3:.3g} mm³) at "
            f"{'×'.join(f'{r:g}' for r in plan.resolution_nm_xyz)} nm: {plan.voxels:.3e} voxels, "
            f"{plan.network_steps:.3e} FFN steps"
        )
        table.add_column("device")
        table.add_column("ms/step", justify="right")
        table.add_column("device-hours", justify="right")
        table.add_column("device-years", justify="right")
        table.add_column("cost (USD)", justify="right")
        for d in plan.devices:
            cost = "—" if d.cost_usd is None else f"{d.cost_usd:,.0f}"
            table.add_row(
                d.device,
                f"{d.ms_per_step:.1f}",
                f"{d.device_hours:,.0f}",
                f"{d.device_hours / 8766:,.1f}",
                cost,
            )
        console.print(table)
        console.print(
            "  storage: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in plan.storage_bytes.items())
        )
    a = assumptions
    console.print("assumptions:")
    console.print(
        f"  steps per voxel {a.steps_per_voxel:.4g} (Google's FIB-25 run: 25,799 steps for 250³ voxels)"
    )
    console.print(
        f"  block overhead {a.block_overhead:.3f} (cores {a.block_zyx}, context {a.overlap_zyx} voxels)"
    )
    console.print("  ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(a.ms_per_step.items())))
    console.print(
        "  USD per device hour: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(a.price_per_hour_usd.items()))
    )
    console.print(
        f"  compression raw {a.raw_compression:g}×, segmentation {a.segmentation_compression:g}×, "
        f"probability {a.probability_compression:g}×; embeddings {a.embeddings_per_um3:g} per µm³ × "
        f"{a.embedding_bytes:g} bytes"
    )
    if json_out is not None:
        write_json(json_out, {"plans": [p.to_dict() for p in plans]})


def runs_command(workspace: WorkspaceOption = None, db: DbOption = None, as_json: bool = False) -> None:
    """List the block-wise runs in the workspace ledger: blocks done and failed, block seconds."""
    from connectomix.run.ledger import run_summaries

    _, url = resolve_workspace_and_db(workspace, db)
    rows = run_summaries(url)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"runs in {url}")
    for column in ("name", "status", "done", "failed", "block seconds"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"], row["status"], str(row["done"]), str(row["failed"]), f"{row['seconds']:.1f}"
        )
    console.print(table)
