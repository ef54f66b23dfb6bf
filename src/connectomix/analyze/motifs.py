"""Dyad and triad census of a directed graph, by vectorised counting over pairs of edges.

The 16 triad classes are Holland & Leinhardt's ``MAN`` names (counts of Mutual, Asymmetric and Null dyads,
plus a letter for the shape), in the order :data:`TRIAD_NAMES` that ``networkx.triadic_census`` uses:

- ``021D``: 1 ← 2 → 3; ``021U``: 1 → 2 ← 3; ``021C``: 1 → 2 → 3
- ``111D``: 1 ↔ 2 ← 3; ``111U``: 1 ↔ 2 → 3
- ``030T``: 1 → 2 ← 3, 1 → 3; ``030C``: 1 ← 2 ← 3, 1 → 3
- ``120D``: 1 ← 2 → 3, 1 ↔ 3; ``120U``: 1 → 2 ← 3, 1 ↔ 3; ``120C``: 1 → 2 → 3, 1 ↔ 3

Method (in the spirit of Batagelj & Mrvar's subquadratic census, but with numpy instead of a loop over
nodes): every triad with two or three connected pairs is a *wedge* — a centre node ``v`` with two
neighbours ``u < w`` — seen once per centre it has. All wedges of a block of centres are enumerated at once
as index arrays from the undirected CSR structure; the link between ``u`` and ``w`` is found by a binary
search in the sorted pair keys, and a 4×4×4 lookup table gives the triad class from the three dyad codes.
Open wedges are counted once, closed ones (triangles) three times. Triads with one connected pair come from
the degrees and the number of common neighbours of each pair (the closed wedges over it), and ``003`` is
what is left of ``C(n, 3)``. Memory is bounded by enumerating at most ``max_wedges`` wedges at a time.
Self-loops and edge weights are ignored (a census is of the binary graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np
import scipy.sparse as sp

from connectomix.errors import InputError

#: The 16 triad classes, in networkx's order.
TRIAD_NAMES: tuple[str, ...] = (
    "003",
    "012",
    "102",
    "021D",
    "021U",
    "021C",
    "111D",
    "111U",
    "030T",
    "030C",
    "201",
    "120D",
    "120U",
    "120C",
    "210",
    "300",
)
_INDEX = {name: i for i, name in enumerate(TRIAD_NAMES)}
#: Classes whose three pairs are all connected (triangles).
CLOSED = frozenset({"030T", "030C", "120D", "120U", "120C", "210", "300"})

#: Default bound on the wedges held in memory at once (each costs ~50 bytes of temporaries).
MAX_WEDGES = 1_000_000


@dataclass(frozen=True, slots=True)
class BinaryDigraph:
    """A simple directed graph as sorted unique edge arrays: ``n`` nodes ``0..n-1``, edges ``src → dst``,
    no self-loops, no repeated edges, sorted by ``(src, dst)``."""

    n: int
    src: np.ndarray
    dst: np.ndarray

    @property
    def n_edges(self) -> int:
        return int(self.src.size)

    def keys(self) -> np.ndarray:
        """Edge keys ``src * n + dst`` (int64, sorted)."""
        return self.src * np.int64(self.n) + self.dst

    def to_sparse(self) -> sp.csr_array:
        data = np.ones(self.src.size, np.int8)
        return sp.csr_array((data, (self.src, self.dst)), shape=(self.n, self.n))

    @classmethod
    def from_arrays(cls, n: int, src: np.ndarray, dst: np.ndarray) -> BinaryDigraph:
        """Drop self-loops and repeats, sort. ``src``/``dst`` are node indices in ``0..n-1``."""
        src = np.asarray(src, dtype=np.int64).ravel()
        dst = np.asarray(dst, dtype=np.int64).ravel()
        if src.shape != dst.shape:
            raise InputError(f"edge arrays differ in length: {src.size} sources, {dst.size} targets")
        n = int(n)
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
            raise InputError(f"edge endpoints must be node indices 0..{n - 1}")
        keep = src != dst
        keys = np.unique(src[keep] * np.int64(n) + dst[keep])
        return cls(n, keys // n, keys % n)


def as_digraph(graph: Any) -> BinaryDigraph:
    """A :class:`BinaryDigraph` from a :class:`~connectomix.analyze.graph.ConnectivityGraph`, a square scipy
    sparse matrix / numpy array (entry ``[i, j] != 0`` means an edge ``i → j``), a ``networkx.DiGraph``
    (nodes in iteration order) or a ``BinaryDigraph``."""
    if isinstance(graph, BinaryDigraph):
        return graph
    edges = getattr(graph, "edges", None)
    if hasattr(graph, "n_nodes") and edges is not None and hasattr(edges, "columns"):
        return BinaryDigraph.from_arrays(graph.n_nodes, edges["pre"].to_numpy(), edges["post"].to_numpy())
    if hasattr(graph, "is_directed") and hasattr(graph, "nodes"):
        if not graph.is_directed():
            raise InputError("a triad census needs a directed graph; got an undirected networkx graph")
        index = {node: i for i, node in enumerate(graph.nodes)}
        pairs = np.array([(index[a], index[b]) for a, b in graph.edges], dtype=np.int64).reshape(-1, 2)
        return BinaryDigraph.from_arrays(len(index), pairs[:, 0], pairs[:, 1])
    if sp.issparse(graph) or isinstance(graph, np.ndarray):
        if graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
            raise InputError(f"an adjacency matrix must be square, got shape {graph.shape}")
        coo = sp.coo_array(graph)
        nonzero = coo.data != 0
        return BinaryDigraph.from_arrays(coo.shape[0], coo.row[nonzero], coo.col[nonzero])
    raise InputError(
        f"expected a ConnectivityGraph, an adjacency matrix or a networkx DiGraph, got {type(graph).__name__}"
    )


# -- dyads ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DyadCensus:
    """Counts of node pairs by their links: ``mutual`` (both directions), ``asymmetric`` (one), ``null``."""

    mutual: int
    asymmetric: int
    null: int

    @property
    def reciprocity(self) -> float:
        """Fraction of edges whose reverse edge exists, ``2 M / (2 M + A)`` (NaN for an empty graph)."""
        edges = 2 * self.mutual + self.asymmetric
        return 2 * self.mutual / edges if edges else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "mutual": self.mutual,
            "asymmetric": self.asymmetric,
            "null": self.null,
            "reciprocity": self.reciprocity,
        }


def dyad_census(graph: Any) -> DyadCensus:
    """Mutual, asymmetric and null dyads of a directed graph (self-loops and weights ignored)."""
    g = as_digraph(graph)
    pair_keys, pair_codes = _pairs(g)
    mutual = int(np.count_nonzero(pair_codes == 3))
    asym = int(pair_keys.size - mutual)
    return DyadCensus(mutual, asym, comb(g.n, 2) - mutual - asym)


# -- triads -----------------------------------------------------------------------------------------------
def _triad_name(adj: np.ndarray) -> str:
    """MAN name of a 3-node digraph given as a 3×3 0/1 matrix (``adj[i, j]``: edge ``i → j``)."""
    a = adj.astype(bool) & ~np.eye(3, dtype=bool)
    mutual = a & a.T
    asym = a & ~a.T
    m = int(mutual.sum()) // 2
    n_asym = int(asym.sum())
    man = f"{m}{n_asym}{3 - m - n_asym}"
    out_deg, in_deg = asym.sum(axis=1), asym.sum(axis=0)
    if man in ("021", "120"):
        if man == "120":  # the node outside the mutual pair decides
            z = int(np.flatnonzero(mutual.sum(axis=1) == 0)[0])
            return man + ("D" if out_deg[z] == 2 else "U" if in_deg[z] == 2 else "C")
        return man + ("D" if out_deg.max() == 2 else "U" if in_deg.max() == 2 else "C")
    if man == "111":
        receiver = int(np.flatnonzero(in_deg == 1)[0])
        return man + ("D" if mutual[receiver].any() else "U")
    if man == "030":
        return man + ("C" if (out_deg == 1).all() else "T")
    return man


def _wedge_table() -> np.ndarray:
    """Class index for (code v–u, code v–w, code u–w), each 0..3 (bit 1: first → second, bit 2: back).

    Nodes are ``v`` (centre) = 0, ``u`` = 1, ``w`` = 2. Combinations that cannot occur map to -1."""
    table = np.full((4, 4, 4), -1, dtype=np.int64)
    pairs = ((0, 1), (0, 2), (1, 2))
    for codes in np.ndindex(4, 4, 4):
        if codes[0] == 0 or codes[1] == 0:
            continue
        adj = np.zeros((3, 3), dtype=np.int8)
        for (i, j), code in zip(pairs, codes, strict=True):
            adj[i, j], adj[j, i] = code & 1, (code >> 1) & 1
        table[codes] = _INDEX[_triad_name(adj)]
    return table


_WEDGE_CLASS = _wedge_table()
_CLOSED_MASK = np.array([name in CLOSED for name in TRIAD_NAMES])


def _pairs(g: BinaryDigraph) -> tuple[np.ndarray, np.ndarray]:
    """Connected pairs ``lo < hi`` as sorted keys ``lo * n + hi`` and their codes (1: lo → hi, 2: hi → lo,
    3: both)."""
    lo, hi = np.minimum(g.src, g.dst), np.maximum(g.src, g.dst)
    bits = np.where(g.src < g.dst, 1, 2).astype(np.int8)
    keys, inverse = np.unique(lo * np.int64(g.n) + hi, return_inverse=True)
    codes = np.zeros(keys.size, np.int8)
    np.add.at(codes, inverse, bits)  # each direction occurs at most once, so the sum is the bit-or
    return keys, codes


def _undirected_csr(
    n: int, pair_keys: np.ndarray, pair_codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (indptr, neighbour, code seen from the row node) of the undirected graph; rows sorted."""
    lo, hi = pair_keys // n, pair_keys % n
    swapped = np.array([0, 2, 1, 3], np.int8)[pair_codes]
    rows = np.concatenate([lo, hi])
    cols = np.concatenate([hi, lo])
    codes = np.concatenate([pair_codes, swapped])
    order = np.argsort(rows * np.int64(n) + cols, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order], codes[order]


