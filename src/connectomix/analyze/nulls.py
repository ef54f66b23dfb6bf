"""Null models of a directed graph: random graphs that keep some of its statistics exactly.

- :func:`erdos_renyi`: same number of nodes and of edges, edges drawn uniformly (directed G(n, m), no
  self-loops, no repeated edges).
- :func:`degree_preserving`: directed edge swaps ``a→b, c→d ⇒ a→d, c→b`` (Maslov & Sneppen 2002; Milo et al.
  2002), which keep every node's in- and out-degree; swaps that would make a self-loop or an existing edge
  are rejected.
- :func:`reciprocity_preserving`: the same swaps among asymmetric edges only, and undirected swaps
  ``{a,b}, {c,d} ⇒ {a,d}, {c,b}`` among mutual pairs only; a swap is rejected if any new link already
  exists in either direction. This keeps every node's in- and out-degree, its number of mutual partners and
  so the number of reciprocal pairs.

Swaps are proposed in vectorised batches (about an eighth of the edges at a time): a batch keeps only the
proposals whose edges no other proposal of the batch touches and whose new edges are neither in the graph
nor made twice, so the accepted swaps are valid applied in any order. ``swaps_per_edge`` counts proposals
(attempted swaps) per edge; the swap functions also return how many were proposed and accepted
(:class:`SwapStats`). Everything is deterministic in ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from connectomix.analyze.motifs import BinaryDigraph
from connectomix.errors import InputError

NullModel = Literal["erdos-renyi", "degree", "reciprocity"]
NULL_MODELS: tuple[str, ...] = ("erdos-renyi", "degree", "reciprocity")
#: Proposals per batch, as a fraction of the edges being swapped.
BATCH_FRACTION = 0.125


@dataclass(frozen=True, slots=True)
class SwapStats:
    """Proposed and accepted swaps of one randomisation."""

    proposed: int
    accepted: int


def erdos_renyi(graph: BinaryDigraph, rng: np.random.Generator) -> BinaryDigraph:
    """A uniformly random directed graph with ``graph``'s node and edge counts (no self-loops)."""
    n, m = graph.n, graph.n_edges
    slots = n * (n - 1)
    if m > slots:
        raise InputError(f"{m} edges do not fit in a simple directed graph of {n} nodes")
    keys = rng.choice(slots, size=m, replace=False) if m else np.zeros(0, np.int64)
    src = keys // max(n - 1, 1)
    offset = keys % max(n - 1, 1)
    dst = offset + (offset >= src)  # skip the diagonal
    return BinaryDigraph.from_arrays(n, src, dst)


def _check_swaps(swaps_per_edge: float) -> float:
    value = float(swaps_per_edge)
    if not np.isfinite(value) or value < 0:
        raise InputError(f"swaps per edge must be a non-negative number, got {swaps_per_edge!r}")
    return value


def _in_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, bool)
    position = np.searchsorted(sorted_keys, keys)
    position[position == sorted_keys.size] = 0
    return sorted_keys[position] == keys


def _lonely(items: np.ndarray, size: int) -> np.ndarray:
    """For each of ``items`` (ints < ``size``): whether it occurs exactly once."""
    return np.bincount(items, minlength=size)[items] == 1


