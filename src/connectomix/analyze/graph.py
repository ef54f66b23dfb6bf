"""Weighted directed connectivity graphs: nodes with attributes, edges with synapse counts and size sums.

A :class:`ConnectivityGraph` holds two pandas tables:

- ``nodes``: one row per node, column ``node_id`` (uint64 segment ids, or strings such as C. elegans cell
  names) then any attributes (``cell_type``, ``volume_nm3``, …). The row position is the node's index.
- ``edges``: one row per connected ordered pair, sorted by ``(pre, post)``: ``pre`` and ``post`` (int64 row
  positions into ``nodes``), ``synapses`` (int64 > 0, the number of synapses ``pre → post``) and, where
  synapse sizes are known, ``size_sum`` (float64, sum of the synapses' ``size`` in the table's unit).

Self-loops (autapses) are kept unless dropped; the motif statistics ignore them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from connectomix.errors import InputError, NotFoundError

Weight = Literal["synapses", "size_sum"]
#: Label used in cell-type matrices for nodes without a type.
NO_TYPE = "(none)"


def _normalise_ids(values: Any, what: str) -> np.ndarray:
    """Node ids as uint64 (integer input) or str (anything else); InputError for missing or negative ids."""
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        if array.dtype.kind == "i" and array.size and array.min() < 0:
            raise InputError(f"{what}: ids must be non-negative integers, found {int(array.min())}")
        return array.astype(np.uint64)
    if array.dtype.kind == "f":
        if array.size and (~np.isfinite(array) | (array != np.round(array)) | (array < 0)).any():
            raise InputError(f"{what}: ids must be non-negative integers or names, found {array[:3]!r}")
        return array.astype(np.uint64)
    series = pd.Series(array, dtype=object)
    if series.isna().any():
        raise InputError(f"{what}: {int(series.isna().sum())} missing ids")
    return series.astype(str).to_numpy(dtype=object)


@dataclass(frozen=True)
class ConnectivityGraph:
    """A weighted directed graph of cells (see the module docstring for the two tables)."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    name: str = ""

    def __post_init__(self) -> None:
        if "node_id" not in self.nodes.columns:
            raise InputError("graph nodes need a 'node_id' column")
        if not self.nodes["node_id"].is_unique:
            raise InputError("graph node ids must be unique")
        for column in ("pre", "post", "synapses"):
            if column not in self.edges.columns:
                raise InputError(f"graph edges need a {column!r} column")
        n = len(self.nodes)
        pre, post = self.edges["pre"].to_numpy(), self.edges["post"].to_numpy()
        if len(pre) and (min(pre.min(), post.min()) < 0 or max(pre.max(), post.max()) >= n):
            raise InputError(f"edge endpoints must be node positions 0..{n - 1}")
        if len(pre) and (self.edges["synapses"].to_numpy() <= 0).any():
            raise InputError("edge synapse counts must be positive")

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_edges(
        cls,
        pre_ids: Any,
        post_ids: Any,
        synapses: Any = None,
        *,
        size_sum: Any = None,
        nodes: pd.DataFrame | None = None,
        drop_self_loops: bool = False,
        name: str = "",
    ) -> ConnectivityGraph:
        """A graph from parallel arrays of edges (repeated pairs are summed).

        Parameters
        ----------
        pre_ids, post_ids
            Node ids of each edge's pre- and postsynaptic cell (integers or names).
        synapses
            Synapse count of each row (default: 1 per row, i.e. rows are synapses).
        size_sum
            Optional size of each row, summed per pair into ``size_sum``.
        nodes
            Optional node table (``node_id`` plus attributes); every edge endpoint must be in it. Its nodes
            and order are kept; default: the endpoints, sorted.
        drop_self_loops
            Leave out rows with ``pre == post``.
        """
        pre = _normalise_ids(pre_ids, "pre ids")
        post = _normalise_ids(post_ids, "post ids")
        if pre.shape != post.shape or pre.ndim != 1:
            raise InputError(f"pre and post ids must be 1-D and equally long, got {pre.shape}, {post.shape}")
        if (pre.dtype == object) != (post.dtype == object):
            pre, post = pre.astype(str).astype(object), post.astype(str).astype(object)
        counts = np.ones(pre.size, np.int64) if synapses is None else np.asarray(synapses)
        if counts.shape != pre.shape:
            raise InputError(f"synapse counts: expected {pre.size} values, got shape {counts.shape}")
        if counts.size and (counts.dtype.kind not in "iuf" or (counts != np.round(counts)).any()):
            raise InputError("synapse counts must be integers")
        counts = counts.astype(np.int64)
        sizes = None if size_sum is None else np.asarray(size_sum, dtype=np.float64)
        if sizes is not None and sizes.shape != pre.shape:
            raise InputError(f"sizes: expected {pre.size} values, got shape {sizes.shape}")
        keep = counts > 0
        if drop_self_loops:
            keep &= pre != post
        pre, post, counts = pre[keep], post[keep], counts[keep]
        sizes = None if sizes is None else sizes[keep]
        if nodes is None:
            ids = np.unique(np.concatenate([pre, post])) if pre.size else np.zeros(0, pre.dtype)
            node_table = pd.DataFrame({"node_id": ids})
        else:
            node_table = nodes.reset_index(drop=True).copy()
            if "node_id" not in node_table.columns:
                raise InputError("the node table needs a 'node_id' column")
            node_table["node_id"] = _normalise_ids(node_table["node_id"].to_numpy(), "node ids")
        index = pd.Index(node_table["node_id"])
        if not index.is_unique:
            raise InputError("node ids must be unique")
        pre_pos, post_pos = index.get_indexer(pre), index.get_indexer(post)
        missing = (pre_pos < 0) | (post_pos < 0)
        if missing.any():
            first = pre[pre_pos < 0][0] if (pre_pos < 0).any() else post[post_pos < 0][0]
            raise NotFoundError(f"{int(missing.sum())} edges name nodes not in the node table, e.g. {first}")
        return cls(node_table, _aggregate(pre_pos, post_pos, counts, sizes), name)

    @classmethod
    def from_synapses(
        cls, table: pd.DataFrame, *, nodes: pd.DataFrame | None = None, name: str = ""
    ) -> ConnectivityGraph:
        """A graph from a synapse table (``pre_id``, ``post_id``, optional ``size``; see
        :mod:`connectomix.analyze.synapses`). Synapses with an unknown side (id 0) are left out."""
        for column in ("pre_id", "post_id"):
            if column not in table.columns:
                raise InputError(f"synapse table needs a {column!r} column to build a graph")
        known = (table["pre_id"].to_numpy() != 0) & (table["post_id"].to_numpy() != 0)
        sizes = None
        if "size" in table.columns and table["size"].notna().any():
            sizes = table["size"].to_numpy(dtype=np.float64)[known]
        return cls.from_edges(
            table["pre_id"].to_numpy()[known],
            table["post_id"].to_numpy()[known],
            size_sum=None if sizes is None else np.nan_to_num(sizes),
            nodes=nodes,
            name=name,
        )

    # -- properties -----------------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_synapses(self) -> int:
        return int(self.edges["synapses"].sum())

    @property
    def node_ids(self) -> np.ndarray:
        return self.nodes["node_id"].to_numpy()

    def adjacency(self, weight: Weight | None = "synapses") -> sp.csr_array:
        """The ``n × n`` sparse adjacency: ``[pre, post]`` = the edge's ``weight`` (1 if None)."""
        if weight is not None and weight not in self.edges.columns:
            raise InputError(f"edges have no {weight!r} column; available: synapses, size_sum if sizes known")
        data = np.ones(self.n_edges, np.int64) if weight is None else self.edges[weight].to_numpy()
        return sp.csr_array(
            (data, (self.edges["pre"].to_numpy(), self.edges["post"].to_numpy())),
            shape=(self.n_nodes, self.n_nodes),
        )

    def out_degree(self) -> np.ndarray:
        """Number of postsynaptic partners of each node (int64, node order)."""
        return np.bincount(self.edges["pre"].to_numpy(), minlength=self.n_nodes)

    def in_degree(self) -> np.ndarray:
        """Number of presynaptic partners of each node (int64, node order)."""
        return np.bincount(self.edges["post"].to_numpy(), minlength=self.n_nodes)

    def edge_list(self) -> pd.DataFrame:
        """Edges with node ids: ``pre_id``, ``post_id``, ``synapses`` (and ``size_sum``)."""
        ids = self.node_ids
        out = pd.DataFrame(
            {"pre_id": ids[self.edges["pre"].to_numpy()], "post_id": ids[self.edges["post"].to_numpy()]}
        )
        for column in self.edges.columns.drop(["pre", "post"]):
            out[column] = self.edges[column].to_numpy()
        return out

    # -- selections -----------------------------------------------------------------------------------
    def threshold(self, min_synapses: int = 1, *, drop_isolated: bool = False) -> ConnectivityGraph:
        """Keep edges with at least ``min_synapses`` synapses (and, if asked, only nodes still connected)."""
        if not isinstance(min_synapses, int | np.integer) or min_synapses < 1:
            raise InputError(f"minimum synapse count must be a positive integer, got {min_synapses!r}")
        edges = self.edges[self.edges["synapses"].to_numpy() >= min_synapses].reset_index(drop=True)
        graph = ConnectivityGraph(self.nodes, edges, self.name)
        return graph.drop_isolated() if drop_isolated else graph

    def drop_isolated(self) -> ConnectivityGraph:
        """Remove nodes without edges (other than self-loops they might have had: those count)."""
        used = np.zeros(self.n_nodes, bool)
        used[self.edges["pre"].to_numpy()] = True
        used[self.edges["post"].to_numpy()] = True
        return self.subgraph(used)

    def without_self_loops(self) -> ConnectivityGraph:
        keep = self.edges["pre"].to_numpy() != self.edges["post"].to_numpy()
        return ConnectivityGraph(self.nodes, self.edges[keep].reset_index(drop=True), self.name)

    def subgraph(self, keep: np.ndarray | Sequence[Any]) -> ConnectivityGraph:
        """The induced subgraph on ``keep``: a boolean mask over nodes, or a list of node ids."""
        mask = np.asarray(keep)
        if mask.dtype != bool:
            wanted = pd.Index(self.nodes["node_id"]).get_indexer(_normalise_ids(mask, "node ids"))
            if (wanted < 0).any():
                raise NotFoundError(f"{int((wanted < 0).sum())} of the requested nodes are not in the graph")
            mask = np.zeros(self.n_nodes, bool)
            mask[wanted] = True
        if mask.shape != (self.n_nodes,):
            raise InputError(f"node mask must have {self.n_nodes} entries, got shape {mask.shape}")
        new_position = np.cumsum(mask) - 1
        pre, post = self.edges["pre"].to_numpy(), self.edges["post"].to_numpy()
        kept = mask[pre] & mask[post]
        edges = self.edges[kept].reset_index(drop=True)
        edges["pre"] = new_position[pre[kept]]
        edges["post"] = new_position[post[kept]]
        return ConnectivityGraph(self.nodes[mask].reset_index(drop=True), edges, self.name)

    # -- comparisons and conversions ------------------------------------------------------------------
    def equals(self, other: ConnectivityGraph) -> bool:
        """Same nodes (ids, order, attributes with dtypes) and the same edges and weights."""
        return self.nodes.equals(other.nodes) and self.edges.equals(other.edges)

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` keyed by node id with node attributes and edge weights."""
        import networkx as nx

        graph = nx.DiGraph(name=self.name)
        ids = self.node_ids.tolist()
        attributes = self.nodes.drop(columns="node_id")
        for node, row in zip(ids, attributes.to_dict("records"), strict=True):
            graph.add_node(node, **{k: v for k, v in row.items() if not is_missing(v)})
        weights = self.edges.drop(columns=["pre", "post"]).to_dict("records")
        for p, q, w in zip(self.edges["pre"].tolist(), self.edges["post"].tolist(), weights, strict=True):
            graph.add_edge(ids[p], ids[q], **w)
        return graph

    def describe(self) -> dict[str, Any]:
        """Counts for reports and JSON: nodes, edges, synapses, self-loops."""
        loops = int((self.edges["pre"].to_numpy() == self.edges["post"].to_numpy()).sum())
        return {
            "name": self.name,
            "nodes": self.n_nodes,
            "edges": self.n_edges,
            "synapses": self.n_synapses,
            "self_loops": loops,
        }


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _aggregate(
    pre: np.ndarray, post: np.ndarray, counts: np.ndarray, sizes: np.ndarray | None
) -> pd.DataFrame:
    """Edge table summed over repeated ``(pre, post)`` positions, sorted."""
    n = int(max(pre.max(), post.max())) + 1 if pre.size else 1
    keys, inverse = np.unique(pre.astype(np.int64) * n + post, return_inverse=True)
    table = pd.DataFrame(
        {
            "pre": keys // n,
            "post": keys % n,
            "synapses": np.bincount(inverse, weights=counts, minlength=keys.size).astype(np.int64),
        }
    )
    if sizes is not None:
        table["size_sum"] = np.bincount(inverse, weights=sizes, minlength=keys.size)
    return table


def cell_type_matrix(
    graph: ConnectivityGraph,
    attribute: str = "cell_type",
    *,
    weight: Weight | None = "synapses",
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Cell type × cell type connectivity: the summed ``weight`` (edge count if None) from each presynaptic
    type (rows) to each postsynaptic type (columns). Nodes without a type count as ``(none)``.

    ``order``: the types in the order wanted (default: sorted); types not listed are left out.
    """
    if attribute not in graph.nodes.columns:
        raise InputError(f"nodes have no {attribute!r} attribute; available: {list(graph.nodes.columns)}")
    labels = graph.nodes[attribute].astype(object).where(graph.nodes[attribute].notna(), NO_TYPE)
    labels = labels.astype(str).to_numpy()
    types = sorted(set(labels)) if order is None else [str(t) for t in order]
    code = pd.Index(types).get_indexer(labels)
    pre, post = graph.edges["pre"].to_numpy(), graph.edges["post"].to_numpy()
    values = np.ones(graph.n_edges) if weight is None else graph.edges[weight].to_numpy(dtype=np.float64)
    keep = (code[pre] >= 0) & (code[post] >= 0)
    matrix = np.zeros((len(types), len(types)))
    np.add.at(matrix, (code[pre][keep], code[post][keep]), values[keep])
    frame = pd.DataFrame(matrix, index=pd.Index(types, name="pre"), columns=pd.Index(types, name="post"))
    return frame.astype(np.int64) if weight in (None, "synapses") else frame


__all__ = ["NO_TYPE", "ConnectivityGraph", "Weight", "cell_type_matrix"]