def _wedge_blocks(indptr: np.ndarray, max_wedges: int) -> list[tuple[int, int]]:
    """Ranges of centre nodes whose wedges number at most ``max_wedges`` (a single centre may exceed it)."""
    degree = np.diff(indptr)
    wedges = np.cumsum(degree * (degree - 1) // 2)
    blocks, start, done = [], 0, 0
    n = degree.size
    while start < n:
        stop = int(np.searchsorted(wedges, done + max_wedges, side="right"))
        stop = max(stop, start + 1)
        blocks.append((start, min(stop, n)))
        done = int(wedges[min(stop, n) - 1])
        start = stop
    return blocks


def triad_census(graph: Any, *, max_wedges: int = MAX_WEDGES) -> dict[str, int]:
    """The 16-class triad census of a directed graph (self-loops and weights ignored).

    Parameters
    ----------
    graph
        A :class:`~connectomix.analyze.graph.ConnectivityGraph`, a square adjacency matrix (scipy sparse or
        numpy; ``[i, j] != 0`` is an edge ``i → j``), a ``networkx.DiGraph`` or a :class:`BinaryDigraph`.
    max_wedges
        Most wedges (pairs of edges at a centre node) enumerated at once; bounds memory.

    Returns
    -------
    dict
        Count per class name, in :data:`TRIAD_NAMES` order; the counts add up to ``C(n, 3)``. Equal to
        ``networkx.triadic_census`` on the same graph.
    """
    g = as_digraph(graph)
    n = g.n
    pair_keys, pair_codes = _pairs(g)
    counts = np.zeros(len(TRIAD_NAMES), np.int64)
    closing = np.zeros(pair_keys.size, np.int64)  # wedges closed by each pair = its common neighbours
    if pair_keys.size:
        indptr, neighbours, codes = _undirected_csr(n, pair_keys, pair_codes)
        for first_centre, stop_centre in _wedge_blocks(indptr, max(1, int(max_wedges))):
            _count_wedges(
                indptr, neighbours, codes, (first_centre, stop_centre), pair_keys, pair_codes, counts, closing
            )
    closed = counts[_CLOSED_MASK]
    if np.any(closed % 3):
        raise AssertionError("triangle counts not divisible by 3: internal error in the census")
    counts[_CLOSED_MASK] = closed // 3
    # one connected pair: third nodes adjacent to neither end = n - deg(lo) - deg(hi) + common neighbours
    if pair_keys.size:
        degree = np.bincount(np.concatenate([pair_keys // n, pair_keys % n]), minlength=n)
        alone = n - degree[pair_keys // n] - degree[pair_keys % n] + closing
        counts[_INDEX["102"]] = int(alone[pair_codes == 3].sum())
        counts[_INDEX["012"]] = int(alone[pair_codes != 3].sum())
    census = {name: int(c) for name, c in zip(TRIAD_NAMES, counts, strict=True)}
    census["003"] = comb(n, 3) - sum(census.values())
    return census


def _count_wedges(
    indptr: np.ndarray,
    neighbours: np.ndarray,
    codes: np.ndarray,
    centres: tuple[int, int],
    pair_keys: np.ndarray,
    pair_codes: np.ndarray,
    counts: np.ndarray,
    closing: np.ndarray,
) -> None:
    """Add the classes of all wedges centred on ``centres[0] .. centres[1]-1`` to ``counts``."""
    n = indptr.size - 1
    lo_entry, hi_entry = int(indptr[centres[0]]), int(indptr[centres[1]])
    entries = np.arange(lo_entry, hi_entry, dtype=np.int64)
    if entries.size < 2:
        return
    row_end = np.repeat(indptr[centres[0] + 1 : centres[1] + 1], np.diff(indptr[centres[0] : centres[1] + 1]))
    later = row_end - entries - 1  # partners after each entry in the same row
    total = int(later.sum())
    if total == 0:
        return
    first = np.repeat(entries, later)
    group_start = np.repeat(np.cumsum(later) - later, later)
    second = first + 1 + (np.arange(total, dtype=np.int64) - group_start)
    u, w = neighbours[first], neighbours[second]  # u < w: rows are sorted
    key = u * np.int64(n) + w
    position = np.searchsorted(pair_keys, key)
    position[position == pair_keys.size] = 0
    linked = pair_keys[position] == key
    link = np.where(linked, pair_codes[position], 0)
    classes = _WEDGE_CLASS[codes[first], codes[second], link]
    counts += np.bincount(classes, minlength=counts.size)
    closing += np.bincount(position[linked], minlength=closing.size)


def census_vector(census: dict[str, int]) -> np.ndarray:
    """A census dict as an int64 vector in :data:`TRIAD_NAMES` order."""
    return np.array([census[name] for name in TRIAD_NAMES], dtype=np.int64)


__all__ = [
    "CLOSED",
    "TRIAD_NAMES",
    "BinaryDigraph",
    "DyadCensus",
    "as_digraph",
    "census_vector",
    "dyad_census",
    "triad_census",
]
