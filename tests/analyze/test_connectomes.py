"""The bundled connectomes load with the facts listed in shared/testdata/README.md."""

from __future__ import annotations

import numpy as np
import pytest

from connectomix.analyze.datasets import DATASETS, list_datasets, load_dataset
from connectomix.analyze.motifs import dyad_census
from connectomix.errors import InputError, NotFoundError


def test_varshney_chemical_facts(testdata) -> None:
    graph = load_dataset("celegans-varshney", synapse_type="chemical", min_synapses=1)
    assert (graph.n_nodes, graph.n_edges, graph.n_synapses) == (279, 2194, 6394)
    assert dyad_census(graph).mutual == 233
    assert graph.describe()["self_loops"] == 0


@pytest.mark.parametrize(
    ("name", "nodes", "edges"),
    [
        ("celegans-white1986", 303, 2386),
        ("celegans-cook2019-herm", 300, 3669),
        ("larva-mb-left", 209, 7425),
        ("larva-mb-right", 213, 7536),
    ],
)
def test_chemical_facts(testdata, name: str, nodes: int, edges: int) -> None:
    graph = load_dataset(name)
    assert (graph.n_nodes, graph.n_edges) == (nodes, edges)


def test_larva_classes_and_cook_groups(testdata) -> None:
    left = load_dataset("larva-mb-left")
    assert set(left.nodes["cell_type"]) == {"K", "P", "O", "I"}
    assert left.nodes["node_id"].iloc[0] == "K1"
    cook = load_dataset("celegans-cook2019-herm")
    counts = cook.nodes["cell_type"].value_counts().to_dict()
    assert counts == {"motor": 108, "sensory": 83, "interneuron": 81, "pharyngeal": 20, "sex-specific": 8}


def test_every_dataset_loads_and_electrical_is_symmetric(testdata) -> None:
    assert all(row["available"] for row in list_datasets())
    for name, info in DATASETS.items():
        graph = load_dataset(name)
        assert graph.n_edges > 500 and graph.describe()["self_loops"] == 0, name
        if "electrical" in info.synapse_types:
            gap = load_dataset(name, synapse_type="electrical").adjacency()
            assert (gap != gap.T).nnz == 0, name
            both = load_dataset(name, synapse_type="all")
            assert (
                both.n_synapses == graph.n_synapses + load_dataset(name, synapse_type="electrical").n_synapses
            )


def test_thresholds_drop_weak_edges_and_isolated_nodes(testdata) -> None:
    full = load_dataset("celegans-varshney")
    strong = load_dataset("celegans-varshney", min_synapses=3)
    weights = full.edges["synapses"].to_numpy()
    assert strong.n_edges == int(np.sum(weights >= 3)) and strong.edges["synapses"].min() >= 3
    assert strong.n_nodes < full.n_nodes
    assert (strong.in_degree() + strong.out_degree() > 0).all()


def test_bad_requests(testdata) -> None:
    with pytest.raises(NotFoundError, match="unknown connectome"):
        load_dataset("celegans-nope")
    with pytest.raises(InputError, match="no electrical"):
        load_dataset("larva-mb-left", synapse_type="electrical")
    with pytest.raises(InputError, match="synapse type"):
        load_dataset("celegans-varshney", synapse_type="gap")
    with pytest.raises(InputError, match="positive integer"):
        load_dataset("celegans-varshney", min_synapses=0)


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        load_dataset("celegans-white1986", folder=tmp_path)
