"""Motif significance: the statistics' definitions, and the same samples on every executor and chunking."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from connectomix.analyze.datasets import load_dataset
from connectomix.analyze.motifs import TRIAD_NAMES, triad_census
from connectomix.analyze.significance import STATISTICS, motif_significance
from connectomix.errors import InputError


@pytest.fixture(scope="module")
def worm(testdata):
    return load_dataset("celegans-varshney")


def test_statistics_follow_their_definitions(worm) -> None:
    result = motif_significance(worm, null="degree", randomizations=30, seed=3)
    assert result.samples.shape == (30, len(STATISTICS))
    assert result.observed == {**triad_census(worm), "mutual_dyads": 233}
    column = result.samples[:, TRIAD_NAMES.index("030C")].astype(float)
    observed = result.observed["030C"]
    assert result.zscores["030C"] == pytest.approx((observed - column.mean()) / column.std(ddof=1))
    assert result.p_greater["030C"] == pytest.approx((1 + np.sum(column >= observed)) / 31)
    assert result.p_less["030C"] == pytest.approx((1 + np.sum(column <= observed)) / 31)
    # degree-preserving randomisation keeps the edge count, so each sample's census adds up to C(n, 3)
    assert (result.samples[:, :16].sum(axis=1) == sum(result.observed[k] for k in TRIAD_NAMES)).all()
    payload = result.to_dict()
    assert list(payload["census"]) == list(TRIAD_NAMES) == list(payload["zscores"])
    # C. elegans is far more reciprocal than its degree sequence implies (a classic result)
    assert payload["mutual_dyads"]["zscore"] > 10


def test_fixed_statistics_have_no_zscore(worm) -> None:
    result = motif_significance(worm, null="reciprocity", randomizations=5, seed=0)
    assert result.zscores["mutual_dyads"] is None  # the null model keeps the reciprocal pairs
    assert (result.samples[:, STATISTICS.index("mutual_dyads")] == 233).all()


def test_same_samples_on_every_executor_and_chunking(worm) -> None:
    reference = motif_significance(worm, null="degree", randomizations=12, seed=7, chunk_size=5)
    with ThreadPoolExecutor(2) as threads:
        threaded = motif_significance(worm, null="degree", randomizations=12, seed=7, executor=threads)
    with ProcessPoolExecutor(2) as processes:
        pooled = motif_significance(
            worm, null="degree", randomizations=12, seed=7, executor=processes, chunk_size=1
        )
    np.testing.assert_array_equal(reference.samples, threaded.samples)
    np.testing.assert_array_equal(reference.samples, pooled.samples)
    other = motif_significance(worm, null="degree", randomizations=12, seed=8)
    assert not np.array_equal(reference.samples, other.samples)


def test_dask_executor_gives_the_same_samples(worm) -> None:
    distributed = pytest.importorskip("distributed")
    reference = motif_significance(worm, null="erdos-renyi", randomizations=6, seed=1)
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        remote = motif_significance(
            worm, null="erdos-renyi", randomizations=6, seed=1, executor=client.get_executor(), chunk_size=2
        )
    np.testing.assert_array_equal(reference.samples, remote.samples)


def test_bad_arguments(worm) -> None:
    with pytest.raises(InputError, match="null model"):
        motif_significance(worm, null="shuffle")
    with pytest.raises(InputError, match="randomizations"):
        motif_significance(worm, randomizations=-1)
    with pytest.raises(InputError, match="seed"):
        motif_significance(worm, seed=-2)
