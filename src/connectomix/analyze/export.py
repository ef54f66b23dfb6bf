"""Graph exports and their readers: GraphML, Parquet edge list, CSV for Neo4j's bulk importer.

Each writer writes to a temporary name and renames, and each reader gives back a graph equal to the one
written (:meth:`ConnectivityGraph.equals`).

**GraphML** (networkx): node ids as text, node attributes and edge attributes ``synapses`` (long) and
``size_sum`` (double); the graph attribute ``node_id_dtype`` (``uint64`` or ``str``) tells how to read ids
back. Missing attribute values are left out of the file.

**Parquet**: ``<name>.parquet`` holds the edges (``pre_id``, ``post_id``, ``synapses`` and, if known,
``size_sum``) and ``<name>.nodes.parquet`` beside it the node table (``node_id`` and attributes), so nodes
without edges and their attributes survive.

**Neo4j** (``neo4j-admin database import full``): two CSV files with typed headers:

``nodes.csv``::

    node_id:ID(Neuron),cell_type,volume_nm3:double,...,:LABEL
    720575940621039145,L2/3 IT,1.2e+12,...,Neuron

``relationships.csv``::

    :START_ID(Neuron),:END_ID(Neuron),synapses:long,size_sum:double,:TYPE
    720575940621039145,720575940628362208,3,1830.0,SYNAPSES_TO

Ids go in the ``Neuron`` id space as strings (segment ids exceed Neo4j's signed 64-bit integers) and are
also stored as the ``node_id`` property. Attribute columns get ``:long`` (integers below 2^63), ``:double``
(floats), ``:boolean`` or no suffix (text). An empty field means no value. Import with::

    neo4j-admin database import full --nodes=nodes.csv --relationships=relationships.csv neo4j
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from connectomix.analyze.graph import ConnectivityGraph, is_missing
from connectomix.errors import CorruptDataError, InputError, NotFoundError

NEO4J_LABEL = "Neuron"
NEO4J_TYPE = "SYNAPSES_TO"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _id_dtype(graph: ConnectivityGraph) -> str:
    return "uint64" if graph.nodes["node_id"].dtype.kind == "u" else "str"


def _restore_ids(values: Any, dtype: str) -> np.ndarray:
    if dtype == "uint64":
        return np.array([int(v) for v in values], dtype=np.uint64)
    return np.array([str(v) for v in values], dtype=object)


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- GraphML ----------------------------------------------------------------------------------------------
def write_graphml(graph: ConnectivityGraph, path: str | Path) -> Path:
    """Write ``graph`` as GraphML (see the module docstring)."""
    import networkx as nx

    out = nx.DiGraph(node_id_dtype=_id_dtype(graph), name=graph.name)
    ids = [str(v) for v in graph.node_ids.tolist()]
    for node, row in zip(ids, graph.nodes.drop(columns="node_id").to_dict("records"), strict=True):
        out.add_node(node, **{k: _python(v) for k, v in row.items() if not is_missing(v)})
    weights = graph.edges.drop(columns=["pre", "post"]).to_dict("records")
    for p, q, w in zip(graph.edges["pre"].tolist(), graph.edges["post"].tolist(), weights, strict=True):
        out.add_edge(ids[p], ids[q], **{k: _python(v) for k, v in w.items()})
    path = Path(path)
    with _atomic(path) as tmp:
        nx.write_graphml(out, tmp)
    return path


def read_graphml(path: str | Path) -> ConnectivityGraph:
    """Read a GraphML file written by :func:`write_graphml` (or any directed GraphML with a ``synapses``
    edge attribute; edges without it count 1)."""
    import networkx as nx

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"GraphML file not found: {path}")
    try:
        g = nx.read_graphml(path)
    except Exception as exc:  # lxml / ElementTree / networkx raise various types on malformed input
        raise CorruptDataError(f"{path}: not readable GraphML ({type(exc).__name__}: {exc})") from None
    if not g.is_directed():
        raise CorruptDataError(f"{path}: expected a directed graph")
    dtype = g.graph.get("node_id_dtype", "str")
    nodes = pd.DataFrame.from_records([dict(attrs) for _, attrs in g.nodes(data=True)])
    nodes.insert(0, "node_id", _restore_ids(list(g.nodes), dtype))
    if len(nodes.columns) == 1 and len(g) == 0:
        nodes = pd.DataFrame({"node_id": _restore_ids([], dtype)})
    edges = list(g.edges(data=True))
    sizes = [e[2].get("size_sum") for e in edges]
    return ConnectivityGraph.from_edges(
        _restore_ids([e[0] for e in edges], dtype),
        _restore_ids([e[1] for e in edges], dtype),
        np.array([int(e[2].get("synapses", 1)) for e in edges], dtype=np.int64),
        size_sum=None if not edges or any(s is None for s in sizes) else np.array(sizes, np.float64),
        nodes=nodes,
        name=str(g.graph.get("name", "")),
    )


# -- Parquet ----------------------------------------------------------------------------------------------
def nodes_path_for(edges_path: str | Path) -> Path:
    """``x.parquet`` → ``x.nodes.parquet``."""
    path = Path(edges_path)
    return path.with_name(f"{path.name.removesuffix('.parquet')}.nodes.parquet")


def write_parquet(graph: ConnectivityGraph, path: str | Path) -> tuple[Path, Path]:
    """Write the edge list to ``path`` and the node table beside it; returns both paths."""
    edges_path, nodes_path = Path(path), nodes_path_for(path)
    with _atomic(nodes_path) as tmp:
        graph.nodes.to_parquet(tmp, index=False)
    with _atomic(edges_path) as tmp:
        graph.edge_list().to_parquet(tmp, index=False)
    return edges_path, nodes_path


def read_parquet(path: str | Path) -> ConnectivityGraph:
    """Read an edge list written by :func:`write_parquet` (the node table is used when present)."""
    import pyarrow as pa

    edges_path, nodes_path = Path(path), nodes_path_for(path)
    if not edges_path.is_file():
        raise NotFoundError(f"edge list not found: {edges_path}")
    try:
        edges = pd.read_parquet(edges_path)
        nodes = pd.read_parquet(nodes_path) if nodes_path.is_file() else None
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptDataError(f"{edges_path}: not a readable Parquet edge list ({exc})") from None
    for column in ("pre_id", "post_id", "synapses"):
        if column not in edges.columns:
            raise CorruptDataError(f"{edges_path}: edge list lacks column {column!r}")
    return ConnectivityGraph.from_edges(
        edges["pre_id"].to_numpy(),
        edges["post_id"].to_numpy(),
        edges["synapses"].to_numpy(),
        size_sum=edges["size_sum"].to_numpy() if "size_sum" in edges.columns else None,
        nodes=nodes,
    )


# -- Neo4j CSV --------------------------------------------------------------------------------------------
def _neo4j_type(series: pd.Series) -> str:
    kind = series.dtype.kind
    if kind == "b":
        return "boolean"
    if kind == "i" or (kind == "u" and (series.to_numpy() < 2**63).all()):
        return "long"
    if kind == "f":
        return "double"
    return ""


def _field(value: Any) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def write_neo4j_csv(graph: ConnectivityGraph, directory: str | Path) -> tuple[Path, Path]:
    """Write ``nodes.csv`` and ``relationships.csv`` for ``neo4j-admin database import full`` into
    ``directory`` (header format in the module docstring); returns both paths."""
    folder = Path(directory)
    attributes = graph.nodes.drop(columns="node_id")
    for column in attributes.columns:
        if not _NAME.match(str(column)):
            raise InputError(f"node attribute {column!r} is not a valid Neo4j property name")
    header = ["node_id:ID(Neuron)"]
    header += [f"{c}:{t}" if (t := _neo4j_type(attributes[c])) else str(c) for c in attributes.columns]
    header.append(":LABEL")
    nodes_path, rels_path = folder / "nodes.csv", folder / "relationships.csv"
    with _atomic(nodes_path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        columns = [attributes[c].tolist() for c in attributes.columns]
        for i, node in enumerate(graph.node_ids.tolist()):
            writer.writerow([str(node), *(_field(col[i]) for col in columns), NEO4J_LABEL])
    weights = [c for c in ("synapses", "size_sum") if c in graph.edges.columns]
    types = {"synapses": "long", "size_sum": "double"}
    with _atomic(rels_path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [":START_ID(Neuron)", ":END_ID(Neuron)", *(f"{w}:{types[w]}" for w in weights), ":TYPE"]
        )
        ids = graph.node_ids.tolist()
        values = [graph.edges[w].tolist() for w in weights]
        for i, (p, q) in enumerate(
            zip(graph.edges["pre"].tolist(), graph.edges["post"].tolist(), strict=True)
        ):
            writer.writerow([str(ids[p]), str(ids[q]), *(_field(v[i]) for v in values), NEO4J_TYPE])
    return nodes_path, rels_path


_PARSERS: dict[str, Callable[[list[str]], Any]] = {
    "long": lambda v: pd.array([int(x) if x else None for x in v], dtype="Int64"),
    "int": lambda v: pd.array([int(x) if x else None for x in v], dtype="Int64"),
    "double": lambda v: np.array([float(x) if x else np.nan for x in v], dtype=np.float64),
    "float": lambda v: np.array([float(x) if x else np.nan for x in v], dtype=np.float64),
    "boolean": lambda v: pd.array([None if not x else x == "true" for x in v], dtype="boolean"),
    "": lambda v: pd.array([x if x else None for x in v], dtype="str"),
}


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise NotFoundError(f"Neo4j import file not found: {path}")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise CorruptDataError(f"{path}: empty file (expected a header line)")
    return rows[0], rows[1:]


def _parse_column(name: str, values: list[str], path: Path) -> tuple[str, Any]:
    prop, _, kind = name.partition(":")
    if kind not in _PARSERS:
        raise CorruptDataError(f"{path}: unsupported Neo4j column type in header field {name!r}")
    try:
        parsed = _PARSERS[kind](values)
    except ValueError:
        raise CorruptDataError(f"{path}: column {name!r} holds values that are not {kind}") from None
    if kind in ("long", "int") and not pd.isna(parsed).any():
        parsed = np.asarray(parsed, dtype=np.int64)
    if kind == "boolean" and not pd.isna(parsed).any():
        parsed = np.asarray(parsed, dtype=bool)
    return prop, parsed


def read_neo4j_csv(directory: str | Path, *, id_dtype: str = "auto") -> ConnectivityGraph:
    """Read ``nodes.csv`` and ``relationships.csv`` written by :func:`write_neo4j_csv`.

    ``id_dtype``: ``uint64``, ``str``, or ``auto`` (uint64 when every id is a decimal number)."""
    folder = Path(directory)
    nodes_path, rels_path = folder / "nodes.csv", folder / "relationships.csv"
    header, rows = _read_csv_rows(nodes_path)
    if not header or not header[0].endswith(":ID(Neuron)"):
        raise CorruptDataError(
            f"{nodes_path}: first header field must be '<name>:ID(Neuron)', got {header[:1]}"
        )
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    raw_ids = list(columns[0])
    if id_dtype == "auto":
        id_dtype = "uint64" if all(re.fullmatch(r"\d{1,20}", i) for i in raw_ids) and raw_ids else "str"
    if id_dtype not in ("uint64", "str"):
        raise InputError(f"id_dtype must be auto, uint64 or str, got {id_dtype!r}")
    nodes = pd.DataFrame({"node_id": _restore_ids(raw_ids, id_dtype)})
    for name, values in zip(header[1:], columns[1:], strict=True):
        if name == ":LABEL":
            continue
        prop, parsed = _parse_column(name, list(values), nodes_path)
        nodes[prop] = parsed
    header, rows = _read_csv_rows(rels_path)
    if header[:2] != [":START_ID(Neuron)", ":END_ID(Neuron)"]:
        raise CorruptDataError(f"{rels_path}: header must start with :START_ID(Neuron),:END_ID(Neuron)")
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    weights = {}
    for name, values in zip(header[2:], columns[2:], strict=True):
        if name != ":TYPE":
            prop, parsed = _parse_column(name, list(values), rels_path)
            weights[prop] = parsed
    return ConnectivityGraph.from_edges(
        _restore_ids(columns[0], id_dtype),
        _restore_ids(columns[1], id_dtype),
        weights.get("synapses"),
        size_sum=weights.get("size_sum"),
        nodes=nodes,
    )


__all__ = [
    "NEO4J_LABEL",
    "NEO4J_TYPE",
    "nodes_path_for",
    "read_graphml",
    "read_neo4j_csv",
    "read_parquet",
    "write_graphml",
    "write_neo4j_csv",
    "write_parquet",
]
