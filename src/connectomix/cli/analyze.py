"""``cx analyze``: circuit analysis on the bundled connectomes or your own graphs and synapse tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import write_json
from connectomix.errors import InputError

analyze_app = typer.Typer(
    help="Circuit analysis: connectomes, motif statistics, communities, reports, exports, synapse tables."
)
synapses_app = typer.Typer(
    help="Synapse tables: import and attach to a segmentation, remap after proofreading."
)
analyze_app.add_typer(synapses_app, name="synapses", no_args_is_help=True)
console = Console(soft_wrap=True)  # message lines are not wrapped (tables still fit the width)

DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help="A bundled connectome (see 'cx analyze datasets').")
]
GraphOption = Annotated[
    Path | None,
    typer.Option("--graph", help="Or a graph file: GraphML (.graphml), Parquet edge list (.parquet)."),
]
TypeOption = Annotated[str, typer.Option("--synapse-type", help="chemical, electrical or all.")]
MinOption = Annotated[
    int, typer.Option("--min-synapses", help="Keep edges with at least this many synapses.")
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")]


def load_graph(dataset: str | None, graph: Path | None, synapse_type: str, min_synapses: int) -> Any:
    """The graph named by ``--dataset`` or read from ``--graph`` (exactly one), thresholded."""
    if (dataset is None) == (graph is None):
        raise InputError("give exactly one of --dataset NAME or --graph PATH")
    if dataset is not None:
        from connectomix.analyze.datasets import load_dataset

        return load_dataset(dataset, synapse_type=synapse_type, min_synapses=min_synapses)
    from connectomix.analyze.export import read_graphml, read_parquet

    assert graph is not None
    suffix = graph.suffix.lower()
    if suffix == ".graphml":
        loaded = read_graphml(graph)
    elif suffix == ".parquet":
        loaded = read_parquet(graph)
    else:
        raise InputError(f"{graph}: expected a .graphml or .parquet graph file")
    return loaded.threshold(min_synapses)


@contextmanager
def open_pool(workers: int, scheduler: str | None) -> Iterator[Executor | None]:
    """None (in-process), a process pool of ``workers``, or a Dask cluster's executor."""
    if scheduler is not None:
        from distributed import Client

        with Client(scheduler) as client:
            yield client.get_executor()
        return
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        yield None
        return
    with ProcessPoolExecutor(workers) as pool:
        yield pool