def _unique_once(keys: np.ndarray) -> np.ndarray:
    """For each of ``keys`` (any ints): whether it occurs exactly once."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def _batches(m: int, swaps_per_edge: float) -> list[int]:
    """Proposals per batch, adding up to ``round(swaps_per_edge * m)`` (none for fewer than 2 edges)."""
    total = round(swaps_per_edge * m)
    if m < 2 or total == 0:
        return []
    per_batch = max(1, min(total, round(BATCH_FRACTION * m)))
    sizes = [per_batch] * (total // per_batch)
    return [*sizes, total % per_batch] if total % per_batch else sizes


def _directed_swap_round(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    forbidden: np.ndarray,
    proposals: int,
    rng: np.random.Generator,
    *,
    both_directions: bool,
) -> int:
    """One batch of directed swaps on ``src→dst`` in place; returns the accepted count.

    ``forbidden`` (sorted keys): edges a new edge may not equal (or, with ``both_directions``, reverse)."""
    m = src.size
    e1, e2 = rng.integers(0, m, proposals), rng.integers(0, m, proposals)
    ok = _lonely(np.concatenate([e1, e2]), m).reshape(2, -1).all(axis=0)
    a, b, c, d = src[e1], dst[e1], src[e2], dst[e2]
    ok &= (a != d) & (c != b)
    new1, new2 = a * np.int64(n) + d, c * np.int64(n) + b
    bad = _in_sorted(forbidden, new1) | _in_sorted(forbidden, new2)
    if both_directions:
        bad |= _in_sorted(forbidden, d * np.int64(n) + a) | _in_sorted(forbidden, b * np.int64(n) + c)
    ok &= ~bad
    e1, e2, new1, new2 = e1[ok], e2[ok], new1[ok], new2[ok]
    if both_directions:  # a new pair made twice in the same batch, in either direction
        pair1 = np.minimum(new1 // n, new1 % n) * np.int64(n) + np.maximum(new1 // n, new1 % n)
        pair2 = np.minimum(new2 // n, new2 % n) * np.int64(n) + np.maximum(new2 // n, new2 % n)
        once = _unique_once(np.concatenate([pair1, pair2])).reshape(2, -1).all(axis=0)
    else:
        once = _unique_once(np.concatenate([new1, new2])).reshape(2, -1).all(axis=0)
    e1, e2 = e1[once], e2[once]
    dst[e1], dst[e2] = dst[e2], dst[e1].copy()
    return int(e1.size)


def degree_preserving(
    graph: BinaryDigraph, rng: np.random.Generator, *, swaps_per_edge: float = 10.0
) -> tuple[BinaryDigraph, SwapStats]:
    """Randomise by directed edge swaps, keeping each node's in- and out-degree exactly.

    Returns the new graph and the proposed/accepted swap counts (``swaps_per_edge × edges`` proposals).
    """
    swaps = _check_swaps(swaps_per_edge)
    n, src, dst = graph.n, graph.src.copy(), graph.dst.copy()
    batches = _batches(src.size, swaps)
    accepted = 0
    for proposals in batches:
        keys = np.sort(src * np.int64(n) + dst)
        accepted += _directed_swap_round(src, dst, n, keys, proposals, rng, both_directions=False)
    return BinaryDigraph.from_arrays(n, src, dst), SwapStats(sum(batches), accepted)


def _mutual_swap_round(
    lo: np.ndarray, hi: np.ndarray, n: int, forbidden: np.ndarray, proposals: int, rng: np.random.Generator
) -> int:
    """One batch of undirected swaps among mutual pairs ``{lo, hi}`` in place; returns the accepted count."""
    m = lo.size
    e1, e2 = rng.integers(0, m, proposals), rng.integers(0, m, proposals)
    ok = _lonely(np.concatenate([e1, e2]), m).reshape(2, -1).all(axis=0)
    flip = rng.random(proposals) < 0.5  # which end of the second pair goes with which end of the first
    a, b = lo[e1], hi[e1]
    c = np.where(flip, hi[e2], lo[e2])
    d = np.where(flip, lo[e2], hi[e2])
    ok &= (a != d) & (c != b)
    links = [(a, d), (d, a), (c, b), (b, c)]
    for x, y in links:
        ok &= ~_in_sorted(forbidden, x * np.int64(n) + y)
    p1 = np.minimum(a, d) * np.int64(n) + np.maximum(a, d)
    p2 = np.minimum(c, b) * np.int64(n) + np.maximum(c, b)
    idx = np.flatnonzero(ok)
    once = _unique_once(np.concatenate([p1[idx], p2[idx]])).reshape(2, -1).all(axis=0)
    idx = idx[once]
    e1, e2 = e1[idx], e2[idx]
    a, b, c, d = a[idx], b[idx], c[idx], d[idx]
    lo[e1], hi[e1] = np.minimum(a, d), np.maximum(a, d)
    lo[e2], hi[e2] = np.minimum(c, b), np.maximum(c, b)
    return int(idx.size)


def split_reciprocal(graph: BinaryDigraph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(asym_src, asym_dst, mutual_lo, mutual_hi)``: the edges without a reverse, and the mutual pairs."""
    keys = graph.keys()
    reverse = graph.dst * np.int64(graph.n) + graph.src
    mutual = _in_sorted(keys, reverse)
    first = mutual & (graph.src < graph.dst)
    return graph.src[~mutual], graph.dst[~mutual], graph.src[first], graph.dst[first]


def reciprocity_preserving(
    graph: BinaryDigraph, rng: np.random.Generator, *, swaps_per_edge: float = 10.0
) -> tuple[BinaryDigraph, SwapStats]:
    """Randomise keeping in/out-degrees, mutual degrees and the number of reciprocal pairs exactly.

    Asymmetric edges are swapped among themselves (``swaps_per_edge ×`` their number of proposals) and mutual
    pairs among themselves (``swaps_per_edge ×`` the number of pairs), in alternating batches.
    """
    swaps = _check_swaps(swaps_per_edge)
    n = graph.n
    a_src, a_dst, m_lo, m_hi = (x.copy() for x in split_reciprocal(graph))
    asym_batches, mutual_batches = _batches(a_src.size, swaps), _batches(m_lo.size, swaps)
    accepted = 0
    for i in range(max(len(asym_batches), len(mutual_batches))):
        for kind, batches in (("asym", asym_batches), ("mutual", mutual_batches)):
            if i >= len(batches):
                continue
            everything = np.sort(
                np.concatenate(
                    [a_src * np.int64(n) + a_dst, m_lo * np.int64(n) + m_hi, m_hi * np.int64(n) + m_lo]
                )
            )
            if kind == "asym":
                accepted += _directed_swap_round(
                    a_src, a_dst, n, everything, batches[i], rng, both_directions=True
                )
            else:
                accepted += _mutual_swap_round(m_lo, m_hi, n, everything, batches[i], rng)
    src = np.concatenate([a_src, m_lo, m_hi])
    dst = np.concatenate([a_dst, m_hi, m_lo])
    proposed = sum(asym_batches) + sum(mutual_batches)
    return BinaryDigraph.from_arrays(n, src, dst), SwapStats(proposed, accepted)


def randomise(
    graph: BinaryDigraph, null: str, rng: np.random.Generator, *, swaps_per_edge: float = 10.0
) -> BinaryDigraph:
    """One random graph from null model ``null`` (``erdos-renyi``, ``degree`` or ``reciprocity``)."""
    if null == "erdos-renyi":
        return erdos_renyi(graph, rng)
    if null == "degree":
        return degree_preserving(graph, rng, swaps_per_edge=swaps_per_edge)[0]
    if null == "reciprocity":
        return reciprocity_preserving(graph, rng, swaps_per_edge=swaps_per_edge)[0]
    raise InputError(f"null model must be one of {', '.join(NULL_MODELS)}, got {null!r}")


__all__ = [
    "NULL_MODELS",
    "NullModel",
    "SwapStats",
    "degree_preserving",
    "erdos_renyi",
    "randomise",
    "reciprocity_preserving",
    "split_reciprocal",
]
