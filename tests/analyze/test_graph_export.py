"""Connectivity graphs: building from synapses, selections, cell-type matrices, and exports that re-read into
an equal graph (GraphML, Parquet edge list, Neo4j bulk-import CSV)."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from connectomix.analyze.datasets import load_dataset
from connectomix.analyze.export import (
    nodes_path_for,
    read_graphml,
    read_neo4j_csv,
    read_parquet,
    write_graphml,
    write_neo4j_csv,
    write_parquet,
)
from connectomix.analyze.graph import ConnectivityGraph, cell_type_matrix
from connectomix.errors import CorruptDataError, InputError, NotFoundError


@pytest.fixture
def segments() -> ConnectivityGraph:
    """uint64 segment ids above 2^63, attributes with missing values, sizes, an isolated node, a self-loop."""
    rng = np.random.default_rng(0)
    ids = np.sort(rng.integers(2**63, 2**64 - 1, 30, dtype=np.uint64))
    nodes = pd.DataFrame(
        {
            "node_id": ids,
            "cell_type": (["L2/3 IT", "basket", None, "L5 ET", "chandelier"] * 6),
            "volume_nm3": rng.random(30) * 1e12,
            "n_roi": np.arange(30, dtype=np.int64),
        }
    )
    pre, post = rng.choice(ids[:-1], 300), rng.choice(ids[:-1], 300)  # the last node stays isolated
    post[0] = pre[0]
    return ConnectivityGraph.from_edges(pre, post, size_sum=rng.random(300) * 100, nodes=nodes, name="cortex")


def test_from_synapses_counts_and_sums() -> None:
    table = pd.DataFrame(
        {
            "pre_id": np.array([5, 5, 5, 7, 0, 7], np.uint64),
            "post_id": np.array([7, 7, 9, 5, 9, 0], np.uint64),
            "size": [10.0, 20.0, 5.0, 1.0, 99.0, 99.0],
        }
    )
    graph = ConnectivityGraph.from_synapses(table)
    edges = graph.edge_list()
    assert graph.node_ids.tolist() == [5, 7, 9]  # unknown partners (0) are left out
    assert edges.to_dict("list") == {
        "pre_id": [5, 5, 7],
        "post_id": [7, 9, 5],
        "synapses": [2, 1, 1],
        "size_sum": [30.0, 5.0, 1.0],
    }


def test_selections_and_cell_type_matrix(segments) -> None:
    matrix = cell_type_matrix(segments)
    assert int(matrix.to_numpy().sum()) == segments.n_synapses
    assert "(none)" in matrix.index
    sizes = cell_type_matrix(segments, weight="size_sum")
    assert sizes.to_numpy().sum() == pytest.approx(segments.edges["size_sum"].sum())
    strong = segments.threshold(2)
    assert (strong.edges["synapses"] >= 2).all() and strong.n_nodes == segments.n_nodes
    assert segments.drop_isolated().n_nodes == 29
    assert segments.without_self_loops().describe()["self_loops"] == 0
    sub = segments.subgraph(segments.node_ids[:10])
    assert sub.n_nodes == 10 and set(sub.edges["pre"]) <= set(range(10))
    with pytest.raises(NotFoundError):
        segments.subgraph([1, 2])


@pytest.mark.parametrize("which", ["segments", "larva"])
def test_exports_reread_into_an_equal_graph(which, segments, tmp_path, request) -> None:
    if which == "larva":
        request.getfixturevalue("testdata")  # skips where the real data is absent
    graph = segments if which == "segments" else load_dataset("larva-mb-left")
    write_graphml(graph, tmp_path / "g.graphml")
    assert read_graphml(tmp_path / "g.graphml").equals(graph)
    edges_path, nodes_path = write_parquet(graph, tmp_path / "g.parquet")
    assert nodes_path == nodes_path_for(edges_path) and read_parquet(edges_path).equals(graph)
    write_neo4j_csv(graph, tmp_path / "neo4j")
    assert read_neo4j_csv(tmp_path / "neo4j").equals(graph)
    assert not list(tmp_path.rglob(".*tmp*"))  # nothing half-written left behind


def test_neo4j_header_format(segments, tmp_path) -> None:
    nodes_path, rels_path = write_neo4j_csv(segments, tmp_path)
    with nodes_path.open() as handle:
        header, first = next(csv.reader(handle)), next(csv.reader(handle))
    assert header == ["node_id:ID(Neuron)", "cell_type", "volume_nm3:double", "n_roi:long", ":LABEL"]
    assert first[0] == str(segments.node_ids[0]) and first[-1] == "Neuron"
    with rels_path.open() as handle:
        assert next(csv.reader(handle)) == [
            ":START_ID(Neuron)",
            ":END_ID(Neuron)",
            "synapses:long",
            "size_sum:double",
            ":TYPE",
        ]


def test_bad_graph_files(tmp_path) -> None:
    (tmp_path / "bad.graphml").write_text("<graphml><node")
    with pytest.raises(CorruptDataError, match="GraphML"):
        read_graphml(tmp_path / "bad.graphml")
    with pytest.raises(NotFoundError):
        read_parquet(tmp_path / "missing.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "odd.parquet")
    with pytest.raises(CorruptDataError, match="pre_id"):
        read_parquet(tmp_path / "odd.parquet")
    with pytest.raises(InputError, match="synapse counts must be integers"):
        ConnectivityGraph.from_edges([1, 2], [2, 1], [1.5, 2])
    nodes = pd.DataFrame({"node_id": [1, 2], "bad name": ["a", "b"]})
    with pytest.raises(InputError, match="Neo4j property"):
        write_neo4j_csv(ConnectivityGraph.from_edges([1], [2], nodes=nodes), tmp_path / "n")