# -- cx analyze datasets ---------------------------------------------------------------------------------
@analyze_app.command("datasets")
def datasets_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the bundled real connectomes and whether their files are present."""
    from connectomix.analyze.datasets import graphs_dir, list_datasets

    rows = list_datasets()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"connectomes (folder: {graphs_dir() or 'not found; set CX_DATA_DIR'})")
    for column in ("name", "synapse types", "available", "description"):
        table.add_column(column, no_wrap=column in ("name", "available"))
    for row in rows:
        types = ", ".join(row["synapse_types"])  # type: ignore[arg-type]
        table.add_row(str(row["name"]), types, "yes" if row["available"] else "no", str(row["description"]))
    console.print(table)


# -- cx analyze motifs -----------------------------------------------------------------------------------
def _significance(
    graph: Any, null: str, randomizations: int, seed: int, swaps: float, workers: int, scheduler: str | None
) -> Any:
    from connectomix.analyze.significance import motif_significance

    with open_pool(workers, scheduler) as executor:
        return motif_significance(
            graph,
            null=null,
            randomizations=randomizations,
            seed=seed,
            swaps_per_edge=swaps,
            executor=executor,
            progress=True,
        )


NullOption = Annotated[str, typer.Option("--null", help="Null model: erdos-renyi, degree or reciprocity.")]
RandOption = Annotated[int, typer.Option("--randomizations", help="Number of random graphs.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Root seed of the randomisations.")]
SwapsOption = Annotated[float, typer.Option("--swaps-per-edge", help="Proposed swaps per edge.")]
WorkersOption = Annotated[int, typer.Option("--workers", help="Worker processes (1: in this process).")]
SchedulerOption = Annotated[
    str | None, typer.Option("--scheduler", help="Run on a Dask cluster at this address (tcp://HOST:PORT).")
]


@analyze_app.command("motifs")
def motifs_command(
    dataset: DatasetOption = None,
    graph: GraphOption = None,
    synapse_type: TypeOption = "chemical",
    min_synapses: MinOption = 1,
    null: NullOption = "degree",
    randomizations: RandOption = 100,
    seed: SeedOption = 0,
    swaps_per_edge: SwapsOption = 10.0,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    json_out: JsonOption = None,
) -> None:
    """Dyad and triad census with z-scores and empirical p-values against a null model."""
    from connectomix.analyze.motifs import TRIAD_NAMES

    g = load_graph(dataset, graph, synapse_type, min_synapses)
    result = _significance(g, null, randomizations, seed, swaps_per_edge, workers, scheduler)
    payload = {
        "dataset": dataset,
        "graph": str(graph) if graph else None,
        "synapse_type": synapse_type,
        "min_synapses": min_synapses,
        "nodes": g.n_nodes,
        "edges": g.n_edges,
        "synapses": g.n_synapses,
        **result.to_dict(),
    }
    table = Table(
        title=f"{g.name or graph}: {g.n_nodes} nodes, {g.n_edges} edges; "
        f"{null} null, {randomizations} randomisations"
    )
    for column in ("triad", "observed", "null mean", "z", "p (null ≥ obs)", "p (null ≤ obs)"):
        table.add_column(column, justify="left" if column == "triad" else "right")
    mean, z = result.mean, result.zscores
    for name in TRIAD_NAMES:
        table.add_row(
            name,
            f"{result.observed[name]:,}",
            f"{mean[name]:,.1f}",
            "–" if z[name] is None else f"{z[name]:.2f}",
            f"{result.p_greater[name]:.3g}",
            f"{result.p_less[name]:.3g}",
        )
    console.print(table)
    mutual = payload["mutual_dyads"]
    zm = mutual["zscore"]
    console.print(
        f"reciprocal pairs: {mutual['observed']} (null mean {mutual['null_mean'] or 0:.1f}, "
        f"z {'–' if zm is None else f'{zm:.2f}'})"
    )
    if json_out is not None:
        write_json(json_out, payload)


# -- cx analyze communities ------------------------------------------------------------------------------
@analyze_app.command("communities")
def communities_command(
    dataset: DatasetOption = None,
    graph: GraphOption = None,
    synapse_type: TypeOption = "chemical",
    min_synapses: MinOption = 1,
    method: Annotated[str, typer.Option(help="louvain, leiden or sbm (degree-corrected, directed).")] = "sbm",
    blocks: Annotated[int, typer.Option(help="Number of blocks for --method sbm.")] = 4,
    seed: SeedOption = 0,
    attribute: Annotated[str, typer.Option(help="Node attribute with known classes.")] = "cell_type",
    json_out: JsonOption = None,
) -> None:
    """Find communities and, where the nodes have known classes, their adjusted Rand index."""
    from connectomix.analyze.community import adjusted_rand_index, fit_dcsbm, leiden, louvain

    g = load_graph(dataset, graph, synapse_type, min_synapses)
    if method == "louvain":
        labels = louvain(g, seed=seed)
    elif method == "leiden":
        labels = leiden(g, seed=seed)
    elif method == "sbm":
        labels = fit_dcsbm(g, blocks, seed=seed).labels
    else:
        raise InputError(f"--method must be louvain, leiden or sbm, got {method!r}")
    payload: dict[str, Any] = {"method": method, "communities": int(labels.max(initial=-1)) + 1, "seed": seed}
    if attribute in g.nodes.columns and g.nodes[attribute].notna().all():
        payload["adjusted_rand_index"] = adjusted_rand_index(
            g.nodes[attribute].astype(str).to_numpy(), labels
        )
    payload["labels"] = {str(k): int(v) for k, v in zip(g.node_ids.tolist(), labels.tolist(), strict=True)}
    ari = payload.get("adjusted_rand_index")
    console.print(
        f"{g.name}: {method} found {payload['communities']} communities"
        + (f"; adjusted Rand index vs {attribute}: {ari:.3f}" if ari is not None else "")
    )
    if json_out is not None:
        write_json(json_out, payload)


# -- cx analyze report -----------------------------------------------------------------------------------
@analyze_app.command("report")
def report_command(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("connectome-report.html"),
    dataset: DatasetOption = None,
    graph: GraphOption = None,
    synapse_type: TypeOption = "chemical",
    min_synapses: MinOption = 1,
    null: NullOption = "degree",
    randomizations: RandOption = 100,
    seed: SeedOption = 0,
    swaps_per_edge: SwapsOption = 10.0,
    workers: WorkersOption = 1,
    blocks: Annotated[
        int, typer.Option(help="SBM blocks for the communities table (with known classes).")
    ] = 4,
) -> None:
    """Write a self-contained HTML report: heat map, degree distributions, motif z-scores, tables."""
    from connectomix.analyze.community import adjusted_rand_index, fit_dcsbm, leiden, louvain
    from connectomix.analyze.report import write_report

    g = load_graph(dataset, graph, synapse_type, min_synapses)
    significance = None
    if randomizations > 0:
        significance = _significance(g, null, randomizations, seed, swaps_per_edge, workers, None)
    communities = None
    if "cell_type" in g.nodes.columns and g.nodes["cell_type"].notna().all():
        truth = g.nodes["cell_type"].astype(str).to_numpy()
        communities = {
            "Louvain (networkx)": adjusted_rand_index(truth, louvain(g, seed=seed)),
            "Leiden (leidenalg)": adjusted_rand_index(truth, leiden(g, seed=seed)),
            f"degree-corrected SBM, {blocks} blocks": adjusted_rand_index(
                truth, fit_dcsbm(g, blocks, seed=seed).labels
            ),
        }
    path = write_report(g, out, significance=significance, communities=communities)
    console.print(f"report written: {path}")


# -- cx analyze export -----------------------------------------------------------------------------------
@analyze_app.command("export")
def export_command(
    out: Annotated[Path, typer.Argument(help="File (.graphml, .parquet) or folder (neo4j) to write.")],
    dataset: DatasetOption = None,
    graph: GraphOption = None,
    synapse_type: TypeOption = "chemical",
    min_synapses: MinOption = 1,
    fmt: Annotated[str, typer.Option("--format", help="graphml, parquet or neo4j.")] = "graphml",
) -> None:
    """Export a graph as GraphML, a Parquet edge list (+ node table) or CSV for neo4j-admin import."""
    from connectomix.analyze import export

    g = load_graph(dataset, graph, synapse_type, min_synapses)
    if fmt == "graphml":
        paths = [export.write_graphml(g, out)]
    elif fmt == "parquet":
        paths = list(export.write_parquet(g, out))
    elif fmt == "neo4j":
        paths = list(export.write_neo4j_csv(g, out))
    else:
        raise InputError(f"--format must be graphml, parquet or neo4j, got {fmt!r}")
    console.print(f"{g.n_nodes} nodes, {g.n_edges} edges → " + ", ".join(str(p) for p in paths))


# -- cx analyze synapses ---------------------------------------------------------------------------------
def _voxel_size(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--voxel-size-nm must be 3 numbers X,Y,Z (nm), got {text!r}") from None
    if len(values) != 3:
        raise InputError(f"--voxel-size-nm must be 3 numbers X,Y,Z (nm), got {text!r}")
    return values  # type: ignore[return-value]


VoxelOption = Annotated[
    str | None,
    typer.Option(
        "--voxel-size-nm",
        help="nm per position unit X,Y,Z (e.g. 1,1,1 for nm; omit if positions are the volume's voxels).",
    ),
]


@synapses_app.command("import")
def synapses_import(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet synapse table (CAVE or navis columns).")],
    out: Annotated[Path, typer.Option("--out", help="Canonical Parquet table to write.")],
    segmentation: Annotated[
        str | None, typer.Option(help="Segmentation URL to look the synapse positions up in.")
    ] = None,
    voxel_size_nm: VoxelOption = None,
    neuron_id: Annotated[int | None, typer.Option(help="The neuron of a navis connector table.")] = None,
    outside: Annotated[
        str, typer.Option(help="Positions outside the volume: error or background.")
    ] = "error",
) -> None:
    """Read a synapse table, optionally attach it to a segmentation, and write the canonical Parquet."""
    from connectomix.analyze.synapses import attach_segments, read_synapses, write_synapses

    synapses = read_synapses(table, neuron_id=neuron_id)
    if segmentation is not None:
        from connectomix.volume import open_volume

        synapses = attach_segments(
            synapses,
            open_volume(segmentation),
            voxel_size_nm_xyz=_voxel_size(voxel_size_nm),
            outside=outside,  # type: ignore[arg-type]
        )
    write_synapses(synapses, out)
    known = int(((synapses["pre_id"] != 0) & (synapses["post_id"] != 0)).sum())
    console.print(f"{len(synapses)} synapses ({known} with both partners known) → {out}")


@synapses_app.command("remap")
def synapses_remap(
    table: Annotated[Path, typer.Argument(help="Canonical synapse table (Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Remapped Parquet table to write.")],
    name: Annotated[str, typer.Option("--log", help="Edit log name.")] = "seg",
    voxel_size_nm: VoxelOption = None,
    workspace: Annotated[Path | None, typer.Option("--workspace", help="Workspace directory.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL or SQLite file.")] = None,
) -> None:
    """Bring a synapse table's ids up to an edit log's current version (merges and splits)."""
    from connectomix.analyze.synapses import read_synapses, remap_synapses, write_synapses
    from connectomix.cli.parsing import resolve_workspace_and_db
    from connectomix.proofread.edits import EditLog

    directory, url = resolve_workspace_and_db(workspace, db)
    synapses = read_synapses(table)
    with EditLog.open(url, directory, name) as log:
        result = remap_synapses(synapses, log, voxel_size_nm_xyz=_voxel_size(voxel_size_nm))
        version = log.version
    write_synapses(result.table, out)
    console.print(
        f"remapped to version {version}: {result.by_lineage} by lineage, {result.by_position} by position, "
        f"{result.unresolved} unresolved → {out}"
    )
