"""Significance of dyad and triad counts against a null model: z-scores and empirical p-values.

Each of the ``N`` randomisations gets its own seed, ``SeedSequence(seed).spawn(N)[i]``, and the
randomisations are sent to the executor in fixed chunks of consecutive indices. So the null samples, and
every statistic from them, are the same whatever the executor (in-process, a thread or process pool, a Dask
``Client.get_executor()``), the number of workers or the chunk size.

Statistics (per triad class, and for the number of mutual dyads):

- ``z = (observed - mean) / std``, the standard deviation with ``ddof=1``; ``None`` when the null samples
  do not vary (the count is fixed by the null model, or ``N < 2``).
- ``p_greater = (1 + #{null ≥ observed}) / (N + 1)`` and ``p_less = (1 + #{null ≤ observed}) / (N + 1)``:
  one-sided empirical p-values with the usual +1 correction (never 0 from a finite sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectomix.analyze.motifs import TRIAD_NAMES, BinaryDigraph, as_digraph, census_vector, triad_census
from connectomix.analyze.nulls import NULL_MODELS, randomise, split_reciprocal
from connectomix.errors import InputError
from connectomix.progress import track

#: Randomisations per task sent to the executor.
CHUNK_SIZE = 10
#: The statistics computed per randomisation: the 16 triad classes and the number of mutual dyads.
STATISTICS: tuple[str, ...] = (*TRIAD_NAMES, "mutual_dyads")


def _statistics(graph: BinaryDigraph) -> np.ndarray:
    mutual = split_reciprocal(graph)[2].size
    return np.append(census_vector(triad_census(graph)), mutual)


def null_samples_chunk(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    null: str,
    swaps_per_edge: float,
    seeds: Sequence[np.random.SeedSequence],
) -> np.ndarray:
    """Statistics (rows: one per seed; columns: :data:`STATISTICS`) of one randomisation per seed.

    A module-level function of plain arguments, so that process pools and Dask workers can run it."""
    graph = BinaryDigraph(n, src, dst)
    rows = [
        _statistics(randomise(graph, null, np.random.default_rng(s), swaps_per_edge=swaps_per_edge))
        for s in seeds
    ]
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(STATISTICS))


@dataclass
class MotifSignificance:
    """Observed counts, null-model statistics and the raw null samples (``samples[i, j]``: randomisation
    ``i``, statistic ``STATISTICS[j]``)."""

    observed: dict[str, int]
    null: str
    randomizations: int
    seed: int
    swaps_per_edge: float
    samples: np.ndarray = field(repr=False)

    def _column(self, name: str) -> np.ndarray:
        return self.samples[:, STATISTICS.index(name)].astype(np.float64)

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(self._column(k).mean()) if self.randomizations else float("nan") for k in STATISTICS}

    @property
    def std(self) -> dict[str, float]:
        return {
            k: float(self._column(k).std(ddof=1)) if self.randomizations > 1 else float("nan")
            for k in STATISTICS
        }

    @property
    def zscores(self) -> dict[str, float | None]:
        """``(observed - mean) / std`` per statistic; ``None`` where the null samples do not vary."""
        mean, std = self.mean, self.std
        return {
            k: (self.observed[k] - mean[k]) / std[k] if np.isfinite(std[k]) and std[k] > 0 else None
            for k in STATISTICS
        }

    @property
    def p_greater(self) -> dict[str, float]:
        """Empirical P(null ≥ observed), ``(1 + count) / (N + 1)``."""
        n = self.randomizations
        return {k: float((1 + np.sum(self._column(k) >= self.observed[k])) / (n + 1)) for k in STATISTICS}

    @property
    def p_less(self) -> dict[str, float]:
        """Empirical P(null ≤ observed), ``(1 + count) / (N + 1)``."""
        n = self.randomizations
        return {k: float((1 + np.sum(self._column(k) <= self.observed[k])) / (n + 1)) for k in STATISTICS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: census and z-scores keyed by the triad names, plus the dyad statistics."""
        z, mean, std = self.zscores, self.mean, self.std

        def finite(value: float) -> float | None:
            return value if np.isfinite(value) else None

        return {
            "null_model": self.null,
            "randomizations": self.randomizations,
            "seed": self.seed,
            "swaps_per_edge": self.swaps_per_edge,
            "census": {k: self.observed[k] for k in TRIAD_NAMES},
            "zscores": {k: z[k] for k in TRIAD_NAMES},
            "null_mean": {k: finite(mean[k]) for k in TRIAD_NAMES},
            "null_std": {k: finite(std[k]) for k in TRIAD_NAMES},
            "p_greater": {k: self.p_greater[k] for k in TRIAD_NAMES},
            "p_less": {k: self.p_less[k] for k in TRIAD_NAMES},
            "mutual_dyads": {
                "observed": self.observed["mutual_dyads"],
                "null_mean": finite(mean["mutual_dyads"]),
                "null_std": finite(std["mutual_dyads"]),
                "zscore": z["mutual_dyads"],
            },
        }


def motif_significance(
    graph: Any,
    *,
    null: str = "degree",
    randomizations: int = 100,
    seed: int = 0,
    swaps_per_edge: float = 10.0,
    executor: Executor | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = False,
) -> MotifSignificance:
    """Triad census and mutual-dyad count of ``graph`` against ``randomizations`` samples of a null model.

    Parameters
    ----------
    graph
        Anything :func:`~connectomix.analyze.motifs.as_digraph` takes (weights and self-loops ignored).
    null
        ``erdos-renyi``, ``degree`` (directed edge swaps) or ``reciprocity`` (swaps that also keep the
        reciprocal pairs); see :mod:`connectomix.analyze.nulls`.
    randomizations
        Number of random graphs ``N``.
    seed
        Root seed; the same seed gives the same samples on every executor.
    swaps_per_edge
        Proposed swaps per edge for the swap-based null models.
    executor
        Where the chunks run (any :class:`concurrent.futures.Executor`, e.g. a Dask client's
        ``get_executor()``); default: in this process, one chunk after another.
    chunk_size
        Randomisations per submitted task (does not change the result).
    progress
        Show a progress bar over the chunks on a terminal.
    """
    if null not in NULL_MODELS:
        raise InputError(f"null model must be one of {', '.join(NULL_MODELS)}, got {null!r}")
    if not isinstance(randomizations, int | np.integer) or randomizations < 0:
        raise InputError(f"randomizations must be a non-negative integer, got {randomizations!r}")
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise InputError(f"chunk size must be a positive integer, got {chunk_size!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    g = as_digraph(graph)
    observed_vector = _statistics(g)
    observed = {k: int(v) for k, v in zip(STATISTICS, observed_vector, strict=True)}
    seeds = np.random.SeedSequence(int(seed)).spawn(int(randomizations))
    chunks = [seeds[i : i + chunk_size] for i in range(0, len(seeds), chunk_size)]
    samples = np.zeros((len(seeds), len(STATISTICS)), np.int64)
    args = (g.n, g.src, g.dst, null, float(swaps_per_edge))
    if executor is None:
        for index, chunk in track(list(enumerate(chunks)), "randomisations", enabled=progress):
            start = index * chunk_size
            samples[start : start + len(chunk)] = null_samples_chunk(*args, chunk)
    else:
        futures: dict[Future[np.ndarray], int] = {
            executor.submit(null_samples_chunk, *args, chunk): i for i, chunk in enumerate(chunks)
        }
        for future in track(as_completed(futures), "randomisations", total=len(futures), enabled=progress):
            start = futures[future] * chunk_size
            result = future.result()
            samples[start : start + result.shape[0]] = result
    return MotifSignificance(observed, null, int(randomizations), int(seed), float(swaps_per_edge), samples)


__all__ = ["CHUNK_SIZE", "STATISTICS", "MotifSignificance", "motif_significance", "null_samples_chunk"]
